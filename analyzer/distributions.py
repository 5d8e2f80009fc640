"""What is installed beside convlint, read from the ``*.dist-info`` and ``*.egg-info`` folders on
``sys.path`` as ``importlib.metadata`` finds them, without importing it (it imports the email
package: tens of milliseconds that `--version`, `--help`, `rules` and `rule` do without).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

_INFO = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py[^-]*)?\.(?:dist|egg)-info$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _info_folders() -> Iterator[tuple[str, str, str]]:
    """(normalized name, version, folder) of every installed distribution on sys.path."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            match = _INFO.match(name)
            if match:
                folder = os.path.join(entry or ".", name)
                yield _normalize(match["name"]), match["version"], folder


def version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (the first found on sys.path), or None."""
    wanted = _normalize(distribution)
    return next((found for name, found, _ in _info_folders() if name == wanted), None)


def declares_entry_points(group: str) -> bool:
    """Whether any installed distribution declares an entry point in ``group``."""
    header = f"[{group}]"
    for _, _, folder in _info_folders():
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as handle:
                if any(line.strip() == header for line in handle):
                    return True
        except OSError:
            continue
    return False
