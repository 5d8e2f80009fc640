"""Output safety, beneath the commands: reports written to stdout or atomically to a file, and
no output that lands on one of the run's inputs.

``check``, ``stats`` and ``fix`` write through ``emit``; the runner streams through
``write_stream``. A reader that leaves (``convlint check ... | head``) is not an error: the
stream writes to the null device from then on. ``refuse_overwriting_inputs`` refuses a report
(``--output``, ``--write-baseline``) that names a MODEL, a model's external data, OUT, the
configuration or another output; special files (devices, FIFOs) are written through or refused
by ``convlint.atomic``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from convlint.errors import ConvlintError, UsageError
from convlint.paths import same_file as same_file  # `fix` shares it (it sits below output)


def emit(text: str, output: str | None) -> None:
    """The report to ``output`` (written atomically), or to stdout when there is none."""
    if output:
        from convlint.atomic import write_atomic

        try:
            write_atomic(output, text)
        except OSError as exc:
            raise UsageError(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    else:
        write_stream(sys.stdout, text)


def write_stream(stream: TextIO, text: str) -> None:
    """Write and flush; a reader that went away (``| head``) gets nothing more (the stream
    writes to the null device from then on), and the run goes on so that its findings decide
    the exit code."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        silence(stream)


def silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at the null device (its reader left)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def _mentions(path: Path, name: str) -> bool:
    """Whether the file's bytes contain ``name``: every model that keeps weights in a file
    named so does (its location is stored verbatim), and few others."""
    # Read a block at a time, not memory-mapped: a mapped file that shrinks is SIGBUS.
    wanted = os.fsencode(name)
    try:
        with open(path, "rb") as handle:
            tail = b""
            while block := handle.read(1 << 20):
                if wanted in tail + block:
                    return True
                tail = (tail + block)[len(tail) + len(block) - len(wanted) + 1 :]
    except OSError:  # unreadable
        return False
    return False


def _data_file_owner(target: Path, models: Sequence[str | os.PathLike[str]]) -> str | None:
    """The model whose external data ``target`` is, if any."""
    if not target.is_file():
        return None  # nothing there to lose
    resolved = target.resolve()
    for model in models:
        path = Path(model)
        if not path.is_file() or not resolved.is_relative_to(path.resolve().parent):
            continue
        if not _mentions(path, resolved.name):
            continue
        from convlint.loader import read_model
        from convlint.paths import external_data_files

        try:
            files = external_data_files(read_model(path), path)
        except ConvlintError:  # the run itself reports the unreadable model
            continue
        if any(same_file(data, resolved) for data in files):
            return str(model)
    return None


def refuse_overwriting_inputs(
    outputs: Sequence[tuple[str, str | None]],
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]],
    models: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Refuse an output file (``--output``, ``--write-baseline``) that names an input of the
    run (a MODEL, a model's external data, OUT, the configuration) or another output: the
    report would replace it."""
    from convlint.atomic import write_target

    given = [(flag, path) for flag, path in outputs if path]
    for index, (flag, path) in enumerate(given):
        for other, other_path in given[index + 1 :]:
            if same_file(path, other_path):
                raise UsageError(f"{flag} {path} and {other} {other_path} name the same file")
        for what, taken in inputs:
            if taken is not None and same_file(path, taken):
                raise UsageError(f"{flag} {path} is {what}; refusing to overwrite it")
        owner = _data_file_owner(write_target(path), models)
        if owner is not None:
            raise UsageError(
                f"{flag} {path} is the external data of {owner}; refusing to overwrite it"
            )
