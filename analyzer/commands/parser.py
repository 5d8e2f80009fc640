"""Commands layer: the command line's parser (argparse), every command's options.

Only what parsing needs is imported here: ``--version``, ``--help``, ``rules`` and ``rule``
answer without importing onnx, numpy or networkx (a second of start-up); each command imports
its stages when it runs, and ``fix``'s options only when the command is ``fix``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from convlint.config import FAIL_ON
from convlint.errors import did_you_mean
from convlint.ruledoc import SCHEMAS
from convlint.version import __version__

FORMATS = ("text", "json", "sarif", "junit", "markdown", "github", "gitlab")


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
        from convlint.commands.fix import add_fix_arguments

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
