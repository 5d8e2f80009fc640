"""Stage 5 (fix's inputs and weights) and the baseline: what used to end in "internal error" or
numpy's warnings (issue 20, items 6 and 7) is one named line and exit 2."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convlint import fixtures
from convlint.errors import ConvlintError, UsageError
from convlint.rewrite.calibration import MAX_RESIZED_PIXELS, parse_preprocess, read_samples

CLI = Callable[..., tuple[int, str, str]]
FAST = ["--method", "weight", "--samples", "2", "--allow-noise", "--no-latency", "--quiet"]


def _fix(cli: CLI, model: Path, *extra: str) -> tuple[int, str]:
    code, _, err = cli("fix", str(model), "-o", str(model.with_name("out.onnx")), *extra)
    assert len(err.splitlines()) == 1 and "internal error" not in err, err
    return code, err


def test_an_untyped_graph_input_is_named(tmp_path: Path, cli: CLI) -> None:
    model = fixtures.conv3x3()
    model.graph.input.append(onnx.ValueInfoProto(name="extra"))
    path = fixtures.save(model, tmp_path / "m.onnx")
    assert _fix(cli, path, *FAST) == (
        2,
        f"convlint: error: {path}: input 'extra' is not a tensor (no type, or a sequence or map)\n",
    )


def test_an_initializer_of_an_undefined_data_type_is_named(tmp_path: Path, cli: CLI) -> None:
    model = fixtures.conv3x3()
    odd = numpy_helper.from_array(np.ones(4, np.float32), "odd")
    odd.data_type = 999
    model.graph.initializer.append(odd)
    path = fixtures.save(model, tmp_path / "m.onnx")
    assert _fix(cli, path, *FAST) == (
        2,
        f"convlint: error: {path}: tensor 'odd' has data type 999, which ONNX does not define\n",
    )


def test_an_attribute_only_a_rewrite_reads_is_named_with_the_file(tmp_path: Path, cli: CLI) -> None:
    """A BatchNormalization's epsilon of the wrong type: no rule reads it, so `check` passes;
    `fix` folds the BN (CL003) and reads it. Found by the longer fix fuzz run (seed 11, case
    78): the line did not name the file."""
    model = fixtures.linear_conv_chain_bad()
    bn = next(node for node in model.graph.node if node.name == "expand_bn")
    kept = [a for a in bn.attribute if a.name != "epsilon"]
    del bn.attribute[:]
    bn.attribute.extend([*kept, onnx.helper.make_attribute("epsilon", -3)])
    path = fixtures.save(model, tmp_path / "m.onnx")
    assert _fix(cli, path, *FAST) == (
        2,
        f"convlint: error: {path}: invalid model: node 'expand_bn' (BatchNormalization): "
        "attribute 'epsilon' is INT, the operator's schema wants FLOAT\n",
    )
    assert not (tmp_path / "out.onnx").exists()


def test_an_npz_of_python_objects_is_named(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "m.onnx")
    inputs = tmp_path / "objects.npz"
    np.savez(inputs, input=np.array([object(), 1], dtype=object))
    assert _fix(cli, path, "--inputs", str(inputs), "--method", "weight") == (
        2,
        f"convlint: error: {inputs}: holds an array of Python objects (pickled), not numbers\n",
    )


def test_a_baseline_with_a_number_of_thousands_of_digits_is_named(tmp_path: Path, cli: CLI) -> None:
    path = fixtures.save(fixtures.conv3x3(), tmp_path / "m.onnx")
    baseline = tmp_path / "baseline.json"
    baseline.write_text("[" + "1" * 5000 + "]")
    code, _, err = cli("check", str(path), "--baseline", str(baseline))
    assert code == 2
    assert err == (
        f"convlint: error: --baseline {baseline}: not a baseline (a number of thousands of "
        "digits)\n"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resize=99999999999999999999", "a number of pixels, at most 16384"),
        ("crop=16385", "N or HxW pixels, at most 16384"),
        ("mean=1e39", "(one, or one per channel; float32s)"),
        ("std=1e-39", "(one, or one per channel; float32s)"),
        ("scale=1e39", "a fraction such as 1/255 (a float32)"),
    ],
)
def test_preprocess_values_beyond_what_images_allow_are_usage_errors(
    spec: str, expected: str
) -> None:
    with pytest.raises(UsageError, match=rf"--preprocess: {spec.split('=')[0]}=.*expected") as e:
        parse_preprocess(spec)
    assert str(e.value).endswith(expected)


def _images(folder: Path, *sizes: tuple[int, int]) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, (wide, high) in enumerate(sizes):
        pixels = rng.integers(0, 256, (high, wide, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    return folder


def _read(folder: Path, spec: str) -> object:
    dims = (1, 3, 24, 24)
    return read_samples(
        folder, ["x"], {"x": dims}, {"x": np.dtype("f4")}, {}, None, parse_preprocess(spec)
    )


def test_an_image_of_an_extreme_aspect_ratio_is_refused_before_decoding(tmp_path: Path) -> None:
    """Issue 20, item 7: a 3 KB PNG of 1,000,000x1 pixels (its shorter side resized to 27
    pixels, it would take gigabytes)."""
    pytest.importorskip("PIL")
    from PIL import Image

    folder = _images(tmp_path / "images", (32, 32))
    Image.new("RGB", (1_000_000, 1)).save(folder / "wide.png")
    assert (folder / "wide.png").stat().st_size < 10_000
    with pytest.raises(ConvlintError) as caught:
        _read(folder, "imagenet")
    assert str(caught.value) == (
        f"--inputs {folder}: image wide.png is 1000000x1 pixels: an aspect ratio beyond 1:64 "
        "is no photograph to calibrate on"
    )


def test_an_image_too_large_once_resized_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = _images(tmp_path / "images", (40, 32))
    with pytest.raises(ConvlintError) as caught:
        _read(folder, "resize=10000")
    assert str(caught.value) == (
        f"--inputs {folder}: image img0.png resized would be 12500x10000 pixels "
        f"(at most {MAX_RESIZED_PIXELS:,})"
    )


def test_values_that_overflow_float32_are_named_without_numpy_warnings(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = _images(tmp_path / "images", (32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        with pytest.raises(ConvlintError, match=r"input 'x' holds \d+ infinite values"):
            _read(folder, "scale=1e37")
