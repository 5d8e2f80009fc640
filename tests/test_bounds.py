"""Bounded resources and standard output: options that would exhaust memory or print non-JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.fix import MAX_SAMPLES
from convlint.reporters.common import json_text


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--tolerance", "inf"], "--tolerance must be a finite positive number"),
        (["--tolerance", "nan"], "--tolerance must be a finite positive number"),
        (["--tolerance", "0"], "--tolerance must be a finite positive number"),
        (["--samples", str(MAX_SAMPLES + 1)], f"--samples must be from 1 to {MAX_SAMPLES:,}"),
        (["--samples", "0"], f"--samples must be from 1 to {MAX_SAMPLES:,}"),
    ],
)
def test_fix_options_are_bounded(
    option: list[str], message: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = cli("fix", str(model), "-o", str(out), "--no-latency", *option)
    assert code == 2
    assert err == f"convlint: error: {message}\n"
    assert not out.exists()


def test_json_reports_are_standard_json() -> None:
    text = json_text({"rel_l2_error": float("inf"), "errors": [float("nan"), 0.5]})

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(text, parse_constant=refuse) == {"rel_l2_error": None, "errors": [None, 0.5]}
