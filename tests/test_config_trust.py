"""Configuration discovery trusts only the user's own files, as git's ``safe.directory``
(issue 20, item 5): a configuration file owned by another user (not root), or a symbolic link
to a file outside the folder that holds it, is ignored with one note on stderr; a file's values
are quoted in messages at most 40 characters long; the Python API given a ModelProto finds the
configuration from the working directory, never from the temporary folder it saves it in."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

import convlint
from convlint import config, fixtures
from convlint.errors import SHOWN_CHARACTERS, shown
from convlint.registry import load_registry

SILENCING = 'ignore = ["CL004"]\n'  # dense_head_bad's only finding


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return fixtures.save(fixtures.BUILDERS["dense_head_bad"](), folder / "head.onnx")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _give_away(path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Make ``path`` another user's as far as convlint can tell; returns that user's uid.
    Root gives the file away; anyone else is told by ``current_uid`` to be someone else."""
    if os.geteuid() == 0:
        os.chown(path, 4242, -1, follow_symlinks=False)
        return 4242
    owner = path.lstat().st_uid
    monkeypatch.setattr(config, "current_uid", lambda: owner + 1)
    return owner


def test_the_user_and_root_are_trusted() -> None:
    assert config.current_uid() == os.geteuid()
    assert config.distrust(Path(__file__)) is None  # the checkout is the user's (or root's)


@pytest.mark.parametrize("name", ["convlint.toml", ".convlint.toml", "pyproject.toml"])
def test_a_configuration_another_user_owns_is_ignored_with_one_note(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    text = f"[tool.convlint]\n{SILENCING}" if name == "pyproject.toml" else SILENCING
    shared = _write(tmp_path / "shared" / name, text)
    first, second = _model(tmp_path / "shared" / "a"), _model(tmp_path / "shared" / "b")
    assert cli("check", str(first), str(second))[0] == 0  # the user's own file: read
    owner = _give_away(shared, monkeypatch)
    code, out, err = cli("check", str(first), str(second))
    assert code == 1 and out.count("CL004") == 2  # both models linted with the defaults
    you = config.current_uid()
    assert err == (  # one note, though both models' folders found the file
        f"convlint: warning: ignoring {shared}: owned by another user (uid {owner}), "
        f"not by you (uid {you}) or root\n"
    )
    finder = config.ConfigFinder(load_registry(), note=lambda text: None)
    assert finder.for_model(first).path is None


def test_the_search_goes_on_above_an_ignored_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = _write(tmp_path / "convlint.toml", 'select = ["CL005"]\n')
    foreign = _write(tmp_path / "shared" / "convlint.toml", SILENCING)
    if os.geteuid() != 0:
        pytest.skip("telling two files' owners apart needs a file given away (root)")
    _give_away(foreign, monkeypatch)
    notes: list[str] = []
    finder = config.ConfigFinder(load_registry(), note=notes.append)
    found = finder.for_model(tmp_path / "shared" / "m.onnx")
    assert found.path == own and found.table["select"] == ["CL005"]
    assert notes == [
        f"ignoring {foreign}: owned by another user (uid 4242), not by you (uid 0) or root"
    ]


def test_a_symlinked_configuration_is_read_only_from_inside_its_folder(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    outside = _write(tmp_path / "elsewhere" / "convlint.toml", SILENCING)
    repo = tmp_path / "repo"
    model = _model(repo / "models")
    link = repo / "convlint.toml"
    link.symlink_to(Path("..") / "elsewhere" / "convlint.toml")
    code, out, err = cli("check", str(model))
    assert code == 1 and "CL004" in out
    assert err == (
        f"convlint: warning: ignoring {link}: a symbolic link to {outside.resolve()}, "
        f"outside {repo.resolve()}\n"
    )
    link.unlink()  # a link to a file inside the folder's tree is the user's own layout
    inside = _write(repo / "configs" / "lint.toml", SILENCING)
    link.symlink_to(Path("configs") / inside.name)
    assert cli("check", str(model)) == (0, "All checks passed! (1 model)\n", "")


LONG = "x" * 300


@pytest.mark.parametrize(
    "text",
    [
        f'fail-on = "{LONG}"\n',
        f'select = ["{LONG}"]\n',
        f"{LONG} = 1\n",
        f'extend = "{LONG}"\n',
        f'[rules.CL001]\nmin-channels = "{LONG}"\n',
        f"[rules.CL001]\n{LONG} = 1\n",
        f'[rules.{LONG}]\nseverity = "info"\n',
        f'[per-file-ignores]\n"{LONG}" = ["ZZ9"]\n',
        f'[input-shapes]\n"{LONG}" = {{x = "1x{LONG}"}}\n',
        f'[input-shape]\n{LONG} = "1x3x{LONG}"\n',
    ],
)
def test_a_configuration_value_is_quoted_at_most_40_characters_long(
    text: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    _write(tmp_path / "convlint.toml", text)
    code, out, err = cli("check", str(_model(tmp_path)))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"convlint: error: {tmp_path / 'convlint.toml'}: ")
    shown_text = err.lower()  # codes are upper-cased before they are checked
    assert "x" * (SHOWN_CHARACTERS - 4) in shown_text and "x" * SHOWN_CHARACTERS not in shown_text
    assert "..." in err


def test_shown_cuts_with_an_ellipsis() -> None:
    assert shown("CL001") == "'CL001'" and shown("a/*.onnx", quote=False) == "a/*.onnx"
    long = shown("y" * 100)
    assert len(long) == SHOWN_CHARACTERS and long == "'" + "y" * 36 + "..."
    assert shown(["z" * 50]) == "['" + "z" * 35 + "..."


def test_a_model_proto_is_not_configured_from_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = tmp_path / "tmp"
    _write(hostile / "convlint.toml", SILENCING)  # the user's own file, even: not for a proto
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(hostile))
    monkeypatch.setattr(tempfile, "tempdir", str(hostile))
    monkeypatch.chdir(work)
    model = fixtures.BUILDERS["dense_head_bad"]()
    assert isinstance(model, onnx.ModelProto)
    report = convlint.check(model)
    assert [f.code for f in report.findings] == ["CL004"]
    assert convlint.stats(model).total["params"] == convlint.stats(_model(work)).total["params"]
    # The working directory's configuration is the one a ModelProto gets (as check - does).
    _write(work / "convlint.toml", SILENCING)
    assert convlint.check(model).findings == []
    _write(work / "convlint.toml", '[per-file-ignores]\n"dense_head_bad.onnx" = ["CL004"]\n')
    assert convlint.check(model).findings == []  # globs match <graph name>.onnx there


@pytest.mark.parametrize(
    ("digits", "problem"),
    [
        (5_000, "invalid TOML: an integer too long to read"),  # past Python's int() limit
        (300, "[tool.convlint.rules.CL001] min-channels: must be at most 9223372036854775807"),
    ],
)
def test_a_huge_integer_in_a_configuration_is_named(
    digits: int, problem: str, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    config_file = _write(
        tmp_path / "convlint.toml", f"[rules.CL001]\nmin-channels = 1{'0' * digits}\n"
    )
    code, out, err = cli("check", str(_model(tmp_path)))
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith(f"convlint: error: {config_file}: {problem}")
    assert "0" * SHOWN_CHARACTERS not in err
    code, _, err = cli("check", str(_model(tmp_path)), "--config", f"fail-on=1{'0' * digits}")
    assert code == 2 and len(err) < 300


def test_another_users_pyproject_without_convlint_is_passed_over_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., tuple[int, str, str]]
) -> None:
    other = _write(tmp_path / "pyproject.toml", "[tool.black]\nline-length = 100\n")
    _give_away(other, monkeypatch)
    code, out, err = cli("check", str(_model(tmp_path / "models")))
    assert (code, err) == (1, "") and "CL004" in out
