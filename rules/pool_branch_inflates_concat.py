"""CL002 pool-branch-inflates-concat

## What it does
Flags a pooling branch of an Inception-style module: a pooling op and at least one other branch
(not a pool) read the same tensor and meet again in a channel Concat, and the pooled branch
reaches the Concat with all of its channels (no 1×1 projection after the pool), carrying at
least `min-share` (default 0.25) of the Concat's output channels. One finding per Concat, at its
widest pooled branch. Branches are matched through the canonical view: layout changes (NHWC
Transposes, the Concat's axis read as the channel axis), quantize/dequantize steps, affine ops
and activations do not hide a pool or a sibling.

## Why is this bad?
Pooling keeps every input channel, so the module's output is wider than its input: in naive
Inception 3a the max-pool branch passes all 192 channels on and the concat is
64+128+32+192 = 416 wide, growing module after module, and every consumer pays for that width.
GoogLeNet puts a 1×1 "pool proj" after the pool: projected to 32 channels the concat is 256.
The estimate is the concat width before and after a 1×1 projection to C/`projection-ratio`
channels (default 6, GoogLeNet 3a's own 192 -> 32) or to `projection-channels` when set, and the
params and MACs of the projection plus the Concat's conv consumers, before and after.

## Example
```
x[1,192,28,28] -> MaxPool 3×3 s1 ----------------------------> Concat (416 channels)
x -> Conv 1×1/64, x -> Conv 3×3/128, x -> Conv 5×5/32 ------->
```
Use instead:
```
x[1,192,28,28] -> MaxPool 3×3 s1 -> Conv 1×1 192->32 -> Relu -> Concat (256 channels)
```

## Known problems
Strided pools are passed over: in a grid-size reduction (Inception v3 section 5, Mixed_6a and
Mixed_7a) the pooled branch is the cheap way to keep information while halving resolution, and
adding a projection defeats its purpose. Concats whose inputs are not sibling branches of one
tensor (DenseNet's concat of a block's input with new features) are not pooling branches and are
not flagged; the Concat itself is never a sibling branch of its own input. Spatial pyramid
pooling (SPP in YOLOv3/YOLOX: pools of one tensor side by side; SPPF in YOLOv5/v8: a chain of
pools), concatenated with that tensor and fused by the next 1×1 conv, is a design and is not
flagged. Where the Concat's consumers are convs, the projection must save at least 10% of
their MACs (projection included); where the Concat has no conv consumer (a graph output), the
narrower Concat is the saving.

## Fix safety
`convlint fix` inserts the projection and folds it into the Concat's consumers. Where every
consumer is a float conv (linear in the pooled channels), a joint SVD of the consumers' weight
slices for those channels gives a projection and new consumer weights: exact at the rank of
that stacked matrix, a low-rank fit below it. The check does not read weights, so it cannot
tell which: approximate, applied only with real calibration data (`--inputs`). Where an
activation sits between the Concat and its convs, the projection does not commute with it and
the rewrite changes the function: unsafe, applied only with `--unsafe-fixes`, and the report
says how far the outputs moved. Where the Concat is a graph output (narrowing it changes a
model output) or a consumer is not a float conv, the fix is display-only. The check and
`convlint fix` decide this once, in `match_projection`, through the same view that found the
branch: a pool behind a Transpose pair is projected after it, and in an NHWC export (the
Concat channels-last, its convs reading it through Transposes) the projection goes on the
pooled channels before their Transpose and folds into the convs through theirs.

## References
- Szegedy et al. Going Deeper with Convolutions, arXiv:1409.4842, section 4 and table 1
  ("pool proj").
- Szegedy et al. Rethinking the Inception Architecture, arXiv:1512.00567, section 5 (grid size
  reduction).
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from convlint.cost import spatial_pixels
from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Fix, Severity, described_fix
from convlint.graph import PARAMETER_FREE_ACTIVATIONS, Node
from convlint.registry import Rule
from convlint.rules._conv import MIN_SAVING, saving, scale
from convlint.sketch import Suggestion
from convlint.view import CHANNEL_PRESERVING, LAYOUT_ONLY, Role, View


def _channel_axis(view: View, concat: Node) -> bool:
    shape = view.graph.shape(concat.outputs[0])
    axis = int(concat.attrs.get("axis", 1))
    rank = len(shape) if shape is not None else 4
    return rank >= 3 and axis % rank == view.channel_axis(concat.outputs[0])


def _unpooled(view: View, tensor: str) -> tuple[str, bool]:
    """The tensor a concat input holds, before any chain of unstrided pools (and layout
    steps), and whether it went through a pool."""
    pooled = False
    while True:
        tensor = view.origin(tensor)
        pool = view.graph.producer_of(tensor)
        if pool is None or view.role(pool) != "pool" or _strided(pool):
            return tensor, pooled
        tensor, pooled = view.data_input(pool) or tensor, True


def _strided(pool: Node) -> bool:
    return any(s > 1 for s in pool.attrs.get("strides") or [])


def _is_pyramid(view: View, concat: Node) -> bool:
    """Spatial pyramid pooling (SPP, SPPF): the concat joins a tensor with pools of it (side
    by side, or a chain of pools), to be fused by the next conv. A design, not a branch."""
    roots = [_unpooled(view, tensor) for tensor in concat.inputs]
    return len({root for root, _ in roots}) == 1 and any(pooled for _, pooled in roots)


def _siblings(view: View, pool: Node, concat: Node) -> list[Node]:
    """Other branches of the pool's input (not pools, not the concat itself) that meet it
    again in the concat."""
    shared = view.origin(view.data_input(pool) or "")
    return [
        user
        for user, _ in view.users_of(shared, through=LAYOUT_ONLY)
        if user.name not in (pool.name, concat.name)
        and view.role(user) != "pool"
        and view.graph.has_path(user.name, concat.name)
    ]


def check(ctx: RuleContext) -> Iterator[Finding]:
    view = ctx.view
    for concat in view.nodes("concat"):
        if not _channel_axis(view, concat):
            continue
        pools = [
            (pool, tensor)
            for tensor in concat.inputs
            if (pool := view.source_of(tensor, CHANNEL_PRESERVING)[0]) is not None
            and view.role(pool) == "pool"
        ]
        if not pools:
            continue
        if _is_pyramid(view, concat):
            ctx.skip(
                pools[0][0],
                f"spatial pyramid pooling: {concat.name!r} joins a tensor with pools of it "
                "(SPP/SPPF), a design rather than an inflated branch",
            )
            continue
        total = view.channels(concat.outputs[0])
        candidates: list[tuple[Node, str, int, list[Node]]] = []
        for pool, tensor in pools:
            if _strided(pool):
                ctx.skip(pool, "strided pool: a grid-size reduction branch (Inception v3 §5)")
                continue
            siblings = _siblings(view, pool, concat)
            if not siblings:
                ctx.skip(pool, f"no other branch of its input meets it in {concat.name!r}")
                continue
            channels = view.channels(tensor)
            if channels is None or total is None:
                ctx.skip(pool, "channel counts are unknown")
                continue
            share = channels / total
            if share < float(ctx.options["min-share"]):
                ctx.skip(pool, f"carries {share:.0%} of the concat, below min-share")
                continue
            candidates.append((pool, tensor, channels, siblings))
        if not candidates:
            continue
        # One finding per concat: at its widest pooled branch.
        pool, tensor, channels, siblings = max(candidates, key=lambda item: item[2])
        for other, *_ in candidates:
            if other is not pool:
                ctx.skip(
                    other, f"one finding per concat: {concat.name!r} is reported at {pool.name!r}"
                )
        assert total is not None
        projected = int(ctx.options["projection-channels"] or 0) or max(
            1, channels // int(ctx.options["projection-ratio"])
        )
        estimate, any_convs = _estimate(ctx, pool, concat, channels, projected)
        if any_convs and saving(estimate) < MIN_SAVING:
            ctx.skip(
                pool,
                f"a projection {channels}->{projected} would save {saving(estimate):.0%} of "
                f"the concat's consumers' MACs, below {MIN_SAVING:.0%}",
            )
            continue
        match = match_projection(view, pool, concat)
        yield ctx.finding(
            pool,
            f"{pool.op_type} branch passes all {channels} channels into concat "
            f"{concat.name!r} ({channels / total:.0%} of its {total}); no 1×1 projection",
            estimate=estimate,
            fix=_projection_fix(match, channels, projected),
            related=(concat.name, *(s.name for s in siblings)),
            suggestion=Suggestion(
                (f"Conv 1×1 {channels}→{projected} (projection)",),
                insert_after=pool.name,
                # The concat narrows; the convs reading it lose the pooled channels' weights.
                resized=(
                    (
                        concat.name,
                        view.channel_axis(concat.outputs[0]),
                        total - channels + projected,
                    ),
                ),
                changed=tuple(
                    user.name
                    for user, _ in view.users_of(concat.outputs[0], through=CHANNEL_PRESERVING)
                    if view.geometry(user) is not None
                ),
            ),
            binding=match,
        )


@dataclass(frozen=True)
class Projection:
    """What CL002 binds on a finding (``Finding.binding``; a :class:`NoProjection` where there
    is none), the rule's declared rewrite. Where `convlint fix` projects a pooling branch: on
    ``site``, the pooled channels on a channels-first tensor (the concat's input ``branch``, or
    before the Transposes that carry it into a channels-last concat), read by ``reader`` (the
    concat, or the first of those Transposes); the convs reading the concat that the projection
    folds into; the steps between that carry the narrower channels (``carried``: Transposes,
    Identity, activations); and whether a parameter-free activation sits between the concat
    and the convs (``nonlinear``: the projection no longer commutes with it, so the rewrite
    changes the function)."""

    concat: Node
    branch: int
    site: str
    reader: Node
    convs: tuple[Node, ...]
    carried: tuple[Node, ...]
    nonlinear: bool


@dataclass(frozen=True)
class NoProjection:
    """Why a pooling branch has no projection `convlint fix` can insert: ``reason`` as `fix`
    reports it under ``skipped``; ``place`` what stops it (a graph output, the branch, the
    concat's consumers), which the check's display-only description names."""

    reason: str
    place: Literal["output", "branch", "consumers"]


# Steps that carry a projection's narrower channels on unchanged: a Transpose moves the channel
# axis and keeps the channels' order; Identity, Dropout and Cast keep the values.
CARRIED: frozenset[Role] = frozenset({"layout", "passthrough"})


def _channels_first(view: View, tensor: str) -> tuple[str, list[Node]] | None:
    """The nearest tensor at or before ``tensor`` that holds its channels on axis 1, and the
    carrying steps from there to ``tensor`` (each read by the next alone); None if there is
    none (a 1×1 conv can only be inserted on a channels-first tensor)."""
    graph = view.graph
    chain: list[Node] = []
    while view.channel_axis(tensor) != 1:
        node = graph.producer_of(tensor)
        if node is None or view.role(node) not in CARRIED or len(node.outputs) != 1:
            return None
        if len(graph.consumers_of(tensor)) != 1 or tensor in graph.graph_outputs:
            return None
        upstream = view.data_input(node)
        if upstream is None:
            return None
        chain.insert(0, node)
        tensor = upstream
    return tensor, chain


def match_projection(view: View, pool: Node, concat: Node) -> Projection | NoProjection:
    """Whether, and where, the projection of ``pool``'s branch into ``concat`` can be inserted
    and folded, decided once, through the canonical view: the check derives its fix's
    applicability from the answer and binds it on the finding, and `convlint fix`
    (rewrite/plan.py) rewrites exactly what it matched. The branch is found as the check found
    the pool (through layout steps, quantize/dequantize, affine ops and activations) and must
    enter the concat once; the 1×1 projection conv is inserted where its channels are last on
    axis 1 (before the Transposes of an NHWC export). The concat's consumers must be plain
    float convs reading it, directly or through Transposes, Identity and parameter-free
    activations (graph.PARAMETER_FREE_ACTIVATIONS)."""
    graph = view.graph
    out = concat.outputs[0]
    if out in graph.graph_outputs:
        return NoProjection(
            f"the output of concat {concat.name!r} is a graph output: narrowing it would change "
            "a model output",
            "output",
        )
    branches = [
        i
        for i, tensor in enumerate(concat.inputs)
        if (source := view.source_of(tensor, CHANNEL_PRESERVING)[0]) is not None
        and source.name == pool.name
    ]
    if len(branches) != 1 or concat.inputs.count(concat.inputs[branches[0]]) != 1:
        return NoProjection("the pooled channels enter the concat more than once", "branch")
    found = _channels_first(view, concat.inputs[branches[0]])
    if found is None:
        return NoProjection(
            f"the pooled channels reach concat {concat.name!r} channels-last, and no "
            "channels-first tensor on their way is read by that branch alone",
            "branch",
        )
    site, chain = found
    convs: list[Node] = []
    carried: list[Node] = list(chain)
    read = {out}  # what a conv consumer may read: the concat, or a step carrying it on
    nonlinear = False
    pending, seen = [out], set()
    while pending:
        for consumer in graph.consumers_of(pending.pop()):
            if consumer.name in seen:
                continue
            seen.add(consumer.name)
            activation = consumer.op_type in PARAMETER_FREE_ACTIVATIONS and consumer.is_standard
            if not activation and (
                view.role(consumer) not in CARRIED or len(consumer.outputs) != 1
            ):
                convs.append(consumer)
                continue
            nonlinear = nonlinear or activation
            if consumer.outputs[0] in graph.graph_outputs:
                return NoProjection(
                    f"{consumer.name!r} after the concat is a graph output", "consumers"
                )
            if not graph.consumers_of(consumer.outputs[0]):
                return NoProjection(
                    f"{consumer.name!r} after the concat has no consumer", "consumers"
                )
            carried.append(consumer)
            read.add(consumer.outputs[0])
            pending.append(consumer.outputs[0])
    for conv in convs:
        if conv.op_type != "Conv" or conv.inputs[0] not in read:
            return NoProjection(
                f"concat consumer {conv.name!r} ({conv.op_type}) is not a conv reading it",
                "consumers",
            )
        if conv.inputs.count(conv.inputs[0]) != 1:
            return NoProjection(f"{conv.name!r} reads the concat more than once", "consumers")
        if int(conv.attrs.get("group", 1)) != 1:
            return NoProjection(f"{conv.name!r} is a grouped conv", "consumers")
        if not view.is_float_conv(conv):
            return NoProjection(f"the weight of {conv.name!r} is not stored as floats", "consumers")
        if view.channel_axis(conv.inputs[0]) != 1:
            return NoProjection(
                f"{conv.name!r} does not read the concat's channels as its input channels",
                "consumers",
            )
    if not convs:
        return NoProjection(
            "the concat has no conv consumer to fold a projection into", "consumers"
        )
    reader = chain[0] if chain else concat
    return Projection(concat, branches[0], site, reader, tuple(convs), tuple(carried), nonlinear)


def _projection_fix(match: Projection | NoProjection, channels: int, projected: int) -> Fix:
    """What `convlint fix` does with the projection, from :func:`match_projection` (which the
    finding hands the planner as its binding): approximate where it folds into float convs (a
    low-rank fit of their weight slices for the pooled channels), unsafe where an activation
    sits between the concat and those convs, display-only where nothing can be rewritten."""
    action = f"insert a 1×1 projection {channels}->{projected} after the pool"
    if isinstance(match, NoProjection):
        if match.place == "output":
            return described_fix(
                Applicability.DISPLAY_ONLY,
                f"{action}: the concat is a graph output, so narrowing it changes a model output",
            )
        if match.place == "branch":
            return described_fix(
                Applicability.DISPLAY_ONLY,
                f"{action} and retrain the concat's consumers: convlint fix projects a pooled "
                "branch only where it enters the concat once, on a tensor read by it alone",
            )
        return described_fix(
            Applicability.DISPLAY_ONLY,
            f"{action} and retrain the concat's consumers: convlint fix folds a projection "
            "into float convs that read the concat only",
        )
    if match.nonlinear:
        return described_fix(
            Applicability.UNSAFE,
            f"{action} and fold it into the concat's consumers; an activation between them does "
            "not commute with the projection, so this changes the function",
        )
    return described_fix(
        Applicability.APPROXIMATE,
        f"{action} and fold it into the concat's consumers (a low-rank fit of their weights "
        "for the pooled channels)",
    )


def _estimate(
    ctx: RuleContext, pool: Node, concat: Node, channels: int, projected: int
) -> tuple[Estimate, bool]:
    """The estimate, and whether any consumer of the concat is a conv (the consumers' MACs
    measure the saving)."""
    graph, view = ctx.graph, ctx.view
    total = view.channels(concat.outputs[0]) or 0
    narrowed = total - channels + projected
    pixels = spatial_pixels(graph, pool.outputs[0])
    projection_params = channels * projected
    params_before, params_after = 0, projection_params
    # Per pixel of the module's output (consumers at the pool's resolution): what the estimate
    # carries when spatial sizes are symbolic.
    per_pixel_before, per_pixel_after = 0, projection_params
    macs_before: int | None = 0
    macs_after = scale(projection_params, pixels)
    any_convs = False
    for consumer, _ in view.users_of(concat.outputs[0], through=CHANNEL_PRESERVING):
        g = view.geometry(consumer)
        if g is None or g.group != 1:
            continue
        any_convs = True
        per_channel = g.cout * g.kernel_area
        bias = g.cout if g.has_bias else 0
        params_before += per_channel * total + bias
        params_after += per_channel * narrowed + bias
        per_pixel_before += per_channel * total
        per_pixel_after += per_channel * narrowed
        before = scale(per_channel * total, g.out_pixels)
        after = scale(per_channel * narrowed, g.out_pixels)
        macs_before = None if macs_before is None or before is None else macs_before + before
        macs_after = None if macs_after is None or after is None else macs_after + after
    if macs_before is None or macs_after is None:
        macs_before = macs_after = None
    estimate = Estimate(
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        macs_per_output_pixel=per_pixel_before,
        macs_per_output_pixel_after=per_pixel_after,
        extra={"channels_before": total, "channels_after": narrowed},
    )
    return estimate, any_convs


RULE = Rule(
    code="CL002",
    name="pool-branch-inflates-concat",
    severity=Severity.WARNING,
    fix="sometimes",
    fixes=(Applicability.APPROXIMATE, Applicability.UNSAFE),
    rewrite=Projection,
    summary="a pooling branch feeds a Concat with all its input channels, no 1×1 projection",
    check=check,
    options={"projection-ratio": 6, "projection-channels": 0, "min-share": 0.25},
    doc=__doc__ or "",
)
