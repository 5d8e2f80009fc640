"""Commands layer: `convlint stats MODEL...` and `convlint stats --diff MODEL OUT` (the tables
themselves are ``convlint.nodestats``'s)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlint.commands.common import config_finder, model_paths, resolve_settings
from convlint.errors import ModelError, UsageError, printable
from convlint.output import emit, refuse_overwriting_inputs

if TYPE_CHECKING:
    from convlint.registry import Registry


def cmd_stats(args: argparse.Namespace, registry: Registry) -> int:
    """`convlint stats MODEL...` and `convlint stats --diff MODEL OUT`: 0, or 2 when a model
    cannot be read (the others are still reported). Each model gets its own settings, as in
    `check` (its input shapes from its configuration)."""
    from convlint.nodestats import (
        diff_stats,
        model_stats,
        pick_rows,
        render_diff_json,
        render_diff_text,
        render_stats_csv,
        render_stats_markdown,
        render_stats_text,
        stats_document,
    )
    from convlint.reporters.common import json_text

    def one(path: str) -> dict[str, Any]:
        return model_stats(path, registry, resolve_settings(args, registry, path)[0])

    if args.top is not None and args.top < 1:
        raise UsageError("--top must be at least 1")
    if args.diff and args.format not in ("text", "json"):
        raise UsageError(f"--diff writes text or json, not {args.format}")

    if args.diff:  # two files as given (the same one twice compares it with itself)
        paths = [str(model) for model in args.models]
        if len(paths) != 2 or any(Path(path).is_dir() for path in paths):
            raise UsageError(
                f"--diff compares two model files, MODEL and OUT, not {' '.join(paths)} "
                "(e.g. convlint stats --diff model.onnx fixed.onnx)"
            )
    else:
        paths = model_paths(args, config_finder(args, registry))
    if not paths:
        raise UsageError(f"no .onnx files found in {', '.join(args.models)}")
    refuse_overwriting_inputs(
        [("--output", args.output)],
        [
            *((f"the model {path}", path) for path in paths),
            (f"--config {args.config}", args.config),
        ],
        paths,
    )
    as_json = args.format == "json"
    if args.diff:
        before, after = (one(path) for path in paths)
        diff = diff_stats(before, after)
        emit(render_diff_json(diff) if as_json else render_diff_text(diff), args.output)
        return 0
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            results.append(pick_rows(one(path), args.sort, args.top))
        except ModelError as exc:
            results.append({"path": path, "error": exc.problem})
    if as_json:
        text = json_text(stats_document(results, args.verbose))
    elif args.format == "csv":
        text = render_stats_csv(results)
    else:
        render = render_stats_markdown if args.format == "markdown" else render_stats_text
        tables = []
        for data in results:
            if data["error"] is None:
                notes = (
                    [f"{data['path']}: note: {n}" for n in data["notes"]] if args.verbose else []
                )
                tables.append(
                    "".join(f"{line}\n" for line in notes)
                    + render(data["path"], data, quiet=args.quiet)
                )
        text = "\n".join(tables)
    emit(text, args.output)
    failed = [data for data in results if data["error"] is not None]
    for data in failed:
        print(printable(f"convlint: error: {data['path']}: {data['error']}"), file=sys.stderr)
    return 2 if failed else 0
