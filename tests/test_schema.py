"""The JSON Schemas in ``schemas/`` describe what `check`, `fix` and `stats` really write: real
reports of the fixtures (findings, symbolic dims, unreadable models, --verbose, fix's rewrites
and its error document, stats of one model, several, and --diff) validate against them, and
every JSON report carries the integer ``schema_version`` they are written for."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from convlint import fixtures
from convlint.reporters import SCHEMA_VERSION

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
CLI = Callable[..., tuple[int, str, str]]


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    return loaded


def validate(name: str, document: Any) -> None:
    validator = jsonschema.Draft202012Validator(schema(name))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in (
        "inception_3a_naive",
        "vgg_stack",
        "symbolic_dims_model",
        "linear_conv_chain_bad",
        "resnet_bottleneck",
    ):
        fixtures.save(fixtures.BUILDERS[name](), tmp_path / f"{name}.onnx")
    fixtures.save(fixtures.inception_3a_naive(planted_rank=24, seed=0), tmp_path / "planted.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    fixtures.BAD_WRITERS["truncated"](broken)
    return tmp_path


def run_json(cli: CLI, *argv: str) -> tuple[int, Any]:
    code, out, _ = cli(*argv, "--format", "json")
    return code, json.loads(out)


@pytest.mark.parametrize("name", ["check", "fix", "stats"])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schema(name))
    assert schema(name)["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_fix_and_check_share_their_definitions() -> None:
    check, fix = schema("check")["$defs"], schema("fix")["$defs"]
    for name, definition in check.items():
        assert fix[name] == definition, name
    assert schema("stats")["$defs"]["tool"] == check["tool"]


@pytest.mark.parametrize(
    "argv",
    [
        ["inception_3a_naive.onnx"],
        ["vgg_stack.onnx", "linear_conv_chain_bad.onnx"],
        ["symbolic_dims_model.onnx"],  # macs null, per-pixel figures
        ["symbolic_dims_model.onnx", "--verbose"],  # skipped and notes
        ["resnet_bottleneck.onnx", "--verbose"],
        [".", "--jobs", "2"],  # every model, and one that cannot be read
    ],
)
def test_check_reports_validate(models: Path, cli: CLI, argv: list[str]) -> None:
    code, document = run_json(cli, "check", *argv)
    validate("check", document)
    assert document["schema_version"] == SCHEMA_VERSION
    if "." in argv:
        assert code == 2 and any(m["error"] for m in document["models"])
    if "symbolic_dims_model.onnx" in argv:
        (model,) = document["models"]
        assert model["cost"]["macs"] is None and model["cost"]["macs_per_input_pixel"] == 5296


def test_verbose_reaches_the_json(models: Path, cli: CLI) -> None:
    _, plain = run_json(cli, "check", "resnet_bottleneck.onnx")
    assert "skipped" not in plain["models"][0] and "notes" not in plain["models"][0]
    _, verbose = run_json(cli, "check", "resnet_bottleneck.onnx", "--verbose")
    (model,) = verbose["models"]
    assert all(set(s) == {"code", "node", "reason"} for s in model["skipped"])
    assert {
        "code": "CL001",
        "node": "layer1.1.conv2",
        "reason": "reads 64 channels, below min-channels=128",
    } in model["skipped"]
    assert isinstance(model["notes"], list)
    _, symbolic = run_json(cli, "check", "symbolic_dims_model.onnx", "--verbose")
    notes = symbolic["models"][0]["notes"]
    assert any("--input-shape binds symbolic dims" in note for note in notes)


def test_a_baseline_and_a_bad_schema_version(models: Path, cli: CLI) -> None:
    cli("check", "inception_3a_naive.onnx", "--write-baseline", "baseline.json")
    _, document = run_json(cli, "check", "inception_3a_naive.onnx", "--baseline", "baseline.json")
    validate("check", document)
    document["schema_version"] = 1
    with pytest.raises(AssertionError, match="schema_version"):
        validate("check", document)
    del document["schema_version"]
    with pytest.raises(AssertionError, match="schema_version"):
        validate("check", document)


def test_fix_reports_validate(models: Path, cli: CLI) -> None:
    code, document = run_json(
        cli,
        "fix",
        "planted.onnx",
        "-o",
        "fixed.onnx",
        "--method",
        "weight",
        "--samples",
        "2",
        "--allow-noise",
    )
    assert code == 0
    validate("fix", document)
    assert document["schema_version"] == SCHEMA_VERSION
    assert [r["kind"] for r in document["rewrites"]] == ["svd-reduce", "svd-reduce"]
    assert document["verification"]["ok"] is True
    # A model fix cannot read: the same document shape, with the model's error.
    code, document = run_json(cli, "fix", "broken/truncated.onnx", "-o", "out.onnx")
    assert code == 2
    validate("fix", document)
    assert document["error"] and document["schema_version"] == SCHEMA_VERSION


def test_fix_of_a_fold_validates(models: Path, cli: CLI) -> None:
    code, document = run_json(cli, "fix", "linear_conv_chain_bad.onnx", "-o", "folded.onnx")
    assert code == 0
    validate("fix", document)
    assert [r["kind"] for r in document["rewrites"]] == ["fold"]


@pytest.mark.parametrize(
    "argv",
    [
        ["inception_3a_naive.onnx"],
        ["symbolic_dims_model.onnx"],
        ["symbolic_dims_model.onnx", "--verbose"],
        ["inception_3a_naive.onnx", "vgg_stack.onnx"],
    ],
)
def test_stats_reports_validate(models: Path, cli: CLI, argv: list[str]) -> None:
    code, document = run_json(cli, "stats", *argv)
    assert code == 0
    validate("stats", document)
    assert document["schema_version"] == SCHEMA_VERSION


def test_stats_of_an_unreadable_model_and_a_diff_validate(models: Path, cli: CLI) -> None:
    code, document = run_json(cli, "stats", "inception_3a_naive.onnx", "broken")
    assert code == 2
    validate("stats", document)
    assert [bool(m["error"]) for m in document["models"]] == [False, True]
    cli(
        "fix",
        "planted.onnx",
        "-o",
        "fixed.onnx",
        "--method",
        "weight",
        "--samples",
        "2",
        "--allow-noise",
    )
    code, document = run_json(cli, "stats", "--diff", "planted.onnx", "fixed.onnx")
    assert code == 0
    validate("stats", document)
    assert document["diff"]["total"]["added"] == 4  # <node>/reduce and <node>/spatial, twice


def test_demo_json_carries_the_schema_version(cli: CLI) -> None:
    code, out, _ = cli("demo", "--format", "json")
    assert code == 0
    document = json.loads(out)
    validate("check", document)
