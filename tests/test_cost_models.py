"""Costs of the layer kinds beyond float convs: quantized, recurrent, computed weights and shapes.

Every number is counted by hand in the fixture's docstring or beside the assertion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from graph_helpers import save_graph, zeros
from onnx import TensorProto, helper, numpy_helper

from convlint import loader
from convlint.cost import ModelCost, model_cost
from convlint.graph import ModelGraph, build_graph


def costed(path: Path, **shapes: tuple[int, ...]) -> tuple[ModelGraph, ModelCost]:
    graph = build_graph(loader.load(path, shapes).model)
    return graph, model_cost(graph)


def test_quantized_convs_count_like_conv(model_file: Callable[..., Path]) -> None:
    _, cost = costed(model_file("quantized_convs"))
    by_node = {
        name: (node.params, node.macs, node.macs_per_output_pixel)
        for name, node in cost.nodes.items()
        if node.params
    }
    assert by_node == {
        # QLinearConv: int8 weight 16·8·3·3 = 1152 and int32 bias 16; scales and zero points
        # are not parameters. 1152 MACs per output pixel, 16·16 pixels.
        "qconv1": (1152 + 16, 1152 * 256, 1152),
        "qconv2": (16 * 16, 256 * 256, 256),  # ConvInteger 1×1, no bias
        # QDQ: the weight is DequantizeLinear(int8 16·16·3·3), the bias DequantizeLinear(int32 16).
        "conv3": (2304 + 16, 2304 * 256, 2304),
        "conv4": (2304, 2304 * 256, 2304),
    }
    # conv4 reads a second DequantizeLinear of conv3's int8 weight: counted once.
    assert cost.params == 1168 + 256 + 2320 == 3744
    assert cost.macs == 294_912 + 65_536 + 2 * 589_824 == 1_540_096


RECURRENT = ("lstm", "gru", "rnn")


def test_recurrent_layers_count_gate_matmuls_per_step(model_file: Callable[..., Path]) -> None:
    _, cost = costed(model_file("recurrent_stack"))  # T = 12
    assert {name: (cost.nodes[name].params, cost.nodes[name].macs) for name in RECURRENT} == {
        # W 2·128·16 + R 2·128·32 + B 2·256 + P 2·96; 12 steps · 2 directions · 4 gates ·
        # 32 hidden · (16 input + 32 hidden).
        "lstm": (4096 + 8192 + 512 + 192, 12 * 2 * 4 * 32 * (16 + 32)),
        "gru": (4608 + 1728 + 144, 12 * 3 * 24 * (64 + 24)),
        "rnn": (192 + 64 + 16, 12 * 8 * (24 + 8)),
    }
    assert [cost.nodes[name].macs for name in RECURRENT] == [147_456, 76_032, 3_072]


def test_sequence_first_matmul_counts_every_step(model_file: Callable[..., Path]) -> None:
    _, cost = costed(model_file("recurrent_stack"))
    # T×N×K = 12×1×8 by 8×5: 12 rows of 40 MACs (the sequence is not a batch dim).
    assert cost.nodes["classifier"].macs == 12 * 1 * 8 * 5 == 480
    assert cost.params == 12_992 + 6_480 + 272 + 40 == 19_784
    assert cost.macs == 147_456 + 76_032 + 3_072 + 480 == 227_040


def test_recurrent_macs_need_a_static_sequence_length(model_file: Callable[..., Path]) -> None:
    path = model_file("recurrent_stack", seq="T")
    _, cost = costed(path)
    assert [cost.nodes[name].macs for name in RECURRENT] == [None, None, None]
    assert [cost.nodes[name].params for name in RECURRENT] == [12_992, 6_480, 272]
    _, bound = costed(path, input=(20, 1, 16))
    assert [bound.nodes[name].macs for name in RECURRENT] == [
        20 * 12_288,
        20 * 6_336,
        20 * 256,
    ]


def test_batch_first_recurrent_layer_reads_the_sequence_from_dim_1(tmp_path: Path) -> None:
    nodes = [helper.make_node("GRU", ["x", "w", "r"], ["y"], name="gru", hidden_size=10, layout=1)]
    weights = [zeros("w", (1, 30, 6)), zeros("r", (1, 30, 10))]
    path = save_graph(tmp_path / "gru.onnx", nodes, {"x": [2, 7, 6]}, "y", weights)
    _, cost = costed(path)
    # N = 2 is the batch (not counted), T = 7 steps of 3 gates · 10 hidden · (6 + 10).
    assert cost.nodes["gru"].macs == 7 * 3 * 10 * (6 + 10) == 3_360
    assert cost.nodes["gru"].params == 180 + 300


def test_weights_computed_from_constants_are_parameters(model_file: Callable[..., Path]) -> None:
    graph, cost = costed(model_file("computed_weights"))
    assert {name: cost.nodes[name].params for name in ("conv", "conv.bias", "fc1", "fc2")} == {
        "conv": 64 * 64 * 9,
        "conv.bias": 64,  # a Constant node's floats Reshaped, added in
        "fc1": 128 * 3136 + 128,  # ConstantOfShape of an initializer / of a Constant node
        "fc2": 10 * 128 + 10,  # Transpose(Cast(ConstantOfShape)); Reshape of an initializer
    }
    assert cost.params == 36_864 + 64 + 401_536 + 1_290 == 439_754
    assert cost.macs == 36_864 * 49 + 3136 * 128 + 128 * 10 == 2_209_024
    # Value-preserving ops lead back to the tensor they pass on (shared weights count once).
    assert graph.aliases["fc2.weight"] == "fc2.weight.half"
    assert graph.aliases["conv.bias.reshape"] == "conv.bias.values"


def test_layers_in_if_branches_make_the_total_unknown_never_zero(
    model_file: Callable[..., Path],
) -> None:
    _, cost = costed(model_file("with_if_subgraph"))
    # conv1 8->8 3×3 with bias in the main graph; then: 8->8 3×3, else: 8->8 1×1, no biases.
    assert cost.nodes["conv1"].macs == 576 * 14 * 14
    assert cost.nodes["if/then_branch/then.conv"].macs == 576 * 14 * 14 == 112_896
    assert cost.nodes["if/else_branch/else.conv"].macs == 64 * 14 * 14 == 12_544
    assert cost.params == (576 + 8) + 576 + 64 == 1_224  # every graph's weights
    assert cost.nodes["if"].macs is None  # one branch runs: which one is not known
    assert (cost.macs, cost.blocked_by) == (None, "if")
    assert cost.as_dict() == {
        "params": 1_224,
        "macs": None,
        "macs_per_input_pixel": None,
        "incomplete": True,  # the If's branches are left out: at least conv1's MACs
        "unknown_nodes": ["if"],
        "macs_at_least": 576 * 14 * 14,
    }


def test_a_loop_of_free_ops_keeps_the_total(tmp_path: Path) -> None:
    """conv 8->8 3×3 on 1×8×6×6, then a Loop of 3 iterations of a ReLU: nothing unknown."""
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "body",
        [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, [])],
        [value("cond_out", TensorProto.BOOL, []), value("y", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Loop", ["trips", ""], ["ys"], name="loop", body=body),
    ]
    weights = [zeros("w", (8, 8, 3, 3)), numpy_helper.from_array(np.array(3, np.int64), "trips")]
    path = save_graph(tmp_path / "loop.onnx", nodes, {"x": [1, 8, 6, 6]}, "ys", weights)
    _, cost = costed(path)
    assert (cost.nodes["loop"].macs, cost.macs, cost.blocked_by) == (0, 576 * 36, None)


def test_sibling_branches_weights_of_one_name_each_count(tmp_path: Path) -> None:
    """Each branch of an If stores its own weight ``w``: two tensors, both parameters."""
    value = helper.make_tensor_value_info
    branches = {
        branch: helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[k // 2] * 4)],
            branch,
            [],
            [value("y", TensorProto.FLOAT, None)],
            [zeros("w", (8, 8, k, k))],
        )
        for branch, k in (("then", 3), ("else", 1))
    }
    node = helper.make_node(
        "If", ["c"], ["out"], name="if", then_branch=branches["then"], else_branch=branches["else"]
    )
    condition = numpy_helper.from_array(np.array(True), "c")
    path = save_graph(tmp_path / "if.onnx", [node], {"x": [1, 8, 6, 6]}, "out", [condition])
    _, cost = costed(path)
    assert cost.nodes["if/then_branch/conv"].params == 576
    assert cost.nodes["if/else_branch/conv"].params == 64
    assert cost.params == 576 + 64
    assert (cost.macs, cost.blocked_by) == (None, "if")


def test_sizes_the_graph_computes_are_resolved_once_inputs_are_bound(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, dict]]
) -> None:
    path = model_file("upsample_by_computed_size")
    _, cost = costed(path)
    assert (cost.params, cost.macs, cost.blocked_by) == (1_100, None, "conv1")  # H, W symbolic
    graph, cost = costed(path, input=(1, 3, 64, 64))
    assert [graph.shape(t) for t in ("upsample", "pad")] == [(1, 8, 128, 128), (1, 8, 72, 72)]
    assert {name: cost.nodes[name].macs for name in ("conv1", "conv2", "conv3")} == {
        "conv1": 216 * 64 * 64,  # 3->8 3×3
        "conv2": 576 * 64 * 64,  # 8->8 3×3 stride 2 on the 128×128 upsampled map
        "conv3": 288 * 72 * 72,  # 8->4 3×3 on 64×64 padded by 64/8 bottom and right
    }
    assert (cost.macs, cost.blocked_by) == (4_737_024, None)
    _, report = cli_json("check", str(path))
    # conv3 reads (H + H/8)×(W + W/8): 216 + 576 + 288·81/64 MACs per input pixel.
    assert report["models"][0]["cost"]["macs_per_input_pixel"] == 1156.5
    _, report = cli_json("check", str(path), "--input-shape", "input=1x3x64x64")
    assert report["models"][0]["cost"]["macs"] == 4_737_024


def test_blocked_by_names_the_first_node_of_unknown_macs(tmp_path: Path) -> None:
    """A Resize to sizes read from an input: no binding tells them, so conv2's MACs stay unknown."""
    value = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["a", "", "", "sizes"], ["b"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8]), value("sizes", TensorProto.INT64, [4])],
        [value("y", TensorProto.FLOAT, None)],
        [zeros("w1", (8, 3, 3, 3)), zeros("w2", (8, 8, 3, 3))],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx"
    )
    _, cost = costed(tmp_path / "m.onnx")
    assert cost.nodes["conv1"].macs == 216 * 64
    assert (cost.macs, cost.blocked_by) == (None, "conv2")
