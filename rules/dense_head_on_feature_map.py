"""CL004 dense-head-on-feature-map

## What it does
Flags a fully-connected layer (Gemm or MatMul with a constant weight) whose input is a spatial
feature map with H·W > 1 flattened by Flatten or Reshape, looking through Dropout, Identity,
Cast, activations, affine ops and quantize/dequantize steps on the way. The weight may be
stored or computed from constants (onnx's weight-stripped zoo graphs write it as
ConstantOfShape); an NHWC map (a Transpose before the flatten, as TensorFlow exports write it)
is read with its channels last. A MatMul's bias is the constant added to its output.

## Why is this bad?
A dense layer over a flattened map gives every (channel, position) pair its own weight: VGG-16's
fc6 reads 512×7×7 = 25,088 values into 4,096 units, 102,764,544 params, three quarters of the
network. Network in Network replaced such heads with global average pooling, which has no
parameters, is robust to spatial translation, and ties each output map to a category; GoogLeNet
and ResNet do the same. The estimate is global average pooling followed by the same dense layer
on C inputs (equivalently a 1×1 conv): params C·N (+bias) instead of C·H·W·N, and MACs C·H·W
for the pooling plus C·N.

## Example
```
features[1,512,7,7] -> Flatten -> Gemm 25088->4096 -> Relu
```
Use instead:
```
features[1,512,7,7] -> GlobalAveragePool -> Flatten -> Gemm 512->4096 -> Relu
```

## Known problems
The replacement changes what the layer can express and must be retrained; detection heads that
need position (a dense layer predicting box coordinates from a small map) may want it as it is.
Maps that are already 1×1 are not flagged, nor is a dense layer whose input was reduced over
space (GlobalAveragePool, ReduceMean or ReduceMax over H and W, a pool to 1×1) and then only
transposed, normalized (LayerNorm, BatchNorm, per-channel affine), activated or flattened:
ConvNeXt's head pools to 1×768×1×1, applies LayerNorm channels-last between two Transposes and
flattens into a Linear 768->1000, which reads 768 pooled values, not a 1×1×768 map.

## Fix safety
Display-only: no rewrite of a trained dense head into pooling keeps its function, so
`convlint fix` leaves it and says so (under `skipped`).

## References
- Lin, Chen, Yan. Network in Network, arXiv:1312.4400, section 3.2 (global average pooling).
- Szegedy et al. Going Deeper with Convolutions, arXiv:1409.4842, section 5 (average pooling
  instead of fully connected layers, +0.6% top-1).
- Simonyan, Zisserman. Very Deep Convolutional Networks, arXiv:1409.1556, table 1 (fc6).
"""

from __future__ import annotations

from collections.abc import Iterator

from convlint.engine import RuleContext
from convlint.findings import Applicability, Estimate, Finding, Severity, described_fix
from convlint.registry import Rule
from convlint.sketch import Suggestion
from convlint.view import CHANNEL_PRESERVING


def check(ctx: RuleContext) -> Iterator[Finding]:
    graph, view = ctx.graph, ctx.view
    for dense in view.nodes("dense"):
        flatten, _ = view.source_of(dense.inputs[0], through=CHANNEL_PRESERVING)
        if flatten is None or view.role(flatten) != "flatten":
            continue
        pooled = view.spatial_reduction(dense.inputs[0])
        if pooled is not None:
            ctx.skip(dense, f"its input was reduced over space by {view.describe(pooled)}")
            continue
        rows = graph.shape(flatten.outputs[0])
        if rows is None or len(rows) != 2:
            # A Reshape to 3-D keeps a sequence axis (CRNN's [T, N, C]): not a flattened map.
            ctx.skip(dense, f"{flatten.op_type} {flatten.name!r} does not flatten to rows")
            continue
        feature_map = flatten.inputs[0]
        # Through a layout change before the flatten (NHWC exports flatten channels last).
        feature_map = view.origin(feature_map)
        source_shape = graph.shape(feature_map)
        if source_shape is None or len(source_shape) != 4:
            ctx.skip(dense, "input is not flattened from a 4-D feature map")
            continue
        channels = view.channels(feature_map)
        spatial = view.spatial_dims(feature_map)
        if channels is None or spatial is None or not all(isinstance(d, int) for d in spatial):
            ctx.skip(dense, "feature map has symbolic dims")
            continue
        height, width = (int(d) for d in spatial)  # type: ignore[arg-type]
        if height * width <= 1:
            ctx.skip(dense, "feature map is 1×1: already globally pooled")
            continue
        weight = graph.constants[dense.inputs[1]]
        if len(weight) != 2 or not all(isinstance(d, int) for d in weight):
            continue
        trans_b = dense.op_type == "Gemm" and int(dense.attrs.get("transB", 0)) == 1
        inputs, units = (weight[1], weight[0]) if trans_b else (weight[0], weight[1])
        assert isinstance(inputs, int) and isinstance(units, int)
        if inputs != channels * height * width:
            ctx.skip(
                dense, f"weight reads {inputs} values, not the {channels}×{height}×{width} map"
            )
            continue
        bias = units if view.dense_bias(dense) is not None else 0
        yield ctx.finding(
            dense,
            f"dense layer over a flattened {channels}×{height}×{width} feature map "
            f"({inputs}->{units}); use global average pooling and a {channels}->{units} layer",
            estimate=Estimate(
                params_before=inputs * units + bias,
                params_after=channels * units + bias,
                macs_before=inputs * units,
                macs_after=channels * height * width + channels * units,
            ),
            fix=described_fix(
                Applicability.DISPLAY_ONLY,
                "replace the head by global pooling and a 1×1 conv, and retrain",
            ),
            related=(flatten.name,),
            suggestion=Suggestion(
                ("GlobalAveragePool", "Flatten", f"{dense.op_type} {channels}→{units}"),
                replaces=(flatten.name, dense.name),
            ),
        )


RULE = Rule(
    code="CL004",
    name="dense-head-on-feature-map",
    severity=Severity.WARNING,
    fix="never",
    summary="a fully-connected layer over a flattened spatial feature map (VGG's fc6)",
    check=check,
    options={},
    doc=__doc__ or "",
)
