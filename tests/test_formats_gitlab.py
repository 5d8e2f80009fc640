"""`--format gitlab`: GitLab Code Quality, checked against the fields GitLab documents for the
merge-request widget (docs.gitlab.com/ci/testing/code_quality/#code-quality-report-format):
a JSON array of issues, each with a string ``description``, ``check_name`` and ``fingerprint``
(unique: GitLab shows one issue per fingerprint), a ``severity`` of info, minor, major,
critical or blocker, and a ``location`` with a ``path`` relative to the repository and
``lines.begin``, an integer line (or ``positions.begin.line``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]

GITLAB_CODE_QUALITY = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["description", "check_name", "fingerprint", "severity", "location"],
        "properties": {
            "description": {"type": "string", "minLength": 1},
            "check_name": {"type": "string", "minLength": 1},
            "fingerprint": {"type": "string", "minLength": 1},
            "severity": {"enum": ["info", "minor", "major", "critical", "blocker"]},
            "location": {
                "type": "object",
                "required": ["path", "lines"],
                "properties": {
                    "path": {"type": "string", "pattern": "^(?!/)(?!\\./)"},
                    "lines": {
                        "type": "object",
                        "required": ["begin"],
                        "properties": {"begin": {"type": "integer", "minimum": 1}},
                    },
                },
            },
        },
    },
}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root (the working directory, as in CI) with a models folder."""
    (tmp_path / "models").mkdir()
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "models" / "naive.onnx")
    fixtures.save(fixtures.vgg_stack(), tmp_path / "models" / "vgg.onnx")
    (tmp_path / "models" / "broken.onnx").write_bytes(b"not a model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_gitlab_report_has_the_documented_fields(repo: Path, cli: CLI) -> None:
    code, out, err = cli("check", "models", "--format", "gitlab", "--jobs", "1")
    assert code == 2 and "models/broken.onnx" in err  # the unreadable model still fails
    issues = json.loads(out)
    jsonschema.validate(issues, GITLAB_CODE_QUALITY)
    fingerprints = [issue["fingerprint"] for issue in issues]
    assert len(set(fingerprints)) == len(fingerprints)
    by_node = {issue["description"].split(" (")[0]: issue for issue in issues}
    first = by_node["CL001 inception_3a/3x3"]
    assert first["check_name"] == "CL001 wide-conv-without-reduction"
    assert first["severity"] == "major"  # a warning
    assert first["location"] == {"path": "models/naive.onnx", "lines": {"begin": 1}}
    assert "params 221,184 -> 36,096" in first["description"]
    broken = [i for i in issues if i["location"]["path"] == "models/broken.onnx"]
    assert [(i["check_name"], i["severity"]) for i in broken] == [
        ("convlint model-not-readable", "blocker")
    ]
    paths = {i["location"]["path"] for i in issues}
    assert paths == {"models/naive.onnx", "models/vgg.onnx", "models/broken.onnx"}


def test_gitlab_fingerprint_is_stable_and_baselined_findings_are_left_out(
    repo: Path, cli: CLI
) -> None:
    naive = "models/naive.onnx"
    _, out, _ = cli("check", naive, "--format", "gitlab")
    before = json.loads(out)
    assert len(before) == 3
    # new weights, the same nodes: the same fingerprints
    fixtures.save(fixtures.inception_3a_naive(seed=7), repo / naive)
    assert [i["fingerprint"] for i in json.loads(cli("check", naive, "--format", "gitlab")[1])] == [
        i["fingerprint"] for i in before
    ]
    cli("check", naive, "--write-baseline", "baseline.json")
    code, out, _ = cli("check", naive, "--format", "gitlab", "--baseline", "baseline.json")
    assert (code, json.loads(out)) == (0, [])
    severities = {"info": "minor", "error": "critical"}
    config = repo / "convlint.toml"
    for severity, expected in severities.items():
        config.write_text(f'[rules.CL001]\nseverity = "{severity}"\n')
        issues = json.loads(cli("check", naive, "--format", "gitlab")[1])
        assert {i["severity"] for i in issues if i["check_name"].startswith("CL001")} == {expected}
