"""Stage 6: render reports. A reporter formats what the engine found; it never reads the graph."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from convlint import __version__
from convlint.engine import ModelReport
from convlint.findings import Applicability, Finding
from convlint.registry import Registry


def fmt_int(value: int | float | None) -> str:
    if value is None:
        return "?"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def describe_estimate(finding: Finding) -> str | None:
    est = finding.estimate
    if est is None:
        return None
    parts = [f"params {fmt_int(est.params_before)} -> {fmt_int(est.params_after)}"]
    if est.macs_before is not None and est.macs_after is not None:
        parts.append(f"MACs {fmt_int(est.macs_before)} -> {fmt_int(est.macs_after)}")
        if est.macs_after and est.macs_before > est.macs_after:
            parts[-1] += f" ({est.macs_before / est.macs_after:.1f}x fewer)"
    elif est.macs_per_output_pixel is not None:
        before, after = est.macs_per_output_pixel, est.macs_per_output_pixel_after
        parts.append(f"MACs per output pixel {fmt_int(before)} -> {fmt_int(after)}")
    if "channels_before" in est.extra:
        parts.insert(
            0,
            f"concat channels {est.extra['channels_before']} -> {est.extra['channels_after']}",
        )
    return ", ".join(parts)


def summary(reports: Sequence[ModelReport]) -> dict[str, Any]:
    by_code = Counter(f.code for r in reports for f in r.findings)
    return {
        "models": len(reports),
        "findings": sum(by_code.values()),
        "by_code": dict(sorted(by_code.items())),
        "errors": sum(1 for r in reports if r.error),
    }


def render_json(reports: Sequence[ModelReport], registry: Registry) -> str:
    document = {
        "tool": {"name": "convlint", "version": __version__},
        "models": [r.as_dict() for r in reports],
        "summary": summary(reports),
    }
    return json.dumps(document, indent=2) + "\n"


def render_text(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    lines: list[str] = []
    for report in reports:
        if report.error:
            continue  # errors go to stderr, one line each (see cli)
        if verbose:
            lines.extend(f"{report.path}: note: {note}" for note in report.notes)
        for finding in report.findings:
            marker = (
                " [*]" if finding.fix and finding.fix.applicability is Applicability.SAFE else ""
            )
            lines.append(f"{report.path}:{finding.node}: {finding.code}{marker} {finding.message}")
            estimate = describe_estimate(finding)
            if estimate:
                lines.append(f"    = {estimate}")
            if finding.fix and finding.fix.applicability is not Applicability.SAFE:
                lines.append(
                    f"    fix ({finding.fix.applicability.value}): {finding.fix.description}"
                )
        for finding in report.baselined or []:
            lines.append(
                f"{report.path}:{finding.node}: {finding.code} {finding.message} (baseline)"
            )
        if verbose:
            for skip in report.skips:
                lines.append(f"{report.path}:{skip.node}: {skip.code} passed over: {skip.reason}")
    lines.append(_summary_line(reports))
    return "\n".join(lines) + "\n"


def _summary_line(reports: Sequence[ModelReport]) -> str:
    counts = summary(reports)
    findings = [f for r in reports for f in r.findings]
    fixable = sum(1 for f in findings if f.fix and f.fix.applicability is Applicability.SAFE)
    errors = counts["errors"]
    known = sum(len(r.baselined or []) for r in reports)
    models = _plural(counts["models"], "model")
    notes = (f"; {known} known in the baseline" if known else "") + (
        f"; {_plural(errors, 'model')} could not be read" if errors else ""
    )
    if not findings and errors:
        return f"No findings in the models that could be read ({models}{notes})."
    if not findings:
        return f"All checks passed! ({models}{notes})"
    text = f"Found {_plural(len(findings), 'finding')} in {models}"
    if fixable:
        text += f" ({fixable} fixable with `convlint fix`)"
    return text + notes + "."


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


Renderer = Callable[[Sequence[ModelReport], Registry], str]


def _lazy(module: str, function: str) -> Renderer:
    """A renderer from its own module (``report_<format>.py``), imported when first used."""

    def render(reports: Sequence[ModelReport], registry: Registry) -> str:
        renderer: Renderer = getattr(import_module(f"convlint.{module}"), function)
        return renderer(reports, registry)

    return render


RENDERERS: dict[str, Renderer] = {
    "text": render_text,
    "json": render_json,
    "sarif": _lazy("report_sarif", "render_sarif"),
    "junit": _lazy("report_junit", "render_junit"),
    "markdown": _lazy("report_markdown", "render_markdown"),
    "github": _lazy("report_github", "render_github"),
}
