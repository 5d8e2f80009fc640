"""The configuration of a repository of models, as the command line and the API use it."""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

import convlint
from convlint import fixtures


def codes(out: str) -> set[tuple[str, str]]:
    return set(re.findall(r"/([\w.]+\.onnx):\S+: (?:\w+: )?(CL\d+)", out))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository: a classification folder, a legacy folder and a vendored folder."""
    naive = fixtures.inception_3a_naive()
    for folder in ("classify", "legacy", "third_party"):
        (tmp_path / folder).mkdir()
        fixtures.save(naive, tmp_path / folder / "naive.onnx")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.convlint]\n"
        'select = ["CL001"]\n'
        'extend-select = ["CL002"]\n'
        'extend-exclude = ["third_party/*"]\n'
        '[tool.convlint.per-file-ignores]\n"legacy/*.onnx" = ["CL001"]\n'
        '[tool.convlint.input-shapes]\n"classify/*" = {input = "1x192x28x28", mask = "1x1"}\n',
        encoding="utf-8",
    )
    return tmp_path


def test_per_file_ignores_exclude_and_extend_select(
    repo: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, _ = cli("check", str(repo))
    assert code == 1
    found = set(
        re.findall(r"/(classify|legacy|third_party)/naive\.onnx:\S+: (?:\w+: )?(CL\d+)", out)
    )
    assert found == {("classify", "CL001"), ("classify", "CL002"), ("legacy", "CL002")}
    # A file named on the command line is checked even when excluded (as ruff).
    code, out, _ = cli("check", str(repo / "third_party" / "naive.onnx"))
    assert codes(out) == {("naive.onnx", "CL001"), ("naive.onnx", "CL002")}


def test_configured_input_shape_for_a_missing_input_is_a_note(
    repo: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = cli("check", str(repo / "classify"), "--verbose")
    assert code == 1, err
    assert (
        f"note: {repo / 'pyproject.toml'}: input-shapes: no input 'mask' in this model "
        "(inputs: input); skipped"
    ) in out
    assert "note: bound input to 1x192x28x28" in out
    # On the command line an unknown input stays an error.
    code, _, err = cli("check", str(repo / "classify"), "--input-shape", "mask=1x1")
    assert code == 2
    assert "--input-shape names unknown input 'mask' (inputs: input)" in err


def test_configured_input_shape_errors_name_the_file_and_key(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    fixtures.save(fixtures.inception_3a_naive(), tmp_path / "naive.onnx")
    (tmp_path / "convlint.toml").write_text('[input-shapes]\n"*.onnx" = {input = "1x3x8x8"}\n')
    code, _, err = cli("check", str(tmp_path / "naive.onnx"))
    assert code == 2
    assert f"{tmp_path / 'convlint.toml'}: input-shapes input: dim 192 is fixed, 3 given" in err


def test_show_settings_prints_the_resolved_settings_and_their_file(
    repo: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    model = repo / "legacy" / "naive.onnx"
    code, out, _ = cli("check", "--show-settings", str(model), "--ignore", "CL005")
    assert code == 0
    assert out.splitlines()[:6] == [
        f"Settings for {model}",
        f"  configuration: {repo / 'pyproject.toml'}",
        "  select: CL001, CL002",
        "  ignore: CL001, CL005",
        "  rules run: CL002",
        "  fail-on: warning",
    ]
    assert (
        "  CL002: severity = warning, projection-ratio = 6, projection-channels = 0, min-share = 0.25"
        in out
    )


def test_api_check_fix_and_stats(repo: Path, tmp_path: Path) -> None:
    report = convlint.check(str(repo / "legacy" / "naive.onnx"))
    assert [(f.code, f.node) for f in report.findings] == [("CL002", "inception_3a/pool")]
    assert report.as_dict()["cost"]["params"] == 387_072
    # A ModelProto, keyword arguments over the defaults (no configuration applies to it).
    proto = fixtures.conv3x3()
    report = convlint.check(proto, select=["CL001"])
    assert report.path == "<ModelProto conv3x3>"
    assert [(f.code, f.node) for f in report.findings] == [("CL001", "conv")]
    table = convlint.stats(proto)
    assert table["total"] == {
        "params": 589_824,
        "macs": 589_824 * 14 * 14,
        "macs_per_input_pixel": None,  # spatial dims are static: the total is exact
        "memory": 256 * 14 * 14 * 4,
        "peak_memory": 2 * 256 * 14 * 14 * 4,
    }
    assert table["inputs"] == [{"name": "input", "shape": [1, 256, 14, 14]}]
    result = convlint.fix(
        fixtures.linear_conv_chain_bad(), str(tmp_path / "folded.onnx"), samples=2
    )
    assert result.written and [r.kind for r in result.rewrites] == ["fold"]
    assert onnx.load(str(tmp_path / "folded.onnx")).graph.node[0].op_type == "Conv"
    with pytest.raises(TypeError, match="needs an output path"):
        convlint.fix(proto)


def test_api_names_stay_functions_after_every_module_is_imported() -> None:
    """Importing a submodule binds its name on the package: no module may be called `check`,
    `fix` or `stats` (the fix pipeline is convlint.rewrite, the stats command convlint.nodestats),
    or importing it would replace the API function of that name."""
    modules = [
        info.name
        for info in pkgutil.walk_packages(convlint.__path__, "convlint.")
        if info.name != "convlint.__main__"  # runs the command line
    ]
    assert {"convlint.rewrite.pipeline", "convlint.nodestats"} <= set(modules)
    for name in modules:
        importlib.import_module(name)
    for name in ("check", "fix", "stats"):
        function = getattr(convlint, name)
        assert isinstance(function, types.FunctionType), name
        # convlint.api's own function: its real signature and docstring (issue 18)
        assert function is getattr(convlint.api, name) and function.__module__ == "convlint.api"
        assert function.__doc__ and len(function.__doc__) > 200
