"""Known findings: ``--write-baseline FILE`` records them, ``--baseline FILE`` lets them pass.

A baseline is a JSON list of ``{"path", "code", "node"}`` objects, sorted, written atomically.
Paths are relative to the baseline file's folder (``..`` steps included), with forward
slashes, so the file moves with the repository and works from any working directory (only a
model on another Windows drive is stored by its absolute path). A finding is known when its
model path, code and node name are in the baseline: reordering nodes or models, or retraining
the weights, keeps it known; renaming the node, moving the model or a second rule firing on
the node makes a new finding. Extra keys in an entry are ignored.

Applied to reports, known findings move from ``ModelReport.findings`` to
``ModelReport.baselined``: the gate and the JSON report see only new findings (as with
mypy-baseline), the other formats show the known ones marked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from convlint.atomic import write_atomic
from convlint.errors import UsageError
from convlint.findings import ModelReport
from convlint.paths import relative_posix

FIELDS = ("path", "code", "node")
Entry = tuple[str, str, str]


def _folder(baseline: str | os.PathLike[str]) -> str:
    return os.path.dirname(os.path.abspath(baseline))


def model_key(model: str, folder: str) -> str:
    """How a model's path is stored: relative to the baseline's folder where possible."""
    relative = relative_posix(model, folder, outside=True)
    return relative if relative is not None else PurePath(os.path.abspath(model)).as_posix()


def entries(reports: Iterable[ModelReport], baseline: str | os.PathLike[str]) -> list[Entry]:
    folder = _folder(baseline)
    found = set()
    for report in reports:
        path = model_key(report.path, folder)
        for finding in [*report.findings, *(report.baselined or [])]:
            found.add((path, finding.code, finding.node))
    return sorted(found)


def write_baseline(path: str | os.PathLike[str], reports: Sequence[ModelReport]) -> int:
    """Record every finding of ``reports``; returns how many entries were written."""
    rows = [dict(zip(FIELDS, entry, strict=True)) for entry in entries(reports, path)]
    try:
        write_atomic(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UsageError(f"--write-baseline {path}: {exc.strerror or exc}") from None
    return len(rows)


@dataclass(frozen=True)
class Baseline:
    path: str
    known: frozenset[Entry]

    def apply(self, reports: Sequence[ModelReport]) -> int:
        """Move known findings to ``report.baselined``; returns how many were known."""
        folder = _folder(self.path)
        moved = 0
        for report in reports:
            key = model_key(report.path, folder)
            known = [f for f in report.findings if (key, f.code, f.node) in self.known]
            report.findings = [
                f for f in report.findings if (key, f.code, f.node) not in self.known
            ]
            report.baselined = known
            moved += len(known)
        return moved


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a baseline file; anything wrong with it is a one-line usage error."""
    where = f"--baseline {path}"
    if Path(path).exists() and not Path(path).is_file():
        # A FIFO or a device would block or never end: only a regular file is read.
        raise UsageError(f"{where}: not a regular file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file (create it with --write-baseline)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{where}: cannot read: {reason or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise UsageError(f"{where}: not a baseline (JSON nested too deeply)") from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        raise UsageError(f"{where}: not a baseline (a number of thousands of digits)") from None
    if not isinstance(data, list):
        raise UsageError(f"{where}: expected a JSON list of {{path, code, node}} objects")
    known = set()
    for index, row in enumerate(data):
        if (
            not isinstance(row, dict)
            or not set(FIELDS) <= set(row)
            or not all(isinstance(row[key], str) for key in FIELDS)
        ):
            raise UsageError(f"{where}: entry {index} is not an object of strings path, code, node")
        known.add((row["path"], row["code"], row["node"]))
    return Baseline(str(path), frozenset(known))
