"""What the README shows is what convlint prints (the demo, the stats examples), and the
release basics are in place: a LICENSE matching pyproject, a CHANGELOG, `--version`, and the
pre-commit and CI examples pinned to a revision that exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint import __version__, fixtures

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI = Callable[..., tuple[int, str, str]]
MEASURED = re.compile(r"rel L2 [0-9.e+-]+, max abs [0-9.e+-]+")  # float noise across machines


def block_after(marker: str) -> str:
    """The first ```text block after ``marker`` in the README."""
    start = README.index("```text\n", README.index(marker)) + len("```text\n")
    return README[start : README.index("```", start)]


def test_readme_demo_is_what_demo_prints(cli: CLI) -> None:
    code, out, _ = cli("demo")
    assert code == 0
    assert MEASURED.sub("~", block_after("`convlint demo` (in full")) == MEASURED.sub("~", out)


def test_readme_stats_examples_are_what_stats_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: CLI
) -> None:
    monkeypatch.chdir(tmp_path)
    fixtures.save(fixtures.BUILDERS["symbolic_dims_model"](), tmp_path / "fcn.onnx")
    _, out, _ = cli("stats", "fcn.onnx")
    assert block_after("and says how to bind the dims") == out
    planted = fixtures.inception_3a_naive(planted_rank=24, seed=0)
    fixtures.save(planted, tmp_path / "inception_3a_naive.onnx")
    argv = ["inception_3a_naive.onnx", "-o", "inception_3a_fixed.onnx"]
    assert cli("fix", *argv, "--method", "weight", "--samples", "2", "--allow-noise")[0] == 0
    _, out, _ = cli("stats", "--diff", "inception_3a_naive.onnx", "inception_3a_fixed.onnx")
    assert block_after("After the demo's rewrite") == out


def test_license_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "MIT"}
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in license_text
    assert project["version"] == __version__


def test_changelog_names_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog\n")
    assert f"## [{__version__}] - " in changelog and "## [Unreleased]" in changelog


def test_version(cli: CLI) -> None:
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith(f"convlint {__version__} (onnx ")


def test_examples_pin_this_release() -> None:
    """pre-commit's rev and pip's @ name the tag of this version, as CHANGELOG releases it."""
    pins = set(re.findall(r"rev: (\S+)", README))
    pins |= set(re.findall(r"OWNER/convlint@([^\"\s]+)", README))
    assert pins == {f"v{__version__}"}, pins  # pre-commit, GitHub Actions and GitLab CI
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    released = rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$"
    assert re.search(released, changelog, re.M)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return  # an unpacked source tree: the tag cannot be looked up
    tag = f"v{__version__}"
    tagged = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"], cwd=ROOT, capture_output=True
    )
    if tagged.returncode == 0:  # once tagged, the tag holds this version
        shown = subprocess.run(
            ["git", "show", f"{tag}:pyproject.toml"], cwd=ROOT, capture_output=True, text=True
        )
        assert f'version = "{__version__}"' in shown.stdout
