"""The `convlint` command line: check, fix, stats, rules, rule, demo."""

from __future__ import annotations

import argparse
import codecs
import mmap
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from convlint import __version__
from convlint.atomic import write_atomic, write_target
from convlint.baseline import load_baseline, write_baseline
from convlint.config import FAIL_ON, ConfigFinder
from convlint.engine import (
    ModelReport,
    Settings,
    enabled_rules,
    iter_model_paths,
    rule_options,
)
from convlint.errors import ConvlintError, UsageError
from convlint.findings import Severity
from convlint.loader import parse_input_shape, read_model
from convlint.paths import external_data_files
from convlint.registry import Registry, load_registry
from convlint.reporters import use_color
from convlint.reporters.common import printable
from convlint.runner import check_and_render

if TYPE_CHECKING:
    from convlint.api import Resolved

FORMATS = ("text", "json", "sarif", "junit", "markdown", "github")


def _codes_arg(text: str) -> list[str]:
    return [part.strip().upper() for part in text.split(",") if part.strip()]


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    try:
        return parse_input_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, as every other convlint error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"convlint: error: {self.prog}: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default in its help (unless it has none or says it), the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


EXIT_CODES = {
    "check": "0 no finding at or above --fail-on; 1 findings at or above it",
    "fix": "0 OUT written and verified; 1 verification failed (OUT not written)",
    "stats": "0 the table was written",
}


def _epilog(command: str | None = None) -> str:
    lines = ["exit codes:"]
    for name, meaning in EXIT_CODES.items():
        if command in (None, name):
            lines.append(f"  {name}: {meaning}" if command is None else f"  {meaning}")
    lines.append("  2 usage error, unreadable or invalid model, or an internal failure")
    if command in (None, "fix"):
        lines.append("  130, 143 interrupted (Ctrl-C, SIGTERM; fix and demo clean up first)")
    return "\n".join(lines)


def _common(
    parser: argparse.ArgumentParser, lint: bool = True, formats: Sequence[str] = FORMATS
) -> None:
    parser.add_argument("--format", choices=formats, default="text", help="report format")
    parser.add_argument(
        "--output", metavar="FILE", help="write the report to FILE (atomically; default: stdout)"
    )
    parser.add_argument("--config", metavar="FILE", help="configuration file to use")
    parser.add_argument(
        "--input-shape",
        metavar="NAME=1x3x224x224",
        action="append",
        type=_shape_arg,
        default=[],
        help="bind an input's symbolic dims (repeatable)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print findings only, no summary"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="notes and why rules passed over"
    )
    if lint:
        _selectors(parser, "run", "skip")
        parser.add_argument(
            "--fail-on",
            choices=FAIL_ON,
            help="lowest severity that fails (default: the configuration's fail-on, or warning)",
        )
        parser.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
        parser.add_argument("--baseline", metavar="FILE", help="known findings that do not fail")
        parser.add_argument("--write-baseline", metavar="FILE", help="record findings as known")
        parser.add_argument(
            "--jobs",
            type=int,
            metavar="N",
            help="parallel processes (default: the number of cores)",
        )
        parser.add_argument(
            "--show-settings",
            action="store_true",
            help="print each model's resolved settings and the file they came from, then exit",
        )


def _selectors(parser: argparse.ArgumentParser, verb: str, opposite: str) -> None:
    # Repeated flags accumulate, as ruff's do.
    for flag, what in (("--select", verb), ("--ignore", opposite), ("--extend-select", "add")):
        parser.add_argument(
            flag,
            type=_codes_arg,
            action="extend",
            metavar="CODES",
            help=f"comma-separated rule codes or prefixes to {what}",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="convlint",
        description="Lint the convolutions of ONNX models.",
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"convlint {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    check = commands.add_parser(
        "check",
        help="lint ONNX models and report findings",
        epilog=_epilog("check"),
        formatter_class=HelpFormatter,
    )
    check.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files or folders")
    _common(check)

    stats = commands.add_parser(
        "stats",
        help="per-node params, MACs and output shapes",
        epilog=_epilog("stats"),
        formatter_class=HelpFormatter,
    )
    stats.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files or folders")
    stats.add_argument(
        "--diff", action="store_true", help="compare two models, MODEL and OUT: what changed"
    )
    _common(stats, lint=False, formats=("text", "json"))

    fix = commands.add_parser(
        "fix",
        help="rewrite the findings, verify with onnxruntime, write OUT",
        allow_abbrev=False,
        epilog=_epilog("fix"),
        formatter_class=HelpFormatter,
    )
    fix.add_argument("model", metavar="MODEL")
    _common(fix, lint=False, formats=("text", "json"))
    _selectors(fix, "fix", "leave")
    from convlint.rewrite.report import add_fix_arguments

    add_fix_arguments(fix)

    commands.add_parser("rules", help="list every rule")
    rule = commands.add_parser("rule", help="show a rule's documentation")
    rule.add_argument("code", metavar="CODE")

    demo = commands.add_parser("demo", help="the whole pipeline on a built-in Inception 3a block")
    demo.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    return parser


def resolve_settings(
    args: argparse.Namespace, registry: Registry, model: str | None = None
) -> tuple[Settings, str]:
    """Command line over the model's configuration over defaults; returns settings and
    fail-on (through the API's resolution, so both resolve alike)."""
    from convlint.api import resolve

    finder = ConfigFinder(registry, Path(args.config) if args.config else None)
    resolved = resolve(Path(model or args.model), registry, finder, **_overrides(args))
    return resolved.settings, resolved.fail_on


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "select": getattr(args, "select", None),
        "ignore": getattr(args, "ignore", None),
        "extend_select": getattr(args, "extend_select", None),
        "fail_on": getattr(args, "fail_on", None),
        "input_shapes": dict(getattr(args, "input_shape", None) or []),
        "verbose": getattr(args, "verbose", False),
    }


def emit(text: str, output: str | None) -> None:
    if output:
        try:
            write_atomic(output, text)
        except OSError as exc:
            raise UsageError(f"--output {output}: cannot write: {exc.strerror or exc}") from None
    else:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `convlint check ... | head`: the reader left, not an error
            _silence_stdout()


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (through symlinks and hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _mentions(path: Path, name: str) -> bool:
    """Whether the file's bytes contain ``name``: every model that keeps weights in a file
    named so does (its location is stored verbatim), and few others."""
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        ):
            return mapped.find(os.fsencode(name)) >= 0
    except (OSError, ValueError):  # unreadable, or empty (nothing to map)
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


def model_paths(args: argparse.Namespace, finder: ConfigFinder) -> list[str]:
    """The models to check: files as given, and the ``*.onnx`` files of folders that their
    configuration's ``exclude``/``extend-exclude`` do not name (as ruff, a file named on the
    command line is checked even so)."""
    named = {str(Path(target)) for target in args.models if not Path(target).is_dir()}
    return [
        str(path)
        for path in iter_model_paths(args.models)
        if str(path) in named or not finder.for_model(path).excluded(path)
    ]


def show_settings(path: str, resolved: Resolved, registry: Registry) -> str:
    """``check --show-settings``: the resolved settings of one model and their source."""
    settings = resolved.settings
    source = str(resolved.config.path) if resolved.config.path else "none (defaults)"
    rules = [rule.code for rule in enabled_rules(registry, settings)]
    lines = [
        f"Settings for {path}",
        f"  configuration: {source}",
        f"  select: {', '.join(settings.select)}",
        f"  ignore: {', '.join(settings.ignore) or '(none)'}",
        f"  rules run: {', '.join(rules) or '(none)'}",
        f"  fail-on: {resolved.fail_on}",
    ]
    for pattern, codes in settings.per_node_ignores.items():
        lines.append(f"  per-node-ignores: {pattern} = {', '.join(codes)}")
    for rule in registry:
        options, severity = rule_options(rule, settings)
        shown = ", ".join(f"{key} = {value!r}" for key, value in options.items())
        lines.append(
            f"  {rule.code}: severity = {severity.value}" + (f", {shown}" if shown else "")
        )
    shapes = {**settings.configured_input_shapes, **settings.input_shapes}
    for name, shape in shapes.items():
        given = "--input-shape" if name in settings.input_shapes else settings.configured_source
        lines.append(f"  input shape: {name} = {'x'.join(map(str, shape))} ({given})")
    return "\n".join(lines) + "\n"


def failing(reports: Sequence[ModelReport], fail_on: str) -> int:
    if fail_on == "never":
        return 0
    threshold = Severity(fail_on).rank
    return sum(1 for r in reports for f in r.findings if f.severity.rank >= threshold)


def cmd_check(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.api import resolve

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    finder = ConfigFinder(registry, Path(args.config) if args.config else None)
    paths = model_paths(args, finder)
    if not paths:
        raise UsageError(f"no .onnx files found in {', '.join(args.models)}")
    resolved = [resolve(Path(path), registry, finder, **_overrides(args)) for path in paths]
    if args.show_settings:
        for path, one in zip(paths, resolved, strict=True):
            emit(show_settings(path, one, registry), args.output)
        return 0
    refuse_overwriting_inputs(
        [("--output", args.output), ("--write-baseline", args.write_baseline)],
        [
            *((f"the model {path}", path) for path in paths),
            (f"--config {args.config}", args.config),
        ],
        paths,
    )
    if args.output:  # --write-baseline over --baseline is how a baseline is updated
        refuse_overwriting_inputs(
            [("--output", args.output)], [(f"--baseline {args.baseline}", args.baseline)]
        )
    known = load_baseline(args.baseline) if args.baseline else None  # bad file: exit 2 early
    # Findings are printed as the models are done, unless the report goes to a file or the
    # baseline must be written (and may fail) first.
    streamed = not args.output and not args.write_baseline
    reports, text = check_and_render(
        paths,
        registry,
        [one.settings for one in resolved],
        jobs=args.jobs,
        format=args.format,
        verbose=args.verbose,
        quiet=args.quiet,
        color=args.format == "text" and not args.output and use_color(sys.stdout),
        known=known,
        stream=sys.stdout if streamed else None,
        progress=sys.stderr,
    )
    if args.write_baseline:  # every finding, the known ones too
        count = write_baseline(args.write_baseline, reports)
        print(f"convlint: recorded {count} findings in {args.write_baseline}", file=sys.stderr)
    emit(text, args.output)
    for report in reports:
        if report.error:
            print(printable(f"convlint: error: {report.path}: {report.error}"), file=sys.stderr)
    if any(r.error for r in reports):
        return 2
    if args.exit_zero or args.write_baseline:
        return 0
    failed = sum(
        failing([report], one.fail_on) for report, one in zip(reports, resolved, strict=True)
    )
    return 1 if failed else 0


def cmd_stats(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.nodestats import run_stats

    return run_stats(args, registry)


def cmd_rules(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.nodestats import table

    rows = [[r.code, r.name, r.severity.value, r.fix_text, r.summary] for r in registry]
    sys.stdout.write(table(["code", "name", "severity", "fix", "summary"], rows, set()) + "\n")
    return 0


def cmd_rule(args: argparse.Namespace, registry: Registry) -> int:
    rule = registry.get(args.code)
    if rule is None:
        raise UsageError(f"unknown rule {args.code!r} (rules: {', '.join(registry.codes())})")
    header = f"# {rule.name} ({rule.code})\n\n"
    meta = f"Default severity: {rule.severity.value}. Fix: {rule.fix_text}.\n"
    meta += "".join(f"A fix that is {a.value} is {a.applied}.\n" for a in rule.fixes)
    if rule.options:
        options = ", ".join(f"`{k}` = {v!r}" for k, v in rule.options.items())
        meta += f"Options: {options}.\n"
    doc = rule.doc.strip()
    if doc.startswith(rule.code):  # the docstring's title line repeats the header
        doc = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
    sys.stdout.write(header + meta + "\n" + (doc or rule.summary) + "\n")
    return 0


def cmd_fix(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.rewrite.report import cmd_fix as run_fix

    settings, _ = resolve_settings(args, registry)
    return run_fix(args, registry, settings)


def cmd_demo(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.demo import run_demo

    return run_demo(registry, args.format)


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

COMMANDS = {
    "check": cmd_check,
    "fix": cmd_fix,
    "stats": cmd_stats,
    "rules": cmd_rules,
    "rule": cmd_rule,
    "demo": cmd_demo,
}


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


def main(argv: Sequence[str] | None = None) -> int:
    _fit_streams_to_their_encoding()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        registry = load_registry()
        if args.command in CLEANS_UP:
            with cleanup_on_signals():
                return COMMANDS[args.command](args, registry)
        return COMMANDS[args.command](args, registry)
    except ConvlintError as exc:
        print(printable(f"convlint: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlint: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # `convlint demo | head`: the reader left, which is not an error
        _silence_stdout()
        return 0
    except Exception as exc:  # an internal failure is still one line and exit 2
        print(f"convlint: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    raise SystemExit(main())
