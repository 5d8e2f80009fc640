"""The messages of issue 18 point 7: each says what is wrong and what to do."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

import convlint
from convlint import fixtures
from convlint.fixtures.dialects import to_qdq
from convlint.reporters.common import change_ratio

CLI = Callable[..., tuple[int, str, str]]


def test_a_pytorch_checkpoint_is_named(tmp_path: Path, cli: CLI) -> None:
    with zipfile.ZipFile(tmp_path / "net.pt", "w") as archive:  # torch.save since PyTorch 1.6
        archive.writestr("net/data.pkl", pickle.dumps({"conv.weight": [0.0]}))
    (tmp_path / "old.pth").write_bytes(pickle.dumps({"conv.weight": [0.0]}, protocol=2))
    for name, kind in (("net.pt", "a zip archive"), ("old.pth", "a pickle, legacy torch.save")):
        code, _, err = cli("check", str(tmp_path / name))
        assert code == 2
        assert err == (
            f"convlint: error: {tmp_path / name}: not an ONNX model: a PyTorch checkpoint "
            f"(torch.save, {kind}); export it with torch.onnx.export(model, example_input, "
            "'model.onnx') first\n"
            if name == "net.pt"
            else f"convlint: error: {tmp_path / name}: not an ONNX model: a PyTorch checkpoint "
            f"({kind}); export it with torch.onnx.export(model, example_input, 'model.onnx') "
            "first\n"
        )
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07\x12\xff\xff")
    assert "protobuf parse failed" in cli("check", str(tmp_path / "junk.onnx"))[2]


def test_show_settings_names_exclude_and_unbound_shapes(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.inception_3a_naive(), tmp_path / "naive.onnx")
    (tmp_path / "convlint.toml").write_text(
        'exclude = ["vendor/*"]\ninput-shape = { images = "1x3x224x224" }\n'
    )
    code, out, _ = cli("check", str(path), "--show-settings")
    assert code == 0
    assert "  exclude: vendor/*\n  extend-exclude: (none)\n" in out
    assert "not bound: the model has no input 'images'" in out


def test_computed_float_weights_are_not_called_quantized() -> None:
    model = fixtures.conv3x3()
    graph = model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight = next(i for i in graph.initializer if i.name == conv.input[1])
    graph.initializer.remove(weight)
    graph.initializer.append(numpy_helper.from_array(np.array(weight.dims), "w.shape"))
    fill = numpy_helper.from_array(np.array([0.01], dtype=np.float32))
    graph.node.insert(
        0, helper.make_node("ConstantOfShape", ["w.shape"], [conv.input[1]], value=fill)
    )
    [finding] = convlint.check(model).findings
    assert finding.fix is not None and finding.fix.applicability.value == "display-only"
    assert "weights are computed in the graph, not stored" in finding.fix.description
    assert "quantize" not in finding.fix.description
    [quantized] = convlint.check(to_qdq(fixtures.conv3x3())).findings
    assert quantized.fix is not None and "quantize it again" in quantized.fix.description


@pytest.mark.parametrize(
    ("before", "after", "text"),
    [
        (1000, 970, " (3.0% fewer)"),
        (1000, 1031, " (3.1% more)"),
        (173_408_256, 28_299_264, " (6.1x fewer)"),
        (100, 100, ""),
        (None, 5, ""),
    ],
)
def test_small_savings_read_as_percentages(before: int, after: int, text: str) -> None:
    assert change_ratio(before, after) == text


def test_fix_says_what_output_is_and_refuses_lone_preprocess(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    code, _, err = cli("fix", str(path), "--output", str(tmp_path / "fixed.onnx"))
    assert code == 2 and err == (
        "convlint: error: fix needs -o OUT, the model to write (or --in-place); "
        f"--output {tmp_path / 'fixed.onnx'} names the report, not the model\n"
    )
    out = str(tmp_path / "out.onnx")
    code, _, err = cli("fix", str(path), "-o", out, "--preprocess", "imagenet")
    assert code == 2 and "--preprocess says how images become the input" in err
    assert not Path(out).exists()


def test_baseline_count_is_singular_for_one(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "conv.onnx")
    code, _, err = cli("check", str(path), "--write-baseline", str(tmp_path / "b.json"))
    assert code == 0 and err == f"convlint: recorded 1 finding in {tmp_path / 'b.json'}\n"
