"""Commands layer: what every command reads from its parsed command line, turned into the
library's own terms (settings, a configuration finder, the models to read); argparse's
``Namespace`` goes no further down than this layer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convlint.config import ConfigFinder, FailOn
    from convlint.engine import Settings
    from convlint.registry import Registry


def resolve_settings(
    args: argparse.Namespace, registry: Registry, model: str | None = None
) -> tuple[Settings, FailOn]:
    """Command line over the model's configuration over defaults; returns settings and
    fail-on (through the API's resolution, so both resolve alike)."""
    from convlint.api import resolve

    finder = config_finder(args, registry)
    resolved = resolve(Path(model or args.model), registry, finder, **overrides(args))
    return resolved.settings, resolved.fail_on


def config_finder(args: argparse.Namespace, registry: Registry) -> ConfigFinder:
    """Each model's configuration: ``--config FILE`` or the one found from its folder, under
    the ``--config KEY=VALUE`` overrides."""
    from convlint.config import ConfigFinder

    explicit = Path(args.config) if args.config else None
    return ConfigFinder(registry, explicit, getattr(args, "config_overrides", None) or ())


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "select": getattr(args, "select", None),
        "ignore": getattr(args, "ignore", None),
        "extend_select": getattr(args, "extend_select", None),
        "fail_on": getattr(args, "fail_on", None),
        "input_shapes": dict(getattr(args, "input_shape", None) or []),
        "verbose": getattr(args, "verbose", False),
    }


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


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
