"""Malformed models get one specific line naming the file (exit 2), never "internal error"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def replace_attribute(model: onnx.ModelProto, attribute: onnx.AttributeProto) -> None:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != attribute.name]
    del node.attribute[:]
    node.attribute.extend([*kept, attribute])


def group_float_nan(model: onnx.ModelProto) -> None:
    replace_attribute(model, helper.make_attribute("group", float("nan")))


def group_string(model: onnx.ModelProto) -> None:
    replace_attribute(model, helper.make_attribute("group", "two"))


def nul_op_type(model: onnx.ModelProto) -> None:
    model.graph.node[0].op_type = "Co\x00nv"


def nul_external_location(model: onnx.ModelProto) -> None:
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w\x00.bin"), ("offset", "0"), ("length", "432")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value


def matmul_with_one_input(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("MatMul", ["y"], ["z"], name="mm"))
    model.graph.output[0].name = "z"


def node_without_outputs(model: onnx.ModelProto) -> None:
    del model.graph.node[0].output[:]


def untyped_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].ClearField("type")


def unknown_dtype(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.elem_type = 99


def string_weight(model: onnx.ModelProto) -> None:
    weight = model.graph.initializer[0]
    weight.data_type = TensorProto.STRING
    weight.ClearField("raw_data")
    weight.string_data.extend([b"a"] * 108)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            group_float_nan,
            "invalid model: node 'conv' (Conv): attribute 'group' is FLOAT, the operator's schema wants INT",
        ),
        (
            group_string,
            "invalid model: node 'conv' (Conv): attribute 'group' is STRING, the operator's schema wants INT",
        ),
        (
            nul_op_type,
            "invalid model: node 'conv' has op type 'Co\\x00nv', which is no ONNX operator (opset 17)",
        ),
        (nul_external_location, "external data of 'w' has a location with a NUL byte"),
        (matmul_with_one_input, "has input size 1 not in range"),
        (node_without_outputs, "Output 0 is out of bounds"),
        (untyped_input, "Input 0 expected to have type"),
        (unknown_dtype, "Invalid tensor data type 99"),
        (string_weight, "has unsupported type: tensor(string)"),
    ],
    ids=lambda value: getattr(value, "__name__", "problem"),
)
def test_malformed_model_is_one_named_line(
    mutate: Callable[[onnx.ModelProto], None],
    problem: str,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    model = conv_model()
    mutate(model)
    path = tmp_path / f"{mutate.__name__}.onnx"
    path.write_bytes(model.SerializeToString())
    for command in ("check", "stats"):
        code, _, err = cli(command, str(path))
        assert code == 2, err
        (line,) = err.splitlines()
        assert line.startswith(f"convlint: error: {path}: ")
        assert problem in line
        assert "internal error" not in line


def test_a_bad_model_among_good_ones_is_that_models_error(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    good = conv_model()
    bad = conv_model()
    group_string(bad)
    (tmp_path / "a_good.onnx").write_bytes(good.SerializeToString())
    (tmp_path / "b_bad.onnx").write_bytes(bad.SerializeToString())
    (tmp_path / "c_good.onnx").write_bytes(good.SerializeToString())
    code, out, err = cli("check", str(tmp_path), "--format", "json")
    assert code == 2
    import json

    models = json.loads(out)["models"]
    assert [m["error"] is None for m in models] == [True, False, True]
    assert err.count("convlint: error:") == 1 and "b_bad.onnx" in err


def test_input_shape_beyond_64_bits_is_a_usage_error(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_model().SerializeToString())
    code, _, err = cli("check", str(path), "--input-shape", "x=1x3x8x99999999999999999999")
    assert code == 2
    assert "dims must fit in 64 bits" in err
