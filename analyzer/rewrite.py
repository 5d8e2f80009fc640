"""Stage 5b: turn findings into graph rewrites of a model that carries its weights.

A finding becomes a *target* (or a skip with a reason): the nodes it would replace, the
tensors whose statistics the data-aware method needs, and ``edit(factors)``, the node
replacements for one choice of factors. Edits of different targets touch disjoint nodes, so
any subset applies to the original model in one pass (:func:`apply_edits`), keeping the
original's node order (every new node takes the place of a node it replaces).

- CL001/CL005 (:class:`FactorTarget`): the k×k conv becomes 1×1 + k×k, k×k + 1×1 or
  1×1 + k×k + 1×1 (see ``factorize``); stride, pads, auto_pad and dilations stay on the k×k
  conv, the bias on the last conv.
- CL002 (:class:`PoolTarget`): a 1×1 projection after the pooling branch, folded into the
  concat's conv consumers (their weight slices for the pooled channels). Skipped when the concat
  is a graph output (the rewrite would change a model output). Consumers behind a parameter-free
  activation make it unsafe: the activation no longer commutes with the projection.
- CL003 (:class:`FoldTarget`): conv -> [BatchNormalization/Identity/Dropout] -> conv becomes
  one conv, exactly. A shift (first conv's bias, BN's) entering a zero-padded k×k conv is not a
  constant at the borders: the folded conv gets the interior value as its bias and an ``Add``
  of the border correction (computed as the conv of the constant tensor), which needs static
  spatial sizes; with symbolic ones the fold is skipped.
- CL004 is display-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convlint.cost import spatial_pixels
from convlint.factorize import (
    Array,
    Consumer,
    ConvFactorizer,
    ConvSite,
    Factors,
    PoolProjection,
    Statistics,
    compose_pointwise_first,
    compose_pointwise_second,
    constant_response,
)
from convlint.findings import Finding
from convlint.graph import ACTIVATIONS, ModelGraph, Node

FACTORIZED = ("CL001", "CL005")
PARAMETER_FREE_ACTIVATIONS = ACTIVATIONS - {"PRelu", "Clip"}
FOLD_THROUGH = frozenset({"BatchNormalization", "Identity", "Dropout"})


@dataclass
class Edit:
    """Node replacements by proto index (an empty list deletes), and new initializers."""

    replace: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    new_nodes: list[str] = field(default_factory=list)  # names, for costs on the written model
    reshaped: set[str] = field(default_factory=set)  # tensors whose inferred shape changes


class Names:
    """Fresh node, tensor and initializer names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used: set[str] = {n.name for n in model.graph.node}
        for node in model.graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
        self.used.update(t.name for t in model.graph.initializer)
        self.used.update(v.name for v in model.graph.input)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


def apply_edits(model: onnx.ModelProto, edits: Iterable[Edit]) -> onnx.ModelProto:
    """A copy of ``model`` with the edits applied and initializers nobody reads removed."""
    replace: dict[int, list[onnx.NodeProto]] = {}
    added: list[onnx.TensorProto] = []
    changed: set[str] = set()
    for edit in edits:
        replace.update(edit.replace)
        added.extend(edit.initializers)
        changed |= edit.reshaped
    new = onnx.ModelProto()
    new.CopyFrom(model)
    graph = new.graph
    removed = [graph.node[i] for i in replace]
    nodes = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(replace.get(index, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    read |= _subgraph_reads(graph)
    candidates = {t for n in removed for t in n.input} - read
    keep = [t for t in graph.initializer if t.name not in candidates]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    stale_inputs = [v for v in graph.input if v.name not in candidates]
    del graph.input[:]
    graph.input.extend(stale_inputs)
    # Shapes of replaced nodes' outputs may change (a narrower concat): let inference redo them.
    changed |= {t for n in removed for t in n.output}
    infos = [v for v in graph.value_info if v.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return new


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    reads: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                for inner in sub.node:
                    reads.update(inner.input)
                reads |= _subgraph_reads(sub)
    return reads


def _conv(
    name: str,
    inputs: Sequence[str],
    output: str,
    kernel: Sequence[int],
    template: onnx.NodeProto | None = None,
) -> onnx.NodeProto:
    """A Conv node: pointwise with default attributes, or the template's attributes with
    ``kernel`` as kernel_shape (strides, pads, auto_pad and dilations carried over)."""
    node = helper.make_node("Conv", list(inputs), [output], name=name)
    if template is not None:
        for attr in template.attribute:
            if attr.name not in ("kernel_shape", "group"):
                node.attribute.append(attr)
        node.domain = template.domain
    node.attribute.append(helper.make_attribute("kernel_shape", list(kernel)))
    return node


class Weights:
    """Constant values of the original model, by tensor name (external data already loaded):
    initializers, Constant node values, and Identity nodes passing either on (PyTorch shares
    equal biases among convs that way)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._tensors = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute:
                value = node.attribute[0]
                if value.name == "value" and value.type == onnx.AttributeProto.TENSOR:
                    self._tensors[node.output[0]] = value.t
            elif node.op_type == "Identity" and node.input[0] in self._tensors:
                self._tensors[node.output[0]] = self._tensors[node.input[0]]

    def get(self, name: str) -> Array | None:
        tensor = self._tensors.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self._tensors[name].data_type))


def _tensor(values: Array, name: str, dtype: np.dtype[Any]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(values, dtype=dtype), name)


@dataclass(kw_only=True)
class Target:
    """A finding the fixer can rewrite."""

    code: str
    node: str
    kind: str  # "factorize", "pool-projection" or "fold"
    claims: frozenset[int]  # proto indices of the nodes it replaces
    unsafe: bool = False

    @property
    def lossy(self) -> bool:
        return self.kind != "fold"

    def replaced_nodes(self) -> list[str]:
        return []

    def stat_tensors(self) -> list[str]:
        return []


@dataclass(kw_only=True)
class FactorTarget(Target):
    conv: Node = field(repr=False)
    weight: Array = field(repr=False)
    bias: Array | None = field(default=None, repr=False)
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)
    site: ConvSite

    def replaced_nodes(self) -> list[str]:
        return [self.conv.name]

    def stat_tensors(self) -> list[str]:
        return [self.conv.inputs[0], self.conv.outputs[0]]

    def search(self, stats: dict[str, Array] | None) -> ConvFactorizer:
        if stats is None:
            return ConvFactorizer(self.weight, self.site)
        response = stats[self.conv.outputs[0]]
        return ConvFactorizer(
            self.weight,
            self.site,
            Statistics(stats[self.conv.inputs[0]], _minus_bias(response, stats, self)),
        )

    def edit(self, factors: Factors, names: Names) -> Edit:
        proto, conv = self.conv.proto, self.conv
        x, y = conv.inputs[0], conv.outputs[0]
        pointwise = [1] * len(self.site.kernel)
        bias = [conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else []
        initializers = [
            _tensor(w, names.fresh(f"{conv.name}.{part}.weight"), self.dtype)
            for w, part in zip(factors.weights, _parts(factors.kind), strict=True)
        ]
        w_names = [t.name for t in initializers]
        nodes: list[onnx.NodeProto] = []
        if factors.kind == "svd-reduce":
            mid = names.fresh(f"{y}/reduced")
            nodes.append(_conv(names.fresh(f"{conv.name}/reduce"), [x, w_names[0]], mid, pointwise))
            nodes.append(_conv(conv.name, [mid, w_names[1], *bias], y, self.site.kernel, proto))
        elif factors.kind == "svd-expand":
            mid = names.fresh(f"{y}/spatial")
            nodes.append(_conv(conv.name, [x, w_names[0]], mid, self.site.kernel, proto))
            nodes.append(
                _conv(names.fresh(f"{conv.name}/expand"), [mid, w_names[1], *bias], y, pointwise)
            )
        else:
            mid, core = names.fresh(f"{y}/reduced"), names.fresh(f"{y}/core")
            nodes.append(_conv(names.fresh(f"{conv.name}/reduce"), [x, w_names[0]], mid, pointwise))
            nodes.append(_conv(conv.name, [mid, w_names[1]], core, self.site.kernel, proto))
            nodes.append(
                _conv(names.fresh(f"{conv.name}/expand"), [core, w_names[2], *bias], y, pointwise)
            )
        return Edit({conv.index: nodes}, initializers, [n.name for n in nodes])


def _parts(kind: str) -> list[str]:
    return {
        "svd-reduce": ["reduce", "spatial"],
        "svd-expand": ["spatial", "expand"],
        "tucker2": ["reduce", "core", "expand"],
    }[kind]


def _minus_bias(response: Array, stats: dict[str, Array], target: FactorTarget) -> Array:
    """E[y0 y0ᵀ] from E[y yᵀ] and E[y]: y0 = y - b, so E[y0 y0ᵀ] = E[yyᵀ] - mbᵀ - bmᵀ + bbᵀ."""
    if target.bias is None:
        return response
    b = target.bias.astype(np.float64)
    mean = stats[f"{target.conv.outputs[0]}#mean"]
    return response - np.outer(mean, b) - np.outer(b, mean) + np.outer(b, b)


@dataclass(kw_only=True)
class PoolTarget(Target):
    concat: Node = field(repr=False)
    branch: int = 0  # which concat input carries the pooled channels
    offset: int = 0
    channels: int = 0
    convs: list[Node] = field(default_factory=list, repr=False)
    weights: list[Array] = field(default_factory=list, repr=False)
    out_pixels: list[int] = field(default_factory=list)
    pool_pixels: int = 0
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)

    def replaced_nodes(self) -> list[str]:
        return [self.concat.name, *(c.name for c in self.convs)]

    def stat_tensors(self) -> list[str]:
        return [self.concat.inputs[self.branch]]

    def search(self, stats: dict[str, Array] | None) -> PoolProjection:
        lo, hi = self.offset, self.offset + self.channels
        consumers = [
            Consumer(w[:, lo:hi], px) for w, px in zip(self.weights, self.out_pixels, strict=True)
        ]
        moment = None if stats is None else stats[self.concat.inputs[self.branch]]
        return PoolProjection(consumers, self.pool_pixels, moment)

    def edit(self, factors: Factors, names: Names) -> Edit:
        assert isinstance(factors.rank, int)
        pooled = self.concat.inputs[self.branch]
        projection, *slices = factors.weights
        spatial = len(self.weights[0].shape) - 2
        proj_weight = _tensor(projection, names.fresh(f"{self.node}/proj.weight"), self.dtype)
        projected = names.fresh(f"{pooled}/proj")
        proj = _conv(
            names.fresh(f"{self.node}/proj"), [pooled, proj_weight.name], projected, [1] * spatial
        )
        concat = onnx.NodeProto()
        concat.CopyFrom(self.concat.proto)
        concat.name = self.concat.name
        concat.input[self.branch] = projected
        edit = Edit({self.concat.index: [proj, concat]}, [proj_weight], [proj.name])
        edit.reshaped = {self.concat.outputs[0], *(c.inputs[0] for c in self.convs)}
        lo, hi = self.offset, self.offset + self.channels
        for conv, weight, new_slice in zip(self.convs, self.weights, slices, strict=True):
            merged = np.concatenate([weight[:, :lo], new_slice, weight[:, hi:]], axis=1)
            tensor = _tensor(merged, names.fresh(f"{conv.name}.weight/projected"), self.dtype)
            node = onnx.NodeProto()
            node.CopyFrom(conv.proto)
            node.name = conv.name
            node.input[1] = tensor.name
            edit.replace[conv.index] = [node]
            edit.initializers.append(tensor)
            edit.new_nodes.append(node.name)
        return edit


@dataclass(kw_only=True)
class FoldTarget(Target):
    first: Node = field(repr=False)
    between: list[Node] = field(default_factory=list, repr=False)
    second: Node = field(repr=False)
    weight: Array = field(repr=False)
    bias: Array | None = field(default=None, repr=False)
    correction: Array | None = field(default=None, repr=False)  # border bias map, (1, C, *out)
    spatial: Node = field(repr=False)
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)

    def replaced_nodes(self) -> list[str]:
        return [self.first.name, *(n.name for n in self.between), self.second.name]

    def edit(self, names: Names) -> Edit:
        x, y = self.first.inputs[0], self.second.outputs[0]
        weight = _tensor(self.weight, names.fresh(f"{self.second.name}.weight/folded"), self.dtype)
        initializers = [weight]
        inputs = [x, weight.name]
        if self.bias is not None:
            bias = _tensor(self.bias, names.fresh(f"{self.second.name}.bias/folded"), self.dtype)
            initializers.append(bias)
            inputs.append(bias.name)
        conv_out = y if self.correction is None else names.fresh(f"{y}/interior")
        kernel = list(self.weight.shape[2:])
        nodes = [_conv(self.second.name, inputs, conv_out, kernel, self.spatial.proto)]
        if self.correction is not None:
            border = _tensor(self.correction, names.fresh(f"{self.second.name}/border"), self.dtype)
            initializers.append(border)
            nodes.append(
                helper.make_node(
                    "Add",
                    [conv_out, border.name],
                    [y],
                    name=names.fresh(f"{self.second.name}/border"),
                )
            )
        edit = Edit({n.index: [] for n in [self.first, *self.between]}, initializers)
        edit.replace[self.second.index] = nodes
        edit.new_nodes = [n.name for n in nodes]
        return edit


# -- planning: finding -> target or the reason it cannot be rewritten ----------------------


class NotRewritable(Exception):
    """Why a finding has no rewrite here; becomes a ``skipped`` entry."""


def plan(finding: Finding, graph: ModelGraph, weights: Weights, static_spatial: bool) -> Target:
    """The target for a finding of the bound (shape-inferred) graph, or NotRewritable."""
    if finding.node not in graph.nodes:
        raise NotRewritable("inside a subgraph: only the main graph is rewritten")
    node = graph.nodes[finding.node]
    if finding.code in FACTORIZED:
        return _plan_factor(finding, node, graph, weights)
    if finding.code == "CL002":
        return _plan_pool(finding, node, graph, weights)
    if finding.code == "CL003":
        return _plan_fold(finding, node, graph, weights, static_spatial)
    if finding.code == "CL004":
        raise NotRewritable(
            "display-only: replacing a trained dense head by global pooling changes the "
            "function and needs retraining"
        )
    raise NotRewritable(f"{finding.code} has no rewrite")


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


def _plan_factor(finding: Finding, conv: Node, graph: ModelGraph, weights: Weights) -> Target:
    weight, bias = _conv_weight(conv, weights)
    in_px, out_px = spatial_pixels(graph, conv.inputs[0]), spatial_pixels(graph, conv.outputs[0])
    if in_px is None or out_px is None:
        raise NotRewritable("spatial sizes are unknown: MACs cannot be counted")
    site = ConvSite(
        cout=int(weight.shape[0]),
        cin=int(weight.shape[1]),
        kernel=tuple(int(k) for k in weight.shape[2:]),
        in_pixels=in_px,
        out_pixels=out_px,
        has_bias=bias is not None,
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
    )


def _plan_pool(finding: Finding, pool: Node, graph: ModelGraph, weights: Weights) -> Target:
    related = [graph.nodes[n] for n in finding.related if n in graph.nodes]
    concat = next((n for n in related if n.op_type == "Concat"), None)
    if concat is None:
        raise NotRewritable("the concat of the pooling branch was not found")
    out = concat.outputs[0]
    if out in graph.graph_outputs:
        raise NotRewritable(
            f"the output of concat {concat.name!r} is a graph output: narrowing it would change "
            "a model output"
        )
    branches = [i for i, t in enumerate(concat.inputs) if graph.source_of(t)[0] is pool]
    if len(branches) != 1 or concat.inputs.count(concat.inputs[branches[0]]) != 1:
        raise NotRewritable("the pooled channels enter the concat more than once")
    widths = [graph.channels(t) for t in concat.inputs]
    if any(w is None for w in widths):
        raise NotRewritable("channel counts of the concat's inputs are unknown")
    branch = branches[0]
    offset = sum(int(w or 0) for w in widths[:branch])
    convs, unsafe = [], False
    for consumer in graph.consumers_of(out):
        if consumer.op_type in PARAMETER_FREE_ACTIVATIONS and consumer.is_standard:
            unsafe = True
            if consumer.outputs[0] in graph.graph_outputs:
                raise NotRewritable(f"{consumer.name!r} after the concat is a graph output")
            after = graph.consumers_of(consumer.outputs[0])
            if not after:
                raise NotRewritable(f"{consumer.name!r} after the concat has no consumer")
            convs.extend(after)
        else:
            convs.append(consumer)
    found = []
    for conv in convs:
        if conv.op_type != "Conv" or conv.inputs[0] not in (out, *_outputs_of_acts(graph, out)):
            raise NotRewritable(
                f"concat consumer {conv.name!r} ({conv.op_type}) is not a conv reading it"
            )
        if conv.inputs.count(conv.inputs[0]) != 1:
            raise NotRewritable(f"{conv.name!r} reads the concat more than once")
        weight, _ = _conv_weight(conv, weights)
        px = spatial_pixels(graph, conv.outputs[0])
        if px is None:
            raise NotRewritable("spatial sizes are unknown: MACs cannot be counted")
        found.append((conv, weight.astype(np.float64), px))
    pool_px = spatial_pixels(graph, concat.inputs[branch])
    if not found or pool_px is None:
        raise NotRewritable("the concat has no conv consumer to fold a projection into")
    return PoolTarget(
        code=finding.code,
        node=finding.node,
        kind="pool-projection",
        claims=frozenset({concat.index, *(c.index for c, _, _ in found)}),
        unsafe=unsafe,
        concat=concat,
        branch=branch,
        offset=offset,
        channels=int(widths[branch] or 0),
        convs=[c for c, _, _ in found],
        weights=[w for _, w, _ in found],
        out_pixels=[px for _, _, px in found],
        pool_pixels=pool_px,
        dtype=weights.dtype(found[0][0].inputs[1]),
    )


def _outputs_of_acts(graph: ModelGraph, tensor: str) -> list[str]:
    return [n.outputs[0] for n in graph.consumers_of(tensor) if n.op_type in ACTIVATIONS]


def _affine(nodes: Sequence[Node], channels: int, weights: Weights) -> tuple[Array, Array]:
    """Per-channel (scale, shift) of BN/Identity/Dropout in order; BN with its epsilon."""
    scale, shift = np.ones(channels), np.zeros(channels)
    for node in nodes:
        if node.op_type == "Dropout":
            if len(node.inputs) > 2 and node.inputs[2]:
                raise NotRewritable(f"Dropout {node.name!r} has a training_mode input")
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


def _plan_fold(
    finding: Finding, first: Node, graph: ModelGraph, weights: Weights, static_spatial: bool
) -> Target:
    users = graph.users_of(first.outputs[0], through=FOLD_THROUGH)
    if len(users) != 1 or users[0][0].op_type != "Conv":
        raise NotRewritable("the chain does not end in exactly one conv")
    second, between = users[0]
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
