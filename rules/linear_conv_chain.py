"""CL003 linear-conv-chain

## What it does
Flags a 1×1 conv joined to a neighbouring conv with nothing nonlinear between them, when folding
the two into one conv would cost fewer MACs. Between them the canonical view allows only linear
steps: per-channel affine ops (BatchNormalization, or Mul/Add/Sub/Div by a per-channel constant
as Caffe and TensorFlow exports write BatchNorm and Scale), Identity, Dropout, Cast, layout
changes (NHWC Transposes) and quantize/dequantize steps; an activation, however it is written
(ReLU, Clip, SiLU as `x * Sigmoid(x)`), ends the chain. The flagged node is the first conv.

A ConvTranspose is a linear map too: a ConvTranspose (kernel K1, stride s, pads p) followed by
a stride-1 conv (kernel K2, pads q) with nothing nonlinear between is one ConvTranspose of
kernel K1 + K2 - 1, stride s, pads p + K2 - 1 - q, and a 1×1 conv followed by a ConvTranspose
is one ConvTranspose of the second's shape; both are flagged on the same terms. YOLOv8-seg's
Proto upsamples with a ConvTranspose 2×2/2 128->128 and no activation before a 3×3 conv
128->128: at 640×640 that pair costs 4,194,304,000 MACs, the ConvTranspose 4×4/2 pad 1 it
equals 1,677,721,600.

## Why is this bad?
A 1×1 conv adds nonlinearity only through the activation after it (Network in Network's
"mlpconv" is 1×1 convs *with* ReLUs). Two convs with no nonlinearity between them compute one
linear map: a 1×1 expansion 64->256 into a 3×3 256->64 costs 163,840 MACs per pixel and
computes exactly what a single 3×3 64->64 computes for 36,864. The estimate is the chain before
and the folded conv after.

## Example
```
x[1,64,14,14] -> Conv 1×1 64->256 -> BatchNormalization -> Conv 3×3 256->64 -> Relu
```
Use instead:
```
x[1,64,14,14] -> Conv 3×3 64->64 -> Relu
```
or put an activation between the two convs if the depth was meant to add capacity.

## Known problems
Chains that folding would make dearer are deliberate low-rank factorizations and are not
flagged: MobileNetV2's linear bottleneck projection (144->24) followed by the next block's
expansion (24->144) is cheaper as two convs than as one 144->144 conv. Grouped convs and
chains whose middle tensor has other consumers (or is a graph output) are passed over, as are
chains where the 1×1 conv is strided or padded. Chains whose fold saves less than
`min-saving` (default 0.25) of their MACs are passed over as not worth a finding, unless the
fold removes at least `min-saved-params` (default 250,000) params: MobileNetV3-Small's first
block ends in a linear 1×1 16->16 projection read directly by the next block's 16->72
expansion, which folds for 18% and 256 params (not flagged), while CRAFT's dilated 3×3
512->1024 followed by a 1×1 1024->1024 with no activation folds for 18% of its MACs but
1,048,576 params (flagged).

## Fix safety
Safe: folding is exact in exact arithmetic (composition of linear maps), so `convlint fix`
applies it always, with or without calibration data; the verifier measures the floating-point
difference on this model. `convlint fix` folds through
per-channel affine ops, Identity, Dropout and Cast; a chain through a layout change or a
quantization step, or between quantized convs, is display-only. Where the first conv or a
BatchNormalization leaves a bias and the second conv zero-pads, the border pixels see padding
rather than that bias, which the rewrite accounts for with a per-position bias map.

A ConvTranspose chain folds into one ConvTranspose, exactly where the conv after it does not
pad, or the ConvTranspose neither has a bias (nor a shift between) nor crops its output (pads).
Otherwise the fold is equal in the interior only: where the conv zero-pads, the single
ConvTranspose reads the bias (or the cropped rows) the original never wrote there, so the
border pixels differ (YOLOv8-seg's Proto: its ConvTranspose has a bias). The finding says so
and the fix is unsafe: applied only with `--unsafe-fixes`, and kept only if the verifier finds
the outputs within the tolerance. A bias before a ConvTranspose (1×1 conv then ConvTranspose)
reaches its output once per kernel tap that lands on a pixel, which no ConvTranspose bias
holds: display-only.

## References
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.1 (mlpconv: 1×1 convs need
  their nonlinearities).
- Sandler et al. MobileNetV2, arXiv:1801.04381, section 3.2 (linear bottlenecks).
- Szegedy et al. Going Deeper with Convolutions, arXiv:1409.4842, section 4 ("rectified linear
  activation" after each 1×1 reduction).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from convlint.cost import spatial_pixels
from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Fix, Severity, described_fix
from convlint.graph import Node
from convlint.registry import Rule
from convlint.rules._conv import rewrite_fix, scale
from convlint.sketch import Suggestion
from convlint.view import FOLDABLE, LINEAR, ConvGeometry, View, border_caveat, transposed_fold


@dataclass(frozen=True)
class ConvChain:
    """What CL003 binds on a finding (``Finding.binding``): the chain it found through the view,
    ``first`` (a conv or ConvTranspose), the nodes ``between`` in graph order, and ``second``;
    `convlint fix` folds exactly these into one conv."""

    first: Node
    between: tuple[Node, ...]
    second: Node


def _foldable_reason(first: Node, second: Node, a: ConvGeometry, b: ConvGeometry) -> str:
    """Why the chain cannot fold into one conv, or "" when it can."""
    if a.group != 1 or b.group != 1:
        return "grouped conv in the chain"
    if not (a.is_pointwise or b.is_pointwise):
        return "neither conv is 1×1"
    pointwise, node = (a, first) if a.is_pointwise else (b, second)
    if pointwise.stride_area != 1:
        return "the 1×1 conv is strided"
    if any(node.attrs.get("pads") or []) or node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return "the 1×1 conv is padded"
    return ""


def _fix(view: View, first: Node, second: Node, between: list[Node]) -> Fix:
    fix = rewrite_fix(
        view,
        [first, second],
        f"fold {first.name!r} into {second.name!r} (exact)",
        Applicability.SAFE,
    )
    if fix.applicability is Applicability.SAFE and any(
        view.role(n) not in FOLDABLE for n in between
    ):
        return described_fix(
            Applicability.DISPLAY_ONLY,
            "the chain passes through a layout change or a quantization step: convlint fix "
            "folds chains of per-channel affine ops only",
        )
    return fix


def check(ctx: RuleContext) -> Iterator[Finding]:
    view = ctx.view
    for second in view.nodes("conv"):
        b = view.geometry(second)
        if b is None:
            continue
        tensor = view.data_input(second)
        if tensor is None:
            continue
        first, between = view.source_of(tensor, through=LINEAR)
        if first is None:
            continue
        if view.role(first) == "deconv":
            yield from _transposed_chain(ctx, first, between, second)
            continue
        a = view.geometry(first)
        if a is None:
            continue
        reason = _chain_reason(ctx, [first, *reversed(between)]) or _foldable_reason(
            first, second, a, b
        )
        if reason:
            ctx.skip(first, reason)
            continue
        # Folded: C_in(a) -> C_out(b) with the spatial kernel and stride of the spatial conv.
        spatial = b if b.is_spatial else a
        folded_per_pixel = a.cin * b.cout * spatial.kernel_area
        before_per_pixel = a.cin * a.cout * a.kernel_area + b.cin * b.cout * b.kernel_area
        # Before: every node the fold removes (the convs and the affine ops between them).
        costs = [ctx.cost(n) for n in [first, *between, second]]
        params_before = sum(c.params for c in costs)
        macs_before = (
            None if any(c.macs is None for c in costs) else sum(c.macs or 0 for c in costs)
        )
        macs_after = scale(folded_per_pixel, b.out_pixels)
        if macs_before is not None and macs_after is not None:
            saving = 1 - macs_after / macs_before
        else:
            saving = 1 - folded_per_pixel / before_per_pixel
        bias = b.cout if (a.has_bias or b.has_bias or between) else 0
        params_after = folded_per_pixel + bias
        reason = _saving_reason(ctx, second, saving, params_before - params_after)
        if reason:
            ctx.skip(first, reason)
            continue
        chain = [first, *reversed(between)]
        path = " -> ".join(view.activation_name(n) or n.op_type for n in [*chain, second])
        yield ctx.finding(
            first,
            f"{path}: no nonlinearity between the convs, so they are one linear map "
            f"({a.cin}->{b.cout} channels); fold them or add an activation",
            estimate=Estimate(
                params_before=params_before,
                params_after=params_after,
                macs_before=macs_before,
                macs_after=macs_after,
                macs_per_output_pixel=before_per_pixel,
                macs_per_output_pixel_after=folded_per_pixel,
            ),
            fix=_fix(view, first, second, between),
            related=(second.name, *(n.name for n in between)),
            suggestion=Suggestion(
                (f"Conv {spatial.kernel_text} {a.cin}→{b.cout} (folded)",),
                replaces=(first.name, second.name),
            ),
            binding=ConvChain(first, tuple(reversed(between)), second),
        )

    for second in view.nodes("deconv"):
        tensor = view.data_input(second)
        first, between = view.source_of(tensor, through=LINEAR) if tensor else (None, [])
        if first is not None and view.role(first) == "conv":
            yield from _transposed_chain(ctx, first, between, second)


def _chain_reason(ctx: RuleContext, chain: list[Node]) -> str:
    """Why the nodes a fold would remove cannot go: another reader of their outputs."""
    graph = ctx.graph
    shared = [n for n in chain if len(graph.consumers_of(n.outputs[0])) > 1]
    if shared:
        return f"output of {shared[0].name!r} has other consumers"
    # A graph output is a reader too: the fold would remove it.
    exposed = [n for n in chain if n.outputs[0] in graph.graph_outputs]
    if exposed:
        return f"output of {exposed[0].name!r} is a graph output"
    return ""


def _saving_reason(ctx: RuleContext, second: Node, saving: float, saved_params: int) -> str:
    """Why a fold is not worth a finding, or "" when it is."""
    min_saving = float(ctx.options["min-saving"])
    min_saved_params = int(ctx.options["min-saved-params"])
    if saving <= 0:
        return (
            f"folding into {second.name!r} would cost more: a deliberate low-rank "
            "factorization (linear bottleneck)"
        )
    if saving < min_saving and saved_params < min_saved_params:
        return (
            f"folding into {second.name!r} saves only {saving:.0%} of its MACs and "
            f"{saved_params:,} params (below min-saving={min_saving} and "
            f"min-saved-params={min_saved_params:,})"
        )
    return ""


def _compact(values: tuple[int, ...] | list[int]) -> str:
    """``2`` for (2, 2), ``[0, 1, 0, 1]`` where they differ."""
    return str(values[0]) if len(set(values)) == 1 else str(list(values))


def _transposed_chain(
    ctx: RuleContext, first: Node, between: list[Node], second: Node
) -> Iterator[Finding]:
    """A ConvTranspose then a conv, or a 1×1 conv then a ConvTranspose, with nothing nonlinear
    between: one ConvTranspose."""
    view, graph = ctx.view, ctx.graph
    a, b = view.linear_geometry(first), view.linear_geometry(second)
    if a is None or b is None:
        return
    deconv_first = view.role(first) == "deconv"
    reason = _chain_reason(ctx, [first, *reversed(between)])
    if not reason and (a.group != 1 or b.group != 1):
        reason = "grouped conv in the chain"
    kernel, caveat = b.kernel, ""
    pads: list[int] = []
    shifted = a.has_bias or any(view.role(n) == "affine" for n in between)
    if not reason and deconv_first:
        kernel, pads, reason = transposed_fold(first, second, a.kernel, b.kernel)
        caveat = border_caveat(first, second, shifted)
    elif not reason and not (a.is_pointwise and a.stride_area == 1):
        reason = "the conv before the ConvTranspose is not an unstrided 1×1 conv"
    elif not reason and any(first.attrs.get("pads") or []):
        reason = "the 1×1 conv is padded"
    if reason:
        ctx.skip(first, reason)
        return
    deconv = first if deconv_first else second
    in_pixels = spatial_pixels(graph, deconv.inputs[0])
    stride_area = math.prod(view.linear_geometry(deconv).strides)  # type: ignore[union-attr]
    folded_per_in = a.cin * b.cout * math.prod(kernel)
    costs = [ctx.cost(n) for n in [first, *between, second]]
    params_before = sum(c.params for c in costs)
    macs_before = None if any(c.macs is None for c in costs) else sum(c.macs or 0 for c in costs)
    macs_after = scale(folded_per_in, in_pixels)
    # Per pixel of the ConvTranspose's input (its cost's unit), the conv's per output pixel
    # times the stride area.
    if deconv_first:
        before_per_in = (
            a.cin * a.cout * a.kernel_area + b.cin * b.cout * b.kernel_area * stride_area
        )
    else:
        before_per_in = a.cin * a.cout + b.cin * b.cout * b.kernel_area
    if macs_before is not None and macs_after is not None:
        saving = 1 - macs_after / macs_before
    else:
        saving = 1 - folded_per_in / before_per_in
    bias = b.cout if (shifted or b.has_bias) else 0
    params_after = folded_per_in + bias
    reason = _saving_reason(ctx, second, saving, params_before - params_after)
    if reason:
        ctx.skip(first, reason)
        return
    chain = [first, *reversed(between), second]
    path = " -> ".join(view.activation_name(n) or n.op_type for n in chain)
    text = "×".join(map(str, kernel))
    stride = _compact(view.linear_geometry(deconv).strides)  # type: ignore[union-attr]
    folded = f"a ConvTranspose {text} stride {stride}"
    if deconv_first:
        folded += f" pad {_compact(pads)}"
    message = (
        f"{path}: no nonlinearity between them, so they are one linear map, {folded} "
        f"{a.cin}->{b.cout}"
    )
    if caveat:
        message += (
            f"; equal in the interior only: the border pixels differ where {caveat} meets "
            "the conv's zero padding"
        )
    message += "; fold them or add an activation"
    if not deconv_first and shifted:
        fix = described_fix(
            Applicability.DISPLAY_ONLY,
            "a bias before the ConvTranspose reaches its output unevenly (once per kernel tap "
            "that lands on a pixel), which no ConvTranspose bias holds",
        )
    else:
        fix = _fix(view, first, second, between)
        if caveat and fix.applicability is Applicability.SAFE:
            fix = described_fix(
                Applicability.UNSAFE,
                f"fold {first.name!r} into {second.name!r} ({folded}; the border pixels differ)",
            )
    per_out = Fraction(before_per_in, stride_area)
    after_out = Fraction(folded_per_in, stride_area)
    yield ctx.finding(
        first,
        message,
        estimate=Estimate(
            params_before=params_before,
            params_after=params_after,
            macs_before=macs_before,
            macs_after=macs_after,
            macs_per_output_pixel=int(per_out) if per_out.denominator == 1 else None,
            macs_per_output_pixel_after=int(after_out) if after_out.denominator == 1 else None,
        ),
        fix=fix,
        related=(second.name, *(n.name for n in between)),
        suggestion=Suggestion(
            (f"ConvTranspose {text}/{stride} {a.cin}→{b.cout} (folded)",),
            replaces=(first.name, second.name),
        ),
        binding=ConvChain(first, tuple(reversed(between)), second),
    )


RULE = Rule(
    code="CL003",
    name="linear-conv-chain",
    severity=Severity.INFO,
    fix="sometimes",
    fixes=(Applicability.SAFE, Applicability.UNSAFE),
    rewrite=ConvChain,
    summary="a 1×1 conv with no nonlinearity between it and a neighbouring conv: foldable",
    check=check,
    options={"min-saving": 0.25, "min-saved-params": 250_000},
    doc=__doc__ or "",
)
