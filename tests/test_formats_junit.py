"""`--format junit`: a testsuite per model; a testcase per finding, with its one failure, and
one per rule checked that found nothing."""

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
        "CL001 wide-conv-without-reduction: inception_3a/3x3",
        "CL001 wide-conv-without-reduction: inception_3a/5x5",
        "CL002 pool-branch-inflates-concat: inception_3a/pool",
        "CL003 linear-conv-chain",
        "CL004 dense-head-on-feature-map",
        "CL005 wide-expansion-by-spatial-conv",
    ]
    assert {c.get("classname") for c in cases} == {"naive.onnx"}
    # One <failure> per testcase: JUnit readers show no more than one.
    assert [len(c.findall("failure")) for c in cases] == [1, 1, 1, 0, 0, 0]
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("inception_3a/3x3: 3×3 conv reads 192")
    assert failure.get("type") == "warning"
    assert failure.text is not None
    assert "node: inception_3a/3x3 (Conv)" in failure.text
    assert "estimate: params 221,184 -> 36,096" in failure.text
    for element in (suite, root):
        counts = [element.get(key) for key in ("tests", "failures", "errors", "skipped")]
        assert counts == ["6", "3", "0", "0"]


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
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("12", "3", "1")


def test_names_xml_cannot_carry_are_replaced() -> None:
    finding = Finding(
        "CL001", "wide-conv-without-reduction", Severity.WARNING, "a\x01b", "Conv", "m<&>"
    )
    report = ModelReport(path="m.onnx", findings=[finding], checked=["CL001"])
    root = ET.fromstring(render_junit([report], load_registry()))
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == "a\ufffdb: m<&>"
