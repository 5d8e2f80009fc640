"""convlint: a static analyzer and linter for convolutions in ONNX model graphs.

The Python API is ``convlint.check``, ``convlint.fix`` and ``convlint.stats`` (see
``convlint.api``); it is imported on first call, so that ``import convlint`` stays cheap.
No module of the package is named ``check``, ``fix`` or ``stats`` (the fix pipeline is
``convlint.rewrite``, the stats command ``convlint.nodestats``): importing a submodule binds
its name on the package, and must never replace these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "check", "fix", "stats"]

if TYPE_CHECKING:
    from convlint.api import check, fix, stats
else:

    def check(*args: Any, **kwargs: Any) -> Any:
        from convlint import api

        return api.check(*args, **kwargs)

    def fix(*args: Any, **kwargs: Any) -> Any:
        from convlint import api

        return api.fix(*args, **kwargs)

    def stats(*args: Any, **kwargs: Any) -> Any:
        from convlint import api

        return api.stats(*args, **kwargs)

    check.__doc__, fix.__doc__, stats.__doc__ = (
        "convlint.api.check: lint one model (a path or an onnx.ModelProto).",
        "convlint.api.fix: rewrite, verify and write a model.",
        "convlint.api.stats: per-node params, MACs and output shapes.",
    )
