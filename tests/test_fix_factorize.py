"""Every factored form reproduces the conv at full rank, through onnxruntime, whatever the
kernel, stride, dilation, padding and spatial size; and the factorizer's numbers are exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from fix_helpers import max_abs_diff, random_inputs, target_for

from convlint.fixtures import GraphBuilder
from convlint.rewrite.budget import factor_candidates
from convlint.rewrite.edit import FactorTarget, Names, apply_edits
from convlint.rewrite.factorize import ConvFactorizer, ConvSite, Statistics

# (kernel, stride, dilation, pads (top, left, bottom, right) or auto_pad, input h×w)
GEOMETRIES = [
    ((1, 3), 1, 1, (0, 1, 0, 1), (9, 11)),
    ((3, 3), 1, 1, (1, 1, 1, 1), (9, 9)),
    ((3, 3), 2, 1, (0, 1, 2, 1), (11, 9)),
    ((5, 5), 1, 2, (4, 4, 4, 4), (13, 11)),
    ((5, 5), 2, 1, (1, 2, 0, 3), (12, 13)),
    ((7, 1), 1, 1, (3, 0, 3, 0), (15, 7)),
    ((7, 1), (2, 1), (1, 1), (1, 0, 2, 0), (17, 5)),
    ((3, 3), 2, 1, "SAME_UPPER", (10, 9)),
]


def conv_model(kernel, stride, dilation, pads, hw, *, cin=6, cout=5, bias=True):  # type: ignore[no-untyped-def]
    g = GraphBuilder(seed=3)
    x = g.input("input", (1, cin, *hw))
    auto = isinstance(pads, str)
    y = g.conv(
        x, cout, kernel, stride=stride, dilation=dilation, pads=0 if auto else pads, bias=bias,
        name="conv",
    )  # fmt: skip
    model = g.build("conv")
    if auto:  # replace explicit pads by auto_pad; the output is ceil(size / stride)
        node = model.graph.node[0]
        keep = [a for a in node.attribute if a.name != "pads"]
        del node.attribute[:]
        node.attribute.extend([*keep, onnx.helper.make_attribute("auto_pad", pads)])
        dims = model.graph.output[0].type.tensor_type.shape.dim
        for dim, size in zip(dims[2:], hw, strict=True):
            dim.dim_value = -(-size // stride)
    del y
    return model


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"k{g[0]}-s{g[1]}-{g[3]}-{g[4]}")
@pytest.mark.parametrize("method", ["weight", "data-aware"])
def test_every_form_is_exact_at_full_rank(geometry, method) -> None:  # type: ignore[no-untyped-def]
    model = conv_model(*geometry)
    target = target_for(model, "CL001", "conv")
    assert isinstance(target, FactorTarget)
    stats = None
    if method == "data-aware":
        rng = np.random.default_rng(0)
        mixing = rng.standard_normal((6, 6))
        stats = {
            "input": mixing @ mixing.T,
            target.conv.outputs[0]: np.eye(5) * 3.0,
            f"{target.conv.outputs[0]}#mean": np.zeros(5),
        }
    search = target.search(stats)
    feeds = random_inputs(model)
    forms: list[tuple[str, int | tuple[int, int]]] = [
        ("svd-reduce", 6),
        ("svd-expand", 5),
        ("tucker2", (6, 5)),
    ]
    kernel = geometry[0]
    # a spatial SVD splits kernels with both dims > 1: full rank is min(C_in·kh, C_out·kw)
    assert ("spatial-svd" in search.kinds) == (min(kernel) > 1)
    assert ("reduce-spatial" in search.kinds) == (min(kernel) > 1)
    if min(kernel) > 1:
        forms.append(("spatial-svd", min(6 * kernel[0], 5 * kernel[1])))
        forms.append(("reduce-spatial", (6, min(6 * kernel[0], 5 * kernel[1]))))
    for kind, rank in forms:
        factors = search.at_rank(kind, rank)
        assert factors.method == method
        rewritten = apply_edits(model, [target.edit(factors, Names(model))])
        onnx.checker.check_model(rewritten, full_check=True)
        assert max_abs_diff(model, rewritten, feeds) < 1e-4, kind


def test_costs_count_input_and_output_pixels_exactly() -> None:
    site = ConvSite(cout=64, cin=32, kernel=(3, 3), in_pixels=100, out_pixels=25, has_bias=True)
    search = ConvFactorizer(np.ones((64, 32, 3, 3)), site)
    assert search.cost("svd-reduce", 8) == (
        32 * 8 * 100 + 8 * 64 * 9 * 25,
        32 * 8 + 8 * 64 * 9 + 64,
    )
    assert search.cost("svd-expand", 8) == ((8 * 32 * 9 + 64 * 8) * 25, 8 * 32 * 9 + 64 * 8 + 64)
    assert search.cost("tucker2", (8, 4)) == (
        32 * 8 * 100 + (8 * 4 * 9 + 4 * 64) * 25,
        32 * 8 + 8 * 4 * 9 + 4 * 64 + 64,
    )
    assert site.macs() == 64 * 32 * 9 * 25


def test_spatial_svd_costs_the_vertical_conv_on_output_rows_and_input_columns() -> None:
    # a 3×3 stride-2 conv, 10×10 -> 5×5: the 3×1 conv runs on 5 rows × 10 columns
    site = ConvSite(64, 32, (3, 3), in_pixels=100, out_pixels=25, has_bias=True, mid_pixels=50)
    search = ConvFactorizer(np.ones((64, 32, 3, 3)), site)
    assert search.cost("spatial-svd", 8) == (
        32 * 3 * 8 * 50 + 8 * 64 * 3 * 25,
        32 * 3 * 8 + 8 * 64 * 3 + 64,
    )
    assert search.spatial_side.max_rank == 32 * 3
    unsized = ConvFactorizer(np.ones((64, 32, 3, 3)), ConvSite(64, 32, (3, 3), 100, 25))
    assert "spatial-svd" not in unsized.kinds  # no static sizes: the form is not offered


def test_reduce_spatial_costs_its_three_convs_on_their_own_pixels() -> None:
    # 10×10 -> 5×5 at stride 2: the 1×1 conv on 100 input pixels, the 3×1 on 5 rows × 10
    # columns, the 1×3 on the 25 output pixels
    site = ConvSite(64, 32, (3, 3), in_pixels=100, out_pixels=25, has_bias=True, mid_pixels=50)
    search = ConvFactorizer(np.ones((64, 32, 3, 3)), site)
    assert search.cost("reduce-spatial", (16, 8)) == (
        32 * 16 * 100 + 16 * 3 * 8 * 50 + 8 * 64 * 3 * 25,
        32 * 16 + 16 * 3 * 8 + 8 * 64 * 3 + 64,
    )


def test_planted_reduce_spatial_ranks_are_found_on_the_budget_curve() -> None:
    """A weight that is exactly a 1×1 conv to 16 channels, a 3×1 conv to 8 and a 1×3 conv: the
    combined form at (16, 8) reproduces it (proxy ~0) for fewer MACs than either single split,
    and the budget's curve offers it; ``cheapest`` and ``--rank`` never pick a two-rank split."""
    rng = np.random.default_rng(6)
    reduce = rng.standard_normal((16, 64))
    vertical = rng.standard_normal((8, 16, 3))
    horizontal = rng.standard_normal((96, 8, 3))
    weight = np.einsum("rc,dri,odj->ocij", reduce, vertical, horizontal)
    site = ConvSite(96, 64, (3, 3), 196, 196, mid_pixels=196)
    search = ConvFactorizer(weight, site)
    factors = search.at_rank("reduce-spatial", (16, 8))
    assert factors.proxy < 1e-6
    assert [w.shape for w in factors.weights] == [(16, 64, 1, 1), (8, 16, 3, 1), (96, 8, 1, 3)]
    rebuilt = np.einsum(
        "rc,dri,odj->ocij", factors.weights[0][:, :, 0, 0], factors.weights[1][..., 0],
        factors.weights[2][:, :, 0, :],
    )  # fmt: skip
    assert np.linalg.norm(rebuilt - weight) < 1e-6 * np.linalg.norm(weight)
    assert factors.macs == (64 * 16 + 16 * 3 * 8 + 8 * 96 * 3) * 196
    # the exact single forms cost more: svd-reduce at 16, spatial-svd at 8
    assert factors.macs < min(search.cost("svd-reduce", 16)[0], search.cost("spatial-svd", 8)[0])
    curve = factor_candidates(search, site.macs())
    exact = [c for c in curve if c.proxy < 1e-6]
    assert (exact[0].kind, exact[0].rank) == ("reduce-spatial", (16, 8))
    best = search.cheapest(1e-6)
    assert best is not None and best.kind != "reduce-spatial"
    fixed = search.fixed(rank=16)
    assert fixed is not None and fixed.kind not in ("spatial-svd", "reduce-spatial")


def test_reduce_spatial_is_named_reduce_vertical_horizontal_and_the_halves_silenced() -> None:
    model = conv_model((3, 3), 1, 1, (1, 1, 1, 1), (9, 9))
    target = target_for(model, "CL001", "conv")
    assert isinstance(target, FactorTarget)
    factors = target.search(None).at_rank("reduce-spatial", (4, 3))
    edit = target.edit(factors, Names(model))
    nodes = [n for replaced in edit.replace.values() for n in replaced]
    assert [n.name for n in nodes] == ["conv/reduce", "conv/vertical", "conv/horizontal"]
    assert [len(n.metadata_props) for n in nodes] == [0, 1, 1]
    assert edit.tail == (nodes[2].input[0], True)  # the refit reads the 1×3 conv's patches


def test_planted_spatial_rank_is_found_and_never_chosen_by_a_channel_rank() -> None:
    """A weight that is exactly a 3×1 conv to 5 channels then a 1×3 conv: the spatial SVD
    finds rank 5 and is the cheapest exact form; ``--rank`` names channel ranks only."""
    rng = np.random.default_rng(5)
    vertical = rng.standard_normal((5, 48, 3, 1))
    horizontal = rng.standard_normal((64, 5, 1, 3))
    weight = np.einsum("dci,odj->ocij", vertical[..., 0], horizontal[:, :, 0, :])
    site = ConvSite(64, 48, (3, 3), 196, 196, mid_pixels=196)
    search = ConvFactorizer(weight, site)
    best = search.cheapest(1e-6)
    assert best is not None and (best.kind, best.rank) == ("spatial-svd", 5)
    assert best.proxy < 1e-6
    assert [w.shape for w in best.weights] == [(5, 48, 3, 1), (64, 5, 1, 3)]
    assert best.macs == (48 * 3 * 5 + 5 * 64 * 3) * 196
    fixed = search.fixed(rank=5)
    assert fixed is not None and fixed.kind != "spatial-svd"


def test_spatial_svd_halves_are_named_and_silenced_for_cl001_and_cl005() -> None:
    model = conv_model((3, 3), 2, 1, (0, 1, 2, 1), (11, 9))
    target = target_for(model, "CL001", "conv")
    assert isinstance(target, FactorTarget)
    factors = target.search(None).at_rank("spatial-svd", 4)
    edit = target.edit(factors, Names(model))
    nodes = [n for replaced in edit.replace.values() for n in replaced]
    assert [n.name for n in nodes] == ["conv/vertical", "conv/horizontal"]
    attrs = [{a.name: list(a.ints) for a in n.attribute} for n in nodes]
    assert attrs[0] == {"kernel_shape": [3, 1], "strides": [2, 1], "pads": [0, 0, 2, 0],
                        "dilations": [1, 1]}  # fmt: skip
    assert attrs[1] == {"kernel_shape": [1, 3], "strides": [1, 2], "pads": [0, 1, 0, 1],
                        "dilations": [1, 1]}  # fmt: skip
    for node in nodes:
        assert {(p.key, p.value) for p in node.metadata_props} == {
            ("convlint.ignore", "CL001,CL005")
        }


def test_planted_input_rank_is_found_by_weight_svd() -> None:
    rng = np.random.default_rng(1)
    left, right = rng.standard_normal((64 * 9, 12)), rng.standard_normal((12, 48))
    weight = (left @ right).reshape(64, 3, 3, 48).transpose(0, 3, 1, 2)
    search = ConvFactorizer(weight, ConvSite(64, 48, (3, 3), 196, 196))
    best = search.cheapest(1e-6)
    assert best is not None and (best.kind, best.rank) == ("svd-reduce", 12)
    assert best.proxy < 1e-6


def test_tucker_hooi_never_worsens_hosvd() -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 12, 3, 3))
    search = ConvFactorizer(weight, ConvSite(16, 12, (3, 3), 49, 49))
    factors = search.at_rank("tucker2", (6, 7))
    reduce, core, expand = factors.weights
    rebuilt = np.einsum("ot,tr...,rc->oc...", expand[:, :, 0, 0], core, reduce[:, :, 0, 0])
    error = np.linalg.norm(rebuilt - weight) / np.linalg.norm(weight)
    assert error == pytest.approx(factors.proxy, rel=1e-6)
    assert (
        factors.proxy <= search._tucker_error(search._in.v[:, :6].T, search._out.u[:, :7]) + 1e-12
    )


def test_data_aware_finds_the_rank_of_the_response_not_of_the_weight() -> None:
    """Inputs confined to 4 channel directions: the response has rank 4 at the input side,
    though the weight is full rank; the weight SVD cannot see it."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((32, 24, 3, 3))
    basis = rng.standard_normal((24, 4))
    moment = basis @ basis.T
    site = ConvSite(32, 24, (3, 3), 64, 64)
    data = ConvFactorizer(weight, site, Statistics(moment, None))
    best = data.cheapest(0.05)
    assert best is not None and best.kind == "svd-reduce" and best.rank <= 6
    assert ConvFactorizer(weight, site).cheapest(0.05) is None
