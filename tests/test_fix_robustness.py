"""`convlint fix` on awkward input: hand-built models, external weights, broken weights, the
runtime's temporary folders. Every failure is one line naming the model, exit 2."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from fix_helpers import max_abs_diff, random_inputs
from onnx import TensorProto, helper

from convlint import fixtures
from convlint.cli import main

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--quiet"]


def _planted() -> onnx.ModelProto:
    return fixtures.conv3x3(planted_rank=48, hw=6)


def _one_error_line(err: str, model: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert lines[0].startswith(f"convlint: error: {model}: "), lines[0]
    return lines[0]


def test_output_declared_without_shape_is_given_the_inferred_one(tmp_path: Path) -> None:
    model = _planted()
    name = model.graph.output[0].name
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    path = fixtures.save(model, tmp_path / "noshape.onnx")
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), *FAST]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    dims = [d.dim_value for d in onnx.load(out).graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 256, 6, 6]
    assert max_abs_diff(path, out, random_inputs(onnx.load(path))) < 1e-3


def test_checker_failure_names_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convlint.rewrite.verify import Runtime

    path = fixtures.save(_planted(), tmp_path / "conv.onnx")

    def refuse(*args: object, **kwargs: object) -> str:
        return "planted failure"  # the runtime's process runs onnx.checker (it reads the file)

    monkeypatch.setattr(Runtime, "check", refuse)
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err, path)
    assert line.endswith("the rewritten model fails onnx.checker: planted failure")
    assert not out.exists()


def _save_external(folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save_model(_planted(), str(path), save_as_external_data=True, location="model.onnx.data")
    return path


def test_in_place_with_external_data_beside_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnx refuses to save external data named as a file in the working directory."""
    path = _save_external(tmp_path)
    original = onnx.load(path)  # weights read now, before they are replaced
    monkeypatch.chdir(tmp_path)
    assert main(["fix", "model.onnx", "--in-place", *FAST]) == 0
    # New weights under a new name, so that one rename switched model and data; old removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.1.data"]
    onnx.checker.check_model(str(path), full_check=True)
    rewritten = onnx.load(path)
    assert len(rewritten.graph.node) == 2
    stored = onnx.load(path, load_external_data=False).graph.initializer
    locations = {e.value for t in stored for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.1.data"}
    assert max_abs_diff(original, rewritten, random_inputs(original)) < 1e-3


def test_in_place_failure_leaves_model_and_data_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    path = _save_external(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    replace = os.replace

    def fail_on_the_model(src: object, dst: object) -> None:
        if Path(str(dst)) == path:
            raise OSError("planted failure")
        replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", fail_on_the_model)
    assert main(["fix", str(path), "--in-place", *FAST]) == 2
    assert "planted failure" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_weights_shorter_than_their_dims_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _planted()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:1000]
    path = tmp_path / "short.onnx"
    onnx.save(model, path)
    assert main(["fix", str(path), "-o", str(tmp_path / "out.onnx"), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err, path)
    assert "'conv.weight' holds 1000 bytes" in line and "256x256x3x3" in line


def test_missing_external_data_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save_external(tmp_path)
    (tmp_path / "model.onnx.data").unlink()
    assert main(["fix", str(path), "-o", str(tmp_path / "out.onnx"), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err, path)
    assert "model.onnx.data is missing" in line


@pytest.mark.parametrize("fault", [None, "crash"])
def test_json_on_bad_input_is_the_model_object_with_its_error(
    tmp_path: Path,
    fault: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As `check --format json`: the document on stdout, the one line on stderr, exit 2."""
    import json

    if fault is None:
        path = tmp_path / "bad.onnx"
        path.write_bytes(b"not a model")
    else:
        path = fixtures.save(_planted(), tmp_path / "conv.onnx")
        monkeypatch.setenv("CONVLINT_TEST_RUNTIME_FAULT", fault)
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), "--format", "json", *FAST]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, path)
    document = json.loads(captured.out)
    assert document["path"] == str(path) and document["error"]
    assert line.endswith(document["error"])
    assert document["models"][0]["error"] == document["error"]
    assert document["rewrites"] == [] and document["verification"] is None
    assert document["summary"]["errors"] == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("fault", "timeout", "message"),
    [
        # starting is bounded by START_TIMEOUT (12 s here), not by --timeout
        ("hang:0", "10", "onnxruntime did not start within 12 s"),
        ("crash:0", "300", "onnxruntime crashed while starting (signal SIGABRT)"),
        (
            "hang",
            "10",
            "onnxruntime did not finish running the original model within 10 s (--timeout)",
        ),
        ("crash", "300", "onnxruntime crashed while running the original model (signal SIGABRT)"),
        (None, "300", None),
    ],
)
def test_runtime_folder_is_removed_on_every_path(
    tmp_path: Path,
    fault: str | None,
    timeout: str,
    message: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hook's faults answer never (hang) or at once (crash): no outcome depends on how
    busy the machine is."""
    import tempfile

    from convlint.rewrite import verify

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(verify, "START_TIMEOUT", 12.0)
    if fault:
        monkeypatch.setenv("CONVLINT_TEST_RUNTIME_FAULT", fault)
    path = fixtures.save(_planted(), tmp_path / "conv.onnx")
    argv = ["fix", str(path), "-o", str(tmp_path / "out.onnx"), "--timeout", timeout, *FAST]
    code = main(argv)
    if message is None:
        assert code == 0
    else:
        assert code == 2
        line = _one_error_line(capsys.readouterr().err, path)
        assert line == f"convlint: error: {path}: {message}"
    assert list(temp.iterdir()) == []


def test_seeded_inputs_for_scalar_inputs_are_arrays() -> None:
    """An If's bool condition is a scalar input: onnxruntime takes 0-d arrays, not numpy scalars."""
    import numpy as np
    import onnx

    from convlint.rewrite.verify import InputSpec, random_feeds

    specs = [
        InputSpec("cond", (), onnx.TensorProto.BOOL),
        InputSpec("k", (), onnx.TensorProto.INT64),
        InputSpec("x", (), onnx.TensorProto.FLOAT),
    ]
    (feed,) = random_feeds(specs, samples=1, seed=0)
    for name, dtype in (("cond", np.bool_), ("k", np.int64), ("x", np.float32)):
        assert isinstance(feed[name], np.ndarray) and feed[name].shape == ()
        assert feed[name].dtype == dtype


def test_starting_the_runtime_is_not_bounded_by_the_timeout() -> None:
    """Importing onnxruntime takes seconds on a busy machine: a short --timeout is for runs."""
    from convlint.rewrite.verify import Runtime

    with Runtime(timeout=0.001) as runtime:
        assert "CPUExecutionProvider" in runtime.providers
        assert runtime.alive


def test_progress_lines_restart_the_time_limit_and_are_not_answers() -> None:
    """The child writes one PROGRESS line per sample it has run: the parent reads past them
    to the answer, even when several lines arrive in one read (a buffered reader would hide
    the later ones from select())."""
    import subprocess

    from convlint.rewrite.verify import PROGRESS, Runtime

    runtime = Runtime.__new__(Runtime)
    runtime.timeout, runtime._pending = 60.0, b""
    lines = PROGRESS * 3 + "ok\n" + PROGRESS + "error ValueError: x\n"
    runtime._proc = subprocess.Popen(["printf", lines], stdout=subprocess.PIPE, text=True)
    try:
        assert runtime._answer("running the model") == "ok"
        assert runtime._answer("running the model") == "error ValueError: x"
    finally:
        runtime._proc.wait()
