"""Stage 1 (load) and 4 (lint): models that used to end in "internal error" (issue 20, items 6
and 7) are a named error for that file, one line, in every format of `check` and `stats`, and
the other models of the run are still reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]
FORMATS = ["text", "json", "sarif", "junit", "markdown", "github", "gitlab"]
STATS_FORMATS = ["text", "json", "csv", "markdown"]


def _forged(model: onnx.ModelProto, placeholder: bytes, raw: bytes) -> bytes:
    """The model's encoding with a same-length string replaced by bytes that are not UTF-8."""
    data = model.SerializeToString()
    assert data.count(placeholder) == 1 and len(raw) == len(placeholder)
    return data.replace(placeholder, raw)


def _bad_node_name(folder: Path) -> Path:
    model = fixtures.conv3x3()
    model.graph.node[0].name = "NAMEXX"
    path = folder / "name.onnx"
    path.write_bytes(_forged(model, b"NAMEXX", b"NA\xff\xfeXX"))
    return path


def _bad_skipped_name(folder: Path) -> Path:
    """A conv only a rule's reason for passing it over names (CL001: 64 channels, below
    min-channels), which a report without --verbose leaves out."""
    model = fixtures.resnet_bottleneck()
    assert model.graph.node[3].name == "layer1.1.conv2"
    model.graph.node[3].name = "NAMEXX"
    path = folder / "skipped_name.onnx"
    path.write_bytes(_forged(model, b"NAMEXX", b"NA\xff\xfeXX"))
    return path


def _bad_op_type(folder: Path) -> Path:
    model = fixtures.conv3x3()
    model.graph.node[0].op_type = "OPXX"
    path = folder / "op.onnx"
    path.write_bytes(_forged(model, b"OPXX", b"O\xffXX"))
    return path


def _bad_location(folder: Path) -> Path:
    model = fixtures.conv3x3()
    onnx.save_model(
        model, str(folder / "ext.onnx"), save_as_external_data=True, location="LOCXX.data"
    )
    path = folder / "location.onnx"
    path.write_bytes((folder / "ext.onnx").read_bytes().replace(b"LOCXX", b"L\xffCXX"))
    (folder / "ext.onnx").unlink()
    return path


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8]),
    )


def _constant_without_output(folder: Path) -> Path:
    x, y = _io()
    constant = helper.make_node(
        "Constant", [], [], value=numpy_helper.from_array(np.ones(3, np.float32))
    )
    graph = helper.make_graph([constant, helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return fixtures.save(helper.make_model(graph), folder / "constant.onnx")


def _loop_conv_without_output(folder: Path) -> Path:
    x, y = _io()
    weight = numpy_helper.from_array(np.ones((3, 3, 3, 3), np.float32), "w")
    body = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], []), helper.make_node("Identity", ["c"], ["d"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("d", TensorProto.BOOL, [])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trip", "cond"], [], body=body),
            helper.make_node("Relu", ["x"], ["y"]),
        ],
        "g",
        [
            x,
            helper.make_tensor_value_info("trip", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [y],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return fixtures.save(model, folder / "loop.onnx")


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "node name": (_bad_node_name, "invalid model: a node name is not UTF-8: b'NA\\xff\\xfeXX'"),
    "name passed over": (
        _bad_skipped_name,
        "invalid model: a node name is not UTF-8: b'NA\\xff\\xfeXX'",
    ),
    "op type": (
        _bad_op_type,
        "invalid model: node 'conv' has an op type that is not UTF-8: b'O\\xffXX'",
    ),
    "location": (
        _bad_location,
        "external data of 'conv.weight' has a location that is not UTF-8: b'L\\xffCXX.data'",
    ),
    "constant": (_constant_without_output, "shape inference failed"),
    "loop conv": (
        _loop_conv_without_output,
        "invalid model: conv 'Loop_0/body/Conv_0' needs an input, a weight and an output",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_check_names_the_problem_and_reports_the_other_models(
    tmp_path: Path, cli: CLI, case: str, fmt: str
) -> None:
    build, message = CASES[case]
    bad = build(tmp_path)
    good = fixtures.save(fixtures.vgg_stack(), tmp_path / "zz_good.onnx")
    code, out, err = cli("check", str(bad), str(good), "--format", fmt)
    assert code == 2
    assert err.startswith(f"convlint: error: {bad}: {message}"), err
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert "zz_good.onnx" in out and "features.conv1" in out
    if fmt == "json":
        document = json.loads(out)
        assert [m["error"] is None for m in document["models"]] == [False, True]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", STATS_FORMATS)
def test_stats_names_the_problem(tmp_path: Path, cli: CLI, case: str, fmt: str) -> None:
    build, message = CASES[case]
    bad = build(tmp_path)
    code, _, err = cli("stats", str(bad), "--format", fmt)
    assert code == 2
    assert err.startswith(f"convlint: error: {bad}: {message}"), err
    assert len(err.splitlines()) == 1


def test_a_sequence_map_body_is_walked_for_external_data(tmp_path: Path, cli: CLI) -> None:
    """Issue 20, item 7: a SequenceMap body's initializer whose data lies outside the model's
    folder is refused, as an If/Loop/Scan body's is."""
    weight = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    body = helper.make_graph(
        [helper.make_node("Add", ["t", "w"], ["u"])],
        "body",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, [4])],
        [weight],
    )
    sequence = onnx.helper.make_tensor_sequence_value_info
    graph = helper.make_graph(
        [helper.make_node("SequenceMap", ["s"], ["r"], body=body)],
        "g",
        [sequence("s", TensorProto.FLOAT, [4])],
        [sequence("r", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "models" / "seqmap.onnx"
    path.parent.mkdir()
    path.write_bytes(model.SerializeToString())
    code, _, err = cli("check", str(path))
    assert code == 2
    assert err == (
        f"convlint: error: {path}: external data of 'w' leaves the model folder: '../outside.bin'\n"
    )


def test_a_failure_of_convlint_is_that_models_error(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What no check foresaw still names the file, and the run reports the other models."""
    from convlint import engine

    rules = engine.run_rules

    def failing(graph: object, model: onnx.ModelProto, *args: object) -> object:
        if model.graph.node[0].name == "conv":
            raise RuntimeError("no rule expected\nthis")
        return rules(graph, model, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "run_rules", failing)
    bad = fixtures.save(fixtures.conv3x3(), tmp_path / "a.onnx")
    good = fixtures.save(fixtures.vgg_stack(), tmp_path / "b.onnx")
    code, out, err = cli("check", str(bad), str(good))
    assert code == 2
    assert err == f"convlint: error: {bad}: internal error: RuntimeError: no rule expected this\n"
    assert "b.onnx:features.conv1: CL001" in out


@pytest.mark.parametrize("command", ["check", "stats", "fix"])
def test_opset_0_is_refused_where_nothing_would_check_the_attributes(
    tmp_path: Path, cli: CLI, command: str
) -> None:
    """Issue 20, item 6: at opset 0 no schema checks a node, so a wrong-typed attribute (pads
    as an int) used to reach the rewrite's arithmetic."""
    model = fixtures.conv3x3()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 0))
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != "pads"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("pads", -3)])
    path = fixtures.save(model, tmp_path / "opset0.onnx")
    extra = ["-o", str(tmp_path / "out.onnx"), "--allow-noise"] if command == "fix" else []
    code, _, err = cli(command, str(path), *extra)
    assert code == 2
    assert err == f"convlint: error: {path}: invalid model: opset 0 (ONNX's opsets start at 1)\n"
