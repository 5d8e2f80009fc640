"""A rule that raises is that model's error: the other rules' findings are still reported, in
every format, and the error names the rule's code and the exception (issue 17, part 4)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import convlint
from convlint import fixtures
from convlint.findings import Finding, Severity
from convlint.registry import Registry, Rule, load_registry

CLI = Callable[..., tuple[int, str, str]]
ERROR = "rule XB1 (tests) failed: ValueError: no weights for this node"


def _breaks(ctx: Any) -> Iterator[Finding]:
    for node in ctx.graph:
        yield ctx.finding(node, "found before the rule breaks: never reported")
    raise ValueError("no weights\nfor this node")  # on two lines: the error is one


BROKEN = Rule(
    code="XB1",
    name="breaks-on-every-model",
    severity=Severity.WARNING,
    fix="never",
    summary="a registered rule that raises",
    check=_breaks,
    origin="tests",
)


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-in rules and XB1, for the command line and the API alike."""
    registry = Registry([*load_registry(), BROKEN])
    monkeypatch.setattr("convlint.registry.load_registry", lambda: registry)
    monkeypatch.setattr("convlint.api.load_registry", lambda: registry)
    return registry


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")


def test_the_api_report_has_the_findings_and_the_error(broken: Registry, model: Path) -> None:
    report = convlint.check(model)
    assert [(f.code, f.node) for f in report.findings] == [("CL001", "conv")]
    assert report.error == ERROR
    assert report.failed_rules == ["XB1"]
    assert report.checked == ["CL001", "CL002", "CL003", "CL004", "CL005", "XB1"]


def test_text_shows_the_findings_and_stderr_the_error(
    broken: Registry, model: Path, cli: CLI
) -> None:
    code, out, err = cli("check", str(model), "--jobs", "1")
    assert code == 2
    assert err == f"convlint: error: {model}: {ERROR}\n"
    assert out.splitlines()[0].startswith(f"{model}:conv: CL001 ")
    assert out.splitlines()[-1] == (
        "Found 1 finding in 1 model ([~] 1 approximately fixable with `convlint fix --inputs "
        "DATA`); a rule failed on 1 model."
    )


def test_a_broken_rule_fails_even_with_exit_zero_or_nothing_else_found(
    broken: Registry, tmp_path: Path, cli: CLI
) -> None:
    clean = fixtures.save(fixtures.inception_3a(), tmp_path / "clean.onnx")
    code, out, err = cli("check", str(clean), "--exit-zero")
    assert code == 2 and err == f"convlint: error: {clean}: {ERROR}\n"
    assert (
        out == "No findings in the models that could be read (1 model; a rule failed on 1 model).\n"
    )


def test_json_has_both(broken: Registry, model: Path, cli: CLI) -> None:
    code, out, _ = cli("check", str(model), "--format", "json")
    data = json.loads(out)
    assert code == 2
    (one,) = data["models"]
    assert [f["code"] for f in one["findings"]] == ["CL001"] and one["error"] == ERROR
    assert data["summary"]["errors"] == 1 and data["summary"]["findings"] == 1


def test_github_gitlab_sarif_markdown_and_junit_show_both(
    broken: Registry, model: Path, cli: CLI
) -> None:
    _, github, _ = cli("check", str(model), "--format", "github")
    lines = github.splitlines()
    assert lines[0].startswith(f"::error file={model},title=convlint%3A rule failed::rule XB1 ")
    assert lines[1].startswith(f"::warning file={model},title=CL001 ")

    _, gitlab, _ = cli("check", str(model), "--format", "gitlab")
    issues = json.loads(gitlab)
    assert [i["check_name"] for i in issues] == [
        "convlint rule-failed",
        "CL001 wide-conv-without-reduction",
    ]
    assert issues[0]["description"] == f"rule failed: {ERROR}"

    _, sarif, _ = cli("check", str(model), "--format", "sarif")
    (run,) = json.loads(sarif)["runs"]
    assert [r["ruleId"] for r in run["results"]] == ["CL001"]
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"][0]["message"]["text"] == f"{model}: {ERROR}"

    _, markdown, _ = cli("check", str(model), "--format", "markdown")
    assert "1 model checked: 1 finding, a rule failed on 1 model." in markdown
    assert f"**Rule failed:** {ERROR}" in markdown and "CL001" in markdown

    _, junit, _ = cli("check", str(model), "--format", "junit")
    suite = ET.fromstring(junit).find("testsuite")
    assert suite is not None
    assert {k: suite.get(k) for k in ("tests", "failures", "errors")} == {
        "tests": "6",  # CL001's finding, four rules that passed, XB1 in error
        "failures": "1",
        "errors": "1",
    }
    (error,) = suite.iter("error")
    assert error.get("message") == ERROR and error.get("type") == "RuleError"
