"""Stage 5b: the rewrites of planned findings, as edits of a model that carries its weights.

A finding becomes a *target* (``plan.plan``, or a skip with a reason): the nodes it would
replace, the tensors whose statistics the data-aware method needs, and ``edit(factors)``, the node
replacements for one choice of factors. Edits of different targets touch disjoint nodes, so
any subset applies to the original model in one pass (:func:`apply_edits`), keeping the
original's node order (every new node takes the place of a node it replaces).

- CL001/CL005 (:class:`FactorTarget`): the k×k conv becomes 1×1 + k×k, k×k + 1×1 or
  1×1 + k×k + 1×1 (see ``factorize``), named ``<node>/reduce``, ``<node>/spatial`` and
  ``<node>/expand``; stride, pads, auto_pad and dilations stay on the k×k conv, the bias on
  the last conv. A spatial SVD becomes ``<node>/vertical`` (kh×1) and ``<node>/horizontal``
  (1×kw), the row stride, pads and dilation on the first, the column ones on the second; both
  are marked to be ignored by CL001 and CL005 (like a pruned conv, below). Reduce, then
  spatial SVD: ``<node>/reduce`` (1×1), then the same two halves.
- CL002 (:class:`PoolTarget`): a 1×1 projection after the pooling branch (where its channels
  are last channels-first: before an NHWC export's Transposes), folded into the
  concat's conv consumers (their weight slices for the pooled channels). Skipped when the concat
  is a graph output (the rewrite would change a model output). Consumers behind a parameter-free
  activation make it unsafe: the activation no longer commutes with the projection.
- CL003 (:class:`FoldTarget`): conv -> [BatchNormalization/Identity/Dropout] -> conv becomes
  one conv, exactly; ConvTranspose -> conv, and 1×1 conv -> ConvTranspose, one ConvTranspose
  (``transposed``). A shift (first conv's bias, BN's) entering a zero-padded k×k conv is not a
  constant at the borders: the folded conv gets the interior value as its bias and an ``Add``
  of the border correction (computed as the conv of the constant tensor), which needs static
  spatial sizes; with symbolic ones the fold is skipped.
- CL004 is display-only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convlint.cost import spatial_pixels
from convlint.engine import IGNORE_KEY
from convlint.graph import ModelGraph, Node
from convlint.rewrite.budget import (
    MAX_PATCH_WIDTH,
    MAX_REFIT_WIDTH,
    STEP,
    Candidate,
    factor_candidates,
    pareto,
    pool_candidates,
    prune_candidates,
    refit_rows,
)
from convlint.rewrite.factorize import (
    KINDS,
    SPLIT_KINDS,
    Array,
    ChannelPruner,
    Consumer,
    ConvFactorizer,
    ConvSite,
    Factors,
    PoolProjection,
    Statistics,
)
from convlint.rewrite.verify import PatchSpec, row_statistic

# Ops that only carry a constant on (a weight's Constant node, its Identity or Cast).
CONSTANT_STEPS = frozenset({"Constant", "Identity", "Cast"})


@dataclass(frozen=True)
class Prunable:
    """A conv whose input channels can be pruned: the MACs of the conv producing them, and
    the values of every constant between (the producer's weight and bias, BN's parameters)."""

    producer: str  # the producing conv's name
    producer_output: str  # and its output tensor
    producer_macs: int
    originals: dict[str, Array] = field(repr=False)


@dataclass(frozen=True)
class Narrow:
    """Keep only ``kept`` channels of ``tensor``: its producing conv's output channels and every
    per-channel constant on the way are sliced (``apply_edits`` does it last, on the edited
    graph, so a producer that another rewrite replaced is narrowed in its new form)."""

    tensor: str
    kept: tuple[int, ...]
    originals: dict[str, Array] = field(repr=False)
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)


@dataclass(frozen=True)
class PatchGeometry:
    """A 2-D conv's output size and how it reads its input (pads: top, left, bottom, right)."""

    out_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]


def _silence(node: onnx.NodeProto, *silenced: str) -> None:
    """Silence codes on a rewritten conv (its ``convlint.ignore`` metadata, kept visible in
    ``check``'s ``suppressed`` list): a conv pruned to the budget's width may still read
    enough channels for the rule, and a second `fix` would spend a second budget on it,
    compounding the error on top of the first. The halves of a spatial SVD likewise (a kh×1
    conv reading many channels is what CL001 looks for)."""
    for entry in node.metadata_props:
        if entry.key == IGNORE_KEY:
            codes = [part.strip() for part in entry.value.split(",") if part.strip()]
            if "ALL" not in codes:
                entry.value = ",".join([*codes, *(c for c in silenced if c not in codes)])
            return
    node.metadata_props.add(key=IGNORE_KEY, value=",".join(silenced))


def _split_conv(
    name: str,
    inputs: Sequence[str],
    output: str,
    geometry: PatchGeometry,
    kernel: tuple[int, int],
    axis: int,
    template: onnx.NodeProto,
) -> onnx.NodeProto:
    """One half of a spatial SVD: the template's conv along ``axis`` (0: rows, 1: columns)
    only, its stride, pads and dilation along the other axis made 1, 0 and 1."""
    along = [1, 1]
    along[axis] = kernel[axis]
    strides, dilations, pads = [1, 1], [1, 1], [0, 0, 0, 0]
    strides[axis], dilations[axis] = geometry.strides[axis], geometry.dilations[axis]
    pads[axis], pads[axis + 2] = geometry.pads[axis], geometry.pads[axis + 2]
    node = helper.make_node(
        "Conv",
        list(inputs),
        [output],
        name=name,
        kernel_shape=along,
        strides=strides,
        pads=pads,
        dilations=dilations,
    )
    node.domain = template.domain
    _silence(node, "CL001", "CL005")
    return node


@dataclass
class Edit:
    """Node replacements by proto index (an empty list deletes), and new initializers."""

    replace: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    new_nodes: list[str] = field(default_factory=list)  # names, for costs on the written model
    reshaped: set[str] = field(default_factory=set)  # tensors whose inferred shape changes
    # The input tensor of the rewrite's last conv and whether that conv is the k×k one (the
    # refit of ``budget`` samples its patches there); None where nothing is refitted.
    tail: tuple[str, bool] | None = None
    narrow: list[Narrow] = field(default_factory=list)  # channel pruning's producer side


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
    edits_list = list(edits)
    for edit in edits_list:
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
    inline = {t.name: t for t in added}
    narrowed: set[str] = set()  # constants that channel pruning replaced by sliced copies
    for edit in edits_list:
        for narrow in edit.narrow:
            changed |= _narrow(graph, narrow, inline, narrowed)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    read |= _subgraph_reads(graph)
    candidates = ({t for n in removed for t in n.input} | narrowed) - read
    # The replaced weights may come from Constant nodes (or a constant's Identity or Cast, as
    # exporters write shared weights): drop those too, up the chain, so OUT holds no dead
    # constants and its size follows its params.
    producers = {o: n for n in graph.node for o in n.output}
    external = {o.name for o in graph.output} | _subgraph_reads(graph)
    pending, dead = list(candidates), set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in dead or node.op_type not in CONSTANT_STEPS:
            continue
        if any(o in read for o in node.output):
            continue
        dead.add(id(node))
        for tensor in node.input:
            read_elsewhere = any(
                tensor in n.input for n in graph.node if id(n) not in dead and n is not node
            )
            if tensor and not read_elsewhere and tensor not in external:
                candidates.add(tensor)
                pending.append(tensor)
    if dead:
        alive = [n for n in graph.node if id(n) not in dead]
        del graph.node[:]
        graph.node.extend(alive)
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


def _narrow(
    graph: onnx.GraphProto,
    narrow: Narrow,
    inline: dict[str, onnx.TensorProto],
    narrowed: set[str],
) -> set[str]:
    """Slice ``narrow.kept`` channels out of everything that produces ``narrow.tensor``, up to
    and including its conv; returns the tensors whose shapes changed."""
    producers = {o: n for n in graph.node for o in n.output}
    kept = list(narrow.kept)
    tensor, changed = narrow.tensor, set()
    while True:
        node = producers[tensor]
        changed.update(node.output)
        constants = [i for i, t in enumerate(node.input) if t in inline or t in narrow.originals]
        for position in constants:
            name = node.input[position]
            values = (
                numpy_helper.to_array(inline[name]) if name in inline else narrow.originals[name]
            )
            if node.op_type == "Conv" or node.op_type == "BatchNormalization":
                axis = 0
            elif values.size == 1:
                continue  # a scalar (a clip bound, a shared scale) applies to any width
            else:  # a per-channel constant broadcasting against N×C×H×W
                axis = values.ndim - 3
            sliced = np.take(values, kept, axis=axis)
            new = _tensor(sliced, f"{name}/kept{len(kept)}.{_digest(kept)}", narrow.dtype)
            if new.name not in inline:
                inline[new.name] = new
                graph.initializer.append(new)
            node.input[position] = new.name
            narrowed.add(name)
        if node.op_type == "Conv":
            return changed
        data = [t for i, t in enumerate(node.input) if t and i not in constants]
        tensor = data[0]


def _digest(kept: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha1(",".join(map(str, kept)).encode()).hexdigest()[:8]


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

    def __init__(
        self,
        model: onnx.ModelProto,
        read: Callable[[onnx.TensorProto], Array] = numpy_helper.to_array,
    ) -> None:
        self._read = read  # values of a tensor whose values were left on disk
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
        return None if tensor is None else self._read(tensor)

    def dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self._tensors[name].data_type))


def _tensor(values: Array, name: str, dtype: np.dtype[Any]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(values, dtype=dtype), name)


class Search(Protocol):
    """How a lossy target's factors are searched (``ConvFactorizer``, ``PoolProjection``)."""

    def cheapest(self, budget: float) -> Factors | None: ...

    def fixed(self, rank: int | None = None, ratio: float | None = None) -> Factors | None: ...


@dataclass(frozen=True)
class Curve:
    """What the whole-model budget chooses among for one lossy target: its forms that save
    ``--min-saving`` (``candidates``), the MACs they are measured against, and the factors of
    any one of them (``at``)."""

    search: Search
    pruner: ChannelPruner | None
    baseline: int
    candidates: list[Candidate]
    at_rank: Callable[[str, int | tuple[int, int]], Factors] = field(repr=False)

    def at(self, kind: str, rank: int | tuple[int, int]) -> Factors:
        if kind == "prune":
            assert self.pruner is not None and isinstance(rank, int)
            return self.pruner.at_count(rank)
        return self.at_rank(kind, rank)


@dataclass(kw_only=True)
class Target:
    """A finding the fixer can rewrite, and everything the pipeline asks of it: one protocol
    for every kind of rewrite (the pipeline never asks which kind a target is), the built-in
    ones and those a plugin rule's rewrite returns (``Rule.rewrite``). An exact rewrite sets
    ``lossy = False`` and returns its node replacements from ``edit(None, names)``, and names
    the nodes it replaces (``replaced_nodes``: the report's before-costs); a lossy one answers
    ``search`` and ``curve`` too."""

    code: str
    node: str
    kind: str  # "factorize", "pool-projection", "fold", or a plugin's own (the report's kind)
    claims: frozenset[int]  # proto indices of the nodes it replaces
    unsafe: bool = False
    # Whether the rewrite approximates, its factors searched within the error budget; an
    # exact one (a fold) is edited as it is, with no factors.
    lossy: ClassVar[bool] = True
    # Exact rewrites claim their nodes first, then projections, then factorizations.
    claim_order: ClassVar[int] = 0
    # Why an unsafe target is skipped without --unsafe-fixes.
    unsafe_reason: ClassVar[str] = "unsafe fix; pass --unsafe-fixes to apply it"
    # Whether a rewrite that `check` flags may be tried in another factored form.
    other_forms: ClassVar[bool] = False

    def replaced_nodes(self) -> list[str]:
        return []

    def stat_tensors(self) -> list[str]:
        return []

    def row_statistics(self) -> dict[str, tuple[str, int]]:
        """Moments between rows of a tensor its search reads: key -> (tensor, rows apart)."""
        return {}

    def search(self, stats: dict[str, Array] | None, kinds: Sequence[str] = KINDS) -> Search | None:
        """The search of a lossy target's factors; None for an exact one (nothing to search)."""
        return None

    def curve(
        self,
        stats: dict[str, Array] | None,
        method: str,
        min_saving: float,
        widening: float | None = None,
        step: int = STEP,
    ) -> Curve:
        """What the whole-model budget chooses among (lossy targets only). ``widening``: the
        expansion ratio from which a spatial conv is flagged as widening (CL005's, where it is
        enabled); no channel pruning makes a conv that wide. ``step``: the channel block ranks
        and kept channels are multiples of (``budget.ladder``)."""
        raise TypeError(f"a {self.kind} rewrite is exact: the budget does not search it")

    def edit(self, factors: Factors | None, names: Names) -> Edit:
        """The node replacements for ``factors`` (None for an exact rewrite)."""
        raise NotImplementedError

    def exact_macs(self, shapes: ModelGraph) -> int | None:
        """The MACs of an exact rewrite's node, None where they are not known (or it is not)."""
        return None

    def pruned(self, factors: Factors | None) -> Prunable | None:
        """The producer these factors narrow (a channel pruning), or None."""
        return None

    def refit_job(self, edit: Edit, factors: Factors | None, samples: int) -> RefitJob | None:
        """What the response reconstruction samples to refit this rewrite (``budget.refit``),
        or None where it is not refitted."""
        return None


@dataclass(kw_only=True)
class FactorTarget(Target):
    conv: Node = field(repr=False)
    weight: Array = field(repr=False)
    bias: Array | None = field(default=None, repr=False)
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)
    site: ConvSite
    patches: PatchGeometry | None = None  # 2-D convs: what a refit samples
    relu: bool = False  # a ReLU reads the conv's output (and nothing else does)
    activated: str | None = None  # that ReLU's output
    prunable: Prunable | None = None  # its input channels can be pruned
    claim_order: ClassVar[int] = 2
    other_forms: ClassVar[bool] = True

    def replaced_nodes(self) -> list[str]:
        return [self.conv.name]

    def stat_tensors(self) -> list[str]:
        after = [self.activated] if self.activated else []
        return [self.conv.inputs[0], self.conv.outputs[0], *after]

    def row_statistics(self) -> dict[str, tuple[str, int]]:
        """The moments between the input's rows 1 .. kh-1 kernel rows apart, where a spatial
        SVD is offered (``factorize.vertical_moment``)."""
        if not self.site.mid_pixels or self.patches is None:
            return {}
        x, dilation = self.conv.inputs[0], self.patches.dilations[0]
        aparts = [d * dilation for d in range(1, int(self.site.kernel[0]))]
        return {row_statistic(x, apart): (x, apart) for apart in aparts}

    def search(
        self, stats: dict[str, Array] | None, kinds: Sequence[str] = KINDS
    ) -> ConvFactorizer:
        if stats is None:
            return ConvFactorizer(self.weight, self.site, kinds=kinds)
        response = stats[self.conv.outputs[0]]
        activated = None
        if self.activated is not None:  # the covariance of the response after the ReLU
            mean = stats[f"{self.activated}#mean"]
            activated = stats[self.activated] - np.outer(mean, mean)
        return ConvFactorizer(
            self.weight,
            self.site,
            Statistics(
                stats[self.conv.inputs[0]],
                _minus_bias(response, stats, self),
                activated,
                tuple(stats[name] for name in self.row_statistics() if name in stats),
            ),
            kinds=kinds,
        )

    def pruner(self, stats: dict[str, Array] | None) -> ChannelPruner | None:
        if self.prunable is None or stats is None:
            return None
        moment = stats[self.conv.inputs[0]]
        return ChannelPruner(self.weight, self.site, moment, self.prunable.producer_macs)

    def curve(
        self,
        stats: dict[str, Array] | None,
        method: str,
        min_saving: float,
        widening: float | None = None,
        step: int = STEP,
    ) -> Curve:
        """Factored forms (unless --method prune) and channel prunings (--method auto or
        prune), their MACs counting the producer a pruning narrows. A pruning keeps more than
        ``cout / widening`` channels of a spatial conv: fewer would be a widening that
        ``check OUT`` flags (CL005), and the recheck would drop it after the budget was spent
        on it."""
        search = self.search(stats)
        pruner = self.pruner(stats) if method in ("auto", "prune") else None
        extra = pruner.producer_macs if pruner is not None else 0
        candidates: list[Candidate] = []
        if method != "prune":
            candidates = [
                dataclasses.replace(c, macs=c.macs + extra)
                for c in factor_candidates(search, self.site.macs(), min_saving, step)
            ]
        if pruner is not None:
            fewest = 1
            if widening is not None and self.site.k > 1:
                fewest = math.floor(self.site.cout / widening) + 1
            pruned = prune_candidates(pruner, min_saving, fewest, step)
            candidates = pareto([*candidates, *pruned])
        return Curve(search, pruner, self.site.macs() + extra, candidates, search.at_rank)

    def pruned(self, factors: Factors | None) -> Prunable | None:
        if factors is None or factors.kept is None:
            return None
        assert self.prunable is not None
        return self.prunable

    def refit_job(self, edit: Edit, factors: Factors | None, samples: int) -> RefitJob | None:
        """The patches a refit of these factors samples from ``samples`` fit samples; None for a
        conv that is not 2-D. A last conv whose patches are wider than the refit's bound gets
        its outputs mixed (``RefitJob.mix``)."""
        if self.patches is None or edit.tail is None or factors is None:
            return None
        geometry = self.patches
        pixels, seed = math.prod(geometry.out_shape), self.conv.index
        output_rows = refit_rows(self.site.cout, samples, pixels)
        output = PatchSpec(
            self.conv.outputs[0], geometry.out_shape, per_sample=output_rows, seed=seed
        )
        kxk = (int(self.site.kernel[0]), int(self.site.kernel[1]))

        def patches(tensor: str, rows: int) -> PatchSpec:
            """What the k×k conv reads of ``tensor`` at the sampled output pixels."""
            return PatchSpec(
                tensor,
                geometry.out_shape,
                kxk,
                geometry.strides,
                geometry.pads,
                geometry.dilations,
                rows,
                seed,
            )

        if factors.kind in SPLIT_KINDS:  # the horizontal conv's row of the vertical's output
            kw = kxk[1]
            _, left, _, right = geometry.pads
            horizontal = dataclasses.replace(
                geometry,
                strides=(1, geometry.strides[1]),
                pads=(0, left, 0, right),
                dilations=(1, geometry.dilations[1]),
            )
            geometry, kxk = horizontal, (1, kw)
        if factors.kind == "svd-expand" and self.site.cin * self.site.k <= MAX_PATCH_WIDTH:
            features = patches(self.conv.inputs[0], output_rows)
            return RefitJob(self, factors, features, output, whole=True)
        last = factors.weights[-1]
        width = int(np.prod(last.shape[1:]))
        if width > MAX_REFIT_WIDTH:  # too wide to refit: its outputs are mixed instead
            output = dataclasses.replace(
                output, per_sample=refit_rows(self.site.cout, samples, pixels)
            )
            return RefitJob(self, factors, output, output, whole=False, mix=True)
        rows = refit_rows(width, samples, pixels)
        output = dataclasses.replace(output, per_sample=rows)
        tensor, spatial = edit.tail
        if spatial:
            features = patches(tensor, rows)
        else:
            features = PatchSpec(tensor, geometry.out_shape, per_sample=rows, seed=seed)
        return RefitJob(self, factors, features, output, whole=False)

    def edit(self, factors: Factors | None, names: Names) -> Edit:
        assert factors is not None
        if factors.kind == "prune":
            return self._prune(factors, names)
        proto, conv = self.conv.proto, self.conv
        x, y = conv.inputs[0], conv.outputs[0]
        pointwise = [1] * len(self.site.kernel)
        bias = [conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else []
        initializers = [
            _tensor(w, names.fresh(f"{conv.name}.{part}.weight"), self.dtype)
            for w, part in zip(factors.weights, _parts(factors.kind), strict=True)
        ]
        if factors.bias is not None:  # refitted: the last conv gets a bias of its own
            refitted = _tensor(factors.bias, names.fresh(f"{conv.name}.bias/refit"), self.dtype)
            bias = [refitted.name]
        w_names = [t.name for t in initializers]
        if factors.bias is not None:
            initializers.append(refitted)
        nodes: list[onnx.NodeProto] = []
        reduce, expand = f"{conv.name}/reduce", f"{conv.name}/expand"
        spatial = names.fresh(f"{conv.name}/spatial")
        if factors.kind == "svd-reduce":
            mid = names.fresh(f"{y}/reduced")
            nodes.append(_conv(names.fresh(reduce), [x, w_names[0]], mid, pointwise))
            nodes.append(_conv(spatial, [mid, w_names[1], *bias], y, self.site.kernel, proto))
        elif factors.kind == "svd-expand":
            mid = names.fresh(f"{y}/spatial")
            nodes.append(_conv(spatial, [x, w_names[0]], mid, self.site.kernel, proto))
            nodes.append(_conv(names.fresh(expand), [mid, w_names[1], *bias], y, pointwise))
        elif factors.kind in SPLIT_KINDS:
            assert self.patches is not None
            kernel = (int(self.site.kernel[0]), int(self.site.kernel[1]))
            if factors.kind == "reduce-spatial":
                reduced = names.fresh(f"{y}/reduced")
                nodes.append(_conv(names.fresh(reduce), [x, w_names.pop(0)], reduced, pointwise))
                x = reduced
            mid = names.fresh(f"{y}/vertical")
            vertical, horizontal = f"{conv.name}/vertical", f"{conv.name}/horizontal"
            nodes.append(
                _split_conv(
                    names.fresh(vertical), [x, w_names[0]], mid, self.patches, kernel, 0, proto
                )
            )
            nodes.append(
                _split_conv(
                    names.fresh(horizontal),
                    [mid, w_names[1], *bias],
                    y,
                    self.patches,
                    kernel,
                    1,
                    proto,
                )
            )
        else:
            mid, core = names.fresh(f"{y}/reduced"), names.fresh(f"{y}/core")
            nodes.append(_conv(names.fresh(reduce), [x, w_names[0]], mid, pointwise))
            nodes.append(_conv(spatial, [mid, w_names[1]], core, self.site.kernel, proto))
            nodes.append(_conv(names.fresh(expand), [core, w_names[2], *bias], y, pointwise))
        edit = Edit({conv.index: nodes}, initializers, [n.name for n in nodes])
        edit.tail = (nodes[-1].input[0], factors.kind in ("svd-reduce", *SPLIT_KINDS))
        return edit

    def _prune(self, factors: Factors, names: Names) -> Edit:
        """The conv reading only the kept channels; its producer narrowed (``Narrow``)."""
        assert self.prunable is not None and factors.kept is not None
        conv = self.conv
        x = conv.inputs[0]
        weight = _tensor(factors.weights[0], names.fresh(f"{conv.name}.weight/pruned"), self.dtype)
        initializers = [weight]
        node = onnx.NodeProto()
        node.CopyFrom(conv.proto)
        node.input[1] = weight.name
        _silence(node, self.code)
        if factors.bias is not None:
            bias = _tensor(factors.bias, names.fresh(f"{conv.name}.bias/refit"), self.dtype)
            initializers.append(bias)
            if len(node.input) > 2:
                node.input[2] = bias.name
            else:
                node.input.append(bias.name)
        edit = Edit({conv.index: [node]}, initializers, [node.name])
        edit.narrow = [Narrow(x, factors.kept, self.prunable.originals, self.dtype)]
        edit.tail = (x, True)
        return edit


def _parts(kind: str) -> list[str]:
    return {
        "svd-reduce": ["reduce", "spatial"],
        "svd-expand": ["spatial", "expand"],
        "tucker2": ["reduce", "core", "expand"],
        "spatial-svd": ["vertical", "horizontal"],
        "reduce-spatial": ["reduce", "vertical", "horizontal"],
    }[kind]


def _minus_bias(response: Array, stats: dict[str, Array], target: FactorTarget) -> Array:
    """E[y0 y0ᵀ] from E[y yᵀ] and E[y]: y0 = y - b, so E[y0 y0ᵀ] = E[yyᵀ] - mbᵀ - bmᵀ + bbᵀ."""
    if target.bias is None:
        return response
    b = target.bias.astype(np.float64)
    mean = stats[f"{target.conv.outputs[0]}#mean"]
    return response - np.outer(mean, b) - np.outer(b, mean) + np.outer(b, b)


@dataclass(frozen=True)
class RefitJob:
    """What one chosen conv factorization's refit samples: the patches its refitted conv(s)
    read in the rewritten model, and the layer's output in both models."""

    target: FactorTarget
    factors: Factors
    features: PatchSpec  # in the rewritten model: what the refitted conv(s) read
    output: PatchSpec  # the layer's output, in the original model and in the rewritten one
    whole: bool  # svd-expand: both convs refitted from the conv's input patches
    # A last conv too wide to refit: a C_out × C_out map of its outputs (then folded into
    # it) is fitted instead, from the layer's output in the rewritten model (``features``).
    mix: bool = False


@dataclass(kw_only=True)
class PoolTarget(Target):
    concat: Node = field(repr=False)
    branch: int = 0  # which concat input carries the pooled channels
    site: str = ""  # the channels-first tensor the projection reads (that input, or before it)
    reader: Node = field(repr=False)  # the node reading ``site`` on the way to the concat
    carried: list[str] = field(default_factory=list)  # tensors that narrow with the projection
    offset: int = 0
    channels: int = 0
    convs: list[Node] = field(default_factory=list, repr=False)
    weights: list[Array] = field(default_factory=list, repr=False)
    out_pixels: list[int] = field(default_factory=list)
    pool_pixels: int = 0
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32), repr=False)
    claim_order: ClassVar[int] = 1
    unsafe_reason: ClassVar[str] = (
        "unsafe fix: a consumer of the concat is nonlinear in the pooled channels; pass "
        "--unsafe-fixes to apply it"
    )

    def replaced_nodes(self) -> list[str]:
        return [self.concat.name, *(c.name for c in self.convs)]

    def stat_tensors(self) -> list[str]:
        return [self.site]

    def search(
        self, stats: dict[str, Array] | None, kinds: Sequence[str] = KINDS
    ) -> PoolProjection:
        """The projection's search (one form: ``kinds`` does not apply)."""
        lo, hi = self.offset, self.offset + self.channels
        consumers = [
            Consumer(w[:, lo:hi], px) for w, px in zip(self.weights, self.out_pixels, strict=True)
        ]
        moment = None if stats is None else stats[self.site]
        return PoolProjection(consumers, self.pool_pixels, moment)

    def curve(
        self,
        stats: dict[str, Array] | None,
        method: str,
        min_saving: float,
        widening: float | None = None,
        step: int = STEP,
    ) -> Curve:
        """The projection widths (none under --method prune: there is no conv input to prune)."""
        search = self.search(stats)
        candidates = pool_candidates(search, min_saving, step) if method != "prune" else []
        return Curve(
            search, None, search.baseline()[0], candidates, lambda _, rank: search.at_rank(rank)
        )

    def edit(self, factors: Factors | None, names: Names) -> Edit:
        assert factors is not None and isinstance(factors.rank, int)
        pooled = self.site
        projection, *slices = factors.weights
        spatial = len(self.weights[0].shape) - 2
        proj_weight = _tensor(projection, names.fresh(f"{self.node}/proj.weight"), self.dtype)
        projected = names.fresh(f"{pooled}/proj")
        proj = _conv(
            names.fresh(f"{self.node}/proj"), [pooled, proj_weight.name], projected, [1] * spatial
        )
        reader = onnx.NodeProto()  # the concat, or the first Transpose on the way to it
        reader.CopyFrom(self.reader.proto)
        reader.name = self.reader.name
        position = (
            self.branch
            if self.reader.name == self.concat.name
            else self.reader.inputs.index(pooled)
        )
        reader.input[position] = projected
        edit = Edit({self.reader.index: [proj, reader]}, [proj_weight], [proj.name])
        edit.reshaped = {
            self.concat.outputs[0],
            *self.carried,
            *(c.inputs[0] for c in self.convs),
        }
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
    # A ConvTranspose chain folds into one ConvTranspose with ``spatial``'s attributes (the
    # ConvTranspose's), ``pads`` replacing its pads where given (a ConvTranspose then a conv).
    transposed: bool = False
    pads: list[int] | None = None
    unsafe_reason: ClassVar[str] = (
        "unsafe fix: the folded conv differs at the borders, where a bias or cropped rows meet "
        "the zero padding; pass --unsafe-fixes to apply it (still held to the tolerance)"
    )
    lossy: ClassVar[bool] = False  # a fold is exact

    def replaced_nodes(self) -> list[str]:
        return [self.first.name, *(n.name for n in self.between), self.second.name]

    def _folded_node(self, inputs: list[str], output: str, kernel: list[int]) -> onnx.NodeProto:
        if not self.transposed:
            return _conv(self.second.name, inputs, output, kernel, self.spatial.proto)
        node = helper.make_node("ConvTranspose", inputs, [output], name=self.second.name)
        replaced = {"kernel_shape", "group"} | ({"pads"} if self.pads is not None else set())
        node.attribute.extend(a for a in self.spatial.proto.attribute if a.name not in replaced)
        node.attribute.append(helper.make_attribute("kernel_shape", kernel))
        if self.pads is not None:
            node.attribute.append(helper.make_attribute("pads", self.pads))
        return node

    def exact_macs(self, shapes: ModelGraph) -> int | None:
        pixels = spatial_pixels(shapes, self.second.outputs[0])
        return None if pixels is None else int(np.prod(self.weight.shape)) * pixels

    def edit(self, factors: Factors | None, names: Names) -> Edit:
        assert factors is None  # a fold is exact: nothing was searched
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
        nodes = [self._folded_node(inputs, conv_out, kernel)]
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
