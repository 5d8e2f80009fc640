"""CL004 passes over a dense layer whose input was already reduced over space (ConvNeXt's
head), however the pooling and the steps after it are written; a flattened map still fires."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from graph_helpers import save_graph, zeros
from onnx import helper, numpy_helper

from convlint.engine import ModelReport, Settings, analyze
from convlint.registry import load_registry


def _check(path: Path) -> ModelReport:
    report = analyze(path, load_registry(), Settings(verbose=True))
    assert report.error is None, report.error
    return report


def _head(tmp_path: Path, name: str, pooling: Sequence[onnx.NodeProto], after: str) -> Path:
    """x[1,64,7,7] -> pooling ... -> ``after`` -> Flatten -> Gemm 64->10."""
    nodes = [
        *pooling,
        helper.make_node("Flatten", [after], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["y"], name="fc", transB=1),
    ]
    inits = [zeros("w", (10, 64)), zeros("b", (10,)), zeros("gamma", (64,)), zeros("beta", (64,))]
    inits += [numpy_helper.from_array(np.array([1, 64, 1, 1], np.int64), "shape4")]
    return save_graph(tmp_path / f"{name}.onnx", nodes, {"x": [1, 64, 7, 7]}, "y", inits)


BN = ["gamma", "beta", "gamma", "beta"]
HEADS: dict[str, Callable[[], list[onnx.NodeProto]]] = {
    "global_average_pool": lambda: [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool")
    ],
    "global_max_pool_batchnorm": lambda: [
        helper.make_node("GlobalMaxPool", ["x"], ["q"], name="pool"),
        helper.make_node("BatchNormalization", ["q", *BN], ["p"], name="bn"),
    ],
    "reduce_mean_keepdims": lambda: [
        helper.make_node("ReduceMean", ["x"], ["p"], name="pool", axes=[2, 3], keepdims=1)
    ],
    "reduce_max_then_reshape": lambda: [
        helper.make_node("ReduceMax", ["x"], ["q"], name="pool", axes=[-1, -2], keepdims=0),
        helper.make_node("Reshape", ["q", "shape4"], ["p"], name="reshape"),
    ],
    "adaptive_avg_pool_as_average_pool": lambda: [
        helper.make_node("AveragePool", ["x"], ["p"], name="pool", kernel_shape=[7, 7])
    ],
    "layer_norm_channels_last": lambda: [
        helper.make_node("GlobalAveragePool", ["x"], ["q"], name="pool"),
        helper.make_node("Transpose", ["q"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("Transpose", ["n"], ["p"], name="to_nchw", perm=[0, 3, 1, 2]),
    ],
}


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_dense_layer_on_pooled_values_is_not_a_dense_head(kind: str, tmp_path: Path) -> None:
    report = _check(_head(tmp_path, kind, HEADS[kind](), "p"))
    assert not report.findings
    reasons = [s.reason for s in report.skips if s.code == "CL004"]
    assert len(reasons) == 1
    assert reasons[0].startswith("its input was reduced over space by ")
    assert reasons[0].endswith(" 'pool'")


def test_reduction_over_one_spatial_axis_is_no_pooling(tmp_path: Path) -> None:
    """ReduceMean over H alone leaves a 64×1×7 map: the 448->10 layer reads positions."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["p"], name="pool", axes=[2], keepdims=1),
        helper.make_node("Flatten", ["p"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transB=1),
    ]
    path = save_graph(
        tmp_path / "h.onnx", nodes, {"x": [1, 64, 7, 7]}, "y", [zeros("w", (10, 448))]
    )
    report = _check(path)
    assert [(f.code, f.node) for f in report.findings] == [("CL004", "fc")]


def test_reduce_mean_over_space_costs_what_global_average_pool_costs(tmp_path: Path) -> None:
    gap = _check(_head(tmp_path, "gap", HEADS["global_average_pool"](), "p"))
    mean = _check(_head(tmp_path, "mean", HEADS["reduce_mean_keepdims"](), "p"))
    assert gap.cost is not None and mean.cost is not None
    assert gap.cost.nodes["pool"].macs == mean.cost.nodes["pool"].macs == 64 * 7 * 7
    assert gap.cost.macs == mean.cost.macs == 64 * 49 + 64 * 10


def test_convnext_head_is_silent_and_costed(lint: Callable[..., ModelReport]) -> None:
    for name in ("convnext_head", "convnext_head_reduce_mean"):
        report = lint(name, Settings(verbose=True))
        assert report.findings == []
        assert [s.reason for s in report.skips if s.code == "CL004"] == [
            f"its input was reduced over space by "
            f"{'GlobalAveragePool' if name == 'convnext_head' else 'ReduceMean'} 'avgpool'"
        ]
        assert report.cost is not None
        # conv 2×2/2 384->768 at 7×7, LayerNorm over 384×14×14 and 768, pooling 768×7×7,
        # Linear 768->1000
        conv = 768 * 384 * 4 * 49
        assert report.cost.macs == conv + 384 * 196 + 768 + 768 * 49 + 768 * 1000
