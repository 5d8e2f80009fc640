"""Issue 12, item 1: the onnxruntime child never imports modules from the working directory.

The child used to start as ``python -c ...``, which puts the working directory first on
``sys.path``: an ``onnxruntime.py`` or ``numpy.py`` in the folder where ``convlint fix`` ran was
executed. Here such modules are planted; each one, if imported, leaves a marker file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.cli import main

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--quiet"]
MARKER = "planted-module-ran"
PLANTED = ("onnxruntime", "numpy", "pickle", "onnx", "convlint")


def _plant(folder: Path) -> None:
    for name in PLANTED:
        (folder / f"{name}.py").write_text(
            f"with open({MARKER!r}, 'a') as handle:\n    handle.write({name!r} + '\\n')\n"
        )


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), folder / "conv.onnx")


def test_fix_in_a_folder_with_planted_modules_does_not_run_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    _plant(work)
    monkeypatch.chdir(work)
    out = tmp_path / "out.onnx"
    assert main(["fix", str(model), "-o", str(out), *FAST]) == 0
    assert not (work / MARKER).exists()
    assert out.exists()


def test_the_installed_command_in_a_folder_with_planted_modules(tmp_path: Path) -> None:
    """As a user runs it: the `convlint` script, started in the folder with the modules."""
    script = Path(sys.executable).parent / "convlint"
    if not script.exists():
        pytest.skip("no convlint script beside this Python")
    model = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    _plant(work)
    out = tmp_path / "out.onnx"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(script), "fix", str(model), "-o", str(out), *FAST],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (work / MARKER).exists()
