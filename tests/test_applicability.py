"""Honest promises in `check` (issue 16, item 6): each finding's fix says what `convlint fix`
really does with it (safe: a fold, always; approximate: a factorization or projection, only
with real calibration data; unsafe: changes the function, only with --unsafe-fixes;
display-only: never), the text marks and counts them, and every format and schema agrees."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from fix_helpers import checked
from test_schema import validate

from convlint import fixtures
from convlint.engine import Settings, analyze
from convlint.findings import Applicability, Finding
from convlint.fixtures import GraphBuilder, dialects
from convlint.registry import Registry, Rule, load_registry
from convlint.reporters import SCHEMA_VERSION
from convlint.rewrite.edit import PoolTarget, Weights
from convlint.rewrite.plan import NotRewritable, plan

CLI = Callable[..., tuple[int, str, str]]
APPROXIMATE_TAIL = "applied by `convlint fix` only with real calibration data (--inputs)"


def pool_branch(consumer: str) -> onnx.ModelProto:
    """x -> 1×1/4 and x -> maxpool (12 channels) -> concat, read by two convs directly
    (``consumer="conv"``), through a ReLU (``"relu"``), or by a conv and a max-pool, as the
    next Inception module reads it (``"pool"``)."""
    g = GraphBuilder(seed=2)
    x = g.input("input", (1, 12, 9, 9))
    a = g.conv(x, 4, 1, name="branch")
    p = g.maxpool(x, 3, 1, 1, name="pool")
    c = g.concat([a, p], name="concat")
    if consumer == "relu":
        c = g.relu(c, name="concat_relu")
    y1 = g.conv(c, 6, 3, name="head3x3")
    y2 = g.maxpool(c, 3, 1, 1, name="next_pool") if consumer == "pool" else g.conv(c, 5, 1)
    return g.build("pool", [y1, y2])


def findings(model: onnx.ModelProto, tmp_path: Path, name: str) -> list[Finding]:
    path = fixtures.save(model, tmp_path / f"{name}.onnx")
    report = analyze(path, load_registry(plugins=False), Settings())
    assert report.error is None
    return report.findings


def applicabilities(found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.code, f.fix.applicability.value if f.fix else "none") for f in found]


def test_applicability_has_four_values_in_the_contracts_order() -> None:
    assert [a.value for a in Applicability] == ["safe", "approximate", "unsafe", "display-only"]
    assert Applicability.APPROXIMATE.applied == APPROXIMATE_TAIL
    assert Applicability.UNSAFE.applied == "applied by `convlint fix` only with --unsafe-fixes"


def test_naive_inception_3a_offers_two_approximate_fixes_and_one_display_only(
    tmp_path: Path,
) -> None:
    found = findings(fixtures.inception_3a_naive(), tmp_path, "naive")
    assert applicabilities(found) == [
        ("CL001", "approximate"),
        ("CL001", "approximate"),
        ("CL002", "display-only"),  # the concat is the graph's output
    ]
    assert all(f.fix and f.fix.description.endswith(APPROXIMATE_TAIL) for f in found[:2])
    pool = found[2].fix
    assert pool is not None and "graph output" in pool.description


def test_a_fold_is_safe(tmp_path: Path) -> None:
    (finding,) = findings(fixtures.linear_conv_chain_bad(), tmp_path, "chain")
    assert finding.fix is not None and finding.fix.applicability is Applicability.SAFE
    assert finding.fix.description == "fold 'expand' into 'conv' (exact); applied by `convlint fix`"


@pytest.mark.parametrize(
    ("consumer", "expected"),
    [("conv", "approximate"), ("relu", "unsafe"), ("pool", "display-only")],
)
def test_pool_projection_promise_is_what_the_rewrite_plans(
    consumer: str, expected: str, tmp_path: Path
) -> None:
    """The rule's applicability and the rewrite's plan read the concat's consumers alike."""
    model = pool_branch(consumer)
    ((finding,), graph) = checked(fixtures.save(model, tmp_path / f"{consumer}.onnx"))
    assert applicabilities([finding]) == [("CL002", expected)]
    try:
        target = plan(finding, graph, Weights(model), static_spatial=True)
    except NotRewritable as why:
        assert expected == "display-only", why
    else:
        assert isinstance(target, PoolTarget)
        assert target.unsafe is (expected == "unsafe")


@pytest.mark.parametrize("dialect", ["tensorflow", "caffe", "qdq"])
@pytest.mark.parametrize("consumer", ["conv", "relu", "pool", "transposes"])
def test_check_and_fix_decide_a_projection_once(
    consumer: str, dialect: str, tmp_path: Path
) -> None:
    """Issue 17: whether a pooling branch can be projected is decided once, through the view
    (``match_projection``): the check's applicability is display-only exactly where the plan
    refuses, with the plan's reason, and unsafe exactly where the plan says unsafe, however the
    exporter wrote the branch (NHWC Transposes around every conv and pool, Caffe's BN, QDQ)."""
    base = (
        fixtures.pool_branch_through_transposes()
        if consumer == "transposes"
        else pool_branch(consumer)
    )
    model = getattr(dialects, f"to_{dialect}")(base)
    found, graph = checked(fixtures.save(model, tmp_path / f"{consumer}.onnx"))
    (finding,) = [f for f in found if f.code == "CL002"]
    assert finding.fix is not None
    try:
        target = plan(finding, graph, Weights(model), static_spatial=True)
    except NotRewritable as why:
        assert finding.fix.applicability is Applicability.DISPLAY_ONLY, why
        reason = str(why)
    else:
        assert isinstance(target, PoolTarget)
        assert finding.fix.applicability is (
            Applicability.UNSAFE if target.unsafe else Applicability.APPROXIMATE
        )
        reason = ""
    # The tensorflow export concatenates channels-last, its convs reading the concat through
    # Transposes: projected before the branch's Transpose, folded through the consumers'.
    expected = {
        "tensorflow": "next_pool" if consumer == "pool" else "",
        "qdq": "(QuantizeLinear) is not a conv reading it",
        "caffe": "next_pool" if consumer == "pool" else "",
    }[dialect]
    assert (expected in reason) if expected else reason == ""


def test_unsafe_projection_says_it_changes_the_function(tmp_path: Path) -> None:
    (finding,) = findings(pool_branch("relu"), tmp_path, "relu")
    assert finding.fix is not None
    assert "changes the function" in finding.fix.description
    assert finding.fix.description.endswith("only with --unsafe-fixes")


def test_quantized_convs_are_display_only(tmp_path: Path) -> None:
    model = dialects.to_qdq(fixtures.conv3x3())
    assert applicabilities(findings(model, tmp_path, "qdq")) == [("CL001", "display-only")]


def test_weights_fed_as_a_graph_input_are_display_only(tmp_path: Path) -> None:
    """fix rewrites stored weights; a weight the caller feeds at run time is not one."""
    model = fixtures.conv3x3()
    graph = model.graph
    (weight,) = [init for init in graph.initializer if len(init.dims) == 4]
    graph.initializer.remove(weight)
    graph.input.append(
        onnx.helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims))
    )
    (finding,) = findings(model, tmp_path, "fed")
    assert finding.code == "CL001"
    assert finding.fix is not None
    assert finding.fix.applicability is Applicability.DISPLAY_ONLY
    assert "graph input" in finding.fix.description


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One model of each applicability: a fold, a factorization, a projection through a ReLU,
    a dense head."""
    monkeypatch.chdir(tmp_path)
    fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "a_chain.onnx")
    fixtures.save(fixtures.conv3x3(), tmp_path / "b_conv.onnx")
    fixtures.save(pool_branch("relu"), tmp_path / "c_pool.onnx")
    fixtures.save(fixtures.dense_head_bad(), tmp_path / "d_head.onnx")
    return tmp_path


def test_text_marks_safe_and_approximate_and_counts_each_kind(mixed: Path, cli: CLI) -> None:
    _, out, _ = cli("check", ".", "--select", "ALL")
    lines = out.splitlines()
    heads = [line.split(" warning:")[0].split(" info:")[0] for line in lines if ": CL00" in line]
    assert heads == [
        "a_chain.onnx:expand: CL003 [*]",
        "b_conv.onnx:conv: CL001 [~]",
        "c_pool.onnx:pool: CL002",
        "d_head.onnx:fc6: CL004",
    ]
    fix_lines = [line.split(":")[0].strip() for line in lines if line.startswith("    fix (")]
    assert fix_lines == ["fix (approximate)", "fix (unsafe)", "fix (display-only)"]
    assert lines[-1] == (
        "Found 4 findings in 4 models ([*] 1 fixable with `convlint fix`; [~] 1 approximately "
        "fixable with `convlint fix --inputs DATA`; 1 unsafe fix with `convlint fix "
        "--unsafe-fixes`)."
    )


def test_json_counts_every_applicability_and_validates(mixed: Path, cli: CLI) -> None:
    _, out, _ = cli("check", ".", "--select", "ALL", "--format", "json")
    document = json.loads(out)
    validate("check", document)
    assert document["schema_version"] == SCHEMA_VERSION == 2
    assert document["summary"]["fixes"] == {
        "safe": 1,
        "approximate": 1,
        "unsafe": 1,
        "display-only": 1,
    }
    kinds = [f["fix"]["applicability"] for m in document["models"] for f in m["findings"]]
    assert kinds == ["safe", "approximate", "unsafe", "display-only"]


def test_a_schema_1_applicability_is_refused_where_2_is_accepted(mixed: Path, cli: CLI) -> None:
    _, out, _ = cli("check", "b_conv.onnx", "--format", "json")
    document: dict[str, Any] = json.loads(out)
    validate("check", document)
    document["models"][0]["findings"][0]["fix"]["applicability"] = "probably-safe"
    with pytest.raises(AssertionError, match="applicability"):
        validate("check", document)
    del document["summary"]["fixes"]
    document["models"][0]["findings"][0]["fix"]["applicability"] = "approximate"
    with pytest.raises(AssertionError, match="fixes"):
        validate("check", document)


def test_every_format_carries_the_applicability(mixed: Path, cli: CLI) -> None:
    argv = ("check", ".", "--select", "ALL", "--format")
    _, sarif, _ = cli(*argv, "sarif")
    run = json.loads(sarif)["runs"][0]
    fixes = [r["properties"]["fix"]["applicability"] for r in run["results"]]
    assert fixes == ["safe", "approximate", "unsafe", "display-only"]
    offered = {r["id"]: r["properties"]["fixApplicability"] for r in run["tool"]["driver"]["rules"]}
    assert offered == {
        "CL001": ["approximate"],
        "CL002": ["approximate", "unsafe"],
        "CL003": ["safe", "unsafe"],
        "CL004": [],
        "CL005": ["approximate"],
    }
    _, markdown, _ = cli(*argv, "markdown")
    cells = [line.rsplit("|", 2)[1].strip() for line in markdown.splitlines() if "| CL00" in line]
    assert cells == [
        "safe: `convlint fix`",
        "approximate: `convlint fix --inputs DATA`",
        "unsafe: `convlint fix --unsafe-fixes`",
        "display-only",
    ]
    _, github, _ = cli(*argv, "github")
    assert [line.split("%0Afix (")[-1].split(")")[0] for line in github.splitlines()] == [
        "safe",
        "approximate",
        "unsafe",
        "display-only",
    ]
    _, gitlab, _ = cli(*argv, "gitlab")
    descriptions = [issue["description"] for issue in json.loads(gitlab)]
    assert [d.split("; fix (")[1].split(")")[0] for d in descriptions] == [
        "safe",
        "approximate",
        "unsafe",
        "display-only",
    ]
    assert descriptions[1].endswith(APPROXIMATE_TAIL)
    _, junit, _ = cli(*argv, "junit")
    failures = [f.text or "" for f in ET.fromstring(junit).iter("failure")]
    assert [text.splitlines()[-1].split(")")[0] for text in failures] == [
        "fix (safe",
        "fix (approximate",
        "fix (unsafe",
        "fix (display-only",
    ]


def test_rules_show_the_fixes_they_offer(cli: CLI) -> None:
    _, out, _ = cli("rules")
    rows = {line[:5]: line for line in out.splitlines()[2:]}
    assert sorted(rows) == ["CL001", "CL002", "CL003", "CL004", "CL005"]
    assert "sometimes (approximate) " in rows["CL001"]
    assert "sometimes (approximate, unsafe) " in rows["CL002"]
    assert "sometimes (safe, unsafe) " in rows["CL003"]
    assert "never (display-only) " in rows["CL004"]
    _, out, _ = cli("rule", "CL005")
    assert "Fix: sometimes (approximate).\nA fix that is approximate is " + APPROXIMATE_TAIL in out


@pytest.mark.parametrize("rule", list(load_registry(plugins=False)), ids=lambda r: r.code)
def test_fix_safety_section_states_the_applicability(rule: Rule) -> None:
    section = rule.doc.split("## Fix safety", 1)[1].split("## References", 1)[0]
    for applicability in rule.fixes:
        assert applicability.value.capitalize() in section or applicability.value in section
    if Applicability.APPROXIMATE in rule.fixes:
        assert "`--inputs`" in section
    if not rule.fixes:
        assert "Display-only" in section


def test_findings_offer_only_the_fixes_their_rule_declares(tmp_path: Path) -> None:
    registry = load_registry(plugins=False)
    models = {
        name: fixtures.BUILDERS[name]()
        for name in (
            "inception_3a_naive",
            "vgg_stack",
            "linear_conv_chain_bad",
            "dense_head_bad",
            "spatial_expansion_bad",
            "craft_fc_conv",
            "crnn_lstm",
            "yolo_seg_proto",  # CL003's unsafe fold: a ConvTranspose's bias at the borders
        )
    }
    models["pool_conv"], models["pool_relu"] = pool_branch("conv"), pool_branch("relu")
    seen: dict[str, set[Applicability]] = {}
    for name, model in models.items():
        for finding in findings(model, tmp_path, name):
            assert finding.fix is not None
            seen.setdefault(finding.code, set()).add(finding.fix.applicability)
    for code, kinds in seen.items():
        rule = registry.get(code)
        assert rule is not None
        assert kinds - {Applicability.DISPLAY_ONLY} == set(rule.fixes), code
    assert set(seen) == {"CL001", "CL002", "CL003", "CL004", "CL005"}


def test_registry_refuses_malformed_fixes() -> None:
    rule = next(iter(load_registry(plugins=False)))
    for fixes, message in (
        ((Applicability.DISPLAY_ONLY,), "other than display-only"),
        (("approximate",), "Applicability values"),
    ):
        with pytest.raises(Exception, match=message):
            Registry([Rule(**{**rule.__dict__, "fixes": fixes})])
    with pytest.raises(Exception, match="fix is never"):
        Registry([Rule(**{**rule.__dict__, "fix": "never"})])
