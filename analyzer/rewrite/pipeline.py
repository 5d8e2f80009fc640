"""Stage 5: `convlint fix`: findings -> rewrites at chosen ranks -> verified, timed model -> OUT.

1. Analysis: the model is read without the values of its large weights (``weightstore``: they
   stay on disk, in the file or its external data, and are read one at a time when a rewrite
   needs them); external data locations are checked first. Nodes without a name get the name
   ``check`` reports for them (``Conv_3``), written into OUT, so that a baseline written before
   `fix` still matches after. The model is linted as by ``check`` (symbolic dims bound by
   ``--input-shape``, else by the sizes of the ``--inputs`` data, else by the verifier's
   defaults, so MACs are exact); every selected finding is planned as a target or skipped with
   a reason (``plan.plan``).
2. Samples (``calibration``): the user's ``--inputs`` or seeded noise; the data-aware method
   fits its statistics on the first half and verifies on the other half (held out).
3. Rank selection, per lossy target, against a share ``T/√n`` of the tolerance (errors of n
   independent rewrites add roughly in quadrature at the outputs): the factorizer proposes the
   form with the fewest MACs whose cheap proxy error fits the budget; onnxruntime confirms it on
   the whole model's outputs; the ratio between measured and proxy error recalibrates the
   proxy budget and the search repeats a few times, keeping the cheapest confirmed choice.
   ``--rank``/``--ratio`` replace the search by a fixed rank.
4. Until the set of rewrites is stable: each rewrite is timed on its own (``latency``, unless
   ``--no-latency``) and dropped when the timing's confidence interval says so (``--objective
   latency``: unless it is faster; ``macs``: if it is slower); the combination is verified end
   to end (while it breaks the tolerance, the rewrite that moved the outputs most gets half its
   budget, or is dropped); the rewritten model is linted again, and a rewrite whose new nodes a
   rule would flag is tried in another form or dropped, so that ``check OUT`` does not flag
   what `fix` wrote. Then both whole models are timed on the target (``--provider``,
   ``--latency-threads``, ``--latency-batch``); by the same rule, the rewrite that gained least
   on its own is dropped while the whole rewritten model is not faster (``latency``) or is
   slower (``macs``).
5. The model is written beside OUT (weights streamed from the runtime's data file), checked
   with ``onnx.checker`` (full check), verified again from the file, and only then moved over
   OUT. Its external data, if any, goes under a name no file has yet (``OUT.data``, else
   ``OUT.1.data``, ...), so that the rename of the model is the one step that replaces the old
   model and its data by the new pair; the old data file is removed after that rename.
   Replaced files keep their modes; a symlink OUT stays a link and its target is replaced.
   When no rewrite applies, OUT is still written (MODEL with its nodes named as above).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convlint import loader
from convlint.atomic import (
    exclusive_lock,
    fsync_file,
    fsync_folder,
    new_file_mode,
    special_kind,
    write_target,
)
from convlint.cost import ModelCost, model_cost
from convlint.engine import ModelReport, Settings, enabled_rules, lint, rule_options
from convlint.errors import ConvlintError, ModelError, UsageError
from convlint.graph import build_graph
from convlint.paths import external_data_files, same_file
from convlint.registry import Registry
from convlint.rewrite import latency, weightstore
from convlint.rewrite.budget import (
    Allocation,
    Candidate,
    key_of,
    reduced_rank_refit,
    refit,
    relative_error,
    spend,
)
from convlint.rewrite.calibration import Samples, parse_preprocess, read_samples
from convlint.rewrite.edit import (
    Curve,
    Edit,
    Names,
    Target,
    Weights,
    apply_edits,
)
from convlint.rewrite.factorize import KINDS, Array, Factors
from convlint.rewrite.latency import Latency
from convlint.rewrite.options import (
    DEFAULT_OBJECTIVE,
    DEFAULT_SAMPLES,
    INPUT_SAMPLES,
    METHODS,
    OBJECTIVES,
)
from convlint.rewrite.options import FixOptions as FixOptions  # the API's and the tests' name
from convlint.rewrite.options import output_bound as output_bound
from convlint.rewrite.options import reported_tolerance as reported_tolerance
from convlint.rewrite.plan import NotRewritable, plan
from convlint.rewrite.verify import (
    WEIGHTS_FILE,
    Errors,
    Feed,
    InputSpec,
    Outputs,
    PatchSpec,
    Runtime,
    RuntimeFailure,
    bind_dims,
    class_outputs,
    compare,
    not_finite,
    random_feeds,
)

# Each sample is held in memory and run through both models: a bound keeps a typo
# (--samples 100000000) from exhausting memory.
MAX_SAMPLES = 4096
MARGIN = 0.8  # aim the proxy below the budget: the proxy is an estimate
MAX_TRIALS = 4  # onnxruntime confirmations per rewrite during rank selection
MAX_ROUNDS = 8  # rounds of timing, verifying and re-linting until the rewrites are stable
NO_SAVING = "no rank within tolerance lowers MACs"
NEEDS_DATA = (
    "approximate rewrite: it is fitted and verified on real samples only; pass --inputs with "
    "data the model sees (or --allow-noise to fit generated noise)"
)
OUT_OF_BUDGET = "the whole-model budget was spent on layers that save more MACs per unit of error"
EARLY_SAMPLES = 16  # held-out samples a bisection step is first measured on
EARLY_MARGIN = 3.0  # ... and fails at once beyond this many times the tolerance
WIDENING_RULE = "CL005"  # flags a spatial conv that widens: what a deep pruning would leave
VERIFY_MIN = 64  # held-out samples, when the user gives that many
FIT_MIN = 16  # fitting samples kept when the held-out set grows to VERIFY_MIN
REFIT_ROUNDS = 1  # refits of every chosen layer against the approximated model's inputs
STAGES = ("analysis", "inputs", "factorization", "onnxruntime", "latency", "writing")


def layer_budget(bound: float) -> float:
    """The error budget a single layer's rank search aims at: the bound, at most 1 (a proxy
    is a relative error: at 1 the cheapest form fits, and the measured top-1 decides)."""
    return min(bound, 1.0)


@dataclass
class Rewrite:
    code: str
    node: str
    kind: str
    method: str
    rank: int | list[int] | None
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    verified: Errors
    unsafe: bool = False
    latency: Latency | None = None  # its nodes alone, with --objective latency
    kept_channels: list[int] | None = None  # channel pruning: the input channels it keeps

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["verified"] = self.verified.as_dict()
        data.pop("unsafe")
        if self.kept_channels is None:
            data.pop("kept_channels")
        if self.latency is None:
            data.pop("latency")
        else:
            data["latency"] = self.latency.as_dict()
        return data


@dataclass(frozen=True)
class Skipped:
    code: str
    node: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "node": self.node, "reason": self.reason}


@dataclass
class FixResult:
    report: ModelReport
    output: str
    tolerance: float | None  # None: the outputs' error was not bounded (--min-top1 alone)
    method: str
    rewrites: list[Rewrite] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verification: Errors | None = None
    cost_after: ModelCost | None = None
    written: bool = False
    inputs: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    objective: str = "macs"
    latency: Latency | None = None
    calibration: dict[str, Any] | None = None  # {"source", "fit", "verify"}
    bound: dict[str, int] = field(default_factory=dict)  # symbolic dims fix bound itself
    peak_memory: dict[str, int | None] = field(default_factory=dict)  # bytes


@dataclass
class _Choice:
    target: Target
    factors: Factors | None  # None for an exact fold
    edit: Edit
    errors: Errors
    budget: float
    kinds: tuple[str, ...] = KINDS  # the forms it may still take
    latency: Latency | None = None  # its nodes alone, once timed
    timed: bool = False


UNMEASURED = Errors(math.nan, math.nan, False, problem="not measured yet")
Log = Callable[[str], None]


class _Timer:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


def resolve_output(model: Path, output: Path | None, in_place: bool) -> Path:
    if output is None:
        if not in_place:
            raise UsageError("fix needs -o OUT (or --in-place to overwrite MODEL)")
        return model
    if same_file(output, model) and not in_place:
        raise UsageError(f"-o {output} is the input model; pass --in-place to overwrite it")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: no such folder {str(output.parent)!r}")
    try:  # before any work: a folder that cannot be written fails now, not after it
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as exc:
        raise UsageError(
            f"-o {output}: cannot write in {str(output.parent)!r}: {exc.strerror or exc}"
        ) from None
    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give the file to write")
    kind = special_kind(write_target(output))
    if kind is not None:  # a rename would replace the device node; OUT.data cannot go beside it
        raise UsageError(f"-o {output} is {kind}, not a regular file; give the file to write")
    return output


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
        dims = _dims(value)
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
    declared = {v.name: _dims(v) for v in model.graph.input}
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


def fill_output_types(model: onnx.ModelProto, path: Path) -> None:
    """Give graph outputs declared without a shape (or type) the inferred one, in place.

    Hand-built models often declare ``make_tensor_value_info("y", FLOAT, None)``; runtimes
    accept that, but ``onnx.checker``'s full check, which OUT must pass, does not.
    """
    missing = [
        value
        for value in model.graph.output
        if value.type.WhichOneof("value") in (None, "tensor_type")
        and (not value.type.tensor_type.HasField("shape") or not value.type.tensor_type.elem_type)
    ]
    if not missing:
        return
    inferred = loader.infer_shapes(_skeleton(model), path)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for value in missing:
        found = known.get(value.name)
        if found is not None and found.type.tensor_type.HasField("shape"):
            value.type.CopyFrom(found.type)


def recount(model: onnx.ModelProto, bound: dict[str, tuple[int, ...]], path: Path) -> ModelCost:
    """Params and MACs of a rewritten model, after shape inference with the same bindings."""
    skeleton = _skeleton(model)
    loader.clear_negative_dims(skeleton)
    loader.bind_input_shapes(skeleton, bound, path)
    return model_cost(build_graph(loader.infer_shapes(skeleton, path)))


def probe(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include ``tensors`` (to read them)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    outputs = {o.name for o in probed.graph.output}
    for tensor in dict.fromkeys(tensors):
        if tensor not in outputs:
            probed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    return probed


def collect_statistics(
    runtime: Runtime, model: onnx.ModelProto, tensors: Sequence[str], feeds: Sequence[Feed]
) -> dict[str, Array]:
    """Second moments (and means) of intermediate tensors, run as extra graph outputs; the
    moments are computed in the runtime's process, one sample at a time."""
    moments = runtime.moments(probe(model, tensors), feeds, list(tensors))
    stats: dict[str, Array] = {}
    for tensor in tensors:
        stats[tensor], stats[f"{tensor}#mean"] = moments[tensor]
    return stats


def held_out_count(samples: int) -> int:
    """How many of the samples (the last ones) verify, disjoint from those that fit: half,
    and at least ``VERIFY_MIN`` when that still leaves ``FIT_MIN`` to fit on."""
    return max(samples - samples // 2, min(VERIFY_MIN, samples - FIT_MIN))


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


class Fixer:
    """One `fix` run: holds the model (without weight values), the runtime, the references."""

    def __init__(
        self, path: Path, registry: Registry, settings: Settings, options: FixOptions, log: Log
    ) -> None:
        self.path = path
        self.registry = registry
        self.settings = settings
        self.options = options
        self.error_bound = output_bound(options)
        self.log = log
        self.timings: dict[str, float] = {}
        self.timer = _Timer(self.timings)
        self.objective = options.objective or DEFAULT_OBJECTIVE
        self.notes: list[str] = []  # for the report's notes (--verbose)
        self._factors: dict[tuple[str, str, Any], Factors] = {}  # (target, kind, rank)
        self._responses: dict[tuple[str, PatchSpec], Array] = {}  # the original's, sampled

    # -- analysis ----------------------------------------------------------------------
    def analyze(self) -> tuple[ModelReport, list[Target], list[Skipped]]:
        with self.timer("analysis"):
            self.model, self.store = weightstore.read(self.path)
            self.data_files = external_data_files(self.model, self.path)
            self.external = bool(self.data_files)
            assert self.options.output is not None
            _refuse_overwriting_data(self.path, self.options.output, self.data_files)
            name_nodes(self.model)
        user = dict(self.settings.input_shapes)
        self.samples: Samples | None = None
        if self.options.inputs is not None:
            with self.timer("inputs"):
                self.samples = self._read_inputs(user)
        with self.timer("analysis"):
            declared = {v.name: _dims(v) for v in self.model.graph.input}
            data_shapes = {
                name: shape
                for name, shape in (self.samples.shapes if self.samples is not None else {}).items()
                if not all(isinstance(d, int) for d in declared.get(name, []))
            }
            self.specs, self.bound = input_specs(self.model, {**data_shapes, **user})
            self.dims_bound = bound_dims(self.model, self.specs, user)
            # The user's bindings too: one naming no input is an error, as in `check`.
            shapes = {**user, **self.bound}
            self.lint_settings = dataclasses.replace(self.settings, input_shapes=shapes)
            report = self._lint(self.model)
            weights = Weights(self.model, self.store.array)
            static = not any(
                isinstance(d, str) or d is None for v in self.model.graph.input for d in _dims(v)
            )
            targets: list[Target] = []
            skipped: list[Skipped] = []
            for finding in report.findings:
                try:
                    rule = self.registry.get(finding.code)
                    targets.append(plan(finding, self.graph, weights, static, rule))
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
                elif target.unsafe and not self.options.unsafe_fixes:
                    skipped.append(Skipped(target.code, target.node, target.unsafe_reason))
                else:
                    kept.append(target)
                    claimed.update(dict.fromkeys(target.claims, target))
        return report, kept, skipped

    def _lint(self, model: onnx.ModelProto) -> ModelReport:
        """``check``'s report on ``model`` (weights left out of inference), graph kept."""
        skeleton = _skeleton(model)
        notes = loader.clear_negative_dims(skeleton)  # -1 dims are free, as `check` reads them
        notes += loader.bind_input_shapes(skeleton, self.lint_settings.input_shapes, self.path)
        inferred = loader.infer_shapes(skeleton, self.path)
        report = ModelReport(path=str(self.path))
        loaded = loader.LoadedModel(str(self.path), inferred, notes)
        self.graph = lint(report, loaded, self.registry, self.lint_settings)
        return report

    def _widening(self) -> float | None:
        """CL005's expansion ratio where the lint of the rewritten model runs it, else None:
        a channel pruning must not leave a widening the recheck then drops."""
        rule = self.registry.get(WIDENING_RULE)
        if rule is None or rule not in enabled_rules(self.registry, self.lint_settings):
            return None
        options, _ = rule_options(rule, self.lint_settings)
        return float(options["expansion-ratio"])

    # -- inputs ------------------------------------------------------------------------
    def _read_inputs(self, user: dict[str, tuple[int, ...]]) -> Samples:
        assert self.options.inputs is not None
        weights = {t.name for t in self.model.graph.initializer}
        values = [v for v in self.model.graph.input if v.name not in weights]
        preprocess = (
            parse_preprocess(self.options.preprocess)
            if self.options.preprocess is not None
            else None
        )
        path = self.options.inputs
        if not path.exists():
            raise ConvlintError(f"{path}: no such inputs file")
        if path.is_dir() and preprocess is None:
            preprocess = parse_preprocess("unit")
        return read_samples(
            path,
            [v.name for v in values],
            {v.name: _dims(v) for v in values},
            {
                v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                for v in values
            },
            user,
            self.options.samples if self.options.samples is not None else INPUT_SAMPLES,
            preprocess,
        )

    def feeds(self) -> tuple[list[Feed], list[Feed], str, dict[str, Any]]:
        """(fit, verify) samples, a description for the report, and the calibration record."""
        if self.samples is not None:
            samples, source = self.samples.feeds, self.samples.source
            count = len(samples)
            available = self.samples.available
            taken = _count(count, "sample") if available == count else f"{count} of {available}"
            origin = f"{taken} from {self.options.inputs}"
            if self.samples.preprocess:
                origin += f" ({self.samples.preprocess})"
        else:
            with self.timer("inputs"):
                count = self.options.samples or DEFAULT_SAMPLES
                samples = random_feeds(self.specs, count, self.options.seed)
            source = "noise"
            origin = _count(len(samples), "seeded random sample")
        every = list(range(len(samples)))
        if self.options.method == "weight":
            record = {"source": source, "fit": 0, "verify": len(samples), "verify_samples": every}
            return [], samples, origin, record
        if len(samples) < 2:
            record = {
                "source": source,
                "fit": len(samples),
                "verify": len(samples),
                "verify_samples": every,
            }
            return (
                samples,
                samples,
                f"{origin}: statistics fitted and verified on the same one",
                record,
            )
        held_out = held_out_count(len(samples))
        fit = len(samples) - held_out
        record = {
            "source": source,
            "fit": fit,
            "verify": held_out,
            "verify_samples": list(range(fit, len(samples))),
        }
        return (
            samples[:fit],
            samples[fit:],
            f"{origin}: statistics fitted on {fit}, verified on the other {held_out}",
            record,
        )

    def measure(self, model: onnx.ModelProto | Path, what: str, early: bool = False) -> Errors:
        """The model's errors on every held-out sample. ``early``: first on a few of them,
        and a model already far outside the budget there (``EARLY_MARGIN`` times the
        tolerance) fails without running the rest: most of the budget's bisection steps that
        fail, fail by far."""
        feeds, reference = self.verify_feeds, self.reference
        with self.timer("onnxruntime"):
            if early and len(feeds) > 2 * EARLY_SAMPLES:
                model = (
                    self.runtime.save(model, "measured.onnx")
                    if not isinstance(model, Path)
                    else model
                )
                first = self.runtime.run(model, feeds[:EARLY_SAMPLES], what=what)
                errors = compare(
                    reference[:EARLY_SAMPLES], first, self.error_bound, self.output_names
                )
                if errors.rel_l2_error > EARLY_MARGIN * self.error_bound or self._top1_lost(
                    errors, len(feeds) / EARLY_SAMPLES
                ):
                    return dataclasses.replace(errors, ok=False)
                rest = self.runtime.run(model, feeds[EARLY_SAMPLES:], what=what)
                outputs = [*first, *rest]
            else:
                outputs = self.runtime.run(model, feeds, what=what)
            return compare(
                reference,
                outputs,
                self.error_bound,
                self.output_names,
                self.options.min_top1,
            )

    def _top1_lost(self, first: Errors, scale: float) -> bool:
        """Whether the disagreements on the first samples already exceed what --min-top1
        allows on all of them (``scale`` times as many): the whole measure cannot hold."""
        if self.options.min_top1 is None or first.top1_agreement is None:
            return False
        rows = first.top1_samples or 0
        lost = round((1 - first.top1_agreement) * rows)
        return lost > (1 - self.options.min_top1) * rows * scale + 1e-9

    # -- rank selection ----------------------------------------------------------------
    def trial(self, target: Target, factors: Factors | None) -> tuple[Edit, Errors]:
        with self.timer("factorization"):
            edit = self._edit(target, factors)
            candidate = apply_edits(self.light, [edit])
        errors = self.measure(candidate, f"verifying the rewrite of {target.node!r}")
        if factors is not None:
            self.log(
                f"{target.code} {target.node}: {factors.kind} rank {factors.rank}: proxy "
                f"{factors.proxy:.2e}, measured {errors.rel_l2_error:.2e}"
            )
        return edit, errors

    def _edit(self, target: Target, factors: Factors | None) -> Edit:
        return target.edit(factors, Names(self.light))

    def select(
        self, target: Target, budget: float, kinds: tuple[str, ...] = KINDS
    ) -> _Choice | str:
        """The cheapest confirmed choice within ``budget``, or why there is none."""
        with self.timer("factorization"):
            search = target.search(self.stats, kinds)
        if search is None:  # exact: nothing to search
            edit, errors = self.trial(target, None)
            return _Choice(target, None, edit, errors, budget)
        if self.options.rank is not None or self.options.ratio is not None:
            with self.timer("factorization"):
                fixed = search.fixed(self.options.rank, self.options.ratio)
            if fixed is None:
                return "the rank given by --rank/--ratio does not lower MACs"
            edit, errors = self.trial(target, fixed)
            return _Choice(target, fixed, edit, errors, budget, kinds)
        best: _Choice | None = None
        closest = math.inf
        tried: set[Any] = set()
        proxy_budget = MARGIN * budget
        for _ in range(MAX_TRIALS):
            with self.timer("factorization"):
                factors = search.cheapest(proxy_budget)
            if factors is None or factors.key in tried:
                break
            tried.add(factors.key)
            edit, errors = self.trial(target, factors)
            measured = errors.rel_l2_error
            closest = min(closest, measured)
            if errors.ok and measured <= budget:
                if best is None or factors.macs < best.factors.macs:  # type: ignore[union-attr]
                    best = _Choice(target, factors, edit, errors, budget, kinds)
                if measured >= budget / 2:
                    break
            if not math.isfinite(measured):
                proxy_budget /= 10
            elif factors.proxy <= 1e-9 or measured <= 1e-9:
                if best is not None:
                    break
                proxy_budget /= 10
            else:
                proxy_budget = MARGIN * budget * factors.proxy / measured
        if best is None and target.unsafe and math.isfinite(closest):
            return (
                f"{NO_SAVING} (unsafe: the best projection tried moved the outputs by "
                f"{closest:.2e} relative L2)"
            )
        return best if best is not None else NO_SAVING

    def combine(self, choices: dict[str, _Choice]) -> list[Skipped]:
        """Tighten or drop the worst choice until the model with all of them holds."""
        dropped: list[Skipped] = []
        fixed_rank = self.options.rank is not None or self.options.ratio is not None
        for _ in range(4 * len(choices) + 1):
            if not choices or fixed_rank:
                return dropped
            with self.timer("factorization"):
                combined = apply_edits(self.light, [c.edit for c in choices.values()])
            errors = self.measure(combined, "verifying the combined rewrites")
            if errors.ok:
                return dropped
            key, worst = max(choices.items(), key=lambda kv: kv[1].errors.rel_l2_error)
            self.log(f"combined error {errors.rel_l2_error:.2e}: tightening {worst.target.node}")
            retry = (
                None
                if worst.factors is None
                else self.select(worst.target, worst.budget / 2, worst.kinds)
            )
            if (
                isinstance(retry, _Choice)
                and retry.factors is not None
                and (worst.factors is None or retry.factors.key != worst.factors.key)
            ):
                choices[key] = retry
            else:
                del choices[key]
                dropped.append(
                    Skipped(
                        worst.target.code,
                        worst.target.node,
                        "dropped: together with the other rewrites it broke the tolerance",
                    )
                )
        return dropped

    # -- latency -----------------------------------------------------------------------
    def latency_target(self) -> tuple[latency.Target, Feed]:
        """What the latency is measured on, and the feed it times the whole models with (the
        first verification sample, repeated to ``--latency-batch``); a provider the runtime
        does not have, or a batch the model's fixed batch dim refuses, is bad input."""
        options = self.options
        if options.provider not in self.runtime.providers:
            raise UsageError(
                f"--provider {options.provider}: not available in this onnxruntime; "
                f"available: {', '.join(self.runtime.providers) or 'none'}"
            )
        feed = self.verify_feeds[0]
        if options.latency_batch is not None:
            declared = {v.name: _dims(v) for v in self.model.graph.input}
            try:
                feed = latency.batched_feed(feed, declared, options.latency_batch)
            except ValueError as exc:
                raise ModelError(
                    self.path, f"--latency-batch {options.latency_batch}: {exc}"
                ) from None
        threads = options.latency_threads or latency.default_threads()
        return latency.Target(threads, latency.feed_batch(feed), options.provider), feed

    def _time(
        self,
        models: list[Any],
        feed: Feed,
        budgets: tuple[float, float],
        resident: bool,
        what: str,
    ) -> Any:
        """The runtime's timings, or None when it refused a model (a kernel that only the
        timing's full graph optimization meets): latency is a report, never a reason to fail.
        A runtime that crashed or hung is another matter: that still ends the run."""
        target = self.target
        with self.timer("latency"):
            try:
                return self.runtime.time(
                    models,
                    feed,
                    target.threads,
                    target.provider,
                    latency.MIN_RUNS,
                    *budgets,
                    resident,
                    what=what,
                )
            except RuntimeFailure as exc:
                if not self.runtime.alive:
                    raise
                self.notes.append(f"latency not measured: {exc}")
                self.log(f"latency not measured: {exc}")
                return None

    def time_models(
        self, before: onnx.ModelProto | Path, after: onnx.ModelProto, what: str
    ) -> Latency | None:
        """Both models timed on the timing feed, interleaved."""
        before_bytes = latency.weight_bytes(self.light)
        resident = before_bytes + latency.weight_bytes(after) <= latency.RESIDENT_BYTES
        budgets = (latency.BUDGET, latency.CONFIRM_BUDGET)
        times = self._time([before, after], self.timing_feed, budgets, resident, what)
        if times is None:
            return None
        result = latency.summarize(*times, self.target, resident)
        self.log(f"{what}: {result.text()}")
        return result

    def time_rewrite(self, choice: _Choice) -> Latency | None:
        """The nodes a rewrite replaces against those it writes, cut out of the model; None
        when the region's inputs have no known static shape, and for a channel pruning (it
        narrows the producing conv too, so its nodes alone do not run on the same input: it
        is timed with the whole model)."""
        if choice.edit.narrow:
            return None
        light = self.light
        indices = sorted(choice.target.claims)
        before_nodes = [light.graph.node[i] for i in indices]
        after_nodes = [
            n for i in indices for n in choice.edit.replace.get(i, [light.graph.node[i]])
        ]
        outputs = latency.boundary_outputs(light, indices, self.output_names)
        weights = {t.name for t in light.graph.initializer}
        inputs: dict[str, latency.InputInfo] = {}
        produced = {out for node in before_nodes for out in node.output}
        # The graph's shapes have the verification samples' batch: the region's, the target's.
        sample_batch = latency.feed_batch(self.verify_feeds[0])
        for node in before_nodes:
            for tensor in node.input:
                if not tensor or tensor in weights or tensor in inputs or tensor in produced:
                    continue
                if tensor in self.graph.constants or tensor in self.graph.aliases:
                    continue  # a Constant (or an Identity of a weight): the region takes it along
                shape = self.graph.shape(tensor)
                if shape is None or not all(isinstance(d, int) for d in shape):
                    return None
                dims = tuple(int(d or 0) for d in shape)
                if dims and dims[0] == sample_batch:
                    dims = (self.target.batch, *dims[1:])
                dtype = self.graph.dtype(tensor) or onnx.TensorProto.FLOAT
                inputs[tensor] = latency.InputInfo(dims, dtype)
        types = {o: self.graph.dtype(o) or onnx.TensorProto.FLOAT for o in outputs}
        before = latency.region(light, before_nodes, outputs, inputs, types)
        after = latency.region(light, after_nodes, outputs, inputs, types, choice.edit.initializers)
        if before is None or after is None:
            return None
        feed = latency.random_feed(inputs, self.options.seed)
        what = f"timing the rewrite of {choice.target.node!r}"
        budgets = (latency.REWRITE_BUDGET, latency.REWRITE_CONFIRM_BUDGET)
        times = self._time([before, after], feed, budgets, True, what)
        if times is None:
            return None
        result = latency.summarize(*times, self.target, True)
        self.log(f"{choice.target.code} {choice.target.node}: alone, {result.text()}")
        return result

    def keep_faster(self, choices: dict[str, _Choice], report: ModelReport) -> list[Skipped]:
        """Time each rewrite not timed yet on its own. ``--objective latency``: drop those not
        faster with confidence; ``macs``: drop those slower with confidence."""
        by_latency = self.objective == "latency"
        dropped: list[Skipped] = []
        for key, choice in list(choices.items()):
            if choice.timed:
                continue
            choice.latency, choice.timed = self.time_rewrite(choice), True
            measured = choice.latency
            if measured is None:
                continue
            macs = self._macs_text(choice, report)
            if by_latency and not measured.faster:
                reason = (
                    f"dropped (--objective latency): {macs}, but its nodes are not faster with "
                    f"{latency.CONFIDENCE:.0%} confidence in onnxruntime: {measured.detail()}"
                )
            elif not by_latency and measured.slower:
                reason = (
                    f"dropped: {macs}, but its nodes run slower in onnxruntime "
                    f"({latency.CONFIDENCE:.0%} confidence): {measured.detail()}"
                )
            else:
                continue
            del choices[key]
            dropped.append(Skipped(choice.target.code, choice.target.node, reason))
        return dropped

    def _macs_text(self, choice: _Choice, report: ModelReport) -> str:
        before = report.cost
        assert before is not None
        old = _sum_macs([before.nodes[n] for n in choice.target.replaced_nodes()])
        new: int | None = None
        if choice.factors is not None:
            new = choice.factors.macs
        else:
            new = choice.target.exact_macs(self.graph)
        if old is None or new is None:
            return "it lowers MACs"
        return f"it lowers MACs {old:,} -> {new:,}"

    # -- closing the loop --------------------------------------------------------------
    def recheck(self, choices: dict[str, _Choice], report: ModelReport) -> list[Skipped]:
        """Lint the rewritten model; a rewrite whose new nodes a rule flags is tried in the
        other factored forms, else dropped. Returns the drops; replaced choices are untimed."""
        dropped: list[Skipped] = []
        if not choices:
            return dropped
        with self.timer("analysis"):
            combined = apply_edits(self.light, [c.edit for c in choices.values()])
            graph = self.graph
            after = self._lint(combined)
            self.graph = graph  # the original's, for shapes of the original tensors
        owner = {name: key for key, c in choices.items() for name in c.edit.new_nodes}
        flagged: dict[str, list[Any]] = {}
        for finding in after.findings:
            if finding.node in owner:
                flagged.setdefault(owner[finding.node], []).append(finding)
        before = {(f.code, f.node) for f in report.findings}
        for finding in after.findings:
            if finding.node not in owner and (finding.code, finding.node) not in before:
                self.log(
                    f"after the rewrites {finding.code} flags {finding.node}: {finding.message}"
                )
        for key, findings in flagged.items():
            choice = choices[key]
            first = findings[0]
            self.log(
                f"{choice.target.code} {choice.target.node}: {first.code} would flag "
                f"{first.node} ({first.message})"
            )
            kind = choice.factors.kind if choice.factors is not None else None
            remaining = tuple(k for k in choice.kinds if k != kind)
            if choice.target.other_forms and remaining:
                retry = self.select(choice.target, choice.budget, remaining)
                if isinstance(retry, _Choice):
                    choices[key] = retry
                    continue
            del choices[key]
            dropped.append(
                Skipped(
                    choice.target.code,
                    choice.target.node,
                    f"dropped: `convlint check` would flag what it writes ({first.code} on "
                    f"{first.node!r}: {first.message})",
                )
            )
        return dropped

    # -- the run -------------------------------------------------------------------------
    def run(self, progress: Callable[[Sequence[Target]], Any] | None = None) -> FixResult:
        options = self.options
        report, targets, skipped = self.analyze()
        result = FixResult(
            report,
            str(options.output),
            reported_tolerance(options),
            options.method,
            skipped=skipped,
            objective=self.objective,
            bound=dict(self.dims_bound),
        )
        fit, self.verify_feeds, result.inputs, result.calibration = self.feeds()
        try:
            with Runtime(options.timeout) as self.runtime:
                self._run(result, report, targets, fit, progress)
                result.peak_memory["onnxruntime"] = self.runtime.peak_memory()
        finally:
            result.timings = dict(self.timings)
            result.peak_memory["fix"] = peak_rss()
            report.notes.extend(self.notes)
        return result

    def _run(
        self,
        result: FixResult,
        report: ModelReport,
        targets: list[Target],
        fit: list[Feed],
        progress: Callable[[Sequence[Target]], Any] | None,
    ) -> None:
        options = self.options
        self.target, self.timing_feed = self.latency_target()
        with self.timer("onnxruntime"):
            # Every large weight moves to the runtime's folder, once: from here on the model
            # in memory is the graph alone ("light"), and requests carry only what changed.
            weightstore.stage(self.model, self.store, self.runtime.folder / WEIGHTS_FILE)
            self.light = self.model
            self.original = self.runtime.save(self.light, "original.onnx")
            self.reference: list[Outputs] = self.runtime.run(
                self.original, self.verify_feeds, what="running the original model"
            )
        self.output_names = [o.name for o in self.light.graph.output]
        if options.min_top1 is not None and not class_outputs(self.reference[0]):
            raise UsageError(
                "--min-top1: no output of the model looks like class scores (a float output "
                "of shape (N, K), K >= 2, one row per sample)"
            )
        # A NaN or an infinity in the reference hides any difference: nothing to verify.
        broken = not_finite(self.reference, self.output_names, "the original model")
        if broken is not None:
            result.verification = broken
            return
        self.stats = None
        lossy = [t for t in targets if t.lossy]
        if lossy and self.samples is None and not options.allow_noise:
            result.skipped.extend(Skipped(t.code, t.node, NEEDS_DATA) for t in lossy)
            self.notes.append(
                f"{_count(len(lossy), 'approximate rewrite')} not applied: no --inputs "
                "(generated noise would fit and verify them on data the model never sees)"
            )
            lossy = []
        if options.method != "weight" and lossy:
            tensors = list(dict.fromkeys(t for target in lossy for t in target.stat_tensors()))
            with self.timer("onnxruntime"):
                self.stats = collect_statistics(self.runtime, self.light, tensors, fit)
        fixed_rank = options.rank is not None or options.ratio is not None
        # Exact rewrites first (and every rewrite at a rank the user fixed), one at a time.
        one_by_one = [t for t in targets if not t.lossy or (fixed_rank and t in lossy)]
        budget = layer_budget(self.error_bound) / math.sqrt(max(len(lossy), 1))
        choices: dict[str, _Choice] = {}
        for target in progress(one_by_one) if progress else one_by_one:
            self._settle_one(target, self.select(target, budget), choices, result, report)
        if lossy and not fixed_rank:
            choices.update(self.spend_budget(lossy, choices, fit, result, report))
        result.latency = self.settle(choices, result, report)
        with self.timer("factorization"):
            combined = apply_edits(self.light, [c.edit for c in choices.values()])
        result.cost_after = recount(combined, self.bound, self.path)
        result.rewrites = [self._rewrite(c, report, result.cost_after) for c in choices.values()]
        result.verification, result.written = self.write(combined)

    def _settle_one(
        self,
        target: Target,
        choice: _Choice | str,
        choices: dict[str, _Choice],
        result: FixResult,
        report: ModelReport,
    ) -> None:
        if isinstance(choice, _Choice):
            choices[_key(target)] = choice
            return
        reason = choice
        if choice == NO_SAVING:
            reason += _retrained_hint(report, target)
        result.skipped.append(Skipped(target.code, target.node, reason))

    # -- one budget for the whole model (``budget``) -----------------------------------
    def spend_budget(
        self,
        lossy: list[Target],
        exact: dict[str, _Choice],
        fit: list[Feed],
        result: FixResult,
        report: ModelReport,
    ) -> dict[str, _Choice]:
        """Every lossy rewrite's rank, chosen together: the most aggressive allocation on the
        path of ``budget.allocation_path`` whose whole model holds the tolerance (and
        --min-top1) on the held-out samples, each layer refitted to the original response."""
        searches: dict[str, tuple[Target, Curve]] = {}
        curves: dict[str, list[Candidate]] = {}
        baselines: dict[str, int] = {}
        with self.timer("factorization"):
            for target in lossy:
                key = _key(target)
                curve = target.curve(
                    self.stats, self.options.method, self.options.min_saving, self._widening()
                )
                if not curve.candidates:
                    self._settle_one(target, NO_SAVING, {}, result, report)
                    continue
                searches[key], curves[key] = (target, curve), curve.candidates
                baselines[key] = curve.baseline
        fixed = [c.edit for c in exact.values()]
        tried: dict[Any, tuple[dict[str, _Choice], Errors]] = {}
        closest: dict[str, float] = {}  # the least error of an allocation with the target

        def holds(allocation: Allocation) -> bool:
            chosen = self.build(allocation, searches, fit, fixed)
            with self.timer("factorization"):
                combined = apply_edits(self.light, [*fixed, *(c.edit for c in chosen.values())])
            errors = self.measure(
                combined, "verifying an allocation of the error budget", early=True
            )
            tried[key_of(allocation)] = (chosen, errors)
            for key in allocation:
                closest[key] = min(closest.get(key, math.inf), errors.rel_l2_error)
            with self.timer("analysis"):
                after, before = recount(combined, self.bound, self.path).macs, report.cost
            saving = (
                f"MACs {before.macs:,} -> {after:,}"
                if before is not None and before.macs is not None and after is not None
                else "MACs not known"
            )
            top1 = errors.top1_agreement
            agreement = "" if top1 is None else f", top-1 {top1:.3f} of {errors.top1_samples}"
            self.log(
                f"budget: {len(allocation)} rewrites, {saving}: rel L2 "
                f"{errors.rel_l2_error:.2e}{agreement} [{'ok' if errors.ok else 'over'}]"
            )
            return errors.ok

        best = spend(curves, baselines, holds, self.log)
        chosen = tried[key_of(best)][0] if best else {}
        for key, (target, _) in searches.items():
            if key not in chosen:
                reason = NO_SAVING if not best else OUT_OF_BUDGET
                if target.unsafe and math.isfinite(closest.get(key, math.inf)):
                    reason = (
                        f"{reason} (unsafe: the best projection tried moved the outputs by "
                        f"{closest[key]:.2e} relative L2)"
                    )
                self._settle_one(target, reason, {}, result, report)
        for key, choice in chosen.items():  # each rewrite's own error, alone
            with self.timer("factorization"):
                alone = apply_edits(self.light, [choice.edit])
            what = f"verifying the rewrite of {choice.target.node!r}"
            chosen[key] = dataclasses.replace(choice, errors=self.measure(alone, what))
        return chosen

    def build(
        self,
        allocation: Allocation,
        searches: dict[str, tuple[Target, Curve]],
        fit: list[Feed],
        fixed: list[Edit],
    ) -> dict[str, _Choice]:
        """The rewrites of one allocation, refitted (data-aware) to the original response."""
        chosen: dict[str, _Choice] = {}
        with self.timer("factorization"):
            for key, candidate in allocation.items():
                target, curve = searches[key]
                cached = self._factors.get((key, candidate.kind, candidate.rank))
                if cached is None:
                    cached = curve.at(candidate.kind, candidate.rank)
                    self._factors[(key, candidate.kind, candidate.rank)] = cached
                edit = self._edit(target, cached)
                chosen[key] = _Choice(
                    target, cached, edit, UNMEASURED, layer_budget(self.error_bound)
                )
        if self.stats is not None and fit:
            for _ in range(REFIT_ROUNDS):
                self.refit(chosen, fit, fixed)
        return chosen

    def refit(self, chosen: dict[str, _Choice], fit: list[Feed], fixed: list[Edit]) -> None:
        """One round of response reconstruction (``budget``): each chosen conv refitted, from
        the inputs the model with every rewrite produces to the original model's response
        (after its ReLU), where that lowers the layer's error on the sampled pixels. An
        ``svd-expand`` form is refitted whole (``reduced_rank_refit``), other forms in their
        last conv (``refit``)."""
        jobs = [
            (key, job)
            for key, choice in chosen.items()
            if (job := choice.target.refit_job(choice.edit, choice.factors, len(fit)))
        ]
        if not jobs:
            return
        missing = [(key, job) for key, job in jobs if (key, job.output) not in self._responses]
        if missing:
            with self.timer("onnxruntime"):
                specs = [job.output for _, job in missing]
                found = self.runtime.sample(
                    probe(self.light, (spec.tensor for spec in specs)),
                    fit,
                    specs,
                    "sampling the original",
                )
            for (key, job), rows in zip(missing, found, strict=True):
                self._responses[(key, job.output)] = rows
        with self.timer("factorization"):
            model = apply_edits(self.light, [*fixed, *(c.edit for c in chosen.values())])
        specs = [spec for _, job in jobs for spec in (job.features, job.output)]
        with self.timer("onnxruntime"):
            sampled = self.runtime.sample(
                probe(model, (spec.tensor for spec in specs)),
                fit,
                specs,
                "sampling the rewritten model",
            )
        # A conv whose output channels another rewrite prunes is fitted on the kept ones.
        narrowed = {
            pruned.producer_output: list(c.factors.kept)
            for c in chosen.values()
            if (pruned := c.target.pruned(c.factors)) is not None
            and c.factors is not None
            and c.factors.kept is not None
        }
        with self.timer("factorization"):
            for index, (key, job) in enumerate(jobs):
                features, current = sampled[2 * index], sampled[2 * index + 1]
                choice, target, factors = chosen[key], job.target, job.factors
                response = self._responses[(key, job.output)]
                kept = narrowed.get(job.output.tensor)
                if kept is not None:
                    response = response[:, kept]
                last = factors.weights[-1]
                if job.whole:
                    matrix = target.weight.reshape(target.site.cout, -1)
                    responses = features.astype(np.float64) @ matrix.T
                    rank = int(last.shape[1])
                    b, a, bias = reduced_rank_refit(responses, response, rank, target.relu)
                    prediction = responses @ (b @ a).T + bias
                    b, bias = _widen(b, bias, kept, target.site.cout)
                    if b.shape[1] < rank:  # fewer kept channels than the rank: pad with zeros
                        b = np.pad(b, ((0, 0), (0, rank - b.shape[1])))
                        a = np.pad(a, ((0, rank - a.shape[0]), (0, 0)))
                    weights = [
                        (a @ matrix).reshape(factors.weights[0].shape),
                        b.reshape(last.shape),
                    ]
                else:
                    weight, bias = refit(features, response, target.relu)
                    prediction = features.astype(np.float64) @ weight.T + bias
                    weight, bias = _widen(weight, bias, kept, target.site.cout)
                    weights = [*factors.weights[:-1], weight.reshape(last.shape)]
                before = relative_error(current, response, target.relu)
                after = relative_error(prediction, response, target.relu)
                self.log(f"refit {target.node}: sampled error {before:.3e} -> {after:.3e}")
                if not after < before:
                    continue
                refitted = dataclasses.replace(
                    factors, weights=weights, bias=bias, method="data-aware"
                )
                chosen[key] = dataclasses.replace(
                    choice, factors=refitted, edit=self._edit(target, refitted)
                )

    def settle(
        self, choices: dict[str, _Choice], result: FixResult, report: ModelReport
    ) -> Latency | None:
        """Time, verify and re-lint until the set of rewrites is stable; the whole models'
        latency at the end (None with --no-latency or no rewrite)."""
        by_latency = self.objective == "latency"
        measured: Latency | None = None
        for _ in range(MAX_ROUNDS + len(choices)):
            if self.options.latency:
                result.skipped.extend(self.keep_faster(choices, report))
            result.skipped.extend(self.combine(choices))
            before = {key: id(choice) for key, choice in choices.items()}
            result.skipped.extend(self.recheck(choices, report))
            if {key: id(choice) for key, choice in choices.items()} != before:
                continue  # a rewrite changed form or was dropped: time and verify again
            if not choices or not self.options.latency:
                return None
            with self.timer("factorization"):
                combined = apply_edits(self.light, [c.edit for c in choices.values()])
            measured = self.time_models(self.original, combined, "timing the models")
            if measured is None or (measured.faster if by_latency else not measured.slower):
                return measured
            # Not faster as a whole (latency), or slower (macs): drop the rewrite that gained
            # least on its own.
            key, least = max(
                choices.items(),
                key=lambda kv: kv[1].latency.ratio if kv[1].latency is not None else 1.0,
            )
            del choices[key]
            why = (
                "dropped (--objective latency): the rewritten model is not faster with "
                f"{latency.CONFIDENCE:.0%} confidence"
                if by_latency
                else f"dropped: the rewritten model runs slower ({latency.CONFIDENCE:.0%} "
                "confidence)"
            )
            result.skipped.append(
                Skipped(
                    least.target.code,
                    least.target.node,
                    f"{why}: {measured.detail()}; this rewrite gained least on its own",
                )
            )
        return measured

    def _rewrite(self, choice: _Choice, report: ModelReport, after: ModelCost) -> Rewrite:
        before = report.cost
        assert before is not None
        old = [before.nodes[n] for n in choice.target.replaced_nodes()]
        new = [after.nodes[n] for n in choice.edit.new_nodes if n in after.nodes]
        factors = choice.factors
        kept = None
        pruned = choice.target.pruned(factors)
        if factors is not None and factors.kept is not None and pruned is not None:
            kept = list(factors.kept)
            producer = pruned.producer
            if producer in after.nodes:  # narrowed in place, not rewritten by another finding
                old.append(before.nodes[producer])
                new.append(after.nodes[producer])
        rank = None if factors is None else factors.rank
        return Rewrite(
            code=choice.target.code,
            node=choice.target.node,
            kind=choice.target.kind if factors is None else factors.kind,
            method="weight" if factors is None else factors.method,
            rank=list(rank) if isinstance(rank, tuple) else rank,
            params_before=sum(c.params for c in old),
            params_after=sum(c.params for c in new),
            macs_before=_sum_macs(old),
            macs_after=_sum_macs(new),
            verified=choice.errors,
            unsafe=choice.target.unsafe,
            latency=choice.latency,
            kept_channels=kept,
        )

    def write(self, model: onnx.ModelProto) -> tuple[Errors, bool]:
        """Save beside OUT, check, verify from the file; move into place only if it holds."""
        assert self.options.output is not None
        out = self.options.output
        target = write_target(out)  # a symlink's target: the link stays a link
        try:
            folder = Path(tempfile.mkdtemp(prefix=".convlint-fix-", dir=target.parent))
        except OSError as exc:
            raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
        try:
            staged = folder / target.name
            previous = self._previous_data(target)
            data_name = free_data_name(target) if self.external else None
            with self.timer("writing"):
                fill_output_types(model, self.path)
                try:
                    weightstore.save(model, staged, self.runtime.folder, data_name)
                    if data_name is not None:
                        os.chmod(folder / data_name, _mode(previous, target))
                        if (folder / data_name).stat().st_size == 0:
                            # every weight is small enough to stay inline
                            (folder / data_name).unlink()
                            data_name = None
                    os.chmod(staged, new_file_mode(target))
                except OSError as exc:
                    raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
                # In the runtime's process: the checker reads the whole file, twice over.
                problem = self.runtime.check(staged)
                if problem:
                    raise ModelError(
                        self.path, f"the rewritten model fails onnx.checker: {problem}"
                    )
            errors = self.measure(staged, "verifying the written model")
            if not errors.ok:
                return errors, False
            keep = set() if same_file(target, self.path) else set(self.data_files)
            obsolete = [p for p in previous if named_after(p, target) and p not in keep]
            with self.timer("writing"):
                try:
                    staged_data = None if data_name is None else folder / data_name
                    _move_into_place(staged, staged_data, target, obsolete)
                except OSError as exc:
                    raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
            return errors, True
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _previous_data(self, target: Path) -> list[Path]:
        """The data files of the model OUT replaces (MODEL's own with --in-place)."""
        if same_file(target, self.path):
            return list(self.data_files)
        if not target.is_file():
            return []
        try:
            old = weightstore.read_graph(target)
        except ModelError:  # not a model: it has no data files to replace
            return []
        return external_data_files(old, target)


def free_data_name(out: Path) -> str:
    """The first of ``OUT.data``, ``OUT.1.data``, ... that no file in OUT's folder has."""
    for count in range(1000):
        name = f"{out.name}.data" if count == 0 else f"{out.name}.{count}.data"
        if not os.path.lexists(out.parent / name):
            return name
    raise UsageError(f"{out}: cannot write: {out.name}.data to .999.data all exist already")


def named_after(data: Path, out: Path) -> bool:
    """A data file `fix` (or onnx's default naming) would have written for OUT: removing it
    when OUT stops using it cannot take the weights of another model."""
    same_folder = os.path.realpath(data.parent) == os.path.realpath(out.parent)
    return same_folder and bool(re.fullmatch(re.escape(out.name) + r"(\.[0-9]+)?\.data", data.name))


def _mode(previous: Sequence[Path], out: Path) -> int:
    """The mode of a new data file: the replaced data file's, else OUT's."""
    for data in previous:
        with contextlib.suppress(OSError):
            return data.stat().st_mode & 0o777
    return new_file_mode(out)


def _move_into_place(
    staged: Path, staged_data: Path | None, out: Path, obsolete: Sequence[Path]
) -> None:
    """Rename the staged model over OUT, its new data file in beside it first.

    The data file's name is one no file had, so the model's rename is the single step that
    switches OUT (MODEL itself with --in-place) from the whole old pair to the whole new one:
    interrupted before it, OUT is the old model with its old data and the new data file is
    removed again; after it, the old data files (``obsolete``) are removed.
    """
    fsync_file(staged)
    if staged_data is None:
        os.replace(staged, out)
    else:
        fsync_file(staged_data)
        data = out.parent / staged_data.name
        _create_from(staged_data, data)
        try:
            os.replace(staged, out)
        except BaseException:
            data.unlink(missing_ok=True)
            raise
    fsync_folder(out.parent)
    for old in obsolete:
        with contextlib.suppress(OSError):
            old.unlink()


def _create_from(source: Path, path: Path) -> None:
    """Give ``source``'s file the new name ``path``, never replacing a file of that name."""
    try:
        os.link(source, path)  # fails with FileExistsError rather than replace
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path)) from None
        os.rename(source, path)


def _widen(rows: Array, bias: Array, kept: list[int] | None, count: int) -> tuple[Array, Array]:
    """Rows fitted for the ``kept`` output channels back in place among ``count`` (zeros for
    the others, which the pruning of the consumer slices away)."""
    if kept is None:
        return rows, bias
    full = np.zeros((count, *rows.shape[1:]))
    full[kept] = rows
    full_bias = np.zeros(count)
    full_bias[kept] = bias
    return full, full_bias


def _key(target: Target) -> str:
    return f"{target.code}:{target.node}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """The declared dims; a dim_value of -1 or 0 and a dim_param of "?" (paddle2onnx writes
    both for "any size") are free dims without a name, as an absent one: two "?" dims need
    not be equal."""
    return [
        (d.dim_value if d.dim_value > 0 else None)
        if d.HasField("dim_value")
        else (d.dim_param if d.dim_param not in ("", "?") else None)
        for d in value.type.tensor_type.shape.dim
    ]


def _sum_macs(costs: Sequence[Any]) -> int | None:
    values = [c.macs for c in costs]
    return None if any(v is None for v in values) else sum(values)


def _retrained_hint(report: ModelReport, target: Target) -> str:
    finding = next(
        (f for f in report.findings if f.code == target.code and f.node == target.node), None
    )
    est = finding.estimate if finding else None
    if est is None:
        return ""
    text = (
        f"; a retrained bottleneck would save params {est.params_before:,} -> {est.params_after:,}"
    )
    if est.macs_before is not None and est.macs_after is not None:
        text += f", MACs {est.macs_before:,} -> {est.macs_after:,}"
    return text


def _progress_bar(enabled: bool) -> Callable[[Sequence[Target]], Any] | None:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def wrap(targets: Sequence[Target]) -> Any:
        return tqdm(targets, desc="convlint fix", unit="rewrite", file=sys.stderr, leave=False)

    return wrap


def fix(
    path: str | Path,
    registry: Registry,
    settings: Settings,
    options: FixOptions,
    verbose: bool = False,
) -> FixResult:
    """Run `convlint fix` on one model; raises ConvlintError for bad input."""
    path = Path(path)
    if options.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}")
    if options.tolerance is not None and not 0 < options.tolerance < math.inf:
        raise UsageError("--tolerance must be a finite positive number")
    if not 0 <= options.min_saving < 1:
        raise UsageError("--min-saving must be in [0, 1) (a share of the layer's MACs)")
    if options.rank is not None and options.rank < 1:
        raise UsageError("--rank must be at least 1")
    if options.ratio is not None and not 0 < options.ratio <= 1:
        raise UsageError("--ratio must be in (0, 1]")
    if options.samples is not None and not 1 <= options.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be from 1 to {MAX_SAMPLES:,}")
    if options.objective is not None and options.objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if options.objective == "latency" and not options.latency:
        raise UsageError("--objective latency needs the timing that --no-latency turns off")
    if options.min_top1 is not None and not 0 <= options.min_top1 <= 1:
        raise UsageError("--min-top1 must be in [0, 1] (a share of the held-out samples)")
    for name, value in (
        ("--latency-threads", options.latency_threads),
        ("--latency-batch", options.latency_batch),
    ):
        if value is not None and (type(value) is not int or value < 1):
            raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")
    if not isinstance(options.provider, str) or not options.provider:
        raise UsageError(
            f"--provider must name an onnxruntime execution provider, not {options.provider!r}"
        )
    if options.preprocess is not None:
        parse_preprocess(options.preprocess)  # a bad spec is a usage error before any work
    if not 0 < options.timeout < math.inf:
        raise UsageError("--timeout must be a positive number of seconds")
    # Here rather than only in the CLI, so that no caller can overwrite MODEL by accident.
    output = resolve_output(path, options.output, options.in_place)
    options = dataclasses.replace(options, output=output)

    def log(message: str) -> None:
        if verbose:
            print(f"convlint fix: {message}", file=sys.stderr)

    if not options.latency and options.objective is None:
        options = dataclasses.replace(options, objective="macs")
    # Runs that replace the same file take turns (concurrent `fix --in-place`).
    with exclusive_lock(write_target(output)):
        fixer = Fixer(path, registry, settings, options, log)
        return fixer.run(_progress_bar(sys.stderr.isatty() and not verbose))
