"""The pre-commit hook, run by the real `pre-commit try-repo` on a clone of this repository.

try-repo installs the hook repository into a fresh virtualenv with pip, so the test needs git
and the package registry and takes tens of seconds: it is marked `slow`, and plain `pytest`
runs it. It tries a clone of HEAD, as a user's `rev:` would pin it: try-repo on the checkout
itself would also pick up uncommitted edits to tracked files (not untracked ones).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convlint import fixtures

ROOT = Path(__file__).resolve().parents[1]
RULE = "=" * 79  # try-repo prints the config it made between such lines, then runs it

pytestmark = pytest.mark.slow


def git(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pre_commit")
    if shutil.which("git") is None or git("rev-parse", "HEAD", cwd=ROOT).returncode != 0:
        pytest.skip("needs git and a git checkout of convlint")
    if git("cat-file", "-e", "HEAD:.pre-commit-hooks.yaml", cwd=ROOT).returncode != 0:
        pytest.skip(".pre-commit-hooks.yaml is not committed yet")
    clone = tmp_path_factory.mktemp("hook") / "convlint"
    assert git("clone", "-q", str(ROOT), str(clone), cwd=ROOT).returncode == 0
    return clone


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's git work tree with a flagged and a clean model."""
    repo = tmp_path_factory.mktemp("work")
    assert git("init", "-q", str(repo), cwd=repo).returncode == 0
    (repo / "models").mkdir()
    fixtures.save(fixtures.inception_3a_naive(), repo / "models" / "naive.onnx")
    fixtures.save(fixtures.inception_3a(), repo / "models" / "clean.onnx")
    (repo / "README.txt").write_text("not a model\n")
    return repo


def try_repo(hook_repo: Path, work: Path, *files: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRE_COMMIT", "GIT_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo), "convlint"]
        + ["--color", "never", "--verbose", "--files", *files],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.returncode, (done.stdout + done.stderr).split(RULE)[-1]


def test_hook_fails_on_a_flagged_model_and_passes_on_a_clean_one(
    hook_repo: Path, work: Path
) -> None:
    code, output = try_repo(hook_repo, work, "models/naive.onnx", "README.txt")
    assert code == 1, output
    assert "Failed" in output
    assert "models/naive.onnx:inception_3a/3x3: CL001" in output
    assert "README.txt" not in output  # files: \.onnx$

    code, output = try_repo(hook_repo, work, "models/clean.onnx", "README.txt")
    assert code == 0, output
    assert "Passed" in output
    assert "All checks passed! (1 model)" in output


def test_hook_keeps_excluded_models_excluded(hook_repo: Path, work: Path) -> None:
    """pre-commit names each file; the hook's --force-exclude applies `exclude` to them."""
    (work / "third_party").mkdir(exist_ok=True)
    fixtures.save(fixtures.inception_3a_naive(), work / "third_party" / "vendored.onnx")
    (work / "convlint.toml").write_text('exclude = ["third_party/*"]\n')
    try:
        code, output = try_repo(hook_repo, work, "third_party/vendored.onnx")
        assert code == 0, output
        assert "CL001" not in output
        code, output = try_repo(hook_repo, work, "third_party/vendored.onnx", "models/naive.onnx")
        assert code == 1 and "models/naive.onnx:inception_3a/3x3: CL001" in output
        assert "third_party" not in output
    finally:
        (work / "convlint.toml").unlink()
