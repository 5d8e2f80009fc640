"""Output people can read (issue 11, item 3): severity and colour in the text format, `[*]`
explained once, --verbose in every format where it fits, Markdown caps, CL002's suggested
diagram, JUnit's one failure per testcase, GitHub annotations only for new findings, and the
report file spelled `--output` in every command."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.engine import ModelReport, Settings, analyze
from convlint.findings import Applicability, Estimate, Finding, Fix, Severity, Skip
from convlint.fixtures._builder import GraphBuilder
from convlint.registry import load_registry
from convlint.reporters import RENDERERS, render_text, use_color
from convlint.reporters.markdown import render_markdown
from convlint.sketch import Neighbourhood, Sketch, SketchNode

CLI = Callable[..., tuple[int, str, str]]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def naive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    return fixtures.save(fixtures.inception_3a_naive(), tmp_path / "naive.onnx")


# --- text: severity, [*], colour ------------------------------------------------------------


def test_text_shows_severity_and_explains_the_marker_once(naive: Path, cli: CLI) -> None:
    fixtures.save(fixtures.linear_conv_chain_bad(), naive.parent / "chain.onnx")
    fixtures.save(fixtures.dense_head_bad(), naive.parent / "head.onnx")
    _, out, _ = cli("check", "naive.onnx", "chain.onnx", "head.onnx")
    lines = out.splitlines()
    # [*]: a safe fix (a fold); [~]: an approximate one (a factorization); none: display-only.
    assert lines[0].startswith("naive.onnx:inception_3a/3x3: CL001 [~] warning: 3×3 conv reads")
    assert any(line.startswith("chain.onnx:expand: CL003 [*] info: ") for line in lines)
    head = next(line for line in lines if line.startswith("head.onnx:"))
    assert " CL004 warning: " in head and "[" not in head  # display-only: no marker
    pool = next(line for line in lines if ":inception_3a/pool:" in line)
    assert " CL002 warning: " in pool  # the concat is a graph output: display-only
    assert lines[-1] == (
        "Found 5 findings in 3 models ([*] 1 fixable with `convlint fix`; [~] 2 approximately "
        "fixable with `convlint fix --inputs DATA`)."
    )
    assert sum("fixable" in line for line in lines) == 1
    assert not ANSI.search(out)  # not a terminal: no colour


def test_no_marker_no_explanation() -> None:
    finding = Finding("CL004", "dense-head-on-feature-map", Severity.ERROR, "fc", "Gemm", "m")
    text = render_text([ModelReport(path="m.onnx", findings=[finding])], load_registry())
    assert text == "m.onnx:fc: CL004 error: m\nFound 1 finding in 1 model.\n"


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, True),  # an empty NO_COLOR is unset (no-color.org)
        ({"FORCE_COLOR": "1"}, False, True),
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False, False),  # NO_COLOR wins, as CPython's
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_use_color(env: dict[str, str], tty: bool, expected: bool) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert use_color(Stream(), env) is expected


def test_force_color_on_the_command_line(
    naive: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    _, coloured, _ = cli("check", "naive.onnx")
    assert "\x1b[1;31mCL001\x1b[0m" in coloured and "\x1b[33mwarning:\x1b[0m" in coloured
    _, plain, _ = cli("check", "naive.onnx", "--output", "report.txt")
    assert not ANSI.search(Path("report.txt").read_text(encoding="utf-8"))  # a file: no colour
    monkeypatch.setenv("NO_COLOR", "1")
    _, uncoloured, _ = cli("check", "naive.onnx")
    assert ANSI.sub("", coloured) == uncoloured
    monkeypatch.delenv("NO_COLOR")
    _, quiet, _ = cli("check", "naive.onnx", "-q")
    assert "Found" not in quiet and ANSI.search(quiet)


# --- --verbose beyond text ------------------------------------------------------------------


def verbose_report() -> ModelReport:
    finding = Finding(
        "CL001", "wide-conv-without-reduction", Severity.WARNING, "conv", "Conv", "wide"
    )
    return ModelReport(
        path="m.onnx",
        findings=[finding],
        skips=[Skip("CL003", "conv2", "a nonlinearity between them")],
        notes=["MACs unknown from Conv 'conv' on"],
        checked=["CL001", "CL003"],
    )


def test_sarif_verbose_notifications() -> None:
    from test_formats_sarif import validate

    plain = json.loads(RENDERERS["sarif"]([verbose_report()], load_registry()))
    assert "toolExecutionNotifications" not in plain["runs"][0]["invocations"][0]
    log = json.loads(RENDERERS["sarif"]([verbose_report()], load_registry(), verbose=True))
    validate(log)
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is True  # notes are no failure
    note, skip = invocation["toolExecutionNotifications"]
    assert note["level"] == "note" and note["message"]["text"].startswith("m.onnx: MACs unknown")
    assert skip["level"] == "note"
    assert skip["message"]["text"] == "conv2: CL003 passed over: a nonlinearity between them"
    assert skip["associatedRule"]["id"] == "CL003"
    assert skip["locations"][0]["logicalLocations"] == [{"name": "conv2", "kind": "function"}]


def test_junit_markdown_and_github_verbose() -> None:
    registry = load_registry()
    report = verbose_report()
    root = ET.fromstring(RENDERERS["junit"]([report], registry, verbose=True))
    case = root.find("testsuite/testcase[@name='CL003 linear-conv-chain']")
    assert case is not None
    assert case.findtext("system-out") == "passed over: conv2: a nonlinearity between them"
    assert root.findtext("testsuite/system-out") == "note: MACs unknown from Conv 'conv' on"
    markdown = RENDERERS["markdown"]([report], registry, verbose=True)
    assert "<summary>Notes and candidates passed over</summary>" in markdown
    assert "- CL003 passed over `conv2`: a nonlinearity between them" in markdown
    assert "passed over" not in RENDERERS["markdown"]([report], registry)
    github = RENDERERS["github"]([report], registry, verbose=True).splitlines()
    assert github[1:] == [
        "::debug::m.onnx: note: MACs unknown from Conv 'conv' on",
        "::debug::m.onnx:conv2: CL003 passed over: a nonlinearity between them",
    ]


def test_verbose_reaches_every_format_from_the_command_line(naive: Path, cli: CLI) -> None:
    fixtures.save(fixtures.resnet_bottleneck(), naive.parent / "bottleneck.onnx")
    _, out, _ = cli("check", "bottleneck.onnx", "--format", "sarif", "-v")
    notes = json.loads(out)["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert any("reads 64 channels, below min-channels=128" in n["message"]["text"] for n in notes)
    _, out, _ = cli("check", "bottleneck.onnx", "--format", "json", "-v")
    assert json.loads(out)["models"][0]["skipped"]


# --- JUnit and GitHub -----------------------------------------------------------------------


def test_junit_one_failure_per_testcase(naive: Path, cli: CLI) -> None:
    fixtures.save(fixtures.vgg_stack(), naive.parent / "vgg.onnx")
    _, out, _ = cli("check", "naive.onnx", "vgg.onnx", "--format", "junit")
    root = ET.fromstring(out)
    cases = root.findall("testsuite/testcase")
    assert max(len(case.findall("failure")) for case in cases) == 1
    assert int(root.get("failures", "0")) == sum(len(c.findall("failure")) for c in cases) == 7
    names = [case.get("name") for case in cases]
    assert len(names) == len(set(zip(names, (c.get("classname") for c in cases), strict=True)))


def test_github_does_not_annotate_baselined_findings(naive: Path, cli: CLI) -> None:
    cli("check", "naive.onnx", "--write-baseline", "baseline.json")
    fixtures.save(fixtures.conv3x3(), naive.parent / "conv.onnx")
    code, out, _ = cli("check", ".", "--format", "github", "--baseline", "baseline.json")
    assert code == 1
    assert out.count("\n") == 1 and out.startswith("::warning file=conv.onnx,")


# --- Markdown: caps and the suggested diagram ----------------------------------------------


def _finding(index: int) -> Finding:
    sketch = Sketch((SketchNode("n0", f"conv{index}", "Conv", "1×512×56×56", "flagged"),), ())
    return Finding(
        "CL001",
        "wide-conv-without-reduction",
        Severity.WARNING,
        f"conv{index}",
        "Conv",
        "3×3 conv reads 512 channels " + "with a long message " * 4,
        estimate=Estimate(2_359_296, 278_528, 7_398_752_256, 873_463_808),
        fix=Fix(Applicability.SAFE, "factorize"),
        context=Neighbourhood(sketch, sketch),
    )


def big_folder(models: int, findings: int) -> list[ModelReport]:
    return [
        ModelReport(
            path=f"models/net{m}.onnx",
            findings=[_finding(i) for i in range(findings)],
            checked=["CL001"],
        )
        for m in range(models)
    ]


def test_markdown_caps_the_diagrams() -> None:
    out = render_markdown(big_folder(3, 12), load_registry())
    assert out.count("```mermaid") == 2 * 25
    assert "> Diagrams are drawn for 25 of 36 findings (the cap is 25)." in out
    assert "The report is cut" not in out and len(out) <= 65_536
    small = render_markdown(big_folder(3, 12), load_registry(), max_diagrams=0)
    assert "```mermaid" not in small and "drawn for 0 of 36 findings" in small


def test_markdown_stays_within_a_pull_request_comment() -> None:
    reports = big_folder(40, 30)
    out = render_markdown(reports, load_registry())
    assert len(out) <= 65_536
    notices = [line for line in out.splitlines() if line.startswith("> ")]
    assert notices[0] == (
        "> Diagrams are drawn for 0 of 1200 findings (the cap is 25; "
        "the rest did not fit the size limit)."
    )
    cut = re.match(
        r"> The report is cut to 65,536 characters \(a pull-request comment's limit\): "
        r"(\d+) models not shown in full, (\d+) findings left out of the tables\. ",
        notices[1],
    )
    assert cut is not None
    shown = out.count("| CL001 | `conv")
    assert shown + int(cut.group(2)) == 1200
    headings = out.count("\n## `models/net")
    assert headings + int(cut.group(1)) >= 40
    # What fits is whole: the tables are not cut inside a row.
    assert out.rstrip("\n").splitlines()[-1].startswith("| CL001 | `conv")


def test_markdown_size_cap_drops_diagrams_first() -> None:
    reports = big_folder(2, 5)
    full = render_markdown(reports, load_registry())
    limit = len(full) - 1000
    out = render_markdown(reports, load_registry(), max_chars=limit)
    assert len(out) <= limit and "The report is cut" not in out
    assert out.count("| CL001 | `conv") == 10  # every finding still listed
    assert "the rest did not fit the size limit" in out


def test_cl002_suggested_diagram_shows_the_new_width_and_marks_only_changes(
    tmp_path: Path,
) -> None:
    g = GraphBuilder(seed=0)
    x = g.input("input", (1, 192, 28, 28))
    branches = [
        g.relu(g.conv(x, 64, 1, name="b1x1")),
        g.relu(g.conv(g.relu(g.conv(x, 96, 1, name="b3x3_reduce")), 128, 3, name="b3x3")),
        g.maxpool(x, 3, 1, 1, name="pool"),
    ]
    joined = g.concat(branches, name="concat")
    g.conv(joined, 256, 1, name="next")
    path = fixtures.save(g.build("inception_with_consumer"), tmp_path / "m.onnx")
    report = analyze(path, load_registry(), Settings(select=["CL002"]))
    (finding,) = report.findings
    assert finding.context is not None and finding.context.after is not None
    after = finding.context.after
    marked = {n.name or n.detail: (n.role, n.detail) for n in after.nodes if n.role != "context"}
    assert marked == {
        "Conv 1×1 192→32 (projection)": ("suggested", "Conv 1×1 192→32 (projection)"),
        "concat": ("changed", "1×224×28×28"),  # 384 -> 224 channels
        "next": ("changed", "1×256×28×28"),  # its weight loses 160 input channels
    }
    pool = next(n for n in after.nodes if n.name == "pool")
    assert pool.role == "context" and pool.detail == "1×192×28×28"
    out = render_markdown([report], load_registry())
    suggested = out.split("As suggested")[1]
    assert 'concat<br/>Concat 1×224×28×28"]' in suggested
    assert "classDef changed" in suggested


# --- the report file ------------------------------------------------------------------------


def test_output_is_the_report_file_in_every_command(naive: Path, cli: CLI) -> None:
    code, out, _ = cli("check", "naive.onnx", "--output", "check.txt")
    assert code == 1 and out == "" and "CL001" in Path("check.txt").read_text("utf-8")
    code, out, _ = cli("stats", "naive.onnx", "--output", "stats.txt")
    assert code == 0 and out == "" and "total" in Path("stats.txt").read_text("utf-8")
    planted = fixtures.inception_3a_naive(planted_rank=24, seed=0)
    fixtures.save(planted, naive.parent / "planted.onnx")
    argv = ("fix", "planted.onnx", "--method", "weight", "--samples", "2")
    code, out, _ = cli(*argv, "-o", "fixed.onnx", "--output", "fix.json", "--format", "json")
    assert code == 0 and out == ""
    assert json.loads(Path("fix.json").read_text("utf-8"))["output"] == "fixed.onnx"
    assert Path("fixed.onnx").stat().st_size > 0
    # In fix, -o is the model; --output stays the report and never names the model.
    code, _, err = cli(*argv, "--output", "only-a-report.txt")
    assert code == 2 and not Path("only-a-report.txt").exists()
