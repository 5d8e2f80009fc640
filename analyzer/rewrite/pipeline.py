"""Stage 5: `convlint fix`: findings -> rewrites at chosen ranks -> verified, timed model -> OUT.

``fix`` validates the options (``options.validate``), resolves OUT and runs the steps in
order, each a module of its own that hands the next an explicit state object:

1. ``prepare``: the model analysed and its findings planned (``Analysis``), the samples split
   into fitting and held-out ones (``Feeds``), then, in onnxruntime's child process, the
   original's reference outputs and the statistics (``Prepared``);
2. ``search``: each rewrite's form and rank under the whole-model budget (``Searched``);
3. ``settle``: timing, keep or drop, verification of the combination, re-lint (``Settled``);
4. ``write``: the rewritten model checked, verified from the file and moved over OUT
   atomically.

The names other modules and the tests import from here stay here (re-exported).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convlint.atomic import exclusive_lock, write_target
from convlint.engine import Settings
from convlint.errors import GraphError, ModelError
from convlint.registry import Registry
from convlint.rewrite.edit import Target
from convlint.rewrite.options import MAX_SAMPLES as MAX_SAMPLES
from convlint.rewrite.options import FixOptions as FixOptions  # the API's and the tests' name
from convlint.rewrite.options import output_bound as output_bound
from convlint.rewrite.options import reported_tolerance, validate
from convlint.rewrite.prepare import NEEDS_DATA as NEEDS_DATA
from convlint.rewrite.prepare import (
    Prepared,
    RuntimeBench,
    analyze,
    prepare,
    recount,
    split_feeds,
    widening,
)
from convlint.rewrite.prepare import held_out_count as held_out_count
from convlint.rewrite.search import NO_SAVING as NO_SAVING
from convlint.rewrite.search import OUT_OF_BUDGET as OUT_OF_BUDGET
from convlint.rewrite.search import Progress, Searcher
from convlint.rewrite.settle import Settler
from convlint.rewrite.state import STAGES as STAGES
from convlint.rewrite.state import FixResult as FixResult
from convlint.rewrite.state import FixRun
from convlint.rewrite.state import Rewrite as Rewrite
from convlint.rewrite.state import Skipped as Skipped
from convlint.rewrite.verify import Errors, Runtime
from convlint.rewrite.write import describe, resolve_output, write
from convlint.rewrite.write import fill_output_types as fill_output_types
from convlint.rewrite.write import named_after as named_after

__all__ = [
    "MAX_SAMPLES",
    "NEEDS_DATA",
    "NO_SAVING",
    "OUT_OF_BUDGET",
    "STAGES",
    "FixOptions",
    "FixResult",
    "Rewrite",
    "Skipped",
    "fill_output_types",
    "fix",
    "held_out_count",
    "named_after",
    "output_bound",
    "reported_tolerance",
]


def run_fix(
    path: Path,
    registry: Registry,
    settings: Settings,
    run: FixRun,
    progress: Progress | None = None,
) -> FixResult:
    """The steps of one run, in order; OUT is resolved in ``run.options``."""
    options = run.options
    analysis = analyze(path, registry, settings, run)
    result = FixResult(
        analysis.report,
        str(options.output),
        reported_tolerance(options),
        options.method,
        skipped=list(analysis.skipped),
        objective=run.objective,
        rank_step=run.step,
        bound=dict(analysis.dims_bound),
    )
    feeds = split_feeds(analysis, run)
    result.inputs, result.calibration = feeds.origin, feeds.calibration
    try:
        with Runtime(options.timeout) as runtime:
            prepared = prepare(analysis, feeds, runtime, run)
            if isinstance(prepared, Errors):  # the original's outputs are not finite
                result.verification = prepared
            else:
                _rewrite(prepared, runtime, run, result, progress)
            result.peak_memory["onnxruntime"] = runtime.peak_memory()
    finally:
        result.timings = dict(run.timings)
        result.peak_memory["fix"] = peak_rss()
        analysis.report.notes.extend(run.notes)
    return result


def _rewrite(
    prepared: Prepared,
    runtime: Runtime,
    run: FixRun,
    result: FixResult,
    progress: Progress | None,
) -> None:
    """Search, settle and write, from the prepared reference; ``result`` filled in."""
    analysis = prepared.analysis
    result.skipped.extend(prepared.skipped)
    bench = RuntimeBench(prepared, runtime, run)
    searcher = Searcher(
        bench,
        run,
        analysis.report,
        prepared.stats,
        len(prepared.feeds.fit),
        widening(analysis),
        confirm=bool(prepared.feeds.select),
    )
    searched = searcher.search(analysis.targets, prepared.lossy, progress)
    result.skipped.extend(searched.skipped)
    choices = searched.choices
    settled = Settler(prepared, bench, runtime, searcher, run).settle(choices)
    result.skipped.extend(settled.skipped)
    result.latency = settled.latency
    combined = bench.apply([c.edit for c in choices.values()])
    result.cost_after = recount(combined, analysis.bound, analysis.path)
    result.rewrites = [describe(c, analysis.report, result.cost_after) for c in choices.values()]
    result.verification, result.written = write(combined, prepared, bench, runtime, run)


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _progress_bar(enabled: bool) -> Progress | None:
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
    validate(options)
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
        run = FixRun(options, log)
        try:
            return run_fix(
                path, registry, settings, run, _progress_bar(sys.stderr.isatty() and not verbose)
            )
        except GraphError as exc:
            # An invalid node `check`'s rules never read but a rewrite does (the epsilon of a
            # BatchNormalization it folds): the model's error, naming the file, as check's are.
            raise ModelError(path, f"invalid model: {exc}") from None
