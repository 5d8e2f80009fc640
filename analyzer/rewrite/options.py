"""Stage 5, before every step of `convlint fix`: its options (``FixOptions``), their
vocabularies and their defaults.

One definition for the command line (``convlint.commands.fix``), the Python API
(``convlint.fix``) and the pipeline. Nothing here imports onnx: the command line's parser
reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

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
