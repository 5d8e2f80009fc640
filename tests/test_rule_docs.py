"""`rules`, `rule CODE|NAME`, `rule --all`, `--format json`, `schema`, and the start-up they
cost: none of them (nor `--version`, `--help`) imports onnx, numpy or networkx."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from convlint.registry import load_catalog, load_registry

CLI = Callable[..., tuple[int, str, str]]
ROOT = Path(__file__).resolve().parents[1]


def test_catalog_is_the_registry() -> None:
    """The catalog reads the rules' metadata from their source without importing them."""
    catalog, registry = load_catalog(), load_registry()
    assert catalog.codes() == registry.codes() == ["CL001", "CL002", "CL003", "CL004", "CL005"]
    for read, imported in zip(catalog, registry, strict=True):
        for field in ("code", "name", "severity", "fix", "summary", "options", "doc", "origin"):
            assert getattr(read, field) == getattr(imported, field), (read.code, field)
        assert (read.rewrite is None) == (imported.rewrite is None), read.code


def test_rule_by_code_or_name(cli: CLI) -> None:
    by_code = cli("rule", "CL004")
    assert by_code[0] == 0 and by_code[1].startswith("# dense-head-on-feature-map (CL004)\n")
    assert cli("rule", "dense-head-on-feature-map") == by_code
    assert cli("rule", "cl004") == by_code


def test_rule_all_and_json(cli: CLI) -> None:
    code, out, _ = cli("rule", "--all")
    assert code == 0 and [line for line in out.splitlines() if line.startswith("# ")] == [
        "# wide-conv-without-reduction (CL001)",
        "# pool-branch-inflates-concat (CL002)",
        "# linear-conv-chain (CL003)",
        "# dense-head-on-feature-map (CL004)",
        "# wide-expansion-by-spatial-conv (CL005)",
    ]
    code, out, _ = cli("rule", "CL001", "--format", "json")
    rule = json.loads(out)
    assert rule["code"] == "CL001" and rule["name"] == "wide-conv-without-reduction"
    assert rule["severity"] == "warning" and rule["fix"] == "sometimes"
    assert rule["options"]["min-channels"] == 128 and rule["options"]["reduction-ratio"] == 4
    assert rule["fixes"] == ["approximate"]
    assert "## Why is this bad?" in rule["explanation"] or "Why is this bad?" in rule["explanation"]
    every = json.loads(cli("rule", "--all", "--format", "json")[1])
    assert [r["code"] for r in every] == ["CL001", "CL002", "CL003", "CL004", "CL005"]
    assert every[0] == rule
    assert json.loads(cli("rules", "--format", "json")[1]) == every
    code, _, err = cli("rule")
    assert code == 2 and "rule takes a rule's CODE or NAME, or --all" in err


@pytest.mark.parametrize("report", ["check", "fix", "stats"])
def test_schema_prints_the_shipped_schema(report: str, cli: CLI) -> None:
    code, out, _ = cli("schema", report)
    assert code == 0
    shipped = (ROOT / "schemas" / f"{report}.schema.json").read_text(encoding="utf-8")
    assert json.loads(out) == json.loads(shipped)
    assert json.loads(out)["$id"] == f"urn:convlint:schema:{report}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["-V"],
        ["--help"],
        ["rules"],
        ["rule", "CL001"],
        ["rule", "--all"],
        ["schema", "check"],
        ["check", "--help"],
    ],
)
def test_no_onnx_import(argv: list[str]) -> None:
    probe = (
        "import sys\n"
        "from convlint.cli import main\n"
        f"code = main({argv!r})\n"
        "heavy = sorted({'onnx', 'numpy', 'networkx', 'onnxruntime'} & set(sys.modules))\n"
        "sys.stdout.flush()\n"
        "print('HEAVY', heavy, code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.rstrip().endswith("HEAVY [] 0"), done.stdout[-300:] + done.stderr
