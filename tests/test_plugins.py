"""Third-party rules through the `convlint.rules` entry-point group, installed for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from fix_helpers import max_abs_diff, random_inputs

from convlint import fixtures

PLUGIN_SOURCE = '''
"""XT1 relu-after-relu

## What it does
Flags a Relu fed by another Relu.
"""
from convlint.findings import Severity
from convlint.registry import Rule


def check(ctx):
    for node in ctx.graph:
        if node.op_type == "{op}":
            yield ctx.finding(node, "plugin saw " + node.name)


RULE = Rule(
    code="{code}",
    name="{name}",
    severity=Severity.WARNING,
    fix="never",
    summary="a plugin rule",
    check=check,
    options={{"threshold": 3}},
    doc=__doc__,
)
'''


def build_wheel(folder: Path, dist: str, module: str, source: str, target: str) -> Path:
    """A minimal pure-Python wheel, made by hand so that installing it needs no build step."""
    wheel = folder / f"{dist}-1.0-py3-none-any.whl"
    info = f"{dist}-1.0.dist-info"
    files = {
        f"{module}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[convlint.rules]\n{dist} = {target}\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


@pytest.fixture
def install(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """pip-install plugin wheels into a temporary site folder; returns the env to run with."""

    def run(*wheels: Path) -> dict[str, str]:
        site = tmp_path / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
             "--target", str(site), *map(str, wheels)],
            check=True,
        )  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        return env

    return run


def convlint(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convlint", *argv], capture_output=True, text=True, env=env
    )


def test_plugin_is_listed_configurable_and_fires(
    tmp_path: Path, install: Callable[..., dict[str, str]], model_file: Callable[..., Path]
) -> None:
    source = PLUGIN_SOURCE.format(op="Relu", code="XT1", name="relu-after-relu")
    env = install(build_wheel(tmp_path, "convlint_xt", "convlint_xt", source, "convlint_xt:RULE"))
    listed = convlint(env, "rules")
    assert listed.returncode == 0, listed.stderr
    assert any(
        line.startswith("XT1") and "relu-after-relu" in line for line in listed.stdout.splitlines()
    )
    model = model_file("linear_conv_chain_good")
    fired = convlint(env, "check", str(model), "--select", "XT1", "--format", "json")
    assert fired.returncode == 1, fired.stderr
    assert '"code": "XT1"' in fired.stdout
    config = tmp_path / "convlint.toml"
    config.write_text('[rules.XT1]\nthreshold = 5\nseverity = "info"\n')
    configured = convlint(env, "check", str(model), "--config", str(config), "--select", "XT")
    assert configured.returncode == 0  # severity lowered to info, below fail-on=warning
    config.write_text("[rules.XT1]\nthreshhold = 5\n")
    bad = convlint(env, "check", str(model), "--config", str(config))
    assert bad.returncode == 2 and "valid: severity, threshold" in bad.stderr
    doc = convlint(env, "rule", "XT1")
    assert "## What it does" in doc.stdout


def test_duplicate_code_names_the_plugin(
    tmp_path: Path, install: Callable[..., dict[str, str]]
) -> None:
    source = PLUGIN_SOURCE.format(op="Relu", code="CL001", name="another-name")
    env = install(
        build_wheel(tmp_path, "convlint_dup", "convlint_dup", source, "convlint_dup:RULE")
    )
    result = convlint(env, "rules")
    assert result.returncode == 2
    assert "plugin 'convlint_dup'" in result.stderr and "CL001 is already taken" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_plugin_names_the_plugin(
    tmp_path: Path, install: Callable[..., dict[str, str]]
) -> None:
    source = "RULE = 42\n"
    env = install(
        build_wheel(tmp_path, "convlint_bad", "convlint_bad", source, "convlint_bad:RULE")
    )
    result = convlint(env, "rules")
    assert result.returncode == 2
    assert "plugin 'convlint_bad'" in result.stderr and "expected a convlint Rule" in result.stderr


BROKEN_SOURCE = """
from convlint.findings import Severity
from convlint.registry import Rule


def check(ctx):
    for node in ctx.graph:
        if node.op_type == "Conv":
            yield ctx.finding(node, "seen before the rule breaks")
    raise KeyError("weights")


RULE = Rule(
    code="XB1",
    name="breaks-on-every-model",
    severity=Severity.WARNING,
    fix="never",
    summary="a plugin rule that raises",
    check=check,
)
"""


def test_a_broken_plugin_rule_is_that_models_error_and_the_others_still_report(
    tmp_path: Path, install: Callable[..., dict[str, str]], model_file: Callable[..., Path]
) -> None:
    """Issue 17, part 4: the built-in rules' findings are reported, the model's error names
    the plugin rule and its exception, exit 2."""
    env = install(
        build_wheel(tmp_path, "convlint_xb", "convlint_xb", BROKEN_SOURCE, "convlint_xb:RULE")
    )
    model = model_file("conv3x3")
    result = convlint(env, "check", str(model))
    assert result.returncode == 2
    assert result.stderr == (
        f"convlint: error: {model}: rule XB1 (plugin 'convlint_xb' (convlint_xb:RULE)) failed: KeyError: 'weights'\n"
    )
    assert ": CL001 " in result.stdout and "XB1" not in result.stdout
    assert result.stdout.rstrip().endswith("; a rule failed on 1 model.")


def readme_plugin() -> str:
    """The plugin the README's Plugins section shows, as its source."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Plugins") : readme.index("## The cost model")]
    [source] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return source


def test_a_plugin_rule_ships_its_rewrite_and_fix_applies_it(
    tmp_path: Path, install: Callable[..., dict[str, str]]
) -> None:
    """Issue 17, part 1: a plugin rule declares a rewrite (a planner returning a `Target` of the
    public protocol) and `convlint fix` plans it from the finding's binding, verifies and writes
    it, as it does the built-in rules' rewrites. The plugin is the README's example."""
    source = readme_plugin()
    env = install(build_wheel(tmp_path, "convlint_xr", "convlint_xr", source, "convlint_xr:RULE"))
    g = fixtures.GraphBuilder(seed=5)
    x = g.input("input", (1, 8, 10, 10))
    y = g.conv(x, 8, 3, name="conv")
    y = g.node("Identity", [y], g.shape(y), name="copy")
    y = g.node("Dropout", [y], g.shape(y), name="dropout")
    y = g.relu(y, name="relu")
    g.conv(y, 4, 1, name="head")
    model = g.build("copied")
    path = fixtures.save(model, tmp_path / "copied.onnx")
    checked = convlint(env, "check", str(path), "--select", "XR1", "--format", "json")
    assert checked.returncode == 0, checked.stderr  # info, below --fail-on warning
    (finding,) = json.loads(checked.stdout)["models"][0]["findings"]
    assert (finding["code"], finding["node"], finding["fix"]["applicability"]) == (
        "XR1",
        "copy",
        "safe",
    )
    assert finding["message"] == "'conv' reaches 'relu' through 2 copies"
    listed = convlint(env, "rules").stdout.splitlines()
    assert any(line.startswith("XR1") and "always (safe)" in line for line in listed), listed

    out = tmp_path / "out.onnx"
    argv = ["fix", str(path), "-o", str(out), "--select", "XR1", "--no-latency", "--format", "json"]
    fixed = convlint(env, *argv)
    assert fixed.returncode == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    (rewrite,) = report["rewrites"]
    assert (rewrite["code"], rewrite["node"], rewrite["kind"]) == ("XR1", "copy", "drop-copies")
    assert report["skipped"] == [] and report["verification"]["ok"] is True
    rewritten = onnx.load(out)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Identity", "Dropout", "Relu", "Conv"]
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "Conv"]
    assert max_abs_diff(path, out, random_inputs(model, samples=3, seed=9)) < 1e-5
    again = convlint(env, "check", str(out), "--select", "XR1", "--format", "json")
    assert json.loads(again.stdout)["models"][0]["findings"] == []
