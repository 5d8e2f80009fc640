"""`convlint stats` as a profile (issue 18 point 6, onnx-tool's): activation memory per node,
in total and at its peak, totals per op type, --sort/--top, CSV and Markdown, -q, weight-only
Identity/Cast nodes folded into their weights, and --diff of models with inferred dims."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import convlint
from convlint import fixtures

CLI = Callable[..., tuple[int, str, str]]
MAP_256 = 256 * 56 * 56 * 4  # bytes of one float 1x256x56x56 activation: 3,211,264
MAP_64 = 64 * 56 * 56 * 4  # 802,816


@pytest.fixture
def bottleneck(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.resnet_bottleneck(), tmp_path / "bottleneck.onnx")


def test_activation_memory_per_node_in_total_and_at_peak(bottleneck: Path) -> None:
    stats = convlint.stats(bottleneck)
    memory = {n["name"]: n["memory"] for n in stats["nodes"]}
    assert memory["layer1.1.conv1"] == MAP_64 and memory["layer1.1.conv3"] == MAP_256
    assert stats["total"]["memory"] == 6 * MAP_64 + 4 * MAP_256 == 17_661_952
    # At the residual Add: the block's input (kept for the shortcut), bn3's output and the sum.
    assert stats["total"]["peak_memory"] == 3 * MAP_256 == 9_633_792


def test_totals_per_op_type(bottleneck: Path) -> None:
    by_type = {t["op_type"]: t for t in convlint.stats(bottleneck)["op_types"]}
    assert by_type["Conv"] == {
        "op_type": "Conv",
        "nodes": 3,
        "params": 16_384 + 36_864 + 16_384,
        "macs": 51_380_224 + 115_605_504 + 51_380_224,
        "memory": 2 * MAP_64 + MAP_256,
    }
    assert by_type["Relu"]["nodes"] == 3 and by_type["Relu"]["macs"] == 0
    assert list(by_type)[0] == "Conv"  # most MACs first


def test_sort_and_top(bottleneck: Path, cli: CLI) -> None:
    code, out, _ = cli("stats", str(bottleneck), "--sort", "macs", "--top", "2", "--format", "json")
    data = json.loads(out)
    assert code == 0 and [n["name"] for n in data["nodes"]] == ["layer1.1.conv2", "layer1.1.conv1"]
    assert data["shown"] == {"sort": "macs", "top": 2, "nodes": 10}
    assert data["total"]["params"] == 70_400  # the model's, not the rows shown
    _, out, _ = cli("stats", str(bottleneck), "--sort", "memory", "--top", "1")
    assert "layer1.1.conv3 " in out and "layer1.1.conv1 " not in out
    assert "(1 of 10 nodes, most memory first; the totals are the model's)" in out
    code, _, err = cli("stats", str(bottleneck), "--top", "0")
    assert code == 2 and "--top must be at least 1" in err


def test_csv_and_markdown(bottleneck: Path, cli: CLI) -> None:
    _, out, _ = cli("stats", str(bottleneck), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 10
    assert rows[0] == {
        "model": str(bottleneck),
        "node": "layer1.1.conv1",
        "op_type": "Conv",
        "output_shapes": "1x64x56x56",
        "params": "16384",
        "macs": "51380224",
        "macs_per_output_pixel": "16384",
        "memory_bytes": str(MAP_64),
    }
    assert sum(int(r["params"]) for r in rows) == 70_400
    _, out, _ = cli("stats", str(bottleneck), "--format", "markdown")
    assert "| node | op | output shape | params | MACs | share | memory |" in out
    assert (
        "| layer1.1.conv2 | Conv | 1x64x56x56 | 36,864 | 115,605,504 | 52.7% | 784.0 KiB |" in out
    )
    assert "| Conv | 3 | 69,632 | 218,365,952 | 99.5% | 4.6 MiB |" in out


def test_quiet_leaves_the_notes_out(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.BUILDERS["symbolic_dims_model"](), tmp_path / "fcn.onnx")
    _, loud, _ = cli("stats", str(path))
    _, quiet, _ = cli("stats", str(path), "-q")
    assert "Bind the symbolic dims" in loud and "Bind the symbolic dims" not in quiet
    assert quiet.splitlines() == loud.splitlines()[: len(quiet.splitlines())]


def test_weight_only_identity_and_cast_are_folded(tmp_path: Path, cli: CLI) -> None:
    model = fixtures.conv3x3()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = conv.input[1]
    model.graph.node.insert(0, helper.make_node("Identity", [weight], ["w.tied"], name="tie_node"))
    model.graph.node.insert(
        1, helper.make_node("Cast", ["w.tied"], ["w.cast"], name="cast", to=onnx.TensorProto.FLOAT)
    )
    conv.input[1] = "w.cast"
    plain = convlint.stats(fixtures.conv3x3())
    stats = convlint.stats(model)
    assert [n["name"] for n in stats["nodes"]] == [n["name"] for n in plain["nodes"]]
    assert stats["folded"] == ["tie_node", "cast"]
    assert stats["total"]["params"] == plain["total"]["params"] == 589_824
    path = fixtures.save(model, tmp_path / "tied.onnx")
    _, out, _ = cli("stats", str(path))
    assert "2 weight-only Identity/Cast nodes folded into their weights (tie_node, cast)." in out


def test_diff_matches_inferred_dims_across_models(tmp_path: Path, cli: CLI) -> None:
    """A node added first renumbers every unk__N of the other model; no node changed."""
    before = fixtures.BUILDERS["symbolic_dims_model"]()
    after = onnx.ModelProto()
    after.CopyFrom(before)
    graph = after.graph
    pool = helper.make_node(
        "MaxPool", [graph.input[0].name], ["side"], name="side_pool", kernel_shape=[3, 3],
        strides=[2, 2],
    )  # fmt: skip
    graph.node.insert(0, pool)
    graph.output.append(helper.make_tensor_value_info("side", onnx.TensorProto.FLOAT, None))
    del graph.value_info[:]
    a = fixtures.save(before, tmp_path / "a.onnx")
    b = fixtures.save(after, tmp_path / "b.onnx")
    first = convlint.stats(b)["nodes"][1]["output_shapes"]
    assert first != convlint.stats(a)["nodes"][0]["output_shapes"]  # renumbered
    _, out, _ = cli("stats", "--diff", str(a), str(b), "--format", "json")
    diff = json.loads(out)["diff"]
    assert [(n["name"], n["change"]) for n in diff["nodes"]] == [("side_pool", "added")]
    assert diff["total"]["changed"] == 0


def test_diff_matches_by_name_and_op(tmp_path: Path, cli: CLI) -> None:
    before = fixtures.resnet_bottleneck()
    after = onnx.ModelProto()
    after.CopyFrom(before)
    relu = next(n for n in after.graph.node if n.name == "layer1.1.relu1")
    relu.op_type = "Sigmoid"  # the same name now holds another op
    a = fixtures.save(before, tmp_path / "a.onnx")
    b = fixtures.save(after, tmp_path / "b.onnx")
    diff = json.loads(cli("stats", "--diff", str(a), str(b), "--format", "json")[1])["diff"]
    assert sorted((n["name"], n["op_type"], n["change"]) for n in diff["nodes"]) == [
        ("layer1.1.relu1", "Relu", "removed"),
        ("layer1.1.relu1", "Sigmoid", "added"),
    ]


def test_peak_counts_weights_out(tmp_path: Path) -> None:
    """Initializers are weights, not activations: a conv's peak is its input and output."""
    stats = convlint.stats(fixtures.conv3x3())
    [conv] = [n for n in stats["nodes"] if n["op_type"] == "Conv"]
    input_bytes = int(np.prod([d for d in stats["inputs"][0]["shape"] if isinstance(d, int)])) * 4
    assert stats["total"]["peak_memory"] >= input_bytes + conv["memory"]
    assert stats["total"]["peak_memory"] < input_bytes + conv["memory"] + 589_824 * 4


def test_weight_only_nodes_stay_out_of_markdown_sketches(tmp_path: Path, cli: CLI) -> None:
    model = fixtures.conv3x3()
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.node.insert(
        0, helper.make_node("Identity", [conv.input[1]], ["w.tied"], name="tie")
    )
    conv.input[1] = "w.tied"
    path = fixtures.save(model, tmp_path / "tied.onnx")
    code, out, _ = cli("check", str(path), "--format", "markdown")
    assert code == 1 and "```mermaid" in out
    assert "tie_node" not in out and "Identity" not in out
