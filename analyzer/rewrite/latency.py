"""Stage 5d for `convlint fix`: how long the model takes in onnxruntime, before and after.

The runtime's child process times both models on the same feed, on the target the user names
(``--provider``, CPU by default; ``--latency-threads`` intra-op threads, by default every CPU
available; ``--latency-batch``: the first verification sample repeated along the batch axis),
every graph optimization on (as a deployment runs it); each session's first runs are warm-up
and not timed. The runs alternate between the models (A B B A ...) so that drift (other load,
frequency scaling) falls on both; models too large to be held twice (together over
:data:`RESIDENT_BYTES` of weights) are loaded one at a time and alternate in blocks of runs
instead. At least :data:`MIN_RUNS` runs of each are timed, more while :data:`BUDGET` lasts;
the report gives the median of each and its spread (interquartile range).

The ratio after/before comes with a 95% confidence interval (:func:`ratio_interval`). Each
*round* times a fresh session pair (see ``verify._serve_time``), and sessions differ among
themselves (where their thread pools landed, what else ran then) by more than their runs do:
the round is the unit, and the interval is Student's t interval of the mean of the rounds' log
ratios of medians (run i of MODEL and run i of OUT were timed next to each other, so drift
falls on both medians of a round alike). Simulated (25 runs a round with 10% noise each and
30% drift shared by the pair, sessions off by 0-5%), it misses the true ratio 4-6% of the time
at 4 and 8 rounds, where a two-stage bootstrap over rounds and runs missed 0.7% (too wide)
without a session effect and 8% (too narrow) with one. While the interval at
:data:`EARLY_CONFIDENCE` still holds 1, the child times more rounds, up to
:data:`CONFIRM_BUDGET` seconds more, looking again each time the rounds have grown by half;
with those looks, identical models end "different" at 95% in 6-8% of simulated runs (16%
with every look at 95%).

What the interval decides: ``--objective latency`` keeps a rewrite only when it is faster
with confidence (the interval's high end below 1); ``--objective macs`` drops one that is
slower with confidence (its low end above 1). Each rewrite is timed on its own for that: the
nodes it replaces against the nodes it writes, cut out of the model as a small graph with
random inputs of the right shapes; then the whole models, by the same rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from convlint.rewrite.budget import STEP

MIN_RUNS = 10
BUDGET = 0.1  # seconds of further timed runs for models that run fast
REWRITE_BUDGET = 0.05  # the same, for one rewrite's nodes
CONFIRM_BUDGET = 2.0  # seconds of further runs while the interval of the models holds 1
REWRITE_CONFIRM_BUDGET = 0.5  # the same, for one rewrite's nodes
GROWTH = 1.5  # the interval is looked at again once the runs have grown by this factor
RESIDENT_BYTES = 256 << 20
CONFIDENCE = 0.95
# Timing stops early (the interval no longer holding 1) only at this stricter level: each look
# is a chance to stop on a lucky stretch, and at 95% five looks call identical models different
# one time in six (simulated); the interval reported, and what decides, is still CONFIDENCE's.
EARLY_CONFIDENCE = 0.99
RESAMPLES = 2000
SEED = 0
AVX512_BLOCK = 16  # MLAS's NCHWc channel block where the CPU has AVX-512F


def default_threads() -> int:
    """The CPUs this process may run on: what onnxruntime's default would use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def channel_step(provider: str, cpu_flags: str | None = None) -> int:
    """The channel block the target's conv kernels work in, which ranks and kept channels are
    rounded to (``budget.ladder``): 16 on onnxruntime's CPU provider where the CPU has AVX-512F
    (MLAS's NCHWc block there: a conv whose channels are not a multiple of 16 is padded to the
    next, and costs what the next costs, as measured), else ``budget.STEP`` (8).
    ``cpu_flags``: the ``flags`` line of /proc/cpuinfo (read when None; not on Linux, 8)."""
    if provider != "CPUExecutionProvider":
        return STEP
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
                cpu_flags = next((line for line in info if line.startswith("flags")), "")
        except OSError:
            cpu_flags = ""
    return AVX512_BLOCK if "avx512f" in cpu_flags.split() else STEP


def ratio_interval(
    before: Sequence[float],
    after: Sequence[float],
    rounds: Sequence[int] = (),
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """A ``confidence`` interval of the ratio after/before of paired runs (before[i] and
    after[i] were timed side by side).

    ``rounds``: how many consecutive pairs each session pair timed (they sum to the pairs).
    Sessions differ among themselves (where their thread pools landed, what else ran then), so
    with two rounds or more the unit is the round: Student's t interval of the mean of the
    rounds' log ratios of medians, taken back by exp. One round (``rounds`` empty): a
    percentile bootstrap of median(after) / median(before) over the pairs, ``resamples``
    from ``seed``. Either way the same timings give the same interval."""
    count = min(len(before), len(after))
    sizes = [size for size in (rounds or [count]) if size > 0]
    if count == 0 or sum(sizes) != count:
        return (math.nan, math.nan)
    first = np.asarray(before[:count], dtype=np.float64)
    second = np.asarray(after[:count], dtype=np.float64)
    if len(sizes) >= 2:
        bounds = np.cumsum(sizes)[:-1]
        medians = [
            (float(np.median(a)), float(np.median(b)))
            for a, b in zip(np.split(second, bounds), np.split(first, bounds), strict=True)
        ]
        if any(a <= 0 or b <= 0 for a, b in medians):
            return (math.nan, math.nan)
        logs = np.log([a / b for a, b in medians])
        spread = t_quantile((1 + confidence) / 2, len(logs) - 1) * float(
            np.std(logs, ddof=1) / math.sqrt(len(logs))
        )
        middle = float(np.mean(logs))
        return (math.exp(middle - spread), math.exp(middle + spread))
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    chunk = max(1, (1 << 18) // count)  # resamples × runs indices at once: 16 MB per 1000 runs
    for begin in range(0, resamples, chunk):
        size = min(chunk, resamples - begin)
        pick = rng.integers(0, count, size=(size, count))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[begin : begin + size] = np.median(second[pick], axis=1) / np.median(
                first[pick], axis=1
            )
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return (float(low), float(high))


def t_quantile(probability: float, freedom: int) -> float:
    """The ``probability`` quantile (above 0.5) of Student's t with ``freedom`` degrees of
    freedom, by bisection on its distribution function, which for whole degrees of freedom is
    a finite sum in θ = atan(t / √ν) (Abramowitz and Stegun 26.7.3, 26.7.4)."""
    inside = 2 * probability - 1  # P(|T| < t)

    def within(t: float) -> float:
        theta = math.atan(t / math.sqrt(freedom))
        cos2 = math.cos(theta) ** 2
        term, total = 1.0, 1.0
        if freedom % 2 == 0:
            for k in range(1, (freedom - 2) // 2 + 1):
                term *= (2 * k - 1) / (2 * k) * cos2
                total += term
            return math.sin(theta) * total
        if freedom == 1:
            return 2 * theta / math.pi
        for k in range(1, (freedom - 3) // 2 + 1):
            term *= (2 * k) / (2 * k + 1) * cos2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)

    low, high = 0.0, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if within(middle) < inside:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def undecided(
    times: Sequence[Sequence[float]], rounds: Sequence[int] = (), confidence: float = CONFIDENCE
) -> bool:
    """Whether the ``confidence`` interval of the ratio of two models' timings holds 1."""
    if len(times) != 2:
        return False
    low, high = ratio_interval(times[0], times[1], rounds, confidence)
    return bool(low <= 1 <= high)


@dataclass(frozen=True)
class Target:
    """What the latency is measured on."""

    threads: int  # intra-op threads
    batch: int  # the feed's batch size
    provider: str  # onnxruntime execution provider

    def text(self) -> str:
        return (
            f"{self.threads} thread{'s' if self.threads != 1 else ''}, batch {self.batch}, "
            f"{self.provider}"
        )


@dataclass(frozen=True)
class Latency:
    """Median seconds of one run before and after, and how they were measured."""

    before: float
    after: float
    runs: int  # timed runs of each model
    threads: int
    before_iqr: float  # interquartile range of the runs, seconds
    after_iqr: float
    interleaving: str  # "runs": alternating run by run; "blocks": one model loaded at a time
    interval: tuple[float, float]  # CONFIDENCE interval of the ratio (ratio_interval)
    sessions: int  # session pairs the runs were timed in, each with fresh thread pools
    batch: int
    provider: str

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else float("inf")

    @property
    def faster(self) -> bool:
        """Faster with confidence: the whole interval below 1."""
        return self.interval[1] < 1

    @property
    def slower(self) -> bool:
        """Slower with confidence: the whole interval above 1."""
        return self.interval[0] > 1

    def as_dict(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "before": self.before,
            "after": self.after,
            "ratio": self.ratio,
            "runs": self.runs,
            "threads": self.threads,
            "before_iqr": self.before_iqr,
            "after_iqr": self.after_iqr,
            "interleaving": self.interleaving,
            "interval": [finite(self.interval[0]), finite(self.interval[1])],
            "batch": self.batch,
            "provider": self.provider,
        }

    def _ratio_text(self) -> str:
        low, high = self.interval
        return f"{self.ratio:.2f}x, {CONFIDENCE:.0%} CI [{low:.2f}, {high:.2f}]"

    def _target_text(self) -> str:
        return Target(self.threads, self.batch, self.provider).text()

    def text(self) -> str:
        how = "interleaved runs" if self.interleaving == "runs" else "runs in alternating blocks"
        return (
            f"latency {duration(self.before)} -> {duration(self.after)} ({self._ratio_text()}; "
            f"median of {self.runs} {how} in {self.sessions} session "
            f"pair{'s' if self.sessions != 1 else ''}, "
            f"IQR {duration(self.before_iqr)}/"
            f"{duration(self.after_iqr)}; {self._target_text()})"
        )

    def short(self) -> str:
        return f"{duration(self.before)} -> {duration(self.after)} ({self._ratio_text()})"

    def detail(self) -> str:
        """``short`` with how many runs, on what: for a reason in ``skipped``."""
        return f"{self.short()}, median of {self.runs} runs each, {self._target_text()}"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def summarize(
    times: Sequence[Sequence[float]],
    rounds: Sequence[int],
    target: Target,
    resident: bool,
) -> Latency:
    """Medians, spreads and the ratio's interval of two models' paired runs, timed in
    ``rounds`` session pairs of so many runs each."""
    before, after = (np.asarray(t, dtype=np.float64) for t in times)

    def iqr(values: np.ndarray[Any, Any]) -> float:
        high, low = np.percentile(values, [75, 25])
        return float(high - low)

    return Latency(
        before=float(np.median(before)),
        after=float(np.median(after)),
        runs=int(min(len(before), len(after))),
        threads=target.threads,
        before_iqr=iqr(before),
        after_iqr=iqr(after),
        interleaving="runs" if resident else "blocks",
        interval=ratio_interval(times[0], times[1], rounds),
        sessions=len(rounds),
        batch=target.batch,
        provider=target.provider,
    )


def batched_feed(
    sample: Mapping[str, np.ndarray[Any, Any]],
    declared: Mapping[str, Sequence[int | str | None]],
    batch: int,
) -> dict[str, np.ndarray[Any, Any]]:
    """``sample``'s first row repeated ``batch`` times along the first axis of every input
    that has one; ValueError naming the input whose declared batch dim is fixed to another
    size."""
    feed: dict[str, np.ndarray[Any, Any]] = {}
    for name, array in sample.items():
        value = np.asarray(array)
        if value.ndim == 0:
            feed[name] = value
            continue
        dims = declared.get(name, ())
        fixed = dims[0] if dims and isinstance(dims[0], int) else None
        if fixed is not None and fixed != batch:
            raise ValueError(f"input {name!r} has a fixed batch dim of {fixed}")
        feed[name] = np.ascontiguousarray(np.repeat(value[:1], batch, axis=0))
    return feed


def feed_batch(feed: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """The batch size of a feed: the first dim of its first input that has one (else 1)."""
    for array in feed.values():
        shape = np.shape(array)
        if shape:
            return int(shape[0])
    return 1


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's main-graph weights, stored in it or in external data."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in tensor.external_data if e.key == "length"), 0))
        else:
            total += tensor.ByteSize()
    return total


# -- one rewrite's nodes, cut out of the model ---------------------------------------------


@dataclass(frozen=True)
class InputInfo:
    shape: tuple[int, ...]
    elem_type: int


def region(
    model: onnx.ModelProto,
    nodes: Sequence[onnx.NodeProto],
    outputs: Sequence[str],
    inputs: dict[str, InputInfo],
    output_types: dict[str, int],
    extra_initializers: Iterable[onnx.TensorProto] = (),
) -> onnx.ModelProto | None:
    """A model of ``nodes`` alone, reading ``inputs`` and producing ``outputs``, with the
    weights they read from ``model`` (external data stays external: save it beside that
    data). None when a tensor it reads is neither produced, a weight, nor in ``inputs``."""
    weights = {t.name: t for t in model.graph.initializer}
    weights.update((t.name, t) for t in extra_initializers)
    producers = {out: node for node in model.graph.node for out in node.output}
    chosen = list(nodes)
    produced = {out for node in chosen for out in node.output}
    graph_inputs: list[onnx.ValueInfoProto] = []
    used: list[onnx.TensorProto] = []
    pending = [t for node in chosen for t in node.input if t]
    seen: set[str] = set()
    while pending:
        tensor = pending.pop(0)
        if tensor in seen or tensor in produced:
            continue
        seen.add(tensor)
        if tensor in weights:
            used.append(weights[tensor])
        elif tensor in inputs:
            info = inputs[tensor]
            graph_inputs.append(
                onnx.helper.make_tensor_value_info(tensor, info.elem_type, list(info.shape))
            )
        elif tensor in producers and _constant(producers[tensor], weights):
            producer = producers[tensor]
            chosen.insert(0, producer)
            produced.update(producer.output)
            pending.extend(t for t in producer.input if t)
        else:
            return None
    graph = onnx.helper.make_graph(
        chosen,
        "region",
        graph_inputs,
        [
            onnx.helper.make_tensor_value_info(name, output_types.get(name, 1), None)
            for name in outputs
        ],
        initializer=used,
    )
    region_model = onnx.helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    return region_model


def _constant(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type == "Constant":
        return True
    return node.op_type == "Identity" and node.input[0] in weights


def boundary_outputs(
    model: onnx.ModelProto, indices: Iterable[int], graph_outputs: Iterable[str]
) -> list[str]:
    """Tensors the nodes at ``indices`` produce that a node outside them or the graph reads."""
    inside = set(indices)
    read_outside = {o for o in graph_outputs}
    for index, node in enumerate(model.graph.node):
        if index not in inside:
            read_outside.update(node.input)
    return [
        out
        for index in sorted(inside)
        for out in model.graph.node[index].output
        if out and out in read_outside
    ]


def random_feed(inputs: dict[str, InputInfo], seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray[Any, Any]] = {}
    for name, info in inputs.items():
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
        feed[name] = np.asarray(rng.standard_normal(info.shape), dtype=dtype)
    return feed
