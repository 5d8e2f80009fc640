"""The Python API: ``convlint.check``, ``convlint.fix``, ``convlint.stats``.

Each takes a model as a path (``str`` or ``os.PathLike``) or an ``onnx.ModelProto`` and returns
the objects the JSON reports are made from: a :class:`~convlint.findings.ModelReport` (its
``as_dict()`` is the JSON model object), a :class:`~convlint.rewrite.pipeline.FixResult`, and
a :class:`~convlint.nodestats.StatsReport`. Settings resolve as on the command line, which is
a thin layer over this module: keyword arguments over the configuration found from the
model's folder upwards (or ``config=``) over defaults. A ``ModelProto`` has no folder: its
configuration is found from the working directory upwards, as for ``convlint check -`` (its
globs match ``<graph name>.onnx`` there), never from the temporary folder it is saved in.
Options are keyword-only and typed; a list of codes may be given as one string
(``select="CL001"``, or ``"CL001,CL002"`` as on the command line). Bad input raises
:class:`~convlint.errors.ConvlintError` (the command line's exit 2), with the file named.

    import convlint

    report = convlint.check("resnet50.onnx", select="CL001", input_shapes={"x": (1, 3, 224, 224)})
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

from convlint.config import DEFAULT_FAIL_ON, ConfigFinder, Configuration, FailOn
from convlint.engine import Settings, analyze
from convlint.findings import ModelReport
from convlint.registry import DEFAULT_SELECT, Registry, load_registry
from convlint.rewrite.options import (
    DEFAULT_METHOD,
    DEFAULT_PROVIDER,
    DEFAULT_TIMEOUT,
    MIN_SAVING,
    Method,
    Objective,
)

if TYPE_CHECKING:
    from convlint.nodestats import StatsReport
    from convlint.rewrite.pipeline import FixResult

ModelLike = str | os.PathLike[str] | onnx.ModelProto
InputShapes = Mapping[str, Sequence[int]]
Codes = str | Sequence[str]  # "CL001", "CL001,CL002" or ["CL001", "CL002"]


def codes(value: Codes | None, parameter: str) -> list[str] | None:
    """A list of codes given as a list or as one string (comma-separated, as on the command
    line); anything else is a TypeError naming the parameter."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    elif not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{parameter}= takes rule codes as a string or a list of strings")
    return [part.strip().upper() for part in value if part.strip()]


@dataclass
class Resolved:
    """The settings of one model, and where they came from (``--show-settings``)."""

    settings: Settings
    fail_on: FailOn
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
    fail_on: FailOn | None = None,
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
    chosen = [*table.get("select", DEFAULT_SELECT), *table.get("extend-select", [])]
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
    return Resolved(settings, fail_on or table.get("fail-on", DEFAULT_FAIL_ON), config)


def _resolve_one(
    path: Path, registry: Registry, config: str | os.PathLike[str] | None, **overrides: Any
) -> Resolved:
    """``resolve`` for one model, with ``config`` or the model's own configuration."""
    finder = ConfigFinder(registry, Path(config) if config is not None else None)
    return resolve(path, registry, finder, **overrides)


@contextmanager
def _as_path(model: ModelLike) -> Iterator[tuple[Path, Path]]:
    """A path for ``model`` and the path its configuration is found and matched for: the path
    itself twice, or a temporary file holding a ModelProto and ``<graph name>.onnx`` in the
    working directory (the temporary folder is anyone's: its parents' files are not the
    user's configuration)."""
    if not isinstance(model, onnx.ModelProto):
        yield Path(model), Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="convlint-") as folder:
        name = (model.graph.name or "model").replace(os.sep, "_")
        path = Path(folder) / f"{name}.onnx"
        onnx.save(model, path)
        yield path, Path.cwd() / path.name


def check(
    model: ModelLike,
    *,
    select: Codes | None = None,
    ignore: Codes | None = None,
    extend_select: Codes | None = None,
    config: str | os.PathLike[str] | None = None,
    input_shapes: InputShapes | None = None,
    verbose: bool = False,
    registry: Registry | None = None,
) -> ModelReport:
    """Lint one model (`convlint check MODEL`) and return its report.

    ``model`` is a path or an ``onnx.ModelProto``. ``select``, ``ignore`` and
    ``extend_select`` take codes or prefixes (``"CL001"``, ``"CL00"``, ``"ALL"``), as a list or
    one comma-separated string; ``config`` names a configuration file (default: the one found
    from the model's folder upwards, or from the working directory's for a ``ModelProto``);
    ``input_shapes`` binds symbolic dims
    (``{"input": (1, 3, 224, 224)}``); ``verbose`` keeps why rules passed nodes over
    (``report.skips``) and notes. The report's ``findings`` each carry ``code``, ``node``,
    ``message``, ``severity``, ``estimate`` (None for a rule without one) and ``fix``;
    ``report.as_dict()`` is the JSON model object. A model that cannot be read gives a report
    with ``error`` set; bad options raise ``ConvlintError``.
    """
    registry = registry or load_registry()
    with _as_path(model) as (path, configured_as):
        resolved = _resolve_one(
            configured_as,
            registry,
            config,
            select=codes(select, "select"),
            ignore=codes(ignore, "ignore"),
            extend_select=codes(extend_select, "extend_select"),
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
) -> StatsReport:
    """Profile one model (`convlint stats MODEL`): per node its op, output shapes, params,
    MACs (per output pixel too) and activation memory; the totals (params, MACs, memory, the
    peak of live activations) and the totals per op type.

    Returns a :class:`~convlint.nodestats.StatsReport` (``nodes``, ``total``, ``op_types``,
    ``inputs``, ``folded``, ``notes``; ``as_dict()`` is the JSON object, and
    ``report["total"]`` reads it as a dictionary). ``input_shapes`` binds symbolic dims;
    ``config`` names a configuration file. A model that cannot be read raises
    ``ConvlintError``.
    """
    from convlint.nodestats import StatsReport, model_stats

    registry = load_registry()
    with _as_path(model) as (path, configured_as):
        resolved = _resolve_one(configured_as, registry, config, input_shapes=input_shapes)
        return StatsReport.from_dict(model_stats(path, registry, resolved.settings))


def fix(
    model: ModelLike,
    output: str | os.PathLike[str] | None = None,
    *,
    select: Codes | None = None,
    ignore: Codes | None = None,
    config: str | os.PathLike[str] | None = None,
    input_shapes: InputShapes | None = None,
    verbose: bool = False,
    in_place: bool = False,
    tolerance: float | None = None,
    method: Method = DEFAULT_METHOD,
    rank: int | None = None,
    ratio: float | None = None,
    inputs: str | os.PathLike[str] | None = None,
    samples: int | None = None,
    preprocess: str | None = None,
    objective: Objective | None = None,
    latency: bool = True,
    min_top1: float | None = None,
    latency_threads: int | None = None,
    latency_batch: int | None = None,
    provider: str = DEFAULT_PROVIDER,
    timeout: float = DEFAULT_TIMEOUT,
    unsafe_fixes: bool = False,
    allow_noise: bool = False,
    min_saving: float = MIN_SAVING,
    rank_step: int | None = None,
    seed: int = 0,
) -> FixResult:
    """Rewrite the findings of one model, verify the rewrite with onnxruntime and write
    ``output`` (`convlint fix MODEL -o OUT`); the options are the command line's:

    - ``tolerance``: bound on every output's relative L2 error (None: 1e-3, or no bound when
      ``min_top1`` is given alone); ``min_top1``: bound on the top-1 agreement of class-score
      outputs (0 to 1), both on held-out samples;
    - ``method`` (``"auto"``: factorization or channel pruning, whichever the whole-model
      budget prefers per layer; ``"data-aware"``, ``"prune"`` or ``"weight"``), ``rank`` or
      ``ratio``: how to rewrite; ``min_saving``: the least share of a layer's MACs a lossy
      rewrite must save; ``rank_step``: what the budget's ranks and kept channels are multiples
      of (None: the target's channel block, 16 on the CPU provider with AVX-512, else 8);
    - ``inputs``: samples to fit and verify on (an ``.npz``, an ``.npy`` or a folder of images,
      with ``preprocess``), ``samples`` how many; without them approximate rewrites are skipped
      unless ``allow_noise`` (fitted on ``samples`` seeded noise, default 8);
    - ``objective`` (``"macs"`` by default, or ``"latency"``), ``latency`` (False:
      no timing), ``latency_threads``, ``latency_batch``, ``provider``: what is timed and how;
    - ``in_place`` allows ``output`` to be ``model``; ``unsafe_fixes`` applies fixes that
      change the function; ``timeout`` bounds each onnxruntime run (seconds); ``seed`` seeds
      the noise.

    Returns a :class:`~convlint.rewrite.pipeline.FixResult`: ``written`` says whether
    ``output`` was written (verification passed), ``rewrites`` and ``skipped`` what was done
    and why not, ``verification`` the measured errors. Bad input raises ``ConvlintError``.
    """
    from convlint.rewrite.options import FixOptions
    from convlint.rewrite.pipeline import fix as run_fix

    if isinstance(model, onnx.ModelProto) and output is None:
        raise TypeError("fix(ModelProto) needs an output path")
    registry = load_registry()
    with _as_path(model) as (path, configured_as):
        resolved = _resolve_one(
            configured_as,
            registry,
            config,
            select=codes(select, "select"),
            ignore=codes(ignore, "ignore"),
            input_shapes=input_shapes,
            verbose=verbose,
        )
        options = FixOptions(
            output=Path(output) if output is not None else None,
            in_place=in_place,
            tolerance=tolerance,
            method=method,
            rank=rank,
            ratio=ratio,
            inputs=Path(inputs) if inputs is not None else None,
            samples=samples,
            timeout=timeout,
            unsafe_fixes=unsafe_fixes,
            allow_noise=allow_noise,
            min_saving=min_saving,
            rank_step=rank_step,
            seed=seed,
            objective=objective,
            latency=latency,
            min_top1=min_top1,
            preprocess=preprocess,
            latency_threads=latency_threads,
            latency_batch=latency_batch,
            provider=provider,
        )
        return run_fix(path, registry, resolved.settings, options, verbose=verbose)
