"""Third-party rules through the `convlint.rules` entry-point group, installed for real."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

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
