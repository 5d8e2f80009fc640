"""Stage 5c (the onnxruntime child): it imports convlint, onnx, onnxruntime and numpy from where
`fix` did, however they were installed, and says so when it cannot."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from convlint import fixtures
from convlint.rewrite import verify

REPOSITORY = Path(__file__).resolve().parents[1]
FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--no-latency", "--quiet"]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python that has onnx, onnxruntime and numpy (this one's site-packages, through a
    ``.pth`` line) but not convlint: its editable install's import hook is not run there."""
    folder = tmp_path_factory.mktemp("bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """convlint installed with ``pip install --target DIR`` (its dependencies left out)."""
    folder = tmp_path_factory.mktemp("target")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder)]
        + [str(REPOSITORY)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (folder / "convlint" / "rewrite" / "verify.py").exists()
    return folder


def test_fix_runs_with_convlint_from_pip_target_on_pythonpath(
    bare_python: Path, target: Path, tmp_path: Path
) -> None:
    """The case of a machine whose packages come through PYTHONPATH: the child (``python -I``)
    gets the folder from the parent, and not the working directory, whose onnxruntime.py would
    stop it."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "onnxruntime.py").write_text("raise SystemExit('imported from the working folder')\n")
    model = fixtures.save(fixtures.conv3x3(), work / "conv.onnx")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    result = subprocess.run(
        [str(bare_python), "-m", "convlint", "fix", str(model), "-o", "out.onnx", *FAST],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (work / "out.onnx").exists()
    # convlint itself came from the target folder in the parent too
    where = subprocess.run(
        [str(bare_python), "-c", "import convlint.rewrite.verify as v; print(v.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == target / "convlint" / "rewrite" / "verify.py"


def test_import_roots_leave_out_the_working_folder_and_unrelated_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy
    import onnx

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (tmp_path / "onnxruntime.py").write_text("raise SystemExit(1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), str(unrelated), *sys.path])
    roots = verify.import_roots()
    assert str(tmp_path) not in roots and "" not in roots and str(unrelated) not in roots
    numpy_root = str(Path(numpy.__file__).parent.parent)
    onnx_root = str(Path(onnx.__file__).parent.parent)
    assert numpy_root in roots and onnx_root in roots
    assert len(roots) == len(set(roots))


def test_import_roots_keep_the_order_of_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that holds its own numpy, earlier on sys.path, is where numpy came from: it
    comes first for the child too."""
    import numpy

    earlier = tmp_path / "earlier"
    (earlier / "numpy").mkdir(parents=True)
    fake = type(numpy)("numpy")
    fake.__spec__ = importlib.machinery.ModuleSpec("numpy", None, is_package=True)
    fake.__spec__.submodule_search_locations = [str(earlier / "numpy")]
    monkeypatch.setitem(sys.modules, "numpy", fake)
    monkeypatch.setattr(sys, "path", [str(earlier), *sys.path])
    roots = verify.import_roots()
    assert roots[0] == str(earlier)


def test_a_child_that_cannot_import_convlint_says_why(
    bare_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(bare_python))
    monkeypatch.setattr(verify, "import_roots", lambda: [])
    with pytest.raises(verify.RuntimeFailure) as caught:
        verify.Runtime()
    assert str(caught.value) == (
        "cannot import convlint in the onnxruntime process: "
        "ModuleNotFoundError: No module named 'convlint'"
    )
