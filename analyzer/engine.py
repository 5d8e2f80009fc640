"""Stage 4: run the selected rules over a loaded model and collect a report per model."""

from __future__ import annotations

import fnmatch
import gc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from convlint import loader, shapes
from convlint.cost import NodeCost, model_cost, node_cost
from convlint.errors import ConvlintError, GraphError, ModelError
from convlint.findings import (
    Applicability,
    Estimate,
    Finding,
    Fix,
    ModelReport,  # the engine's product; callers may import it from here
    Severity,
    Skip,
)
from convlint.graph import SUBGRAPH_OPS, ModelGraph, Node, build_graph
from convlint.neighbourhood import neighbourhood
from convlint.registry import ALL, DEFAULT_SELECT, Registry, Rule
from convlint.sketch import Suggestion
from convlint.view import View

# Sizes bound to symbolic spatial dims to test whether a network's cost scales with its input
# (powers of two so that every stride up to 1024 divides them exactly).
PROBE_SIZES = (1024, 2048)


@dataclass
class Settings:
    """Resolved options for one run (command line over configuration over defaults)."""

    select: list[str] = field(default_factory=lambda: list(DEFAULT_SELECT))
    ignore: list[str] = field(default_factory=list)
    per_node_ignores: dict[str, list[str]] = field(default_factory=dict)
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verbose: bool = False
    # Input shapes from a configuration file (bound where the model has the input, else a
    # note) and the file and key they came from, for messages.
    configured_input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    configured_source: str = "configuration"


class RuleContext:
    """What a rule's ``check`` sees: the graph and its canonical view, the model, costs and
    its own options."""

    def __init__(
        self,
        rule: Rule,
        graph: ModelGraph,
        model: onnx.ModelProto,
        options: Mapping[str, Any],
        severity: Severity,
        view: View | None = None,
        record_skips: bool = True,
    ) -> None:
        self.rule = rule
        self.graph = graph
        # Built once per graph and shared by every rule (the engine passes it).
        self.view = view if view is not None else View(graph)
        self.model = model
        self.options = options
        self.severity = severity
        self.skips: list[Skip] = []
        self.record_skips = record_skips

    def cost(self, node: Node) -> NodeCost:
        return node_cost(self.graph, node)

    def skip(self, node: Node, reason: str) -> None:
        """Record why a candidate was passed over (onnxscript's MatchResult.fail), unless no
        report will show it (``record_skips``); a node whose name is not UTF-8 is recorded
        either way, as the model's error (see :func:`lint`) must not depend on ``--verbose``."""
        if self.record_skips or type(node.name) is not str:
            self.skips.append(Skip(self.rule.code, node.name, reason))

    def finding(
        self,
        node: Node,
        message: str,
        estimate: Estimate | None = None,
        fix: Fix | None = None,
        related: Sequence[str] = (),
        suggestion: Suggestion | None = None,
        severity: Severity | None = None,
        binding: object = None,
    ) -> Finding:
        """A finding at the rule's configured severity, or at ``severity`` where the rule's
        documented policy lowers it for this case (never above the configured one).
        ``binding``: what the check matched, typed, for the rule's rewrite (``Rule.rewrite``)."""
        if severity is None or severity.rank > self.severity.rank:
            severity = self.severity
        return Finding(
            code=self.rule.code,
            rule=self.rule.name,
            severity=severity,
            node=node.name,
            op_type=node.op_type,
            message=message,
            estimate=estimate,
            fix=fix,
            related=tuple(related),
            suggestion=suggestion,
            binding=binding,
        )


# `convlint fix` rewrites the main graph only: a finding inside an If/Loop/Scan body is shown,
# not offered as fixable.
SUBGRAPH_FIX = Fix(
    Applicability.DISPLAY_ONLY, "inside a subgraph: convlint fix rewrites the main graph only"
)


def _specificity(code: str, selectors: Sequence[str]) -> int:
    matches = [len(s) for s in selectors if s == ALL or code.startswith(s)]
    return max(matches, default=-1)


def enabled_rules(registry: Registry, settings: Settings) -> list[Rule]:
    """A rule runs when its most specific select beats its most specific ignore, as in ruff."""
    chosen = []
    for rule in registry:
        selected = _specificity(rule.code, settings.select)
        ignored = _specificity(rule.code, settings.ignore)
        if selected >= 0 and selected > ignored:
            chosen.append(rule)
    return chosen


def rule_options(rule: Rule, settings: Settings) -> tuple[dict[str, Any], Severity]:
    options = dict(rule.options)
    configured = dict(settings.rule_options.get(rule.code, {}))
    severity = Severity(configured.pop("severity", rule.severity.value))
    options.update(configured)
    return options, severity


# The key of a node's metadata_props entry that silences codes on it (ruff's noqa comment).
IGNORE_KEY = "convlint.ignore"


def model_ignores(node: Node) -> list[str]:
    """The codes (or prefixes, or ``ALL``) a node's ``convlint.ignore`` metadata names."""
    for entry in node.proto.metadata_props:
        if entry.key == IGNORE_KEY:
            return [part.strip().upper() for part in entry.value.split(",") if part.strip()]
    return []


def _node_ignored(node: str, code: str, per_node_ignores: Mapping[str, Sequence[str]]) -> bool:
    for pattern, codes in per_node_ignores.items():
        if fnmatch.fnmatchcase(node, pattern) and any(
            c == ALL or code.startswith(c) for c in codes
        ):
            return True
    return False


def graph_views(graph: ModelGraph) -> list[tuple[ModelGraph, View]]:
    """Each graph (the main one, then its subgraphs) with its canonical view, built once and
    shared by validation and every rule."""
    return [(sub, View(sub)) for sub in graph.all_graphs()]


def run_rules(
    graph: ModelGraph,
    model: onnx.ModelProto,
    rules: Sequence[Rule],
    settings: Settings,
    views: Sequence[tuple[ModelGraph, View]] | None = None,
    suppressed: list[Finding] | None = None,
    failures: list[RuleFailure] | None = None,
    bindings: bool = False,
    record_skips: bool = True,
) -> tuple[list[Finding], list[Skip]]:
    """The findings of ``rules`` and what they passed over; findings a node's
    ``convlint.ignore`` silences go to ``suppressed`` (and, as a reason, to the skips).
    Findings of the main graph keep their bindings where ``bindings`` (for `fix` to plan).
    Without ``record_skips``, the rules' own reasons for passing nodes over are not kept
    (a large graph's convs are each passed over by some rule: 50,000 reasons at 100,000
    nodes, that only ``--verbose`` shows).

    A rule that raises is left out (what it found before it raised too: its findings are not
    to be trusted) and goes to ``failures``; the other rules' findings are still returned
    (without ``failures`` to collect them, the first failure raises ``ConvlintError``).
    """
    findings: list[Finding] = []
    skips: list[Skip] = []
    if views is None:
        views = graph_views(graph)
    for rule in rules:
        options, severity = rule_options(rule, settings)
        found: list[Finding] = []
        passed: list[Skip] = []
        silenced: list[Finding] = []
        try:
            for sub, view in views:
                ctx = RuleContext(rule, sub, model, options, severity, view, record_skips)
                for finding in rule.check(ctx):
                    if _node_ignored(finding.node, finding.code, settings.per_node_ignores):
                        passed.append(Skip(rule.code, finding.node, "ignored by per-node-ignores"))
                    elif _silenced(sub, finding):
                        silenced.append(replace(finding, binding=None))
                        passed.append(Skip(rule.code, finding.node, SUPPRESSED_REASON))
                    else:
                        if sub is not graph and finding.fix is not None:
                            finding = replace(finding, fix=SUBGRAPH_FIX)
                        binding = finding.binding if bindings and sub is graph else None
                        context = neighbourhood(sub, finding)
                        found.append(replace(finding, context=context, binding=binding))
                passed.extend(ctx.skips)
        except GraphError:
            raise  # the model is invalid, not the rule broken
        except Exception as exc:  # a broken rule must not hide the others' findings
            failure = RuleFailure(rule.code, rule.origin, exc)
            if failures is None:
                raise ConvlintError(failure.message) from exc
            failures.append(failure)
            continue
        findings.extend(found)
        skips.extend(passed)
        if suppressed is not None:
            suppressed.extend(silenced)
    if findings:  # in graph order (a large graph without findings need not be listed)
        order = {name: i for i, name in enumerate(n.name for g in graph.all_graphs() for n in g)}
        findings.sort(key=lambda f: (order.get(f.node, len(order)), f.code))
    return findings, skips


@dataclass(frozen=True)
class RuleFailure:
    """A rule that raised on a model: that model's error, naming the rule and the exception."""

    code: str
    origin: str
    exception: BaseException

    @property
    def message(self) -> str:
        exc = self.exception
        text = f"rule {self.code} ({self.origin}) failed: {type(exc).__name__}: {exc}"
        return " ".join(text.split())[:500]


SUPPRESSED_REASON = f"suppressed by the node's metadata_props {IGNORE_KEY}"


def _silenced(graph: ModelGraph, finding: Finding) -> bool:
    node = graph.nodes.get(finding.node)
    if node is None:
        return False
    codes = model_ignores(node)
    return any(code == ALL or finding.code.startswith(code) for code in codes)


def _scaling_cost(loaded: loader.LoadedModel, graph: ModelGraph, path: Path) -> float | int | None:
    """MACs per input pixel when every spatial size scales with the single image input's."""
    if len(graph.data_inputs) != 1:
        return None
    shape = graph.shape(graph.data_inputs[0])
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    totals = []
    for size in PROBE_SIZES:
        probe = onnx.ModelProto()
        probe.CopyFrom(loaded.model)  # cheaper than reading and parsing the file again
        del probe.graph.value_info[:]
        try:
            loader.bind_input_shapes(probe, {graph.data_inputs[0]: (1, shape[1], size, size)}, path)
            probe = shapes.infer_shapes(probe, path)
        except ModelError:
            return None
        totals.append(model_cost(build_graph(probe)).macs)
    small, large = totals
    if small is None or large is None or large != small * 4:
        return None
    per_pixel = small / (PROBE_SIZES[0] ** 2)
    return int(per_pixel) if per_pixel.is_integer() else per_pixel


def analyze(
    path: str | Path,
    registry: Registry,
    settings: Settings,
    rules: Sequence[Rule] | None = None,
    keep: list[object] | None = None,
    bindings: bool = False,
    freeze: bool = False,
    background: bool = False,
    record_skips: bool = True,
) -> ModelReport:
    """Load, cost and lint one model; errors in the model become the report's ``error``.
    Its findings carry no bindings unless ``bindings`` (see :func:`lint`). With
    ``background``, a second core is the model's to use: a large model's shapes are inferred
    in a child process while its graph is read (see :func:`convlint.loader.load`). Without
    ``record_skips``, the report's ``skips`` has no rule's reasons (see :func:`run_rules`).

    ``keep`` receives the model, its graph and their views, which are otherwise freed on
    return: a process that ends without freeing its objects (convlint's own) need not pay for
    freeing a large graph one object at a time (0.1 s at 100,000 nodes). With ``freeze``, what
    the analysis made is also left out of every later garbage collection (see :func:`lint`).
    """
    report = ModelReport(path=str(path))
    try:
        loaded = loader.load(
            path,
            settings.input_shapes,
            settings.configured_input_shapes,
            settings.configured_source,
            background,
        )
        if keep is not None:
            keep.append(loaded)
        lint(report, loaded, registry, settings, rules, keep, bindings, freeze, record_skips)
    except ModelError as exc:
        report.error = exc.problem
    except Exception as exc:  # a failure of convlint's: still this model's error, one line
        report.error = internal_error(exc)
    return report


def internal_error(exc: BaseException) -> str:
    return " ".join(f"internal error: {type(exc).__name__}: {exc}".split())[:500]


def validate_graph(
    graph: ModelGraph, path: str, views: Sequence[tuple[ModelGraph, View]] | None = None
) -> None:
    """What ONNX shape inference lets pass and onnxruntime refuses: a cycle (rules would walk
    it forever), a conv whose weight does not fit its input's channels (every cost computed
    for it would be wrong). Every conv's geometry is made and checked in one pass of the view
    the rules then use (``View.conv_geometries``), so that its weight and attributes are read
    once."""
    cycle = graph.find_cycle()
    if cycle:
        raise shapes.cycle_error(path, cycle)
    for _, view in views if views is not None else graph_views(graph):
        try:
            view.conv_geometries()
        except GraphError as exc:
            raise ModelError(path, f"invalid model: {exc}") from None


def lint(
    report: ModelReport,
    loaded: loader.LoadedModel,
    registry: Registry,
    settings: Settings,
    rules: Sequence[Rule] | None = None,
    keep: list[object] | None = None,
    bindings: bool = True,
    freeze: bool = False,
    record_skips: bool = True,
) -> ModelGraph:
    """Cost and lint a loaded model into ``report``; returns the graph the rules saw (and
    appends it and its views to ``keep``, see :func:`analyze`).

    ``fix`` calls it on the model it has already read with its weights, so as not to read and
    shape-infer the file a second time; its findings keep their bindings (``Finding.binding``,
    nodes of the returned graph) for ``fix`` to plan from, unless ``bindings`` is False, as
    ``check`` asks: a report it keeps must not keep every model's graph alive.

    With ``freeze``, every object alive when the analysis is done is moved out of the garbage
    collector's reach (``gc.freeze``) before collection is enabled again: the first collection
    after it would otherwise walk every object the analysis made (0.07-0.09 s at 100,000
    nodes). Only for the last model of a process that then ends with ``os._exit``: what is
    frozen is never collected. ``record_skips``: see :func:`run_rules`.
    """
    gc_was_enabled = gc.isenabled()
    # Analysis allocates several objects per node and frees none until it is done, so cyclic
    # GC passes over them are wasted work: a third of the time on a 20,000-node graph.
    gc.disable()
    try:
        graph = loaded.graph if loaded.graph is not None else build_graph(loaded.model)
        views = graph_views(graph)
        if keep is not None:
            keep.extend((graph, views))
        validate_graph(graph, loaded.path, views)
        report.opset = loaded.opset
        report.nodes = sum(len(g.nodes) for g in graph.all_graphs())
        report.cost = model_cost(graph)
        if report.cost.macs is None:
            report.cost.macs_per_input_pixel = _scaling_cost(loaded, graph, Path(loaded.path))
        report.notes.extend(loaded.notes)
        blocked = report.cost.blocked_by
        if report.cost.macs is None and blocked in graph.nodes:
            node = graph.nodes[blocked]
            why = (
                "runs a subgraph (one branch of an If, or a loop of unknown trip count)"
                if node.op_type in SUBGRAPH_OPS
                else "has symbolic or unknown shapes; --input-shape binds symbolic dims"
            )
            report.notes.append(f"MACs unknown from {node.op_type} {blocked!r} on: it {why}")
            unknown = report.cost.unknown_nodes
            report.notes.append(
                f"MACs incomplete: at least {report.cost.macs_known:,} MACs; unknown for "
                f"{len(unknown)} node{'s' if len(unknown) != 1 else ''} "
                f"({', '.join(repr(n) for n in unknown[:5])}{', ...' if len(unknown) > 5 else ''})"
            )
        for sub_owner, _ in graph.subgraphs:
            report.notes.append(f"analyzed subgraph of {sub_owner}")
        chosen = enabled_rules(registry, settings) if rules is None else rules
        report.checked = [rule.code for rule in chosen]
        failures: list[RuleFailure] = []
        findings, skips = run_rules(
            graph,
            loaded.model,
            chosen,
            settings,
            views,
            report.suppressed,
            failures,
            bindings,
            record_skips,
        )
        for shown in (*findings, *skips, *report.suppressed):
            if type(shown.node) is not str:  # protobuf's bytes for a name not UTF-8
                report.suppressed = []
                raise ModelError(
                    loaded.path, f"invalid model: a node name is not UTF-8: {shown.node!r}"[:300]
                )
        report.findings, report.skips = findings, skips
        if failures:  # the model's error; the other rules' findings stay in the report
            report.failed_rules = [failure.code for failure in failures]
            raise ModelError(loaded.path, "; ".join(failure.message for failure in failures))
    except GraphError as exc:
        raise ModelError(loaded.path, f"invalid model: {exc}") from None
    finally:
        if freeze:
            gc.freeze()
        if gc_was_enabled:
            gc.enable()
    return graph


def iter_model_paths(targets: Sequence[str]) -> Iterator[Path]:
    """Files as given; folders searched for ``*.onnx`` in sorted order, hidden folders and
    files (``.git``, ``.venv``) left out, as ruff does; each file once."""
    seen: set[Path] = set()
    for target in targets:
        path = Path(target)
        found = [path]
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*.onnx")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        for model in found:
            key = model.resolve()
            if key not in seen:
                seen.add(key)
                yield model
