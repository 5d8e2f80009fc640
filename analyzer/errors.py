"""Errors a user can cause. Each one becomes one line on stderr and exit code 2."""

from __future__ import annotations

import re
from collections.abc import Iterable
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


SHOWN_CHARACTERS = 40  # of a value from a configuration (or the command line) in a message


def shown(value: object, quote: bool = True) -> str:
    """``value`` as a message names it (its ``repr``, or a string as it is without ``quote``),
    cut to :data:`SHOWN_CHARACTERS` with an ellipsis: a configuration file's values are named,
    never echoed at length (a file that is not the user's must not be able to fill their
    terminal through convlint)."""
    text = repr(value) if quote or not isinstance(value, str) else value
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return text[: SHOWN_CHARACTERS - 3] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the choice closest to a mistyped ``word``, else ``""``."""
    import difflib  # only a mistake pays for it

    options = list(choices)
    folded = {choice.lower(): choice for choice in options}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    if not close:  # a name cut short: the one choice it begins
        close = [c for c in folded if word and c.startswith(word.lower())][:2]
        close = close if len(close) == 1 else []
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


# Characters a terminal or a Markdown block acts on: C0/C1 controls (newlines, escape codes),
# DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters escaped as Python writes them (``\\n``, ``\\x1b``): a
    model's names cannot start a line of their own or recolour a terminal, so no model can
    print a fake "All checks passed!"."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
