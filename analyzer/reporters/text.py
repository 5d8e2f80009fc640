"""The text report (`--format text`): a line per finding, its estimate and fix indented, a
summary line.

A finding reads ``path:node: CODE [*] severity: message``: ruff's ``location: CODE`` first
(scripts that read the code after the location keep working), a marker of what `convlint fix`
does with it (``[*]``: a safe fix it always applies; ``[~]``: an approximate one it applies
only with real calibration data, ``--inputs``; none: unsafe, display-only or no fix), then the
compilers' ``severity: message``. Every fix that is not safe has its description on an indented
line; the summary line counts each kind and says which command applies it. Colour
only on a terminal, as ruff and CPython decide it: ``NO_COLOR`` (non-empty) turns it off,
``FORCE_COLOR`` (non-empty) on even when the output is not a terminal, ``TERM=dumb`` off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TextIO

from convlint.findings import Applicability, Finding, ModelReport, Severity
from convlint.registry import Registry
from convlint.reporters.common import (
    describe_estimate,
    error_counts,
    plural,
    printable,
    summary,
)

MARKERS = {Applicability.SAFE: "[*]", Applicability.APPROXIMATE: "[~]"}
# The summary's clause for each applicability `convlint fix` can apply, in this order.
SUMMARY_CLAUSES = (
    (Applicability.SAFE, "[*] {n} fixable with `convlint fix`"),
    (Applicability.APPROXIMATE, "[~] {n} approximately fixable with `convlint fix --inputs DATA`"),
    (Applicability.UNSAFE, "{n} unsafe {fixes} with `convlint fix --unsafe-fixes`"),
)

# SGR codes: bold, dim, red, yellow, cyan (ruff's palette: codes red, fixable cyan).
BOLD, DIM, RED, YELLOW, CYAN = "1", "2", "31", "33", "36"
SEVERITY_COLOURS = {Severity.ERROR: RED, Severity.WARNING: YELLOW, Severity.INFO: CYAN}


def use_color(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to ``stream``: NO_COLOR, then FORCE_COLOR, then a TTY."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    if env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class _Paint:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *codes: str) -> str:
        if not self.enabled or not codes or not text:
            return text
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"


def _marker(finding: Finding) -> str | None:
    return MARKERS.get(finding.fix.applicability) if finding.fix is not None else None


def _finding_line(path: str, finding: Finding, paint: _Paint, known: bool = False) -> str:
    severity = finding.severity
    location = paint(printable(f"{path}:{finding.node}:"), BOLD)
    level = paint(f"{severity.value}:", SEVERITY_COLOURS[severity])
    code = paint(finding.code, BOLD, RED)
    symbol = _marker(finding)
    marker = f" {paint(symbol, CYAN)}" if symbol and not known else ""
    line = f"{location} {code}{marker} {level} {printable(finding.message)}"
    return line + (f" {paint('(baseline)', DIM)}" if known else "")


def render_text(
    reports: Sequence[ModelReport],
    registry: Registry,
    verbose: bool = False,
    color: bool = False,
) -> str:
    """The whole report: each model's part, then the summary line."""
    parts = [render_text_model(report, registry, verbose, color) for report in reports]
    return "".join(parts) + render_text_tail(reports, color)


def render_text_model(
    report: ModelReport, registry: Registry, verbose: bool = False, color: bool = False
) -> str:
    """One model's lines (printed as soon as the model is checked)."""
    paint = _Paint(color)
    lines: list[str] = []
    # A model's error goes to stderr, one line (see convlint.commands.check); a model a rule
    # failed on still shows the other rules' findings.
    if verbose:
        lines.extend(
            printable(f"{report.path}: ") + f"{paint('note:', DIM)} {printable(note)}"
            for note in report.notes
        )
    for finding in report.findings:
        lines.append(_finding_line(report.path, finding, paint))
        estimate = describe_estimate(finding)
        if estimate:
            lines.append(f"    = {estimate}")
        if finding.fix and finding.fix.applicability is not Applicability.SAFE:
            lines.append(
                f"    fix ({finding.fix.applicability.value}): "
                + printable(finding.fix.description)
            )
    for finding in report.baselined or []:
        lines.append(_finding_line(report.path, finding, paint, known=True))
    if verbose:
        for skip in report.skips:
            lines.append(
                printable(f"{report.path}:{skip.node}: {skip.code} ")
                + f"{paint('passed over:', DIM)} {printable(skip.reason)}"
            )
    return "".join(line + "\n" for line in lines)


def render_text_tail(reports: Sequence[ModelReport], color: bool = False) -> str:
    """The summary line, after every model's part."""
    return _Paint(color)(summary_line(reports), BOLD) + "\n"


def summary_line(reports: Sequence[ModelReport]) -> str:
    """One line; it explains ``[*]`` and ``[~]`` where the findings above carry them, and
    counts the unsafe fixes."""
    counts = summary(reports)
    findings = [f for r in reports for f in r.findings]
    errors = counts["errors"]
    known = sum(len(r.baselined or []) for r in reports)
    models = plural(counts["models"], "model")
    notes = (f"; {known} known in the baseline" if known else "") + error_counts(reports, "; ")
    if not findings and errors:
        return f"No findings in the models that could be read ({models}{notes})."
    if not findings:
        return f"All checks passed! ({models}{notes})"
    text = f"Found {plural(len(findings), 'finding')} in {models}"
    fixes = counts["fixes"]
    clauses = [
        clause.format(n=fixes[a.value], fixes="fix" if fixes[a.value] == 1 else "fixes")
        for a, clause in SUMMARY_CLAUSES
        if fixes[a.value]
    ]
    if clauses:
        text += f" ({'; '.join(clauses)})"
    return text + notes + "."
