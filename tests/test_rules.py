"""Every rule on its bad and good twins, the precision set of well-designed networks, and the
literature's estimates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from convlint.engine import ModelReport, Settings

# (fixture, builder kwargs) -> the exact set of (code, node) findings.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    # bad twins
    "inception_3a_naive": {
        ("CL001", "inception_3a/3x3"),
        ("CL001", "inception_3a/5x5"),
        ("CL002", "inception_3a/pool"),
    },
    "inception_3a_reduced": {("CL002", "inception_3a/pool")},
    "resnet_basic_block": {("CL001", "layer2.1.conv1"), ("CL001", "layer2.1.conv2")},
    "conv3x3": {("CL001", "conv")},
    "linear_conv_chain_bad": {("CL003", "expand")},
    "dense_head_bad": {("CL004", "fc6")},
    "spatial_expansion_bad": {("CL005", "conv2")},
    "inception_v3_grid_reduction": {("CL001", "Mixed_6a.branch3x3.conv")},
    "vgg_stack": {
        ("CL001", "features.conv1"),
        ("CL001", "features.conv2"),
        ("CL001", "features.conv3"),
        ("CL004", "classifier"),
    },
    # 1-D convs: both sides of CL001's 1-D policy (severities in test_cl001_one_d_policy)
    "tcn_block_1d": {("CL001", "tcn.0.conv1"), ("CL001", "tcn.0.conv2")},
    "tcn_block_1d_k7": {("CL001", "tcn.0.conv1"), ("CL001", "tcn.0.conv2")},
    # good twins and well-designed networks: silence
    "inception_3a": set(),
    "resnet_bottleneck": set(),
    "linear_conv_chain_good": set(),
    "dense_head_good": set(),
    "spatial_expansion_good": set(),
    "stem_only": set(),
    "densenet_block": set(),
    "mobilenetv2_blocks": set(),
    "mobilenetv2_tail": set(),
    "mobilenetv3_small_head_blocks": set(),
    "squeezenet_fire": set(),
    "shufflenet_unit": set(),
    "convnext_block": set(),
    "convnext_downsample": set(),
    "convnext_head": set(),
    "convnext_head_reduce_mean": set(),
    "regnet_block": set(),
}

BIG: dict[str, set[tuple[str, str]]] = {
    "resnet50": set(),
    "vgg16": {
        *(
            ("CL001", f"features.{i}")
            for i in (7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # every 3×3 conv reading >= 128
        ),
        ("CL004", "classifier.0"),
    },
}


def found(report: ModelReport) -> set[tuple[str, str]]:
    assert report.error is None, report.error
    return {(f.code, f.node) for f in report.findings}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_findings(name: str, lint: Callable[..., ModelReport]) -> None:
    assert found(lint(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(BIG))
def test_exact_findings_on_full_networks(name: str, lint: Callable[..., ModelReport]) -> None:
    assert found(lint(name, weights="external")) == BIG[name]


def estimate(report: ModelReport, code: str) -> dict[str, Any]:
    finding = next(f for f in report.findings if f.code == code)
    assert finding.estimate is not None
    return finding.estimate.as_dict()


def test_cl001_seed_example_bottleneck_estimate(lint: Callable[..., ModelReport]) -> None:
    est = estimate(lint("conv3x3"), "CL001")
    assert est["macs_per_output_pixel"] == 589_824
    assert est["macs_per_output_pixel_after"] == 69_632
    assert est["macs_before"] == 589_824 * 14 * 14
    assert est["macs_after"] == 69_632 * 14 * 14
    assert (est["params_before"], est["params_after"]) == (589_824, 69_632)


def test_cl001_symbolic_dims_give_per_pixel_estimate(
    tmp_path: Any, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    from graph_helpers import save_graph, zeros
    from onnx import helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    inputs = {"x": ["N", 256, "H", "W"]}
    path = save_graph(
        tmp_path / "symbolic.onnx", [node], inputs, "y", [zeros("w", (256, 256, 3, 3))]
    )
    code, report = cli_json("check", str(path))
    assert code == 1
    model = report["models"][0]
    assert model["cost"]["macs"] is None
    assert model["cost"]["macs_per_input_pixel"] == 589_824
    est = model["findings"][0]["estimate"]
    assert est["macs_before"] is None and est["macs_after"] is None
    assert est["macs_per_output_pixel"] == 589_824
    assert est["macs_per_output_pixel_after"] == 69_632


def test_cl002_naive_3a_projection_to_32(lint: Callable[..., ModelReport]) -> None:
    settings = Settings(rule_options={"CL002": {"projection-channels": 32}})
    est = estimate(lint("inception_3a_naive", settings), "CL002")
    assert (est["channels_before"], est["channels_after"]) == (416, 256)
    assert est["params_after"] == 192 * 32  # the projection; the concat has no conv consumer


def test_cl002_projection_ratio_option(lint: Callable[..., ModelReport]) -> None:
    settings = Settings(rule_options={"CL002": {"projection-ratio": 4}})
    est = estimate(lint("inception_3a_naive", settings), "CL002")
    assert est["channels_after"] == 416 - 192 + 48


def test_cl003_fold_estimate(lint: Callable[..., ModelReport]) -> None:
    est = estimate(lint("linear_conv_chain_bad"), "CL003")
    assert est["macs_per_output_pixel"] == 64 * 256 + 256 * 64 * 9
    assert est["macs_per_output_pixel_after"] == 64 * 64 * 9


def test_cl004_vgg16_fc6(lint: Callable[..., ModelReport]) -> None:
    est = estimate(lint("vgg16", weights="external"), "CL004")
    assert est["params_before"] == 102_764_544
    assert est["params_after"] == 512 * 4096 + 4096


def test_cl005_estimate(lint: Callable[..., ModelReport]) -> None:
    est = estimate(lint("spatial_expansion_bad"), "CL005")
    assert est["macs_per_output_pixel"] == 64 * 256 * 9
    assert est["macs_per_output_pixel_after"] == 64 * 64 * 9 + 64 * 256


def test_min_channels_option_silences_cl001(lint: Callable[..., ModelReport]) -> None:
    settings = Settings(rule_options={"CL001": {"min-channels": 512}})
    assert found(lint("conv3x3", settings)) == set()


def test_select_ignore_prefixes(lint: Callable[..., ModelReport]) -> None:
    assert {c for c, _ in found(lint("inception_3a_naive", Settings(select=["CL002"])))} == {
        "CL002"
    }
    assert {c for c, _ in found(lint("inception_3a_naive", Settings(ignore=["CL00"])))} == set()
    more_specific = Settings(select=["CL001"], ignore=["CL"])
    assert {c for c, _ in found(lint("inception_3a_naive", more_specific))} == {"CL001"}


def test_per_node_ignores(lint: Callable[..., ModelReport]) -> None:
    settings = Settings(per_node_ignores={"inception_3a/*x*": ["CL001"]})
    assert found(lint("inception_3a_naive", settings)) == {("CL002", "inception_3a/pool")}


def test_verbose_says_why_not(
    model_file: Callable[..., Any], cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, _ = cli("check", str(model_file("resnet_bottleneck")), "--verbose")
    assert code == 0
    assert "CL001 passed over: reads 64 channels, below min-channels=128" in out
    code, out, _ = cli("check", str(model_file("mobilenetv2_blocks")), "--verbose")
    assert "grouped conv" in out
    code, out, _ = cli("check", str(model_file("mobilenetv2_tail")), "--verbose")
    assert "CL003 passed over: folding into 'features.18.conv' would cost more" in out
    code, out, _ = cli("check", str(model_file("inception_v3_grid_reduction")), "--verbose")
    assert "strided pool: a grid-size reduction branch" in out
    assert "input width set by 1×1 conv" in out


def test_cl002_symbolic_dims_give_null_macs_and_per_pixel_costs(
    tmp_path: Any, cli_json: Callable[..., tuple[int, Any]]
) -> None:
    from convlint import fixtures

    model = fixtures.inception_3a_naive()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    path = fixtures.save(model, tmp_path / "sym3a.onnx")
    code, report = cli_json("check", str(path), "--select", "CL002")
    est = report["models"][0]["findings"][0]["estimate"]
    assert (est["macs_before"], est["macs_after"]) == (None, None)
    assert (est["macs_per_output_pixel"], est["macs_per_output_pixel_after"]) == (0, 192 * 32)
    assert (est["channels_before"], est["channels_after"]) == (416, 256)


@pytest.mark.parametrize("node", ["expand", "expand_bn"])
def test_cl003_passes_over_a_chain_whose_middle_is_a_graph_output(tmp_path: Any, node: str) -> None:
    import onnx

    from convlint import fixtures
    from convlint.engine import analyze
    from convlint.registry import load_registry

    model = fixtures.BUILDERS["linear_conv_chain_bad"]()
    tensor = next(n.output[0] for n in model.graph.node if n.name == node)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    path = fixtures.save(model, tmp_path / "chain_out.onnx")
    report = analyze(path, load_registry(), Settings())
    assert found(report) == set()  # folding would drop the output
    assert any(s.code == "CL003" and "graph output" in s.reason for s in report.skips)


@pytest.mark.parametrize(
    ("name", "kernel", "severity", "factor"),
    [("tcn_block_1d", 3, "info", 4.4), ("tcn_block_1d_k7", 7, "warning", 7.5)],
)
def test_cl001_one_d_policy(
    name: str, kernel: int, severity: str, factor: float, lint: Callable[..., ModelReport]
) -> None:
    """1-D convs are warnings only where the bottleneck saves >= min-1d-saving (5×): at equal
    widths it saves 16k/(8+k), 4.4× at k=3 and 7.5× at k=7."""
    report = lint(name)
    for finding in report.findings:
        assert finding.severity.value == severity
        est = finding.estimate
        assert est is not None and est.macs_per_output_pixel == 128 * 128 * kernel
        mid = 32
        after = 128 * mid + mid * mid * kernel + mid * 128
        assert est.macs_per_output_pixel_after == after
        assert round(est.macs_per_output_pixel / after, 1) == factor
        assert est.macs_before == 128 * 128 * kernel * 250
    notes = [f.message for f in report.findings if "info, not a warning" in f.message]
    assert len(notes) == (2 if severity == "info" else 0)


def test_cl001_one_d_policy_threshold_is_an_option(lint: Callable[..., ModelReport]) -> None:
    lowered = Settings(rule_options={"CL001": {"min-1d-saving": 4.0}})
    assert {f.severity.value for f in lint("tcn_block_1d", lowered).findings} == {"warning"}
    raised = Settings(rule_options={"CL001": {"min-1d-saving": 8.0}})
    assert {f.severity.value for f in lint("tcn_block_1d_k7", raised).findings} == {"info"}
    # 2-D convs are not concerned: the 3×3 256->256 saves 8.5×, whatever the 1-D threshold.
    assert {f.severity.value for f in lint("conv3x3", raised).findings} == {"warning"}
