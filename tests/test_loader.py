"""Loading: bad input is one line and exit 2; odd but valid models never crash anything."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from graph_helpers import save_graph, zeros
from onnx import helper, numpy_helper

from convlint import loader
from convlint.cost import model_cost
from convlint.fixtures import BAD_WRITERS
from convlint.fixtures.costing import if_branches_with_stale_shapes
from convlint.graph import build_graph

EXPECTED_PROBLEM = {
    "empty": "empty file",
    "random_bytes": "not an ONNX model",
    "truncated": "not an ONNX model",
    "uninferable": "shape inference failed",
    "unknown_domain": "does not declare",
    "external_outside": "leaves the model folder",
    "external_absolute": "absolute location",
    "external_symlink": "resolves outside the model folder",
}


@pytest.mark.parametrize("kind", sorted(BAD_WRITERS))
def test_bad_input_is_one_line_and_exit_2(
    kind: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = BAD_WRITERS[kind](tmp_path)
    for argv in (["check", str(path)], ["stats", str(path)], ["check", str(path), "--format=json"]):
        code, _, err = cli(*argv)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert str(path) in lines[0]
        assert EXPECTED_PROBLEM[kind] in lines[0]
        assert "Traceback" not in err


def test_missing_file_and_folder_without_models(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = cli("check", str(tmp_path / "nope.onnx"))
    assert code == 2 and "nope.onnx: no such file" in err
    code, _, err = cli("check", str(tmp_path))
    assert code == 2 and "no .onnx files found" in err


def test_subprocess_bad_model_has_no_traceback(tmp_path: Path) -> None:
    path = BAD_WRITERS["random_bytes"](tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_external_locations_are_refused_before_opening(tmp_path: Path) -> None:
    path = BAD_WRITERS["external_absolute"](tmp_path)
    with pytest.raises(loader.ModelError, match="absolute location '/etc/passwd'"):
        loader.load(path)


def _huge_external_model(folder: Path, channels: int) -> Path:
    """A 1024->channels 3×3 conv whose weight lives in a sparse external file."""
    weight = onnx.TensorProto()
    weight.name = "w"
    weight.data_type = onnx.TensorProto.FLOAT
    weight.dims.extend([channels, 1024, 3, 3])
    weight.data_location = onnx.TensorProto.EXTERNAL
    size = channels * 1024 * 9 * 4
    for key, value in (("location", "huge.weights"), ("offset", "0"), ("length", str(size))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="huge", pads=[1, 1, 1, 1])
    path = save_graph(folder / "huge.onnx", [node], {"x": [1, 1024, 8, 8]}, "y", [weight])
    with open(folder / "huge.weights", "wb") as handle:
        handle.truncate(size)
    return path


def test_three_gigabyte_external_weights_are_not_read(tmp_path: Path) -> None:
    path = _huge_external_model(tmp_path, 87_400)  # 87,400·1024·9 floats: 3.0 GiB
    assert (tmp_path / "huge.weights").stat().st_size >= 3 * 2**30
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [sys.executable, "-m", "convlint", "check", str(path), "--format", "json"],
        capture_output=True,
        text=True,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # CL005 (info) flags the 85× widening; CL001's bottleneck (a quarter of 87,400 wide)
    # would save nothing, so no warning fails the run.
    assert result.returncode == 0, result.stderr
    assert '"CL005": 1' in result.stdout
    assert max(before, peak_kib) < 1024 * 1024  # KiB: well under 1 GiB
    assert '"params": 805478400' in result.stdout


@pytest.mark.parametrize("opset", range(7, onnx.defs.onnx_opset_version() + 1))
def test_every_opset_from_7(opset: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(opset)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),  # noqa: E501
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if opset < 9:  # IR 3: every initializer is also a graph input
        model.ir_version = 3
        model.graph.input.append(
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [16, 8, 3, 3])
        )
    path = tmp_path / f"opset{opset}.onnx"
    onnx.save(model, path)
    cost = model_cost(build_graph(loader.load(path).model))
    assert cost.params == 16 * 8 * 9
    assert cost.macs == 16 * 8 * 9 * 16 * 16 + 16 * 8 * 8 * 4


def test_weights_as_constants_and_inputs_are_counted(model_file: Callable[..., Path]) -> None:
    for name in ("weights_as_constants", "weights_as_inputs"):
        graph = build_graph(loader.load(model_file(name)).model)
        cost = model_cost(graph)
        assert cost.params > 0, name
        convs = [n for n in graph if n.op_type == "Conv"]
        assert all(cost.nodes[c.name].params > 0 for c in convs), name
    inputs_graph = build_graph(loader.load(model_file("weights_as_inputs")).model)
    assert len(inputs_graph.data_inputs) == 1


def test_subgraphs_are_analyzed(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, dict]]
) -> None:
    path = model_file("with_if_subgraph")
    graph = build_graph(loader.load(path).model)
    assert len(graph.subgraphs) == 2
    sub_convs = [n for _, sub in graph.subgraphs for n in sub if n.op_type == "Conv"]
    assert len(sub_convs) == 2
    code, report = cli_json("check", str(path))
    assert code == 0
    assert report["models"][0]["nodes"] == len(graph.nodes) + sum(
        len(sub.nodes) for _, sub in graph.subgraphs
    )


def test_custom_domain_op_is_passed_over(
    model_file: Callable[..., Path], cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = model_file("custom_domain_op")
    code, out, err = cli("check", str(path))
    assert code == 0, err
    assert "All checks passed" in out
    code, out, _ = cli("stats", str(path))
    assert code == 0 and "com.example" not in out


def test_graph_queries_look_through_transparent_ops(model_file: Callable[..., Path]) -> None:
    graph = build_graph(loader.load(model_file("resnet_bottleneck")).model)
    conv2 = next(n for n in graph if n.op_type == "Conv" and n.attrs["kernel_shape"] == [3, 3])
    source, walked = graph.source_of(conv2.inputs[0])
    assert source is not None and source.op_type == "Conv"
    assert [n.op_type for n in walked] == ["Relu", "BatchNormalization"]
    users = graph.users_of(source.outputs[0])
    assert [u.name for u, _ in users] == [conv2.name]
    assert conv2.attrs["group"] == 1 and conv2.attrs["auto_pad"] == "NOTSET"


def _single_conv(
    tmp_path: Path, name: str, weight_shape: list[int], opset: int = 17, **attrs: object
) -> Path:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    weight = [zeros("w", weight_shape)]
    return save_graph(tmp_path / f"{name}.onnx", [node], {"x": [1, 8, 6, 6]}, "y", weight, opset)


def test_conv_weight_that_does_not_fit_its_input_is_invalid(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = _single_conv(tmp_path, "mismatch", [16, 8, 3, 3], group=2)
    assert cli("stats", str(path))[0] == 2
    code, _, err = cli("check", str(path))
    assert code == 2
    assert err.strip() == (
        f"convlint: error: {path}: invalid model: conv 'conv' reads 8 channels, "
        "its weight 16x8x3x3 with group 2 expects 16"
    )


def test_opset_newer_than_onnx_knows_is_invalid(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = _single_conv(tmp_path, "future", [16, 8, 3, 3], opset=99)
    code, _, err = cli("check", str(path))
    assert code == 2
    assert f"{path}: invalid model: opset 99 is newer than the newest" in err


@pytest.mark.parametrize("stored", [-1, 0])
def test_dims_stored_as_minus_one_or_zero_can_be_bound(
    stored: int, tmp_path: Path, cli_json: Callable[..., tuple[int, dict]]
) -> None:
    """Some exporters write -1 (or 0) for a dynamic dim; onnxruntime reads -1 as dynamic."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    path = save_graph(
        tmp_path / "dynamic.onnx",
        [node],
        {"x": [1, 3, stored, stored]},
        "y",
        [zeros("w", (8, 3, 3, 3))],
    )
    model = onnx.load(str(path))
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, stored, stored])
    )
    onnx.save(model, path)
    loaded = loader.load(path, {"x": (1, 3, 64, 64)})
    assert loaded.notes[-1] == "bound x to 1x3x64x64"
    cost = model_cost(build_graph(loaded.model))
    assert cost.macs == 8 * 3 * 9 * 64 * 64 == 884_736
    _, report = cli_json("check", str(path), "--input-shape", "x=1x3x64x64")
    assert report["models"][0]["cost"]["macs"] == 884_736
    if stored == -1:  # unbound, -1 is unknown: no MAC count made of a size of -1
        loaded = loader.load(path)
        assert loaded.notes == ["read dims stored as -1 as unknown (x, y)"]
        assert model_cost(build_graph(loaded.model)).macs is None


def test_subgraph_failing_strict_inference_is_analyzed_non_strictly(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = tmp_path / "stale.onnx"
    onnx.save(if_branches_with_stale_shapes(), path)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    loaded = loader.load(path)
    assert loaded.notes == [
        "strict shape inference failed in a subgraph of 'if' (Inferred shape and existing shape "
        "differ in dimension 2: (7) vs (14)); shapes are from non-strict inference, as "
        "onnxruntime reads the model"
    ]
    cost = model_cost(build_graph(loaded.model))
    assert cost.nodes["conv1"].macs == 576 * 196
    assert (cost.params, cost.macs, cost.blocked_by) == (584 + 576 + 64, None, "if")
    code, out, err = cli("check", str(path), "--verbose")
    assert code == 0, err
    assert f"{path}: note: {loaded.notes[0]}" in out.splitlines()


def test_main_graph_failing_strict_inference_is_refused_beside_a_subgraph(tmp_path: Path) -> None:
    """Only a failure inside a subgraph is inferred again non-strictly."""
    model = if_branches_with_stale_shapes()
    conv = next(n for n in model.graph.node if n.name == "conv1")
    conv.input[1] = "wide.weight"  # 16 input channels on an 8-channel map: 16 out, not 8
    model.graph.initializer.append(zeros("wide.weight", (16, 16, 3, 3)))
    relu = next(n for n in model.graph.node if n.name == "relu1")
    model.graph.node.insert(
        list(model.graph.node).index(relu) + 1,
        helper.make_node("Add", ["relu1", "input"], ["sum"], name="add"),
    )
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    with pytest.raises(loader.ModelError, match="shape inference failed"):
        loader.load(path)


def test_computed_shapes_are_evaluated_only_when_inference_left_them_unknown(
    model_file: Callable[..., Path],
) -> None:
    path = model_file("upsample_by_computed_size")
    assert loader.load(path, {"input": (1, 3, 64, 64)}).notes == [
        "bound input to 1x3x64x64",
        "shapes the graph computes evaluated for upsample, pad (ONNX shape inference alone left "
        "their output shapes unknown)",
    ]
    assert loader.load(path).notes == []  # H and W unbound: nothing to evaluate
    # A model without computed shapes never imports the evaluator (0.2 s).
    script = (
        "import sys; from convlint import loader; loader.load(sys.argv[1]); "
        "print('onnx.reference' in sys.modules)"
    )
    plain = model_file("resnet_bottleneck")
    result = subprocess.run(
        [sys.executable, "-c", script, str(plain)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_git_lfs_pointer_and_mismatched_weight_type_are_named(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    pointer = tmp_path / "resnet.onnx"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 102502400\n"
    )
    code, _, err = cli("check", str(pointer))
    assert code == 2
    assert err == (
        f"convlint: error: {pointer}: is a Git LFS pointer, not the model: run `git lfs pull` "
        "to fetch it\n"
    )
    import numpy as np
    from onnx import numpy_helper

    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float64), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    path = save_graph(tmp_path / "float64.onnx", [node], {"x": [1, 3, 8, 8]}, "y", [weight])
    code, _, err = cli("check", str(path))
    assert code == 2
    assert f"{path}: shape inference failed:" in err
    assert "W has inconsistent type tensor(double)" in err


@pytest.mark.parametrize(
    ("nodes", "cycle"),
    [
        (
            [
                helper.make_node("Add", ["x", "y"], ["s"], name="add"),
                helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
            ],
            "add -> conv -> add",
        ),
        (
            [
                helper.make_node("Relu", ["b"], ["a"], name="r1"),
                helper.make_node("Relu", ["a"], ["b"], name="r2"),
                helper.make_node("Conv", ["b", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
            ],
            "r1 -> r2 -> r1",
        ),
    ],
)
def test_a_cyclic_graph_is_invalid_and_named(
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
    nodes: list[onnx.NodeProto],
    cycle: str,
) -> None:
    import numpy as np
    from onnx import numpy_helper

    weight = numpy_helper.from_array(np.zeros((3, 3, 3, 3), np.float32), "w")
    path = save_graph(tmp_path / "cycle.onnx", nodes, {"x": [1, 3, 8, 8]}, "y", [weight])
    for command in ("check", "stats"):
        code, _, err = cli(command, str(path))
        assert code == 2
        assert err == f"convlint: error: {path}: invalid model: the graph has a cycle: {cycle}\n"


def _escaping_tensor(name: str) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT
    tensor.dims.append(1)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _escaping_models() -> dict[str, onnx.ModelProto]:
    """A model for each place a tensor with external data can hide."""
    shape = helper.make_tensor("shape", onnx.TensorProto.INT64, [1], [4])
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    opset = [helper.make_opsetid("", 17)]

    def model(
        nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], **kw: Any
    ) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
        return helper.make_model(graph, opset_imports=kw.pop("opsets", opset), **kw)

    fill = helper.make_node("ConstantOfShape", ["shape"], ["c"], value=_escaping_tensor("v"))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    sparse = helper.make_node("Constant", [], ["c"])
    sparse_attr = sparse.attribute.add()
    sparse_attr.name, sparse_attr.type = "sparse_value", onnx.AttributeProto.SPARSE_TENSOR
    sparse_attr.sparse_tensor.values.CopyFrom(_escaping_tensor("sv"))
    sparse_attr.sparse_tensor.dims.append(4)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])],
        initializer=[_escaping_tensor("w")],
    )
    cond = helper.make_tensor("cond", onnx.TensorProto.BOOL, [], [True])
    if_node = helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch)
    function = helper.make_function(
        "local",
        "F",
        [],
        ["out"],
        [helper.make_node("Constant", [], ["out"], value=_escaping_tensor("fv"))],
        opset,
    )
    call = helper.make_node("F", [], ["c"], domain="local")
    return {
        "constant_of_shape": model([fill, add], [shape]),
        "sparse_value": model([sparse, add], []),
        "subgraph_initializer": model([if_node, add], [cond]),
        "function_constant": model(
            [call, add], [], opsets=[*opset, helper.make_opsetid("local", 1)], functions=[function]
        ),
    }


@pytest.mark.parametrize("where", sorted(_escaping_models()))
def test_external_data_escape_is_refused_wherever_the_tensor_sits(
    where: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / f"{where}.onnx"
    path.write_bytes(_escaping_models()[where].SerializeToString())
    code, _, err = cli("check", str(path))
    assert code == 2
    assert "leaves the model folder: '../outside.bin'" in err, err
