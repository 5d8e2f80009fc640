"""`--format github`: workflow commands, one per finding, escaped as the Actions runner expects."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.engine import ModelReport
from convlint.findings import Finding, Severity
from convlint.registry import load_registry
from convlint.reporters.github import escape_data, escape_property, render_github

CLI = Callable[..., tuple[int, str, str]]
COMMAND = re.compile(r"^::(error|warning|notice) file=([^,:]*),title=([^,:]*)::(.*)$")


def unescape(text: str) -> str:
    for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, plain)
    return text


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "nets").mkdir()
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "nets" / "naive.onnx")
    fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "nets" / "chain.onnx")
    fixtures.BAD_WRITERS["empty"](tmp_path / "nets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_command_per_finding(models: Path, cli: CLI) -> None:
    code, out, err = cli("check", "nets/naive.onnx", "nets/chain.onnx", "--format", "github")
    assert code == 1 and err == ""
    parsed = [COMMAND.match(line) for line in out.splitlines()]
    assert all(parsed), out
    rows = [(m.group(1), m.group(2), unescape(m.group(3))) for m in parsed if m]
    assert rows == [
        ("warning", "nets/naive.onnx", "CL001 wide-conv-without-reduction"),
        ("warning", "nets/naive.onnx", "CL001 wide-conv-without-reduction"),
        ("warning", "nets/naive.onnx", "CL002 pool-branch-inflates-concat"),
        ("notice", "nets/chain.onnx", "CL003 linear-conv-chain"),
    ]
    message = unescape(parsed[2].group(4))  # type: ignore[union-attr]
    assert message.startswith("inception_3a/pool (MaxPool): MaxPool branch passes all 192")
    assert "(46% of its 416)" in message  # the % went out as %25
    assert message.splitlines()[1].startswith("concat channels 416 -> 256")


def test_unreadable_model_is_an_error(models: Path, cli: CLI) -> None:
    code, out, _ = cli("check", "nets", "--format", "github")
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    (error,) = errors
    assert error.startswith("::error file=nets/empty.onnx,title=convlint%3A model not readable::")
    assert "empty file" in error
    assert len(out.splitlines()) == 5  # the others are still reported


@pytest.mark.parametrize(
    ("text", "data", "prop"),
    [
        ("50%", "50%25", "50%25"),
        ("a\r\nb", "a%0D%0Ab", "a%0D%0Ab"),
        ("x:y,z", "x:y,z", "x%3Ay%2Cz"),
        ("%0A", "%250A", "%250A"),  # an escape sequence in the text stays literal
    ],
)
def test_escaping(text: str, data: str, prop: str) -> None:
    assert escape_data(text) == data
    assert escape_property(text) == prop


def test_error_severity_and_awkward_names() -> None:
    finding = Finding("CL001", "wide-conv-without-reduction", Severity.ERROR, "n", "Conv", "m")
    report = ModelReport(path="odd, name:1.onnx", findings=[finding])
    (line,) = render_github([report], load_registry()).splitlines()
    assert line == (
        "::error file=odd%2C name%3A1.onnx,title=CL001 wide-conv-without-reduction::n (Conv): m"
    )


def test_control_characters_from_the_model_are_escaped_as_in_text() -> None:
    """Issue 20, item 7: an ESC in a node name must not reach the log raw (it would recolour
    it); the runner's own escapes (%, CR, LF) still apply to what convlint writes."""
    node = "conv\x1b[31m\x07"
    finding = Finding(
        "CL001", "wide-conv-without-reduction", Severity.WARNING, node, "Co\x1bnv", "reads\x1b[0m"
    )
    report = ModelReport(path="m\x1b.onnx", findings=[finding])
    error = ModelReport(path="bad.onnx", error="node 'a\x1b[2J' is odd")
    lines = render_github([report, error], load_registry()).splitlines()
    assert lines == [
        "::warning file=m\\x1b.onnx,title=CL001 wide-conv-without-reduction::"
        "conv\\x1b[31m\\x07 (Co\\x1bnv): reads\\x1b[0m",
        "::error file=bad.onnx,title=convlint%3A model not readable::node 'a\\x1b[2J' is odd",
    ]
    assert not any(ord(char) < 32 for line in lines for char in line)
