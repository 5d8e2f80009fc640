"""Model paths as CI tools and baselines want them: relative, with forward slashes; the files
a model keeps its weights in; whether two paths name one file (for `check`'s output safety
and `fix`'s alike)."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # the reporters read paths without importing onnx
    import onnx


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (through symlinks and hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def relative_posix(
    path: str | os.PathLike[str], base: str | os.PathLike[str], outside: bool = False
) -> str | None:
    """``path`` relative to the folder ``base`` (lexically, symlinks not resolved), or None
    when it lies outside ``base`` (unless ``outside``: then with ``..`` steps)."""
    target = os.path.abspath(path)
    folder = os.path.abspath(base)
    try:
        relative = os.path.relpath(target, folder)
    except ValueError:  # another drive on Windows
        return None
    if not outside and (relative == os.pardir or relative.startswith(os.pardir + os.sep)):
        return None
    return PurePath(relative).as_posix()


def display_path(path: str | os.PathLike[str]) -> str:
    """Relative to the working directory where possible, else absolute; forward slashes."""
    relative = relative_posix(path, os.getcwd())
    return relative if relative is not None else PurePath(os.path.abspath(path)).as_posix()


def artifact_uri(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """A SARIF artifact URI and its uriBaseId: relative to %SRCROOT% (the working directory)
    where possible, else an absolute file URI."""
    relative = relative_posix(path, os.getcwd())
    if relative is not None:
        return quote(relative), "%SRCROOT%"
    return Path(os.path.abspath(path)).as_uri(), None


def external_data_files(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Path]:
    """The files ``model``, read from ``path``, keeps its weights in (beside ``path``'s
    target); a tensor without a location names none."""
    from onnx import external_data_helper

    folder = Path(path).resolve().parent
    files = set()
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                files.add(folder / location)
    return sorted(files)
