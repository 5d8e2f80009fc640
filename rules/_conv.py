"""Convolution geometry shared by the rules: kernel, groups, widths, costs of alternatives."""

from __future__ import annotations

import math
from typing import NamedTuple

from convlint.cost import spatial_pixels
from convlint.graph import ModelGraph, Node


class ConvGeometry(NamedTuple):
    """A Conv node's shape facts, read from its weight and attributes.

    A NamedTuple rather than a frozen dataclass: as immutable, and three times quicker to
    create, which counts on graphs of thousands of convs. The input's pixel count is not here:
    only estimates for flagged convs need it (``spatial_pixels(graph, node.inputs[0])``), and
    reading it for every conv parsed one more shape per conv.
    """

    cin: int
    cout: int
    kernel: tuple[int, ...]
    group: int
    strides: tuple[int, ...]
    has_bias: bool
    out_pixels: int | None

    @property
    def kernel_area(self) -> int:
        return math.prod(self.kernel)

    @property
    def is_pointwise(self) -> bool:
        return self.kernel.count(1) == len(self.kernel)  # every dim 1; count runs in C

    @property
    def is_spatial(self) -> bool:
        return not self.is_pointwise

    @property
    def kernel_text(self) -> str:
        """The kernel as "3×3", "1×7", "3×3×3"; a 1-D kernel reads "1-D 3"."""
        if len(self.kernel) == 1:
            return f"1-D {self.kernel[0]}"
        return "×".join(map(str, self.kernel))

    @property
    def stride_area(self) -> int:
        return math.prod(self.strides)


def conv_geometry(graph: ModelGraph, node: Node) -> ConvGeometry | None:
    """Geometry of a standard Conv with a known weight shape, else None (memoized per node)."""
    if node.op_type != "Conv" or not node.is_standard or len(node.inputs) < 2:
        return None
    key = ("conv_geometry", node.name)
    if key not in graph.memo:
        graph.memo[key] = _conv_geometry(graph, node)
    result: ConvGeometry | None = graph.memo[key]
    return result


def _conv_geometry(graph: ModelGraph, node: Node) -> ConvGeometry | None:
    weight = graph.shape(node.inputs[1])
    if weight is None or len(weight) < 3 or not all(isinstance(d, int) for d in weight):
        return None
    group = int(node.attr("group", 1))
    kernel = tuple(int(d) for d in weight[2:])  # type: ignore[arg-type]
    strides = tuple(node.attr("strides") or [1] * len(kernel))
    return ConvGeometry(
        cin=int(weight[1]) * group,  # type: ignore[arg-type]
        cout=int(weight[0]),  # type: ignore[arg-type]
        kernel=kernel,
        group=group,
        strides=strides,
        has_bias=len(node.inputs) > 2 and bool(node.inputs[2]),
        out_pixels=spatial_pixels(graph, node.outputs[0]),
    )


def scale(per_pixel: int, pixels: int | None) -> int | None:
    return per_pixel * pixels if pixels is not None else None
