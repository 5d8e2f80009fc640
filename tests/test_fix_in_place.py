"""Issue 12, items 4 and 7: rewriting a model with external data in place, and file modes.

4. MODEL must always be the whole old or the whole new pair of model and data file, whenever
   `fix --in-place` is interrupted: the new weights go under a name no file has, and one
   rename of MODEL switches both. Interrupted (an error, Ctrl-C, SIGTERM), nothing is left
   behind: no staging folder beside MODEL, no runtime folder (with its copy of the weights) in
   the temporary folder.
7. A replaced model or data file keeps its mode (0600 stays 0600).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fix_helpers import ort_run, random_inputs

from convlint import fixtures
from convlint.cli import main

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--quiet"]


def _save_external(folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    model = fixtures.conv3x3(planted_rank=48, hw=6)
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{name}.data")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary folder for the run (the runtime's folder goes there)."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _assert_old_pair_computes(path: Path, feeds: list[Any], expected: list[Any]) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    assert len(onnx.load(path).graph.node) == 1  # the original conv, not the rewrite
    for got, want in zip(ort_run(path, feeds), expected, strict=True):
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("interruption", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize("hard_links", [True, False])
def test_interrupted_between_data_and_model_leaves_the_old_pair(
    tmp_path: Path,
    temp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interruption: type[BaseException],
    hard_links: bool,
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    path = _save_external(folder)
    feeds = random_inputs(onnx.load(path))
    expected = ort_run(path, feeds)
    before = _snapshot(folder)
    replace = os.replace
    seen: list[list[str]] = []

    def interrupt_at_the_model(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            seen.append(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))
            raise interruption("planted interruption")
        replace(src, dst)

    def no_hard_links(src: Any, dst: Any) -> None:
        raise PermissionError(1, "hard links not supported here")

    monkeypatch.setattr(os, "replace", interrupt_at_the_model)
    if not hard_links:
        monkeypatch.setattr(os, "link", no_hard_links)
    code = main(["fix", str(path), "--in-place", *FAST])
    assert code == (2 if interruption is OSError else 130)
    if interruption is OSError:
        err = capsys.readouterr().err.strip()
        assert err == f"convlint: error: {path}: cannot write: planted interruption"
    # The new data was in place beside the old pair when the model's rename failed ...
    assert seen == [["model.onnx", "model.onnx.1.data", "model.onnx.data"]]
    # ... and afterwards: the old pair, byte for byte, computing what it did; nothing else.
    assert _snapshot(folder) == before
    _assert_old_pair_computes(path, feeds, expected)
    assert list(temp.iterdir()) == []


def test_interrupted_while_verifying_the_written_model_leaves_nothing(
    tmp_path: Path, temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlint.rewrite.verify import Runtime

    folder = tmp_path / "models"
    folder.mkdir()
    path = _save_external(folder)
    before = _snapshot(folder)
    run = Runtime.run
    staged: list[str] = []

    def ctrl_c_on_the_written_model(self: Runtime, model: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("what") == "verifying the written model":
            staged.extend(p.name for p in folder.iterdir() if p.name.startswith(".convlint-fix-"))
            raise KeyboardInterrupt
        return run(self, model, *args, **kwargs)

    monkeypatch.setattr(Runtime, "run", ctrl_c_on_the_written_model)
    assert main(["fix", str(path), "--in-place", *FAST]) == 130
    assert len(staged) == 1  # the staging folder existed at the interruption
    assert _snapshot(folder) == before
    assert list(temp.iterdir()) == []


def test_sigterm_removes_staging_folder_and_runtime_temporaries(tmp_path: Path) -> None:
    """A real SIGTERM, while the child checks the written model (its third request with a
    fixed rank and no timing: the original, the trial, onnx.checker on the written model),
    which the test hook makes hang."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = _save_external(folder)
    before = _snapshot(folder)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "CONVLINT_TEST_RUNTIME_FAULT": "hang:3"}
    argv = ["fix", str(path), "--in-place", "--rank", "48", "--no-latency", *FAST]
    proc = subprocess.Popen(
        [sys.executable, "-m", "convlint", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            staging = [p for p in folder.iterdir() if p.name.startswith(".convlint-fix-")]
            if staging and any(staging[0].glob("*.data")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the written model was never staged"
        # the runtime's folder, with its copy of the weights
        assert any((p / "weights.bin").exists() for p in temp.glob("convlint-ort-*"))
        time.sleep(0.5)  # let it reach the hanging request (any point must clean up)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signal.SIGTERM
    assert _snapshot(folder) == before
    # onnxruntime itself leaves a small `.ses` file in TMPDIR when imported: not convlint's
    assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []


def test_in_place_twice_alternates_data_names_and_removes_the_old(tmp_path: Path) -> None:
    path = _save_external(tmp_path)
    feeds = random_inputs(onnx.load(path))
    assert main(["fix", str(path), "--in-place", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.1.data"]
    once = ort_run(path, feeds)
    assert main(["fix", str(path), "--in-place", "--rank", "40", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    twice = ort_run(path, feeds)
    assert np.max(np.abs(twice[0][0] - once[0][0])) < 1e-2


def _waiting_for_lock(path: Path) -> int:
    """How many processes wait for a lock on ``path``'s file (Linux's /proc/locks)."""
    inode = f":{path.stat().st_ino} "
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if " -> " in line and inode in line)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_concurrent_in_place_runs_take_turns(tmp_path: Path) -> None:
    """Issue 20, item 1: three `fix --in-place` runs started together on one model. The test
    holds the model's lock until all three wait for it (the ready signal), then lets them go:
    they run one after another, each on the pair the one before wrote."""
    import fcntl

    path = _save_external(tmp_path)
    original = onnx.load(path)
    feeds = random_inputs(original)
    expected = ort_run(path, feeds)
    argv = ["fix", str(path), "--in-place", "--no-latency", *FAST]
    held = os.open(path, os.O_RDONLY)
    processes: list[subprocess.Popen[str]] = []
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "convlint", *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        deadline = time.monotonic() + 300
        while _waiting_for_lock(path) < 3:
            running = [p.poll() is None for p in processes]
            assert all(running) and time.monotonic() < deadline, "the runs never waited"
            time.sleep(0.05)
    finally:
        os.close(held)  # lets them go
        results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in results] == [0, 0, 0], results
    onnx.checker.check_model(str(path), full_check=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in (["model.onnx", "model.onnx.data"], ["model.onnx", "model.onnx.1.data"])
    got = ort_run(path, feeds)
    assert len(onnx.load(path).graph.node) == 2  # the first run's rewrite, kept by the others
    assert np.max(np.abs(got[0][0] - expected[0][0])) < 1e-2


def test_data_file_of_another_name_is_left_alone(tmp_path: Path) -> None:
    """Weights in a file not named after MODEL may be shared by another model: kept."""
    path = tmp_path / "model.onnx"
    model = fixtures.conv3x3(planted_rank=48, hw=6)
    onnx.save_model(model, str(path), save_as_external_data=True, location="shared.bin")
    shared = (tmp_path / "shared.bin").read_bytes()
    assert main(["fix", str(path), "--in-place", *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
        "shared.bin",
    ]
    assert (tmp_path / "shared.bin").read_bytes() == shared


# -- item 7: modes ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_in_place_keeps_the_modes_of_model_and_data(tmp_path: Path) -> None:
    path = _save_external(tmp_path)
    path.chmod(0o600)
    (tmp_path / "model.onnx.data").chmod(0o640)
    assert main(["fix", str(path), "--in-place", *FAST]) == 0
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "model.onnx.1.data") == 0o640


def test_out_over_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    model = fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "conv.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    out.chmod(0o600)
    assert main(["fix", str(model), "-o", str(out), *FAST]) == 0
    assert _mode(out) == 0o600
    assert len(onnx.load(out).graph.node) == 2


def test_out_over_an_earlier_out_with_data_keeps_modes_and_removes_its_old_data(
    tmp_path: Path,
) -> None:
    model = _save_external(tmp_path, "conv.onnx")
    out = tmp_path / "out.onnx"
    assert main(["fix", str(model), "-o", str(out), *FAST]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == _mode(tmp_path / "out.onnx.data") == 0o666 & ~umask  # as created
    out.chmod(0o600)
    (tmp_path / "out.onnx.data").chmod(0o600)
    assert main(["fix", str(model), "-o", str(out), *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "conv.onnx",
        "conv.onnx.data",
        "out.onnx",
        "out.onnx.1.data",
    ]
    assert _mode(out) == _mode(tmp_path / "out.onnx.1.data") == 0o600
    onnx.checker.check_model(str(out), full_check=True)
