"""`convlint fix` as a user runs it: exit codes, the JSON contract, refusals, the time limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convlint import fixtures
from convlint.cli import main

REWRITE_FIELDS = {
    "code", "node", "kind", "method", "rank", "params_before", "params_after", "macs_before",
    "macs_after", "verified",
}  # fmt: skip


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "conv.onnx")


def test_json_report_has_the_contract_fields(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = planted.with_name("out.onnx")
    argv = [
        "fix",
        str(planted),
        "-o",
        str(out),
        "--method",
        "weight",
        "--allow-noise",
        "--format",
        "json",
    ]
    assert main([*argv, "--samples", "2"]) == 0
    document = json.loads(capsys.readouterr().out)
    (model,) = document["models"]
    for key in ("path", "opset", "nodes", "cost", "findings", "error"):
        assert key in model
    assert model["output"] == str(out) and model["tolerance"] == 0.001
    (rewrite,) = model["rewrites"]
    assert set(rewrite) == REWRITE_FIELDS | {"latency"}  # its nodes alone, timed by default
    assert set(rewrite["verified"]) == {"max_abs_error", "rel_l2_error", "ok"}
    assert rewrite["kind"] == "svd-reduce" and rewrite["rank"] == 48
    assert model["skipped"] == []
    verification = model["verification"]
    assert verification["ok"] is True and verification["rel_l2_error"] < 1e-4
    assert verification["params_after"] == 256 * 48 + 48 * 256 * 9
    assert out.exists()


def test_json_model_object_is_at_the_top_and_in_models(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract's `doc["rewrites"]` and check's `doc["models"][0]` both read the report."""
    out = planted.with_name("out.onnx")
    argv = [
        "fix",
        str(planted),
        "-o",
        str(out),
        "--method",
        "weight",
        "--allow-noise",
        "--format",
        "json",
    ]
    assert main([*argv, "--samples", "2"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["tool"]["name"] == "convlint"
    (model,) = document["models"]
    fields = ("path", "cost", "findings", "error", "output", "tolerance", "rewrites", "skipped")
    for key in (*fields, "verification"):
        assert document[key] == model[key]
    assert document["rewrites"][0]["kind"] == "svd-reduce"
    assert document["error"] is None and document["verification"]["ok"] is True
    assert document["summary"] == {
        "models": 1,
        "findings": 1,
        "by_code": {"CL001": 1},
        "errors": 0,
        "fixes": {"safe": 0, "approximate": 1, "unsafe": 0, "display-only": 0},
    }


def test_text_report_lists_rewrite_and_verification(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = planted.with_name("out.onnx")
    assert (
        main(
            [
                "fix",
                str(planted),
                "-o",
                str(out),
                "--method",
                "weight",
                "--allow-noise",
                "--samples",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "CL001 svd-reduce rank 48 (weight): params 589,824 -> 122,880" in text
    assert f"[ok]; wrote {out}" in text


def test_output_equal_to_model_is_refused_without_in_place(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = planted.read_bytes()
    assert main(["fix", str(planted), "-o", str(planted)]) == 2
    assert "--in-place" in capsys.readouterr().err
    assert planted.read_bytes() == before
    argv = [
        "fix",
        str(planted),
        "--in-place",
        "--method",
        "weight",
        "--allow-noise",
        "--samples",
        "2",
    ]
    assert main(argv) == 0
    assert planted.read_bytes() != before


def test_failed_verification_exits_1_and_writes_nothing(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = planted.with_name("out.onnx")
    argv = [
        "fix",
        str(planted),
        "-o",
        str(out),
        "--method",
        "weight",
        "--allow-noise",
        "--rank",
        "4",
    ]
    assert main([*argv, "--samples", "2", "--format", "json"]) == 1
    captured = capsys.readouterr()
    model = json.loads(captured.out)["models"][0]
    assert model["verification"]["ok"] is False
    assert "not written" in captured.err
    assert not out.exists()
    assert [p.name for p in planted.parent.iterdir()] == ["conv.onnx"]  # no temp files left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "sarif"], "invalid choice: 'sarif' (choose from 'text', 'json')"),
        (["--inputs", "missing.npz"], "no such inputs file"),
        (["--tolerance", "0"], "--tolerance"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "inf"], "--timeout"),
        (["--input-shape", "foo=1x256x6x6"], "names unknown input 'foo'"),
        (["--output", "no-such-folder/report.txt"], "--output"),
    ],
)
def test_bad_options_exit_2(
    planted: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = planted.with_name("out.onnx")
    assert main(["fix", str(planted), "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_inputs_with_the_wrong_shape_exit_2(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "bad.npz", input=np.zeros((1, 3, 6, 6), np.float32))
    argv = ["fix", str(planted), "-o", str(tmp_path / "o.onnx"), "--inputs"]
    assert main([*argv, str(tmp_path / "bad.npz")]) == 2
    assert "has shape [1, 3, 6, 6]" in capsys.readouterr().err


def test_inputs_with_the_wrong_dtype_exit_2(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "bad.npz", input=np.full((1, 256, 6, 6), "a"))
    argv = ["fix", str(planted), "-o", str(tmp_path / "o.onnx"), "--inputs"]
    assert main([*argv, str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "bad.npz: array 'input' has dtype <U1, expected float32" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_inputs_of_another_kind_exit_2(
    planted: Path, tmp_path: Path, dtype: type, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README: the dtype must cast to the input's without changing kind."""
    np.savez(tmp_path / "ints.npz", input=np.ones((1, 256, 6, 6), dtype))
    argv = ["fix", str(planted), "-o", str(tmp_path / "o.onnx"), "--inputs"]
    assert main([*argv, str(tmp_path / "ints.npz")]) == 2
    err = capsys.readouterr().err
    name = np.dtype(dtype).name
    assert f"ints.npz: array 'input' has dtype {name}, expected float32 for input 'input'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_inputs_of_the_same_kind_are_cast(planted: Path, tmp_path: Path) -> None:
    values = np.random.default_rng(0).standard_normal((2, 1, 256, 6, 6))  # float64
    np.savez(tmp_path / "f64.npz", input=values)
    argv = [
        "fix",
        str(planted),
        "-o",
        str(tmp_path / "o.onnx"),
        "--method",
        "weight",
        "--allow-noise",
    ]
    assert main([*argv, "--inputs", str(tmp_path / "f64.npz"), "--quiet"]) == 0


def test_output_that_is_a_folder_exits_2(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fix", str(planted), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_output_never_overwrites_the_models_external_data(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MODEL's weights live in b.onnx.data: -o b.onnx would write its data file over them."""
    import onnx

    model = tmp_path / "ext.onnx"
    onnx.save_model(
        onnx.load(planted), str(model), save_as_external_data=True, location="b.onnx.data"
    )
    before = (tmp_path / "b.onnx.data").read_bytes()
    assert main(["fix", str(model), "-o", str(tmp_path / "b.onnx")]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    assert not (tmp_path / "b.onnx").exists()


def test_unreadable_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["fix", str(bad), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "bad.onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fault", "timeout", "message"),
    [("hang", "10", "did not finish"), ("crash", "300", "crashed")],
)
def test_hanging_or_crashing_runtime_exits_2_with_one_line(
    planted: Path,
    fault: str,
    timeout: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The hook hangs the child on its first request, which never answers: the 10 s run out
    # whatever the machine's load (starting the child is not bounded by --timeout).
    monkeypatch.setenv("CONVLINT_TEST_RUNTIME_FAULT", fault)
    out = planted.with_name("out.onnx")
    assert main(["fix", str(planted), "-o", str(out), "--timeout", timeout]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_subprocess_run(planted: Path) -> None:
    out = planted.with_name("out.onnx")
    argv = [
        "fix",
        str(planted),
        "-o",
        str(out),
        "--method",
        "weight",
        "--allow-noise",
        "--samples",
        "2",
        "--quiet",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "convlint", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress or logs outside a terminal
    assert "svd-reduce rank 48" in proc.stdout and out.exists()


def test_demo_ends_with_the_verified_rewrite(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "CL001 svd-reduce rank 24 (weight): params 221,184 -> 32,256" in out
    assert "model: params 387,072 -> 68,352" in out and "[ok]; wrote" in out
    # the command it shows is the one it ran (untimed: the demo's output is reproducible)
    assert "--method weight --samples 2 --no-latency --allow-noise (the rewrites" in out
    assert "; 2 seeded random samples)" in out and "latency" not in out.split("--no-latency")[1]


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--samples", "1"], "; 1 seeded random sample)"),
        (["--samples", "2"], "; 2 seeded random samples)"),
    ],
)
def test_sample_counts_read_as_english(
    planted: Path, extra: list[str], phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = planted.with_name("out.onnx")
    assert (
        main(["fix", str(planted), "-o", str(out), "--method", "weight", "--allow-noise", *extra])
        == 0
    )
    assert phrase in capsys.readouterr().out


def test_one_sample_from_inputs_is_singular(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "one.npz"
    np.savez(inputs, input=np.random.default_rng(0).standard_normal((1, 256, 6, 6), np.float32))
    argv = [
        "fix",
        str(planted),
        "-o",
        str(tmp_path / "o.onnx"),
        "--method",
        "weight",
        "--allow-noise",
    ]
    assert main([*argv, "--inputs", str(inputs)]) == 0
    assert f"; 1 sample from {inputs})" in capsys.readouterr().out
