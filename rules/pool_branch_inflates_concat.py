"""CL002 pool-branch-inflates-concat

## What it does
Flags a pooling branch of an Inception-style module: a pooling op and at least one other branch
read the same tensor and meet again in a channel Concat, and the pooled branch reaches the Concat
with all of its channels (no 1×1 projection after the pool), carrying at least `min-share`
(default 0.25) of the Concat's output channels.

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
not flagged.

## Fix safety
`convlint fix` inserts the projection and folds it into the Concat's consumers. Where every
consumer is a conv (linear in the pooled channels), a joint SVD of the consumers' weight slices
for those channels gives a projection and new consumer weights that are exact at the rank of that
stacked matrix: safe. Where a consumer is nonlinear in them, the rewrite changes the function:
unsafe, applied only with `--unsafe-fixes`, and the report says how far the outputs moved.

## References
- Szegedy et al. Going Deeper with Convolutions, arXiv:1409.4842, section 4 and table 1
  ("pool proj").
- Szegedy et al. Rethinking the Inception Architecture, arXiv:1512.00567, section 5 (grid size
  reduction).
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx

from convlint.cost import spatial_pixels
from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Fix, Severity
from convlint.graph import Node
from convlint.registry import Rule
from convlint.rules._conv import conv_geometry, scale
from convlint.sketch import Suggestion

POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})


def _channel_axis(ctx: RuleContext, concat: Node) -> bool:
    shape = ctx.graph.shape(concat.outputs[0])
    axis = int(concat.attrs.get("axis", 1))
    rank = len(shape) if shape is not None else 4
    return rank >= 3 and axis % rank == 1


def check(ctx: RuleContext) -> Iterator[Finding]:
    graph = ctx.graph
    for concat in graph.of_type("Concat"):
        if not _channel_axis(ctx, concat):
            continue
        total = graph.channels(concat.outputs[0])
        for tensor in concat.inputs:
            pool, _ = graph.source_of(tensor)
            if pool is None or pool.op_type not in POOLS:
                continue
            if any(s > 1 for s in pool.attrs.get("strides") or []):
                ctx.skip(pool, "strided pool: a grid-size reduction branch (Inception v3 §5)")
                continue
            shared = graph.data_input(pool)
            siblings = [
                n
                for n in graph.consumers_of(shared or "")
                if n.name != pool.name and nx.has_path(graph.nx, n.name, concat.name)
            ]
            if not siblings:
                ctx.skip(pool, f"no other branch of its input meets it in {concat.name!r}")
                continue
            channels = graph.channels(tensor)
            if channels is None or total is None:
                ctx.skip(pool, "channel counts are unknown")
                continue
            share = channels / total
            if share < float(ctx.options["min-share"]):
                ctx.skip(pool, f"carries {share:.0%} of the concat, below min-share")
                continue
            projected = int(ctx.options["projection-channels"] or 0) or max(
                1, channels // int(ctx.options["projection-ratio"])
            )
            estimate, all_convs = _estimate(ctx, pool, concat, channels, projected)
            yield ctx.finding(
                pool,
                f"{pool.op_type} branch passes all {channels} channels into concat "
                f"{concat.name!r} ({share:.0%} of its {total}); no 1×1 projection",
                estimate=estimate,
                fix=Fix(
                    Applicability.SAFE if all_convs else Applicability.UNSAFE,
                    f"insert a 1×1 projection {channels}->{projected} after the pool and fold it "
                    "into the concat's consumers"
                    + ("" if all_convs else " (a consumer is nonlinear: changes the function)"),
                ),
                related=(concat.name, *(s.name for s in siblings)),
                suggestion=Suggestion(
                    (pool.op_type, f"Conv 1×1 {channels}→{projected} (projection)")
                ),
            )


def _estimate(
    ctx: RuleContext, pool: Node, concat: Node, channels: int, projected: int
) -> tuple[Estimate, bool]:
    graph = ctx.graph
    total = graph.channels(concat.outputs[0]) or 0
    narrowed = total - channels + projected
    pixels = spatial_pixels(graph, pool.outputs[0])
    projection_params = channels * projected
    params_before, params_after = 0, projection_params
    # Per pixel of the module's output (consumers at the pool's resolution): what the estimate
    # carries when spatial sizes are symbolic.
    per_pixel_before, per_pixel_after = 0, projection_params
    macs_before: int | None = 0
    macs_after = scale(projection_params, pixels)
    all_convs = True
    for consumer, _ in graph.users_of(concat.outputs[0]):
        g = conv_geometry(graph, consumer)
        if g is None or g.group != 1:
            all_convs = False
            continue
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
    return estimate, all_convs


RULE = Rule(
    code="CL002",
    name="pool-branch-inflates-concat",
    severity=Severity.WARNING,
    fix="sometimes",
    summary="a pooling branch feeds a Concat with all its input channels, no 1×1 projection",
    check=check,
    options={"projection-ratio": 6, "projection-channels": 0, "min-share": 0.25},
    doc=__doc__ or "",
)
