"""Snapshots of what users see (as ruff's .snap files): a change in the rendered text or JSON of
the canonical fixtures is a visible diff in review.

Regenerate after an intended change with ``CONVLINT_UPDATE_SNAPSHOTS=1 pytest tests/test_snapshots.py``
and read the diff before committing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("CONVLINT_UPDATE_SNAPSHOTS") == "1"

CANONICAL = [
    "inception_3a_naive",
    "vgg_stack",
    "linear_conv_chain_bad",
    "dense_head_bad",
    "spatial_expansion_bad",
    "conv3x3",
]


def assert_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.is_file(), f"no snapshot {path.name}; run with CONVLINT_UPDATE_SNAPSHOTS=1"
    assert actual == path.read_text(encoding="utf-8"), f"{path.name} changed"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models are saved in, and paths printed relative to, a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", CANONICAL)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_output(
    name: str, fmt: str, in_tmp: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    fixtures.save(fixtures.BUILDERS[name](), in_tmp / f"{name}.onnx")
    _, out, _ = cli("check", f"{name}.onnx", "--format", fmt)
    assert_snapshot(f"check_{name}.{'txt' if fmt == 'text' else 'json'}", out)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_stats_output(fmt: str, in_tmp: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    fixtures.save(fixtures.resnet_bottleneck(), in_tmp / "resnet_bottleneck.onnx")
    _, out, _ = cli("stats", "resnet_bottleneck.onnx", "--format", fmt)
    assert_snapshot(f"stats_resnet_bottleneck.{'txt' if fmt == 'text' else 'json'}", out)


def test_rules_output(cli: Callable[..., tuple[int, str, str]]) -> None:
    _, out, _ = cli("rules")
    assert_snapshot("rules.txt", out)
