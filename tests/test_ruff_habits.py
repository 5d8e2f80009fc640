"""ruff's habits, as issue 18 lists them: --statistics, --show-files, --force-exclude, a default
path, stdin, one error prefix, -V, "did you mean", extend, .convlint.toml, --config KEY=VALUE,
and suppression inside the model (a node's metadata_props ``convlint.ignore``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from convlint import fixtures
from convlint.cli import main

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder with the naive Inception block (CL001 on 3x3 and 5x5, CL002 on the pool) and
    the clean one."""
    folder = tmp_path / "models"
    folder.mkdir()
    fixtures.save(fixtures.inception_3a_naive(), folder / "naive.onnx")
    fixtures.save(fixtures.inception_3a(), folder / "clean.onnx")
    return folder


def _ignore_on(model: onnx.ModelProto, node: str, codes: str) -> onnx.ModelProto:
    target = next(n for n in model.graph.node if n.name == node)
    entry = target.metadata_props.add()
    entry.key, entry.value = "convlint.ignore", codes
    return model


def test_statistics_counts_each_rule(models: Path, cli: CLI) -> None:
    code, out, _ = cli("check", str(models), "--statistics", "--jobs", "1")
    assert code == 1  # the exit code is the gate's, as in ruff
    assert (
        out
        == "2\tCL001\t[~] wide-conv-without-reduction\n1\tCL002\t[ ] pool-branch-inflates-concat\n"
    )
    code, out, _ = cli("check", str(models), "--statistics", "--format", "json", "--jobs", "1")
    rows = json.loads(out)
    assert [(r["code"], r["count"], r["fixable"]) for r in rows] == [
        ("CL001", 2, True),  # approximate fixes: convlint fix --inputs applies them
        ("CL002", 1, False),
    ]
    assert cli("check", str(models / "clean.onnx"), "--statistics") == (0, "", "")


def test_show_files_lists_what_would_be_checked(models: Path, cli: CLI) -> None:
    (models / "pyproject.toml").write_text('[tool.convlint]\nexclude = ["clean.onnx"]\n')
    code, out, _ = cli("check", str(models), "--show-files")
    assert (code, out) == (0, f"{models / 'naive.onnx'}\n")
    # a file named on the command line is checked even so...
    _, out, _ = cli("check", str(models / "clean.onnx"), "--show-files")
    assert out == f"{models / 'clean.onnx'}\n"
    # ...unless --force-exclude (pre-commit names the files): nothing to check is exit 0
    named = (str(models / "clean.onnx"), str(models / "naive.onnx"))
    _, out, _ = cli("check", *named, "--show-files", "--force-exclude")
    assert out == f"{models / 'naive.onnx'}\n"
    assert cli("check", named[0], "--force-exclude") == (0, "", "")
    code, out, _ = cli("check", named[0], "--force-exclude", "--format", "json")
    assert code == 0 and out == ""


def test_default_path_is_the_working_directory(
    models: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(models)
    code, out, _ = cli("check", "--show-files")
    assert (code, out) == (0, "clean.onnx\nnaive.onnx\n")
    code, out, _ = cli("check", "--statistics")
    assert code == 1 and out.startswith("2\tCL001")


def test_stdin_model(models: Path, tmp_path: Path) -> None:
    data = (models / "naive.onnx").read_bytes()
    run = [sys.executable, "-m", "convlint", "check", "-", "--format", "json"]
    done = subprocess.run(run, input=data, capture_output=True, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["models"][0]["path"] == "-"
    assert len(report["models"][0]["findings"]) == 3
    # --stdin-filename names it, and its configuration applies as to that path
    (tmp_path / "convlint.toml").write_text('per-file-ignores = { "legacy/*" = ["CL001"] }\n')
    named = [*run, "--stdin-filename", "legacy/net.onnx"]
    done = subprocess.run(named, input=data, capture_output=True, cwd=tmp_path)
    report = json.loads(done.stdout)
    assert report["models"][0]["path"] == "legacy/net.onnx"
    assert [f["code"] for f in report["models"][0]["findings"]] == ["CL002"]
    done = subprocess.run(run[:-2], input=b"not a model", capture_output=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.decode().startswith("convlint: error: -: ")


def test_stdin_is_one_model_alone(models: Path, cli: CLI) -> None:
    code, _, err = cli("check", "-", str(models))
    assert code == 2 and "- reads one model from stdin" in err
    code, _, err = cli("check", str(models), "--stdin-filename", "x.onnx")
    assert code == 2 and "give - as MODEL" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", ".", "--selct", "CL001"],
            "convlint: error: unrecognized arguments: --selct CL001 (did you mean '--select'?) "
            "(see `convlint check --help`)\n",
        ),
        (["chek"], "invalid choice: 'chek' (did you mean 'check'?) (choose from"),
        (["check", "--format", "jsn"], "invalid choice: 'jsn' (did you mean 'json'?)"),
        (["check", "--select", "CL01"], "--select: 'CL01' matches no rule (did you mean 'CL001'?)"),
        (["rule", "CL0001"], "unknown rule 'CL0001' (did you mean 'CL001'?)"),
        (
            ["rule", "wide-conv"],
            "unknown rule 'wide-conv' (did you mean 'wide-conv-without-reduction'?)",
        ),
    ],
)
def test_one_prefix_and_did_you_mean(argv: list[str], message: str, cli: CLI) -> None:
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert message in err and err.count("convlint: error:") == 1 and err.count("\n") == 1
    assert "convlint: error: convlint" not in err


def test_version_short_and_long(cli: CLI) -> None:
    code, out, _ = cli("-V")
    assert code == 0 and (code, out) == cli("--version")[:2]


def test_dot_convlint_toml_comes_first(models: Path, cli: CLI) -> None:
    (models / "convlint.toml").write_text('select = ["CL002"]\n')
    (models / ".convlint.toml").write_text('select = ["CL001"]\n')
    code, out, _ = cli("check", str(models / "naive.onnx"), "--statistics")
    assert out == "2\tCL001\t[~] wide-conv-without-reduction\n"
    _, out, _ = cli("check", str(models / "naive.onnx"), "--show-settings")
    assert f"configuration: {models / '.convlint.toml'}" in out


def test_extend_reads_the_base_first(tmp_path: Path, models: Path, cli: CLI) -> None:
    (tmp_path / "base.toml").write_text(
        'select = ["CL002"]\nextend-select = ["CL003"]\n'
        "[rules.CL001]\nmin-channels = 512\nreduction-ratio = 2\n"
    )
    (models / "pyproject.toml").write_text(
        '[tool.convlint]\nextend = "../base.toml"\nextend-select = ["CL001"]\n'
        "[tool.convlint.rules.CL001]\nmin-channels = 64\n"
    )
    _, out, _ = cli("check", str(models / "naive.onnx"), "--show-settings")
    assert "  select: CL002, CL003, CL001\n" in out  # extend-select adds up along the chain
    assert (
        "  CL001: severity = warning, min-channels = 64, reduction-ratio = 2, min-1d-saving" in out
    )
    (tmp_path / "base.toml").write_text('extend = "models/pyproject.toml"\n')
    code, _, err = cli("check", str(models / "naive.onnx"))
    assert code == 2 and "extends itself (a cycle)" in err
    (models / "pyproject.toml").write_text('[tool.convlint]\nextend = "missing.toml"\n')
    code, _, err = cli("check", str(models / "naive.onnx"))
    assert code == 2 and "extend: missing.toml: no such file" in err


def test_config_key_value_overrides(models: Path, cli: CLI) -> None:
    (models / "pyproject.toml").write_text('[tool.convlint]\nselect = ["CL002"]\n')
    naive = str(models / "naive.onnx")
    _, out, _ = cli("check", naive, "--statistics", "--config", 'select=["CL001"]')
    assert out == "2\tCL001\t[~] wide-conv-without-reduction\n"
    # a dotted key reaches a rule's options; a bare word is a string
    code, out, _ = cli(
        "check", naive, "--statistics", "--config", 'select=["CL001"]',
        "--config", "rules.CL001.min-channels=1000", "--config", "fail-on=never",
    )  # fmt: skip
    assert (code, out) == (0, "")
    _, out, _ = cli("check", naive, "--show-settings", "--config", "fail-on=never")
    assert "  --config fail-on=never\n" in out and "  fail-on: never\n" in out
    code, _, err = cli("check", naive, "--config", "selct=[]")
    assert code == 2 and "--config selct=[]: unknown key 'selct'" in err
    assert "(did you mean 'select'?)" in err


def test_suppression_inside_the_model(tmp_path: Path, cli: CLI) -> None:
    model = _ignore_on(fixtures.inception_3a_naive(), "inception_3a/3x3", "CL001, CL002")
    _ignore_on(model, "inception_3a/pool", "ALL")
    path = fixtures.save(model, tmp_path / "naive.onnx")
    code, out, _ = cli("check", str(path), "--format", "json")
    data = json.loads(out)["models"][0]
    assert code == 1 and [f["node"] for f in data["findings"]] == ["inception_3a/5x5"]
    assert [(f["code"], f["node"]) for f in data["suppressed"]] == [
        ("CL001", "inception_3a/3x3"),
        ("CL002", "inception_3a/pool"),
    ]
    assert json.loads(out)["summary"]["findings"] == 1
    _, out, _ = cli("check", str(path), "--verbose")
    assert (
        f"{path}:inception_3a/3x3: CL001 passed over: suppressed by the node's metadata_props "
        "convlint.ignore" in out
    )
    _, out, _ = cli("check", str(path), "--statistics")
    assert out == (
        "1\tCL001\t[~] wide-conv-without-reduction (1 suppressed in the model)\n"
        "0\tCL002\t[ ] pool-branch-inflates-concat (1 suppressed in the model)\n"
    )
    # without suppressions the model object is the contract's, with no "suppressed" key
    plain = fixtures.save(fixtures.inception_3a_naive(), tmp_path / "plain.onnx")
    assert (
        "suppressed" not in json.loads(cli("check", str(plain), "--format", "json")[1])["models"][0]
    )


def test_main_takes_argv_and_parses_no_global_state() -> None:
    assert main(["rule", "CL001"]) == 0
