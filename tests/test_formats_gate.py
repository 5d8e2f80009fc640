"""The CI gate: --fail-on and --exit-zero across severities; many models, folders, --jobs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]
FORMATS = ("text", "json", "sarif", "junit", "markdown", "github")


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """info.onnx has an info finding, warning.onnx warnings; error.toml raises CL001 to error."""
    fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "info.onnx")
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "warning.onnx")
    fixtures.save(fixtures.inception_3a(), tmp_path / "clean.onnx")
    (tmp_path / "error.toml").write_text('[rules.CL001]\nseverity = "error"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (model, config) -> the highest severity found
CASES = {
    "clean": ("clean.onnx", None, None),
    "info": ("info.onnx", None, "info"),
    "warning": ("warning.onnx", None, "warning"),
    "error": ("warning.onnx", "error.toml", "error"),
}
RANK = {None: -1, "info": 0, "warning": 1, "error": 2}


@pytest.mark.parametrize("fail_on", ["error", "warning", "info", "never", None])
@pytest.mark.parametrize("case", list(CASES))
def test_fail_on_across_severities(gate: Path, cli: CLI, case: str, fail_on: str | None) -> None:
    model, config, worst = CASES[case]
    argv = ["check", model, *(["--config", config] if config else [])]
    threshold = fail_on or "warning"  # the default
    expected = 0 if threshold == "never" else int(RANK[worst] >= RANK[threshold])
    code, _, err = cli(*argv, *(["--fail-on", fail_on] if fail_on else []))
    assert (code, err) == (expected, "")
    code, _, _ = cli(*argv, *(["--fail-on", fail_on] if fail_on else []), "--exit-zero")
    assert code == 0


def test_fail_on_from_the_configuration(gate: Path, cli: CLI) -> None:
    (gate / "convlint.toml").write_text('fail-on = "info"\n')
    assert cli("check", "info.onnx")[0] == 1
    assert cli("check", "info.onnx", "--fail-on", "warning")[0] == 0  # the command line wins


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models in nested folders, a broken one among them, and files that are not models."""
    for folder in ("zoo/b", "zoo/a/deep", "other"):
        (tmp_path / folder).mkdir(parents=True)
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "zoo/b/naive.onnx")
    fixtures.save(fixtures.inception_3a(), tmp_path / "zoo/a/deep/clean.onnx")
    fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "zoo/a/chain.onnx")
    fixtures.save(fixtures.conv3x3(), tmp_path / "other/conv.onnx")
    fixtures.BAD_WRITERS["truncated"](tmp_path / "zoo/b")
    (tmp_path / "zoo/notes.txt").write_text("not a model")
    (tmp_path / "zoo/a/model.onnx.bak").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def model_order(out: str, paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: out.index(p))


def test_folders_are_searched_for_onnx_files_in_sorted_order(tree: Path, cli: CLI) -> None:
    code, out, err = cli("check", "zoo", "other/conv.onnx", "--format", "json")
    assert code == 2  # zoo/b/truncated.onnx
    paths = [m["path"] for m in json.loads(out)["models"]]
    assert paths == [
        "zoo/a/chain.onnx",
        "zoo/a/deep/clean.onnx",
        "zoo/b/naive.onnx",
        "zoo/b/truncated.onnx",
        "other/conv.onnx",
    ]
    assert err.splitlines() == [
        "convlint: error: zoo/b/truncated.onnx: not an ONNX model "
        "(protobuf parse failed: truncated or corrupt)"
    ]


def test_a_folder_without_models_is_a_usage_error(tree: Path, cli: CLI) -> None:
    (tree / "empty").mkdir()
    code, out, err = cli("check", "empty")
    assert (code, out) == (2, "")
    assert err == "convlint: error: no .onnx files found in empty\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_jobs_output_is_byte_identical(tree: Path, cli: CLI, fmt: str) -> None:
    serial = cli("check", "zoo", "other", "--format", fmt, "--jobs", "1")
    parallel = cli("check", "zoo", "other", "--format", fmt, "--jobs", "3")
    assert parallel == serial
    assert serial[0] == 2


def test_jobs_must_be_positive(tree: Path, cli: CLI) -> None:
    code, _, err = cli("check", "zoo", "--jobs", "0")
    assert code == 2 and err == "convlint: error: --jobs must be at least 1\n"


# What each format shows for the unreadable model zoo/b/truncated.onnx.
BROKEN = {
    "text": "",  # stderr only
    "json": '"error": "not an ONNX model',
    "sarif": '"text": "zoo/b/truncated.onnx: not an ONNX model',
    "junit": '<error message="not an ONNX model',
    "markdown": "**Could not be read:** not an ONNX model",
    "github": "::error file=zoo/b/truncated.onnx,title=convlint%3A model not readable::not an",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_broken_model_is_reported_and_does_not_stop_the_others(
    tree: Path, cli: CLI, fmt: str
) -> None:
    code, out, err = cli("check", "zoo", "--format", fmt)
    assert code == 2
    assert err.startswith("convlint: error: zoo/b/truncated.onnx: not an ONNX model")
    assert BROKEN[fmt] in out
    # The models before and after the broken one are still checked and reported.
    assert "inception_3a/3x3" in out and "zoo/a/chain.onnx" in out and "zoo/b/naive.onnx" in out
    assert model_order(out, ["zoo/a/chain.onnx", "zoo/b/naive.onnx"]) == [
        "zoo/a/chain.onnx",
        "zoo/b/naive.onnx",
    ]
