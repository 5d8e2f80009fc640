"""SARIF 2.1.0 for GitHub code scanning (`--format sarif`).

One run; every rule of the registry is a ``reportingDescriptor`` whose descriptions and help
come from the rule's documentation. A finding is a result located in the model file (GitHub
requires a region, so line 1) and, logically, at the ONNX node. ``partialFingerprints`` carries
a hash of code and node, so code scanning tracks an alert by node, not by the bytes of the file.
A model that could not be read is a ``toolExecutionNotifications`` entry of a failed invocation;
with ``--verbose``, the notes and every candidate a rule passed over (and why) are ``note``
notifications too (``associatedRule`` names the rule), which leave the invocation successful.
With ``--baseline``, every result has a ``baselineState`` (``new`` or ``unchanged``) and known
ones an external, accepted suppression (GitHub still lists them as alerts; its PR check flags
only alerts a change introduces).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from convlint.findings import Finding, ModelReport, Severity
from convlint.paths import artifact_uri
from convlint.registry import Registry, Rule
from convlint.reporters.common import describe_estimate, json_text
from convlint.version import __version__

SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def doc_sections(doc: str) -> dict[str, str]:
    """A rule docstring's ``## Section`` bodies by title (the fixed sections of registry.py)."""
    sections: dict[str, str] = {}
    parts = re.split(r"^## +(.+?)\s*$", doc, flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[title] = body.strip()
    return sections


def _unwrap(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _descriptor(rule: Rule) -> dict[str, Any]:
    doc = rule.doc.strip()
    # The first line is "CODE name"; the rest is Markdown in fixed sections.
    body = doc.split("\n", 1)[1].strip() if doc.startswith(rule.code) and "\n" in doc else doc
    what = doc_sections(body).get("What it does", "")
    descriptor: dict[str, Any] = {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": _unwrap(what) if what else rule.summary},
        "help": {
            "text": body or rule.summary,
            "markdown": f"# {rule.name} ({rule.code})\n\n{body or rule.summary}",
        },
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {
            "tags": ["efficiency", "onnx"],
            "fix": rule.fix,
            "fixApplicability": [a.value for a in rule.fixes],
        },
    }
    return descriptor


def _location(path: str, node: str | None) -> dict[str, Any]:
    uri, base = artifact_uri(path)
    artifact: dict[str, Any] = {"uri": uri}
    if base is not None:
        artifact["uriBaseId"] = base
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": artifact, "region": {"startLine": 1}}
    }
    if node is not None:
        location["logicalLocations"] = [{"name": node, "kind": "function"}]
    return location


def _message(finding: Finding) -> str:
    text = f"{finding.node} ({finding.op_type}): {finding.message}"
    estimate = describe_estimate(finding)
    return f"{text}. Estimate: {estimate}." if estimate else text


def _result(
    report: ModelReport, finding: Finding, index: dict[str, int], baseline: str | None
) -> dict[str, Any]:
    identity = f"{finding.code}:{finding.node}".encode()
    result: dict[str, Any] = {
        "ruleId": finding.code,
        "level": LEVELS[finding.severity],
        "message": {"text": _message(finding)},
        "locations": [_location(report.path, finding.node)],
        "partialFingerprints": {
            "primaryLocationLineHash": hashlib.sha256(identity).hexdigest()[:32]
        },
        "properties": {
            "node": finding.node,
            "op_type": finding.op_type,
            "estimate": finding.estimate.as_dict() if finding.estimate else None,
            "fix": finding.fix.as_dict() if finding.fix else None,
        },
    }
    if finding.code in index:
        result["ruleIndex"] = index[finding.code]
    if baseline is not None:
        # SARIF wants every result's suppressions set (empty when not suppressed) or none.
        result["baselineState"] = baseline
        result["suppressions"] = []
        if baseline == "unchanged":
            result["suppressions"] = [
                {"kind": "external", "status": "accepted", "justification": "in the baseline"}
            ]
    return result


def _verbose_notifications(report: ModelReport, index: dict[str, int]) -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = [
        {
            "level": "note",
            "message": {"text": f"{report.path}: {note}"},
            "locations": [_location(report.path, None)],
            "descriptor": {"id": "note"},
        }
        for note in report.notes
    ]
    for skip in report.skips:
        rule: dict[str, Any] = {"id": skip.code}
        if skip.code in index:
            rule["index"] = index[skip.code]
        notes.append(
            {
                "level": "note",
                "message": {"text": f"{skip.node}: {skip.code} passed over: {skip.reason}"},
                "locations": [_location(report.path, skip.node)],
                "descriptor": {"id": "passed-over"},
                "associatedRule": rule,
            }
        )
    return notes


def render_sarif(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    rules = list(registry)
    index = {rule.code: i for i, rule in enumerate(rules)}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    failed = False
    for report in reports:
        if report.error:
            notifications.append(
                {
                    "level": "error",
                    "message": {"text": f"{report.path}: {report.error}"},
                    "locations": [_location(report.path, None)],
                    "descriptor": {"id": "model-error"},
                }
            )
            failed = True
        if verbose:
            notifications.extend(_verbose_notifications(report, index))
        new_state = "new" if report.baselined is not None else None
        results.extend(_result(report, f, index, new_state) for f in report.findings)
        results.extend(_result(report, f, index, "unchanged") for f in report.baselined or [])
    invocation: dict[str, Any] = {"executionSuccessful": not failed}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    log = {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "convlint",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_descriptor(rule) for rule in rules],
                    }
                },
                "invocations": [invocation],
                "results": results,
                "columnKind": "unicodeCodePoints",
            }
        ],
    }
    return json_text(log, ensure_ascii=False)
