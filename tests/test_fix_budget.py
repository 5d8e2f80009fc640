"""`convlint fix` on trained-like weights: one budget for the whole model, response
reconstruction after the ReLU, channel pruning, real data for lossy rewrites, honest numbers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from fix_helpers import rel_l2
from onnx import helper, numpy_helper

from convlint import fixtures
from convlint.cli import main
from convlint.engine import Settings
from convlint.registry import load_registry
from convlint.rewrite import budget
from convlint.rewrite.budget import Candidate
from convlint.rewrite.pipeline import NEEDS_DATA, FixOptions, fix, held_out_count
from convlint.rewrite.report import render_json
from convlint.rewrite.verify import compare, expected_agreement, wilson_interval

FIX_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "fix.schema.json"


def _inputs(path: Path, shape: tuple[int, ...], count: int = 96, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, input=rng.standard_normal((count, *shape)).astype(np.float32))
    return path


def _fix(path: Path, **options):  # type: ignore[no-untyped-def]
    out = path.with_name(f"{path.stem}.fixed.onnx")
    return fix(path, load_registry(), Settings(), FixOptions(output=out, **options)), out


# -- lossy rewrites need real data ---------------------------------------------------------


def test_without_inputs_lossy_rewrites_are_refused_and_exact_ones_applied(tmp_path: Path) -> None:
    planted = fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "planted.onnx")
    result, out = _fix(planted, method="weight", samples=2, latency=False)
    assert result.written and result.rewrites == []
    assert [(s.code, s.node, s.reason) for s in result.skipped] == [("CL001", "conv", NEEDS_DATA)]
    assert any("1 approximate rewrite not applied: no --inputs" in n for n in result.report.notes)
    # The same model with --allow-noise: the planted rank is found.
    result, _ = _fix(planted, method="weight", samples=2, latency=False, allow_noise=True)
    assert [(r.kind, r.rank) for r in result.rewrites] == [("svd-reduce", 48)]
    # An exact fold needs no data.
    chain = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    result, _ = _fix(chain, samples=2, latency=False)
    assert [(r.code, r.kind) for r in result.rewrites] == [("CL003", "fold")]


def test_the_command_line_says_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "planted.onnx")
    argv = ["fix", str(planted), "-o", str(tmp_path / "o.onnx"), "--samples", "2"]
    assert main([*argv, "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert f"conv: CL001 skipped: {NEEDS_DATA}" in out
    assert "model: no rewrite applies (1 finding, none rewritten)" in out


# -- response reconstruction -----------------------------------------------------------------


def test_response_after_relu_is_reconstructed_where_weight_svd_finds_no_rank(
    tmp_path: Path,
) -> None:
    """Rank 32 reproduces the conv's output after its ReLU (96 of 128 channels are always
    zeroed), while the weight itself is full rank: the data-aware refit finds rank 32 within 5%;
    truncating the weight finds nothing within 5%."""
    path = fixtures.save(fixtures.relu_low_rank_response(), tmp_path / "relu.onnx")
    data = _inputs(tmp_path / "in.npz", (128, 12, 12))
    options = {"inputs": data, "samples": 96, "tolerance": 0.05, "latency": False}
    aware, out = _fix(path, method="data-aware", **options)
    assert [(r.kind, r.rank, r.method) for r in aware.rewrites] == [
        ("svd-expand", 32, "data-aware")
    ]
    (rewrite,) = aware.rewrites
    assert rewrite.macs_before == 21_233_664 and rewrite.macs_after == 5_898_240
    assert rewrite.verified.rel_l2_error < 0.05
    feeds = [{"input": a[None]} for a in np.load(data)["input"][-16:]]
    assert rel_l2(path, out, feeds) < 0.05
    weight, _ = _fix(path, method="weight", **options)
    assert weight.rewrites == []
    assert weight.skipped[0].reason.startswith("no rank within tolerance lowers MACs")


def test_reduced_rank_refit_recovers_an_activated_response_exactly() -> None:
    rng = np.random.default_rng(0)
    responses = rng.standard_normal((4096, 64))
    bias = np.full(64, -50.0)
    bias[:16] = 0.0
    targets = responses + bias  # 48 channels always below zero: rank 16 after the ReLU
    linear = budget.reduced_rank_refit(responses, targets, 16, relu=False)
    relu = budget.reduced_rank_refit(responses, targets, 16, relu=True)

    def error(factors: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        b, a, c = factors
        return budget.relative_error(responses @ (b @ a).T + c, targets, relu=True)

    assert error(linear) > 0.5
    assert error(relu) < 0.02


def test_refit_after_relu_is_never_worse_than_the_fit_before_it() -> None:
    """A response that is exactly linear in the features: the fit before the ReLU is exact,
    so the fit after it must be too. Starting only from the clipped response (as before) left
    the refit at 4e-2 here."""
    rng = np.random.default_rng(1)
    features = np.maximum(rng.standard_normal((4096, 40)) + 1.0, 0.0).astype(np.float32)
    weight = rng.standard_normal((24, 40))
    response = features.astype(np.float64) @ weight.T - 2.0  # about half of it below zero
    fitted, bias = budget.refit(features, response, relu=True)
    prediction = features.astype(np.float64) @ fitted.T + bias
    assert budget.relative_error(prediction, response, relu=True) < 1e-4


def test_refit_from_the_layer_as_it_is_never_ends_worse_than_it() -> None:
    """An output mix of a layer already close to its response after a sparse ReLU (a fifth of
    the entries above zero), as a pruning's correction is: from its own starts the alternation
    settles at 24% error, seven times the layer's own 3.3%; started from the identity too, it
    keeps the layer's fit and improves it."""
    rng = np.random.default_rng(0)
    channels = 64
    mixing = rng.standard_normal((channels, channels)) / np.sqrt(channels)
    before_relu = rng.standard_normal((6000, channels)) @ mixing.T * 2.0 - 1.5
    features = (before_relu + 0.05 * rng.standard_normal(before_relu.shape)).astype(np.float32)
    response = np.maximum(before_relu, 0.0)
    now = budget.relative_error(features.astype(np.float64), response, relu=True)
    identity = (np.eye(channels), np.zeros(channels))

    def error(start: tuple[np.ndarray, np.ndarray] | None) -> float:
        fitted, bias = budget.refit(features, response, relu=True, start=start)
        return budget.relative_error(features @ fitted.T + bias, response, relu=True)

    assert 0.030 < now < 0.036
    assert error(None) > 0.2  # what the refit did without the layer's own start
    assert error(identity) < now - 5e-4


def _chain_with_data(tmp_path: Path) -> tuple[Path, Path]:
    """``decaying_spectrum_chain`` saved, and 96 non-negative samples for it."""
    path = fixtures.save(fixtures.decaying_spectrum_chain(), tmp_path / "chain.onnx")
    rng = np.random.default_rng(1)
    data = tmp_path / "in.npz"
    np.savez(data, input=np.maximum(rng.standard_normal((96, 128, 8, 8)), 0).astype(np.float32))
    return path, data


def test_refits_run_in_graph_order_each_from_the_refits_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asymmetric reconstruction layer by layer (Zhang et al.): conv2's refit undoes conv1's
    error, so it must read conv1 as refitted. Each layer's features are sampled on their own,
    in graph order, from a model that holds the refits made before them in the same round;
    refitted all from one sampling (as before), conv1's error was undone twice."""
    from convlint.rewrite.prepare import RuntimeBench

    path, data = _chain_with_data(tmp_path)
    sampled: list[tuple[list[str], set[str]]] = []
    original = RuntimeBench.sample

    def spy(self, model, specs, what):  # type: ignore[no-untyped-def]
        if what == "sampling the rewritten model":
            refitted = {t.name for t in model.graph.initializer if "refit" in t.name}
            sampled.append(([spec.tensor for spec in specs], refitted))
        return original(self, model, specs, what)

    monkeypatch.setattr(RuntimeBench, "sample", spy)
    _fix(path, inputs=data, samples=96, tolerance=0.1, latency=False)
    # One layer's output per sampling (never both), and conv2's read with conv1 refitted:
    # the allocations with both convs refit conv1 first (its sampled error 5.8e-2 -> 4.4e-2).
    assert sampled and all(not ({"conv1", "conv2"} <= set(tensors)) for tensors, _ in sampled)
    conv2 = [refitted for tensors, refitted in sampled if "conv2" in tensors]
    assert any(any(name.startswith("conv1") for name in refitted) for refitted in conv2)
    assert all(not refitted for tensors, refitted in sampled if "conv1" in tensors)


def test_a_layer_after_the_same_rewrites_is_refitted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allocations of the bisection that share the rewrites up to a conv share its refit: the
    same model written, with fewer samplings than without the memo."""
    from convlint.rewrite import search
    from convlint.rewrite.prepare import RuntimeBench

    path, data = _chain_with_data(tmp_path)
    original = RuntimeBench.sample
    calls: list[str] = []

    def spy(self, model, specs, what):  # type: ignore[no-untyped-def]
        calls.append(what)
        return original(self, model, specs, what)

    monkeypatch.setattr(RuntimeBench, "sample", spy)

    def run(name: str) -> tuple[bytes, int]:
        calls.clear()
        out = tmp_path / f"{name}.onnx"
        fix(path, load_registry(), Settings(), FixOptions(output=out, **options))
        return out.read_bytes(), calls.count("sampling the rewritten model")

    options = {"inputs": data, "samples": 96, "tolerance": 0.1, "latency": False}
    memo, memo_samplings = run("memo")
    monkeypatch.setattr(search, "REFITS_KEPT", 0)
    plain, plain_samplings = run("plain")
    assert memo == plain
    assert memo_samplings < plain_samplings


def test_a_refit_is_never_reused_for_another_layer_of_the_same_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pruning is in the memo key of every layer of its allocation; conv1 factored and
    conv2 pruned gave both convs the same key, so conv2 got conv1's refit (VGG-16: a crash
    slicing conv1's narrowed weight). Every layer keeps its own rewrite after the refits."""
    from convlint.rewrite import search

    path, data = _chain_with_data(tmp_path)
    original = search.Searcher.refit
    seen: list[tuple[dict[str, str], dict[str, str]]] = []

    def spy(self, chosen, fixed):  # type: ignore[no-untyped-def]
        original(self, chosen, fixed)
        forms = {layer: c.factors.kind for layer, c in chosen.items() if c.factors}
        seen.append(
            ({layer: f"{c.target.code}:{c.target.node}" for layer, c in chosen.items()}, forms)
        )

    monkeypatch.setattr(search.Searcher, "refit", spy)
    _fix(path, inputs=data, samples=96, tolerance=0.1, latency=False)
    # the allocation that collided: conv1 factored while conv2 is pruned
    assert any(forms.get("CL001:conv2") == "prune" and "CL001:conv1" in forms for _, forms in seen)
    assert all(target == layer for targets, _ in seen for layer, target in targets.items())


# -- channel pruning -------------------------------------------------------------------------


def test_known_prunable_channels_are_pruned_exactly(tmp_path: Path) -> None:
    model = fixtures.prunable_channels()
    weight = numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "conv2.weight")
    )
    used = [c for c in range(128) if np.any(weight[:, c])]
    assert len(used) == 48
    path = fixtures.save(model, tmp_path / "prune.onnx")
    data = _inputs(tmp_path / "in.npz", (32, 12, 12))
    result, out = _fix(path, method="prune", inputs=data, samples=96, tolerance=1e-3, latency=False)
    (rewrite,) = result.rewrites
    assert (rewrite.kind, rewrite.method, rewrite.kept_channels) == ("prune", "prune", used)
    assert rewrite.verified.rel_l2_error < 1e-5
    assert result.cost_after is not None and result.report.cost is not None
    assert (result.report.cost.macs, result.cost_after.macs) == (26_542_080, 9_953_280)
    written = onnx.load(out)
    shapes = {t.name: tuple(t.dims) for t in written.graph.initializer}
    conv1 = next(n for n in written.graph.node if n.name == "conv1")
    assert shapes[conv1.input[1]] == (48, 32, 3, 3) and shapes[conv1.input[2]] == (48,)
    assert rewrite.as_dict()["kept_channels"] == used
    document = json.loads(render_json(result))
    jsonschema.Draft202012Validator(json.loads(FIX_SCHEMA.read_text())).validate(document)
    assert document["rewrites"][0]["method"] == "prune"


def test_a_pruning_is_timed_with_the_whole_model_not_alone(tmp_path: Path) -> None:
    """Its producer is narrowed too, so the pruned conv alone would be fed the old width
    (onnxruntime refused it on VGG-16): the whole models are timed, the rewrite is not."""
    path = fixtures.save(fixtures.prunable_channels(), tmp_path / "prune.onnx")
    data = _inputs(tmp_path / "in.npz", (32, 12, 12))
    result, _ = _fix(path, method="prune", inputs=data, samples=96, tolerance=1e-3)
    (rewrite,) = result.rewrites
    assert rewrite.kind == "prune" and rewrite.latency is None
    assert result.latency is not None and result.latency.runs >= 10
    assert not [n for n in result.report.notes if "latency not measured" in n]


def test_a_pruned_conv_that_still_reads_many_channels_is_kept_and_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """conv2 pruned from 256 to the 160 channels it uses still reads >= 128 channels: CL001
    would flag it again, so `fix` marks it ``convlint.ignore = CL001`` (a second budget on the
    same layer would compound the error) instead of dropping the pruning."""
    path = fixtures.save(
        fixtures.prunable_channels(channels=256, kept=160), tmp_path / "prune.onnx"
    )
    data = _inputs(tmp_path / "in.npz", (32, 12, 12))
    result, out = _fix(path, method="prune", inputs=data, samples=96, tolerance=1e-3, latency=False)
    (rewrite,) = result.rewrites
    assert (rewrite.kind, len(rewrite.kept_channels or [])) == ("prune", 160)
    conv2 = next(n for n in onnx.load(out).graph.node if n.name == "conv2")
    assert [(e.key, e.value) for e in conv2.metadata_props] == [("convlint.ignore", "CL001")]
    assert main(["check", str(out), "--format", "json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert [f["node"] for f in model["findings"] if f["code"] == "CL001"] == []
    assert [(f["code"], f["node"]) for f in model["suppressed"]] == [("CL001", "conv2")]


def test_no_pruning_leaves_a_widening_that_cl005_would_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """conv2 uses 24 of 128 channels, but a 3×3 24->128 conv widens 5.3×: CL005 (expansion
    ratio 4) would flag it and the recheck would drop it. The budget prunes to the fewest
    channels CL005 leaves alone, 128 // 4 + 1 = 33 rounded up to the ladder: 40, still exact."""
    path = fixtures.save(fixtures.prunable_channels(kept=24), tmp_path / "prune.onnx")
    data = _inputs(tmp_path / "in.npz", (32, 12, 12))
    result, out = _fix(path, method="prune", inputs=data, samples=96, tolerance=1e-3, latency=False)
    (rewrite,) = result.rewrites
    assert (rewrite.kind, len(rewrite.kept_channels or [])) == ("prune", 40)
    assert rewrite.verified.rel_l2_error < 1e-5
    assert main(["check", str(out), "--format", "json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert [f["code"] for f in model["findings"]] == []
    # With CL005 ignored the floor goes: the 24 used channels are kept and nothing else.
    result = fix(
        path,
        load_registry(),
        Settings(ignore=["CL005"]),
        FixOptions(
            output=tmp_path / "o.onnx",
            method="prune",
            inputs=data,
            samples=96,
            tolerance=1e-3,
            latency=False,
        ),
    )
    (rewrite,) = result.rewrites
    assert len(rewrite.kept_channels or []) == 24


# -- clean output ----------------------------------------------------------------------------


def _constants_for_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer as a Constant node, as paddle2onnx and some TensorFlow exports write."""
    nodes = [
        helper.make_node("Constant", [], [t.name], name=f"{t.name}/const", value=t)
        for t in model.graph.initializer
    ]
    rest = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend([*nodes, *rest])
    return model


def test_out_keeps_no_dead_constant_and_shrinks_with_its_params(tmp_path: Path) -> None:
    model = _constants_for_weights(fixtures.linear_conv_chain_bad())
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    result, out = _fix(path, samples=2, latency=False)
    assert [r.kind for r in result.rewrites] == ["fold"]
    written = onnx.load(out)
    read = {t for n in written.graph.node for t in n.input}
    constants = [n.output[0] for n in written.graph.node if n.op_type == "Constant"]
    # The folded convs' and BN's constants are gone; the BN after the fold keeps its four.
    assert constants == [f"conv_bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
    assert all(t in read for t in constants)
    assert all(t.name in read for t in written.graph.initializer)
    assert result.cost_after is not None and result.report.cost is not None
    ratio = result.cost_after.params / result.report.cost.params
    assert out.stat().st_size / path.stat().st_size == pytest.approx(ratio, rel=0.05)


def test_check_promises_the_fold_fix_performs_on_constant_node_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights held by Constant nodes (paddle2onnx) are stored weights: check calls the fold
    safe, and fix performs it."""
    path = tmp_path / "chain.onnx"
    onnx.save(_constants_for_weights(fixtures.linear_conv_chain_bad()), path)
    assert main(["check", str(path), "--format", "json"]) == 0  # CL003 is info
    (model,) = json.loads(capsys.readouterr().out)["models"]
    (finding,) = [f for f in model["findings"] if f["code"] == "CL003"]
    assert finding["fix"]["applicability"] == "safe"
    result, _ = _fix(path, samples=2, latency=False)
    assert [(r.code, r.kind) for r in result.rewrites] == [("CL003", "fold")]


# -- the budget's arithmetic -----------------------------------------------------------------


def _curve(*points: tuple[int, float]) -> list[Candidate]:
    return [
        Candidate("svd-reduce", i + 1, macs, macs, proxy) for i, (macs, proxy) in enumerate(points)
    ]


def test_pareto_keeps_only_candidates_no_other_beats() -> None:
    front = budget.pareto(_curve((10, 0.5), (20, 0.6), (30, 0.1), (25, 0.1), (40, 0.0)))
    assert [(c.macs, c.proxy) for c in front] == [(10, 0.5), (25, 0.1), (40, 0.0)]


def test_allocation_path_moves_one_layer_one_step_by_saving_per_error() -> None:
    curves = {
        "a": _curve((10, 0.5), (50, 0.1)),  # from 100: 50 saved for 0.01, then 40 for 0.24
        "b": _curve((20, 0.2)),  # from 100: 80 saved for 0.04
    }
    path = budget.allocation_path(curves, {"a": 100, "b": 100})
    steps = [{k: c.macs for k, c in allocation.items()} for allocation in path]
    assert steps == [{}, {"a": 50}, {"a": 50, "b": 20}, {"a": 10, "b": 20}]


def test_bisection_finds_the_last_allocation_that_holds() -> None:
    path: list[dict[str, Candidate]] = [{} for _ in range(100)]
    calls: list[int] = []

    def holds(allocation: dict[str, Candidate]) -> bool:
        index = next(i for i, a in enumerate(path) if a is allocation)
        calls.append(index)
        return index <= 37

    assert budget.most_aggressive(path, holds) == 37
    assert len(calls) <= budget.MAX_EVALS and calls[0] == 99
    assert budget.most_aggressive(path, lambda a: True) == 99


def test_a_layer_whose_step_breaks_the_budget_stays_and_the_others_go_on() -> None:
    """Layer a's second form is far worse than its proxy says (the whole model fails with
    it): the bisection stops before it, then a stays at its first form and b goes on to its
    cheapest, instead of every layer stopping where a broke the budget."""
    curves = {"a": _curve((10, 0.2), (50, 0.1)), "b": _curve((40, 0.5), (60, 0.3), (80, 0.15))}
    baselines = {"a": 100, "b": 100}
    path = budget.allocation_path(curves, baselines)
    assert [{k: c.macs for k, c in a.items()} for a in path[:3]] == [{}, {"a": 50}, {"a": 10}]
    calls: list[dict[str, int]] = []
    notes: list[str] = []

    def holds(allocation: dict[str, Candidate]) -> bool:
        calls.append({k: c.macs for k, c in allocation.items()})
        return allocation.get("a") is None or allocation["a"].macs != 10

    best = budget.spend(curves, baselines, holds, notes.append)
    assert {k: c.macs for k, c in best.items()} == {"a": 50, "b": 40}
    assert calls == [{"a": 10, "b": 40}, {"a": 10}, {"a": 50}, {"a": 50, "b": 40}]
    assert notes == [
        "budget: a stays at svd-reduce 2 (its next form broke the budget); the others go on"
    ]
    assert budget.spend(curves, baselines, lambda allocation: False) == {}


def test_ranks_are_multiples_of_eight_where_the_layer_is_wide_enough() -> None:
    assert budget.ladder(40) == [8, 16, 24, 32, 40]
    assert budget.ladder(12) == list(range(1, 13))


# -- honest numbers ------------------------------------------------------------------------


def test_wilson_interval_of_top1_agreement() -> None:
    low, high = wilson_interval(64, 64)
    assert (round(low, 4), high) == (0.9434, 1.0)
    low, high = wilson_interval(6, 6)
    assert round(low, 3) == 0.61  # "top-1 100%" from 6 images says little
    low, high = wilson_interval(45, 50)
    assert (round(low, 3), round(high, 3)) == (0.786, 0.957)


def test_held_out_samples_are_disjoint_and_at_least_64_when_given() -> None:
    assert [held_out_count(n) for n in (2, 32, 80, 128, 300)] == [1, 16, 64, 64, 150]


def test_top1_agreement_comes_with_its_interval_and_sample_count() -> None:
    reference = [[np.array([[0.1, 0.9]], np.float32)] for _ in range(50)]
    flipped = [[np.array([[0.9, 0.1]], np.float32)] for _ in range(5)]
    errors = compare(reference, [*reference[:45], *flipped], 10.0)
    assert errors.top1_agreement == 0.9 and errors.top1_samples == 50
    assert errors.as_dict()["top1_agreement_interval"] == list(wilson_interval(45, 50))


def test_expected_agreement_pairs_every_margin_with_every_change() -> None:
    # Pairs (i, j) with margin_i + change_j < 0: margin 1 with -1.5 and -2.5, margin 2 with -2.5.
    margins = np.array([1.0, 2.0, 3.0, 4.0])
    changes = np.array([0.0, -0.5, -1.5, -2.5])
    assert expected_agreement(margins, changes) == 1 - 3 / 16
    assert expected_agreement(margins, np.zeros(4)) == 1.0


def _logit_rows(margins: list[float], changes: list[float]) -> tuple[list, list]:
    """One row of two logits per sample: the top class by ``margin``, then moved by ``change``."""
    reference = [[np.array([[m, 0.0]], np.float32)] for m in margins]
    candidate = [
        [np.array([[m + c, 0.0]], np.float32)] for m, c in zip(margins, changes, strict=True)
    ]
    return reference, candidate


def test_min_top1_holds_on_the_margins_not_only_on_the_flips_counted() -> None:
    """No row of 50 flips, but changes of -1 meet the margins under 1 of the 10 closest rows:
    the agreement to expect is 1 - (5 changes of -1 x 10 margins under 1) / 2500 = 98%."""
    margins = [0.5] * 10 + [5.0] * 40
    changes = [-1.0 if i >= 45 else 0.1 for i in range(50)]  # the -1s fall on margins of 5
    reference, candidate = _logit_rows(margins, changes)
    errors = compare(reference, candidate, math.inf, min_top1=0.99)
    assert errors.top1_agreement == 1.0 and errors.top1_samples == 50
    assert errors.top1_expected == pytest.approx(1 - 50 / 2500)
    assert not errors.ok
    assert errors.as_dict()["top1_expected_agreement"] == pytest.approx(0.98)
    assert compare(reference, candidate, math.inf, min_top1=0.98).ok
    assert compare(reference, candidate, math.inf).ok  # no --min-top1: nothing bounds it


def test_samples_that_only_choose_ranks_judge_min_top1_by_the_expectation_alone() -> None:
    """One row of 50 sits at a tie (margin 0.01) and flips under a change of -0.02 that no other
    row's margin notices: counted, 49/50 = 98% breaks a 99% bound; expected, only that pair
    of 2,500 flips (99.96%). The samples that choose ranks read the expectation alone; those
    that verify (the promise) read both."""
    margins = [0.01] + [5.0] * 49
    changes = [-0.02] + [0.0] * 49
    reference, candidate = _logit_rows(margins, changes)
    counted = compare(reference, candidate, math.inf, min_top1=0.99)
    assert counted.top1_agreement == 0.98 and not counted.ok
    assert counted.top1_expected == pytest.approx(1 - 1 / 2500)
    assert compare(reference, candidate, math.inf, min_top1=0.99, counted=False).ok
    # ... and the expectation still binds them: a change of -6 on one row meets every margin
    changes = [0.0] * 49 + [-6.0]
    reference, candidate = _logit_rows(margins, changes)
    assert not compare(reference, candidate, math.inf, min_top1=0.99, counted=False).ok


def test_expected_agreement_reads_probabilities_as_logits_and_rounding_as_no_change() -> None:
    """Softmax rows: margins are log-ratios (the logits' differences), so a probability that
    moves from 0.999 to 0.99 is a change of log(999) - log(99) = 2.31, not of 0.009. A tie
    moved by float rounding (an exact fold) is no change: 100% expected."""
    reference = [[np.array([[0.999, 0.001]], np.float32)], [[np.array([[0.6, 0.4]], np.float32)]]]
    candidate = [[np.array([[0.99, 0.01]], np.float32)], [[np.array([[0.6, 0.4]], np.float32)]]]
    errors = compare(reference, candidate, math.inf)
    # The change -2.31 meets the margin log(1.5) = 0.41 of the second row: 1 of 4 pairs.
    assert errors.top1_agreement == 1.0 and errors.top1_expected == 0.75
    ties = [[np.array([[0.25, 0.25, 0.25, 0.25]], np.float32)] for _ in range(8)]
    rounded = [[np.array([[0.25, 0.25 + 1e-7, 0.25, 0.25 - 1e-7]], np.float32)] for _ in range(8)]
    assert compare(ties, rounded, math.inf, min_top1=1.0).top1_expected == 1.0


def test_an_output_near_zero_passes_on_its_absolute_floor() -> None:
    """A sigmoid map of an empty page: values ~1e-6 that a fold moves by rounding only."""
    reference = [[np.full((1, 1, 8, 8), 1e-6, np.float32)]]
    candidate = [[np.full((1, 1, 8, 8), 1.2e-6, np.float32)]]
    errors = compare(reference, candidate, 1e-3)
    assert errors.rel_l2_error == pytest.approx(0.2, rel=1e-3) and errors.ok
    moved = [[np.full((1, 1, 8, 8), 1e-3, np.float32)]]
    assert not compare(reference, moved, 1e-3).ok
    assert math.isclose(compare(reference, reference, 1e-3).rel_l2_error, 0.0)


def test_paddle_style_free_dims_take_the_data_sizes(tmp_path: Path) -> None:
    """paddle2onnx declares [-1, 3, "?", "?"]: -1 is any batch, and two "?" need not be equal."""
    model = fixtures.linear_conv_chain_bad()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = -1
    for dim in dims[2:]:
        dim.Clear()
        dim.dim_param = "?"
    model.graph.output[0].type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    path = tmp_path / "paddle.onnx"
    onnx.save(model, path)
    data = _inputs(tmp_path / "in.npz", (64, 7, 9), count=4)
    result, _ = _fix(path, inputs=data, latency=False)
    assert result.bound == {"input[0]": 1, "input[2]": 7, "input[3]": 9}
    # MACs exact at the data's sizes (OUT keeps the free dims, so the border fold waits)
    # 63 pixels: 1×1 64->256 (16,384 each), BN (256), 3×3 256->64 (147,456), BN (64)
    assert result.report.cost is not None
    assert result.report.cost.macs == (16_384 + 256 + 147_456 + 64) * 63 == 10_342_080
    (skip,) = result.skipped
    assert "the spatial size is symbolic" in skip.reason


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("--min-saving", "1.5", "--min-saving (min_saving) must be in [0, 1)"),
        ("--min-saving", "-0.1", "--min-saving (min_saving) must be in [0, 1)"),
        ("--method", "svd", "invalid choice: 'svd'"),
    ],
)
def test_bad_values_of_the_new_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, phrase: str
) -> None:
    planted = fixtures.save(fixtures.conv3x3(hw=6), tmp_path / "conv.onnx")
    assert main(["fix", str(planted), "-o", str(tmp_path / "o.onnx"), option, value]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err


def test_a_higher_minimum_saving_leaves_a_small_saving_alone(tmp_path: Path) -> None:
    planted = fixtures.save(fixtures.conv3x3(planted_rank=192, hw=6), tmp_path / "planted.onnx")
    options = {"method": "weight", "samples": 2, "latency": False, "allow_noise": True}
    result, _ = _fix(planted, **options)
    (rewrite,) = result.rewrites  # rank 192 of 256: 17% fewer MACs
    assert rewrite.macs_after is not None and rewrite.macs_before is not None
    assert 0.1 <= 1 - rewrite.macs_after / rewrite.macs_before < 0.5
    result, _ = _fix(planted, min_saving=0.5, **options)
    assert result.rewrites == [] and result.skipped[0].reason.startswith("no rank")


def test_a_conv_too_wide_to_refit_has_its_outputs_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last conv whose patches are wider than the refit's bound (here: every conv, the
    bounds set to 0) is not left as factorized: a C_out × C_out map of its outputs is fitted
    to the original response after the ReLU and folded into it. Every allocation the budget
    measures is then closer to the original than the same allocation unrefitted."""
    from convlint.rewrite import edit

    path = fixtures.save(fixtures.relu_low_rank_response(), tmp_path / "relu.onnx")
    data = _inputs(tmp_path / "in.npz", (128, 12, 12))
    options = {"inputs": data, "samples": 96, "tolerance": 0.05, "latency": False}
    monkeypatch.setattr(edit, "MAX_PATCH_WIDTH", 0)
    monkeypatch.setattr(edit, "MAX_REFIT_WIDTH", 0)

    def measured() -> dict[str, float]:
        out = tmp_path / "out.onnx"
        fix(path, load_registry(), Settings(), FixOptions(output=out, **options), verbose=True)
        lines = capsys.readouterr().err.splitlines()
        found = [
            re.search(r"budget: 1 rewrites, MACs [\d,]+ -> ([\d,]+): rel L2 (\S+)", line)
            for line in lines
        ]
        return {m.group(1): float(m.group(2)) for m in found if m}

    mixed = measured()
    monkeypatch.setattr(edit.FactorTarget, "refit_job", lambda *args: None)
    plain = measured()
    assert len(mixed) >= 3 and mixed.keys() == plain.keys()
    # measured: 0.821 vs 0.948 at the path's end, 0.708 vs 0.744 at svd-expand 32
    assert all(mixed[macs] < 0.97 * plain[macs] for macs in mixed)
