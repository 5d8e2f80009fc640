"""The API explains itself (issue 18 point 3): real signatures and docstrings at the package
level, keyword-only typed options, a typed stats result, a string accepted as a list of codes,
and the README's example passing `mypy --strict`."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import convlint
from convlint import api, fixtures
from convlint.nodestats import StatsReport
from convlint.rewrite.options import FixOptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["check", "fix", "stats"])
def test_package_functions_have_their_real_signatures(name: str) -> None:
    function = getattr(convlint, name)
    signature = inspect.signature(function)
    assert signature == inspect.signature(getattr(api, name))
    assert "args" not in signature.parameters and "kwargs" not in signature.parameters
    options = [p for p in signature.parameters.values() if p.name not in ("model", "output")]
    assert options and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options)
    assert all(p.annotation is not inspect.Parameter.empty for p in options)
    assert function.__doc__ and name in ("check", "fix", "stats")
    assert "(*args" not in (inspect.getdoc(function) or "")


def test_fix_options_are_fix_options() -> None:
    """Every FixOptions field but output is a keyword of fix, with the same default."""
    parameters = inspect.signature(api.fix).parameters
    defaults = FixOptions(output=None)
    for name in FixOptions.__dataclass_fields__:
        if name == "output":
            continue
        assert name in parameters, name
        assert parameters[name].default == getattr(defaults, name), name
    with pytest.raises(TypeError, match="tolerence"):
        convlint.fix(fixtures.conv3x3(), "out.onnx", tolerence=0.1)  # type: ignore[call-arg]


def test_the_command_line_defaults_are_fix_options() -> None:
    """One definition of fix's defaults (issue 17, part 2): `convlint fix MODEL -o OUT` with no
    other option asks the pipeline for exactly ``FixOptions(OUT)``, which the pipeline and the
    API read from ``rewrite/options.py``."""
    from convlint.commands.fix import fix_options
    from convlint.commands.parser import build_parser
    from convlint.rewrite import options, pipeline

    args = build_parser().parse_args(["fix", "model.onnx", "-o", "out.onnx"])
    assert fix_options(args) == FixOptions(output=Path("out.onnx"))
    assert pipeline.FixOptions is options.FixOptions
    defaults = FixOptions(output=None)
    assert (defaults.method, defaults.timeout, defaults.provider) == (
        "auto",
        300.0,
        "CPUExecutionProvider",
    )
    assert options.output_bound(defaults) == 1e-3


def test_a_string_is_one_code() -> None:
    model = fixtures.inception_3a_naive()
    as_list = convlint.check(model, select=["CL002"])
    assert [f.code for f in convlint.check(model, select="CL002").findings] == ["CL002"]
    assert convlint.check(model, select="cl002").findings == as_list.findings
    both = convlint.check(model, select="CL001,CL002")
    assert sorted({f.code for f in both.findings}) == ["CL001", "CL002"]
    assert [f.code for f in convlint.check(model, ignore="CL001").findings] == ["CL002"]
    with pytest.raises(TypeError, match="select= takes rule codes"):
        convlint.check(model, select=1)  # type: ignore[arg-type]


def test_stats_is_typed() -> None:
    report = convlint.stats(fixtures.conv3x3())
    assert isinstance(report, StatsReport)
    assert report.total["params"] == 589_824 and report.nodes[0]["op_type"] == "Conv"
    assert report["total"] == report.total  # the dictionary access of 0.1
    assert report.as_dict()["op_types"] == report.op_types


def test_readme_api_example_passes_mypy_strict(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API") : readme.index("### Plugins")]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    source = tmp_path / "example.py"
    source.write_text(example, encoding="utf-8")
    # The package as `pip install .` lays it out (an editable install maps its folders with an
    # import hook, which mypy does not follow); its own modules are checked as an installed
    # package's are: followed for types, their errors silent (mypy's site-packages rule).
    package = tmp_path / "site" / "convlint"
    package.mkdir(parents=True)
    for entry in (ROOT / "analyzer").iterdir():
        (package / entry.name).symlink_to(entry)
    for folder in ("rules", "fixtures", "schemas"):
        (package / folder).symlink_to(ROOT / folder)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
        + [str(source)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(tmp_path / "site")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
