"""`convlint fix` end to end on models with a known answer; every result is re-checked here with
onnxruntime on fresh inputs, outside fix's own verifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from fix_helpers import findings_of, max_abs_diff, random_inputs, rel_l2, target_for

from convlint import fixtures
from convlint.engine import Settings
from convlint.fixtures import GraphBuilder, dialects
from convlint.registry import load_registry
from convlint.rewrite.edit import FoldTarget, Names, PoolTarget, apply_edits
from convlint.rewrite.pipeline import FixOptions, fix


def run_fix(path: Path, **options):  # type: ignore[no-untyped-def]
    out = path.with_name(f"{path.stem}.fixed.onnx")
    settings = Settings(select=options.pop("select", ["ALL"]))
    # Untimed: what these tests check must not hang on what the timing on a busy machine says.
    options.setdefault("latency", False)
    # The planted-rank fixtures are fitted on seeded noise on purpose: their rank is in the weight.
    options.setdefault("allow_noise", True)
    result = fix(path, load_registry(), settings, FixOptions(output=out, **options))
    return result, out


def test_planted_rank_48_conv_is_rewritten_at_rank_48_with_exact_savings(tmp_path: Path) -> None:
    hw = 8
    path = fixtures.save(fixtures.conv3x3(planted_rank=48, hw=hw), tmp_path / "conv.onnx")
    result, out = run_fix(path, method="weight", samples=2)
    assert result.written and result.verification is not None and result.verification.ok
    (rewrite,) = result.rewrites
    assert (rewrite.code, rewrite.kind, rewrite.method) == ("CL001", "svd-reduce", "weight")
    assert rewrite.rank == 48
    pixels = hw * hw
    assert rewrite.params_before == 256 * 256 * 9
    assert rewrite.params_after == 256 * 48 + 48 * 256 * 9
    assert rewrite.macs_before == 256 * 256 * 9 * pixels
    assert rewrite.macs_after == (256 * 48 + 48 * 256 * 9) * pixels
    assert rewrite.verified.rel_l2_error < 1e-4 and rewrite.verified.max_abs_error < 1e-4
    assert result.cost_after is not None and result.cost_after.params == 256 * 48 + 48 * 256 * 9
    onnx.checker.check_model(str(out), full_check=True)
    assert max_abs_diff(path, out, random_inputs(onnx.load(path), seed=7)) < 1e-4


@pytest.mark.parametrize("tolerance", [1e-3, 0.05])
def test_random_full_rank_weights_never_break_the_tolerance(
    tmp_path: Path, tolerance: float
) -> None:
    model = fixtures.conv3x3(cin=128, cout=128, hw=6, bias=True, seed=5)
    path = fixtures.save(model, tmp_path / "conv.onnx")
    result, out = run_fix(path, method="weight", tolerance=tolerance, samples=4)
    assert result.written
    if tolerance == 1e-3:
        assert not result.rewrites
        (skip,) = result.skipped
        assert skip.reason.startswith("no rank within tolerance lowers MACs")
        assert "retrained bottleneck would save" in skip.reason
    fresh = random_inputs(model, samples=4, seed=99)
    assert rel_l2(path, out, fresh) <= tolerance


def test_fold_with_batchnorm_and_padding_is_exact(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.linear_conv_chain_bad(), tmp_path / "chain.onnx")
    result, out = run_fix(path)
    (rewrite,) = result.rewrites
    assert (rewrite.code, rewrite.kind, rewrite.rank) == ("CL003", "fold", None)
    folded = onnx.load(out)
    assert [n.op_type for n in folded.graph.node][:2] == ["Conv", "Add"]  # border bias map
    assert max_abs_diff(path, out, random_inputs(folded, seed=3)) < 1e-4


def test_fold_through_caffe_scale_as_mul_add_is_exact(tmp_path: Path) -> None:
    from convlint.fixtures import dialects

    caffe = dialects.to_caffe(fixtures.linear_conv_chain_bad())
    assert not any(n.op_type == "BatchNormalization" for n in caffe.graph.node)
    path = fixtures.save(caffe, tmp_path / "caffe_chain.onnx")
    result, out = run_fix(path)
    (rewrite,) = result.rewrites
    assert (rewrite.code, rewrite.node, rewrite.kind) == ("CL003", "expand", "fold")
    folded = onnx.load(out)
    assert "expand" not in {n.name for n in folded.graph.node}
    assert max_abs_diff(path, out, random_inputs(folded, seed=3)) < 1e-4


def fold_model(first_k: int, second_k: int, *, stride: int, pads, bias: bool, bn: bool):  # type: ignore[no-untyped-def]
    g = GraphBuilder(seed=11)
    x = g.input("input", (1, 8, 11, 9))
    y = g.conv(x, 32, first_k, pads=first_k // 2, bias=bias, name="first")
    y = g.bn(y, name="bn") if bn else g.node("Identity", [y], g.shape(y), name="identity")
    y = g.conv(y, 6, second_k, stride=stride, pads=pads, bias=bias, name="second")
    g.relu(y, name="relu")
    return g.build("fold")


@pytest.mark.parametrize(
    ("first_k", "second_k", "stride", "pads", "bias", "bn"),
    [
        (1, 3, 1, 1, True, False),
        (1, 3, 2, (0, 1, 2, 1), True, True),
        (1, 5, 1, 2, False, True),
        (3, 1, 1, 0, True, True),
        (1, 1, 2, 0, True, True),
    ],
)
def test_fold_is_exact_at_borders_strides_and_bias(
    first_k: int, second_k: int, stride: int, pads: object, bias: bool, bn: bool
) -> None:
    model = fold_model(first_k, second_k, stride=stride, pads=pads, bias=bias, bn=bn)
    target = target_for(model, "CL003", "first")
    assert isinstance(target, FoldTarget)
    rewritten = apply_edits(model, [target.edit(None, Names(model))])
    onnx.checker.check_model(rewritten, full_check=True)
    assert len(rewritten.graph.node) <= 3
    assert max_abs_diff(model, rewritten, random_inputs(model)) < 1e-4


def pool_model(*, nonlinear: bool, rank: int | None = None):  # type: ignore[no-untyped-def]
    """x -> 1×1/4 and x -> maxpool (12 channels) -> concat -> two conv consumers."""
    g = GraphBuilder(seed=2)
    x = g.input("input", (1, 12, 9, 9))
    a = g.conv(x, 4, 1, name="branch")
    p = g.maxpool(x, 3, 1, 1, name="pool")
    c = g.concat([a, p], name="concat")
    if nonlinear:
        c = g.relu(c, name="concat_relu")
    y1 = g.conv(c, 6, 3, name="head3x3")
    y2 = g.conv(c, 5, 1, name="head1x1")
    model = g.build("pool", [y1, y2])
    if rank is not None:  # the consumers read the pooled channels through a rank-r map
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((rank, 12))
        for init in model.graph.initializer:
            if init.name in ("head3x3.weight", "head1x1.weight"):
                w = onnx.numpy_helper.to_array(init).copy()
                mix = rng.standard_normal((w.shape[0], rank, *w.shape[2:]))
                w[:, 4:] = np.einsum("or...,rc->oc...", mix, basis)
                init.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), init.name))
    return model


def test_pool_projection_is_exact_at_the_rank_of_the_stacked_slices(tmp_path: Path) -> None:
    model = pool_model(nonlinear=False)
    target = target_for(model, "CL002", "pool", related=("concat",))
    assert isinstance(target, PoolTarget) and not target.unsafe
    search = target.search(None)
    full = search.at_rank(12)
    rewritten = apply_edits(model, [target.edit(full, Names(model))])
    onnx.checker.check_model(rewritten, full_check=True)
    assert max_abs_diff(model, rewritten, random_inputs(model)) < 1e-4

    planted = pool_model(nonlinear=False, rank=3)
    path = fixtures.save(planted, tmp_path / "pool.onnx")
    assert [f.code for f in findings_of(path)] == ["CL002"]
    result, out = run_fix(path, method="weight", samples=2)
    (rewrite,) = result.rewrites
    assert (rewrite.kind, rewrite.rank) == ("pool-projection", 3)
    assert rewrite.macs_after < rewrite.macs_before
    assert max_abs_diff(path, out, random_inputs(planted, seed=5)) < 1e-4


def test_pool_branch_through_a_transpose_pair_is_projected(tmp_path: Path) -> None:
    """Issue 17: the rule finds the pool through NHWC Transposes (the view looks through layout
    steps), and so does the rewrite now, rather than skipping "the pooled channels enter the
    concat more than once"; the projection goes at the concat's input, after the Transposes."""
    model = fixtures.pool_branch_through_transposes(planted_rank=3)
    path = fixtures.save(model, tmp_path / "transposed.onnx")
    (finding,) = findings_of(path)
    assert finding.code == "CL002" and finding.node == "pool"
    assert finding.fix is not None and finding.fix.applicability.value == "approximate"
    result, out = run_fix(path, method="weight", samples=2)
    assert result.skipped == []
    (rewrite,) = result.rewrites
    assert (rewrite.code, rewrite.kind, rewrite.rank) == ("CL002", "pool-projection", 3)
    assert (rewrite.params_before, rewrite.params_after) == (870, 420)
    assert (rewrite.macs_before, rewrite.macs_after) == (69984, 33534)
    assert result.written and result.verification is not None and result.verification.ok
    written = onnx.load(out)
    projection = next(n for n in written.graph.node if n.name == "pool/proj")
    assert list(projection.input)[0] == "pool/to_nchw"  # after the Transpose pair
    concat = next(n for n in written.graph.node if n.name == "concat")
    assert list(concat.input) == ["branch", list(projection.output)[0]]
    assert max_abs_diff(path, out, random_inputs(model, seed=5)) < 1e-4
    assert findings_of(out) == []


def test_pool_branch_of_a_channels_last_export_is_projected(tmp_path: Path) -> None:
    """TensorFlow's NHWC export (every conv and pool wrapped in Transposes, the concat on axis
    3, its convs reading it through Transposes): the projection is inserted on the pooled
    channels before the branch's Transpose to NHWC, the concat narrows on its axis 3, and the
    consumers' weights fold it in through their Transposes, exactly at the planted rank."""
    model = dialects.to_tensorflow(pool_model(nonlinear=False, rank=3))
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    assert [a.i for a in concat.attribute if a.name == "axis"] == [3]
    path = fixtures.save(model, tmp_path / "nhwc.onnx")
    (finding,) = findings_of(path)
    assert finding.fix is not None and finding.fix.applicability.value == "approximate"
    result, out = run_fix(path, method="weight", samples=2)
    assert result.skipped == []
    (rewrite,) = result.rewrites
    assert (rewrite.kind, rewrite.rank) == ("pool-projection", 3)
    assert (rewrite.macs_before, rewrite.macs_after) == (76464, 36369)
    written = onnx.load(out)
    projection = next(n for n in written.graph.node if n.name == "pool/proj")
    assert list(projection.input)[0] == "pool/nchw"  # before the Transpose to NHWC
    assert max_abs_diff(path, out, random_inputs(model, seed=5)) < 1e-4
    assert findings_of(out) == []


def test_nonlinear_pool_consumer_is_unsafe_and_needs_the_flag(tmp_path: Path) -> None:
    path = fixtures.save(pool_model(nonlinear=True, rank=3), tmp_path / "pool.onnx")
    result, _ = run_fix(path, method="weight", samples=2, select=["CL002"])
    (skip,) = result.skipped
    assert "unsafe" in skip.reason and "--unsafe-fixes" in skip.reason
    # A projection before the ReLU never commutes with it: within a tight tolerance the report
    # says how far the best try moved the outputs; a loose one accepts it and reports it.
    options = {"method": "weight", "samples": 2, "select": ["CL002"], "unsafe_fixes": True}
    result, _ = run_fix(path, tolerance=0.5, **options)
    (skip,) = result.skipped
    assert "unsafe: the best projection tried moved the outputs by" in skip.reason
    result, out = run_fix(path, tolerance=2.0, **options)
    assert result.written
    (rewrite,) = result.rewrites
    assert rewrite.unsafe and rewrite.kind == "pool-projection"
    assert rewrite.verified.rel_l2_error > 0.1  # the outputs moved, and the report says so
    assert rel_l2(path, out, random_inputs(onnx.load(path), seed=8)) <= 2.0


def test_concat_that_is_a_graph_output_is_skipped(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.inception_3a_reduced(), tmp_path / "3a.onnx")
    result, _ = run_fix(path, select=["CL002"], samples=2)
    (skip,) = result.skipped
    assert "graph output" in skip.reason


def test_data_aware_compresses_what_the_weights_alone_cannot(tmp_path: Path) -> None:
    """Activations confined to 8 channel directions of 128: data-aware finds rank 8."""
    model = fixtures.conv3x3(cin=128, cout=128, hw=6, seed=1)
    path = fixtures.save(model, tmp_path / "conv.onnx")
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((128, 8)).astype(np.float32)
    latent = rng.standard_normal((8, 8, 6, 6)).astype(np.float32)
    samples = np.einsum("cr,nrhw->nchw", mixing, latent)[:, None]  # (samples, 1, 128, 6, 6)
    np.savez(tmp_path / "inputs.npz", input=samples)
    weight, _ = run_fix(path, method="weight", inputs=tmp_path / "inputs.npz")
    assert not weight.rewrites
    data, out = run_fix(path, method="data-aware", inputs=tmp_path / "inputs.npz")
    (rewrite,) = data.rewrites
    assert rewrite.method == "data-aware" and rewrite.kind == "svd-reduce"
    assert rewrite.rank <= 8
    assert "fitted on 4, verified on the other 4" in data.inputs
    fresh_latent = rng.standard_normal((3, 8, 6, 6)).astype(np.float32)
    fresh = [{"input": np.einsum("cr,rhw->chw", mixing, z)[None]} for z in fresh_latent]
    assert rel_l2(path, out, fresh) <= 1e-3


def test_external_data_stays_external(tmp_path: Path) -> None:
    model = fixtures.conv3x3(planted_rank=16, cin=128, cout=128, hw=6)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="ext.weights", size_threshold=0
    )
    result, out = run_fix(path, method="weight", samples=2)
    assert result.written and result.rewrites
    data = out.with_name(f"{out.name}.data")
    assert data.exists() and data.stat().st_size > 0
    written = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in written.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)
    assert max_abs_diff(path, out, random_inputs(model)) < 1e-4


def test_two_convs_sharing_one_weight_get_distinct_factors(tmp_path: Path) -> None:
    g = GraphBuilder(seed=6)
    x = g.input("input", (1, 128, 6, 6))
    a = g.conv(x, 64, 3, bias=False, name="a", rank=8)
    b = g.conv(x, 64, 3, bias=False, name="b", weight="a.weight", pads=(0, 0, 2, 2))
    model = g.build("shared", [a, b])
    path = fixtures.save(model, tmp_path / "shared.onnx")
    result, out = run_fix(path, method="weight", samples=2)
    assert sorted(r.node for r in result.rewrites) == ["a", "b"]
    assert "a.weight" not in {t.name for t in onnx.load(out).graph.initializer}
    assert max_abs_diff(path, out, random_inputs(model)) < 1e-4


def test_a_combination_that_breaks_the_tolerance_drops_the_worst_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rewrite passes alone; the combined model is made to fail once: the rewrite that
    moved the outputs most cannot be tightened (its rank is already exact), so it is dropped."""
    from convlint.rewrite.prepare import RuntimeBench
    from convlint.rewrite.verify import Errors

    measure = RuntimeBench.measure
    failed: list[str] = []

    def failing_once(self, model, what, early=False, confirm=False):  # type: ignore[no-untyped-def]
        if what == "verifying the combined rewrites" and not failed:
            failed.append(what)
            return Errors(1.0, 1.0, False)
        return measure(self, model, what, early, confirm)

    monkeypatch.setattr(RuntimeBench, "measure", failing_once)
    path = fixtures.save(fixtures.inception_3a_naive(planted_rank=24), tmp_path / "3a.onnx")
    result, out = run_fix(path, method="weight", samples=2, select=["CL001"])
    assert failed and len(result.rewrites) == 1
    assert any(s.reason.startswith("dropped: together with") for s in result.skipped)
    assert result.written and result.verification is not None and result.verification.ok
    assert max_abs_diff(path, out, random_inputs(onnx.load(path))) < 1e-4


def test_symbolic_dims_are_bound_for_analysis_and_kept_in_out(tmp_path: Path) -> None:
    g = GraphBuilder(seed=9)
    x = g.input("input", ("N", 128, "H", "W"))
    y = g.relu(g.conv(x, 128, 3, bias=False, name="wide", rank=8), name="relu")
    y = g.bn(g.conv(y, 256, 1, name="expand"), name="bn")
    g.conv(y, 32, 3, name="spatial")
    model = g.build("symbolic")
    path = fixtures.save(model, tmp_path / "symbolic.onnx")
    settings = Settings(input_shapes={"input": (1, 128, 8, 8)})
    out = tmp_path / "out.onnx"
    options = FixOptions(out, method="weight", samples=2, latency=False, allow_noise=True)
    result = fix(path, load_registry(), settings, options)
    assert [(r.code, r.rank) for r in result.rewrites] == [("CL001", 8)]
    (skip,) = result.skipped
    assert skip.code == "CL003" and "symbolic" in skip.reason
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 128, "H", "W"]
    rng = np.random.default_rng(1)
    other_size = [{"input": rng.standard_normal((2, 128, 10, 12)).astype(np.float32)}]
    assert max_abs_diff(path, out, other_size) < 1e-4


def test_bias_shared_through_identity_is_rewritten(tmp_path: Path) -> None:
    """PyTorch exports share equal biases through Identity nodes; fix must see their values."""
    model = fixtures.conv3x3(cin=128, cout=128, hw=6, bias=True, planted_rank=8, seed=3)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    bias = conv.input[2]
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [bias], ["shared"], name="id"))
    conv.input[2] = "shared"
    path = fixtures.save(model, tmp_path / "shared_bias.onnx")
    result, out = run_fix(path, method="weight", tolerance=1e-3, samples=2)
    assert [r.rank for r in result.rewrites] == [8]
    assert not result.skipped
    assert max_abs_diff(path, out, random_inputs(model, seed=11)) < 1e-4
