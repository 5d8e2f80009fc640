"""Stage 5a: plan the rewrite of each finding, or say plainly why it cannot be rewritten.

``plan(finding, graph, weights, static_spatial, rule)`` plans a finding with its rule's own
rewrite (``Rule.rewrite``): a plugin's planner, or, for a built-in rule, the planner here of
the binding type the rule declares (``PLANNERS``: rules sit below this layer and may not import
it). A planner reads what the rule's check matched through the view from the finding's typed
binding (``Finding.binding``: the conv of CL001/CL005, CL003's chain, CL002's projection), takes
the weights it needs and returns a target of ``edit``'s protocol (``FactorTarget``,
``PoolTarget``, ``FoldTarget``, or a plugin's own ``Target``), or raises
:class:`NotRewritable` with the reason the report shows under ``skipped``. A rule without a
rewrite is never planned. Nothing here edits the model.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from convlint.cost import spatial_pixels
from convlint.errors import ConvlintError
from convlint.findings import Finding
from convlint.graph import ModelGraph, Node
from convlint.registry import Rule, load_registry
from convlint.rewrite.edit import (
    FactorTarget,
    FoldTarget,
    PatchGeometry,
    PoolTarget,
    Prunable,
    Target,
    Weights,
)
from convlint.rewrite.factorize import (
    Array,
    ConvSite,
    compose_pointwise_first,
    compose_pointwise_second,
    constant_response,
)
from convlint.rules._conv import SpatialConv
from convlint.rules.linear_conv_chain import ConvChain
from convlint.rules.pool_branch_inflates_concat import NoProjection, Projection
from convlint.view import ARITHMETIC, FOLDABLE, View, border_caveat, transposed_fold


class NotRewritable(Exception):
    """Why a finding has no rewrite here; becomes a ``skipped`` entry. A plugin's planner
    raises it too, with its own reason."""


class RewriteContext:
    """What a planner reads beside the finding: the (shape-inferred) graph the rule's check
    ran on, its canonical view, the model's stored constants (``weights.get(name)``), and
    whether every spatial size is static."""

    def __init__(self, graph: ModelGraph, weights: Weights, static_spatial: bool) -> None:
        self.graph = graph
        self.weights = weights
        self.static_spatial = static_spatial

    @functools.cached_property
    def view(self) -> View:
        return View(self.graph)


Planner = Callable[[Finding, RewriteContext], Target]


def plan(
    finding: Finding,
    graph: ModelGraph,
    weights: Weights,
    static_spatial: bool,
    rule: Rule | None = None,
) -> Target:
    """The target for a finding of the bound (shape-inferred) graph, planned by its rule's
    rewrite (``rule``: the finding's rule; by default the built-in rule of its code), or
    NotRewritable."""
    return plan_in(finding, RewriteContext(graph, weights, static_spatial), rule)


def plan_in(finding: Finding, context: RewriteContext, rule: Rule | None = None) -> Target:
    """``plan`` in a context shared by a model's findings (one canonical view for all)."""
    graph = context.graph
    if finding.node not in graph.nodes:
        raise NotRewritable("inside a subgraph: only the main graph is rewritten")
    if rule is None:
        rule = _builtin_rules().get(finding.code)
    planner = planner_for(rule) if rule is not None else None
    if planner is None:
        raise NotRewritable(_not_rewritten(finding))
    assert rule is not None
    if rule.origin == "convlint":
        return planner(finding, context)
    try:  # a plugin's planner: its failure names the rule, as a failing check does
        target = planner(finding, context)
    except NotRewritable:
        raise
    except Exception as exc:
        raise ConvlintError(
            f"rule {rule.code} ({rule.origin}): its rewrite failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(target, Target):
        raise ConvlintError(
            f"rule {rule.code} ({rule.origin}): its rewrite returned a "
            f"{type(target).__name__}, not a convlint.rewrite.edit.Target"
        )
    return target


def planner_for(rule: Rule) -> Planner | None:
    """The planner of a rule's declared rewrite: a plugin's own, or the one here for the
    binding type a built-in rule declares; None where the rule has none."""
    declared = rule.rewrite
    if declared is None:
        return None
    if isinstance(declared, type):
        return PLANNERS.get(declared)
    return declared


@functools.cache
def _builtin_rules() -> dict[str, Rule]:
    return {rule.code: rule for rule in load_registry(plugins=False)}


def _not_rewritten(finding: Finding) -> str:
    """Why a finding of a rule without a rewrite is not rewritten: what its fix says."""
    fix = finding.fix
    if fix is None:
        return f"{finding.code} has no rewrite"
    description = fix.description.removesuffix(f"; {fix.applicability.applied}")
    return f"{fix.applicability.value}: {description}"


Bound = TypeVar("Bound")


def bound(finding: Finding, kind: type[Bound]) -> Bound:
    """The finding's binding, of the type its rule declares; NotRewritable where it has none
    (a finding of `check`, whose findings keep no bindings: ``engine.lint`` keeps them)."""
    binding = finding.binding
    if not isinstance(binding, kind):
        raise NotRewritable(
            f"the finding carries no {kind.__name__} binding: plan findings of engine.lint"
        )
    return binding


def _conv_weight(node: Node, weights: Weights) -> tuple[Array, Array | None]:
    if node.op_type != "Conv" or not node.is_standard:
        raise NotRewritable(f"{node.name!r} is a {node.op_type}, not a standard Conv")
    if int(node.attrs.get("group", 1)) != 1:
        raise NotRewritable(f"{node.name!r} is a grouped conv")
    weight = weights.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        raise NotRewritable(f"the weight of {node.name!r} is not an initializer")
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = weights.get(node.inputs[2])
        if bias is None:
            raise NotRewritable(f"the bias of {node.name!r} is not an initializer")
    if not np.issubdtype(weight.dtype, np.floating):
        raise NotRewritable(f"the weight of {node.name!r} is not floating point")
    return weight, bias


def _plan_factor(finding: Finding, context: RewriteContext) -> Target:
    """CL001, CL005: the bound k×k conv's weight, to factorize or to prune its input channels."""
    conv = bound(finding, SpatialConv).conv
    graph, weights = context.graph, context.weights
    weight, bias = _conv_weight(conv, weights)
    in_px, out_px = spatial_pixels(graph, conv.inputs[0]), spatial_pixels(graph, conv.outputs[0])
    if in_px is None or out_px is None:
        raise NotRewritable("spatial sizes are unknown: MACs cannot be counted")
    kernel = tuple(int(k) for k in weight.shape[2:])
    patches = patch_geometry(conv, graph, kernel)
    mid_px = 0  # a spatial SVD's vertical conv: output rows × input columns
    if patches is not None and all(k > 1 for k in kernel):
        in_shape = graph.shape(conv.inputs[0])
        assert in_shape is not None and isinstance(in_shape[3], int)
        mid_px = patches.out_shape[0] * in_shape[3]
    site = ConvSite(
        cout=int(weight.shape[0]),
        cin=int(weight.shape[1]),
        kernel=kernel,
        in_pixels=in_px,
        out_pixels=out_px,
        has_bias=bias is not None,
        mid_pixels=mid_px,
    )
    out = conv.outputs[0]
    readers = graph.consumers_of(out)
    view = context.view
    relu = (
        len(readers) == 1
        and out not in graph.graph_outputs
        and view.activation_name(readers[0]) in ("ReLU", "ReLU6")
    )
    return FactorTarget(
        code=finding.code,
        node=finding.node,
        kind="factorize",
        claims=frozenset({conv.index}),
        conv=conv,
        weight=weight.astype(np.float64),
        bias=bias,
        dtype=weights.dtype(conv.inputs[1]),
        site=site,
        patches=patches,
        relu=relu,
        activated=readers[0].outputs[0] if relu else None,
        prunable=prune_chain(conv, graph, weights, view),
    )


# Roles a channel pruning narrows on its way up to the producing conv: each computes channel by
# channel (their per-channel constants are sliced with the channels).
PRUNE_THROUGH = frozenset({"activation", "affine", "passthrough", "pool"})


def prune_chain(conv: Node, graph: ModelGraph, weights: Weights, view: View) -> Prunable | None:
    """What pruning ``conv``'s input channels narrows: every node between it and the conv
    that produces them (each read by the next alone), with the values of their constants;
    None when a node on the way is shared, mixes channels, or is not a plain float Conv."""
    tensor = conv.inputs[0]
    originals: dict[str, Array] = {}
    macs = 0
    while True:
        readers = graph.consumers_of(tensor)
        if len(readers) != 1 or tensor in graph.graph_outputs:
            return None
        node = graph.producer_of(tensor)
        if node is None:
            return None
        if view.role(node) == "conv":
            if node.op_type != "Conv" or int(node.attrs.get("group", 1)) != 1:
                return None
            try:
                weight, bias = _conv_weight(node, weights)
            except NotRewritable:
                return None
            originals[node.inputs[1]] = weight
            if bias is not None:
                originals[node.inputs[2]] = bias
            pixels = spatial_pixels(graph, node.outputs[0])
            if pixels is None:
                return None
            macs += int(weight.size) * pixels
            return Prunable(node.name, node.outputs[0], int(macs), originals)
        if view.role(node) not in PRUNE_THROUGH or len(node.outputs) != 1:
            return None
        data = view.data_input(node)
        if data is None or view.graph.producer_of(data) is None:
            return None
        for operand in node.inputs:
            if operand and operand != data and graph.is_constant(operand):
                value = weights.get(operand)
                if value is None:
                    return None
                originals[operand] = value
        tensor = data


def patch_geometry(conv: Node, graph: ModelGraph, kernel: Sequence[int]) -> PatchGeometry | None:
    """How a 2-D conv reads its input, pads made explicit (auto_pad resolved); None for
    other convs or unknown sizes (a refit then keeps the factors as they are)."""
    shape_in, shape_out = graph.shape(conv.inputs[0]), graph.shape(conv.outputs[0])
    if shape_in is None or shape_out is None or len(shape_in) != 4 or len(shape_out) != 4:
        return None
    sizes_in, sizes_out = shape_in[2:], shape_out[2:]
    if not all(isinstance(d, int) for d in (*sizes_in, *sizes_out)):
        return None
    strides = [int(v) for v in conv.attrs.get("strides") or [1, 1]]
    dilations = [int(v) for v in conv.attrs.get("dilations") or [1, 1]]
    pads = [int(v) for v in conv.attrs.get("pads") or [0, 0, 0, 0]]
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if len(kernel) != 2:
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for axis in range(2):
            need = (sizes_out[axis] - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis]
            total = max(0, need + 1 - int(sizes_in[axis]))
            small, large = total // 2, total - total // 2
            first = small if auto_pad == "SAME_UPPER" else large
            pads[axis], pads[axis + 2] = first, total - first
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    return PatchGeometry(
        (int(sizes_out[0]), int(sizes_out[1])),
        (strides[0], strides[1]),
        (pads[0], pads[1], pads[2], pads[3]),
        (dilations[0], dilations[1]),
    )


def _plan_pool(finding: Finding, context: RewriteContext) -> Target:
    """CL002: the projection the rule matched (its binding, from ``match_projection`` through
    the view that found the branch), with the weights it folds into."""
    if isinstance(finding.binding, NoProjection):
        raise NotRewritable(finding.binding.reason)
    match = bound(finding, Projection)
    graph, weights, view = context.graph, context.weights, context.view
    concat = match.concat
    widths = [view.channels(t) for t in concat.inputs]  # on the concat's channel axis
    if any(w is None for w in widths):
        raise NotRewritable("channel counts of the concat's inputs are unknown")
    branch = match.branch
    offset = sum(int(w or 0) for w in widths[:branch])
    found = []
    for conv in match.convs:
        weight, _ = _conv_weight(conv, weights)
        px = spatial_pixels(graph, conv.outputs[0])
        if px is None:
            raise NotRewritable("spatial sizes are unknown: MACs cannot be counted")
        found.append((conv, weight.astype(np.float64), px))
    pool_px = spatial_pixels(graph, match.site)
    if pool_px is None:
        raise NotRewritable("the concat has no conv consumer to fold a projection into")
    return PoolTarget(
        code=finding.code,
        node=finding.node,
        kind="pool-projection",
        claims=frozenset({concat.index, match.reader.index, *(c.index for c, _, _ in found)}),
        unsafe=match.nonlinear,
        concat=concat,
        branch=branch,
        site=match.site,
        reader=match.reader,
        carried=[n.outputs[0] for n in match.carried],
        offset=offset,
        channels=int(widths[branch] or 0),
        convs=[c for c, _, _ in found],
        weights=[w for _, w, _ in found],
        out_pixels=[px for _, _, px in found],
        pool_pixels=pool_px,
        dtype=weights.dtype(found[0][0].inputs[1]),
    )


def _affine(nodes: Sequence[Node], channels: int, weights: Weights) -> tuple[Array, Array]:
    """Per-channel (scale, shift) of the affine ops between two convs, in order:
    BatchNormalization with its epsilon, and Mul/Add/Sub/Div by a constant (Caffe's Scale,
    TensorFlow's BatchNorm), which the view recognized as broadcasting per channel."""
    scale, shift = np.ones(channels), np.zeros(channels)
    for node in nodes:
        if node.op_type == "Dropout":
            if len(node.inputs) > 2 and node.inputs[2]:
                raise NotRewritable(f"Dropout {node.name!r} has a training_mode input")
            continue
        if node.op_type in ARITHMETIC:
            scale, shift = _arithmetic(node, scale, shift, weights)
            continue
        if node.op_type != "BatchNormalization":
            continue
        params = [weights.get(t) for t in node.inputs[1:5]]
        if any(p is None for p in params) or len(node.outputs) > 1 and any(node.outputs[1:]):
            raise NotRewritable(f"BatchNormalization {node.name!r} is not in inference form")
        gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)  # type: ignore[arg-type]
        a = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        scale, shift = a * scale, a * shift + beta - a * mean
    return scale, shift


def _arithmetic(node: Node, scale: Array, shift: Array, weights: Weights) -> tuple[Array, Array]:
    """``scale·x + shift`` after one Mul/Add/Sub/Div by a per-channel constant."""
    position = next((i for i, t in enumerate(node.inputs) if weights.get(t) is not None), None)
    if position is None:
        raise NotRewritable(f"the constant of {node.op_type} {node.name!r} is not stored")
    value = np.asarray(weights.get(node.inputs[position]), np.float64).reshape(-1)
    if value.size not in (1, scale.size):
        raise NotRewritable(f"the constant of {node.op_type} {node.name!r} is not per channel")
    vector = np.broadcast_to(value, scale.shape)
    if node.op_type == "Mul":
        return scale * vector, shift * vector
    if node.op_type == "Div":
        return scale / vector, shift / vector
    if node.op_type == "Add":
        return scale, shift + vector
    if position == 1:  # x - c
        return scale, shift - vector
    return -scale, vector - shift  # c - x


def _plan_fold(finding: Finding, context: RewriteContext) -> Target:
    """CL003: the bound chain folded into one conv (or one ConvTranspose)."""
    chain = bound(finding, ConvChain)
    graph, weights, static_spatial = context.graph, context.weights, context.static_spatial
    first, between, second = chain.first, list(chain.between), chain.second
    off = next((n for n in between if context.view.role(n) not in FOLDABLE), None)
    if off is not None:
        raise NotRewritable(
            f"the chain passes through {off.op_type} {off.name!r}: convlint fix folds chains of "
            "per-channel affine ops only"
        )
    if "ConvTranspose" in (first.op_type, second.op_type):
        return _plan_transposed_fold(finding, first, between, second, graph, weights)
    if second.op_type != "Conv":
        raise NotRewritable(
            "the chain does not end in exactly one conv after per-channel affine ops "
            f"({second.op_type} {second.name!r})"
        )
    for node in [first, *between]:
        if any(t in graph.graph_outputs for t in node.outputs if t):
            raise NotRewritable(f"the output of {node.name!r} is a graph output")
        if len([t for t in node.outputs if t and graph.consumers_of(t)]) > 1:
            raise NotRewritable(f"{node.name!r} has more than one used output")
    w1, b1 = _conv_weight(first, weights)
    w2, b2 = _conv_weight(second, weights)
    w1, w2 = w1.astype(np.float64), w2.astype(np.float64)
    scale, shift = _affine(between, w1.shape[0], weights)
    constant = shift + (scale * b1 if b1 is not None else 0.0)
    bias2 = np.zeros(w2.shape[0]) if b2 is None else b2.astype(np.float64)
    correction = None
    if _plain_pointwise(second, w2):
        weight = compose_pointwise_second(w1, w2.reshape(w2.shape[0], -1) * scale)
        bias = w2.reshape(w2.shape[0], -1) @ constant + bias2
        spatial = first
    elif _plain_pointwise(first, w1):
        weight = compose_pointwise_first(w1.reshape(w1.shape[0], -1) * scale[:, None], w2)
        interior = np.einsum("om...,m->o...", w2, constant).reshape(w2.shape[0], -1).sum(axis=1)
        bias = interior + bias2
        spatial = second
        if np.any(constant) and _pads_something(second):
            if not static_spatial:
                raise NotRewritable(
                    "a bias enters the zero-padded conv and the spatial size is symbolic: "
                    "the border bias map needs a static size"
                )
            correction = (
                _border_correction(second, w2, constant, graph)
                - interior[(slice(None),) + (None,) * (w2.ndim - 2)]
            )
            correction = correction[None]
    else:
        raise NotRewritable("neither conv is an unstrided, unpadded 1×1 conv")
    has_bias = b1 is not None or b2 is not None or np.any(constant)
    return FoldTarget(
        code=finding.code,
        node=finding.node,
        kind="fold",
        claims=frozenset({first.index, second.index, *(n.index for n in between)}),
        first=first,
        between=list(between),
        second=second,
        weight=weight,
        bias=bias if has_bias else None,
        correction=correction,
        spatial=spatial,
        dtype=weights.dtype(second.inputs[1]),
    )


def _deconv_weight(node: Node, weights: Weights) -> tuple[Array, Array | None]:
    if node.op_type != "ConvTranspose" or not node.is_standard:
        raise NotRewritable(f"{node.name!r} is a {node.op_type}, not a standard ConvTranspose")
    if int(node.attrs.get("group", 1)) != 1:
        raise NotRewritable(f"{node.name!r} is a grouped ConvTranspose")
    weight = weights.get(node.inputs[1]) if len(node.inputs) > 1 else None
    bias = weights.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if weight is None or (len(node.inputs) > 2 and node.inputs[2] and bias is None):
        raise NotRewritable(f"the weights of {node.name!r} are not initializers")
    if not np.issubdtype(weight.dtype, np.floating):
        raise NotRewritable(f"the weight of {node.name!r} is not floating point")
    return weight, bias


def compose_transposed(deconv: Array, conv: Array) -> Array:
    """The ConvTranspose weight (C_in, C_out, K1 + K2 - 1) of a ConvTranspose ``deconv``
    (C_in, M, K1) then a stride-1 conv ``conv`` (C_out, M, K2): tap m of the composite sums
    deconv tap k times conv tap j over k - j = m - (K2 - 1), the conv's taps reversed because
    a conv correlates where a ConvTranspose scatters."""
    kernel1, kernel2 = deconv.shape[2:], conv.shape[2:]
    rows = (slice(None), slice(None))
    flipped = conv[rows + (slice(None, None, -1),) * len(kernel2)]
    sizes = tuple(a + b - 1 for a, b in zip(kernel1, kernel2, strict=True))
    out = np.zeros((deconv.shape[0], conv.shape[0], *sizes))
    for tap in itertools.product(*(range(k) for k in kernel1)):
        window = tuple(slice(t, t + k) for t, k in zip(tap, kernel2, strict=True))
        out[rows + window] += np.einsum("im,om...->io...", deconv[rows + tap], flipped)
    return out


def _plan_transposed_fold(
    finding: Finding,
    first: Node,
    between: list[Node],
    second: Node,
    graph: ModelGraph,
    weights: Weights,
) -> Target:
    """CL003 on a ConvTranspose then a conv (one ConvTranspose K1 + K2 - 1, stride s, pads
    p + K2 - 1 - q; with the interior bias, unsafe where the borders differ), or a 1×1 conv
    then a ConvTranspose (exact when no shift lies before the ConvTranspose)."""
    for node in [first, *between]:
        if any(t in graph.graph_outputs for t in node.outputs if t):
            raise NotRewritable(f"the output of {node.name!r} is a graph output")
    deconv_first = first.op_type == "ConvTranspose"
    if deconv_first:
        w1, b1 = _deconv_weight(first, weights)
        w2, b2 = _conv_weight(second, weights)
        channels = w1.shape[1]
    else:
        w1, b1 = _conv_weight(first, weights)
        w2, b2 = _deconv_weight(second, weights)
        channels = w1.shape[0]
    w1, w2 = w1.astype(np.float64), w2.astype(np.float64)
    scale, shift = _affine(between, channels, weights)
    constant = shift + (scale * b1 if b1 is not None else 0.0)
    bias2 = np.zeros(w2.shape[0 if deconv_first else 1]) if b2 is None else b2.astype(np.float64)
    pads: list[int] | None = None
    unsafe = False
    if deconv_first:
        kernel, pads, reason = transposed_fold(
            first, second, tuple(w1.shape[2:]), tuple(w2.shape[2:])
        )
        if reason:
            raise NotRewritable(reason)
        del kernel
        weight = compose_transposed(w1 * scale.reshape(1, -1, *(1,) * (w1.ndim - 2)), w2)
        per_tap = np.einsum("om...,m->o...", w2, constant)
        bias = per_tap.reshape(w2.shape[0], -1).sum(axis=1) + bias2  # the interior value
        unsafe = bool(border_caveat(first, second, bool(np.any(constant))))
        spatial = first
    else:
        if not _plain_pointwise(first, w1):
            raise NotRewritable("the conv before the ConvTranspose is not an unstrided 1×1 conv")
        if np.any(constant):
            raise NotRewritable(
                "a bias before the ConvTranspose reaches its output unevenly: no ConvTranspose "
                "bias holds it"
            )
        pointwise = w1.reshape(w1.shape[0], -1) * scale[:, None]  # (M, C_in)
        weight = np.einsum("mi,mo...->io...", pointwise, w2)
        bias = bias2
        spatial = second
    has_bias = b1 is not None or b2 is not None or bool(np.any(constant))
    return FoldTarget(
        code=finding.code,
        node=finding.node,
        kind="fold",
        claims=frozenset({first.index, second.index, *(n.index for n in between)}),
        unsafe=unsafe,
        first=first,
        between=list(between),
        second=second,
        weight=weight,
        bias=bias if has_bias else None,
        spatial=spatial,
        dtype=weights.dtype(second.inputs[1]),
        transposed=True,
        pads=pads,
    )


def _plain_pointwise(node: Node, weight: Array) -> bool:
    return (
        all(k == 1 for k in weight.shape[2:])
        and all(s == 1 for s in node.attrs.get("strides") or [1])
        and not any(node.attrs.get("pads") or [])
        and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    )


def _pads_something(node: Node) -> bool:
    return any(node.attrs.get("pads") or []) or (
        node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    )


def _pads_begin(node: Node, graph: ModelGraph) -> list[int]:
    in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    weight = graph.shape(node.inputs[1])
    assert in_shape is not None and out_shape is not None and weight is not None
    spatial = len(weight) - 2
    pads = list(node.attrs.get("pads") or [0] * 2 * spatial)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return [int(p) for p in pads[:spatial]]
    strides = node.attrs.get("strides") or [1] * spatial
    dilations = node.attrs.get("dilations") or [1] * spatial
    begins = []
    for i in range(spatial):
        size, out, k = int(in_shape[2 + i]), int(out_shape[2 + i]), int(weight[2 + i])  # type: ignore[arg-type]
        total = max((out - 1) * strides[i] + (k - 1) * dilations[i] + 1 - size, 0)
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


def _border_correction(node: Node, weight: Array, constant: Array, graph: ModelGraph) -> Array:
    in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if (
        in_shape is None
        or out_shape is None
        or not all(isinstance(d, int) for d in (*in_shape[2:], *out_shape[2:]))
    ):
        raise NotRewritable("spatial sizes around the padded conv are unknown")
    spatial = weight.ndim - 2
    return constant_response(
        weight,
        constant,
        [int(d) for d in in_shape[2:]],  # type: ignore[arg-type]
        [int(d) for d in out_shape[2:]],  # type: ignore[arg-type]
        node.attrs.get("strides") or [1] * spatial,
        _pads_begin(node, graph),
        node.attrs.get("dilations") or [1] * spatial,
    )


# The built-in rules' planners, by the binding type each rule declares as its rewrite
# (``Rule.rewrite``): found through the rule, never by its code. tests/test_completeness.py
# holds every built-in declaration to a planner here, and what each finding's fix promises to
# what its planner plans, across the fixtures.
PLANNERS: dict[type, Planner] = {
    SpatialConv: _plan_factor,
    Projection: _plan_pool,
    ConvChain: _plan_fold,
}
