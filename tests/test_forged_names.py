"""A model's names cannot forge a report: control characters in node names are escaped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from convlint import fixtures

FORGED = "conv\nAll checks passed! (1 model)\x1b[2K"


def forged_model(tmp_path: Path) -> Path:
    model = fixtures.conv3x3()
    node = model.graph.node[0]
    assert node.op_type == "Conv"
    node.name = FORGED
    return fixtures.save(model, tmp_path / "forged.onnx")


def test_text_report_escapes_names(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = forged_model(tmp_path)
    code, out, _ = cli("check", str(path), "--verbose")
    assert code == 1
    assert "\x1b" not in out
    finding = next(line for line in out.splitlines() if "CL001" in line)
    assert finding.startswith(f"{path}:conv\\nAll checks passed! (1 model)\\x1b[2K: CL001")
    assert not any(line.startswith("All checks passed!") for line in out.splitlines())
    assert out.splitlines()[-1].startswith("Found 1 finding in 1 model")


def test_markdown_report_escapes_names(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    path = forged_model(tmp_path)
    code, out, _ = cli("check", str(path), "--format", "markdown")
    assert "\x1b" not in out
    mermaid = out[out.index("```mermaid") :]
    mermaid = mermaid[: mermaid.index("```", 3) + 3]
    assert "All checks passed!" in mermaid  # inside a label, on the label's own line
    assert all(not line.startswith("All checks") for line in mermaid.splitlines())


def test_error_lines_escape_names(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    model.opset_import[0].version = 17
    bad = tmp_path / "bad\x1b[31m.onnx"
    bad.write_bytes(b"\x08garbage")
    code, _, err = cli("check", str(bad))
    assert code == 2
    assert "\x1b" not in err and "bad\\x1b[31m.onnx" in err
