"""Issue 12, items 2 and 3: where reports, baselines and models are written.

2. ``--output``, ``--write-baseline`` and ``fix -o`` used to stage a file beside the target and
   rename it over it, so ``/dev/null`` (as root), a FIFO or a symlink became a regular file. Now a
   symlink's target is replaced (the link stays), a device or FIFO is written through, and
   ``fix -o`` refuses what is not a regular file (its data file could not go beside it).
3. ``--output`` and ``--write-baseline`` naming MODEL, MODEL's external data or OUT replaced it
   with the report; now that is refused (exit 2, one line naming the file), as ``-o MODEL`` is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest

from convlint import fixtures
from convlint.cli import main

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--quiet"]
Cli = Callable[..., tuple[int, str, str]]


def _conv(folder: Path, external: bool = False, location: str = "conv.onnx.data") -> Path:
    model = fixtures.conv3x3(planted_rank=48, hw=6)
    path = folder / "conv.onnx"
    if external:
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(path), save_as_external_data=True, location=location)
    else:
        onnx.save_model(model, str(path))
    return path


def _one_line(err: str, start: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert lines[0].startswith(start), lines[0]
    return lines[0]


@pytest.fixture
def dev_null() -> Iterator[Path]:
    """The real /dev/null (the issue's case: CI containers run as root); if a regression
    turned it into a regular file, it is made a device again."""
    null = Path("/dev/null")
    if not stat.S_ISCHR(null.stat().st_mode):
        pytest.skip("/dev/null is not a character device here")
    try:
        yield null
    finally:
        if not stat.S_ISCHR(os.lstat(null).st_mode):
            null.unlink()
            os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            null.chmod(0o666)  # mknod applied the umask


# -- item 2: special files and symlinks ---------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--write-baseline"])
def test_dev_null_stays_a_character_device(tmp_path: Path, dev_null: Path, flag: str) -> None:
    model = _conv(tmp_path)
    assert main(["check", str(model), flag, str(dev_null), "--exit-zero"]) == 0
    assert stat.S_ISCHR(os.lstat(dev_null).st_mode)


def test_fix_report_to_dev_null(tmp_path: Path, dev_null: Path) -> None:
    model = _conv(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["fix", str(model), "-o", str(out), "--output", str(dev_null), *FAST]) == 0
    assert stat.S_ISCHR(os.lstat(dev_null).st_mode) and out.is_file()


def test_fix_refuses_to_write_the_model_to_a_device(
    tmp_path: Path, dev_null: Path, cli: Cli
) -> None:
    model = _conv(tmp_path)
    code, _, err = cli("fix", str(model), "-o", str(dev_null), *FAST)
    assert code == 2
    line = _one_line(err, "convlint: error: -o /dev/null")
    assert "a character device, not a regular file" in line
    assert stat.S_ISCHR(os.lstat(dev_null).st_mode)
    assert not Path("/dev/null.data").exists()


@pytest.mark.parametrize("flag", ["--output", "--write-baseline"])
def test_a_fifo_is_written_through(tmp_path: Path, flag: str) -> None:
    model = _conv(tmp_path)
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    # The read end is opened first (non-blocking, so the test cannot hang): the writer's open
    # then returns at once, and the report (far below the pipe's 64 KiB) waits in the pipe.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert main(["check", str(model), flag, str(fifo), "--format", "json"]) in (0, 1)
        chunks = []
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    text = b"".join(chunks).decode()
    assert ('"CL001"' if flag == "--output" else '"code": "CL001"') in text


def test_fix_refuses_a_fifo_as_out(tmp_path: Path, cli: Cli) -> None:
    model = _conv(tmp_path)
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    code, _, err = cli("fix", str(model), "-o", str(fifo), *FAST)
    assert code == 2
    assert "is a FIFO, not a regular file" in _one_line(err, f"convlint: error: -o {fifo}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("flag", ["--output", "--write-baseline"])
@pytest.mark.parametrize("existing", [True, False])
def test_a_symlink_stays_a_symlink_and_its_target_gets_the_content(
    tmp_path: Path, flag: str, existing: bool
) -> None:
    model = _conv(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "report.json"
    if existing:
        target.write_text("old\n")
        target.chmod(0o600)
    link = tmp_path / "report.json"
    link.symlink_to(target)
    assert main(["check", str(model), flag, str(link), "--format", "json", "--exit-zero"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "CL001" in target.read_text()
    if existing:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in elsewhere.iterdir()) == ["report.json"]  # no temporaries


@pytest.mark.parametrize("external", [False, True])
def test_fix_out_through_a_symlink_writes_its_target(tmp_path: Path, external: bool) -> None:
    model = _conv(tmp_path, external=external)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "fixed.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "out.onnx"
    link.symlink_to(target)
    assert main(["fix", str(model), "-o", str(link), *FAST]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    onnx.checker.check_model(str(target), full_check=True)
    assert len(onnx.load(target).graph.node) == 2  # the rewrite, with its weights
    expected = ["fixed.onnx", "fixed.onnx.data"] if external else ["fixed.onnx"]
    assert sorted(p.name for p in elsewhere.iterdir()) == expected


# -- item 3: outputs that name an input ----------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--write-baseline"])
@pytest.mark.parametrize("victim", ["model", "data", "data-in-subfolder"])
def test_check_refuses_to_write_over_the_model_or_its_data(
    tmp_path: Path, cli: Cli, flag: str, victim: str
) -> None:
    location = "weights/conv.bin" if victim == "data-in-subfolder" else "conv.onnx.data"
    model = _conv(tmp_path, external=True, location=location)
    path = model if victim == "model" else tmp_path / location
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, out, err = cli("check", str(model), flag, str(path))
    assert code == 2
    line = _one_line(err, f"convlint: error: {flag} {path} is ")
    assert line.endswith("refusing to overwrite it")
    assert (f"the model {model}" if victim == "model" else f"external data of {model}") in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_check_refuses_a_model_of_a_folder_it_checks(tmp_path: Path, cli: Cli) -> None:
    model = _conv(tmp_path)
    before = model.read_bytes()
    code, _, err = cli("check", str(tmp_path), "--output", str(model))
    assert code == 2
    assert "is the model" in _one_line(err, f"convlint: error: --output {model} is ")
    assert model.read_bytes() == before


def test_check_refuses_the_same_file_for_report_and_baseline(tmp_path: Path, cli: Cli) -> None:
    model = _conv(tmp_path)
    both = tmp_path / "both.json"
    code, _, err = cli("check", str(model), "--write-baseline", str(both), "--output", str(both))
    assert code == 2
    line = _one_line(err, f"convlint: error: --output {both} and --write-baseline {both} ")
    assert line.endswith("name the same file")
    assert not both.exists()


def test_a_report_beside_the_model_that_is_not_its_data_is_written(tmp_path: Path) -> None:
    model = _conv(tmp_path, external=True)
    report = tmp_path / "report.txt"
    report.write_text("old\n")
    assert main(["check", str(model), "--output", str(report), "--exit-zero"]) == 0
    assert "CL001" in report.read_text()


def test_stats_refuses_to_write_over_the_models_data(tmp_path: Path, cli: Cli) -> None:
    model = _conv(tmp_path, external=True)
    data = tmp_path / "conv.onnx.data"
    before = data.read_bytes()
    code, _, err = cli("stats", str(model), "--output", str(data))
    assert code == 2
    assert f"external data of {model}" in _one_line(err, f"convlint: error: --output {data} is ")
    assert data.read_bytes() == before


@pytest.mark.parametrize("victim", ["model", "data", "out", "out-data", "in-place"])
def test_fix_refuses_a_report_over_model_data_or_out(tmp_path: Path, cli: Cli, victim: str) -> None:
    model = _conv(tmp_path, external=True)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous OUT")
    where = {
        "model": model,
        "data": tmp_path / "conv.onnx.data",
        "out": out,
        "out-data": tmp_path / "out.onnx.data",
        "in-place": model,
    }[victim]
    target = ["--in-place"] if victim == "in-place" else ["-o", str(out)]
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = cli("fix", str(model), *target, "--output", str(where), *FAST)
    assert code == 2
    line = _one_line(err, f"convlint: error: --output {where} is ")
    assert str(where) in line
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
