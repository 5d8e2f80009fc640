"""GitLab Code Quality (`--format gitlab`): the JSON array the merge-request widget reads.

Each finding is an issue with GitLab's documented fields: ``description`` (code, node, message,
estimate, and the fix with its applicability), ``check_name`` (the
rule's code and name), ``fingerprint`` (unique per issue: a hash of model path, code and node,
so an issue keeps its identity when the model's weights change, as SARIF's
``partialFingerprints``), ``severity`` (error ``critical``, warning ``major``, info ``minor``)
and ``location`` (``path`` relative to the working directory, the repository root in CI; a
model has no lines, so ``lines.begin`` is 1). A model that cannot be read is a ``blocker``
issue. Findings a baseline knew are left out, as in the ``github`` format and the JSON report:
the widget shows what the merge request changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from convlint.findings import Finding, ModelReport, Severity
from convlint.paths import display_path
from convlint.registry import Registry
from convlint.reporters.common import describe_estimate, error_title, json_text

SEVERITIES = {Severity.ERROR: "critical", Severity.WARNING: "major", Severity.INFO: "minor"}


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _issue(path: str, finding: Finding) -> dict[str, Any]:
    description = f"{finding.code} {finding.node} ({finding.op_type}): {finding.message}"
    estimate = describe_estimate(finding)
    if estimate:
        description += f" [{estimate}]"
    if finding.fix:
        description += f"; fix ({finding.fix.applicability.value}): {finding.fix.description}"
    return {
        "type": "issue",
        "description": description,
        "check_name": f"{finding.code} {finding.rule}",
        "fingerprint": _fingerprint(path, finding.code, finding.node),
        "severity": SEVERITIES[finding.severity],
        "categories": ["Performance"],
        "location": {"path": path, "lines": {"begin": 1}},
    }


def render_gitlab(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    issues: list[dict[str, Any]] = []
    for report in reports:
        path = display_path(report.path)
        if report.error:
            issues.append(
                {
                    "type": "issue",
                    "description": f"{error_title(report)}: {report.error}",
                    "check_name": f"convlint {error_title(report).replace(' ', '-')}",
                    "fingerprint": _fingerprint(path, "error"),
                    "severity": "blocker",
                    "categories": ["Bug Risk"],
                    "location": {"path": path, "lines": {"begin": 1}},
                }
            )
        issues.extend(_issue(path, finding) for finding in report.findings)
    seen: set[str] = set()
    for issue in issues:  # GitLab shows one issue per fingerprint: keep each distinct
        while issue["fingerprint"] in seen:
            issue["fingerprint"] = _fingerprint(issue["fingerprint"], "again")
        seen.add(issue["fingerprint"])
    return json_text(issues)
