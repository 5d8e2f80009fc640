"""Issue 12, item 5: verification must not pass on NaN, infinities or degenerate inputs.

NaN in ``--inputs`` used to give "verified rel L2 0 [ok]" and a written model with NaN weights;
all-zero inputs verified a rewrite that was off by 98% on real inputs (a conv net's output is
then its biases, which every rewrite keeps). Now such inputs are refused (exit 2, naming the file
and the input), and a non-finite output of the original or the rewrite fails verification
(exit 1, OUT not written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convlint import fixtures
from convlint.rewrite.verify import InputSpec, compare, load_feeds

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--quiet"]
SHAPE = (1, 256, 6, 6)
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "conv.onnx")


def _inputs(tmp_path: Path, values: np.ndarray[Any, Any]) -> Path:
    path = tmp_path / "inputs.npz"
    np.savez(path, input=values)
    return path


def _normal(samples: int = 2) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).standard_normal((samples, *SHAPE)).astype(np.float32)


def _with_nan(values: np.ndarray[Any, Any], what: float) -> np.ndarray[Any, Any]:
    values = values.copy()
    values[0, 0, 3, 2, 1] = what
    return values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _with_nan(_normal(), np.nan),
            "input 'input' holds 1 NaN value; verification needs finite inputs",
        ),
        (
            _with_nan(_normal(), np.inf),
            "input 'input' holds 1 infinite value; verification needs finite inputs",
        ),
        (
            np.zeros((2, *SHAPE), np.float32),
            "input 'input' is constant (every value is 0): zero variance is too degenerate to verify a rewrite on",
        ),
        (
            np.full(SHAPE, 0.5, np.float32),
            "input 'input' is constant (every value is 0.5): zero variance",
        ),
    ],
    ids=["nan", "inf", "zeros", "constant-one-sample"],
)
@pytest.mark.parametrize("in_place", [False, True])
def test_degenerate_inputs_are_refused(
    planted: Path,
    tmp_path: Path,
    cli: Cli,
    values: np.ndarray[Any, Any],
    message: str,
    in_place: bool,
) -> None:
    inputs = _inputs(tmp_path, values)
    before = planted.read_bytes()
    out = tmp_path / "out.onnx"
    target = ["--in-place"] if in_place else ["-o", str(out)]
    code, _, err = cli("fix", str(planted), *target, "--inputs", str(inputs), *FAST)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convlint: error: {inputs}: {message}"), err
    assert not out.exists() and planted.read_bytes() == before


def test_varying_inputs_still_verify(planted: Path, tmp_path: Path, cli: Cli) -> None:
    inputs = _inputs(tmp_path, _normal())
    out = tmp_path / "out.onnx"
    code, _, err = cli("fix", str(planted), "-o", str(out), "--inputs", str(inputs), *FAST)
    assert code == 0, err
    assert out.exists()


def test_constant_integer_inputs_are_indices_not_degenerate(tmp_path: Path) -> None:
    path = tmp_path / "ids.npz"
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.savez(path, ids=np.zeros((2, 4), np.int64), x=x)
    specs = [InputSpec("ids", (4,), onnx.TensorProto.INT64), InputSpec("x", (3,), 1)]
    assert len(load_feeds(path, specs)) == 2


def _nan_weight_model(tmp_path: Path) -> Path:
    model = fixtures.conv3x3(planted_rank=48, hw=6)
    weight = model.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values[0, 0, 0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return fixtures.save(model, tmp_path / "nan.onnx")


@pytest.mark.parametrize("in_place", [False, True])
def test_nan_output_of_the_original_fails_verification(
    tmp_path: Path, cli: Cli, in_place: bool
) -> None:
    model = _nan_weight_model(tmp_path)
    before = model.read_bytes()
    out = tmp_path / "out.onnx"
    target = ["--in-place"] if in_place else ["-o", str(out)]
    code, stdout, err = cli("fix", str(model), *target, *FAST[:-1], "--format", "json")
    assert code == 1
    written = model if in_place else out
    assert err.strip() == (
        # channel 0 (its weight holds the NaN): 6x6 pixels, 2 samples
        f"convlint: error: {model}: the original model's output 'output' holds 72 NaN values "
        f"on the verification inputs; {written} not written"
    )
    verification = json.loads(stdout)["verification"]
    assert verification["ok"] is False and verification["rel_l2_error"] is None
    assert verification["problem"].startswith("the original model's output 'output' holds")
    assert model.read_bytes() == before and not out.exists()


def test_nan_output_of_the_rewrite_fails_verification(
    planted: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlint.rewrite import write

    fill = write.fill_output_types

    def poison(model: onnx.ModelProto, path: Path) -> None:
        fill(model, path)
        weight = model.graph.initializer[0]
        values = numpy_helper.to_array(weight).copy()
        values.flat[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))

    monkeypatch.setattr(write, "fill_output_types", poison)
    out = tmp_path / "out.onnx"
    code, stdout, err = cli("fix", str(planted), "-o", str(out), *FAST[:-1])
    assert code == 1
    assert err.strip().startswith(
        f"convlint: error: {planted}: the rewritten model's output 'output' holds "
    )
    assert err.strip().endswith(f"NaN values on the verification inputs; {out} not written")
    assert "[FAIL]: the rewritten model's output 'output' holds" in stdout
    assert not out.exists()


def test_compare_fails_on_nan_where_the_reference_has_nan_too() -> None:
    """NaN at the same place on both sides used to be skipped, and the rest compared."""
    ref = [[np.array([1.0, np.nan, 2.0], np.float32)]]
    same = [[np.array([1.0, np.nan, 2.0], np.float32)]]
    errors = compare(ref, same, 1e-3, ["y"])
    assert not errors.ok and errors.problem.startswith("the original model's output 'y' holds")
    errors = compare([[np.array([1.0, 2.0])]], [[np.array([1.0, np.inf])]], 1e-3, ["y"])
    assert not errors.ok
    assert errors.problem == (
        "the rewritten model's output 'y' holds 1 infinite value on the verification inputs"
    )
    assert compare([[np.array([1.0, 2.0])]], [[np.array([1.0, 2.0])]], 1e-3).ok
