"""CL003 on ConvTranspose chains (YOLOv8-seg's Proto), their folds verified with onnxruntime,
and CL001's walk through a ConvTranspose (twin convs get the same verdict)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from fix_helpers import ort_run, random_inputs, target_for
from onnx import helper, numpy_helper

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.findings import Applicability
from convlint.registry import load_registry
from convlint.rewrite.edit import FoldTarget, Names, apply_edits


def _lint(path: Path) -> ModelReport:
    report = analyze(path, load_registry(), Settings(verbose=True))
    assert report.error is None, report.error
    return report


def _chain(
    *,
    deconv_first: bool = True,
    kernel: int = 2,
    stride: int = 2,
    crop: int = 0,
    conv_pad: int = 1,
    conv_kernel: int = 3,
    deconv_bias: bool = False,
    conv_bias: bool = True,
    scale_between: bool = False,
    channels: tuple[int, int, int] = (8, 16, 8),
    hw: int = 6,
    seed: int = 0,
) -> onnx.ModelProto:
    """x -> ConvTranspose -> [Mul by a per-channel scale] -> Conv, or 1×1 Conv -> ConvTranspose."""
    rng = np.random.default_rng(seed)
    cin, mid, cout = channels
    inits: list[onnx.TensorProto] = []

    def param(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(
            numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)
        )
        return name

    nodes = []
    if deconv_first:
        inputs = ["x", param("w1", (cin, mid, kernel, kernel))]
        if deconv_bias:
            inputs.append(param("b1", (mid,)))
        nodes.append(
            helper.make_node(
                "ConvTranspose",
                inputs,
                ["t"],
                name="up",
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[crop] * 4,
            )
        )
        tensor = "t"
        if scale_between:
            nodes.append(
                helper.make_node("Mul", ["t", param("s", (mid, 1, 1))], ["m"], name="scale")
            )
            tensor = "m"
        inputs = [tensor, param("w2", (cout, mid, conv_kernel, conv_kernel))]
        if conv_bias:
            inputs.append(param("b2", (cout,)))
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                ["y"],
                name="conv",
                kernel_shape=[conv_kernel, conv_kernel],
                pads=[conv_pad] * 4,
            )
        )
    else:
        inputs = ["x", param("w1", (mid, cin, 1, 1))]
        if deconv_bias:  # here: the 1×1 conv's bias, before the ConvTranspose
            inputs.append(param("b1", (mid,)))
        nodes.append(helper.make_node("Conv", inputs, ["t"], name="conv", kernel_shape=[1, 1]))
        inputs = ["t", param("w2", (mid, cout, kernel, kernel))]
        if conv_bias:
            inputs.append(param("b2", (cout,)))
        nodes.append(
            helper.make_node(
                "ConvTranspose",
                inputs,
                ["y"],
                name="up",
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[crop] * 4,
            )
        )
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip


def _folded(model: onnx.ModelProto, first: str) -> tuple[FoldTarget, onnx.ModelProto]:
    target = target_for(model, "CL003", first)
    assert isinstance(target, FoldTarget)
    return target, apply_edits(model, [target.edit(None, Names(model))])


def _outputs(model: onnx.ModelProto, folded: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    feeds = random_inputs(model, samples=1)
    return np.asarray(ort_run(model, feeds)[0][0]), np.asarray(ort_run(folded, feeds)[0][0])


EXACT = {
    "2x2/2 then 3x3 pad 1, no bias": {},
    "2x2/2 with bias then 3x3 without padding": {"deconv_bias": True, "conv_pad": 0},
    "3x3/2 then 3x3 pad 1": {"kernel": 3},
    "2x2/2, per-channel scale, then 5x5 pad 2": {
        "scale_between": True,
        "conv_kernel": 5,
        "conv_pad": 2,
    },
    "4x4/2 then 1x1": {"kernel": 4, "conv_kernel": 1, "conv_pad": 0, "deconv_bias": True},
    "1x1 conv then ConvTranspose 2x2/2": {"deconv_first": False},
    "1x1 conv then ConvTranspose 3x3/2 pad 1": {"deconv_first": False, "kernel": 3, "crop": 1},
}


@pytest.mark.parametrize("case", sorted(EXACT))
def test_transposed_fold_is_exact(case: str) -> None:
    model = _chain(**EXACT[case])  # type: ignore[arg-type]
    target, folded = _folded(model, "up" if EXACT[case].get("deconv_first", True) else "conv")
    assert not target.unsafe
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["ConvTranspose"]
    before, after = _outputs(model, folded)
    assert before.shape == after.shape
    assert np.max(np.abs(after - before)) <= 1e-4 * max(1.0, float(np.max(np.abs(before))))


def test_folded_kernel_stride_and_pads() -> None:
    """2×2/2 then 3×3 pad 1 is a 4×4/2 pad 1 (YOLOv8-seg's Proto); 3×3/2 pad 1 then 3×3 pad 1
    a 5×5/2 pad 2."""
    for kwargs, kernel, pads in (
        ({}, [4, 4], [1, 1, 1, 1]),
        ({"kernel": 3, "crop": 1}, [5, 5], [2, 2, 2, 2]),
    ):
        _, folded = _folded(_chain(**kwargs), "up")  # type: ignore[arg-type]
        (node,) = folded.graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (node.name, attrs["kernel_shape"], attrs["strides"], attrs["pads"]) == (
            "conv",
            kernel,
            [2, 2],
            pads,
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"deconv_bias": True}, {"kernel": 3, "crop": 1}, {"scale_between": True, "deconv_bias": True}],
)
def test_border_inexact_fold_is_unsafe_and_equal_inside(kwargs: dict[str, object]) -> None:
    model = _chain(**kwargs)  # type: ignore[arg-type]
    target, folded = _folded(model, "up")
    assert target.unsafe
    before, after = _outputs(model, folded)
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert np.max(np.abs(after[inside] - before[inside])) <= 1e-4
    assert np.max(np.abs(after - before)) > 1e-3  # the border pixels differ


def test_bias_before_a_convtranspose_is_not_folded(tmp_path: Path) -> None:
    model = _chain(deconv_first=False, deconv_bias=True, channels=(16, 64, 16))
    report = _lint(fixtures.save(model, tmp_path / "m.onnx"))
    (finding,) = report.findings
    assert finding.code == "CL003" and finding.node == "conv"
    assert finding.fix is not None and finding.fix.applicability is Applicability.DISPLAY_ONLY
    # 1×1 16->64 then ConvTranspose 2×2/2 64->16: per input pixel 1,024 + 4,096 vs 1,024.
    est = finding.estimate
    assert est is not None
    assert (est.macs_before, est.macs_after) == ((16 * 64 + 64 * 16 * 4) * 36, 16 * 16 * 4 * 36)


def test_yolo_seg_proto_finding_with_the_border_caveat(tmp_path: Path) -> None:
    model = fixtures.BUILDERS["yolo_seg_proto"](hw=80, weights="external")
    report = _lint(fixtures.save(model, tmp_path / "proto.onnx"))
    (finding,) = report.findings
    assert (finding.code, finding.node) == ("CL003", "model.22.proto.upsample")
    assert "a ConvTranspose 4×4 stride 2 pad 1 128->128" in finding.message
    assert "the border pixels differ where the ConvTranspose's bias" in finding.message
    assert finding.fix is not None and finding.fix.applicability is Applicability.UNSAFE
    est = finding.estimate
    assert est is not None
    # ConvTranspose 128·128·4 per input pixel at 80×80 + 3×3 conv at 160×160, vs 4×4 folded
    assert est.macs_before == 128 * 128 * 4 * 6400 + 128 * 128 * 9 * 25600 == 4_194_304_000
    assert est.macs_after == 128 * 128 * 16 * 6400 == 1_677_721_600
    assert (est.macs_per_output_pixel, est.macs_per_output_pixel_after) == (163_840, 65_536)


def test_yolo_seg_proto_twin_convs_get_the_same_verdict(lint: Callable[..., ModelReport]) -> None:
    report = lint("yolo_seg_proto", Settings(verbose=True))
    reasons = {s.node: s.reason for s in report.skips if s.code == "CL001"}
    assert reasons == {
        "model.22.proto.cv1.conv": "input width set by 1×1 conv 'model.15.cv2.conv'",
        "model.22.proto.cv2.conv": "input width set by 1×1 conv 'model.15.cv2.conv'",
    }


def test_fix_folds_the_proto_without_bias_and_verifies(
    model_file: Callable[..., Path], tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    import json

    path = model_file("yolo_seg_proto_no_bias")
    out = tmp_path / "folded.onnx"
    code, stdout, _ = cli("fix", str(path), "-o", str(out), "--format", "json", "--no-latency")
    assert code == 0
    data = json.loads(stdout)
    model = data["models"][0] if "models" in data else data
    (rewrite,) = model["rewrites"]
    assert (rewrite["code"], rewrite["kind"]) == ("CL003", "fold")
    # at 20×20: 128·128·4·400 + 128·128·9·1600 -> 128·128·16·400
    assert (rewrite["macs_before"], rewrite["macs_after"]) == (262_144_000, 104_857_600)
    assert rewrite["verified"]["ok"] and rewrite["verified"]["rel_l2_error"] < 1e-5
    written = onnx.load(out)
    folded = [n for n in written.graph.node if n.op_type == "ConvTranspose"]
    assert [n.name for n in folded] == ["model.22.proto.cv2.conv"]
    original = onnx.load(path)
    feeds = random_inputs(original, samples=1)
    ref, new = ort_run(original, feeds)[0][0], ort_run(written, feeds)[0][0]
    assert np.max(np.abs(np.asarray(new) - np.asarray(ref))) < 1e-4


def test_fix_leaves_the_unsafe_fold_without_unsafe_fixes(
    model_file: Callable[..., Path], tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    import json

    path = model_file("yolo_seg_proto")
    code, stdout, _ = cli(
        "fix", str(path), "-o", str(tmp_path / "o.onnx"), "--format", "json", "--no-latency"
    )
    data = json.loads(stdout)
    model = data["models"][0] if "models" in data else data
    assert model["rewrites"] == []
    assert [(s["code"], s["node"]) for s in model["skipped"]] == [
        ("CL003", "model.22.proto.upsample")
    ]
