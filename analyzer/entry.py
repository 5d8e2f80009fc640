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

``convlint.cli.main`` stays the function to call from Python and tests.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys


def run() -> None:
    gc.disable()
    from convlint.cli import main

    gc.freeze()
    gc.enable()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # A reader that left (BrokenPipeError); a stream already closed (ValueError).
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)
