"""Costs through shapes the graph computes (Shape/Gather/Mul/Concat -> Reshape, tf2onnx's
flatten, paddings computed from stored constants), the batch symbol counting as 1, and a model
whose cost stays partly unknown reported as incomplete, never as a silently low total."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convlint.engine import ModelReport, Settings, analyze
from convlint.registry import load_registry


def _hand_count_crnn(classes: int) -> int:
    """crnn_bilstm_computed_rows, layer by layer (1×1×32×128 input, one sample)."""
    conv = lambda cout, cin, k, pixels: cout * cin * k * pixels  # noqa: E731
    convs = (
        conv(64, 1, 9, 32 * 128)
        + conv(128, 64, 9, 16 * 64)
        + conv(256, 128, 9, 8 * 32)
        + conv(256, 256, 9, 8 * 32)
        + conv(256, 256, 9, 4 * 32)
        + conv(256, 256, 2, 1 * 32)
    )
    pools = 64 * 16 * 64 * 4 + 128 * 8 * 32 * 4 + 256 * 4 * 32 * 2 + 256 * 2 * 32 * 2
    batch_norms = 256 * 8 * 32 + 256 * 4 * 32 + 256 * 1 * 32
    lstm = 32 * 2 * 4 * 128 * (256 + 128)  # steps × directions × gates × hidden × (in + hidden)
    gemm = 32 * 256 * classes  # view(T * b, h): 32 rows per sample
    return convs + pools + batch_norms + lstm + gemm


@pytest.mark.parametrize("bound", [False, True])
def test_crnn_gemm_over_computed_rows_is_counted_per_row(
    bound: bool, model_file: Callable[..., Path]
) -> None:
    path = model_file("crnn_bilstm_computed_rows")
    shapes = {"input": (1, 1, 32, 128)} if bound else {}
    report = analyze(path, load_registry(), Settings(input_shapes=shapes))
    assert report.error is None and report.cost is not None
    hand = _hand_count_crnn(6625)
    assert hand == 451_493_888
    assert report.cost.macs is not None
    assert abs(report.cost.macs - hand) <= 0.01 * hand
    assert report.cost.macs == hand  # exact, in fact
    assert report.cost.nodes["rnn.1.embedding"].macs == 32 * 256 * 6625
    assert not report.cost.incomplete


def test_crnn_computed_rows_keep_the_batch_symbol(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, Any]]
) -> None:
    code, stats = cli_json("stats", str(model_file("crnn_bilstm_computed_rows")))
    assert code == 0
    shapes = {n["name"]: n["output_shapes"][0] for n in stats["nodes"]}
    assert shapes["rnn.1.view"] == ["32*N", 256]
    assert shapes["rnn.1.embedding"] == ["32*N", 6625]
    assert shapes["rnn.1.output"] == [32, "N", 6625]
    assert stats["total"]["macs"] == 451_493_888 and "incomplete" not in stats["total"]


@pytest.mark.parametrize("name", ["tf_flatten_dense", "tf_flatten_dense_vector"])
def test_tf2onnx_flatten_with_symbolic_batch(name: str, model_file: Callable[..., Path]) -> None:
    report = analyze(model_file(name), load_registry(), Settings(verbose=True))
    assert report.error is None and report.cost is not None
    # conv 3->32 3×3 at 28×28, dense 25088->64, logits 64->10
    assert report.cost.macs == 32 * 27 * 784 + 25088 * 64 + 64 * 10 == 2_283_648
    assert [(f.code, f.node) for f in report.findings] == [("CL004", "dense")]
    est = report.findings[0].estimate
    assert est is not None
    assert (est.params_before, est.params_after) == (25088 * 64 + 64, 32 * 64 + 64)
    assert (est.macs_before, est.macs_after) == (25088 * 64, 25088 + 32 * 64)
    assert any("shapes the graph computes evaluated for flatten" in n for n in report.notes)


@pytest.mark.parametrize("bound", [False, True])
def test_pads_computed_from_stored_constants(bound: bool, model_file: Callable[..., Path]) -> None:
    shapes = {"input": (1, 32, 32, 3)} if bound else {}
    report = analyze(model_file("tf_pad_computed"), load_registry(), Settings(input_shapes=shapes))
    assert report.cost is not None
    assert (report.cost.params, report.cost.macs) == (448, 16 * 27 * 32 * 32)


def test_padded_shape_keeps_the_batch_symbol(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, Any]]
) -> None:
    code, stats = cli_json("stats", str(model_file("tf_pad_computed")), "--verbose")
    shapes = {n["name"]: n["output_shapes"][0] for n in stats["nodes"]}
    # not the unk__0 the first inference made up for the batch
    assert shapes["pad"] == ["N", 34, 34, 3] and shapes["conv"] == ["N", 16, 32, 32]
    assert any("evaluated for pad" in note for note in stats["notes"])


def _check(path: Path) -> ModelReport:
    report = analyze(path, load_registry(), Settings(verbose=True))
    assert report.error is None
    return report


def test_unknown_costs_make_the_total_incomplete(
    tmp_path: Path,
    cli_json: Callable[..., tuple[int, Any]],
    cli: Callable[..., tuple[int, str, str]],
) -> None:
    from convlint import fixtures

    path = fixtures.save(fixtures.BUILDERS["recurrent_stack"](seq="T"), tmp_path / "seq.onnx")
    report = _check(path)
    assert report.cost is not None
    assert report.cost.macs is None
    assert report.cost.unknown_nodes == ["lstm", "gru", "rnn"]
    # The classifier's MatMul over T×1 rows, T the batch-like dim 0 of the input: 8·5.
    assert report.cost.macs_known == 40
    code, data = cli_json("check", str(path))
    assert data["models"][0]["cost"] == {
        "params": report.cost.params,
        "macs": None,
        "macs_per_input_pixel": None,
        "incomplete": True,
        "unknown_nodes": ["lstm", "gru", "rnn"],
        "macs_at_least": 40,
    }
    code, stats = cli_json("stats", str(path))
    assert stats["total"]["incomplete"] is True
    assert stats["total"]["unknown_nodes"] == ["lstm", "gru", "rnn"]
    code, out, _ = cli("stats", str(path))
    assert "at least 40" in out
    assert "MACs incomplete: at least 40 MACs; unknown for lstm, gru, rnn." in out
    code, out, _ = cli("check", str(path), "--verbose")
    assert (
        "note: MACs incomplete: at least 40 MACs; unknown for 3 nodes ('lstm', 'gru', 'rnn')" in out
    )


def test_a_complete_total_says_nothing_of_completeness(
    model_file: Callable[..., Path], cli_json: Callable[..., tuple[int, Any]]
) -> None:
    code, data = cli_json("check", str(model_file("conv3x3")))
    cost = data["models"][0]["cost"]
    assert cost["macs"] == 589_824 * 14 * 14
    assert "incomplete" not in cost and "unknown_nodes" not in cost


@pytest.mark.parametrize("stored_as", ["initializer", "Constant"])
def test_view_minus_one_with_a_symbolic_batch_counts_one_row(
    stored_as: str, tmp_path: Path
) -> None:
    """PyTorch's ``x.view(-1, 2048)`` on an N×32×8×8 map: ONNX inference leaves the rows
    ``unk__0``; the loader declares N×2048, so the Gemm counts one row per sample."""
    import numpy as np
    from graph_helpers import save_graph, zeros
    from onnx import helper, numpy_helper

    target = numpy_helper.from_array(np.array([-1, 2048], np.int64), "target")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    inits = [zeros("w", (32, 3, 3, 3)), zeros("fw", (10, 2048))]
    if stored_as == "initializer":
        inits.append(target)
    else:
        nodes.append(helper.make_node("Constant", [], ["target"], value=target))
    nodes += [
        helper.make_node("Reshape", ["c", "target"], ["r"], name="view"),
        helper.make_node("Gemm", ["r", "fw"], ["y"], name="fc", transB=1),
    ]
    path = save_graph(tmp_path / "view.onnx", nodes, {"x": ["N", 3, 8, 8]}, "y", inits)
    report = _check(path)
    assert report.cost is not None
    assert report.cost.nodes["fc"].macs == 2048 * 10
    assert report.cost.macs == 32 * 27 * 64 + 2048 * 10
