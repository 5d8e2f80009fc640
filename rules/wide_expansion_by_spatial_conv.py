"""CL005 wide-expansion-by-spatial-conv

## What it does
Flags a spatial conv (any kernel dim > 1, group 1) that widens channels by at least
`expansion-ratio` (default 4) from at least `min-channels` (default 16) input channels.

## Why is this bad?
Widening is the job of a 1×1 conv: 64 -> 256 channels cost 64·256 weights as a 1×1 conv and
nine times as many as a 3×3. When a k×k conv widens, every new output channel pays k² times for
spatial context that a k×k conv at the input width could gather once. The estimate is that
design: the k×k conv at the input width (C_in->C_in) followed by a 1×1 widening conv
(C_in->C_out), as ResNet's bottleneck does with its closing 1×1.

## Example
```
x[1,64,14,14] -> Conv 3×3 64->64 -> Relu -> Conv 3×3 64->256 -> Relu
```
Use instead:
```
x[1,64,14,14] -> Conv 3×3 64->64 -> Relu -> Conv 1×1 64->256 -> Relu
```

## Known problems
Stems on image inputs (3 channels, below `min-channels`) are not flagged: there the width comes
from nowhere else. A k×k conv whose input width was set by a 1×1 conv that *reduced* channels
is not flagged either: that is a squeeze-expand design (SqueezeNet's fire module, where a 1×1
expand beside it reads the same squeeze and both meet in a Concat) in which the spatial conv
restores a width the 1×1 took away on purpose. A k×k expansion whose output is projected back
by a 1×1 conv to at most its input width (through BatchNorm and activations) is EfficientNetV2's
Fused-MBConv, a deliberate design: not flagged, and identical blocks get identical verdicts
since the check looks forward, not at what came before. A widening for which the 1×1 design
would save less than 10% of MACs is not flagged.

## Fix safety
Approximate: `convlint fix` factorizes the trained weight on the output side (the k×k conv to
rank r, then a 1×1 r->C_out) at the smallest rank whose output error, measured on calibration
samples, stays within the error budget; it applies it only with real calibration data
(`--inputs`), and skips it where no rank within the budget saves MACs. Quantized convs are
display-only. The estimate's design at r = C_in needs retraining only when the trained weight is
far from that rank.

## References
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2.
- Tan, Le. EfficientNetV2, arXiv:2104.00298, section 3.2 (Fused-MBConv).
- He et al. Deep Residual Learning, arXiv:1512.03385, section 4.1 (1×1 layers "increasing
  (restoring) dimensions").
- Iandola et al. SqueezeNet, arXiv:1602.07360, section 3.1 (strategies 1 and 2).
"""

from __future__ import annotations

from collections.abc import Iterator

from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Severity
from convlint.graph import Node
from convlint.registry import Rule
from convlint.rules._conv import MIN_SAVING, SpatialConv, rewrite_fix, saving, scale
from convlint.sketch import Suggestion
from convlint.view import CHANNEL_PRESERVING, WIDTH_SOURCE, ConvGeometry, View


def _projected_back(view: View, node: Node, g: ConvGeometry) -> Node | None:
    """The 1×1 conv that reads this expansion's output (through BN and activations) and
    projects it back to at most the input width: a Fused-MBConv block, not a wasteful one."""
    for user, _ in view.users_of(node.outputs[0], through=CHANNEL_PRESERVING):
        after = view.geometry(user)
        if after is not None and after.is_pointwise and after.cout <= g.cin:
            return user
    return None


def _squeeze_reason(view: View, node: Node) -> str:
    """Why an expansion that follows a reducing 1×1 conv is deliberate, or "" if it is not."""
    tensor = view.data_input(node)
    source, _ = view.source_of(tensor, WIDTH_SOURCE) if tensor else (None, [])
    squeeze = view.geometry(source) if source is not None else None
    if source is None or squeeze is None or not squeeze.is_pointwise:
        return ""
    if squeeze.cout >= squeeze.cin:
        return ""
    # A fire module: a sibling 1×1 expand reads the same squeeze and both meet in a Concat.
    siblings = [
        user
        for user, _ in view.users_of(source.outputs[0], through=CHANNEL_PRESERVING)
        if user is not node and (geometry := view.geometry(user)) and geometry.is_pointwise
    ]
    ours = {n.name for n, _ in view.users_of(node.outputs[0], through=CHANNEL_PRESERVING)}
    for sibling in siblings:
        theirs = {n.name for n, _ in view.users_of(sibling.outputs[0], through=CHANNEL_PRESERVING)}
        if any(view.role(view.graph.nodes[n]) == "concat" for n in ours & theirs):
            return (
                f"expands after the 1×1 squeeze {source.name!r} beside 1×1 expand "
                f"{sibling.name!r} (fire module)"
            )
    return (
        f"expands back the width that 1×1 conv {source.name!r} reduced "
        f"({squeeze.cin}->{squeeze.cout}): a squeeze-expand design"
    )


def check(ctx: RuleContext) -> Iterator[Finding]:
    view = ctx.view
    ratio = float(ctx.options["expansion-ratio"])
    min_channels = int(ctx.options["min-channels"])
    for node in view.nodes("conv"):
        g = view.geometry(node)
        if g is None or g.is_pointwise or g.group != 1 or g.cout < ratio * g.cin:
            continue
        if g.cin < min_channels:
            ctx.skip(node, f"reads {g.cin} channels, below min-channels={min_channels} (a stem)")
            continue
        projection = _projected_back(view, node, g)
        if projection is not None:
            back = view.geometry(projection)
            assert back is not None
            ctx.skip(
                node,
                f"projected back by 1×1 conv {projection.name!r} ({back.cin}->{back.cout}): "
                "a fused inverted bottleneck (EfficientNetV2's Fused-MBConv)",
            )
            continue
        reason = _squeeze_reason(view, node)
        if reason:
            ctx.skip(node, reason)
            continue
        bias = g.cout if g.has_bias else 0
        before = g.cout * g.cin * g.kernel_area
        spatial = g.cin * g.cin * g.kernel_area
        widen = g.cin * g.cout
        estimate = Estimate(
            params_before=before + bias,
            params_after=spatial + widen + (g.cin if g.has_bias else 0) + bias,
            macs_before=scale(before, g.out_pixels),
            macs_after=scale(spatial + widen, g.out_pixels),
            macs_per_output_pixel=before,
            macs_per_output_pixel_after=spatial + widen,
        )
        if saving(estimate) < MIN_SAVING:
            ctx.skip(
                node,
                f"widening with a 1×1 conv saves {saving(estimate):.0%}, below {MIN_SAVING:.0%}",
            )
            continue
        yield ctx.finding(
            node,
            f"{g.kernel_text} conv widens {g.cin}->{g.cout} channels "
            f"({g.cout / g.cin:.0f}×); widen with a 1×1 conv after a {g.cin}-wide spatial conv",
            estimate=estimate,
            fix=rewrite_fix(
                view,
                [node],
                "factorize into k×k to rank r + 1×1 r->C_out at the smallest rank within the "
                "error budget",
                Applicability.APPROXIMATE,
            ),
            suggestion=Suggestion(
                (
                    f"Conv {g.kernel_text} {g.cin}→{g.cin}",
                    f"Conv 1×1 {g.cin}→{g.cout}",
                )
            ),
            binding=SpatialConv(node),
        )


RULE = Rule(
    code="CL005",
    name="wide-expansion-by-spatial-conv",
    severity=Severity.INFO,
    fix="sometimes",
    fixes=(Applicability.APPROXIMATE,),
    rewrite=SpatialConv,
    summary="channels widened by a k×k conv where a 1×1 conv would widen them for fewer params",
    check=check,
    options={"expansion-ratio": 4, "min-channels": 16},
    doc=__doc__ or "",
)
