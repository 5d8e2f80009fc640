"""convlint: a static analyzer and linter for convolutions in ONNX model graphs.

The Python API is ``convlint.check``, ``convlint.fix`` and ``convlint.stats``: the functions of
``convlint.api`` themselves (their signatures and docstrings, for ``help()``, IDEs and
``inspect.signature``), looked up on first use so that ``import convlint`` stays cheap (the
API imports onnx). No module of the package is named ``check``, ``fix`` or ``stats`` (the fix
pipeline is ``convlint.rewrite``, the stats command ``convlint.nodestats``): importing a
submodule binds its name on the package, and must never shadow these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convlint.version import __version__

__all__ = ["__version__", "check", "fix", "stats"]

if TYPE_CHECKING:
    from convlint.api import check, fix, stats


def __getattr__(name: str) -> Any:
    """``convlint.check``/``fix``/``stats``: ``convlint.api``'s, imported on first use."""
    if name in ("check", "fix", "stats"):
        from convlint import api

        function = getattr(api, name)
        globals()[name] = function  # later lookups find it directly
        return function
    raise AttributeError(f"module 'convlint' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "check", "fix", "stats"])
