"""Commands layer, at the top: the `convlint` command line (``main(argv) -> int``): parse,
run the command (``convlint.commands``), turn errors and signals into exit codes."""

from __future__ import annotations

import codecs
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from types import FrameType
from typing import TYPE_CHECKING

from convlint.commands import COMMANDS
from convlint.commands.parser import build_parser
from convlint.errors import ConvlintError, printable
from convlint.output import silence

if TYPE_CHECKING:
    import argparse

    from convlint.registry import Registry


Command = Callable[["argparse.Namespace", "Registry"], int]


def _registry(args: argparse.Namespace) -> Registry:
    """The rules: from the catalog where only their documentation is needed (no onnx)."""
    from convlint.registry import load_catalog, load_registry

    return load_catalog() if args.command in ("rules", "rule", "schema") else load_registry()


def _run(args: argparse.Namespace, registry: Registry) -> int:
    module, function = COMMANDS[args.command]
    command: Callable[[argparse.Namespace, Registry], int] = getattr(
        import_module(module), function
    )
    return command(args, registry)


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that cleanup (``finally``) runs as on Ctrl-C."""


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into exceptions for the commands that leave staging folders
    and temporary copies of weights to remove; a second signal is ignored so that it cannot
    cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def interrupt(number: int, frame: FrameType | None) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(number)

    for number in signals:
        signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


CLEANS_UP = ("fix", "demo")  # commands that write staging folders and runtime temporaries


# What reports print beyond ASCII, and how a terminal that cannot show it reads it.
ASCII_FALLBACK = {
    "×": "x",
    "→": "->",
    "≥": ">=",
    "≤": "<=",
    "·": "*",
    "²": "^2",
    "—": "-",
    "§": "s.",
}


def _ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(ASCII_FALLBACK.get(char, "?") for char in text), error.end


codecs.register_error("convlint-ascii", _ascii_fallback)


def _fit_streams_to_their_encoding() -> None:
    """A stdout that cannot encode ``×`` or ``→`` (LANG=C, a Windows code page) gets their
    ASCII spelling instead of an encoding error."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "×→≥".encode(encoding)
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="convlint-ascii")


def main(argv: Sequence[str] | None = None, *, ends_process: bool = False) -> int:
    """Run one command; ``ends_process``: the caller ends the process with ``os._exit`` as
    soon as this returns (``convlint.entry``), so nothing the command made need ever be
    collected (``check`` leaves its last model out of garbage collection)."""
    _fit_streams_to_their_encoding()
    given = list(sys.argv[1:] if argv is None else argv)
    # fix's options (their module imports onnx) only when the command is fix
    parser = build_parser(next((word for word in given if not word.startswith("-")), ""))
    parser.set_defaults(ends_process=ends_process)
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        registry = _registry(args)
        if args.command in CLEANS_UP:
            with cleanup_on_signals():
                return _run(args, registry)
        return _run(args, registry)
    except ConvlintError as exc:
        print(printable(f"convlint: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlint: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # `convlint demo | head`: the reader left, which is not an error
        silence(sys.stdout)
        return 0
    except Exception as exc:  # an internal failure is still one line and exit 2
        print(f"convlint: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    raise SystemExit(main())
