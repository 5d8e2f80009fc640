"""Stage 6 for `convlint fix`: its text and JSON reports (the command, its options and its
exit code are ``convlint.commands.fix``'s)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from convlint.reporters import SCHEMA_VERSION, fmt_int, summary
from convlint.reporters.common import change_ratio, json_text
from convlint.rewrite.options import FEW_SAMPLES
from convlint.version import __version__

if TYPE_CHECKING:
    from convlint.rewrite.pipeline import FixResult
    from convlint.rewrite.verify import Errors


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
        if errors.top1_expected is not None:
            top1 += f", expected {errors.top1_expected:.1%} from margins"
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
    tolerance = "no tolerance" if result.tolerance is None else f"tolerance {result.tolerance:g}"
    setting = f"{tolerance}, method {result.method}, objective {result.objective}"
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
            "rank_step": result.rank_step,
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
