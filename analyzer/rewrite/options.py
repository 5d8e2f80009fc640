"""Stage 5, before every step of `convlint fix`: the vocabularies and defaults of its options.

One definition for the command line (``convlint.commands.fix``), the Python API
(``convlint.fix``) and the pipeline. Nothing here imports onnx: the command line's parser
reads it.
"""

from __future__ import annotations

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
