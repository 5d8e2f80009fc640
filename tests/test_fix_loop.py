"""Issue 9, item 4: the loop closes. `convlint check OUT` reports nothing for a node `fix`
rewrote, the nodes `fix` adds are named after the node they replace, the nodes it leaves keep
the names `check` gave them (so a baseline written before `fix` matches after), and when no
rewrite applies `fix` says so in one line, exits 0 and writes OUT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from fix_helpers import findings_of, max_abs_diff, random_inputs
from onnx import numpy_helper
from test_fix_rewrites import pool_model

from convlint import fixtures
from convlint.cli import main
from convlint.engine import Settings
from convlint.registry import load_registry
from convlint.rewrite.pipeline import FixOptions, fix
from convlint.rewrite.state import FixResult

FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--no-latency"]


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv3x3 (CL001)": lambda: fixtures.conv3x3(planted_rank=48, hw=6),
    "inception_3a_naive (CL001 twice)": lambda: fixtures.inception_3a_naive(planted_rank=24),
    "linear_conv_chain_bad (CL003 fold)": fixtures.linear_conv_chain_bad,
    "spatial_expansion_bad (CL005)": lambda: fixtures.spatial_expansion_bad(planted_rank=8),
    "pool branch (CL002 projection)": lambda: pool_model(nonlinear=False, rank=3),
}


def _node_names(path: Path) -> list[str]:
    return [n.name for n in onnx.load(path).graph.node]


@pytest.mark.parametrize("name", MODELS)
def test_check_out_does_not_flag_what_fix_rewrote(tmp_path: Path, name: str) -> None:
    path = fixtures.save(MODELS[name](), tmp_path / "model.onnx")
    before = findings_of(path)
    out = tmp_path / "out.onnx"
    result = fix(
        path,
        load_registry(),
        Settings(),
        FixOptions(out, method="weight", samples=2, latency=False, allow_noise=True),
    )
    assert result.written and result.rewrites, result.skipped
    rewritten = {r.node for r in result.rewrites}
    added = set(_node_names(out)) - set(_node_names(path))
    after = findings_of(out)
    flagged = {(f.code, f.node) for f in after}
    assert not {node for _, node in flagged} & (rewritten | added), flagged
    # Only findings `fix` did not rewrite remain.
    assert flagged <= {(f.code, f.node) for f in before if f.node not in rewritten}
    assert max_abs_diff(path, out, random_inputs(onnx.load(path))) < 1e-3


def test_factorized_convs_are_named_after_the_node(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.inception_3a_naive(planted_rank=24), tmp_path / "3a.onnx")
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), *FAST, "--quiet"]) == 0
    names = _node_names(out)
    for conv in ("inception_3a/3x3", "inception_3a/5x5"):
        assert conv not in names
        assert f"{conv}/reduce" in names and f"{conv}/spatial" in names
    untouched = [n for n in _node_names(path) if n not in ("inception_3a/3x3", "inception_3a/5x5")]
    assert [n for n in names if n in untouched] == untouched  # same names, same order


def test_unnamed_nodes_keep_the_names_check_gave_them(tmp_path: Path) -> None:
    """A baseline written on MODEL still matches OUT: the unnamed nodes' check names
    (``Conv_2``) are written into OUT, although new nodes shift their indices."""
    model = fixtures.inception_3a_naive(planted_rank=24)
    for node in model.graph.node:
        node.name = ""
    path = fixtures.save(model, tmp_path / "unnamed.onnx")
    check_names = [f.node for f in findings_of(path)]
    assert check_names == ["Conv_2", "Conv_4", "MaxPool_6"]  # the 3×3 and 5×5 convs, the pool
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(path), "--write-baseline", str(baseline), "--quiet"]) in (0, 1)
    assert main(["fix", str(path), "--in-place", *FAST, "--quiet"]) == 0
    names = _node_names(path)
    assert "Conv_2/reduce" in names and "Conv_2/spatial" in names
    original = [f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)]
    kept = [n for n in original if n not in ("Conv_2", "Conv_4")]  # the two factorized convs
    assert [n for n in names if n in kept] == kept
    # MaxPool_6 is now the ninth node, and still MaxPool_6: its finding is the baseline's.
    assert [f.node for f in findings_of(path)] == ["MaxPool_6"]
    assert main(["check", str(path), "--baseline", str(baseline)]) == 0


def test_no_rewrite_applies_is_one_line_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fixtures.save(fixtures.vgg_stack(), tmp_path / "vgg.onnx")  # full-rank weights
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    (summary,) = [line for line in lines if line.startswith("model: ")]
    assert summary.startswith("model: no rewrite applies (4 findings, none rewritten); ")
    assert f"wrote {out}, the same model" in summary
    assert out.exists()
    assert max_abs_diff(path, out, random_inputs(onnx.load(path))) == 0.0
    assert _node_names(out) == _node_names(path)


def test_no_findings_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fixtures.save(fixtures.resnet_bottleneck(), tmp_path / "clean.onnx")
    out = tmp_path / "out.onnx"
    assert main(["fix", str(path), "-o", str(out), *FAST, "--format", "json"]) == 0
    assert out.exists()
    assert main(["fix", str(path), "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert f"model: no rewrite applies (no findings); wrote {out}, the same model\n" in text


def _fix_planted_conv3x3(values: np.ndarray, tmp_path: Path) -> tuple[Path, Path, FixResult]:
    """`fix --method weight` on a 3×3 256->256 conv (14×14) whose weight is ``values``."""
    model = fixtures.conv3x3(hw=14)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(values.astype(np.float32), weight.name))
    path = fixtures.save(model, tmp_path / "planted.onnx")
    out = tmp_path / "out.onnx"
    result = fix(
        path,
        load_registry(),
        Settings(),
        FixOptions(out, method="weight", samples=2, latency=False, allow_noise=True),
    )
    assert result.written
    return path, out, result


def test_an_output_side_low_rank_conv_is_factorized_and_check_passes_out(tmp_path: Path) -> None:
    """A 3×3 256->256 conv whose weight is low-rank on its output side only: the cheapest
    form, k×k 256->48 then 1×1 48->256 with nothing between, is one low-rank conv, which CL001
    passes over (it narrows to 48 channels that the 1×1 widens back): fix writes it, and
    `convlint check OUT` flags nothing."""
    rng = np.random.default_rng(0)
    left, right = rng.standard_normal((256, 48)), rng.standard_normal((48, 256 * 9))
    values = (left @ right / np.sqrt(48 * 256 * 9)).reshape(256, 256, 3, 3)
    path, out, result = _fix_planted_conv3x3(values, tmp_path)
    assert [(r.code, r.node, r.kind, r.rank) for r in result.rewrites] == [
        ("CL001", "conv", "svd-expand", 48)
    ]
    assert (result.rewrites[0].macs_before, result.rewrites[0].macs_after) == (
        256 * 256 * 9 * 14 * 14,
        (256 * 48 * 9 + 48 * 256) * 14 * 14,
    )
    assert findings_of(out) == []


def test_a_spatially_separable_conv_is_split_and_check_passes_out(tmp_path: Path) -> None:
    """A 3×3 256->256 conv that is exactly a 3×1 conv to 16 channels then a 1×3 conv back:
    the cheapest exact form is the spatial SVD at rank 16, whose halves (a 3×1 conv reading
    256 channels, a 1×3 conv widening 16 to 256) carry CL001/CL005 ignores, so
    `convlint check OUT` flags nothing."""
    rng = np.random.default_rng(0)
    vertical, horizontal = rng.standard_normal((16, 256, 3)), rng.standard_normal((256, 16, 3))
    values = np.einsum("dci,odj->ocij", vertical, horizontal) / np.sqrt(16 * 256 * 9)
    path, out, result = _fix_planted_conv3x3(values, tmp_path)
    assert [(r.code, r.node, r.kind, r.rank) for r in result.rewrites] == [
        ("CL001", "conv", "spatial-svd", 16)
    ]
    assert (result.rewrites[0].macs_before, result.rewrites[0].macs_after) == (
        256 * 256 * 9 * 14 * 14,
        (256 * 3 * 16 + 16 * 256 * 3) * 14 * 14,
    )
    assert [n.name for n in onnx.load(out).graph.node if n.op_type == "Conv"] == [
        "conv/vertical",
        "conv/horizontal",
    ]
    assert findings_of(out) == []
    assert max_abs_diff(path, out, random_inputs(onnx.load(path))) < 1e-3
