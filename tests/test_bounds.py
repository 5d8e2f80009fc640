"""Bounded resources and standard output: options that would exhaust memory or print non-JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.reporters.common import json_text
from convlint.rewrite.pipeline import MAX_SAMPLES


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--tolerance", "inf"],
            "--tolerance (tolerance) must be a finite positive number, not inf",
        ),
        (
            ["--tolerance", "nan"],
            "--tolerance (tolerance) must be a finite positive number, not nan",
        ),
        (["--tolerance", "0"], "--tolerance (tolerance) must be a finite positive number, not 0.0"),
        (
            ["--samples", str(MAX_SAMPLES + 1)],
            f"--samples (samples) must be from 1 to {MAX_SAMPLES:,}, not {MAX_SAMPLES + 1}",
        ),
        (["--samples", "0"], f"--samples (samples) must be from 1 to {MAX_SAMPLES:,}, not 0"),
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


def test_inputs_that_are_not_a_regular_file_are_refused(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    import os

    model = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    fifo = tmp_path / "inputs.npz"
    os.mkfifo(fifo)
    code, _, err = cli("fix", str(model), "-o", str(tmp_path / "o.onnx"), "--inputs", str(fifo))
    assert code == 2
    assert err == f"convlint: error: {fifo}: not a regular file, cannot hold --inputs\n"


def test_a_model_too_large_to_verify_is_a_named_error(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = fixtures.conv3x3()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 100_000  # 10^10 pixels × 256 channels a sample
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    path = fixtures.save(model, tmp_path / "huge.onnx")
    code, _, err = cli("fix", str(path), "-o", str(tmp_path / "o.onnx"), "--no-latency")
    assert code == 2
    assert err.startswith(f"convlint: error: {path}: too large to rewrite and verify here")


def test_inputs_declaring_more_than_the_bound_are_refused_before_reading(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    import zipfile

    import numpy as np

    from convlint.rewrite.calibration import MAX_INPUT_BYTES

    model = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w") as archive, archive.open("input.npy", "w") as handle:
        header = {"descr": "<f4", "fortran_order": False, "shape": (4000, 64, 14, 14)}
        np.lib.format.write_array_header_1_0(handle, header)  # 200 MB declared, none stored
        handle.write(b"\0" * 16)
    declared = 4000 * 64 * 14 * 14 * 4
    assert declared < MAX_INPUT_BYTES  # the limit is the whole archive's, so add arrays
    with zipfile.ZipFile(bomb, "a") as archive:
        for index in range(12):
            with archive.open(f"extra{index}.npy", "w") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
    code, _, err = cli("fix", str(model), "-o", str(tmp_path / "o.onnx"), "--inputs", str(bomb))
    assert code == 2
    assert "declares 4000x64x14x14 float32 (200,704,000 bytes): the inputs may hold at most" in err
    for content, problem in (
        (b"", "not a readable .npz file"),
        (b"not a zip", "not a readable .npz file"),
    ):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(content)
        code, _, err = cli("fix", str(model), "-o", str(tmp_path / "o.onnx"), "--inputs", str(bad))
        assert code == 2 and problem in err, err


def test_an_output_folder_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    code, out, err = cli("fix", str(model), "-o", "/proc/out.onnx", "--no-latency")
    assert code == 2
    assert err.startswith("convlint: error: -o /proc/out.onnx: cannot write in '/proc': ")
    assert out == ""  # nothing was analyzed or verified first
