"""GitHub Actions workflow commands (`--format github`): one annotation per finding.

``::warning file=PATH,title=CL001 wide-conv-without-reduction::message`` (the message: node,
finding, estimate, and the fix with its applicability); errors and unreadable
models are ``::error``, info findings ``::notice``. Findings a baseline knew are not annotated:
an annotation asks for attention on a pull request, and the baseline says they have had it (the
other formats still list them). With ``--verbose``, notes and candidates passed over are
``::debug`` lines (shown when the run has step debug logging on). Escaping is the runner's:
``%``, CR and LF in messages; also ``:`` and ``,`` in properties. Before that, what comes from
the model (node names, op types, paths, messages that quote them) has its control characters
written as Python writes them (``\x1b``), as the text format does: an ESC in a node name would
recolour the log.
"""

from __future__ import annotations

from collections.abc import Sequence

from convlint.findings import Finding, ModelReport, Severity
from convlint.paths import display_path
from convlint.registry import Registry
from convlint.reporters.common import describe_estimate, error_title, printable

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties: str) -> str:
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    head = f"::{name} {props}" if props else f"::{name}"
    return f"{head}::{escape_data(message)}"


def _annotation(path: str, finding: Finding) -> str:
    message = printable(f"{finding.node} ({finding.op_type}): {finding.message}")
    estimate = describe_estimate(finding)
    if estimate:
        message += f"\n{printable(estimate)}"
    if finding.fix:
        fix = f"fix ({finding.fix.applicability.value}): {finding.fix.description}"
        message += f"\n{printable(fix)}"
    title = f"{finding.code} {finding.rule}"
    return command(COMMANDS[finding.severity], message, file=path, title=title)


def render_github(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    """An annotation per finding, model by model (no summary: the step's log has one)."""
    return "".join(render_github_model(report, registry, verbose) for report in reports)


def render_github_model(report: ModelReport, registry: Registry, verbose: bool = False) -> str:
    """One model's annotations (printed as soon as the model is checked)."""
    lines: list[str] = []
    path = printable(display_path(report.path))
    if report.error:
        error = printable(report.error)
        title = f"convlint: {error_title(report)}"
        lines.append(command("error", error, file=path, title=title))
    lines.extend(_annotation(path, f) for f in report.findings)
    if verbose:  # shown when the run has step debug logging on
        lines.extend(command("debug", f"{path}: note: {printable(note)}") for note in report.notes)
        lines.extend(
            command("debug", printable(f"{path}:{s.node}: {s.code} passed over: {s.reason}"))
            for s in report.skips
        )
    return "".join(line + "\n" for line in lines)
