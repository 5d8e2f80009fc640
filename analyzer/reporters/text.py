"""The text report (`--format text`): a line per finding, its estimate and fix indented, a
summary line."""

from __future__ import annotations

from collections.abc import Sequence

from convlint.engine import ModelReport
from convlint.findings import Applicability
from convlint.registry import Registry
from convlint.reporters.common import describe_estimate, plural, summary


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
    models = plural(counts["models"], "model")
    notes = (f"; {known} known in the baseline" if known else "") + (
        f"; {plural(errors, 'model')} could not be read" if errors else ""
    )
    if not findings and errors:
        return f"No findings in the models that could be read ({models}{notes})."
    if not findings:
        return f"All checks passed! ({models}{notes})"
    text = f"Found {plural(len(findings), 'finding')} in {models}"
    if fixable:
        text += f" ({fixable} fixable with `convlint fix`)"
    return text + notes + "."
