"""Ctrl-C, a closed pipe and special files: one line or none, never a traceback."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from convlint import fixtures


def test_ctrl_c_during_parallel_check_is_one_line_and_130(tmp_path: Path) -> None:
    # The first model prints findings (the ready signal: the run is under way); the others
    # take long enough to go to workers, and the test hook makes the last one never finish,
    # so the run is still going whenever the signal lands.
    fixtures.save(fixtures.vgg_stack(), tmp_path / "a_vgg.onnx")
    data = fixtures.big_chain().SerializeToString()
    for index in range(4):
        (tmp_path / f"chain{index}.onnx").write_bytes(data)
    env = {**os.environ, "CONVLINT_TEST_WORKER_FAULT": "hang:chain3.onnx"}
    process = subprocess.Popen(
        [sys.executable, "-m", "convlint", "check", "--jobs", "2", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
        # A shell starts background jobs with SIGINT ignored, and children inherit that: give
        # the child the default a terminal gives it, wherever the suite runs.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 300)
        first = process.stdout.readline() if ready else b""
        assert b"a_vgg.onnx" in first, "no report of the first model"
        assert process.poll() is None
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
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


def test_an_output_fifo_that_no_program_reads_is_refused_at_once(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Issue 20, item 7: opening it would wait for a reader, forever in a CI step."""
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    code, out, err = cli("check", str(path), "--output", str(fifo))
    assert (code, out) == (2, "")
    assert (
        err
        == f"convlint: error: --output {fifo}: cannot write: a FIFO that no program is reading\n"
    )
    code, _, err = cli("check", str(path), "--write-baseline", str(fifo))
    assert code == 2
    assert err == f"convlint: error: --write-baseline {fifo}: a FIFO that no program is reading\n"


def test_an_output_fifo_that_a_program_reads_gets_the_report(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there before the run
    try:
        code, out, _ = cli("check", str(path), "--output", str(fifo), "--format", "json")
        received = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert (code, out) == (1, "")
    assert b'"code": "CL001"' in received


def test_ctrl_c_while_convlint_imports_is_one_line_and_130(tmp_path: Path) -> None:
    """Issue 20, item 7: the signal lands while the CLI's modules are imported (the first
    half-second of a run), sent by the process itself at that moment: no timing involved."""
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    code = (
        "import builtins, os, signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "plain = builtins.__import__\n"
        "def importing(name, *args, **kwargs):\n"
        "    if name == 'convlint.cli':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return plain(name, *args, **kwargs)\n"
        "builtins.__import__ = importing\n"
        "from convlint.entry import run\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "check", str(path)], capture_output=True, timeout=300
    )
    assert result.returncode == 130
    assert result.stderr == b"convlint: interrupted\n"
    assert result.stdout == b""
