"""Stage 5: `convlint fix`: findings -> rewrites at chosen ranks -> verified model -> OUT.

1. Analysis: the model is read once, with its weights (external data only after its locations
   were checked), and linted as by ``check`` (symbolic dims bound by ``--input-shape``, else by
   the verifier's defaults, so MACs are exact; shapes inferred on a copy without the weight
   values); every selected finding is planned as a target or skipped with a reason
   (``plan.plan``).
2. Rank selection, per lossy target, against a share ``T/√n`` of the tolerance (errors of n
   independent rewrites add roughly in quadrature at the outputs): the factorizer proposes the
   form with the fewest MACs whose cheap proxy error fits the budget; onnxruntime confirms it on
   the whole model's outputs; the ratio between measured and proxy error recalibrates the
   proxy budget and the search repeats a few times, keeping the cheapest confirmed choice.
   ``--rank``/``--ratio`` replace the search by a fixed rank.
3. The combination is verified end to end; while it breaks the tolerance, the rewrite that moved
   the outputs most gets half its budget (or is dropped).
4. The model is written beside OUT, checked with ``onnx.checker`` (full check), verified again
   from the file, and only then moved over OUT. Its external data, if any, goes under a name no
   file has yet (``OUT.data``, else ``OUT.1.data``, ...), so that the rename of the model is the
   one step that replaces the old model and its data by the new pair; the old data file is
   removed after that rename. Replaced files keep their modes; a symlink OUT stays a link and
   its target is replaced.

The data-aware method fits its statistics on the first half of the inputs and verifies on the
other half; the weight method verifies on all of them.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from convlint import loader
from convlint.atomic import fsync_file, fsync_folder, new_file_mode, special_kind, write_target
from convlint.cost import ModelCost, model_cost
from convlint.engine import ModelReport, Settings, lint
from convlint.errors import ModelError, UsageError
from convlint.factorize import Array, Factors
from convlint.fixreport import DEFAULT_SAMPLES, METHODS
from convlint.graph import build_graph
from convlint.paths import external_data_files
from convlint.plan import NotRewritable, plan
from convlint.registry import Registry
from convlint.rewrite import (
    Edit,
    FactorTarget,
    FoldTarget,
    Names,
    PoolTarget,
    Target,
    Weights,
    apply_edits,
)
from convlint.verify import (
    Errors,
    Feed,
    InputSpec,
    Outputs,
    Runtime,
    bind_dims,
    compare,
    not_finite,
)

MARGIN = 0.8  # aim the proxy below the budget: the proxy is an estimate
MAX_TRIALS = 4  # onnxruntime confirmations per rewrite during rank selection
NO_SAVING = "no rank within tolerance lowers MACs"
KIND_ORDER = {"fold": 0, "pool-projection": 1, "factorize": 2}  # exact rewrites claim first


@dataclass
class FixOptions:
    output: Path | None  # None: MODEL itself, with in_place
    in_place: bool = False
    tolerance: float = 1e-3
    method: str = "data-aware"
    rank: int | None = None
    ratio: float | None = None
    inputs: Path | None = None
    samples: int = DEFAULT_SAMPLES
    timeout: float = 300.0
    unsafe_fixes: bool = False
    seed: int = 0


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

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["verified"] = self.verified.as_dict()
        data.pop("unsafe")
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
    tolerance: float
    method: str
    rewrites: list[Rewrite] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verification: Errors | None = None
    cost_after: ModelCost | None = None
    written: bool = False
    inputs: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Choice:
    target: Target
    factors: Factors | None  # None for an exact fold
    edit: Edit
    errors: Errors
    budget: float


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


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def resolve_output(model: Path, output: Path | None, in_place: bool) -> Path:
    if output is None:
        if not in_place:
            raise UsageError("fix needs -o OUT (or --in-place to overwrite MODEL)")
        return model
    if _same_file(output, model) and not in_place:
        raise UsageError(f"-o {output} is the input model; pass --in-place to overwrite it")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: no such folder {str(output.parent)!r}")
    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give the file to write")
    kind = special_kind(write_target(output))
    if kind is not None:  # a rename would replace the device node; OUT.data cannot go beside it
        raise UsageError(f"-o {output} is {kind}, not a regular file; give the file to write")
    return output


def _read_with_weights(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """The model with every weight in memory, and the external data files it was read from."""
    model = loader.read_model(path)
    loader.check_external_locations(model, path)
    loader.validate(model, path)
    folder = path.resolve().parent
    data_files = external_data_files(model, path)
    for data in data_files:
        if not data.is_file():
            raise ModelError(path, f"external data file {data} is missing (or not a file)")
    if data_files:
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:  # OSError, ValueError, onnx's ValidationError
            message = " ".join(str(exc).split())[:300]
            raise ModelError(path, f"cannot read external data: {message}") from None
    check_weight_sizes(model, path)
    return model, data_files


_FOUR_BIT = {
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, name)
}


def check_weight_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Every stored tensor holds as many values as its dims say (else numpy fails deep in a
    rewrite, or onnxruntime refuses the model)."""
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
            continue
        count = math.prod(tensor.dims)
        dims = "x".join(map(str, tensor.dims)) or "a scalar"
        name = tensor.name or "(unnamed)"
        if tensor.HasField("raw_data"):
            if tensor.data_type in _FOUR_BIT:
                expected = (count + 1) // 2
            else:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
                expected = count * itemsize
            if len(tensor.raw_data) != expected:
                raise ModelError(
                    path,
                    f"tensor {name!r} holds {len(tensor.raw_data)} bytes of data, but its "
                    f"dims ({dims}) need {expected}",
                )
            continue
        field_name = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        values = len(getattr(tensor, field_name))
        if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            values //= 2
        elif tensor.data_type in _FOUR_BIT:
            count = (count + 1) // 2
        if values != count and not (values == 0 and count == 0):
            raise ModelError(
                path, f"tensor {name!r} holds {values} values, but its dims ({dims}) need {count}"
            )


def _refuse_overwriting_data(path: Path, out: Path, data_files: Sequence[Path]) -> None:
    """OUT and OUT.data must not land on MODEL's external data, unless they replace MODEL."""
    if _same_file(out, path):
        return
    for written in (out, out.with_name(f"{out.name}.data")):
        for data in data_files:
            if _same_file(written, data):
                raise UsageError(f"-o {out} would overwrite {data}, the external data of {path}")


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


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without large weight values (shapes kept): enough for inference and costs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if math.prod(tensor.dims) > 1024 and tensor.data_type in (1, 10, 11, 16):
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
    loader.bind_input_shapes(skeleton, bound, path)
    return model_cost(build_graph(loader.infer_shapes(skeleton, path)))


def _moments(arrays: Sequence[np.ndarray[Any, Any]]) -> tuple[Array, Array]:
    """E[x xᵀ] and E[x] over the channel axis (1) of NC... activations."""
    channels = arrays[0].shape[1]
    moment, total, count = np.zeros((channels, channels)), np.zeros(channels), 0
    for array in arrays:
        flat = np.moveaxis(array, 1, 0).reshape(channels, -1).astype(np.float64)
        moment += flat @ flat.T
        total += flat.sum(axis=1)
        count += flat.shape[1]
    return moment / max(count, 1), total / max(count, 1)


def collect_statistics(
    runtime: Runtime,
    model: onnx.ModelProto,
    tensors: Sequence[str],
    elem_types: dict[str, int],
    feeds: Sequence[Feed],
) -> dict[str, Array]:
    """Second moments (and means) of intermediate tensors, run as extra graph outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for tensor in tensors:
        if tensor not in outputs:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, elem_types.get(tensor, 1), None)
            )
    results = runtime.run(probe, feeds, list(tensors), what="collecting activation statistics")
    stats: dict[str, Array] = {}
    for index, tensor in enumerate(tensors):
        stats[tensor], stats[f"{tensor}#mean"] = _moments([r[index] for r in results])
    return stats


class Fixer:
    """One `fix` run: holds the model, the runtime and the reference outputs."""

    def __init__(
        self, path: Path, registry: Registry, settings: Settings, options: FixOptions, log: Log
    ) -> None:
        self.path = path
        self.registry = registry
        self.settings = settings
        self.options = options
        self.log = log
        self.timings: dict[str, float] = {}
        self.timer = _Timer(self.timings)

    # -- analysis ----------------------------------------------------------------------
    def analyze(self) -> tuple[ModelReport, list[Target], list[Skipped]]:
        with self.timer("analysis"):
            self.original, data_files = _read_with_weights(self.path)
            self.data_files = data_files
            self.external = bool(data_files)
            assert self.options.output is not None
            _refuse_overwriting_data(self.path, self.options.output, data_files)
            self.specs, self.bound = input_specs(self.original, self.settings.input_shapes)
            # The user's bindings too: one naming no input is an error, as in `check`.
            shapes = {**self.settings.input_shapes, **self.bound}
            settings = dataclasses.replace(self.settings, input_shapes=shapes)
            # Linted as by `check`, on the model read above (weights left out of inference).
            skeleton = _skeleton(self.original)
            notes = loader.bind_input_shapes(skeleton, shapes, self.path)
            inferred = loader.infer_shapes(skeleton, self.path)
            report = ModelReport(path=str(self.path))
            loaded = loader.LoadedModel(str(self.path), inferred, notes)
            self.graph = lint(report, loaded, self.registry, settings)
            weights = Weights(self.original)
            static = not any(
                isinstance(d, str) or d is None for v in self.original.graph.input for d in _dims(v)
            )
            targets: list[Target] = []
            skipped: list[Skipped] = []
            for finding in report.findings:
                try:
                    targets.append(plan(finding, self.graph, weights, static))
                except NotRewritable as exc:
                    skipped.append(Skipped(finding.code, finding.node, str(exc)))
            claimed: dict[int, Target] = {}
            kept = []
            for target in sorted(targets, key=lambda t: KIND_ORDER[t.kind]):
                overlap = [claimed[i] for i in target.claims if i in claimed]
                if overlap:
                    other = overlap[0]
                    reason = f"overlaps the {other.code} rewrite of {other.node!r}"
                    skipped.append(Skipped(target.code, target.node, reason))
                elif target.unsafe and not self.options.unsafe_fixes:
                    skipped.append(
                        Skipped(
                            target.code,
                            target.node,
                            "unsafe fix: a consumer of the concat is nonlinear in the pooled "
                            "channels; pass --unsafe-fixes to apply it",
                        )
                    )
                else:
                    kept.append(target)
                    claimed.update(dict.fromkeys(target.claims, target))
        return report, kept, skipped

    # -- inputs ------------------------------------------------------------------------
    def feeds(self) -> tuple[list[Feed], list[Feed], str]:
        """(fit, verify) samples and a description for the report."""
        from convlint.verify import load_feeds, random_feeds

        if self.options.inputs is not None:
            samples = load_feeds(self.options.inputs, self.specs)
            origin = f"{_count(len(samples), 'sample')} from {self.options.inputs}"
        else:
            samples = random_feeds(self.specs, self.options.samples, self.options.seed)
            origin = _count(len(samples), "seeded random sample")
        if self.options.method == "weight":
            return samples, samples, origin
        if len(samples) < 2:
            return samples, samples, f"{origin}: statistics fitted and verified on the same one"
        half = len(samples) // 2
        return (
            samples[:half],
            samples[half:],
            (f"{origin}: statistics fitted on {half}, verified on the other {len(samples) - half}"),
        )

    def measure(self, model: onnx.ModelProto | Path, what: str) -> Errors:
        with self.timer("verification"):
            outputs = self.runtime.run(model, self.verify_feeds, what=what)
            return compare(self.reference, outputs, self.options.tolerance, self.output_names)

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
        names = Names(self.original)
        if isinstance(target, FoldTarget):
            return target.edit(names)
        assert isinstance(target, FactorTarget | PoolTarget) and factors is not None
        return target.edit(factors, names)

    def select(self, target: Target, budget: float) -> _Choice | str:
        """The cheapest confirmed choice within ``budget``, or why there is none."""
        if isinstance(target, FoldTarget):
            edit, errors = self.trial(target, None)
            return _Choice(target, None, edit, errors, budget)
        assert isinstance(target, FactorTarget | PoolTarget)
        with self.timer("factorization"):
            search = target.search(self.stats)
        if self.options.rank is not None or self.options.ratio is not None:
            with self.timer("factorization"):
                fixed = search.fixed(self.options.rank, self.options.ratio)
            if fixed is None:
                return "the rank given by --rank/--ratio does not lower MACs"
            edit, errors = self.trial(target, fixed)
            return _Choice(target, fixed, edit, errors, budget)
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
                    best = _Choice(target, factors, edit, errors, budget)
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
            retry = None if worst.factors is None else self.select(worst.target, worst.budget / 2)
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

    # -- the run -------------------------------------------------------------------------
    def run(self, progress: Callable[[Sequence[Target]], Any] | None = None) -> FixResult:
        options = self.options
        report, targets, skipped = self.analyze()
        result = FixResult(
            report, str(options.output), options.tolerance, options.method, skipped=skipped
        )
        fit, self.verify_feeds, result.inputs = self.feeds()
        with Runtime(options.timeout) as self.runtime:
            with self.timer("verification"):
                self.light = self.runtime.externalize(self.original)
                self.reference: list[Outputs] = self.runtime.run(
                    self.light, self.verify_feeds, what="running the original model"
                )
            self.output_names = [o.name for o in self.original.graph.output]
            # A NaN or an infinity in the reference hides any difference: nothing to verify.
            broken = not_finite(self.reference, self.output_names, "the original model")
            if broken is not None:
                result.verification = broken
                result.timings = dict(self.timings)
                return result
            self.stats = None
            lossy = [t for t in targets if t.lossy]
            if options.method == "data-aware" and lossy:
                tensors = list(dict.fromkeys(t for target in lossy for t in target.stat_tensors()))
                with self.timer("verification"):
                    types = {t: self.graph.dtype(t) or 1 for t in tensors}
                    self.stats = collect_statistics(self.runtime, self.light, tensors, types, fit)
            budget = options.tolerance / math.sqrt(max(len(lossy), 1))
            choices: dict[str, _Choice] = {}
            for target in progress(targets) if progress else targets:
                choice = self.select(target, budget)
                if isinstance(choice, _Choice):
                    choices[f"{target.code}:{target.node}"] = choice
                else:
                    reason = choice
                    if choice == NO_SAVING:
                        reason += _retrained_hint(report, target)
                    result.skipped.append(Skipped(target.code, target.node, reason))
            result.skipped.extend(self.combine(choices))
            with self.timer("factorization"):
                combined = apply_edits(self.original, [c.edit for c in choices.values()])
            result.cost_after = recount(combined, self.bound, self.path)
            result.rewrites = [
                self._rewrite(c, report, result.cost_after) for c in choices.values()
            ]
            result.verification, result.written = self.write(combined)
        result.timings = dict(self.timings)
        return result

    def _rewrite(self, choice: _Choice, report: ModelReport, after: ModelCost) -> Rewrite:
        before = report.cost
        assert before is not None
        old = [before.nodes[n] for n in choice.target.replaced_nodes()]
        new = [after.nodes[n] for n in choice.edit.new_nodes if n in after.nodes]
        factors = choice.factors
        rank = None if factors is None else factors.rank
        return Rewrite(
            code=choice.target.code,
            node=choice.target.node,
            kind="fold" if factors is None else factors.kind,
            method="weight" if factors is None else factors.method,
            rank=list(rank) if isinstance(rank, tuple) else rank,
            params_before=sum(c.params for c in old),
            params_after=sum(c.params for c in new),
            macs_before=_sum_macs(old),
            macs_after=_sum_macs(new),
            verified=choice.errors,
            unsafe=choice.target.unsafe,
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
                    if data_name is not None:
                        save_with_external_data(model, staged, data_name)
                        os.chmod(folder / data_name, _mode(previous, target))
                        if (folder / data_name).stat().st_size == 0:
                            data_name = None  # every weight is small enough to stay inline
                    else:
                        onnx.save_model(model, str(staged))
                    os.chmod(staged, new_file_mode(target))
                except OSError as exc:
                    raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
                try:
                    onnx.checker.check_model(str(staged), full_check=True)
                except Exception as exc:
                    message = " ".join(str(exc).split())[:300]
                    raise ModelError(
                        self.path, f"the rewritten model fails onnx.checker: {message}"
                    ) from None
            errors = self.measure(staged, "verifying the written model")
            if not errors.ok:
                return errors, False
            keep = set() if _same_file(target, self.path) else set(self.data_files)
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
        if _same_file(target, self.path):
            return list(self.data_files)
        if not target.is_file():
            return []
        try:
            old = loader.read_model(target)
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


def save_with_external_data(
    model: onnx.ModelProto, path: Path, data_name: str, threshold: int = 1024
) -> None:
    """Save ``model`` at ``path`` with its large initializers in ``data_name`` beside it.
    Moves the values out of ``model``'s initializers."""
    loader.move_to_external_data(model, path.parent / data_name, threshold)
    onnx.save_model(model, str(path))


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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param or None
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
    if not options.tolerance > 0:
        raise UsageError("--tolerance must be positive")
    if options.rank is not None and options.rank < 1:
        raise UsageError("--rank must be at least 1")
    if options.ratio is not None and not 0 < options.ratio <= 1:
        raise UsageError("--ratio must be in (0, 1]")
    if options.samples < 1:
        raise UsageError("--samples must be at least 1")
    if not 0 < options.timeout < math.inf:
        raise UsageError("--timeout must be a positive number of seconds")
    # Here rather than only in the CLI, so that no caller can overwrite MODEL by accident.
    output = resolve_output(path, options.output, options.in_place)
    options = dataclasses.replace(options, output=output)

    def log(message: str) -> None:
        if verbose:
            print(f"convlint fix: {message}", file=sys.stderr)

    fixer = Fixer(path, registry, settings, options, log)
    return fixer.run(_progress_bar(sys.stderr.isatty() and not verbose))
