"""`--write-baseline` / `--baseline`: known findings pass the gate, new ones fail it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]


def reordered_naive() -> onnx.ModelProto:
    """The naive 3a block with its four branches in reverse order (still topological)."""
    model = fixtures.inception_3a_naive()
    nodes = list(model.graph.node)
    *branches, concat = nodes
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in branches:
        groups.setdefault(node.name.split("/")[1], []).append(node)
    order = [node for group in reversed(list(groups.values())) for node in group]
    del model.graph.node[:]
    model.graph.node.extend([*order, concat])
    return model


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with models/naive.onnx (3 warnings) and models/chain.onnx (1 info)."""
    (tmp_path / "models").mkdir()
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "models" / "naive.onnx")
    fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "models" / "chain.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_write_baseline_records_findings_and_exits_zero(repo: Path, cli: CLI) -> None:
    code, out, err = cli("check", "models", "--write-baseline", "convlint-baseline.json")
    assert code == 0
    assert "Found 4 findings" in out
    assert err == "convlint: recorded 4 findings in convlint-baseline.json\n"
    assert json.loads((repo / "convlint-baseline.json").read_text()) == [
        {"path": "models/chain.onnx", "code": "CL003", "node": "expand"},
        {"path": "models/naive.onnx", "code": "CL001", "node": "inception_3a/3x3"},
        {"path": "models/naive.onnx", "code": "CL001", "node": "inception_3a/5x5"},
        {"path": "models/naive.onnx", "code": "CL002", "node": "inception_3a/pool"},
    ]


def test_known_findings_pass_and_are_marked(repo: Path, cli: CLI) -> None:
    cli("check", "models", "--write-baseline", "baseline.json")
    code, out, err = cli("check", "models", "--baseline", "baseline.json", "--fail-on", "info")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == (
        "models/chain.onnx:expand: CL003 info: Conv -> BatchNormalization -> Conv: no nonlinearity "
        "between the convs, so they are one linear map (64->64 channels); fold them or add an "
        "activation (baseline)"
    )
    assert sum(line.endswith(" (baseline)") for line in lines) == 4
    assert lines[-1] == "All checks passed! (2 models; 4 known in the baseline)"


def test_a_new_finding_fails_the_gate(repo: Path, cli: CLI) -> None:
    cli("check", "models/naive.onnx", "--write-baseline", "baseline.json")
    fixtures.save(fixtures.conv3x3(), repo / "models" / "conv.onnx")
    code, out, _ = cli("check", "models", "--baseline", "baseline.json")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("models/chain.onnx:expand: CL003 [*] info: Conv")
    assert lines[2].startswith(
        "models/conv.onnx:conv: CL001 [~] warning: 3×3 conv reads 256 channels"
    )
    assert lines[-1] == (
        "Found 2 findings in 3 models ([*] 1 fixable with `convlint fix`; [~] 1 approximately "
        "fixable with `convlint fix --inputs DATA`); 3 known in the baseline."
    )
    # The info finding of chain.onnx is new too, but below the default --fail-on warning.
    code, _, _ = cli("check", "models/chain.onnx", "--baseline", "baseline.json")
    assert code == 0


def test_matching_survives_reordering_retraining_and_another_cwd(
    repo: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "ci").mkdir()
    cli("check", "models/chain.onnx", "models/naive.onnx", "--write-baseline", "ci/baseline.json")
    assert json.loads((repo / "ci" / "baseline.json").read_text())[0]["path"] == (
        "../models/chain.onnx"  # relative to the baseline's folder
    )
    fixtures.save(reordered_naive(), repo / "models" / "naive.onnx")
    fixtures.save(fixtures.linear_conv_chain_bad(seed=5), repo / "models" / "chain.onnx")
    monkeypatch.chdir(repo / "models")
    code, out, _ = cli("check", "naive.onnx", "chain.onnx", "--baseline", "../ci/baseline.json")
    assert code == 0, out
    assert out.splitlines()[-1] == "All checks passed! (2 models; 4 known in the baseline)"
    code, _, _ = cli("check", str(repo / "models"), "--baseline", str(repo / "ci/baseline.json"))
    assert code == 0


def test_json_lists_only_new_findings(repo: Path, cli: CLI) -> None:
    cli("check", "models/naive.onnx", "--write-baseline", "baseline.json")
    code, out, _ = cli("check", "models", "--baseline", "baseline.json", "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert [len(m["findings"]) for m in report["models"]] == [1, 0]  # chain, naive
    assert report["summary"] == {
        "models": 2,
        "findings": 1,
        "by_code": {"CL003": 1},
        "errors": 0,
        "fixes": {"safe": 1, "approximate": 0, "unsafe": 0, "display-only": 0},
    }


def test_other_formats_mark_known_findings(repo: Path, cli: CLI) -> None:
    cli("check", "models/naive.onnx", "--write-baseline", "baseline.json")
    argv = ("check", "models", "--baseline", "baseline.json", "--format")

    _, out, _ = cli(*argv, "sarif")
    results = json.loads(out)["runs"][0]["results"]
    states = [(r["ruleId"], r["baselineState"], len(r["suppressions"])) for r in results]
    assert states == [
        ("CL003", "new", 0),
        ("CL001", "unchanged", 1),
        ("CL001", "unchanged", 1),
        ("CL002", "unchanged", 1),
    ]
    from test_formats_sarif import validate

    validate(json.loads(out))

    _, out, _ = cli(*argv, "junit")
    root = ET.fromstring(out)
    assert (root.get("failures"), root.get("skipped")) == ("1", "3")
    naive = root.findall("testsuite")[1]
    known = [case for case in naive.findall("testcase") if case.find("skipped") is not None]
    assert [case.get("name") for case in known][0] == (
        "CL001 wide-conv-without-reduction: inception_3a/3x3"
    )
    skipped = known[0].find("skipped")
    assert skipped is not None and skipped.get("message") == "known (baseline)"
    assert "node: inception_3a/3x3 (Conv)" in (skipped.text or "")

    # Only the new finding is annotated: the baseline's are not brought up again.
    _, out, _ = cli(*argv, "github")
    assert [line.split(" ", 1)[0] for line in out.splitlines()] == ["::notice"]
    assert "CL003" in out and "baseline" not in out

    _, out, _ = cli(*argv, "markdown")
    assert "2 models checked: 1 finding, 3 known in the baseline." in out
    assert "| 0 (+3 in baseline) |" in out
    assert "| CL001 (baseline) | `inception_3a/3x3` |" in out
    assert out.count("```mermaid") == 2  # diagrams for the new finding only


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file (create it with --write-baseline)"),
        ("{", "not JSON (Expecting property name enclosed in double quotes, line 1)"),
        ('{"path": "a"}', "expected a JSON list of {path, code, node} objects"),
        (
            '[{"path": "a", "code": "CL001"}]',
            "entry 0 is not an object of strings path, code, node",
        ),
        ('[{"path": "a", "code": "CL001", "node": 3}]', "entry 0 is not an object of strings"),
        (b"\xff\xfe[]", "cannot read: not UTF-8 text"),
    ],
)
def test_a_bad_baseline_is_one_line_and_exit_2(
    repo: Path, cli: CLI, content: str | bytes | None, message: str
) -> None:
    path = repo / "baseline.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, out, err = cli("check", "models", "--baseline", "baseline.json")
    assert code == 2 and out == ""
    assert err.startswith(f"convlint: error: --baseline baseline.json: {message}")
    assert err.count("\n") == 1


def test_extra_keys_in_entries_are_allowed(repo: Path, cli: CLI) -> None:
    entry = {"path": "models/chain.onnx", "code": "CL003", "node": "expand", "note": "later"}
    (repo / "baseline.json").write_text(json.dumps([entry]))
    code, out, _ = cli("check", "models/chain.onnx", "--baseline", "baseline.json")
    assert code == 0 and out.endswith("(1 model; 1 known in the baseline)\n")


def test_write_baseline_into_a_missing_folder_is_exit_2(repo: Path, cli: CLI) -> None:
    code, _, err = cli("check", "models", "--write-baseline", "no/such/dir/b.json")
    assert code == 2
    assert err.startswith("convlint: error: --write-baseline no/such/dir/b.json: ")
    assert err.count("\n") == 1


def test_unreadable_model_still_exits_2_with_a_baseline(repo: Path, cli: CLI) -> None:
    fixtures.BAD_WRITERS["truncated"](repo / "models")
    code, _, err = cli("check", "models", "--write-baseline", "baseline.json")
    assert code == 2
    assert "models/truncated.onnx: not an ONNX model" in err
    assert len(json.loads((repo / "baseline.json").read_text())) == 4  # the others recorded
    code, _, _ = cli("check", "models", "--baseline", "baseline.json")
    assert code == 2
