"""The same network, exported another way, gets the same findings.

Every block is built PyTorch style by fixtures/ and converted into the dialects other exporters
write (fixtures/dialects.py: Caffe's BN + Scale as Mul/Add, TensorFlow's NHWC Transposes and
Sub/Mul/Add batch norm, QDQ and QOperator quantization, composite activations such as
ultralytics' SiLU as Sigmoid·Mul). The findings (code and node) and the estimates of the
flagged layers must not change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.fixtures import dialects
from convlint.registry import load_registry

Converter = Callable[[onnx.ModelProto], onnx.ModelProto]


def _activation(kind: Any) -> Converter:
    def convert(model: onnx.ModelProto) -> onnx.ModelProto:
        return dialects.with_activation(model, kind)

    convert.__name__ = kind
    return convert


LAYOUTS: dict[str, Converter] = {
    "caffe": dialects.to_caffe,
    "tensorflow": dialects.to_tensorflow,
    "qdq": dialects.to_qdq,
    "qoperator": dialects.to_qoperator,
}
ACTIVATIONS: dict[str, Converter] = {kind: _activation(kind) for kind in dialects.ACTIVATION_KINDS}

# The blocks of the issue (and the bad/good twins), with the findings their PyTorch export
# gets: every dialect must get exactly these.
FAMILIES: dict[str, set[tuple[str, str]]] = {
    # Caffe-style DenseNet block, BN-Inception's double 3×3 branch
    "densenet_block": set(),
    "bn_inception_double3x3": {("CL001", "inception_4a/double_3x3_2")},
    # TensorFlow-style NHWC ResNet blocks, QDQ/QOperator bottleneck
    "resnet_bottleneck": set(),
    "resnet_basic_block": {("CL001", "layer2.1.conv1"), ("CL001", "layer2.1.conv2")},
    "conv3x3": {("CL001", "conv")},
    # YOLOv8 C2f + SPPF and YOLOX SPP (SiLU comes from the activation dialect)
    "yolov8_c2f_sppf": set(),
    "yolox_spp": set(),
    # GoogLeNet 3a, naive and as published
    "inception_3a_naive": {
        ("CL001", "inception_3a/3x3"),
        ("CL001", "inception_3a/5x5"),
        ("CL002", "inception_3a/pool"),
    },
    "inception_3a": set(),
    # the rules' twins and the precision set
    "linear_conv_chain_bad": {("CL003", "expand")},
    "linear_conv_chain_good": set(),
    "spatial_expansion_bad": {("CL005", "conv2")},
    "spatial_expansion_good": set(),
    "dense_head_bad": {("CL004", "fc6")},
    "dense_head_good": set(),
    "vgg_stack": {
        ("CL001", "features.conv1"),
        ("CL001", "features.conv2"),
        ("CL001", "features.conv3"),
        ("CL004", "classifier"),
    },
    "craft_fc_conv": {("CL001", "basenet.slice5.1"), ("CL003", "basenet.slice5.1")},
    "crnn_lstm": {
        ("CL001", "cnn.conv2"),
        ("CL001", "cnn.conv3"),
        ("CL001", "cnn.conv4"),
        ("CL001", "cnn.conv6"),
    },
    "fused_mbconv_stage": set(),
    "mobilenetv2_blocks": set(),
    "mobilenetv2_tail": set(),
    "squeezenet_fire": set(),
    "regnet_block": set(),
    "stem_only": set(),
    # ConvNeXt's head: pooled, LayerNorm channels-last, Flatten, Linear (no CL004)
    "convnext_head": set(),
    "convnext_head_reduce_mean": set(),
    # YOLOv8-seg's Proto: ConvTranspose then a 3×3 conv, nothing nonlinear between (CL003)
    "yolo_seg_proto": {("CL003", "model.22.proto.upsample")},
    "yolo_seg_proto_no_bias": {("CL003", "model.22.proto.upsample")},
}


def lint(model: onnx.ModelProto, path: Path) -> ModelReport:
    report = analyze(fixtures.save(model, path), load_registry(), Settings(verbose=True))
    assert report.error is None, report.error
    return report


def verdict(report: ModelReport) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Each finding's (code, node) with the numbers of its estimate that describe the flagged
    design. CL003's before-figures add the params and MACs of the affine ops the fold removes,
    which differ by dialect (BatchNorm stores 2C, TensorFlow's Sub/Mul/Add 3C): its per-pixel
    figures are compared instead."""
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    for finding in report.findings:
        est = finding.estimate.as_dict() if finding.estimate else {}
        if finding.code == "CL003":
            numbers: tuple[Any, ...] = (
                est.get("macs_per_output_pixel"),
                est.get("macs_per_output_pixel_after"),
                est.get("macs_after"),
                est.get("params_after"),
            )
        else:
            numbers = tuple(sorted(est.items()))
        found[(finding.code, finding.node)] = numbers
    return found


def outcome(report: ModelReport) -> tuple[Any, ...]:
    """The verdict and the model's cost: params and MACs, which every dialect shares (a
    per-channel Mul counts one MAC per element like BatchNormalization; TensorFlow's
    subtracted mean is a statistic, as BatchNormalization's running mean is)."""
    assert report.cost is not None
    return verdict(report), report.cost.params, report.cost.macs


@pytest.fixture(scope="module")
def pytorch_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pytorch")
    return {
        name: outcome(lint(fixtures.BUILDERS[name](), folder / f"{name}.onnx")) for name in FAMILIES
    }


@pytest.fixture(scope="module")
def pytorch_verdicts(pytorch_outcomes: dict[str, Any]) -> dict[str, Any]:
    return {name: found for name, (found, _, _) in pytorch_outcomes.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pytorch_export_findings(name: str, pytorch_verdicts: dict[str, Any]) -> None:
    assert set(pytorch_verdicts[name]) == FAMILIES[name]


@pytest.mark.parametrize("dialect", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_findings_and_costs_in_every_layout_dialect(
    name: str, dialect: str, pytorch_outcomes: dict[str, Any], tmp_path: Path
) -> None:
    model = LAYOUTS[dialect](fixtures.BUILDERS[name]())
    assert outcome(lint(model, tmp_path / f"{name}.onnx")) == pytorch_outcomes[name]


ACTIVATION_FAMILIES = (
    "yolov8_c2f_sppf",
    "yolox_spp",
    "resnet_bottleneck",
    "resnet_basic_block",
    "linear_conv_chain_good",
    "mobilenetv2_blocks",
    "inception_3a",
    "fused_mbconv_stage",
)


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
@pytest.mark.parametrize("name", ACTIVATION_FAMILIES)
def test_composite_activations_are_activations(
    name: str, kind: str, pytorch_verdicts: dict[str, Any], tmp_path: Path
) -> None:
    model = ACTIVATIONS[kind](fixtures.BUILDERS[name]())
    assert verdict(lint(model, tmp_path / f"{name}.onnx")) == pytorch_verdicts[name]


def test_silu_yolov8_in_tensorflow_layout_and_qdq(
    pytorch_verdicts: dict[str, Any], tmp_path: Path
) -> None:
    silu = dialects.with_activation(fixtures.BUILDERS["yolov8_c2f_sppf"](), "silu")
    for convert in (dialects.to_tensorflow, dialects.to_qdq):
        report = lint(convert(silu), tmp_path / f"{convert.__name__}.onnx")
        assert verdict(report) == pytorch_verdicts["yolov8_c2f_sppf"] == {}


def test_vgg_head_from_constant_of_shape_is_a_dense_head(tmp_path: Path) -> None:
    stored = lint(fixtures.BUILDERS["dense_head_bad"](), tmp_path / "stored.onnx")
    stripped = lint(fixtures.BUILDERS["vgg_head_constant_of_shape"](), tmp_path / "strip.onnx")
    assert outcome(stripped) == outcome(stored)
    assert outcome(stripped)[1:] == (6_461_194, 8_033_280)


def test_crnn_sequence_first_and_batch_first_cost_the_same(tmp_path: Path) -> None:
    first = lint(fixtures.BUILDERS["crnn_lstm"](), tmp_path / "seq.onnx")
    batch = lint(fixtures.BUILDERS["crnn_lstm_batch_first"](), tmp_path / "batch.onnx")
    assert outcome(first) == outcome(batch)
    assert outcome(first)[1:] == (2_087_461, 397_524_992)
    assert first.cost is not None
    lstm = first.cost.nodes["rnn.0.rnn"]
    # 32 steps × 2 directions × 4 gates × 128 hidden × (256 inputs + 128 hidden)
    assert lstm.macs == 32 * 2 * 4 * 128 * (256 + 128)


def test_composite_activation_is_named_in_messages(tmp_path: Path) -> None:
    model = dialects.with_activation(fixtures.BUILDERS["linear_conv_chain_good"](), "silu")
    report = lint(model, tmp_path / "silu.onnx")
    assert report.findings == []
    # The 3×3 reads a SiLU of the 1×1 expansion: the chain is not linear.
    assert not any(s.code == "CL003" for s in report.skips)
    bad = dialects.with_activation(fixtures.BUILDERS["vgg_stack"](), "silu")
    messages = {f.node: f.message for f in lint(bad, tmp_path / "vgg.onnx").findings}
    assert "its input is SiLU" in messages["features.conv2"]
