"""The `convlint` command line: check, fix, stats, rules, rule, demo."""

from __future__ import annotations

import argparse
import codecs
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
from convlint.errors import ConvlintError, UsageError, did_you_mean

# Only what parsing the command line needs is imported here: `--version`, `--help`, `rules` and
# `rule` answer without importing onnx, numpy or networkx (a second of start-up); every command
# imports its stages when it runs.
if TYPE_CHECKING:
    from convlint.api import Resolved
    from convlint.config import ConfigFinder
    from convlint.engine import ModelReport, Settings
    from convlint.registry import Registry

FORMATS = ("text", "json", "sarif", "junit", "markdown", "github", "gitlab")
FAIL_ON = ("error", "warning", "info", "never")  # convlint.config.FAIL_ON, checked by a test


def _codes_arg(text: str) -> list[str]:
    return [part.strip().upper() for part in text.split(",") if part.strip()]


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    from convlint.config import parse_input_shape

    try:
        return parse_input_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, as every other convlint error, each with one
    ``convlint: error:`` prefix and, for a mistyped option, command or choice, the closest
    one ("did you mean")."""

    commands: dict[str, Parser]

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # named by the command they were given to, with its options to suggest
            command = getattr(parsed, "command", None)
            owner = getattr(self, "commands", {}).get(command, self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"convlint: error: {self._suggest(message)} (see `{self.prog} --help`)\n")

    def _suggest(self, message: str) -> str:
        import re

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            options = [c.strip().strip("'") for c in choice.group(2).split(",")]
            at = choice.start(2) - len(" (choose from ")
            return message[:at] + did_you_mean(choice.group(1), options) + message[at:]
        if message.startswith("unrecognized arguments: "):
            known = [flag for action in self._actions for flag in action.option_strings]
            hints = [
                did_you_mean(word.split("=", 1)[0], known)
                for word in message.split(": ", 1)[1].split()
                if word.startswith("--")
            ]
            return message + next((hint for hint in hints if hint), "")
        return message


class ConfigAction(argparse.Action):
    """``--config FILE`` (one) or ``--config KEY=VALUE`` (repeatable), as ruff's ``--config``:
    a value that names an existing file, or has no ``=``, is the file."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        text = str(values)
        if "=" in text and not os.path.isfile(text):
            namespace.config_overrides = [*(namespace.config_overrides or []), text]
        elif namespace.config is not None:
            parser.error(f"--config names two files: {namespace.config} and {text}")
        else:
            namespace.config = text


class VersionAction(argparse.Action):
    """``-V``/``--version``: convlint's version and those of the onnx and onnxruntime it runs
    with, read from their installed metadata (importing them would take a second)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


def version_text() -> str:
    """``convlint 0.2.0 (onnx 1.19.0, onnxruntime 1.23.0, Python 3.11.9)``."""
    from convlint.distributions import version

    parts = [f"{name} {version(name) or 'not installed'}" for name in ("onnx", "onnxruntime")]
    parts.append(f"Python {sys.version.split()[0]}")
    return f"convlint {__version__} ({', '.join(parts)})"


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
    parser.add_argument(
        "--config",
        metavar="FILE|KEY=VALUE",
        action=ConfigAction,
        help="the configuration file to use, or a KEY=VALUE (TOML) over the configuration's "
        "keys (repeatable), e.g. --config 'select=[\"CL001\"]'",
    )
    parser.set_defaults(config_overrides=[])
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; ``fix``'s own options (whose module imports onnx) only
    when ``command`` is ``fix`` (or None: all of them)."""
    parser = Parser(
        prog="convlint",
        description="Lint the convolutions of ONNX models.",
        epilog=_epilog(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-V", "--version", action=VersionAction)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    check = commands.add_parser(
        "check",
        help="lint ONNX models and report findings",
        epilog=_epilog("check"),
        formatter_class=HelpFormatter,
    )
    check.add_argument(
        "models",
        nargs="*",
        default=["."],
        metavar="MODEL",
        help=".onnx files or folders (default: .); - reads a model from stdin",
    )
    _common(check)
    check.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply exclude and extend-exclude to the files named on the command line too "
        "(pre-commit passes files by name)",
    )
    check.add_argument(
        "--statistics",
        action="store_true",
        help="print the number of findings of each rule instead of the findings",
    )
    check.add_argument(
        "--show-files",
        action="store_true",
        help="print the models that would be checked, then exit",
    )
    check.add_argument(
        "--stdin-filename",
        metavar="PATH",
        help="the name a model read from stdin (-) is reported and configured as",
    )

    stats = commands.add_parser(
        "stats",
        help="per-node params, MACs, output shapes and activation memory",
        epilog=_epilog("stats"),
        formatter_class=HelpFormatter,
    )
    stats.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files or folders")
    stats.add_argument(
        "--diff", action="store_true", help="compare two models, MODEL and OUT: what changed"
    )
    stats.add_argument(
        "--sort",
        choices=("params", "macs", "memory"),
        help="order the nodes by this, most first (default: graph order)",
    )
    stats.add_argument("--top", type=int, metavar="N", help="show only the first N nodes")
    _common(stats, lint=False, formats=("text", "json", "csv", "markdown"))

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
    if command in (None, "fix"):
        from convlint.rewrite.report import add_fix_arguments

        add_fix_arguments(fix)

    rules = commands.add_parser("rules", help="list every rule")
    rules.add_argument("--format", choices=("text", "json"), default="text", help="list format")
    rule = commands.add_parser(
        "rule", help="show a rule's documentation", formatter_class=HelpFormatter
    )
    rule.add_argument("code", nargs="?", metavar="CODE", help="a rule's code or name")
    rule.add_argument("--all", action="store_true", help="every rule's documentation")
    rule.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    schema = commands.add_parser("schema", help="print the JSON Schema of a JSON report")
    schema.add_argument("report", choices=SCHEMAS, metavar="REPORT", help=" | ".join(SCHEMAS))

    demo = commands.add_parser("demo", help="the whole pipeline on a built-in Inception 3a block")
    demo.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    parser.commands = {name: choice for name, choice in commands.choices.items()}
    return parser


SCHEMAS = ("check", "fix", "stats")


def resolve_settings(
    args: argparse.Namespace, registry: Registry, model: str | None = None
) -> tuple[Settings, str]:
    """Command line over the model's configuration over defaults; returns settings and
    fail-on (through the API's resolution, so both resolve alike)."""
    from convlint.api import resolve

    finder = config_finder(args, registry)
    resolved = resolve(Path(model or args.model), registry, finder, **_overrides(args))
    return resolved.settings, resolved.fail_on


def config_finder(args: argparse.Namespace, registry: Registry) -> ConfigFinder:
    """Each model's configuration: ``--config FILE`` or the one found from its folder, under
    the ``--config KEY=VALUE`` overrides."""
    from convlint.config import ConfigFinder

    explicit = Path(args.config) if args.config else None
    return ConfigFinder(registry, explicit, getattr(args, "config_overrides", None) or ())


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
        from convlint.atomic import write_atomic

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


def model_paths(args: argparse.Namespace, finder: ConfigFinder) -> list[str]:
    """The models to check: files as given, and the ``*.onnx`` files of folders that their
    configuration's ``exclude``/``extend-exclude`` do not name (as ruff, a file named on the
    command line is checked even so, unless ``--force-exclude``)."""
    from convlint.engine import iter_model_paths

    force = getattr(args, "force_exclude", False)
    named = {str(Path(target)) for target in args.models if not Path(target).is_dir()}
    return [
        str(path)
        for path in iter_model_paths(args.models)
        if (str(path) in named and not force) or not finder.for_model(path).excluded(path)
    ]


def show_settings(
    path: str, resolved: Resolved, registry: Registry, overrides: Sequence[str] = ()
) -> str:
    """``check --show-settings``: the resolved settings of one model and their source."""
    from convlint.engine import enabled_rules, rule_options

    settings = resolved.settings
    source = str(resolved.config.path) if resolved.config.path else "none (defaults)"
    rules = [rule.code for rule in enabled_rules(registry, settings)]
    lines = [
        f"Settings for {path}",
        f"  configuration: {source}",
        *(f"  --config {pair}" for pair in overrides),
        f"  select: {', '.join(settings.select)}",
        f"  ignore: {', '.join(settings.ignore) or '(none)'}",
        f"  rules run: {', '.join(rules) or '(none)'}",
        f"  fail-on: {resolved.fail_on}",
    ]
    for key in ("exclude", "extend-exclude"):
        patterns = resolved.config.table.get(key, [])
        lines.append(f"  {key}: {', '.join(patterns) or '(none)'}")
    for pattern, codes in settings.per_node_ignores.items():
        lines.append(f"  per-node-ignores: {pattern} = {', '.join(codes)}")
    for rule in registry:
        options, severity = rule_options(rule, settings)
        shown = ", ".join(f"{key} = {value!r}" for key, value in options.items())
        lines.append(
            f"  {rule.code}: severity = {severity.value}" + (f", {shown}" if shown else "")
        )
    shapes = {**settings.configured_input_shapes, **settings.input_shapes}
    inputs = _input_names(path)
    for name, shape in shapes.items():
        given = "--input-shape" if name in settings.input_shapes else settings.configured_source
        if inputs is not None and name not in inputs:
            given += f"; not bound: the model has no input {name!r}"
        lines.append(f"  input shape: {name} = {'x'.join(map(str, shape))} ({given})")
    return "\n".join(lines) + "\n"


def _input_names(path: str) -> set[str] | None:
    """The names of a model's graph inputs, or None when it cannot be read."""
    from convlint.loader import read_model

    try:
        return {value.name for value in read_model(path).graph.input}
    except ConvlintError:
        return None


def failing(reports: Sequence[ModelReport], fail_on: str) -> int:
    if fail_on == "never":
        return 0
    from convlint.findings import Severity

    threshold = Severity(fail_on).rank
    return sum(1 for r in reports for f in r.findings if f.severity.rank >= threshold)


def cmd_check(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.api import resolve
    from convlint.baseline import load_baseline, write_baseline
    from convlint.reporters import use_color
    from convlint.runner import check_and_render

    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    for flag in ("select", "ignore", "extend_select"):  # before any model is looked for
        registry.known_selectors(getattr(args, flag) or [], f"--{flag.replace('_', '-')}")
    finder = config_finder(args, registry)
    with _stdin_model(args) as stdin:
        if stdin is not None:
            name, path = stdin
            excluded = args.force_exclude and finder.for_model(Path(name)).excluded(Path(name))
            paths, names, config_paths = ([] if excluded else [path]), {path: name}, [name]
        else:
            paths = model_paths(args, finder)
            names, config_paths = {}, paths
        if not paths:
            if args.force_exclude and all(Path(m).is_file() or m == "-" for m in args.models):
                return 0  # every file named is excluded (pre-commit passed only those)
            raise UsageError(f"no .onnx files found in {', '.join(args.models)}")
        if args.show_files:
            emit("".join(f"{names.get(path, path)}\n" for path in paths), args.output)
            return 0
        resolved = [
            resolve(Path(path), registry, finder, **_overrides(args)) for path in config_paths
        ]
        if args.show_settings:
            for path, one in zip(config_paths, resolved, strict=True):
                emit(show_settings(path, one, registry, args.config_overrides), args.output)
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
        # Findings are printed as the models are done, unless the report goes to a file, the
        # baseline must be written (and may fail) first, or only counts are wanted.
        streamed = not args.output and not args.write_baseline and not args.statistics
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
            names=names,
        )
    if args.write_baseline:  # every finding, the known ones too
        count = write_baseline(args.write_baseline, reports)
        print(
            f"convlint: recorded {_plural(count, 'finding')} in {args.write_baseline}",
            file=sys.stderr,
        )
    if args.statistics:
        from convlint.reporters.statistics import render_statistics

        text = render_statistics(reports, registry, args.format)
    emit(text, args.output)
    for report in reports:
        if report.error:
            print(_printable(f"convlint: error: {report.path}: {report.error}"), file=sys.stderr)
    if any(r.error for r in reports):
        return 2
    if args.exit_zero or args.write_baseline:
        return 0
    failed = sum(
        failing([report], one.fail_on) for report, one in zip(reports, resolved, strict=True)
    )
    return 1 if failed else 0


@contextmanager
def _stdin_model(args: argparse.Namespace) -> Iterator[tuple[str, str] | None]:
    """For ``check -``: the model read from stdin, in a temporary file, and the name it is
    reported and configured as (``--stdin-filename``, else ``-``)."""
    if "-" not in args.models:
        if args.stdin_filename:
            raise UsageError("--stdin-filename names the model read from stdin: give - as MODEL")
        yield None
        return
    if len(args.models) > 1:
        raise UsageError("- reads one model from stdin: give no other MODEL with it")
    import tempfile

    data = sys.stdin.buffer.read()
    name = args.stdin_filename or "-"
    with tempfile.TemporaryDirectory(prefix="convlint-stdin-") as folder:
        path = Path(folder) / (Path(name).name if name.endswith(".onnx") else "stdin.onnx")
        path.write_bytes(data)
        yield name, str(path)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _printable(text: str) -> str:
    from convlint.errors import printable

    return printable(text)


def cmd_stats(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.nodestats import run_stats

    return run_stats(args, registry)


def cmd_rules(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import render_rules

    emit(render_rules(registry, args.format), None)
    return 0


def cmd_rule(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import render_rule

    emit(render_rule(registry, args.code, args.all, args.format), None)
    return 0


def cmd_schema(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import schema_text

    emit(schema_text(args.report), None)
    return 0


def _registry(args: argparse.Namespace) -> Registry:
    """The rules: from the catalog where only their documentation is needed (no onnx)."""
    from convlint.registry import load_catalog, load_registry

    return load_catalog() if args.command in ("rules", "rule", "schema") else load_registry()


def cmd_fix(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.rewrite.report import cmd_fix as run_fix

    if args.output_model is None and not args.in_place:
        report = f"; --output {args.output} names the report, not the model" if args.output else ""
        raise UsageError(f"fix needs -o OUT, the model to write (or --in-place){report}")
    if args.preprocess:
        from convlint.rewrite.calibration import parse_preprocess

        parse_preprocess(args.preprocess)  # a bad spec is named first
    if args.preprocess and (not args.inputs or Path(args.inputs).suffix in (".npz", ".npy")):
        raise UsageError(
            "--preprocess says how images become the input: it needs --inputs FOLDER (a folder "
            "of images; .npz and .npy samples are used as they are)"
        )

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
    "schema": cmd_schema,
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
    given = list(sys.argv[1:] if argv is None else argv)
    # fix's options (their module imports onnx) only when the command is fix
    parser = build_parser(next((word for word in given if not word.startswith("-")), ""))
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        registry = _registry(args)
        if args.command in CLEANS_UP:
            with cleanup_on_signals():
                return COMMANDS[args.command](args, registry)
        return COMMANDS[args.command](args, registry)
    except ConvlintError as exc:
        print(_printable(f"convlint: error: {exc}"), file=sys.stderr)
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
