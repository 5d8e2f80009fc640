"""The cost model against the literature's figures and hand-computed counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from graph_helpers import save_graph, zeros
from onnx import helper

from convlint import loader
from convlint.cost import model_cost
from convlint.graph import ModelGraph, build_graph


def graph_of(path: Path, **shapes: tuple[int, ...]) -> ModelGraph:
    return build_graph(loader.load(path, shapes).model)


def conv_macs_per_pixel(graph: ModelGraph) -> dict[str, int | None]:
    cost = model_cost(graph)
    return {n.name: cost.nodes[n.name].macs_per_output_pixel for n in graph if n.op_type == "Conv"}


def test_inception_3a_weights_naive_vs_reduced(model_file: Callable[..., Path]) -> None:
    naive = model_cost(graph_of(model_file("inception_3a_naive")))
    reduced = model_cost(graph_of(model_file("inception_3a_reduced")))
    assert naive.params == 387_072
    assert reduced.params == 157_184


def test_inception_3a_concat_channels(model_file: Callable[..., Path]) -> None:
    naive = graph_of(model_file("inception_3a_naive"))
    full = graph_of(model_file("inception_3a"))
    assert naive.channels(naive.graph_outputs[0]) == 64 + 128 + 32 + 192 == 416
    assert full.channels(full.graph_outputs[0]) == 256


def test_resnet_conv_vs_bottleneck_macs_per_output_pixel(model_file: Callable[..., Path]) -> None:
    plain = conv_macs_per_pixel(graph_of(model_file("conv3x3")))
    assert list(plain.values()) == [589_824]
    bottleneck = conv_macs_per_pixel(graph_of(model_file("resnet_bottleneck")))
    assert sum(v for v in bottleneck.values() if v is not None) == 69_632
    cost = model_cost(graph_of(model_file("conv3x3")))
    assert cost.nodes["conv"].macs == 589_824 * 14 * 14


@pytest.mark.parametrize(
    ("name", "params", "gmacs"),
    [("resnet50", 25_557_032, 4.09), ("vgg16", 138_357_544, 15.47)],
)
def test_full_networks_match_published_figures(
    model_file: Callable[..., Path], name: str, params: int, gmacs: float
) -> None:
    cost = model_cost(graph_of(model_file(name, weights="external")))
    assert cost.params == params
    assert cost.macs is not None
    assert abs(cost.macs / 1e9 - gmacs) / gmacs < 0.01


def test_vgg16_conv_and_fc_macs_exact(model_file: Callable[..., Path]) -> None:
    graph = graph_of(model_file("vgg16", weights="external"))
    cost = model_cost(graph)
    dense = sum(cost.nodes[n.name].macs or 0 for n in graph if n.op_type in ("Conv", "Gemm"))
    # 15,346,630,656 conv MACs + 123,633,664 fc MACs, the figure behind "15.47 GMACs".
    assert dense == 15_470_264_320


def test_conv_attributes_strides_dilations_pads(tmp_path: Path) -> None:
    nodes = [
        helper.make_node(
            "Conv", ["x", "w"], ["y"], name="c", group=2, strides=[2, 1], dilations=[1, 2],
            pads=[1, 0, 2, 3],
        ),
        helper.make_node("ConvTranspose", ["y", "wt"], ["z"], name="t", strides=[2, 2]),
    ]  # fmt: skip
    weights = [zeros("w", (6, 2, 3, 5)), zeros("wt", (6, 3, 2, 2))]
    path = save_graph(tmp_path / "conv.onnx", nodes, {"x": [1, 4, 11, 9]}, "z", weights)
    g = graph_of(path)
    cost = model_cost(g)
    # H: (11 + 1 + 2 - 3) // 2 + 1 = 6; W: (9 + 0 + 3 - (2*(5-1)+1)) // 1 + 1 = 4
    assert g.shape("y") == (1, 6, 6, 4)
    assert cost.nodes["c"].params == 6 * 2 * 3 * 5
    assert cost.nodes["c"].macs == 6 * 2 * 15 * 6 * 4
    # ConvTranspose: C_in * C_out/group * k per input pixel.
    assert cost.nodes["t"].macs == 6 * 3 * 4 * 6 * 4
    assert cost.nodes["t"].params == 6 * 3 * 2 * 2


def test_auto_pad_same_upper(tmp_path: Path) -> None:
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="c", strides=[2, 2], auto_pad="SAME_UPPER"
    )
    path = save_graph(
        tmp_path / "same.onnx", [node], {"x": [1, 3, 15, 15]}, "y", [zeros("w", (8, 3, 3, 3))]
    )
    cost = model_cost(graph_of(path))
    assert cost.nodes["c"].macs == 8 * 3 * 9 * 8 * 8  # ceil(15 / 2) = 8


def test_symbolic_spatial_dims_give_per_pixel_costs(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, dict]]
) -> None:
    path = model_file("symbolic_dims_model")
    code, report = cli_json("check", str(path))
    cost = report["models"][0]["cost"]
    assert cost["macs"] is None
    graph = graph_of(path, input=(1, 3, 64, 64))
    static = model_cost(graph).macs
    assert static is not None
    assert cost["macs_per_input_pixel"] * 64 * 64 == pytest.approx(static)
    code, bound = cli_json("check", str(path), "--input-shape", "input=1x3x64x64")
    assert bound["models"][0]["cost"]["macs"] == static


def test_batch_is_counted_once(tmp_path: Path) -> None:
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")
    path = save_graph(tmp_path / "gemm.onnx", [node], {"x": ["N", 32]}, "y", [zeros("w", (32, 10))])
    cost = model_cost(graph_of(path))
    assert cost.nodes["fc"].macs == 320
    assert cost.macs == 320


def test_computed_slice_keeps_the_dims_it_does_not_slice(model_file: Callable[..., Path]) -> None:
    graph = graph_of(model_file("chunk_by_computed_slice"))
    shape = graph.shape("chunk0")
    assert shape is not None and (shape[0], shape[2], shape[3]) == (1, 28, 28)
    cost = model_cost(graph)
    assert cost.nodes["branch2.conv"].macs == 58 * 58 * 28 * 28
    assert cost.macs is not None


def test_identity_of_an_initializer_is_a_parameter(tmp_path: Path) -> None:
    """PyTorch shares equal biases among convs through Identity nodes; they still count."""
    weights = [zeros("w1", (8, 8, 3, 3)), zeros("w2", (8, 8, 3, 3)), zeros("shared_bias", (8,))]
    nodes = [
        helper.make_node("Identity", ["shared_bias"], ["b1"], name="id1"),
        helper.make_node("Identity", ["b1"], ["b2"], name="id2"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y1", "w2", "b2"], ["y2"], name="c2", pads=[1, 1, 1, 1]),
    ]
    path = save_graph(tmp_path / "shared.onnx", nodes, {"x": [1, 8, 4, 4]}, "y2", weights)
    g = graph_of(path)
    assert g.aliases == {"b1": "shared_bias", "b2": "shared_bias"}
    cost = model_cost(g)
    assert cost.nodes["c2"].params == 8 * 8 * 9 + 8
    assert cost.params == 2 * 8 * 8 * 9 + 8  # the shared bias counts once


def test_a_weight_shared_by_two_convs_counts_once(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y1", "w"], ["y2"], name="c2", pads=[1, 1, 1, 1]),
    ]
    weight = [zeros("w", (64, 64, 3, 3))]
    path = save_graph(tmp_path / "two.onnx", nodes, {"x": [1, 64, 4, 4]}, "y2", weight)
    cost = model_cost(graph_of(path))
    assert cost.nodes["c1"].params == cost.nodes["c2"].params == 36_864
    assert cost.params == 36_864
    assert cost.macs == 2 * 36_864 * 16


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "macs"),
    [
        ([8], [8, 5], 40),  # a vector times a matrix: one row of 8 -> 5
        ([3, 8], [8], 24),  # a matrix times a vector: 3 rows of 8 MACs
        ([8], [8], 8),  # a dot product
        ([8], [2, 8, 5], 80),  # a vector times 2 matrices: 40 each
        ([3, 8], [8, 5], 120),  # 3 rows of 8 -> 5
        # Every row of every leading dim counts (a sequence-first T×N×K: T·N rows) ...
        ([4, 2, 8], [8, 5], 4 * 2 * 40),
        # ... except the model's batch symbol (the input's symbolic dim 0), counted as 1;
        (["N", 3, 8], [8, 5], 120),
        (["N", "T", 8], [8, 5], None),  # another symbolic dim leaves MACs unknown
    ],
)
def test_matmul_counts_every_row_and_1d_operands(
    tmp_path: Path, a_shape: list[int | str], b_shape: list[int], macs: int | None
) -> None:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    path = save_graph(tmp_path / "matmul.onnx", [node], {"x": a_shape}, "y", [zeros("w", b_shape)])
    cost = model_cost(graph_of(path))
    assert cost.nodes["mm"].macs == macs
    assert cost.params == math.prod(b_shape)


def test_subgraph_node_reads_outer_scope_weight_and_input(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from convlint.engine import Settings, analyze
    from convlint.registry import load_registry

    value = helper.make_tensor_value_info
    weight = numpy_helper.from_array(np.zeros((256, 256, 3, 3), np.float32), "w")
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1])],
        "then",
        [],
        [value("t", onnx.TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [value("e", onnx.TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch
            )
        ],
        "g",
        [value("x", onnx.TensorProto.FLOAT, [1, 256, 8, 8]), value("c", onnx.TensorProto.BOOL, [])],
        [value("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    conv = model_cost(graph_of(path)).nodes["if/then_branch/conv"]
    assert (conv.params, conv.macs) == (589_824, 589_824 * 8 * 8)
    report = analyze(path, load_registry(), Settings())
    assert [(f.code, f.node) for f in report.findings] == [("CL001", "if/then_branch/conv")]
    # fix rewrites the main graph only: a finding inside a branch is not offered as fixable.
    (finding,) = report.findings
    assert finding.fix is not None and finding.fix.applicability.value == "display-only"
    assert "main graph only" in finding.fix.description


def test_verbose_names_the_node_that_blocked_macs(
    model_file: Callable[..., Path], cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = model_file("upsample_by_computed_size")
    code, out, _ = cli("check", str(path), "--verbose")
    assert code == 0
    assert (
        f"{path}: note: MACs unknown from Conv 'conv1' on: it has symbolic or unknown shapes; "
        "--input-shape binds symbolic dims"
    ) in out
    code, out, _ = cli("check", str(model_file("with_if_subgraph")), "--verbose")
    assert "note: MACs unknown from If 'if' on: it runs a subgraph" in out
