"""Issue 9, item 5: `fix` holds no weights it does not need. The weight store reads a model
without its large weights' values (walking the file's protobuf encoding), reads one weight on
demand, stages them all in one data file, and writes OUT from there, inline or external, byte
for byte the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from fix_helpers import max_abs_diff, random_inputs
from onnx import numpy_helper

from convlint import fixtures
from convlint.errors import ModelError
from convlint.rewrite import weightstore


@pytest.fixture(params=["walked", "parsed"])
def inline(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if request.param == "walked":  # the walk is for large files: make this one large
        monkeypatch.setattr(weightstore, "WALK_BYTES", 1)
    return fixtures.save(fixtures.inception_3a_naive(planted_rank=24), tmp_path / "3a.onnx")


def _values(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_read_leaves_values_on_disk_and_reads_them_on_demand(inline: Path) -> None:
    model, store = weightstore.read(inline)
    expected = _values(inline)
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(store.array(tensor), expected[tensor.name])
    large = [t for t in model.graph.initializer if t.name in store.spans]
    if weightstore.WALK_BYTES == 1:
        assert large and all(not t.HasField("raw_data") for t in large)


@pytest.mark.parametrize("external", [False, True])
def test_stage_and_save_round_trip(inline: Path, tmp_path: Path, external: bool) -> None:
    model, store = weightstore.read(inline)
    stage = tmp_path / "stage"
    stage.mkdir()
    spans = weightstore.stage(model, store, stage / "weights.bin")
    assert spans and all(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in model.graph.initializer
        if t.name in spans
    )
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    weightstore.save(model, out, stage, "out.onnx.data" if external else None)
    assert (out.parent / "out.onnx.data").exists() == external
    onnx.checker.check_model(str(out), full_check=True)
    loaded = _values(out)
    for name, values in _values(inline).items():
        np.testing.assert_array_equal(loaded[name], values)
    assert max_abs_diff(inline, out, random_inputs(onnx.load(inline))) == 0.0


def test_external_data_is_read_in_place(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(
        fixtures.conv3x3(planted_rank=8, hw=6),
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
    )
    model, store = weightstore.read(path)
    (span,) = store.spans.values()
    assert span.file == tmp_path / "model.onnx.data" and span.length == 256 * 256 * 9 * 4
    assert weightstore.read_graph(path).graph.initializer[0].data_location == 1


def test_short_external_data_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(
        fixtures.conv3x3(hw=6), str(path), save_as_external_data=True, location="model.onnx.data"
    )
    data = tmp_path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot read external data: model.onnx.data holds 1000"):
        weightstore.read(path)
