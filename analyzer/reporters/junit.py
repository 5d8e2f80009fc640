"""JUnit XML for CI test views (`--format junit`).

A ``<testsuite>`` per model (named by its path). Each finding is a testcase of its own with one
``<failure>`` (classname = model path, name = "CL001 wide-conv-without-reduction: <node>"), as
JUnit readers (GitLab, Jenkins, test-report actions) show one failure per testcase; a rule
checked that found nothing new is one passing testcase ("CL001 wide-conv-without-reduction").
A finding a baseline knew is a ``<skipped>`` testcase (known, not failing). A model that could
not be read is one testcase with an ``<error>``; a rule that raised on a model, that rule's
testcase (the other rules' are as usual). Counts follow the usual meaning: ``tests``,
``failures``, ``errors`` and ``skipped`` count testcases.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from convlint.findings import Finding, ModelReport
from convlint.registry import Registry
from convlint.reporters.common import describe_estimate

READ_CASE = "read model"
# Characters XML 1.0 cannot carry at all, even escaped (ONNX names are arbitrary strings).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _details(finding: Finding) -> str:
    lines = [f"node: {finding.node} ({finding.op_type})", f"severity: {finding.severity.value}"]
    estimate = describe_estimate(finding)
    if estimate:
        lines.append(f"estimate: {estimate}")
    if finding.fix:
        lines.append(f"fix ({finding.fix.applicability.value}): {finding.fix.description}")
    return _xml("\n".join(lines))


def _case(suite: ET.Element, path: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=path, name=_xml(name))


def _suite(report: ModelReport, registry: Registry, verbose: bool = False) -> ET.Element:
    path = _xml(report.path)
    suite = ET.Element("testsuite", name=path)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.error and not report.failed_rules:
        case = _case(suite, path, READ_CASE)
        error = ET.SubElement(case, "error", message=_xml(report.error), type="ModelError")
        error.text = _xml(f"{report.path}: {report.error}")
        counts["tests"] += 1
        counts["errors"] += 1
    for code in report.checked:
        rule = registry.get(code)
        title = f"{code} {rule.name}" if rule else code
        if code in report.failed_rules:  # the rule raised: its testcase is in error
            case = _case(suite, path, title)
            error = ET.SubElement(case, "error", message=_xml(report.error or ""), type="RuleError")
            error.text = _xml(f"{report.path}: {report.error}")
            counts["tests"] += 1
            counts["errors"] += 1
            continue
        found = [f for f in report.findings if f.code == code]
        for finding in found:
            case = _case(suite, path, f"{title}: {finding.node}")
            failure = ET.SubElement(
                case,
                "failure",
                message=_xml(f"{finding.node}: {finding.message}"),
                type=finding.severity.value,
            )
            failure.text = _details(finding)
        known = [f for f in report.baselined or [] if f.code == code]
        for finding in known:
            case = _case(suite, path, f"{title}: {finding.node}")
            skipped = ET.SubElement(case, "skipped", message="known (baseline)")
            skipped.text = _details(finding)
        if not found and not known:
            case = _case(suite, path, title)
            if verbose:
                passed = [s for s in report.skips if s.code == code]
                if passed:
                    out = ET.SubElement(case, "system-out")
                    out.text = _xml("\n".join(f"passed over: {s.node}: {s.reason}" for s in passed))
        counts["tests"] += len(found) + len(known) + (not found and not known)
        counts["failures"] += len(found)
        counts["skipped"] += len(known)
    if verbose and report.notes:
        notes = ET.SubElement(suite, "system-out")
        notes.text = _xml("\n".join(f"note: {note}" for note in report.notes))
    suite.attrib.update({key: str(value) for key, value in counts.items()})
    return suite


def render_junit(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    root = ET.Element("testsuites", name="convlint")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in reports:
        suite = _suite(report, registry, verbose)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.attrib[key])
    root.attrib.update({key: str(value) for key, value in totals.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
