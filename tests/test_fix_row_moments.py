"""The spatial SVD's data-aware factor reads the moment of the vertical patch its kh×1 conv sees:
the per-pixel moment and the moments between rows 1 .. kh-1 apart, measured in onnxruntime's
process (``verify._serve_moments``, each statistic asked as ``(tensor, rows apart)``) and
assembled by ``factorize.vertical_moment``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from fix_helpers import target_for

from convlint import fixtures
from convlint.engine import Settings
from convlint.fixtures import GraphBuilder
from convlint.registry import load_registry
from convlint.rewrite import verify
from convlint.rewrite.edit import FactorTarget
from convlint.rewrite.factorize import ConvFactorizer, ConvSite, Statistics, vertical_moment
from convlint.rewrite.pipeline import FixOptions, fix

CHANNELS, HEIGHT, WIDTH = 5, 48, 20


def _smooth_rows(rng: np.random.Generator, samples: int, channels: int) -> np.ndarray:
    """(N, C, H, W) noise mixed across channels and averaged over 4 neighbouring rows:
    neighbouring rows correlate at about 0.75, 0.5 and 0.25 at 1, 2 and 3 rows apart."""
    noise = rng.standard_normal((samples, channels, HEIGHT + 3, WIDTH))
    mixed = np.einsum("dc,nchw->ndhw", rng.standard_normal((channels, channels)), noise)
    return sum(mixed[:, :, i : i + HEIGHT] for i in range(4)) / 2.0


def _patch_moment(x: np.ndarray, kh: int) -> np.ndarray:
    """E[p pᵀ] over every vertical patch inside x, p channel-major (c, row)."""
    n, c, h, w = x.shape
    patches = np.stack([x[:, :, i : h - kh + 1 + i] for i in range(kh)], axis=2)  # n c kh h' w
    flat = patches.transpose(1, 2, 0, 3, 4).reshape(c * kh, -1)
    return flat @ flat.T / flat.shape[1]


def _identity_model(tmp_path: Path) -> Path:
    g = GraphBuilder(seed=0)
    x = g.input("input", (1, CHANNELS, HEIGHT, WIDTH))
    g.relu(x, name="relu")
    path = tmp_path / "relu.onnx"
    onnx.save(g.build("relu"), path)  # its output: "output"
    return path


def test_the_vertical_moment_from_row_statistics_is_the_moment_of_the_patches(
    tmp_path: Path,
) -> None:
    """The child's row statistics, assembled, match the moment of the 3-row patches measured
    directly (within the rows at the edges, which the patches see less often); the per-pixel
    moment alone (``C_x ⊗ I``) is 60% off on rows this correlated."""
    x = np.maximum(_smooth_rows(np.random.default_rng(0), 6, CHANNELS), 0).astype(np.float32)
    names = [("output", 0), ("output", 1), ("output", 2)]
    feeds = [{"input": x[i : i + 1]} for i in range(len(x))]
    measured = verify._serve_moments(onnxruntime, str(_identity_model(tmp_path)), feeds, names)
    assert set(measured) == set(names)
    per_pixel, one, two = (measured[name][0] for name in names)
    direct = _patch_moment(x.astype(np.float64), 3)

    def off(moment: np.ndarray) -> float:
        return float(np.linalg.norm(moment - direct) / np.linalg.norm(direct))

    assert off(vertical_moment(per_pixel, [one, two], 3)) < 0.02
    assert off(vertical_moment(per_pixel, [], 3)) > 0.5  # fewer rows than the kernel: C ⊗ I
    # the blocks of rows i, j: the moment |j - i| rows apart, transposed below the diagonal
    blocks = vertical_moment(per_pixel, [one, two], 3).reshape(CHANNELS, 3, CHANNELS, 3)
    assert np.array_equal(blocks[:, 0, :, 2], two) and np.array_equal(blocks[:, 2, :, 0], two.T)
    assert np.array_equal(blocks[:, 1, :, 1], per_pixel)


def _response_error(weight: np.ndarray, approximated: np.ndarray, x: np.ndarray) -> float:
    """Relative L2 error of a 3×3 conv (valid) of ``x`` with ``approximated`` for ``weight``."""
    n, c, h, w = x.shape
    rows = np.stack(
        [x[:, :, i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3)], axis=2
    )  # n c 9 h' w'
    patches = rows.transpose(0, 3, 4, 1, 2).reshape(-1, c * 9)
    exact = patches @ weight.reshape(len(weight), -1).T
    error = patches @ (approximated - weight).reshape(len(weight), -1).T
    return float(np.linalg.norm(error) / np.linalg.norm(exact))


def test_the_spatial_svd_fits_inputs_with_correlated_rows_better_with_their_moment() -> None:
    """A 3×3 conv 16 -> 24 channels on inputs whose rows correlate: the spatial SVD at ranks 24
    and 40 (of 48), fitted with the vertical patch's moment, reproduces the conv's response on
    held-out inputs with a fifth and a half less error (0.40 and 0.12, against 0.51 and 0.23)
    than fitted with ``C_x ⊗ I``; at full rank both are exact."""
    rng = np.random.default_rng(1)
    cin, cout = 16, 24
    weight = rng.standard_normal((cout, cin, 3, 3))
    fitting, held_out = _smooth_rows(rng, 8, cin), _smooth_rows(rng, 8, cin)
    flat = fitting.transpose(1, 0, 2, 3).reshape(cin, -1)
    per_pixel = flat @ flat.T / flat.shape[1]
    apart = []
    for d in (1, 2):
        upper = fitting[:, :, :-d].transpose(1, 0, 2, 3).reshape(cin, -1)
        lower = fitting[:, :, d:].transpose(1, 0, 2, 3).reshape(cin, -1)
        apart.append(upper @ lower.T / upper.shape[1])
    site = ConvSite(cout, cin, (3, 3), HEIGHT * WIDTH, 46 * 18, mid_pixels=46 * WIDTH)
    errors = {}
    for rows, label in ((tuple(apart), "rows"), ((), "pixel")):
        search = ConvFactorizer(weight, site, Statistics(per_pixel, row_moments=rows))
        for rank in (24, 40, 48):
            vertical, horizontal = search.at_rank("spatial-svd", rank).weights
            composed = np.einsum("orj,rci->ocij", horizontal[:, :, 0], vertical[..., 0])
            errors[label, rank] = _response_error(weight, composed, held_out)
    assert errors["rows", 48] < 1e-9 and errors["pixel", 48] < 1e-9
    assert errors["rows", 24] < 0.8 * errors["pixel", 24]
    assert errors["rows", 40] < 0.6 * errors["pixel", 40]


def test_a_conv_offering_the_spatial_svd_asks_for_the_rows_its_kernel_spans() -> None:
    """A 3×3 conv with dilation 2 reads rows 2 and 4 apart; a 1×3 conv (no vertical split)
    asks for none."""
    for kernel, dilation, expected in (((3, 3), 2, ["#rows2", "#rows4"]), ((1, 3), 1, [])):
        g = GraphBuilder(seed=0)
        x = g.input("input", (1, 8, 12, 12))
        pads = (dilation * (kernel[0] // 2), dilation * (kernel[1] // 2)) * 2
        g.conv(x, 8, kernel, dilation=dilation, pads=pads, name="conv")
        target = target_for(g.build("conv"), "CL001", "conv")
        assert isinstance(target, FactorTarget)
        assert list(target.row_statistics()) == [f"input{suffix}" for suffix in expected]
        assert [apart for _, apart in target.row_statistics().values()] == [
            int(suffix.removeprefix("#rows")) for suffix in expected
        ]


def _asked_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[dict[str, tuple[str, int]]]]:
    """Samples for the decaying chain's 128-channel input, and the statistics each ``fix``
    asks onnxruntime's process for (``prepare.collect_statistics``'s requests), as asked."""
    from convlint.rewrite import prepare

    data = tmp_path / "in.npz"
    rng = np.random.default_rng(1)
    np.savez(data, input=np.maximum(rng.standard_normal((32, 128, 8, 8)), 0).astype(np.float32))
    asked: list[dict[str, tuple[str, int]]] = []
    original = prepare.collect_statistics

    def spy(runtime, model, requests, feeds):  # type: ignore[no-untyped-def]
        asked.append(dict(requests))
        return original(runtime, model, requests, feeds)

    monkeypatch.setattr(prepare, "collect_statistics", spy)
    return data, asked


def test_row_statistics_are_asked_by_tensor_whatever_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor named like another's row statistic (``relu1#rows1``) is still read as itself:
    statistics go to onnxruntime's process as (tensor, rows apart), never parsed from names."""

    model = fixtures.decaying_spectrum_chain()  # two 3×3 convs of 128 channels: CL001
    for node in model.graph.node:
        node.input[:] = ["relu1#rows1" if t == "relu1" else t for t in node.input]
        node.output[:] = ["relu1#rows1" if t == "relu1" else t for t in node.output]
    path = fixtures.save(model, tmp_path / "chain.onnx")
    data, asked = _asked_statistics(tmp_path, monkeypatch)
    out = tmp_path / "out.onnx"
    result = fix(path, load_registry(), Settings(), FixOptions(output=out, inputs=data,
                 samples=32, tolerance=0.1, latency=False))  # fmt: skip
    assert result.written and result.report.error is None
    assert asked[0]["relu1#rows1"] == ("relu1#rows1", 0)
    assert asked[0]["relu1#rows1#rows1"] == ("relu1#rows1", 1)
    assert asked[0]["relu1#rows1#rows2"] == ("relu1#rows1", 2)
    assert asked[0]["input#rows2"] == ("input", 2)


def test_pruning_alone_asks_for_no_moments_between_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--method prune`` offers no spatial SVD: onnxruntime's process measures no row
    statistics (two more C×C products per sample per conv input otherwise)."""

    path = fixtures.save(fixtures.decaying_spectrum_chain(), tmp_path / "chain.onnx")
    data, asked = _asked_statistics(tmp_path, monkeypatch)
    for method, rows in (("prune", 0), ("auto", 4)):
        asked.clear()
        options = FixOptions(output=tmp_path / f"{method}.onnx", inputs=data, samples=32,
                             tolerance=0.1, latency=False, method=method)  # fmt: skip
        result = fix(path, load_registry(), Settings(), options)
        assert result.report.error is None
        assert len(asked) == 1 and asked[0]
        assert sum(1 for _, apart in asked[0].values() if apart) == rows, method
