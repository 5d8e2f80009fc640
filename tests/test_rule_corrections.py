"""Rule corrections from the review of real exports: estimates that save nothing, one finding
per concat, messages that say where the walk stopped."""

from __future__ import annotations

from pathlib import Path

import onnx

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.fixtures import GraphBuilder, dialects
from convlint.registry import load_registry


def lint_model(model: object, path: Path) -> ModelReport:
    saved = fixtures.save(model, path)  # type: ignore[arg-type]
    report = analyze(saved, load_registry(), Settings(verbose=True))
    assert report.error is None, report.error
    return report


def test_a_conv_that_already_narrows_its_width_is_not_cl001(tmp_path: Path) -> None:
    g = GraphBuilder(seed=0)
    x = g.input("input", (1, 480, 14, 14))
    g.conv(x, 60, (1, 3), name="narrow")
    report = lint_model(g.build("narrow"), tmp_path / "narrow.onnx")
    assert [f.code for f in report.findings] == []
    reasons = [s.reason for s in report.skips if s.code == "CL001" and s.node == "narrow"]
    assert reasons == [
        "the bottleneck (1×1 480->120, 1×3, 1×1 ->60) would save -25% of its MACs, below 10%: "
        "the conv already narrows its width"
    ]


def test_cl001_widening_vgg_conv_estimate_follows_resnet_bottleneck(tmp_path: Path) -> None:
    report = lint_model(fixtures.vgg_stack(), tmp_path / "vgg.onnx")
    finding = next(f for f in report.findings if f.node == "features.conv1")
    assert finding.estimate is not None
    # 128->256 3×3: bottleneck width 256/4 = 64, 128·64 + 64·64·9 + 64·256 per pixel.
    assert finding.estimate.macs_per_output_pixel == 128 * 256 * 9 == 294_912
    assert finding.estimate.macs_per_output_pixel_after == 128 * 64 + 64 * 64 * 9 + 64 * 256
    assert round(294_912 / 61_440, 1) == 4.8


def test_cl001_message_names_the_input_and_where_the_walk_stopped(tmp_path: Path) -> None:
    report = lint_model(fixtures.vgg_stack(), tmp_path / "vgg.onnx")
    messages = {f.node: f.message for f in report.findings}
    assert messages["features.conv2"].endswith(
        "(its input is ReLU 'features.relu1'; the walk back stopped at widening conv "
        "'features.conv1', 3×3 128->256)"
    )
    assert messages["features.conv1"].endswith("(its input is graph input 'input')")


def test_cl002_reports_one_finding_per_concat(tmp_path: Path) -> None:
    g = GraphBuilder(seed=0)
    x = g.input("input", (1, 192, 14, 14))
    conv = g.relu(g.conv(x, 64, 3, name="branch.conv"), name="branch.relu")
    max_pool = g.maxpool(x, 3, 1, 1, name="branch.maxpool")
    avg_pool = g.avgpool(x, 3, 1, 1, name="branch.avgpool")
    g.concat([conv, max_pool, avg_pool], name="concat")
    report = lint_model(g.build("two_pools"), tmp_path / "two_pools.onnx")
    assert [(f.code, f.node) for f in report.findings if f.code == "CL002"] == [
        ("CL002", "branch.maxpool")
    ]
    assert any(
        s.node == "branch.avgpool" and "one finding per concat" in s.reason for s in report.skips
    )


def test_cl002_needs_a_saving_where_the_concat_feeds_convs(tmp_path: Path) -> None:
    # A pooled branch of 64 channels next to a 256-channel conv branch, read by a 1×1 conv to
    # 8 channels: projecting the pool to 64/6 = 10 channels saves 54·8 = 432 MACs a pixel and
    # costs 64·10 = 640: no finding.
    g = GraphBuilder(seed=0)
    x = g.input("input", (1, 64, 14, 14))
    wide = g.relu(g.conv(x, 192, 1, name="branch.conv"), name="branch.relu")
    pool = g.maxpool(x, 3, 1, 1, name="branch.pool")
    y = g.concat([wide, pool], name="concat")
    g.conv(y, 8, 1, name="fuse")
    report = lint_model(g.build("cheap_pool"), tmp_path / "cheap_pool.onnx")
    assert [f.code for f in report.findings if f.code == "CL002"] == []
    assert any(s.node == "branch.pool" and "below 10%" in s.reason for s in report.skips)


def _drop_relus(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove every Relu, as onnxruntime's QDQ quantizer does after a quantized conv (the
    uint8 output with zero point 0 clamps at zero instead)."""
    rename = {}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Relu":
            rename[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        node.input[:] = [rename.get(t, t) for t in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.value_info[:]
    return model


def test_qdq_relu_fused_into_quantize_linear_is_an_activation(tmp_path: Path) -> None:
    good = dialects.to_qdq(fixtures.linear_conv_chain_good(), quantize_outputs=True)
    fused = _drop_relus(good)
    assert not any(n.op_type == "Relu" for n in fused.graph.node)
    report = lint_model(fused, tmp_path / "fused.onnx")
    assert [f.code for f in report.findings] == []
    # The same chain without the ReLU quantizes with a zero point inside the range: linear.
    bad = dialects.to_qdq(fixtures.linear_conv_chain_bad(), quantize_outputs=True)
    report = lint_model(bad, tmp_path / "bad.onnx")
    assert [(f.code, f.node) for f in report.findings] == [("CL003", "expand")]
    assert report.findings[0].fix is not None
    assert report.findings[0].fix.applicability.value == "display-only"
