"""`--format junit`: a testsuite per model, a testcase per rule checked, a failure per finding."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.engine import ModelReport
from convlint.findings import Finding, Severity
from convlint.registry import load_registry
from convlint.reporters.junit import render_junit

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "naive.onnx")
    fixtures.save(fixtures.inception_3a(), tmp_path / "clean.onnx")
    fixtures.BAD_WRITERS["truncated"](tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def junit(cli: CLI, *argv: str) -> tuple[int, ET.Element]:
    code, out, _ = cli("check", *argv, "--format", "junit")
    assert out.startswith("<?xml ")
    return code, ET.fromstring(out)


def test_flagged_model(models: Path, cli: CLI) -> None:
    code, root = junit(cli, "naive.onnx")
    assert code == 1
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "naive.onnx"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "CL001 wide-conv-without-reduction",
        "CL002 pool-branch-inflates-concat",
        "CL003 linear-conv-chain",
        "CL004 dense-head-on-feature-map",
        "CL005 wide-expansion-by-spatial-conv",
    ]
    assert {c.get("classname") for c in cases} == {"naive.onnx"}
    failures = cases[0].findall("failure")
    assert [f.get("message", "").split(":")[0] for f in failures] == [
        "inception_3a/3x3",
        "inception_3a/5x5",
    ]
    assert failures[0].get("type") == "warning"
    assert failures[0].text is not None
    assert "node: inception_3a/3x3 (Conv)" in failures[0].text
    assert "estimate: params 221,184 -> 36,096" in failures[0].text
    assert len(cases[1].findall("failure")) == 1
    assert all(not c.findall("failure") for c in cases[2:])
    for element in (suite, root):
        assert (element.get("tests"), element.get("failures"), element.get("errors")) == (
            "5",
            "2",
            "0",
        )


def test_select_limits_the_testcases(models: Path, cli: CLI) -> None:
    _, root = junit(cli, "clean.onnx", "--select", "CL002,CL004")
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == [
        "CL002 pool-branch-inflates-concat",
        "CL004 dense-head-on-feature-map",
    ]
    assert root.get("failures") == "0"


def test_unreadable_model_is_an_error_testcase(models: Path, cli: CLI) -> None:
    code, root = junit(cli, "naive.onnx", "truncated.onnx", "clean.onnx")
    assert code == 2
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["naive.onnx", "truncated.onnx", "clean.onnx"]
    broken = suites[1]
    (case,) = broken.findall("testcase")
    error = case.find("error")
    assert error is not None
    assert error.get("message", "").startswith("not an ONNX model")
    assert (broken.get("tests"), broken.get("errors")) == ("1", "1")
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("11", "2", "1")


def test_names_xml_cannot_carry_are_replaced() -> None:
    finding = Finding(
        "CL001", "wide-conv-without-reduction", Severity.WARNING, "a\x01b", "Conv", "m<&>"
    )
    report = ModelReport(path="m.onnx", findings=[finding], checked=["CL001"])
    root = ET.fromstring(render_junit([report], load_registry()))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == "a\ufffdb: m<&>"
