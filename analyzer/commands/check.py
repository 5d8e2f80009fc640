"""Commands layer: `convlint check MODEL...`: the models to check, their settings, the report
written (or streamed) and the exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from convlint.commands.common import config_finder, model_paths, overrides, plural
from convlint.errors import ConvlintError, UsageError, printable
from convlint.output import emit, refuse_overwriting_inputs

if TYPE_CHECKING:
    from convlint.api import Resolved
    from convlint.config import FailOn
    from convlint.findings import ModelReport
    from convlint.registry import Registry


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


def failing(reports: Sequence[ModelReport], fail_on: FailOn) -> int:
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
            resolve(Path(path), registry, finder, **overrides(args)) for path in config_paths
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
            freeze=args.ends_process,
        )
    if args.write_baseline:  # every finding, the known ones too
        count = write_baseline(args.write_baseline, reports)
        print(
            f"convlint: recorded {plural(count, 'finding')} in {args.write_baseline}",
            file=sys.stderr,
        )
    if args.statistics:
        from convlint.reporters.statistics import render_statistics

        text = render_statistics(reports, registry, args.format)
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
