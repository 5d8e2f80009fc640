"""JUnit XML for CI test views (`--format junit`).

A ``<testsuite>`` per model (named by its path), a ``<testcase>`` per rule checked on it
(classname = model path, name = "CL001 wide-conv-without-reduction") with a ``<failure>`` per
finding. A model that could not be read is one testcase with an ``<error>``. Counts follow the
usual meaning: ``failures`` and ``errors`` count testcases, not findings. Findings a baseline
knew are no failures; they are listed in the testcase's ``<system-out>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from convlint.engine import ModelReport
from convlint.findings import Finding
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


def _suite(report: ModelReport, registry: Registry) -> ET.Element:
    path = _xml(report.path)
    suite = ET.Element("testsuite", name=path)
    failures = errors = 0
    if report.error:
        case = ET.SubElement(suite, "testcase", classname=path, name=READ_CASE)
        error = ET.SubElement(case, "error", message=_xml(report.error), type="ModelError")
        error.text = _xml(f"{report.path}: {report.error}")
        errors = 1
    for code in report.checked:
        rule = registry.get(code)
        name = f"{code} {rule.name}" if rule else code
        case = ET.SubElement(suite, "testcase", classname=path, name=name)
        found = [f for f in report.findings if f.code == code]
        for finding in found:
            failure = ET.SubElement(
                case,
                "failure",
                message=_xml(f"{finding.node}: {finding.message}"),
                type=finding.severity.value,
            )
            failure.text = _details(finding)
        known = [f for f in report.baselined or [] if f.code == code]
        if known:
            out = ET.SubElement(case, "system-out")
            out.text = _xml("\n".join(f"known (baseline): {f.node}: {f.message}" for f in known))
        failures += bool(found)
    tests = len(report.checked) + (1 if report.error else 0)
    suite.attrib.update(tests=str(tests), failures=str(failures), errors=str(errors), skipped="0")
    return suite


def render_junit(reports: Sequence[ModelReport], registry: Registry) -> str:
    root = ET.Element("testsuites", name="convlint")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for report in reports:
        suite = _suite(report, registry)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.attrib[key])
    root.attrib.update({key: str(value) for key, value in totals.items()}, skipped="0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
