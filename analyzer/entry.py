"""The `convlint` process itself, around every stage: start-up and exit around ``cli.main``.

A run of ``convlint check`` on one large model is mostly start-up, one pass of analysis and
exit, so the process pays for neither of two things Python does by default:

- cyclic garbage collection while modules are imported (onnx, numpy and protobuf allocate
  hundreds of thousands of objects, none of them garbage): collection is off until the imports
  are done, and what they made is then frozen out of every later collection;
- tearing the interpreter down at exit (freeing every object of every module one by one): once
  ``main`` has returned and the output is flushed, the process ends with ``os._exit``. Every
  command has closed its files and pools and removed its temporary files by then (they are all
  in ``with`` blocks and ``finally`` clauses), so nothing is left for exit handlers to do.

Ctrl-C at any moment after this module is imported (while the imports run, before ``main``
handles it itself) is one line, ``convlint: interrupted``, and exit 130.

``convlint.cli.main`` stays the function to call from Python and tests.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys


def run() -> None:
    try:
        gc.disable()
        from convlint.cli import main

        gc.freeze()
        gc.enable()
        code = main(ends_process=True)
        _flush()
    except KeyboardInterrupt:
        # Ctrl-C outside main's own handling: while importing (the first half-second), or
        # while the last output is flushed. One line and 130, as main gives.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            print("convlint: interrupted", file=sys.stderr)
        _flush()
        code = 130
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        # A reader that left (BrokenPipeError); a stream already closed (ValueError).
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
