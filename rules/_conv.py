"""Helpers the built-in rules share: scaling per-pixel costs, what counts as a saving, and the
binding of the rules that flag one conv to factorize."""

from __future__ import annotations

from dataclasses import dataclass

from convlint.findings import MIN_SAVING as MIN_SAVING  # the rules import it from here
from convlint.findings import Applicability, Estimate, Fix, described_fix
from convlint.graph import FLOAT_TYPES, Node
from convlint.view import View

# A finding must promise at least MIN_SAVING of the affected layers' MACs (or, where MACs are
# unknown, of their per-pixel MACs or params), the same share fix's rewrites must save.


@dataclass(frozen=True)
class SpatialConv:
    """What CL001 and CL005 bind on a finding (``Finding.binding``): the k×k conv they flag,
    which `convlint fix` factorizes or prunes the input channels of."""

    conv: Node


def scale(per_pixel: int, pixels: int | None) -> int | None:
    return per_pixel * pixels if pixels is not None else None


def saving(estimate: Estimate) -> float:
    """The share of MACs the estimate saves: total MACs where known, else MACs per output
    pixel, else params."""
    pairs = (
        (estimate.macs_before, estimate.macs_after),
        (estimate.macs_per_output_pixel, estimate.macs_per_output_pixel_after),
        (estimate.params_before, estimate.params_after),
    )
    for before, after in pairs:
        if before is not None and after is not None and before > 0:
            return 1 - after / before
    return 0.0


def rewrite_fix(
    view: View, nodes: list[Node], description: str, applicability: Applicability
) -> Fix:
    """The fix of ``applicability`` when every conv it rewrites is a float Conv with stored
    weights, else display-only: `convlint fix` does not rewrite quantized convs."""
    if all(view.is_float_conv(node) for node in nodes):
        return described_fix(applicability, description)
    if any(_quantized(view, node) for node in nodes):
        reason = "a quantized conv: rewrite the float model, then quantize it again"
    elif any(_fed(view, node) for node in nodes):
        reason = (
            "its weights are a graph input, fed at run time: convlint fix rewrites stored "
            "weights only"
        )
    else:  # float weights the graph computes (ConstantOfShape, Identity/Cast chains...)
        reason = (
            "its weights are computed in the graph, not stored: convlint fix rewrites "
            "stored weights only (fold the constants, e.g. with onnxsim, then fix)"
        )
    return described_fix(Applicability.DISPLAY_ONLY, reason)


def _quantized(view: View, node: Node) -> bool:
    """A conv of a quantized graph: an integer conv, or one whose weight is not float."""
    if node.op_type != "Conv":
        return True
    weight = view.conv_weight(node)
    if weight is None:
        return False
    producer = view.graph.producer_of(weight)
    dequantized = producer is not None and producer.op_type == "DequantizeLinear"
    return dequantized or view.graph.dtype(weight) not in FLOAT_TYPES


def _fed(view: View, node: Node) -> bool:
    """A conv whose weight is a graph input (not an initializer): the caller feeds it."""
    weight = view.conv_weight(node)
    return weight is not None and weight in view.graph.data_inputs
