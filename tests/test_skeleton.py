"""Weights' values are never held by check: the file walked without them and the model parsed
whole then stripped are the same model, and every report is what it was with the weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from graph_helpers import save_graph
from onnx import helper, numpy_helper

from convlint import fixtures, loader, skeleton
from convlint.engine import ModelReport, Settings, analyze
from convlint.fixtures import BAD_WRITERS
from convlint.registry import load_registry
from convlint.reporters import render_json

# Models whose weights are stored in the file (the others keep them in external data files).
EMBEDDED = sorted(
    name for name in fixtures.BUILDERS if name not in ("big_chain", "vgg16", "resnet50")
)


def _walked(path: Path) -> onnx.ModelProto:
    encoded = skeleton.read_without_weights(path)
    assert encoded is not None
    model = onnx.load_model_from_string(encoded)
    skeleton.strip_weights(model)  # the weights too small for the walk to look at
    return model


@pytest.mark.parametrize("name", EMBEDDED)
def test_walking_the_file_and_stripping_the_parsed_model_agree(
    name: str, model_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skeleton, "LARGE_TENSOR_BYTES", 64)  # the walk strips every weight
    path = model_file(name)
    parsed = loader.read_model(path)
    stripped = skeleton.strip_weights(parsed)
    encoded = skeleton.read_without_weights(path)
    if not stripped:  # no weights in the file: nothing to leave out
        assert encoded is None
        return
    assert onnx.load_model_from_string(encoded) == parsed
    for tensor in parsed.graph.initializer:
        if skeleton.is_weight(tensor.data_type, tensor.dims):
            assert not tensor.HasField("raw_data") and not tensor.float_data


def _length_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def test_values_written_as_repeated_fields_and_packed_dims_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skeleton, "LARGE_TENSOR_BYTES", 64)
    values = np.arange(8 * 8 * 3 * 3, dtype=np.float32)
    weight = helper.make_tensor("w", onnx.TensorProto.FLOAT, [8, 8, 3, 3], values.tolist())
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")  # a shape: kept
    small = numpy_helper.from_array(np.ones(8, np.float32), "scale")  # too small to matter
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "m.onnx", nodes, {"x": [1, 8, 8, 8]}, "y", [weight, shape, small])
    walked = _walked(path)
    parsed = loader.read_model(path)
    assert skeleton.strip_weights(parsed)
    assert walked == parsed
    kept = {t.name: t for t in walked.graph.initializer}
    assert not kept["w"].float_data and list(kept["w"].dims) == [8, 8, 3, 3]
    assert kept["shape"] == shape and kept["scale"] == small

    # Another writer's encoding: the weight's dims packed, the graph's fields in another order.
    model = onnx.load(str(path))
    graph = model.graph
    dims_free = onnx.TensorProto()
    dims_free.CopyFrom(graph.initializer[0])
    del dims_free.dims[:]
    packed = b"".join(_varint(d) for d in weight.dims)
    tensor = _length_field(1, packed) + dims_free.SerializeToString()
    del graph.initializer[0]
    graph_bytes = _length_field(5, tensor) + graph.SerializeToString()
    model.ClearField("graph")
    other = tmp_path / "other.onnx"
    other.write_bytes(model.SerializeToString() + _length_field(7, graph_bytes))
    assert list(onnx.load(str(other)).graph.initializer[0].dims) == [8, 8, 3, 3]
    walked_other = _walked(other)
    stripped = {t.name: t for t in walked_other.graph.initializer}
    assert not stripped["w"].float_data and list(stripped["w"].dims) == [8, 8, 3, 3]
    assert stripped["shape"] == shape and stripped["scale"] == small


def _json(report: ModelReport) -> str:
    return render_json([report], load_registry())


@pytest.mark.parametrize("name", ["vgg_stack", "inception_3a_naive", "dense_head_bad"])
def test_check_reads_the_same_model_both_ways(
    name: str, model_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = model_file(name)
    parsed_whole = analyze(path, load_registry(), Settings(verbose=True))
    monkeypatch.setattr(skeleton, "WIRE_READ_BYTES", 0)
    walked = analyze(path, load_registry(), Settings(verbose=True))
    assert _json(walked) == _json(parsed_whole)
    assert walked.findings and walked.notes == parsed_whole.notes


def test_the_loaded_model_holds_no_weight_values(
    model_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = model_file("vgg_stack")
    for threshold in (skeleton.WIRE_READ_BYTES, 0):
        monkeypatch.setattr(skeleton, "WIRE_READ_BYTES", threshold)
        model = loader.load(path).model
        assert model.ByteSize() < 20_000 < path.stat().st_size
        dims = {t.name: list(t.dims) for t in model.graph.initializer}
        assert dims["features.conv1.weight"] == [256, 128, 3, 3]


@pytest.mark.parametrize("kind", sorted(BAD_WRITERS))
def test_a_file_the_walk_cannot_read_gets_the_error_it_got(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = BAD_WRITERS[kind](tmp_path)
    before = analyze(path, load_registry(), Settings()).error
    monkeypatch.setattr(skeleton, "WIRE_READ_BYTES", 0)
    assert analyze(path, load_registry(), Settings()).error == before


def test_a_file_cut_inside_a_weight_is_truncated(
    model_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = model_file("vgg_stack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert skeleton.read_without_weights(path) is None
    monkeypatch.setattr(skeleton, "WIRE_READ_BYTES", 0)
    report = analyze(path, load_registry(), Settings())
    assert report.error is not None and "truncated or corrupt" in report.error
    assert json.loads(_json(report))["models"][0]["error"] == report.error
