"""Stage 5, what every step of `convlint fix` shares: the run (options, log, timer, notes),
a chosen rewrite (``Choice``) and the result the steps fill in (``FixResult``).

The steps (``prepare``, ``search``, ``settle``, ``write``) pass these objects to each other
explicitly; none of them keeps state on a long-lived object.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import onnx

from convlint.cost import ModelCost
from convlint.findings import ModelReport
from convlint.rewrite.edit import Edit, Target
from convlint.rewrite.factorize import KINDS, Array, Factors
from convlint.rewrite.latency import Latency, channel_step
from convlint.rewrite.options import DEFAULT_OBJECTIVE, FixOptions, Objective, output_bound
from convlint.rewrite.verify import Errors, PatchSpec

# What the run's time is reported under, in the order of the report's "time:" line.
STAGES = ("analysis", "inputs", "factorization", "onnxruntime", "latency", "writing")
Log = Callable[[str], None]


def silent(message: str) -> None:
    """The log of a run that is not --verbose."""


@dataclass
class FixRun:
    """One `fix` run, as every step sees it: its options (validated, OUT resolved), where its
    messages go, the time spent per stage and the notes for the report."""

    options: FixOptions
    log: Log = silent
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # for the report's notes (--verbose)

    @property
    def error_bound(self) -> float:
        return output_bound(self.options)

    @property
    def objective(self) -> Objective:
        return self.options.objective or DEFAULT_OBJECTIVE

    @cached_property
    def step(self) -> int:
        """What the budget's ranks and kept channels are multiples of: ``--rank-step``, else
        the channel block of the target timed on (``latency.channel_step``, read once a run)."""
        return self.options.rank_step or channel_step(self.options.provider)

    @property
    def fixed_rank(self) -> bool:
        """Whether --rank/--ratio replace the search by a fixed rank."""
        return self.options.rank is not None or self.options.ratio is not None

    @contextmanager
    def timer(self, stage: str) -> Iterator[None]:
        """Time spent in the block, added to ``stage``'s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


class Bench(Protocol):
    """What the search and the settling measure with: the prepared model ("light", its
    weights in the runtime's folder), edits applied to it, its errors against the original's
    outputs on the held-out samples: those the search chooses on, or (``confirm``) those that
    verify. ``prepare.RuntimeBench`` runs onnxruntime for it."""

    light: onnx.ModelProto

    def apply(self, edits: Sequence[Edit]) -> onnx.ModelProto: ...

    def macs(self, model: onnx.ModelProto) -> int | None: ...

    def sample(
        self, model: onnx.ModelProto, specs: Sequence[PatchSpec], what: str
    ) -> list[Array]: ...

    def measure(
        self, model: onnx.ModelProto | Path, what: str, early: bool = False, confirm: bool = False
    ) -> Errors: ...


@dataclass
class Rewrite:
    code: str
    node: str
    kind: str
    method: str
    rank: int | list[int] | None
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    verified: Errors
    unsafe: bool = False
    latency: Latency | None = None  # its nodes alone, with --objective latency
    kept_channels: list[int] | None = None  # channel pruning: the input channels it keeps

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["verified"] = self.verified.as_dict()
        data.pop("unsafe")
        if self.kept_channels is None:
            data.pop("kept_channels")
        if self.latency is None:
            data.pop("latency")
        else:
            data["latency"] = self.latency.as_dict()
        return data


@dataclass(frozen=True)
class Skipped:
    code: str
    node: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "node": self.node, "reason": self.reason}


@dataclass
class FixResult:
    report: ModelReport
    output: str
    tolerance: float | None  # None: the outputs' error was not bounded (--min-top1 alone)
    method: str
    rewrites: list[Rewrite] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verification: Errors | None = None
    cost_after: ModelCost | None = None
    written: bool = False
    inputs: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    objective: str = "macs"
    rank_step: int = 8  # the budget's ranks and kept channels are multiples of it
    latency: Latency | None = None
    calibration: dict[str, Any] | None = None  # {"source", "fit", "verify"}
    bound: dict[str, int] = field(default_factory=dict)  # symbolic dims fix bound itself
    peak_memory: dict[str, int | None] = field(default_factory=dict)  # bytes


@dataclass
class Choice:
    """One target's rewrite as chosen so far: its factors, its edit and what it measured."""

    target: Target
    factors: Factors | None  # None for an exact fold
    edit: Edit
    errors: Errors
    budget: float
    kinds: tuple[str, ...] = KINDS  # the forms it may still take
    latency: Latency | None = None  # its nodes alone, once timed
    timed: bool = False


Choices = dict[str, Choice]  # target key (``key``) -> its rewrite
UNMEASURED = Errors(math.nan, math.nan, False, problem="not measured yet")


def key(target: Target) -> str:
    """A target's key among the choices: its rule and node."""
    return f"{target.code}:{target.node}"


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def declared_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """The declared dims; a dim_value of -1 or 0 and a dim_param of "?" (paddle2onnx writes
    both for "any size") are free dims without a name, as an absent one: two "?" dims need
    not be equal."""
    return [
        (d.dim_value if d.dim_value > 0 else None)
        if d.HasField("dim_value")
        else (d.dim_param if d.dim_param not in ("", "?") else None)
        for d in value.type.tensor_type.shape.dim
    ]


def sum_macs(costs: Sequence[Any]) -> int | None:
    values = [c.macs for c in costs]
    return None if any(v is None for v in values) else sum(values)


def retrained_hint(report: ModelReport, target: Target) -> str:
    """What a retrained bottleneck would save instead, from the finding's estimate."""
    finding = next(
        (f for f in report.findings if f.code == target.code and f.node == target.node), None
    )
    est = finding.estimate if finding else None
    if est is None:
        return ""
    text = (
        f"; a retrained bottleneck would save params {est.params_before:,} -> {est.params_after:,}"
    )
    if est.macs_before is not None and est.macs_after is not None:
        text += f", MACs {est.macs_before:,} -> {est.macs_after:,}"
    return text
