"""Stage 6 for `convlint fix`: its options, its text and JSON reports, its exit code.

The parser of every command is built at start-up, so this module imports the fix machinery
(numpy helpers of onnx included) only when `fix` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlint import __version__
from convlint.engine import ModelReport, Settings
from convlint.errors import ModelError, UsageError
from convlint.registry import Registry
from convlint.reporters import SCHEMA_VERSION, fmt_int, summary

if TYPE_CHECKING:
    from convlint.fix import FixResult
    from convlint.verify import Errors

METHODS = ("data-aware", "weight")
DEFAULT_SAMPLES = 8


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
        default="data-aware",
        help="how to factorize (default data-aware)",
    )
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--rank", type=int, metavar="N", help="factorize at rank N")
    ranks.add_argument("--ratio", type=float, metavar="F", help="keep a fraction F of channels")
    parser.add_argument("--inputs", metavar="FILE.npz", help="verification inputs, one array each")
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help=f"seeded random samples without --inputs (default {DEFAULT_SAMPLES})",
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


def _error_text(errors: Errors) -> str:
    rel, worst = errors.rel_l2_error, errors.max_abs_error
    rel_text = f"{rel:.2e}" if math.isfinite(rel) else "inf"
    abs_text = f"{worst:.2e}" if math.isfinite(worst) else "inf"
    return f"rel L2 {rel_text}, max abs {abs_text} [{'ok' if errors.ok else 'FAIL'}]"


def _change(before: int | None, after: int | None) -> str:
    text = f"{fmt_int(before)} -> {fmt_int(after)}"
    if before and after and before > after:
        text += f" ({before / after:.1f}x fewer)"
    return text


def render_text(result: FixResult, verbose: bool = False, quiet: bool = False) -> str:
    report = result.report
    lines: list[str] = []
    if verbose:
        lines.extend(f"{report.path}: note: {note}" for note in report.notes)
        lines.extend(
            f"{report.path}:{s.node}: {s.code} passed over: {s.reason}" for s in report.skips
        )
    if not quiet:
        lines.append(
            f"{report.path} -> {result.output} (tolerance {result.tolerance:g}, "
            f"method {result.method}; {result.inputs})"
        )
    for rw in result.rewrites:
        rank = (
            ""
            if rw.rank is None
            else f" rank {'x'.join(map(str, rw.rank)) if isinstance(rw.rank, list) else rw.rank}"
        )
        unsafe = " (unsafe)" if rw.unsafe else ""
        lines.append(
            f"{report.path}:{rw.node}: {rw.code} {rw.kind}{rank} ({rw.method}){unsafe}: "
            f"params {_change(rw.params_before, rw.params_after)}, "
            f"MACs {_change(rw.macs_before, rw.macs_after)}; {_error_text(rw.verified)}"
        )
    for skip in result.skipped:
        lines.append(f"{report.path}:{skip.node}: {skip.code} skipped: {skip.reason}")
    before, after = report.cost, result.cost_after
    if result.verification is not None:
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
        lines.append(
            f"model: {totals}verified {_error_text(result.verification)}{problem}; {outcome}"
        )
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
            "rewrites": [rw.as_dict() for rw in result.rewrites],
            "skipped": [s.as_dict() for s in result.skipped],
            "verification": verification,
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
    return json.dumps(document, indent=2) + "\n"


def cmd_fix(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    """`convlint fix`: 0 written and verified, 1 verification failed, 2 bad input."""
    from convlint.atomic import write_target
    from convlint.cli import emit, refuse_overwriting_inputs
    from convlint.fix import FixOptions, FixResult, fix, named_after
    from convlint.verify import RuntimeFailure

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
        timeout=args.timeout,
        unsafe_fixes=args.unsafe_fixes,
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
        result = fix(model, registry, settings, options, verbose=args.verbose)
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
        text = render_text(result, verbose=args.verbose, quiet=args.quiet)
    emit(text, args.output)
    if result.verification is not None and not result.written:
        problem = result.verification.problem or (
            f"rewritten model breaks --tolerance {result.tolerance:g}"
        )
        print(f"convlint: error: {model}: {problem}; {result.output} not written", file=sys.stderr)
        return 1
    return 0
