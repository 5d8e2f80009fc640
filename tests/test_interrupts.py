"""Ctrl-C, a closed pipe and special files: one line or none, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from convlint import fixtures


def test_ctrl_c_during_parallel_check_is_one_line_and_130(tmp_path: Path) -> None:
    data = fixtures.big_chain().SerializeToString()
    for index in range(60):  # about 20 s of work on 2 cores: still running when interrupted
        (tmp_path / f"chain{index:02}.onnx").write_bytes(data)
    process = subprocess.Popen(
        [sys.executable, "-m", "convlint", "check", "--jobs", "2", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
        # A shell starts background jobs with SIGINT ignored, and children inherit that: give
        # the child the default a terminal gives it, wherever the suite runs.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(1.5)
    assert process.poll() is None, "finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.decode() == "convlint: interrupted\n"
    assert b"Traceback" not in out + err


def test_a_closed_stdout_pipe_is_not_an_error(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.vgg_stack(), tmp_path / "vgg.onnx")
    result = subprocess.run(
        f"{sys.executable} -m convlint check {path} --verbose | head -c 10 >/dev/null; "
        "echo ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "1"  # the findings decide, not the pipe
    assert result.stderr == ""


def test_a_baseline_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    fifo = tmp_path / "baseline.json"
    os.mkfifo(fifo)
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    code, _, err = cli("check", str(path), "--baseline", str(fifo))
    assert code == 2
    assert err == f"convlint: error: --baseline {fifo}: not a regular file\n"
