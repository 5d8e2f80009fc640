"""The Python API: ``convlint.check``, ``convlint.fix``, ``convlint.stats``.

Each takes a model as a path (``str`` or ``os.PathLike``) or an ``onnx.ModelProto`` and returns
the objects the JSON reports are made from: a :class:`~convlint.engine.ModelReport` (its
``as_dict()`` is the JSON model object), a :class:`~convlint.rewrite.pipeline.FixResult`, and
the stats dictionary. Settings resolve as on the command line, which is a thin layer over this
module: keyword arguments over the configuration found from the model's folder upwards (or
``config=``) over defaults. Bad input raises :class:`~convlint.errors.ConvlintError` (the
command line's exit 2), with the file named.

    import convlint

    report = convlint.check("resnet50.onnx", select=["CL001"], input_shapes={"x": (1, 3, 224, 224)})
    for finding in report.findings:
        print(finding.code, finding.node, finding.estimate)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from convlint.config import ConfigFinder, Configuration
from convlint.engine import ModelReport, Settings, analyze
from convlint.registry import Registry, load_registry

if TYPE_CHECKING:
    from convlint.rewrite.pipeline import FixResult

ModelLike = str | os.PathLike[str] | onnx.ModelProto
InputShapes = Mapping[str, Sequence[int]]


@dataclass
class Resolved:
    """The settings of one model, and where they came from (``--show-settings``)."""

    settings: Settings
    fail_on: str
    config: Configuration
    notes: list[str] = field(default_factory=list)


def resolve(
    model: Path,
    registry: Registry,
    finder: ConfigFinder,
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    extend_select: Sequence[str] | None = None,
    fail_on: str | None = None,
    input_shapes: InputShapes | None = None,
    verbose: bool = False,
) -> Resolved:
    """Arguments over the model's configuration over defaults, as ruff resolves them.

    ``select`` replaces the configured ``select``/``extend-select`` and ``ignore`` (ruff's
    ``--select``); ``ignore`` and ``extend_select`` add to them; ``per-file-ignores`` whose
    glob names the model always apply. Configured input shapes are bound where the model has
    such an input (others are skipped with a note); ``input_shapes`` given here must name one.
    """
    config = finder.for_model(model)
    table = config.table
    registry.known_selectors(list(select or []), "--select")
    registry.known_selectors(list(ignore or []), "--ignore")
    registry.known_selectors(list(extend_select or []), "--extend-select")
    chosen = [*table.get("select", ["ALL"]), *table.get("extend-select", [])]
    ignored = list(table.get("ignore", []))
    if select:
        chosen, ignored = list(select), []
    chosen += list(extend_select or [])
    ignored += [*config.file_ignores(model), *(ignore or [])]
    settings = Settings(
        select=chosen,
        ignore=ignored,
        per_node_ignores=dict(table.get("per-node-ignores", {})),
        rule_options=dict(table.get("rules", {})),
        input_shapes={
            name: tuple(int(d) for d in dims) for name, dims in (input_shapes or {}).items()
        },
        verbose=verbose,
    )
    settings.configured_input_shapes = config.input_shapes(model)
    settings.configured_source = f"{config.path}: input-shapes"
    return Resolved(settings, fail_on or table.get("fail-on", "warning"), config)


def _resolve_one(
    path: Path, registry: Registry, config: str | os.PathLike[str] | None, **overrides: Any
) -> Resolved:
    """``resolve`` for one model, with ``config`` or the model's own configuration."""
    finder = ConfigFinder(registry, Path(config) if config is not None else None)
    return resolve(path, registry, finder, **overrides)


@contextmanager
def _as_path(model: ModelLike) -> Iterator[Path]:
    """A path for ``model``: itself, or a temporary file holding a ModelProto."""
    if not isinstance(model, onnx.ModelProto):
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="convlint-") as folder:
        name = (model.graph.name or "model").replace(os.sep, "_")
        path = Path(folder) / f"{name}.onnx"
        onnx.save(model, path)
        yield path


def check(
    model: ModelLike,
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    extend_select: Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    input_shapes: InputShapes | None = None,
    verbose: bool = False,
    registry: Registry | None = None,
) -> ModelReport:
    """Lint one model; a model that cannot be read gives a report with ``error`` set."""
    registry = registry or load_registry()
    with _as_path(model) as path:
        resolved = _resolve_one(
            path,
            registry,
            config,
            select=select,
            ignore=ignore,
            extend_select=extend_select,
            input_shapes=input_shapes,
            verbose=verbose,
        )
        report = analyze(path, registry, resolved.settings)
    if isinstance(model, onnx.ModelProto):
        report.path = f"<ModelProto {model.graph.name or 'model'}>"
    return report


def stats(
    model: ModelLike,
    *,
    input_shapes: InputShapes | None = None,
    config: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The stats JSON object of one model: ``path``, ``inputs``, per-node ``nodes`` (params,
    MACs, output shapes), ``total`` and ``notes``."""
    from convlint.nodestats import model_stats

    registry = load_registry()
    with _as_path(model) as path:
        resolved = _resolve_one(path, registry, config, input_shapes=input_shapes)
        return model_stats(path, registry, resolved.settings)


def fix(
    model: ModelLike,
    output: str | os.PathLike[str] | None = None,
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    input_shapes: InputShapes | None = None,
    verbose: bool = False,
    **options: Any,
) -> FixResult:
    """Rewrite, verify and write ``output`` (the command line's ``fix MODEL -o OUT``).

    ``options`` are those of the command line, as keywords: ``in_place``, ``tolerance``,
    ``method``, ``rank``, ``ratio``, ``inputs`` (a path), ``samples``, ``timeout``,
    ``unsafe_fixes``, ``objective``, ``latency`` (False: ``--no-latency``), ``latency_threads``,
    ``latency_batch``, ``provider``...; the result's ``written`` says whether OUT was written.
    """
    from convlint.rewrite.pipeline import FixOptions
    from convlint.rewrite.pipeline import fix as run_fix

    if isinstance(model, onnx.ModelProto) and output is None:
        raise TypeError("fix(ModelProto) needs an output path")
    registry = load_registry()
    if "inputs" in options and options["inputs"] is not None:
        options["inputs"] = Path(options["inputs"])
    with _as_path(model) as path:
        resolved = _resolve_one(
            path,
            registry,
            config,
            select=select,
            ignore=ignore,
            input_shapes=input_shapes,
            verbose=verbose,
        )
        fix_options = FixOptions(output=Path(output) if output is not None else None, **options)
        return run_fix(path, registry, resolved.settings, fix_options, verbose=verbose)
