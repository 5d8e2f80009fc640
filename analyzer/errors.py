"""Errors a user can cause. Each one becomes one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path


class ConvlintError(Exception):
    """A problem with the user's input or options, reported without a traceback."""


class ModelError(ConvlintError):
    """A model file that cannot be read, or is not a valid ONNX model."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UsageError(ConvlintError):
    """Bad command-line options or configuration."""


class GraphError(ConvlintError):
    """An invalid model found while reading its graph, before the file is known to the code
    that finds it; the engine reports it as a ModelError of that file."""
