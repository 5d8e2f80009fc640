"""Shared helpers: models saved from fixtures/, the CLI run as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convlint import fixtures
from convlint.cli import main
from convlint.engine import ModelReport, Settings, analyze
from convlint.registry import load_registry


@pytest.fixture(autouse=True)
def _channel_block_of_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fix``'s default rank step follows the CPU (16 with AVX-512, else 8): the tests expect
    the ranks of a step of 8 on every machine (``--rank-step`` and ``channel_step`` are tested
    on their own, in test_fix_rank_step.py)."""
    from convlint.rewrite import state

    monkeypatch.setattr(state, "channel_step", lambda provider: 8)


@pytest.fixture
def model_file(tmp_path: Path) -> Callable[..., Path]:
    """Save a fixture builder's model (by name) into tmp_path and return its path."""

    def build(name: str, **kwargs: Any) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        return fixtures.save(fixtures.BUILDERS[name](**kwargs), folder / f"{name}.onnx")

    return build


@pytest.fixture
def lint(model_file: Callable[..., Path]) -> Callable[..., ModelReport]:
    def run(name: str, settings: Settings | None = None, **kwargs: Any) -> ModelReport:
        return analyze(model_file(name, **kwargs), load_registry(), settings or Settings())

    return run


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cli_json(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., tuple[int, Any]]:
    def run(*argv: str) -> tuple[int, Any]:
        code, out, _ = cli(*argv, "--format", "json")
        return code, json.loads(out)

    return run
