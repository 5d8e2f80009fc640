"""Rule corrections from the review of real exports: estimates that save nothing, one finding
per concat, messages that say where the walk stopped."""

from __future__ import annotations

from pathlib import Path

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.fixtures import GraphBuilder
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
