"""Configuration: [tool.convlint] in pyproject.toml or convlint.toml, validated strictly."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def naive(model_file: Callable[..., Path]) -> Path:
    return model_file("inception_3a_naive")


def codes(out: str) -> set[str]:
    return set(re.findall(r": (?:\w+: )?(CL\d+)", out))


def test_pyproject_is_found_from_the_models_folder_not_the_working_directory(
    naive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.convlint]\nselect = ["CL002"]\n\n[tool.convlint.rules.CL002]\nprojection-channels = 32\n'
    )
    model = project / "sub" / "naive.onnx"
    model.write_bytes(naive.read_bytes())
    monkeypatch.chdir(tmp_path)  # no configuration here: the model's own folder decides
    code, out, _ = cli("check", str(model))
    assert code == 1
    assert codes(out) == {"CL002"}
    assert "concat channels 416 -> 256" in out
    # The same model outside the project gets the defaults, whatever the working directory.
    monkeypatch.chdir(project / "sub")
    code, out, _ = cli("check", str(naive))
    assert codes(out) == {"CL001", "CL002"}


def test_convlint_toml_and_explicit_config(
    naive: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    config = tmp_path / "convlint.toml"
    config.write_text(
        'ignore = ["CL002"]\nfail-on = "error"\n\n'
        '[per-node-ignores]\n"inception_3a/5x5" = ["CL001"]\n\n'
        '[rules.CL001]\nseverity = "error"\n'
    )
    code, out, _ = cli("check", str(naive), "--config", str(config))
    assert code == 1  # CL001 raised to error, fail-on error
    assert codes(out) == {"CL001"}
    assert "inception_3a/5x5" not in out
    code, out, _ = cli("check", str(naive), "--config", str(config), "--select", "CL002")
    assert code == 0  # CL002 is a warning, below fail-on=error
    assert codes(out) == {"CL002"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tool.convlint]\nselct = []\n",
            "unknown key 'selct' in [tool.convlint] (did you mean 'select'?) (valid: extend, select",
        ),
        ('[tool.convlint]\nfail-on = "sometimes"\n', "is not one of error, warning, info, never"),
        ("[tool.convlint.rules.CL009]\nx = 1\n", "unknown rule 'CL009'"),
        (
            "[tool.convlint.rules.CL001]\nmin-chanels = 3\n",
            "unknown option 'min-chanels' for CL001 (did you mean 'min-channels'?) (valid: severity, min-channels, reduction-ratio, min-1d-saving)",
        ),
        ('[tool.convlint.rules.CL001]\nmin-channels = "many"\n', "expected int, got 'many'"),
        ("[tool.convlint.rules.CL001]\nmin-channels = -4\n", "must be positive"),
        ('[tool.convlint]\nselect = ["XYZ"]\n', "'XYZ' matches no rule"),
        ("[tool.convlint\n", "invalid TOML"),
    ],
)
def test_bad_configuration_is_exit_2_with_what_is_valid(
    naive: Path,
    tmp_path: Path,
    cli: Callable[..., tuple[int, str, str]],
    text: str,
    message: str,
) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text(text)
    code, _, err = cli("check", str(naive), "--config", str(config))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_select_on_the_command_line(
    naive: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = cli("check", str(naive), "--select", "CL9")
    assert code == 2 and "'CL9' matches no rule" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[tool.convlint.per-node-ignores]\n"*" = ["ZZ999"]\n',
            "per-node-ignores.*: 'ZZ999' matches no rule",
        ),
        ('[tool.convlint]\nignore = ["ZZ"]\n', "[tool.convlint] ignore: 'ZZ' matches no rule"),
    ],
)
def test_unknown_codes_in_configuration_name_the_file(
    naive: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]], text: str, message: str
) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text(text)
    code, _, err = cli("check", str(naive), "--config", str(config))
    assert code == 2
    assert str(config) in err and message in err
