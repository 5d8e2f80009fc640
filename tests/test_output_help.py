"""`--help` shows defaults and the exit codes; `-q`/`-v` are short for `--quiet`/`--verbose`;
`--version` names the version of the package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import __version__, fixtures

CLI = Callable[..., tuple[int, str, str]]


@pytest.mark.parametrize("command", ["check", "fix", "stats"])
def test_help_shows_defaults_and_exit_codes(command: str, cli: CLI) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "report format (default: text)" in flat
    assert "exit codes:" in out
    assert "2 usage error, unreadable or invalid model, or an internal failure" in flat
    assert "-q, --quiet" in out and "-v, --verbose" in out
    assert "(default: None)" not in flat and "(default: False)" not in flat


def test_help_of_check_and_fix_name_their_exit_codes(cli: CLI) -> None:
    _, check, _ = cli("check", "--help")
    flat = " ".join(check.split())
    assert "1 findings at or above it" in flat
    assert "parallel processes (default: the number of cores)" in flat
    assert "(default: the configuration's fail-on, or warning)" in flat
    _, fix, _ = cli("fix", "--help")
    assert "1 verification failed (OUT not written)" in " ".join(fix.split())
    _, top, _ = cli("--help")
    assert "check: 0 no finding at or above --fail-on" in top


def test_version(cli: CLI) -> None:
    """As ruff, -V and --version; with the onnx and onnxruntime versions it runs with."""
    from importlib import metadata

    code, out, _ = cli("--version")
    onnx, ort = metadata.version("onnx"), metadata.version("onnxruntime")
    assert code == 0 and out.startswith(f"convlint {__version__} (onnx {onnx}, onnxruntime {ort}, ")
    assert cli("-V") == (0, out, "")


def test_short_quiet_and_verbose(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.vgg_stack(), tmp_path / "vgg.onnx")
    _, quiet, _ = cli("check", str(path), "-q")
    _, long_quiet, _ = cli("check", str(path), "--quiet")
    assert quiet == long_quiet and "CL001" in quiet and "Found" not in quiet
    path = fixtures.save(fixtures.resnet_bottleneck(), tmp_path / "bottleneck.onnx")
    _, verbose, _ = cli("check", str(path), "-v")
    _, long_verbose, _ = cli("check", str(path), "--verbose")
    assert verbose == long_verbose and "passed over" in verbose
