"""`--format markdown` and the neighbourhood sketches the engine attaches to findings."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.findings import Finding, Severity
from convlint.registry import load_registry
from convlint.reporters.markdown import mermaid, render_markdown
from convlint.sketch import Neighbourhood, Sketch, SketchNode

CLI = Callable[..., tuple[int, str, str]]
MERMAID = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)


def lint(tmp_path: Path, name: str, **kwargs: object) -> ModelReport:
    path = fixtures.save(fixtures.BUILDERS[name](**kwargs), tmp_path / f"{name}.onnx")
    return analyze(path, load_registry(), Settings(select=["ALL"]))


def labels(sketch: Sketch | None) -> list[str]:
    assert sketch is not None
    return [node.name or node.detail for node in sketch.nodes]


def test_markdown_report_of_the_naive_block(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "naive.onnx")
    code, out, _ = cli("check", "naive.onnx", "--format", "markdown")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "# convlint report"
    assert "1 model checked: 3 findings." in lines
    header = lines.index("| params | MACs | findings | potential savings |")
    # CL001 3×3: 221,184 -> 36,096; CL001 5×5: 153,600 -> 68,352; CL002: 0 -> 6,144 params.
    assert lines[header + 2] == (
        "| 387,072 | 304,819,200 | 3 | −264,192 params (68%), −207,126,528 MACs (68%) |"
    )
    assert "| CL001 | `inception_3a/3x3` | 3×3 conv reads 192 channels" in out
    blocks = MERMAID.findall(out)
    assert len(blocks) == 6  # as it is and as suggested, for each finding
    assert out.count("<details>") == 3
    as_is, suggested = blocks[0], blocks[1]
    assert as_is.startswith("flowchart TD\n")
    assert 'k1["inception_3a/3x3<br/>Conv 1×128×28×28"]' in as_is
    assert "class k1 flagged" in as_is
    assert '["Conv 1×1 192→48"]' in suggested and '["Conv 1×1 48→128"]' in suggested
    assert "inception_3a/3x3<br/>" not in suggested


def test_unreadable_model_is_a_line(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fixtures.BAD_WRITERS["truncated"](tmp_path)
    fixtures.save(fixtures.inception_3a(), tmp_path / "clean.onnx")
    code, out, _ = cli("check", ".", "--format", "markdown")
    assert code == 2
    assert "2 models checked: 0 findings, 1 model could not be read." in out
    assert "**Could not be read:** not an ONNX model" in out
    assert "No findings." in out


def test_context_sketches_the_neighbourhood(tmp_path: Path) -> None:
    report = lint(tmp_path, "inception_3a_naive")
    pool = report.findings[2]
    assert pool.code == "CL002" and pool.context is not None
    before = pool.context.before
    roles = {node.name: node.role for node in before.nodes}
    assert roles["inception_3a/pool"] == "flagged"
    assert roles["inception_3a/output"] == "related"
    assert roles["inception_3a/3x3/relu"] == "context"
    assert roles["input"] == "context" and roles["output"] == "context"
    keys = {node.name: node.key for node in before.nodes}
    assert (keys["inception_3a/pool"], keys["inception_3a/output"]) in before.edges
    after = pool.context.after
    assert after is not None
    # The projection is inserted after the pool, which stays as it is; the concat narrows
    # from 416 to 256 channels, and so does the model output it writes.
    assert labels(after)[-4:] == [
        "inception_3a/pool",
        "Conv 1×1 192→32 (projection)",
        "inception_3a/output",
        "output",
    ]
    assert (keys["inception_3a/pool"], "s0") in after.edges
    assert ("s0", keys["inception_3a/output"]) in after.edges
    assert (keys["inception_3a/pool"], keys["inception_3a/output"]) not in after.edges
    details = {node.name or node.detail: node.detail for node in after.nodes}
    assert details["inception_3a/output"] == details["output"] == "1×256×28×28"
    # Only what changes is marked: the new conv, the narrower concat and output.
    marked = {node.name or node.detail: node.role for node in after.nodes if node.role != "context"}
    assert marked == {
        "Conv 1×1 192→32 (projection)": "suggested",
        "inception_3a/output": "changed",
        "output": "changed",
    }


def test_a_replaced_span_includes_the_nodes_between(tmp_path: Path) -> None:
    (fold,) = lint(tmp_path, "linear_conv_chain_bad").findings
    assert fold.context is not None and fold.context.after is not None
    assert labels(fold.context.before) == ["input", "expand", "expand_bn", "conv", "conv_bn"]
    assert labels(fold.context.after) == ["input", "Conv 3×3 64→64 (folded)", "conv_bn"]
    head = lint(tmp_path, "vgg16", weights="external").findings[-1]
    assert head.code == "CL004" and head.context is not None
    assert labels(head.context.after) == [
        "features.30",
        "GlobalAveragePool",
        "Flatten",
        "Gemm 512→4096",
        "classifier.1",
    ]


def test_context_stays_out_of_the_json(tmp_path: Path) -> None:
    report = lint(tmp_path, "inception_3a_naive")
    assert all(f.context is not None for f in report.findings)
    findings = json.loads(json.dumps(report.as_dict()))["findings"]
    assert {key for finding in findings for key in finding} == {
        "code", "rule", "severity", "node", "op_type", "message", "estimate", "fix",
    }  # fmt: skip


def test_labels_are_escaped_for_mermaid_and_tables() -> None:
    odd = 'a"b<c>|d`e'
    sketch = Sketch(
        (
            SketchNode("n0", odd, "Conv", "1×8", "flagged"),
            SketchNode("s0", "", "", "x→y", "suggested"),
        ),
        (("n0", "s0"),),
        omitted=2,
    )
    text = "\n".join(mermaid(sketch))
    assert 'k0["a#quot;b#lt;c#gt;|d#96;e<br/>Conv 1×8"]' in text
    assert 'more["… 2 more neighbours"]' in text
    finding = Finding(
        "CL001", "wide-conv-without-reduction", Severity.WARNING, odd, "Conv", "x | y",
        context=Neighbourhood(sketch),
    )  # fmt: skip
    out = render_markdown([ModelReport(path="m.onnx", findings=[finding])], load_registry())
    assert '| CL001 | `` a"b<c>\\|d`e `` | x \\| y |' in out
