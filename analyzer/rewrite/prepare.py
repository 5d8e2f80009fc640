"""Stage 5, `convlint fix`'s preparation: the model analysed and its findings planned, the
samples read and split, the original run once for the reference, the statistics collected.

1. ``analyze``: the model is read without the values of its large weights (``weightstore``:
   they stay on disk, in the file or its external data, and are read one at a time when a
   rewrite needs them); external data locations are checked first. Nodes without a name get
   the name ``check`` reports for them (``Conv_3``), written into OUT, so that a baseline
   written before `fix` still matches after. The model is linted as by ``check`` (symbolic
   dims bound by ``--input-shape``, else by the sizes of the ``--inputs`` data, else by the
   verifier's defaults, so MACs are exact); every selected finding is planned as a target or
   skipped with a reason (``plan.plan``). The result is an ``Analysis``.
2. ``split_feeds``: the user's ``--inputs`` or seeded noise; the data-aware method fits its
   statistics on the first samples and verifies on the others (held out): ``Feeds``.
3. ``prepare``, in the runtime: the latency target, the weights staged in the runtime's
   folder (the model in memory is the graph alone from then on, "light"), the original's
   outputs on the held-out samples (the reference every later step compares with), and the
   statistics the data-aware method fits: a ``Prepared``, which the search and the settling
   read and never change. ``RuntimeBench`` is how they measure a model against it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convlint import loader
from convlint.cost import ModelCost, model_cost
from convlint.engine import Settings, enabled_rules, lint, rule_options
from convlint.errors import ConvlintError, ModelError, UsageError
from convlint.findings import ModelReport
from convlint.graph import ModelGraph, build_graph
from convlint.paths import external_data_files, same_file
from convlint.registry import Registry
from convlint.rewrite import latency, weightstore
from convlint.rewrite.calibration import Samples, parse_preprocess, read_samples
from convlint.rewrite.edit import Edit, Target, Weights, apply_edits
from convlint.rewrite.factorize import Array
from convlint.rewrite.options import DEFAULT_SAMPLES, INPUT_SAMPLES
from convlint.rewrite.plan import NotRewritable, RewriteContext, plan_in
from convlint.rewrite.state import FixRun, Skipped, count, declared_dims
from convlint.rewrite.verify import (
    WEIGHTS_FILE,
    Errors,
    Feed,
    InputSpec,
    Outputs,
    PatchSpec,
    Runtime,
    bind_dims,
    class_outputs,
    compare,
    not_finite,
    random_feeds,
)
from convlint.rewrite.weightstore import WeightStore

NEEDS_DATA = (
    "approximate rewrite: it is fitted and verified on real samples only; pass --inputs with "
    "data the model sees (or --allow-noise to fit generated noise)"
)
EARLY_SAMPLES = 16  # held-out samples a bisection step is first measured on
EARLY_MARGIN = 3.0  # ... and fails at once beyond this many times the tolerance
WIDENING_RULE = "CL005"  # flags a spatial conv that widens: what a deep pruning would leave
VERIFY_MIN = 64  # held-out samples, when the user gives that many
FIT_MIN = 16  # fitting samples kept when the held-out set grows to VERIFY_MIN
SELECT_MIN = 16  # held-out samples the budget chooses on, and as many that confirm, at least
_SUBGRAPHS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


# -- 1. analysis -------------------------------------------------------------------------------


@dataclass
class Analysis:
    """The model as read and linted, and what of its findings `fix` will try to rewrite."""

    path: Path
    model: onnx.ModelProto  # without large weights' values (``store`` has them)
    store: WeightStore
    data_files: list[Path]  # MODEL's external data
    samples: Samples | None  # --inputs, read; None: seeded noise
    specs: list[InputSpec]  # every input, its symbolic dims bound
    bound: dict[str, tuple[int, ...]]  # the inputs' shapes bound (by the user, data or defaults)
    dims_bound: dict[str, int]  # the symbolic dims `fix` bound itself, for the report
    registry: Registry
    lint_settings: Settings  # the user's, with the bindings
    report: ModelReport  # `check`'s report on MODEL
    graph: ModelGraph  # MODEL's graph: the shapes of its tensors
    targets: list[Target]  # planned, claiming disjoint nodes
    skipped: list[Skipped]  # findings not planned, and why

    @property
    def external(self) -> bool:
        return bool(self.data_files)


def analyze(path: Path, registry: Registry, settings: Settings, run: FixRun) -> Analysis:
    """Read MODEL, bind its dims, lint it as ``check`` does and plan its findings."""
    options = run.options
    with run.timer("analysis"):
        model, store = weightstore.read(path)
        data_files = external_data_files(model, path)
        assert options.output is not None
        _refuse_overwriting_data(path, options.output, data_files)
        name_nodes(model)
    user = dict(settings.input_shapes)
    samples: Samples | None = None
    if options.inputs is not None:
        with run.timer("inputs"):
            samples = _read_inputs(model, user, run)
    with run.timer("analysis"):
        declared = {v.name: declared_dims(v) for v in model.graph.input}
        data_shapes = {
            name: shape
            for name, shape in (samples.shapes if samples is not None else {}).items()
            if not all(isinstance(d, int) for d in declared.get(name, []))
        }
        specs, bound = input_specs(model, {**data_shapes, **user})
        dims_bound = bound_dims(model, specs, user)
        # The user's bindings too: one naming no input is an error, as in `check`.
        lint_settings = dataclasses.replace(settings, input_shapes={**user, **bound})
        report, graph = lint_model(model, path, registry, lint_settings)
        weights = Weights(model, store.array)
        static = not any(
            isinstance(d, str) or d is None for v in model.graph.input for d in declared_dims(v)
        )
        targets, skipped = _plan(report, graph, weights, static, registry, options.unsafe_fixes)
    return Analysis(
        path,
        model,
        store,
        data_files,
        samples,
        specs,
        bound,
        dims_bound,
        registry,
        lint_settings,
        report,
        graph,
        targets,
        skipped,
    )


def _plan(
    report: ModelReport,
    graph: ModelGraph,
    weights: Weights,
    static: bool,
    registry: Registry,
    unsafe_fixes: bool,
) -> tuple[list[Target], list[Skipped]]:
    """Every finding as a target, planned through its rule's declared rewrite, or skipped
    with the reason; a target whose nodes another claimed first (exact rewrites first) is
    skipped, and an unsafe one without --unsafe-fixes."""
    targets: list[Target] = []
    skipped: list[Skipped] = []
    context = RewriteContext(graph, weights, static)
    for finding in report.findings:
        try:
            rule = registry.get(finding.code)
            targets.append(plan_in(finding, context, rule))
        except NotRewritable as exc:
            skipped.append(Skipped(finding.code, finding.node, str(exc)))
    claimed: dict[int, Target] = {}
    kept = []
    for target in sorted(targets, key=lambda t: t.claim_order):
        overlap = [claimed[i] for i in target.claims if i in claimed]
        if overlap:
            other = overlap[0]
            reason = f"overlaps the {other.code} rewrite of {other.node!r}"
            skipped.append(Skipped(target.code, target.node, reason))
        elif target.unsafe and not unsafe_fixes:
            skipped.append(Skipped(target.code, target.node, target.unsafe_reason))
        else:
            kept.append(target)
            claimed.update(dict.fromkeys(target.claims, target))
    return kept, skipped


def lint_model(
    model: onnx.ModelProto, path: Path, registry: Registry, settings: Settings
) -> tuple[ModelReport, ModelGraph]:
    """``check``'s report on ``model`` (weights left out of inference), and its graph."""
    skeleton = _skeleton(model)
    notes = loader.clear_negative_dims(skeleton)  # -1 dims are free, as `check` reads them
    notes += loader.bind_input_shapes(skeleton, settings.input_shapes, path)
    inferred = loader.infer_shapes(skeleton, path)
    report = ModelReport(path=str(path))
    loaded = loader.LoadedModel(str(path), inferred, notes)
    graph = lint(report, loaded, registry, settings)
    return report, graph


def widening(analysis: Analysis) -> float | None:
    """CL005's expansion ratio where the lint of the rewritten model runs it, else None:
    a channel pruning must not leave a widening the recheck then drops."""
    registry, settings = analysis.registry, analysis.lint_settings
    rule = registry.get(WIDENING_RULE)
    if rule is None or rule not in enabled_rules(registry, settings):
        return None
    options, _ = rule_options(rule, settings)
    return float(options["expansion-ratio"])


def _refuse_overwriting_data(path: Path, out: Path, data_files: Sequence[Path]) -> None:
    """OUT and OUT.data must not land on MODEL's external data, unless they replace MODEL."""
    if same_file(out, path):
        return
    for written in (out, out.with_name(f"{out.name}.data")):
        for data in data_files:
            if same_file(written, data):
                raise UsageError(f"-o {out} would overwrite {data}, the external data of {path}")


def name_nodes(model: onnx.ModelProto) -> None:
    """Give the main graph's nodes the names ``check`` reports for them, in place: an unnamed
    node is ``<op_type>_<index>``, a repeated name gets ``_<index>`` (as ``graph.build_graph``
    names them). With every name written and unique, OUT's untouched nodes keep them even
    though new nodes shift their indices."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        if node.name != name:
            node.name = name


def input_specs(
    model: onnx.ModelProto, given: dict[str, tuple[int, ...]]
) -> tuple[list[InputSpec], dict[str, tuple[int, ...]]]:
    """Concrete input specs and the bindings that made symbolic dims concrete."""
    weights = {t.name for t in model.graph.initializer}
    specs, bound = [], {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        dims = declared_dims(value)
        shape = bind_dims(dims, given.get(value.name))
        if value.name in given or any(not isinstance(d, int) for d in dims):
            bound[value.name] = shape
        specs.append(InputSpec(value.name, shape, value.type.tensor_type.elem_type))
    return specs, bound


def bound_dims(
    model: onnx.ModelProto, specs: Sequence[InputSpec], user: dict[str, tuple[int, ...]]
) -> dict[str, int]:
    """The symbolic dims `fix` bound itself (not by --input-shape), by name: a dim without a
    name is called ``<input>[<axis>]``."""
    declared = {v.name: declared_dims(v) for v in model.graph.input}
    bound: dict[str, int] = {}
    for spec in specs:
        if spec.name in user:
            continue
        for axis, (dim, size) in enumerate(zip(declared[spec.name], spec.shape, strict=True)):
            if not isinstance(dim, int):
                bound.setdefault(dim or f"{spec.name}[{axis}]", size)
    return bound


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without large weight values (shapes kept): enough for inference and costs.
    External data references are dropped too, so nothing reads them."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.ClearField("data_location")
            del tensor.external_data[:]
        elif math.prod(tensor.dims) > 1024 and tensor.data_type in (1, 10, 11, 16):
            tensor.ClearField("float_data")
            tensor.ClearField("double_data")
            tensor.ClearField("int32_data")
            tensor.raw_data = b""
    return copy


def infer_skeleton(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Shape inference on ``model`` without its weights' values."""
    return loader.infer_shapes(_skeleton(model), path)


def recount(model: onnx.ModelProto, bound: dict[str, tuple[int, ...]], path: Path) -> ModelCost:
    """Params and MACs of a rewritten model, after shape inference with the same bindings."""
    skeleton = _skeleton(model)
    loader.clear_negative_dims(skeleton)
    loader.bind_input_shapes(skeleton, bound, path)
    return model_cost(build_graph(loader.infer_shapes(skeleton, path)))


# -- 2. samples --------------------------------------------------------------------------------


def _read_inputs(model: onnx.ModelProto, user: dict[str, tuple[int, ...]], run: FixRun) -> Samples:
    options = run.options
    assert options.inputs is not None
    weights = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in weights]
    preprocess = parse_preprocess(options.preprocess) if options.preprocess is not None else None
    path = options.inputs
    if not path.exists():
        raise ConvlintError(f"{path}: no such inputs file")
    if path.is_dir() and preprocess is None:
        preprocess = parse_preprocess("unit")
    return read_samples(
        path,
        [v.name for v in values],
        {v.name: declared_dims(v) for v in values},
        {
            v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            for v in values
        },
        user,
        options.samples if options.samples is not None else INPUT_SAMPLES,
        preprocess,
    )


@dataclass(frozen=True)
class Feeds:
    """The samples a run fits on, those its search chooses ranks on and those it verifies
    on, as the report says. ``select`` and ``verify`` are disjoint held-out samples where the
    budget searches ranks and enough are held out (``selection_count``); otherwise
    ``select`` is ``verify`` itself."""

    fit: list[Feed]
    verify: list[Feed]
    origin: str  # for the report's header
    calibration: dict[str, Any]  # the report's {"source", "fit", "verify", "verify_samples", ...}
    select: list[Feed] = field(default_factory=list)  # empty: the same as ``verify``

    @property
    def selection(self) -> list[Feed]:
        """The samples the search and the settling measure on."""
        return self.select or self.verify


def held_out_count(samples: int) -> int:
    """How many of the samples (the last ones) verify, disjoint from those that fit: half,
    and at least ``VERIFY_MIN`` when that still leaves ``FIT_MIN`` to fit on."""
    return max(samples - samples // 2, min(VERIFY_MIN, samples - FIT_MIN))


def selection_count(held_out: int) -> int:
    """How many of the held-out samples (the first ones) the budget chooses ranks on, the
    others confirming the choice: half, when both halves have ``SELECT_MIN``; else none (the
    choice is made on the samples that verify it, and the report says so)."""
    return held_out // 2 if held_out >= 2 * SELECT_MIN else 0


def searches_budget(analysis: Analysis, run: FixRun) -> bool:
    """Whether the run chooses ranks by measuring on held-out samples: approximate targets
    it may rewrite (real samples, or noise allowed), at ranks the user did not fix."""
    return (
        any(t.lossy for t in analysis.targets)
        and (analysis.samples is not None or run.options.allow_noise)
        and not run.fixed_rank
    )


def split_feeds(analysis: Analysis, run: FixRun) -> Feeds:
    """(fit, select, verify) samples, a description for the report, and the calibration
    record."""
    options = run.options
    if analysis.samples is not None:
        samples, source = analysis.samples.feeds, analysis.samples.source
        number = len(samples)
        available = analysis.samples.available
        taken = count(number, "sample") if available == number else f"{number} of {available}"
        origin = f"{taken} from {options.inputs}"
        if analysis.samples.preprocess:
            origin += f" ({analysis.samples.preprocess})"
    else:
        with run.timer("inputs"):
            samples = random_feeds(analysis.specs, options.samples or DEFAULT_SAMPLES, options.seed)
        source = "noise"
        origin = count(len(samples), "seeded random sample")
    every = list(range(len(samples)))
    if len(samples) < 2 and options.method != "weight":
        single = {"source": source, "fit": 1, "verify": 1, "verify_samples": every}
        return Feeds(
            samples, samples, f"{origin}: statistics fitted and verified on the same one", single
        )
    fit = 0 if options.method == "weight" else len(samples) - held_out_count(len(samples))
    held_out = list(range(fit, len(samples)))
    searched = searches_budget(analysis, run)
    chosen = selection_count(len(held_out)) if searched else 0
    verify = held_out[chosen:]
    record: dict[str, Any] = {
        "source": source,
        "fit": fit,
        "verify": len(verify),
        "verify_samples": verify,
    }
    if searched:  # the samples the ranks were chosen on: verify's own where none are set aside
        selected = held_out[:chosen] if chosen else verify
        record.update(select=len(selected), select_samples=selected)
    parts = [f"statistics fitted on {fit}"] if fit else []
    if chosen:
        parts.append(f"ranks chosen on {chosen}")
    if parts:
        parts.append(f"verified on the other {len(verify)}")
        origin = f"{origin}: {', '.join(parts)}"
    return Feeds(
        samples[:fit],
        [samples[i] for i in verify],
        origin,
        record,
        [samples[i] for i in held_out[:chosen]],
    )


# -- 3. in the runtime: the reference and the statistics ---------------------------------------


@dataclass
class Prepared:
    """What the search and the settling start from; neither changes it."""

    analysis: Analysis
    feeds: Feeds
    light: onnx.ModelProto  # the graph, its large weights staged in the runtime's folder
    original: Path  # ``light`` saved there: the model timed against
    reference: list[Outputs]  # the original's outputs on ``feeds.verify``
    selected: list[Outputs]  # ... and on ``feeds.selection`` (the same list where they are one)
    output_names: list[str]
    timing: latency.Target  # where latency is measured
    timing_feed: Feed  # the whole models are timed on it
    lossy: list[Target]  # the approximate targets the budget searches (with data to fit)
    skipped: list[Skipped]  # approximate targets not tried: no real data to fit them on
    stats: dict[str, Array] | None  # statistics the data-aware method fits, None: none

    @property
    def graph(self) -> ModelGraph:
        return self.analysis.graph

    @property
    def report(self) -> ModelReport:
        return self.analysis.report


def prepare(analysis: Analysis, feeds: Feeds, runtime: Runtime, run: FixRun) -> Prepared | Errors:
    """The reference and statistics the later steps need, or the original's own non-finite
    outputs (a NaN or an infinity hides any difference: nothing can be verified)."""
    options = run.options
    timing, timing_feed = latency_target(analysis, feeds, runtime, run)
    with run.timer("onnxruntime"):
        # Every large weight moves to the runtime's folder, once: from here on the model
        # in memory is the graph alone ("light"), and requests carry only what changed.
        weightstore.stage(analysis.model, analysis.store, runtime.folder / WEIGHTS_FILE)
        light = analysis.model
        original = runtime.save(light, "original.onnx")
        reference: list[Outputs] = runtime.run(
            original, feeds.verify, what="running the original model"
        )
        selected = reference
        if feeds.select:
            selected = runtime.run(original, feeds.select, what="running the original model")
    output_names = [o.name for o in light.graph.output]
    if options.min_top1 is not None and not class_outputs(reference[0]):
        raise UsageError(
            "--min-top1: no output of the model looks like class scores (a float output "
            "of shape (N, K), K >= 2, one row per sample)"
        )
    broken = not_finite(reference, output_names, "the original model")
    if broken is not None:
        return broken
    lossy = [t for t in analysis.targets if t.lossy]
    skipped: list[Skipped] = []
    if lossy and analysis.samples is None and not options.allow_noise:
        skipped = [Skipped(t.code, t.node, NEEDS_DATA) for t in lossy]
        run.notes.append(
            f"{count(len(lossy), 'approximate rewrite')} not applied: no --inputs "
            "(generated noise would fit and verify them on data the model never sees)"
        )
        lossy = []
    stats = None
    if options.method != "weight" and lossy:
        requests = {t: (t, 0) for target in lossy for t in target.stat_tensors()}
        if options.method != "prune":  # only the spatial SVD reads moments between rows
            for target in lossy:
                requests.update(target.row_statistics())
        with run.timer("onnxruntime"):
            stats = collect_statistics(runtime, light, requests, feeds.fit)
    return Prepared(
        analysis,
        feeds,
        light,
        original,
        reference,
        selected,
        output_names,
        timing,
        timing_feed,
        lossy,
        skipped,
        stats,
    )


def latency_target(
    analysis: Analysis, feeds: Feeds, runtime: Runtime, run: FixRun
) -> tuple[latency.Target, Feed]:
    """What the latency is measured on, and the feed it times the whole models with (the
    first verification sample, repeated to ``--latency-batch``); a provider the runtime
    does not have, or a batch the model's fixed batch dim refuses, is bad input."""
    options = run.options
    if options.provider not in runtime.providers:
        raise UsageError(
            f"--provider {options.provider}: not available in this onnxruntime; "
            f"available: {', '.join(runtime.providers) or 'none'}"
        )
    feed = feeds.verify[0]
    if options.latency_batch is not None:
        declared = {v.name: declared_dims(v) for v in analysis.model.graph.input}
        try:
            feed = latency.batched_feed(feed, declared, options.latency_batch)
        except ValueError as exc:
            raise ModelError(
                analysis.path, f"--latency-batch {options.latency_batch}: {exc}"
            ) from None
    threads = options.latency_threads or latency.default_threads()
    return latency.Target(threads, latency.feed_batch(feed), options.provider), feed


def probe(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``tensors`` (to read them), with only the
    nodes and initializers they need: onnxruntime runs every node of a graph whatever the
    outputs asked for, and the first block of a VGG costs a tenth of the whole. A graph with
    subgraphs (which may read outer names they do not list) keeps every node."""
    wanted = list(dict.fromkeys(tensors))
    graph = model.graph
    if any(a.type in _SUBGRAPHS for node in graph.node for a in node.attribute):
        probed = onnx.ModelProto()
        probed.CopyFrom(model)
        outputs = {o.name for o in probed.graph.output}
        for tensor in wanted:
            if tensor not in outputs:
                probed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
        return probed
    needed, kept = set(wanted), []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    declared = {v.name for v in graph.input}  # an initializer listed as an input stays
    probed = onnx.ModelProto()
    probed.CopyFrom(model)  # then its graph's lists are rebuilt from the kept entries
    pruned = probed.graph
    del pruned.node[:], pruned.output[:], pruned.initializer[:], pruned.sparse_initializer[:]
    pruned.node.extend(reversed(kept))
    pruned.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted)
    pruned.initializer.extend(
        t for t in graph.initializer if t.name in needed or t.name in declared
    )
    pruned.sparse_initializer.extend(
        t for t in graph.sparse_initializer if t.values.name in needed or t.values.name in declared
    )
    return probed


def collect_statistics(
    runtime: Runtime,
    model: onnx.ModelProto,
    requests: Mapping[str, tuple[str, int]],
    feeds: Sequence[Feed],
) -> dict[str, Array]:
    """Second moments (and means) of intermediate tensors, run as extra graph outputs; the
    moments are computed in the runtime's process, one sample at a time. ``requests``: each
    statistic's key (``key`` and ``key#mean`` in the result) -> (tensor, rows apart)."""
    read = list(dict.fromkeys(tensor for tensor, _ in requests.values()))
    moments = runtime.moments(probe(model, read), feeds, list(dict.fromkeys(requests.values())))
    stats: dict[str, Array] = {}
    for key, statistic in requests.items():
        stats[key], stats[f"{key}#mean"] = moments[statistic]
    return stats


class RuntimeBench:
    """How the later steps measure a rewritten model against the prepared reference, in the
    runtime (``state.Bench``; the tests give the search a bench of their own)."""

    def __init__(self, prepared: Prepared, runtime: Runtime, run: FixRun) -> None:
        self.prepared = prepared
        self.runtime = runtime
        self.run = run
        self.light = prepared.light

    def apply(self, edits: Sequence[Edit]) -> onnx.ModelProto:
        """The light model with ``edits`` applied."""
        with self.run.timer("factorization"):
            return apply_edits(self.light, edits)

    def macs(self, model: onnx.ModelProto) -> int | None:
        analysis = self.prepared.analysis
        with self.run.timer("analysis"):
            return recount(model, analysis.bound, analysis.path).macs

    def sample(self, model: onnx.ModelProto, specs: Sequence[PatchSpec], what: str) -> list[Array]:
        """The patches ``specs`` name, sampled from ``model`` run on the fitting samples."""
        with self.run.timer("onnxruntime"):
            probed = probe(model, (spec.tensor for spec in specs))
            found: list[Array] = self.runtime.sample(probed, self.prepared.feeds.fit, specs, what)
            return found

    def measure(
        self, model: onnx.ModelProto | Path, what: str, early: bool = False, confirm: bool = False
    ) -> Errors:
        """The model's errors on every held-out sample the search chooses on (``confirm``:
        on every sample that verifies). ``early``: first on a few of them, and a model
        already far outside the budget there (``EARLY_MARGIN`` times the tolerance) fails
        without running the rest: most of the budget's bisection steps that fail, fail by
        far."""
        prepared = self.prepared
        feeds, reference = (
            (prepared.feeds.verify, prepared.reference)
            if confirm
            else (prepared.feeds.selection, prepared.selected)
        )
        # Samples that only choose (not those that verify): --min-top1 on the expected
        # agreement alone, the smoother estimate (``verify.compare``).
        counted = confirm or not prepared.feeds.select
        names, bound = self.prepared.output_names, self.run.error_bound
        with self.run.timer("onnxruntime"):
            if early and len(feeds) > 2 * EARLY_SAMPLES:
                model = (
                    self.runtime.save(model, "measured.onnx")
                    if not isinstance(model, Path)
                    else model
                )
                first = self.runtime.run(model, feeds[:EARLY_SAMPLES], what=what)
                errors = compare(reference[:EARLY_SAMPLES], first, bound, names)
                if errors.rel_l2_error > EARLY_MARGIN * bound or self._top1_lost(
                    errors, len(feeds) / EARLY_SAMPLES, counted
                ):
                    return dataclasses.replace(errors, ok=False)
                rest = self.runtime.run(model, feeds[EARLY_SAMPLES:], what=what)
                outputs = [*first, *rest]
            else:
                outputs = self.runtime.run(model, feeds, what=what)
            return compare(reference, outputs, bound, names, self.run.options.min_top1, counted)

    def _top1_lost(self, first: Errors, scale: float, counted: bool = True) -> bool:
        """Whether the disagreements on the first samples already exceed what --min-top1
        allows on all of them (``scale`` times as many): the whole measure cannot hold.
        Not ``counted``: whether the expected disagreement there is ``EARLY_MARGIN`` times
        what --min-top1 allows."""
        min_top1 = self.run.options.min_top1
        if min_top1 is None or first.top1_agreement is None:
            return False
        if not counted:
            expected = first.top1_expected
            return expected is not None and 1 - expected > EARLY_MARGIN * (1 - min_top1)
        rows = first.top1_samples or 0
        lost = round((1 - first.top1_agreement) * rows)
        return lost > (1 - min_top1) * rows * scale + 1e-9
