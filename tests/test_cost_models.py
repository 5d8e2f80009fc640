"""Costs of the layer kinds beyond float convs: quantized, recurrent, computed weights and shapes.

Every number is counted by hand in the fixture's docstring or beside the assertion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
