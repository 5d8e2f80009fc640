"""Stage 5, before every step of `convlint fix`: its options (``FixOptions``), their
vocabularies, their defaults and their validation (``validate``).

One definition for the command line (``convlint.commands.fix``), the Python API
(``convlint.fix``) and the pipeline; a bad value's message names the option as both spell
it (``--min-top1 (min_top1)``). Nothing here imports onnx: the command line's parser reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from convlint.errors import UsageError
from convlint.findings import MIN_SAVING as MIN_SAVING  # --min-saving's default

# How a lossy finding is rewritten: data-aware factorization, channel pruning, both with the
# best per layer (auto), or the weights' own SVD.
Method = Literal["auto", "data-aware", "weight", "prune"]
# What a kept rewrite must improve: measured latency, or MACs without being measurably slower.
Objective = Literal["latency", "macs"]

METHODS: tuple[Method, ...] = get_args(Method)
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
DEFAULT_METHOD: Method = "auto"
DEFAULT_OBJECTIVE: Objective = "macs"
DEFAULT_TOLERANCE = 1e-3  # every output's relative L2 error (no bound with --min-top1 alone)
DEFAULT_TIMEOUT = 300.0  # seconds, each onnxruntime run
DEFAULT_PROVIDER = "CPUExecutionProvider"  # the onnxruntime execution provider timed on
DEFAULT_SAMPLES = 8  # seeded random samples without --inputs
INPUT_SAMPLES = 128  # samples taken from --inputs unless --samples says otherwise (64 verify)
FEW_SAMPLES = 50  # a top-1 agreement from fewer held-out samples is reported with a warning
# Each sample is held in memory and run through both models: a bound keeps a typo
# (--samples 100000000) from exhausting memory.
MAX_SAMPLES = 4096


@dataclass
class FixOptions:
    """What `convlint fix` is asked to do, every default one of the above."""

    output: Path | None  # None: MODEL itself, with in_place
    in_place: bool = False
    tolerance: float | None = None  # None: DEFAULT_TOLERANCE, or no bound with min_top1 alone
    method: Method = DEFAULT_METHOD
    rank: int | None = None
    ratio: float | None = None
    inputs: Path | None = None
    samples: int | None = None  # None: DEFAULT_SAMPLES of noise, up to INPUT_SAMPLES of --inputs
    timeout: float = DEFAULT_TIMEOUT
    unsafe_fixes: bool = False
    seed: int = 0
    objective: Objective | None = None  # None: DEFAULT_OBJECTIVE ("latency" only when asked)
    latency: bool = True  # time the models (False: --no-latency)
    min_top1: float | None = None
    preprocess: str | None = None
    latency_threads: int | None = None  # intra-op threads when timing; None: every CPU
    latency_batch: int | None = None  # the timing feed's batch; None: the sample's own
    provider: str = DEFAULT_PROVIDER  # onnxruntime execution provider for timing
    allow_noise: bool = False  # lossy rewrites fitted on generated noise (demos, tests)
    min_saving: float = MIN_SAVING  # of a layer's MACs, at least, for a lossy rewrite
    rank_step: int | None = None  # ranks and kept channels are multiples; None: the target's


def output_bound(options: FixOptions) -> float:
    """The bound on every output's relative L2 error: ``--tolerance``; when it is not given,
    ``DEFAULT_TOLERANCE``, or none at all (infinity) when ``--min-top1`` is the budget."""
    if options.tolerance is not None:
        return options.tolerance
    return math.inf if options.min_top1 is not None else DEFAULT_TOLERANCE


def reported_tolerance(options: FixOptions) -> float | None:
    """The tolerance a report states: None when the outputs' error is not bounded."""
    bound = output_bound(options)
    return None if math.isinf(bound) else bound


def option_name(name: str) -> str:
    """An option as the command line and the API spell it: ``--min-top1 (min_top1)``."""
    return f"--{name.replace('_', '-')} ({name})"


def _refused(name: str, requirement: str, value: object) -> UsageError:
    return UsageError(f"{option_name(name)} {requirement}, not {value!r}")


def _real(value: object) -> bool:
    """A number the command line could have parsed (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return type(value) is int


def validate(options: FixOptions) -> None:
    """Refuse, before any work, a value no run can use: one line naming the option (exit 2
    on the command line, ``UsageError`` from the API)."""
    if options.method not in METHODS:
        raise _refused("method", f"must be one of {', '.join(METHODS)}", options.method)
    tolerance = options.tolerance
    if tolerance is not None and not (_real(tolerance) and 0 < tolerance < math.inf):
        raise _refused("tolerance", "must be a finite positive number", tolerance)
    if not (_real(options.min_saving) and 0 <= options.min_saving < 1):
        requirement = "must be in [0, 1) (a share of the layer's MACs)"
        raise _refused("min_saving", requirement, options.min_saving)
    if options.rank is not None and not (_whole(options.rank) and options.rank >= 1):
        raise _refused("rank", "must be a whole number of at least 1", options.rank)
    if options.ratio is not None and not (_real(options.ratio) and 0 < options.ratio <= 1):
        raise _refused("ratio", "must be in (0, 1]", options.ratio)
    samples = options.samples
    if samples is not None and not (_whole(samples) and 1 <= samples <= MAX_SAMPLES):
        raise _refused("samples", f"must be from 1 to {MAX_SAMPLES:,}", samples)
    if options.objective is not None and options.objective not in OBJECTIVES:
        raise _refused("objective", f"must be one of {', '.join(OBJECTIVES)}", options.objective)
    if options.objective == "latency" and not options.latency:
        raise UsageError(
            "--objective latency (objective='latency') needs the timing that --no-latency "
            "(latency=False) turns off"
        )
    min_top1 = options.min_top1
    if min_top1 is not None and not (_real(min_top1) and 0 <= min_top1 <= 1):
        requirement = "must be in [0, 1] (a share of the held-out samples)"
        raise _refused("min_top1", requirement, min_top1)
    for name, value in (
        ("latency_threads", options.latency_threads),
        ("latency_batch", options.latency_batch),
        ("rank_step", options.rank_step),
    ):
        if value is not None and not (_whole(value) and value >= 1):
            raise _refused(name, "must be a whole number of at least 1", value)
    if not isinstance(options.provider, str) or not options.provider:
        raise _refused("provider", "must name an onnxruntime execution provider", options.provider)
    if options.preprocess is not None:
        from convlint.rewrite.calibration import parse_preprocess  # numpy: only when it runs

        parse_preprocess(options.preprocess)  # a bad spec is a usage error before any work
    if not (_real(options.timeout) and 0 < options.timeout < math.inf):
        raise _refused("timeout", "must be a positive number of seconds", options.timeout)
