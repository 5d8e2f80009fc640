"""convlint: a static analyzer and linter for convolutions in ONNX model graphs.

The Python API is ``convlint.check``, ``convlint.fix`` and ``convlint.stats`` (see
``convlint.api``); it is imported on first call, so that ``import convlint`` stays cheap.
"""

from __future__ import annotations

import sys
import types
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


class _Package(types.ModuleType):
    """The package keeps ``fix`` and ``stats`` as the API's functions: importing the stage
    modules of the same names (``convlint.fix``, ``convlint.stats``, reachable as ever through
    ``from convlint.fix import ...`` and ``sys.modules``) would otherwise rebind them."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
