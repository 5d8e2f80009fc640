"""Issue 16, item 5: the target `fix` times on (`--latency-threads`, `--latency-batch`,
`--provider`) is the user's to name, bad values are refused in one line with exit 2, and the
report states the target in text and JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import onnx
import pytest

import convlint
from convlint import fixtures
from convlint.cli import main
from convlint.errors import UsageError

CPU = "CPUExecutionProvider"
SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "fix.schema.json"


def _symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its input's and output's batch dim named ``N``."""
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


@pytest.fixture
def fixed(tmp_path: Path) -> Path:
    """A planted-rank conv whose batch dim is fixed to 1."""
    return fixtures.save(fixtures.conv3x3(planted_rank=16, hw=6), tmp_path / "fixed.onnx")


@pytest.fixture
def symbolic(tmp_path: Path) -> Path:
    model = _symbolic_batch(fixtures.conv3x3(planted_rank=16, hw=6))
    return fixtures.save(model, tmp_path / "symbolic.onnx")


def _argv(model: Path, *options: str) -> list[str]:
    out = model.with_name("out.onnx")
    argv = ["fix", str(model), "-o", str(out), "--method", "weight", "--samples", "2"]
    return [*argv, "--allow-noise", *options]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("option", ["--latency-threads", "--latency-batch"])
@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_a_bad_count_is_refused_in_one_line(
    fixed: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    line = _refused(capsys, _argv(fixed, f"{option}={value}"))
    assert line.startswith("convlint: error: ") and option in line
    assert not fixed.with_name("out.onnx").exists()


def test_an_unavailable_provider_is_refused_naming_those_available(
    fixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(capsys, _argv(fixed, "--provider", "NoSuchExecutionProvider"))
    assert line.startswith(
        "convlint: error: --provider NoSuchExecutionProvider: not available in this "
        "onnxruntime; available: "
    )
    assert CPU in line.split("available: ")[1].split(", ")
    assert not fixed.with_name("out.onnx").exists()


def test_a_batch_the_fixed_batch_dim_refuses_names_the_file(
    fixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(capsys, _argv(fixed, "--latency-batch", "4"))
    assert line == (
        f"convlint: error: {fixed}: --latency-batch 4: input 'input' has a fixed batch dim of 1"
    )
    # The batch the model has is no problem.
    assert main(_argv(fixed, "--latency-batch", "1", "--no-latency")) == 0


def test_the_report_states_the_target_it_timed_on(
    symbolic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(symbolic, "--latency-threads", "1", "--latency-batch", "3", "--provider", CPU)
    assert main([*argv, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text("utf-8"))).validate(document)
    latency = document["latency"]
    assert (latency["threads"], latency["batch"], latency["provider"]) == (1, 3, CPU)
    low, high = latency["interval"]
    assert 0 < low <= high
    (rewrite,) = document["rewrites"]
    alone = rewrite["latency"]  # its nodes alone, on the same target
    assert (alone["threads"], alone["batch"], alone["provider"]) == (1, 3, CPU)
    # Verification and MACs stay at the samples' batch: the target is the timing's alone.
    assert document["bound"] == {"N": 1}
    assert main(argv) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if "; latency " in line)
    assert "; 1 thread, batch 3, CPUExecutionProvider)" in summary


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"latency_threads": 0},
            "--latency-threads (latency_threads) must be a whole number of at least 1, not 0",
        ),
        ({"latency_threads": 2.0}, "--latency-threads (latency_threads) must be a whole number"),
        ({"latency_batch": True}, "--latency-batch (latency_batch) must be a whole number"),
        ({"latency_batch": "8"}, "--latency-batch (latency_batch) must be a whole number"),
        ({"provider": ""}, "--provider (provider) must name an onnxruntime execution provider"),
    ],
)
def test_the_api_refuses_bad_values_as_the_command_line(
    fixed: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        convlint.fix(fixed, fixed.with_name("out.onnx"), **options)


def test_the_api_takes_the_target(symbolic: Path) -> None:
    result = convlint.fix(
        symbolic,
        symbolic.with_name("out.onnx"),
        method="weight",
        samples=2,
        allow_noise=True,
        latency_threads=1,
        latency_batch=2,
    )
    assert result.written and result.latency is not None
    assert (result.latency.threads, result.latency.batch, result.latency.provider) == (1, 2, CPU)
