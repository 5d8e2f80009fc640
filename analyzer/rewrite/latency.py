"""Stage 5d for `convlint fix`: how long the model takes in onnxruntime, before and after.

The runtime's child process times both models on the same feed with the CPU provider, every
graph optimization on (as a deployment runs it), a stated number of intra-op threads; each
session's first runs are warm-up and not timed. The runs alternate between the models
(A B B A ...) so that drift (other load, frequency scaling) falls on both; models too large to
be held twice (together over :data:`RESIDENT_BYTES` of weights) are loaded one at a time and
alternate in blocks of runs instead. At least :data:`MIN_RUNS` runs of each are timed, more
while the time budget lasts; the report gives the median of each and its spread
(interquartile range).

``--objective latency`` also times each rewrite on its own: the nodes it replaces against the
nodes it writes, cut out of the model as a small graph with random inputs of the right shapes.
A rewrite whose median is not at least 1% lower (:data:`FASTER`) is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

MIN_RUNS = 10
BUDGET = 0.1  # seconds of further timed runs for models that run fast
REWRITE_BUDGET = 0.05  # the same, for one rewrite's nodes
RESIDENT_BYTES = 256 << 20
FASTER = 0.99  # ratio after/before below which a rewrite counts as faster


def default_threads() -> int:
    """The CPUs this process may run on: what onnxruntime's default would use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


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

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "ratio": self.ratio,
            "runs": self.runs,
            "threads": self.threads,
            "before_iqr": self.before_iqr,
            "after_iqr": self.after_iqr,
            "interleaving": self.interleaving,
        }

    def text(self) -> str:
        how = "interleaved runs" if self.interleaving == "runs" else "runs in alternating blocks"
        return (
            f"latency {duration(self.before)} -> {duration(self.after)} ({self.ratio:.2f}x; "
            f"median of {self.runs} {how}, IQR {duration(self.before_iqr)}/"
            f"{duration(self.after_iqr)}, {self.threads} "
            f"thread{'s' if self.threads != 1 else ''})"
        )

    def short(self) -> str:
        return f"{duration(self.before)} -> {duration(self.after)} ({self.ratio:.2f}x)"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def summarize(times: Sequence[Sequence[float]], threads: int, resident: bool) -> Latency:
    before, after = (np.asarray(t, dtype=np.float64) for t in times)

    def iqr(values: np.ndarray[Any, Any]) -> float:
        high, low = np.percentile(values, [75, 25])
        return float(high - low)

    return Latency(
        before=float(np.median(before)),
        after=float(np.median(after)),
        runs=int(min(len(before), len(after))),
        threads=threads,
        before_iqr=iqr(before),
        after_iqr=iqr(after),
        interleaving="runs" if resident else "blocks",
    )


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
