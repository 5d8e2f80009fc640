"""CL001 wide-conv-without-reduction

## What it does
Flags a spatial convolution (any kernel dim > 1, group 1) that reads at least `min-channels`
channels when no 1×1 convolution set the width of its input. Walking back from the conv's
input, convlint asks its canonical view and looks through per-channel affine ops
(BatchNormalization, or Mul/Add/Sub/Div by a per-channel constant as Caffe and TensorFlow
exports write it), activations (SiLU, HardSwish, GELU and Mish written out as several ops
count as one), layout changes (NHWC Transposes), QuantizeLinear/DequantizeLinear steps,
channel selections (Split, Slice or Gather along channels: YOLOv8's C2f splits a 1×1 conv's
output), and spatial convs and ConvTransposes that do not widen channels (a 1×7 then 7×1
chain, a 3×3 after a 3×3, YOLO-seg's Proto upsampling by a 2×2/2 ConvTranspose 128->128
between two 3×3 convs, which so get the same verdict); if it reaches a 1×1 conv, the input
width was chosen by a reduction and nothing is flagged. Conv, ConvInteger and QLinearConv are
all convs here: a quantized export gets the verdict of its float twin.

## Why is this bad?
A k×k conv costs C_out·C_in·k² MACs per output pixel: the channel count is paid k² times over.
Network in Network's 1×1 "cascaded cross channel pooling" and GoogLeNet's reductions put a cheap
1×1 conv in front to shrink C_in first; ResNet's bottleneck does the same. A 256->256 3×3 conv
costs 589,824 MACs per output pixel; the bottleneck 1×1 (256->64), 3×3 (64->64), 1×1 (64->256)
costs 69,632, 8.5× less. The estimate is exactly that design: 1×1 C_in->m, k×k m->m, 1×1
m->C_out with m = max(C_in, C_out) / `reduction-ratio` (default 4: ResNet's bottleneck width
is a quarter of the block's output, for widening convs too). Per output pixel that is
C_in·m·s + m²·k² + m·C_out against C_out·C_in·k², where s is the stride area: a strided conv
keeps its stride on the k×k (ResNet v1.5), so the 1×1 reduction runs at input resolution and is
charged for it. A VGG 3×3 128->256 conv gets m = 64: 294,912 -> 61,440 MACs per pixel, 4.8×.

## Example
```
x[1,256,14,14] -> Conv 3×3 256->256 -> Relu
```
Use instead:
```
x[1,256,14,14] -> Conv 1×1 256->64 -> Relu -> Conv 3×3 64->64 -> Relu -> Conv 1×1 64->256
```

## Known problems
The estimate is a redesign with the same input and output widths; it must be trained. Whether
the smaller network keeps its accuracy is an empirical question (ResNet-50 vs ResNet-34 says it
usually does). Convs below `min-channels` (default 128) are left alone: early layers are cheap
in channels and their cost is resolution, which a reduction does not touch. Convs whose stride
equals their kernel (non-overlapping patches: ConvNeXt's 2×2/2 downsampling layers, patch
embeddings) are left alone too: they read each input pixel once, so they already cost what a
1×1 conv over the space-to-depth map would. A k×k conv that narrows to r channels which a 1×1
conv widens back with nothing nonlinear between (k×k C_in->r, 1×1 r->C_out: how `convlint fix`
writes a weight of low rank on its output side) is already a low-rank conv and is passed over.
A conv for which the bottleneck would save less
than 10% of its MACs is not flagged (`--verbose` says so): a conv that already narrows its
width, such as a 1×3 conv 480->60, gains nothing from it. Pooling ops stop the walk back, so a
reduction followed by pooling does not count. The message names the conv's actual input and,
separately, where the walk back stopped.

1-D convs (speech, EEG and sequence models: Conv with one spatial dim) follow a written
policy, derived from the estimate: such a conv is a warning only when the bottleneck saves at
least `min-1d-saving` (default 5×) of its MACs, and info below. At equal widths C->C the
bottleneck costs C²/4 + C²·k/16 + C²/4 per output pixel against C²·k, a saving of 16k/(8+k):
4.4× at k=3, 6.2× at k=5, 7.5× at k=7, 8.5× at k=9, while a 2-D 3×3 conv (9 taps) saves
8.5× and a 5×5 12.1×. At k=3 the two 1×1 convs are 73% of the bottleneck's cost: it mostly
trades one short conv for two pointwise ones and buys little, so a 128-channel 1-D k=3 conv
(a VAD's, a dilated TCN's) is info; from k=5 at equal widths it saves over 6× and is a
warning, as 2-D convs are. A 1-D conv that widens saves less (k=5 128->256: 3.6×, info).

## Fix safety
Approximate: `convlint fix` factorizes the trained weight (SVD or Tucker-2 over channels, or a
spatial SVD into a k×1 and a 1×k conv) at the smallest rank whose output error, measured on
calibration samples, stays within the error budget; the two halves of a spatial SVD are marked
`convlint.ignore = CL001,CL005` in the written model, as a pruned conv is (below). The
rewritten model is close to the original on that data, not equal to it, so `fix` applies it
only with real calibration data (`--inputs`): an error measured on generated noise says little
about the user's inputs. Where no rank within the budget saves MACs it says so and leaves the
conv. With `--method prune` or `auto` it may instead keep fewer of the conv's input channels
(and narrow the conv producing them); a pruned conv that still reads `min-channels` or more is
marked `convlint.ignore = CL001` in the written model, so a second `fix` does not spend a
second budget on it. Quantized convs (QLinearConv, ConvInteger, or a Conv whose weight is a
DequantizeLinear) are display-only: factorize the float model, then quantize it again. The
retrained bottleneck of the estimate is not a fix.

## References
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2 (1×1 convolution).
- Szegedy et al. Going Deeper with Convolutions, arXiv:1409.4842, section 4 (1×1 reductions).
- He et al. Deep Residual Learning, arXiv:1512.03385, section 4.1 (bottleneck architectures).
"""

from __future__ import annotations

from collections.abc import Iterator

from convlint.cost import spatial_pixels
from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Severity
from convlint.graph import Node
from convlint.registry import Rule
from convlint.rules._conv import MIN_SAVING, SpatialConv, rewrite_fix, saving, scale
from convlint.sketch import Suggestion
from convlint.view import LINEAR, WIDTH_SOURCE, ConvGeometry, View


class _Walk:
    """The walk back from a conv's input to what set its width, memoized per tensor: residual
    networks merge paths at every block, and each merge is walked along all its inputs."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.memo: dict[str, tuple[Node | None, str]] = {}

    def reduction(self, tensor: str) -> tuple[Node | None, str]:
        """The 1×1 conv that set ``tensor``'s width, or None and where the walk stopped."""
        if tensor not in self.memo:
            self.memo[tensor] = (None, "a residual cycle")  # guards a malformed cyclic graph
            self.memo[tensor] = self._reduction(tensor)
        return self.memo[tensor]

    def _reduction(self, tensor: str) -> tuple[Node | None, str]:
        view = self.view
        source, walked = view.source_of(tensor, WIDTH_SOURCE)
        if source is None:
            last = view.data_input(walked[-1]) if walked else tensor
            return None, view.describe_tensor(last or tensor)
        merged = view.merged_inputs(source)
        if merged:
            # A residual sum has the width of its shortcut: a 1×1 conv that did not widen sets
            # it on any path (YOLOv8's C2f bottlenecks add to a split of a 1×1 conv's output).
            # A widening 1×1 (ResNet's downsample shortcut) did not reduce anything.
            for found, _ in (self.reduction(branch) for branch in merged):
                width = view.geometry(found) if found is not None else None
                if width is not None and width.cout <= width.cin:
                    return found, ""
            return None, view.describe(source)
        geometry = view.linear_geometry(source)  # a ConvTranspose is walked as a conv
        if geometry is None:
            return None, view.describe(source)
        if geometry.is_pointwise:
            return source, ""
        if geometry.cout > geometry.cin:
            return None, f"widening conv {source.name!r}, {geometry.shape_text}"
        data = view.data_input(source)
        return self.reduction(data) if data else (None, "a constant")


def check(ctx: RuleContext) -> Iterator[Finding]:
    view = ctx.view
    min_channels = int(ctx.options["min-channels"])
    ratio = int(ctx.options["reduction-ratio"])
    min_1d_saving = float(ctx.options["min-1d-saving"])
    walk = _Walk(view)
    for node in view.nodes("conv"):
        geometry = view.geometry(node)
        if geometry is None or geometry.is_pointwise:
            continue
        if geometry.group != 1:
            ctx.skip(node, f"grouped conv (group={geometry.group}) is already cheap in channels")
            continue
        if geometry.strides == geometry.kernel:
            ctx.skip(node, "non-overlapping patches (stride = kernel): reads each pixel once")
            continue
        if geometry.cin < min_channels:
            ctx.skip(node, f"reads {geometry.cin} channels, below min-channels={min_channels}")
            continue
        reduction, stopped = walk.reduction(view.data_input(node) or "")
        if reduction is not None:
            ctx.skip(node, f"input width set by 1×1 conv {reduction.name!r}")
            continue
        widening = _widened_back(view, node, geometry)
        if widening is not None:
            ctx.skip(
                node,
                f"narrows to {geometry.cout} channels that 1×1 conv {widening.name!r} widens "
                "back with nothing nonlinear between: already a low-rank factorization "
                "(k×k to rank r, then 1×1)",
            )
            continue
        estimate = _estimate(ctx, node, geometry, ratio)
        saved = saving(estimate)
        if saved < MIN_SAVING:
            mid = _mid(geometry, ratio)
            ctx.skip(
                node,
                f"the bottleneck (1×1 {geometry.cin}->{mid}, {geometry.kernel_text}, 1×1 "
                f"->{geometry.cout}) would save {saved:.0%} of its MACs, below "
                f"{MIN_SAVING:.0%}: the conv already narrows its width",
            )
            continue
        source = view.describe_tensor(view.data_input(node) or "")
        where = f"its input is {source}"
        if stopped != source:
            where += f"; the walk back stopped at {stopped}"
        severity, policy = None, ""
        factor = 1 / (1 - saved) if saved < 1 else float("inf")
        if len(geometry.kernel) == 1 and factor < min_1d_saving:
            severity = Severity.INFO
            policy = (
                f"; info, not a warning: the bottleneck saves {factor:.1f}×, below "
                f"min-1d-saving={min_1d_saving:g}× for 1-D convs"
            )
        yield ctx.finding(
            node,
            f"{geometry.kernel_text} conv reads {geometry.cin} channels with no "
            f"1×1 reduction before it ({where}){policy}",
            severity=severity,
            estimate=estimate,
            fix=rewrite_fix(
                view,
                [node],
                "factorize into 1×1 + k×k (+ 1×1) at the smallest rank within the error budget",
                Applicability.APPROXIMATE,
            ),
            suggestion=_suggestion(geometry, ratio),
            binding=SpatialConv(node),
        )


def _widened_back(view: View, node: Node, g: ConvGeometry) -> Node | None:
    """The 1×1 conv that linearly widens this narrowing conv's output again, if any: the pair
    is one low-rank conv (as `convlint fix` writes a weight of low rank on its output side)."""
    if g.cout >= g.cin:
        return None
    users = view.users_of(node.outputs[0], through=LINEAR)
    if len(users) != 1:
        return None
    user, _ = users[0]
    after = view.geometry(user)
    if after is not None and after.is_pointwise and after.group == 1 and after.cout > g.cout:
        return user
    return None


def _mid(g: ConvGeometry, ratio: int) -> int:
    """The bottleneck width: a quarter (1/ratio) of the wider side, as ResNet's is of the
    block's output."""
    return max(1, max(g.cin, g.cout) // ratio)


def _suggestion(g: ConvGeometry, ratio: int) -> Suggestion:
    mid, kernel = _mid(g, ratio), g.kernel_text
    return Suggestion(
        (f"Conv 1×1 {g.cin}→{mid}", f"Conv {kernel} {mid}→{mid}", f"Conv 1×1 {mid}→{g.cout}")
    )


def _estimate(ctx: RuleContext, node: Node, g: ConvGeometry, ratio: int) -> Estimate:
    mid = _mid(g, ratio)
    bias = g.cout if g.has_bias else 0
    per_out_before = g.cout * g.cin * g.kernel_area
    reduce_per_in = g.cin * mid
    rest_per_out = mid * mid * g.kernel_area + mid * g.cout
    per_out_after = reduce_per_in * g.stride_area + rest_per_out
    in_pixels = spatial_pixels(ctx.graph, node.inputs[0])
    macs_after = None
    if in_pixels is not None and g.out_pixels is not None:
        macs_after = reduce_per_in * in_pixels + rest_per_out * g.out_pixels
    return Estimate(
        params_before=per_out_before + bias,
        params_after=reduce_per_in + rest_per_out + bias,
        macs_before=scale(per_out_before, g.out_pixels),
        macs_after=macs_after,
        macs_per_output_pixel=per_out_before,
        macs_per_output_pixel_after=per_out_after,
    )


RULE = Rule(
    code="CL001",
    name="wide-conv-without-reduction",
    severity=Severity.WARNING,
    fix="sometimes",
    fixes=(Applicability.APPROXIMATE,),
    rewrite=SpatialConv,
    summary="k×k conv reading many channels that no 1×1 conv reduced first",
    check=check,
    options={"min-channels": 128, "reduction-ratio": 4, "min-1d-saving": 5.0},
    doc=__doc__ or "",
)
