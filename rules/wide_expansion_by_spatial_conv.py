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
is not flagged either: that is a squeeze-expand design (SqueezeNet's fire module) in which the
spatial conv restores a width the 1×1 took away on purpose.

## Fix safety
`convlint fix` factorizes the trained weight on the output side (the k×k conv to rank r, then a
1×1 r->C_out) at the smallest rank within `--tolerance`: safe, and skipped where no rank within
the tolerance saves MACs. The estimate's design at r = C_in needs retraining only when the
trained weight is far from that rank.

## References
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2.
- He et al. Deep Residual Learning, arXiv:1512.03385, section 4.1 (1×1 layers "increasing
  (restoring) dimensions").
- Iandola et al. SqueezeNet, arXiv:1602.07360, section 3.1 (strategies 1 and 2).
"""

from __future__ import annotations

from collections.abc import Iterator

from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Fix, Severity
from convlint.registry import Rule
from convlint.rules._conv import conv_geometry, scale
from convlint.sketch import Suggestion


def check(ctx: RuleContext) -> Iterator[Finding]:
    graph = ctx.graph
    ratio = float(ctx.options["expansion-ratio"])
    min_channels = int(ctx.options["min-channels"])
    for node in graph.of_type("Conv"):
        g = conv_geometry(graph, node)
        if g is None or g.is_pointwise or g.group != 1 or g.cout < ratio * g.cin:
            continue
        if g.cin < min_channels:
            ctx.skip(node, f"reads {g.cin} channels, below min-channels={min_channels} (a stem)")
            continue
        tensor = graph.data_input(node)
        source, _ = graph.source_of(tensor) if tensor else (None, [])
        squeeze = conv_geometry(graph, source) if source is not None else None
        if source is not None and squeeze and squeeze.is_pointwise and squeeze.cout < squeeze.cin:
            ctx.skip(node, f"expands after the 1×1 squeeze {source.name!r} (fire module)")
            continue
        bias = g.cout if g.has_bias else 0
        before = g.cout * g.cin * g.kernel_area
        spatial = g.cin * g.cin * g.kernel_area
        widen = g.cin * g.cout
        yield ctx.finding(
            node,
            f"{g.kernel_text} conv widens {g.cin}->{g.cout} channels "
            f"({g.cout / g.cin:.0f}×); widen with a 1×1 conv after a {g.cin}-wide spatial conv",
            estimate=Estimate(
                params_before=before + bias,
                params_after=spatial + widen + (g.cin if g.has_bias else 0) + bias,
                macs_before=scale(before, g.out_pixels),
                macs_after=scale(spatial + widen, g.out_pixels),
                macs_per_output_pixel=before,
                macs_per_output_pixel_after=spatial + widen,
            ),
            fix=Fix(
                Applicability.SAFE,
                "factorize into k×k to rank r + 1×1 r->C_out at the smallest rank within "
                "--tolerance",
            ),
            suggestion=Suggestion(
                (
                    f"Conv {g.kernel_text} {g.cin}→{g.cin}",
                    f"Conv 1×1 {g.cin}→{g.cout}",
                )
            ),
        )


RULE = Rule(
    code="CL005",
    name="wide-expansion-by-spatial-conv",
    severity=Severity.INFO,
    fix="sometimes",
    summary="channels widened by a k×k conv where a 1×1 conv would widen them for fewer params",
    check=check,
    options={"expansion-ratio": 4, "min-channels": 16},
    doc=__doc__ or "",
)
