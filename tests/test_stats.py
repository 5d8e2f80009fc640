"""`convlint stats` that compares (issue 11, item 4) and shows per-pixel costs (item 3):
several models in one call, `--diff MODEL OUT`, and symbolic dims with the figures `check`
has and the `--input-shape` that binds them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets").mkdir()
    fixtures.save(fixtures.conv3x3(), tmp_path / "nets" / "conv.onnx")
    fixtures.save(fixtures.resnet_bottleneck(), tmp_path / "nets" / "bottleneck.onnx")
    fixtures.save(fixtures.BUILDERS["symbolic_dims_model"](), tmp_path / "symbolic.onnx")
    return tmp_path


def stats_json(cli: CLI, *argv: str) -> tuple[int, Any]:
    code, out, _ = cli("stats", *argv, "--format", "json")
    return code, json.loads(out)


def test_several_models_in_one_call(folder: Path, cli: CLI) -> None:
    code, out, err = cli("stats", "nets/conv.onnx", "symbolic.onnx")
    assert code == 0 and err == ""
    tables = out.split("\n\n")
    assert tables[0].startswith("nets/conv.onnx\nnode ")
    assert tables[1].startswith("symbolic.onnx\nnode ")
    code, document = stats_json(cli, "nets", "symbolic.onnx")  # a folder is searched, sorted
    assert code == 0
    assert [m["path"] for m in document["models"]] == [
        "nets/bottleneck.onnx",
        "nets/conv.onnx",
        "symbolic.onnx",
    ]
    assert document["models"][1]["total"]["params"] == 589_824
    # One model: its object at the top level, as the contract has it.
    _, one = stats_json(cli, "nets/conv.onnx")
    assert one["path"] == "nets/conv.onnx" and "models" not in one


def test_an_unreadable_model_does_not_stop_the_others(folder: Path, cli: CLI) -> None:
    fixtures.BAD_WRITERS["truncated"](folder / "nets")
    code, out, err = cli("stats", "nets")
    assert code == 2
    assert "nets/bottleneck.onnx\n" in out and "nets/conv.onnx\n" in out
    assert err.startswith("convlint: error: nets/truncated.onnx: not an ONNX model")
    code, document = stats_json(cli, "nets")
    assert code == 2
    broken = next(m for m in document["models"] if m["error"])
    assert broken["path"] == "nets/truncated.onnx" and "nodes" not in broken


def test_symbolic_dims_carry_the_per_pixel_costs_of_check(folder: Path, cli: CLI) -> None:
    _, stats = stats_json(cli, "symbolic.onnx")
    _, out, _ = cli("check", "symbolic.onnx", "--format", "json")
    per_pixel = json.loads(out)["models"][0]["cost"]["macs_per_input_pixel"]
    assert per_pixel == 5296
    total = stats["total"]
    assert (total["params"], total["macs"], total["macs_per_input_pixel"]) == (5352, None, 5296)
    assert total["memory"] is None and total["peak_memory"] is None  # H and W are symbolic
    # every conv's MACs wait for H and W: the total is incomplete, as check's cost says
    assert (total["incomplete"], total["unknown_nodes"], total["macs_at_least"]) == (
        True,
        ["conv1", "conv2", "conv3"],
        0,
    )
    convs = [n for n in stats["nodes"] if n["op_type"] == "Conv"]
    assert [n["macs_per_output_pixel"] for n in convs] == [432, 4608, 256]
    assert all(n["macs"] is None for n in convs)
    assert stats["inputs"] == [{"name": "input", "shape": ["N", 3, "H", "W"]}]

    code, out, _ = cli("stats", "symbolic.onnx")
    assert code == 0
    lines = out.splitlines()
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    assert "432/px" in conv1
    total = next(line for line in lines if line.startswith("total "))
    assert total.endswith("5,296 × H × W              ?")  # memory unknown with H, W symbolic
    assert lines[-1] == (
        "Bind the symbolic dims for exact MACs (input is Nx3xHxW), "
        "e.g. --input-shape input=1x3x224x224"
    )
    # Bound as the hint says, the total is the per-pixel figure times H × W.
    _, bound = stats_json(cli, "symbolic.onnx", "--input-shape", "input=1x3x64x64")
    assert bound["total"]["macs"] == per_pixel * 64 * 64
    code, out, _ = cli("stats", "symbolic.onnx", "--input-shape", "input=1x3x64x64")
    assert "--input-shape" not in out and "/px" not in out


def test_a_static_model_has_no_hint(folder: Path, cli: CLI) -> None:
    _, out, _ = cli("stats", "nets/conv.onnx")
    assert out.splitlines()[-1].startswith("Conv ")  # the op-type table ends it, no hint
    assert out.splitlines()[-5].startswith("total ")
    _, document = stats_json(cli, "nets/conv.onnx")
    assert document["nodes"][0]["macs_per_output_pixel"] == 589_824
    assert document["total"]["macs_per_input_pixel"] is None


def test_diff_of_a_verified_rewrite(folder: Path, cli: CLI) -> None:
    planted = fixtures.inception_3a_naive(planted_rank=24, seed=0)
    fixtures.save(planted, folder / "naive.onnx")
    argv = (
        "fix",
        "naive.onnx",
        "-o",
        "fixed.onnx",
        "--method",
        "weight",
        "--samples",
        "2",
        "--allow-noise",
    )
    assert cli(*argv)[0] == 0
    code, document = stats_json(cli, "--diff", "naive.onnx", "fixed.onnx")
    assert code == 0
    diff = document["diff"]
    assert (diff["before"], diff["after"]) == ("naive.onnx", "fixed.onnx")
    rows = [(r["name"], r["change"]) for r in diff["nodes"]]
    # The contract's names: a factorized conv becomes <node>/reduce and <node>/spatial.
    assert rows == [
        ("inception_3a/3x3", "removed"),
        ("inception_3a/3x3/reduce", "added"),
        ("inception_3a/3x3/spatial", "added"),
        ("inception_3a/5x5", "removed"),
        ("inception_3a/5x5/reduce", "added"),
        ("inception_3a/5x5/spatial", "added"),
    ]
    conv = diff["nodes"][0]
    assert (conv["params_before"], conv["params_after"]) == (221_184, None)
    spatial = diff["nodes"][2]
    assert (spatial["params_before"], spatial["params_after"]) == (None, 24 * 128 * 9)
    added = diff["nodes"][1]
    assert added["params_before"] is None and added["params_after"] == 192 * 24
    assert diff["total"] == {
        "nodes_before": 8,
        "nodes_after": 10,
        "added": 4,
        "removed": 2,
        "changed": 0,
        "params_before": 387_072,
        "params_after": 68_352,
        "macs_before": 304_819_200,
        "macs_after": 54_942_720,
        "macs_per_input_pixel_before": None,
        "macs_per_input_pixel_after": None,
    }
    code, out, _ = cli("stats", "--diff", "naive.onnx", "fixed.onnx")
    lines = out.splitlines()
    assert lines[0] == "naive.onnx -> fixed.onnx"
    assert lines[1].split() == [
        "node", "op", "change", "output", "shape", "params", "before", "params", "after",
        "MACs", "before", "MACs", "after",
    ]  # fmt: skip
    assert lines[4].split() == [
        "inception_3a/3x3/reduce", "Conv", "added", "1x24x28x28", "-", "4,608", "-", "3,612,672",
    ]  # fmt: skip
    assert lines[-1] == (
        "nodes 8 -> 10 (4 added, 2 removed, 0 changed); params 387,072 -> 68,352 (5.7x fewer); "
        "MACs 304,819,200 -> 54,942,720 (5.5x fewer)"
    )


def test_diff_of_a_fold_lists_removed_nodes(folder: Path, cli: CLI) -> None:
    fixtures.save(fixtures.linear_conv_chain_bad(), folder / "chain.onnx")
    assert cli("fix", "chain.onnx", "-o", "folded.onnx")[0] == 0
    _, document = stats_json(cli, "--diff", "chain.onnx", "folded.onnx")
    changes = {r["name"]: r["change"] for r in document["diff"]["nodes"]}
    assert changes["expand"] == changes["expand_bn"] == "removed"
    assert changes["conv"] == "changed"
    removed = next(r for r in document["diff"]["nodes"] if r["name"] == "expand")
    assert removed["params_after"] is None and removed["output_shapes_after"] is None


def test_diff_of_a_model_with_itself_and_usage_errors(folder: Path, cli: CLI) -> None:
    code, out, _ = cli("stats", "--diff", "nets/conv.onnx", "nets/conv.onnx")
    assert code == 0 and out.splitlines()[1] == "no node changed"
    code, _, err = cli("stats", "--diff", "nets/conv.onnx")
    assert code == 2
    assert err == (
        "convlint: error: --diff compares two model files, MODEL and OUT, not nets/conv.onnx "
        "(e.g. convlint stats --diff model.onnx fixed.onnx)\n"
    )
    code, _, err = cli("stats", "--diff", "nets", "symbolic.onnx")
    assert code == 2 and "two model files" in err
    code, _, err = cli("stats", "--diff", "nets/conv.onnx", "missing.onnx")
    assert code == 2 and "missing.onnx" in err
