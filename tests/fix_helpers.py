"""Shared helpers of the fix tests: run models in onnxruntime here, outside `fix`'s verifier
(as onnxscript's ``assert_numerically_equal``), and plan rewrites straight from a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convlint.engine import Settings, analyze
from convlint.findings import Finding, Severity
from convlint.graph import ModelGraph, build_graph
from convlint.registry import load_registry
from convlint.rewrite.edit import Target, Weights
from convlint.rewrite.plan import plan
from convlint.rules._conv import SpatialConv
from convlint.rules.linear_conv_chain import ConvChain
from convlint.rules.pool_branch_inflates_concat import match_projection
from convlint.view import FOLDABLE, View


def ort_run(model: onnx.ModelProto | str | Path, feeds: list[dict[str, Any]]) -> list[list[Any]]:
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def random_inputs(
    model: onnx.ModelProto, samples: int = 2, seed: int = 123
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    weights = {t.name for t in model.graph.initializer}
    feeds = []
    for _ in range(samples):
        feed = {}
        for value in model.graph.input:
            if value.name in weights:
                continue
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def max_abs_diff(a: onnx.ModelProto | Path, b: onnx.ModelProto | Path, feeds: list[Any]) -> float:
    ref, new = ort_run(a, feeds), ort_run(b, feeds)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for r, n in zip(ref, new, strict=True)
        for x, y in zip(r, n, strict=True)
    )


def rel_l2(a: onnx.ModelProto | Path, b: onnx.ModelProto | Path, feeds: list[Any]) -> float:
    """Worst output's ||y' - y|| / ||y|| over all samples."""
    ref, new = ort_run(a, feeds), ort_run(b, feeds)
    worst = 0.0
    for index in range(len(ref[0])):
        y = np.concatenate([np.ravel(r[index]) for r in ref]).astype(np.float64)
        y2 = np.concatenate([np.ravel(n[index]) for n in new]).astype(np.float64)
        worst = max(worst, float(np.linalg.norm(y2 - y) / np.linalg.norm(y)))
    return worst


def inferred_graph(model: onnx.ModelProto) -> ModelGraph:
    return build_graph(onnx.shape_inference.infer_shapes(model, strict_mode=True))


def binding(graph: ModelGraph, code: str, node: str, related: tuple[str, ...] = ()) -> object:
    """What the rule's check would bind on a finding at ``node``, matched here as the check
    matches it, whether or not the rule's thresholds would flag it (the planners' own tests)."""
    view, flagged = View(graph), graph.nodes[node]
    if code in ("CL001", "CL005"):
        return SpatialConv(flagged)
    if code == "CL003":
        ((second, between),) = view.users_of(flagged.outputs[0], through=FOLDABLE)
        return ConvChain(flagged, tuple(between), second)
    assert code == "CL002"
    (concat,) = [graph.nodes[name] for name in related if graph.nodes[name].op_type == "Concat"]
    return match_projection(view, flagged, concat)


def finding(code: str, node: str, related: tuple[str, ...] = (), bound: object = None) -> Finding:
    return Finding(code, "test", Severity.INFO, node, "Conv", "", related=related, binding=bound)


def target_for(
    model: onnx.ModelProto, code: str, node: str, related: tuple[str, ...] = ()
) -> Target:
    graph = inferred_graph(model)
    found = finding(code, node, related, binding(graph, code, node, related))
    return plan(found, graph, Weights(model), static_spatial=True)


def checked(path: Path) -> tuple[list[Finding], ModelGraph]:
    """`check`'s findings on a model with their bindings, and the graph they bind: what `fix`
    plans from."""
    kept: list[object] = []
    report = analyze(path, load_registry(plugins=False), Settings(), keep=kept, bindings=True)
    assert report.error is None, report.error
    graph = next(item for item in kept if isinstance(item, ModelGraph))
    return report.findings, graph


def findings_of(path: Path) -> list[Finding]:
    return analyze(path, load_registry(), Settings()).findings
