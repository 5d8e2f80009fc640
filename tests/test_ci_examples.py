"""The README's pre-commit and CI examples (issue 18): every step that reports findings passes
the baseline, the CI examples create it first when it is missing, the hook passes
--force-exclude, and GitLab's example publishes the Code Quality report."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _ci_section() -> str:
    start = README.index("## Using convlint in CI")
    return README[start : README.index("### Report formats", start)]


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", _ci_section(), flags=re.S)


def test_every_reporting_step_passes_the_baseline() -> None:
    commands = [
        line
        for block in _yaml_blocks()
        for line in block.splitlines()
        if "convlint check" in line and not line.strip().startswith("#")
    ]
    assert len(commands) == 9, commands  # GitHub 4, GitLab 5
    for line in commands:
        assert "--baseline convlint-baseline.json" in line or (
            "test -f convlint-baseline.json || " in line and "--write-baseline" in line
        ), line
    for block in _yaml_blocks()[1:]:  # the CI examples create the baseline first
        first = next(line for line in block.splitlines() if "convlint check" in line)
        assert "test -f convlint-baseline.json ||" in first
    assert "args: [--baseline, convlint-baseline.json]" in _yaml_blocks()[0]


def test_the_hook_passes_force_exclude() -> None:
    hooks = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "entry: convlint check --force-exclude\n" in hooks


def test_gitlab_example_publishes_code_quality() -> None:
    gitlab = _yaml_blocks()[2]
    assert "--format gitlab --output gl-code-quality.json" in gitlab
    assert "codequality: gl-code-quality.json" in gitlab
