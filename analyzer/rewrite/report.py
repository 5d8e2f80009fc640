"""Stage 6 for `convlint fix`: its options, its text and JSON reports, its exit code.

The parser of every command is built at start-up, so this module imports the fix machinery
(numpy helpers of onnx included) only when `fix` runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlint import __version__
from convlint.engine import ModelReport, Settings
from convlint.errors import ModelError, UsageError
from convlint.registry import Registry
from convlint.reporters import SCHEMA_VERSION, fmt_int, summary
from convlint.reporters.common import change_ratio, json_text

if TYPE_CHECKING:
    from convlint.rewrite.pipeline import FixResult
    from convlint.rewrite.verify import Errors

METHODS = ("auto", "data-aware", "weight", "prune")
DEFAULT_METHOD = "auto"
OBJECTIVES = ("latency", "macs")
DEFAULT_OBJECTIVE = "macs"
DEFAULT_PROVIDER = "CPUExecutionProvider"  # the onnxruntime execution provider timed on
DEFAULT_SAMPLES = 8  # seeded random samples without --inputs
INPUT_SAMPLES = 128  # samples taken from --inputs unless --samples says otherwise (64 verify)
FEW_SAMPLES = 50  # a top-1 agreement from fewer held-out samples is reported with a warning


def add_fix_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `convlint fix` beyond the common ones."""
    parser.add_argument("-o", "--output-model", metavar="OUT", help="where to write the model")
    parser.add_argument("--in-place", action="store_true", help="allow OUT to be MODEL")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        metavar="T",
        help="bound on every output's relative L2 error (default 1e-3)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="how to rewrite a lossy finding: data-aware factorization, channel pruning "
        "(prune), both with the best per layer (auto), or weight SVD (weight) "
        f"(default {DEFAULT_METHOD})",
    )
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--rank", type=int, metavar="N", help="factorize at rank N")
    ranks.add_argument("--ratio", type=float, metavar="F", help="keep a fraction F of channels")
    parser.add_argument(
        "--inputs",
        metavar="PATH",
        help="samples to fit and verify on: an .npz (one array per input), an .npy (one input) "
        "or a folder of images (with --preprocess)",
    )
    parser.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="how images become the input: a preset (imagenet, caffe, inception, unit, raw) "
        "and/or keys resize=,crop=,scale=,mean=,std=,layout=,order= (default unit)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help=f"samples to use: seeded random ones without --inputs (default {DEFAULT_SAMPLES}), "
        f"the first N of --inputs (default {INPUT_SAMPLES})",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="keep a rewrite when it is faster with 95%% confidence (latency), or when it "
        f"lowers MACs and is not measurably slower (macs; default {DEFAULT_OBJECTIVE})",
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="do not time the models (latency is then null, the objective macs)",
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        metavar="N",
        help="intra-op threads when timing (default: the CPUs available)",
    )
    parser.add_argument(
        "--latency-batch",
        type=int,
        metavar="N",
        help="time on a batch of N (the first verification sample, repeated; default: the "
        "sample's own batch)",
    )
    parser.add_argument(
        "--provider",
        default=DEFAULT_PROVIDER,
        metavar="NAME",
        help="onnxruntime execution provider to time on",
    )
    parser.add_argument(
        "--min-top1",
        type=float,
        metavar="P",
        help="bound on the top-1 agreement of class-score outputs on the held-out samples, 0 to 1",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit of each onnxruntime run (default 300)",
    )
    parser.add_argument(
        "--unsafe-fixes", action="store_true", help="also apply rewrites that change the function"
    )
    parser.add_argument(
        "--min-saving",
        type=float,
        default=0.10,
        metavar="F",
        help="the least share of a layer's MACs a lossy rewrite must save (default 0.1)",
    )
    parser.add_argument(
        "--allow-noise",
        action="store_true",
        help="without --inputs, still apply approximate rewrites, fitted and verified on "
        "generated noise (demos and tests; the result says nothing of real data)",
    )


def _error_text(errors: Errors) -> str:
    rel, worst = errors.rel_l2_error, errors.max_abs_error
    rel_text = f"{rel:.2e}" if math.isfinite(rel) else "inf"
    abs_text = f"{worst:.2e}" if math.isfinite(worst) else "inf"
    top1 = ""
    if errors.top1_agreement is not None:
        top1 = f", top-1 {errors.top1_agreement:.1%}"
        if errors.top1_interval is not None:
            low, high = errors.top1_interval
            top1 += f" (95% {low:.1%}-{high:.1%} of {errors.top1_samples})"
    return f"rel L2 {rel_text}, max abs {abs_text}{top1} [{'ok' if errors.ok else 'FAIL'}]"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def _timings_text(result: FixResult) -> str:
    from convlint.rewrite.pipeline import STAGES

    parts = [
        f"{stage} {_seconds(result.timings[stage])}" for stage in STAGES if stage in result.timings
    ]
    total = sum(result.timings.values())
    text = f"time: {', '.join(parts)} (total {_seconds(total)})"
    own, child = result.peak_memory.get("fix"), result.peak_memory.get("onnxruntime")
    if own is not None:
        text += f"; peak memory {own / 1e9:.2f} GB"
        if child is not None:
            text += f", onnxruntime's process {child / 1e9:.2f} GB"
    return text


def _header(result: FixResult) -> str:
    setting = (
        f"tolerance {result.tolerance:g}, method {result.method}, objective {result.objective}"
    )
    bound = ""
    if result.bound:
        bound = "; bound " + ", ".join(f"{dim}={size}" for dim, size in result.bound.items())
    return f"{result.report.path} -> {result.output} ({setting}{bound}; {result.inputs})"


def _noise_note(result: FixResult) -> str:
    if not result.calibration or result.calibration.get("source") != "noise":
        return ""
    what = "statistics fitted and verified" if result.method == "data-aware" else "verified"
    return f"; {what} on generated noise (pass --inputs with real samples)"


def _change(before: int | None, after: int | None) -> str:
    text = f"{fmt_int(before)} -> {fmt_int(after)}"
    if before and after and before > after:
        text += change_ratio(before, after)
    return text


def render_text(
    result: FixResult, verbose: bool = False, quiet: bool = False, timings: bool = False
) -> str:
    """The report; ``timings``: also where the time and memory went (the command line's last
    line, left out where the output must be reproducible, as in the demo)."""
    report = result.report
    lines: list[str] = []
    if verbose:
        lines.extend(f"{report.path}: note: {note}" for note in report.notes)
        lines.extend(
            f"{report.path}:{s.node}: {s.code} passed over: {s.reason}" for s in report.skips
        )
    if not quiet:
        lines.append(_header(result))
    for rw in result.rewrites:
        if rw.kept_channels is not None:
            rank = f" to {len(rw.kept_channels)} input channels"
        elif rw.rank is None:
            rank = ""
        else:
            rank = f" rank {'x'.join(map(str, rw.rank)) if isinstance(rw.rank, list) else rw.rank}"
        unsafe = " (unsafe)" if rw.unsafe else ""
        alone = "" if rw.latency is None else f"; alone {rw.latency.short()}"
        lines.append(
            f"{report.path}:{rw.node}: {rw.code} {rw.kind}{rank} ({rw.method}){unsafe}: "
            f"params {_change(rw.params_before, rw.params_after)}, "
            f"MACs {_change(rw.macs_before, rw.macs_after)}; {_error_text(rw.verified)}{alone}"
        )
    for skip in result.skipped:
        lines.append(f"{report.path}:{skip.node}: {skip.code} skipped: {skip.reason}")
    before, after = report.cost, result.cost_after
    if result.verification is not None and result.written and not result.rewrites:
        findings = len(report.findings)
        why = (
            "no findings"
            if not findings
            else f"{findings} finding{'s' if findings != 1 else ''}, none rewritten"
        )
        lines.append(
            f"model: no rewrite applies ({why}); wrote {result.output}, the same model"
            f"{_noise_note(result) if findings else ''}"
        )
    elif result.verification is not None:
        totals = ""
        if before is not None and after is not None:
            totals = (
                f"params {_change(before.params, after.params)}, "
                f"MACs {_change(before.macs, after.macs)}; "
            )
        outcome = (
            f"wrote {result.output}"
            if result.written
            else f"verification failed, {result.output} not written"
        )
        problem = f": {result.verification.problem}" if result.verification.problem else ""
        timed = "" if result.latency is None else f"{result.latency.text()}; "
        lines.append(
            f"model: {totals}{timed}verified {_error_text(result.verification)}{problem}; "
            f"{outcome}{_noise_note(result)}"
        )
    verified = result.verification
    if (
        verified is not None
        and verified.top1_agreement is not None
        and 0 < verified.top1_samples < FEW_SAMPLES
    ):
        lines.append(
            f"warning: top-1 agreement from {verified.top1_samples} held-out samples, fewer "
            f"than {FEW_SAMPLES}: its interval is wide; pass more samples with --inputs"
        )
    if timings and not quiet and result.timings:
        lines.append(_timings_text(result))
    return "\n".join(lines) + "\n"


def result_dict(result: FixResult) -> dict[str, Any]:
    data = result.report.as_dict()
    verification: dict[str, Any] | None = None
    if result.verification is not None:
        verification = result.verification.as_dict()
        before, after = result.report.cost, result.cost_after
        verification.update(
            {
                "params_before": before.params if before else None,
                "params_after": after.params if after else None,
                "macs_before": before.macs if before else None,
                "macs_after": after.macs if after else None,
                "inputs": result.inputs,
            }
        )
    data.update(
        {
            "output": result.output,
            "tolerance": result.tolerance,
            "objective": result.objective,
            "bound": dict(result.bound),
            "calibration": result.calibration,
            "rewrites": [rw.as_dict() for rw in result.rewrites],
            "skipped": [s.as_dict() for s in result.skipped],
            "verification": verification,
            "latency": None if result.latency is None else result.latency.as_dict(),
            "timings": {stage: round(seconds, 4) for stage, seconds in result.timings.items()},
            "peak_memory": dict(result.peak_memory),
        }
    )
    return data


def render_json(result: FixResult) -> str:
    """The model object at the top level (as the contract reads), and also as ``models[0]``
    beside ``summary``, so that one parser reads `check` and `fix` reports alike."""
    model = result_dict(result)
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "convlint", "version": __version__},
        **model,
        "models": [model],
        "summary": summary([result.report]),
    }
    return json_text(document)


def cmd_fix(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    """`convlint fix`: 0 written and verified, 1 verification failed, 2 bad input."""
    from convlint.atomic import write_target
    from convlint.cli import emit, refuse_overwriting_inputs
    from convlint.rewrite.pipeline import FixOptions, FixResult, fix, named_after
    from convlint.rewrite.verify import RuntimeFailure

    if args.format not in ("text", "json"):
        raise UsageError(f"fix supports --format text or json, not {args.format}")
    if args.output and not Path(args.output).parent.is_dir():  # before OUT is written
        raise UsageError(
            f"--output {args.output}: no such folder {str(Path(args.output).parent)!r}"
        )
    model = Path(args.model)
    options = FixOptions(
        output=Path(args.output_model) if args.output_model else None,
        in_place=args.in_place,
        tolerance=args.tolerance,
        method=args.method,
        rank=args.rank,
        ratio=args.ratio,
        inputs=Path(args.inputs) if args.inputs else None,
        samples=args.samples,
        objective=args.objective,
        latency=not args.no_latency,
        latency_threads=args.latency_threads,
        latency_batch=args.latency_batch,
        provider=args.provider,
        min_top1=args.min_top1,
        preprocess=args.preprocess,
        timeout=args.timeout,
        unsafe_fixes=args.unsafe_fixes,
        allow_noise=args.allow_noise,
        min_saving=args.min_saving,
    )
    out = options.output or (model if args.in_place else None)
    refuse_overwriting_inputs(
        [("--output", args.output)],
        [
            (f"the model {model}", model),
            (f"OUT (-o {out})", out),
            (f"--config {args.config}", args.config),
            (f"--inputs {args.inputs}", args.inputs),
        ],
        [model],
    )
    if (
        args.output
        and out is not None
        and named_after(write_target(args.output), write_target(out))
    ):
        raise UsageError(
            f"--output {args.output} is a name fix gives OUT's external data; "
            "refusing to write the report there"
        )
    try:
        try:
            result = fix(model, registry, settings, options, verbose=args.verbose)
        except MemoryError:
            raise ModelError(
                model,
                "too large to rewrite and verify here: out of memory (bind smaller symbolic "
                "dims with --input-shape, or use fewer --samples)",
            ) from None
    except (ModelError, RuntimeFailure) as exc:
        # As `check --format json`: a document with the model's `error`, then the stderr line.
        problem = exc.problem if isinstance(exc, ModelError) else str(exc)
        if args.format == "json":
            failed = FixResult(
                ModelReport(path=str(model), error=problem),
                str(options.output or model),
                options.tolerance,
                options.method,
            )
            emit(render_json(failed), args.output)
        raise ModelError(model, problem) from None  # names the model, as every bad-input line
    if args.format == "json":
        text = render_json(result)
    else:
        text = render_text(result, verbose=args.verbose, quiet=args.quiet, timings=True)
    emit(text, args.output)
    if result.verification is not None and not result.written:
        errors = result.verification
        problem = errors.problem or f"rewritten model breaks --tolerance {result.tolerance:g}"
        if not errors.problem and errors.rel_l2_error <= result.tolerance:
            problem = f"rewritten model's top-1 agreement is below --min-top1 {args.min_top1:g}"
        print(f"convlint: error: {model}: {problem}; {result.output} not written", file=sys.stderr)
        return 1
    return 0
