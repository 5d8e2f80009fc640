"""Every rule is complete (issue 17, part 5): it has a bad and a good fixture twin, and every
rule `convlint fix` can rewrite has its rewrite exercised end to end (fix writes and verifies a
rewrite of that rule's finding, and onnxruntime agrees with the original here too)."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from fix_helpers import max_abs_diff, random_inputs
from test_fix_rewrites import pool_model

from convlint import fixtures
from convlint.engine import Settings, analyze
from convlint.errors import ConvlintError
from convlint.findings import Applicability, Finding
from convlint.fixtures import dialects
from convlint.graph import ModelGraph
from convlint.registry import Registry, Rule, load_registry
from convlint.rewrite.edit import Weights
from convlint.rewrite.pipeline import FixOptions, fix
from convlint.rewrite.plan import PLANNERS, NotRewritable, plan, planner_for
from convlint.rules.linear_conv_chain import ConvChain
from convlint.rules.pool_branch_inflates_concat import NoProjection

RULES = list(load_registry())

# The smallest model whose finding of each fixable rule `fix` rewrites (weights planted at a low
# rank where the rewrite is a factorization, so that seeded noise verifies it).
REWRITTEN: dict[str, Callable[[], onnx.ModelProto]] = {
    "CL001": lambda: fixtures.conv3x3(planted_rank=48, hw=6),
    "CL002": lambda: pool_model(nonlinear=False, rank=3),
    "CL003": fixtures.linear_conv_chain_bad,
    "CL005": lambda: fixtures.spatial_expansion_bad(planted_rank=8),
}


# Too large to check in a test's time, and they hold no pattern the smaller fixtures lack.
HEAVY = {"resnet50", "vgg16", "big_chain"}
# Every fixture, each rule's bad twin as TensorFlow, Caffe and QDQ exports write it, and a
# pooling branch whose concat a ReLU reads (CL002's unsafe projection).
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "pool_branch_relu": lambda: pool_model(nonlinear=True),
    **{name: fixtures.BUILDERS[name] for name in sorted(set(fixtures.BUILDERS) - HEAVY)},
    **{
        f"{bad}:{dialect}": lambda bad=bad, dialect=dialect: getattr(dialects, f"to_{dialect}")(
            fixtures.BUILDERS[bad]()
        )
        for bad, _ in fixtures.RULE_TWINS.values()
        for dialect in ("tensorflow", "caffe", "qdq")
    },
}


def _codes(path: Path) -> set[str]:
    report = analyze(path, load_registry(), Settings())
    assert report.error is None, report.error
    return {finding.code for finding in report.findings}


def test_every_rule_has_twins_and_every_fixable_rule_a_rewrite() -> None:
    codes = {rule.code for rule in RULES}
    assert set(fixtures.RULE_TWINS) == codes
    assert all(name in fixtures.BUILDERS for pair in fixtures.RULE_TWINS.values() for name in pair)
    # What `fix` can plan is each rule's declared rewrite: the rules that declare a fix declare
    # one and `fix` finds its planner through it; the others have none.
    assert set(REWRITTEN) == {rule.code for rule in RULES if rule.fix != "never"}
    assert set(REWRITTEN) == {rule.code for rule in RULES if rule.rewrite is not None}
    assert set(REWRITTEN) == {rule.code for rule in RULES if planner_for(rule) is not None}
    # every built-in planner is found through some rule's binding type (CL001 and CL005 share
    # the conv they bind)
    assert set(PLANNERS) == {rule.rewrite for rule in RULES if rule.rewrite is not None}
    assert len(codes) == 5 and len(REWRITTEN) == 4 and len(PLANNERS) == 3  # CL004: display-only


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.code)
def test_the_bad_twin_is_flagged_and_the_good_one_is_not(rule: Rule, tmp_path: Path) -> None:
    bad, good = fixtures.RULE_TWINS[rule.code]
    assert rule.code in _codes(fixtures.save(fixtures.BUILDERS[bad](), tmp_path / "bad.onnx"))
    assert rule.code not in _codes(fixtures.save(fixtures.BUILDERS[good](), tmp_path / "good.onnx"))


@pytest.mark.parametrize("code", sorted(REWRITTEN))
def test_the_rewrite_runs_end_to_end(code: str, tmp_path: Path) -> None:
    model = REWRITTEN[code]()
    path = fixtures.save(model, tmp_path / "model.onnx")
    assert code in _codes(path)
    out = tmp_path / "out.onnx"
    options = FixOptions(out, method="weight", samples=2, latency=False, allow_noise=True)
    result = fix(path, load_registry(), Settings(select=[code]), options)
    assert result.written and result.verification is not None and result.verification.ok
    assert [rewrite.code for rewrite in result.rewrites] == [code], result.skipped
    assert result.rewrites[0].macs_after < result.rewrites[0].macs_before  # type: ignore[operator]
    assert code not in _codes(out)
    assert max_abs_diff(path, out, random_inputs(model, seed=3)) < 1e-3


def test_roles_are_a_closed_set() -> None:
    """`view.nodes("convs")` used to find nothing, silently: a role is one of `Role`'s."""
    from typing import get_args

    from convlint.graph import build_graph
    from convlint.view import ROLES, Role, View

    view = View(build_graph(fixtures.inception_3a_naive()))
    assert frozenset(get_args(Role)) == ROLES and len(ROLES) == 16
    assert [node.name for node in view.nodes("conv")][:2] == [
        "inception_3a/1x1",
        "inception_3a/3x3",
    ]
    assert len(view.nodes("conv")) == 3 and len(view.nodes("pool")) == 1
    with pytest.raises(ValueError, match="no role 'convs' \\(roles: activation, affine, "):
        view.nodes("convs")  # type: ignore[arg-type]
    assert {view.role(node) for node in view.graph} <= ROLES


@pytest.mark.parametrize(
    "rule", [rule for rule in RULES if rule.fix == "never"], ids=lambda rule: rule.code
)
def test_a_display_only_rule_is_never_rewritten(rule: Rule, tmp_path: Path) -> None:
    bad, _ = fixtures.RULE_TWINS[rule.code]
    path = fixtures.save(fixtures.BUILDERS[bad](), tmp_path / "bad.onnx")
    options = FixOptions(tmp_path / "out.onnx", samples=2, latency=False, allow_noise=True)
    result = fix(path, load_registry(), Settings(select=[rule.code]), options)
    assert result.report.findings and {f.code for f in result.report.findings} == {rule.code}
    assert all(
        f.fix is None or f.fix.applicability.value == "display-only" for f in result.report.findings
    )
    assert result.rewrites == [] and result.written


@pytest.mark.parametrize("name", sorted(MODELS))
def test_what_check_calls_fixable_fix_plans(name: str, tmp_path: Path) -> None:
    """Fix availability is decided once (issue 17, part 1): across the fixtures, a finding whose
    fix `check` marks safe, approximate or unsafe is one `fix` plans a rewrite for (never "has
    no rewrite", never a reason of its own), unsafe exactly where the plan is; a display-only
    one is one it refuses. The plan reads the graph `check`'s rules read."""
    model = MODELS[name]()
    path = fixtures.save(model, tmp_path / "model.onnx")
    kept: list[object] = []
    report = analyze(path, load_registry(plugins=False), Settings(), keep=kept, bindings=True)
    assert report.error is None, report.error
    graph = next(item for item in kept if isinstance(item, ModelGraph))
    weights = Weights(onnx.load(path))
    static = all(
        d.HasField("dim_value") for v in model.graph.input for d in v.type.tensor_type.shape.dim
    )
    for finding in report.findings:
        assert finding.fix is not None, (finding.code, finding.node)
        applicability = finding.fix.applicability
        rule = load_registry(plugins=False).get(finding.code)
        assert rule is not None
        # the rule bound what it matched, of the type it declares (CL002: or why it has none)
        if isinstance(rule.rewrite, type):
            assert isinstance(finding.binding, (rule.rewrite, NoProjection)), finding.node
        try:
            target = plan(finding, graph, weights, static, rule)
        except NotRewritable as why:
            assert applicability is Applicability.DISPLAY_ONLY, (finding.code, finding.node, why)
            assert "has no rewrite" not in str(why) and "carries no" not in str(why)
        else:
            assert applicability is not Applicability.DISPLAY_ONLY, (finding.code, finding.node)
            assert target.unsafe is (applicability is Applicability.UNSAFE), finding.node
            assert target.code == finding.code and target.node == finding.node


def test_the_fixtures_reach_every_applicability_a_rule_declares(tmp_path: Path) -> None:
    """The test above means something for every promise: each (rule, applicability) a rule
    declares (``Rule.fixes``) is on some fixture's finding, so it was held to the plan."""
    seen: set[tuple[str, Applicability]] = set()
    for name, build in MODELS.items():
        path = fixtures.save(build(), tmp_path / f"{name.replace(':', '.')}.onnx")
        report = analyze(path, load_registry(plugins=False), Settings())
        seen |= {(f.code, f.fix.applicability) for f in report.findings if f.fix is not None}
    declared = {(rule.code, applicability) for rule in RULES for applicability in rule.fixes}
    assert declared <= seen, declared - seen
    assert len(declared) == 6


def test_the_pipeline_asks_targets_not_their_kind() -> None:
    """One `Target` protocol for every rewrite (issue 17, part 1): no step of `fix` tests
    which kind of target it holds, so a new rewrite kind is a new target class, not new
    branches in the pipeline."""
    import ast

    from convlint.rewrite import edit, pipeline, prepare, search, settle, state, write

    kinds = {name for name, value in vars(edit).items() if name.endswith("Target")}
    assert {"FactorTarget", "PoolTarget", "FoldTarget", "Target"} <= kinds
    for step in (pipeline, prepare, search, settle, state, write):
        assert step.__file__ is not None
        tree = ast.parse(Path(step.__file__).read_text(encoding="utf-8"))
        named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert named & kinds <= {"Target"}, step.__name__


def _chain(tmp_path: Path) -> tuple[list[Finding], ModelGraph, Weights]:
    path = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    kept: list[object] = []
    report = analyze(path, load_registry(plugins=False), Settings(), keep=kept, bindings=True)
    graph = next(item for item in kept if isinstance(item, ModelGraph))
    return report.findings, graph, Weights(onnx.load(path))


def test_fix_plans_with_the_rule_that_declares_the_rewrite_not_by_its_code(
    tmp_path: Path,
) -> None:
    """Fix availability is the rule's declared rewrite (issue 17, part 1), not a table by code:
    CL003's rule under another code still plans its finding; without its rewrite it plans
    nothing, saying what the finding's fix says."""
    (finding,), graph, weights = _chain(tmp_path)
    assert isinstance(finding.binding, ConvChain)
    chain = finding.binding
    assert [n.name for n in (chain.first, *chain.between, chain.second)] == [
        "expand",
        "expand_bn",
        "conv",
    ]
    rule = load_registry(plugins=False).get("CL003")
    assert rule is not None and rule.rewrite is ConvChain
    renamed = Rule(**{**rule.__dict__, "code": "XF1", "name": "a-renamed-chain"})
    target = plan(dataclasses.replace(finding, code="XF1"), graph, weights, True, renamed)
    assert (target.code, target.kind, sorted(target.replaced_nodes())) == (
        "XF1",
        "fold",
        ["conv", "expand", "expand_bn"],
    )
    bare = Rule(**{**rule.__dict__, "fix": "never", "fixes": (), "rewrite": None})
    with pytest.raises(NotRewritable, match="^safe: fold 'expand' into 'conv' \\(exact\\)$"):
        plan(finding, graph, weights, True, bare)


def test_a_fix_is_declared_with_its_rewrite() -> None:
    rule = load_registry(plugins=False).get("CL003")
    assert rule is not None
    with pytest.raises(ConvlintError, match="CL003 fix is sometimes, but it has no rewrite"):
        Registry([Rule(**{**rule.__dict__, "rewrite": None})])
    with pytest.raises(ConvlintError, match="CL003 fix is never, but it declares a rewrite"):
        Registry([Rule(**{**rule.__dict__, "fix": "never", "fixes": ()})])
    with pytest.raises(ConvlintError, match="CL003 rewrite is not callable"):
        Registry([Rule(**{**rule.__dict__, "rewrite": "convlint.rewrite.plan:fold"})])


def test_bindings_stay_out_of_reports_and_of_what_workers_send(tmp_path: Path) -> None:
    """A binding holds the graph's nodes: `check` keeps none (a report it holds must not keep
    the graph alive), a pickled finding (a worker's answer) drops it, byte for byte what it was
    without one, and no report shows it."""
    (bound,), _, _ = _chain(tmp_path)
    path = tmp_path / "chain.onnx"
    (plain,) = analyze(path, load_registry(plugins=False), Settings()).findings
    assert plain.binding is None and isinstance(bound.binding, ConvChain)
    assert plain == bound and plain.as_dict() == bound.as_dict() and repr(plain) == repr(bound)
    assert pickle.dumps(bound) == pickle.dumps(plain)
    assert pickle.loads(pickle.dumps(bound)).binding is None
