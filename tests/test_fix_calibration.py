"""Issue 9, items 2, 3 and 6: `fix` learns from the user's data (.npz, .npy, a folder of
images with --preprocess), says how many samples fitted and verified, binds symbolic dims from
the data or says which it bound itself, and reports top-1 agreement for class-score outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from convlint import fixtures
from convlint.cli import main
from convlint.errors import ConvlintError, UsageError
from convlint.fixtures._builder import GraphBuilder
from convlint.rewrite.calibration import PRESETS, parse_preprocess, read_samples

FAST = ["--method", "weight", "--no-latency", "--allow-noise"]
SHAPE = (1, 256, 6, 6)


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return fixtures.save(fixtures.conv3x3(planted_rank=48, hw=6), tmp_path / "conv.onnx")


def _fix(model: Path, *argv: str) -> list[str]:
    return ["fix", str(model), "-o", str(model.with_name("out.onnx")), *argv]


def _normal(*shape: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("suffix", "shape"),
    [
        (".npy", (6, 256, 6, 6)),  # (N, C, H, W) for a batch-1 model
        (".npy", (6, 1, 256, 6, 6)),  # (N, 1, C, H, W)
        (".npz", (6, 256, 6, 6)),
        (".npz", (6, 1, 256, 6, 6)),
    ],
)
def test_arrays_with_or_without_the_batch_axis(
    planted: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
    shape: tuple[int, ...],
) -> None:
    path = tmp_path / f"inputs{suffix}"
    values = _normal(*shape)
    if suffix == ".npy":
        np.save(path, values)
    else:
        np.savez(path, input=values)
    argv = _fix(planted, "--inputs", str(path), "--no-latency", "--format", "json")
    assert main(argv) == 0
    model = _json(capsys)
    assert model["calibration"] == {
        "source": suffix[1:],
        "fit": 3,
        "verify": 3,
        "verify_samples": [3, 4, 5],
        "select": 3,  # too few held out to set some aside: the ranks were chosen on them
        "select_samples": [3, 4, 5],
    }
    assert model["verification"]["ok"] and model["latency"] is None
    assert model["bound"] == {}


def test_one_sample_without_a_samples_axis(planted: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.npy"
    np.save(path, _normal(*SHAPE))
    samples = read_samples(path, ["input"], {"input": SHAPE}, {"input": np.dtype("f4")}, {}, None)
    assert len(samples.feeds) == 1 and samples.feeds[0]["input"].shape == SHAPE


def test_samples_caps_what_is_taken_from_inputs(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "many.npy"
    np.save(path, _normal(10, *SHAPE[1:]))
    assert main(_fix(planted, "--inputs", str(path), "--samples", "4", *FAST)) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert f"; 4 of 10 from {path}: statistics" not in header  # the weight method fits nothing
    assert f"; 4 of 10 from {path})" in header


def test_npy_for_a_model_with_two_inputs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, _normal(2, 3))
    with pytest.raises(ConvlintError, match=r"an \.npy holds one array; the model has 2 inputs"):
        read_samples(
            path,
            ["a", "b"],
            {"a": (3,), "b": (3,)},
            {"a": np.dtype("f4"), "b": np.dtype("f4")},
            {},
            None,
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((2, *SHAPE[1:]), np.nan, np.float32), "holds 18432 NaN values"),
        (np.zeros((2, *SHAPE[1:]), np.float32), "is constant (every value is 0)"),
    ],
)
def test_degenerate_npy_is_refused(
    planted: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    values: np.ndarray[Any, Any],
    message: str,
) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, values)
    assert main(_fix(planted, "--inputs", str(path), *FAST)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_noise_is_named_in_the_summary_and_the_json(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fix(planted, "--method", "data-aware", "--samples", "4", "--no-latency")) == 0
    text = capsys.readouterr().out
    summary = next(line for line in text.splitlines() if line.startswith("model: "))
    assert summary.endswith(
        "; statistics fitted and verified on generated noise (pass --inputs with real samples)"
    )
    argv = _fix(planted, "--samples", "4", "--no-latency", "--format", "json")
    assert main(argv) == 0
    assert _json(capsys)["calibration"] == {  # no ranks searched on noise: no "select"
        "source": "noise",
        "fit": 2,
        "verify": 2,
        "verify_samples": [2, 3],
    }


def test_symbolic_dims_take_the_sizes_of_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = GraphBuilder(seed=9)
    x = g.input("input", ("N", 128, "height", "width"))
    g.relu(g.conv(x, 128, 3, pads=1, bias=False, name="wide", rank=8), name="relu")
    path = fixtures.save(g.build("symbolic"), tmp_path / "symbolic.onnx")
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, _normal(4, 128, 10, 12))
    argv = _fix(path, "--inputs", str(inputs), *FAST, "--format", "json")
    assert main(argv) == 0
    model = _json(capsys)
    assert model["bound"] == {"N": 1, "height": 10, "width": 12}
    # MACs at the data's size: 128·128·9 per output pixel of 10×12
    assert model["cost"]["macs"] == 128 * 128 * 9 * 10 * 12
    (rewrite,) = model["rewrites"]
    assert rewrite["rank"] == 8


def test_default_bindings_are_named_in_the_first_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fixtures.save(fixtures.symbolic_dims_model(), tmp_path / "fcn.onnx")
    assert main(_fix(path, "--samples", "2", *FAST)) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "; bound N=1, H=224, W=224; " in first
    assert main(_fix(path, "--samples", "2", *FAST, "--format", "json")) == 0
    assert _json(capsys)["bound"] == {"N": 1, "H": 224, "W": 224}
    # Dims bound by --input-shape are the user's own: not listed.
    argv = _fix(path, "--samples", "2", *FAST, "--input-shape", "input=1x3x32x32")
    assert main([*argv, "--format", "json"]) == 0
    assert _json(capsys)["bound"] == {}


# -- images ---------------------------------------------------------------------------------


def _images(folder: Path, count: int = 4, mode: str = "RGB") -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        size = (40 + 8 * i, 32 + 4 * i)  # varied sizes and aspect ratios
        channels = 3 if mode == "RGB" else 1
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode=mode)
        image.save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _image_model(tmp_path: Path, channels: int = 3, layout: str = "NCHW") -> Path:
    g = GraphBuilder(seed=2)
    shape = (1, channels, 24, 24) if layout == "NCHW" else (1, 24, 24, channels)
    x = g.input("image", shape)
    if layout == "NHWC":
        x = g.transpose(x, [0, 3, 1, 2], name="to_nchw")
    y = g.relu(g.conv(x, 128, 3, pads=1, name="stem"), name="relu")
    y = g.conv(y, 128, 3, pads=1, bias=False, name="wide", rank=4)
    y = g.flatten(g.global_avgpool(y, name="pool"), name="flat")
    g.gemm(y, 10, name="fc")
    return fixtures.save(g.build("images"), tmp_path / "images.onnx")


def test_a_folder_of_images_with_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    model = _image_model(tmp_path)
    folder = _images(tmp_path / "images")
    argv = _fix(model, "--inputs", str(folder), "--preprocess", "imagenet", "--no-latency")
    assert main([*argv, "--select", "CL001"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        f"4 samples from {folder} (imagenet: resize 27, crop 24x24, scale 1/255, "
        "mean 0.485:0.456:0.406, std 0.229:0.224:0.225, NCHW, RGB): statistics fitted on 2, "
        "verified on the other 2)"
    ) in first
    assert main([*argv, "--select", "CL001", "--format", "json"]) == 0
    model_json = _json(capsys)
    assert model_json["calibration"] == {
        "source": "images",
        "fit": 2,
        "verify": 2,
        "verify_samples": [2, 3],
        "select": 2,
        "select_samples": [2, 3],
    }
    (rewrite,) = model_json["rewrites"]
    assert rewrite["verified"]["top1_agreement"] == 1.0


def test_images_follow_layout_channels_and_keys() -> None:
    pytest.importorskip("PIL")
    folder = Path(__file__).parent  # no images here
    with pytest.raises(ConvlintError, match="no images in the folder"):
        read_samples(
            folder, ["x"], {"x": (1, 3, 8, 8)}, {"x": np.dtype("f4")}, {}, None, PRESETS["unit"]
        )


@pytest.mark.parametrize(
    ("channels", "layout", "spec", "expected"),
    [
        (3, "NCHW", "unit", (1, 3, 24, 24)),
        (3, "NHWC", "caffe", (1, 24, 24, 3)),
        (1, "NCHW", "raw", (1, 1, 24, 24)),
        (3, "NCHW", "resize=30,crop=24,scale=1/127.5,mean=1,order=bgr", (1, 3, 24, 24)),
    ],
)
def test_images_become_the_inputs_shape(
    tmp_path: Path, channels: int, layout: str, spec: str, expected: tuple[int, ...]
) -> None:
    pytest.importorskip("PIL")
    folder = _images(tmp_path / "images", mode="RGB" if channels == 3 else "L")
    dims = expected
    samples = read_samples(
        folder, ["x"], {"x": dims}, {"x": np.dtype("f4")}, {}, None, parse_preprocess(spec)
    )
    assert samples.source == "images" and samples.available == 4
    assert all(f["x"].shape == expected for f in samples.feeds)
    values = np.stack([f["x"] for f in samples.feeds])
    if spec == "raw":
        assert values.min() >= 0 and values.max() <= 255 and values.max() > 1
    if spec.startswith("resize=30"):
        assert values.min() >= -1.0 and values.max() <= 1.0


def test_images_on_a_model_with_symbolic_size_use_the_crop(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = _images(tmp_path / "images")
    dims: tuple[Any, ...] = ("N", 3, "H", "W")
    samples = read_samples(
        folder, ["x"], {"x": dims}, {"x": np.dtype("f4")}, {}, 2, parse_preprocess("crop=16x20")
    )
    assert samples.shapes == {"x": (1, 3, 16, 20)} and len(samples.feeds) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenett", "unknown preset 'imagenett'"),
        ("size=3", "unknown key 'size'"),
        ("scale=0", "scale='0': expected a positive number"),
        ("layout=CHW", "layout='CHW': expected NCHW or NHWC"),
        ("imagenet,caffe", "two presets"),
    ],
)
def test_bad_preprocess_is_a_usage_error(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_preprocess(spec)


def test_bad_preprocess_exits_2_before_any_work(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fix(planted, "--preprocess", "mean=a", *FAST)) == 2
    err = capsys.readouterr().err
    assert "--preprocess: mean='a'" in err and len(err.strip().splitlines()) == 1


def test_images_without_pillow_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL fails
    with pytest.raises(ConvlintError, match=r"needs Pillow: pip install 'convlint\[images\]'"):
        read_samples(
            folder, ["x"], {"x": (1, 3, 8, 8)}, {"x": np.dtype("f4")}, {}, None, PRESETS["unit"]
        )


def test_preprocess_with_an_array_file_is_refused(planted: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, _normal(2, *SHAPE[1:]))
    with pytest.raises(UsageError, match="applies to a folder of images"):
        read_samples(
            path, ["input"], {"input": SHAPE}, {"input": np.dtype("f4")}, {}, None, PRESETS["unit"]
        )


# -- top-1 agreement ------------------------------------------------------------------------


def _classifier(tmp_path: Path, rank: int | None = 8) -> Path:
    g = GraphBuilder(seed=4)
    x = g.input("input", (1, 128, 6, 6))
    y = g.relu(g.conv(x, 128, 3, pads=1, bias=False, name="wide", rank=rank), name="relu")
    y = g.flatten(g.global_avgpool(y, name="pool"), name="flat")
    g.gemm(y, 10, name="fc")
    return fixtures.save(g.build("classifier"), tmp_path / "classifier.onnx")


def test_top1_agreement_is_reported_for_class_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _classifier(tmp_path)
    assert main(_fix(path, "--samples", "4", *FAST, "--format", "json")) == 0
    model = _json(capsys)
    assert model["verification"]["top1_agreement"] == 1.0
    (rewrite,) = model["rewrites"]
    assert rewrite["verified"]["top1_agreement"] == 1.0
    assert rewrite["verified"]["top1_samples"] == 4
    assert rewrite["verified"]["top1_agreement_interval"] == [pytest.approx(0.5101, abs=1e-4), 1.0]
    assert main(_fix(path, "--samples", "4", *FAST)) == 0
    out = capsys.readouterr().out
    assert "top-1 100.0% (95% 51.0%-100.0% of 4), expected 100.0% from margins [ok]" in out
    assert "warning: top-1 agreement from 4 held-out samples, fewer than 50" in out


def test_no_top1_without_class_scores(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_fix(planted, "--samples", "2", *FAST, "--format", "json")) == 0
    model = _json(capsys)
    assert "top1_agreement" not in model["verification"]
    assert "top1_agreement" not in model["rewrites"][0]["verified"]


def test_min_top1_bounds_the_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rank 1 of a full-rank conv moves the class scores far: a loose --tolerance lets it
    through, --min-top1 1 does not."""
    path = _classifier(tmp_path, rank=None)
    loose = ["--samples", "16", *FAST, "--rank", "1", "--tolerance", "100"]
    assert main(_fix(path, *loose, "--format", "json")) == 0
    agreement = _json(capsys)["verification"]["top1_agreement"]
    assert agreement < 1.0
    out = path.with_name("out.onnx")
    out.unlink()
    assert main(_fix(path, *loose, "--min-top1", "1")) == 1
    err = capsys.readouterr().err
    assert "top-1 agreement is below --min-top1 1" in err and not out.exists()


def test_min_top1_alone_leaves_the_outputs_error_unbounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--min-top1 without --tolerance is the whole budget: the default 1e-3 does not bind
    (the JSON's tolerance is null), while without --min-top1 it does."""
    path = _classifier(tmp_path, rank=None)
    rank1 = ["--samples", "16", *FAST, "--rank", "1"]
    assert main(_fix(path, *rank1, "--min-top1", "0", "--format", "json")) == 0
    model = _json(capsys)
    assert model["tolerance"] is None
    assert model["verification"]["rel_l2_error"] > 1e-3
    assert model["verification"]["ok"] is True
    path.with_name("out.onnx").unlink()
    assert main(_fix(path, *rank1, "--min-top1", "0")) == 0
    assert "(no tolerance, method weight" in capsys.readouterr().out
    path.with_name("out.onnx").unlink()
    assert main(_fix(path, *rank1)) == 1
    assert "rewritten model breaks --tolerance 0.001" in capsys.readouterr().err


def test_min_top1_without_class_scores_exits_2(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_fix(planted, "--samples", "2", *FAST, "--min-top1", "0.9")) == 2
    err = capsys.readouterr().err
    assert "--min-top1: no output of the model looks like class scores" in err


def test_class_rows_shapes() -> None:
    from convlint.rewrite.verify import class_rows

    assert class_rows(np.zeros((1, 1000), np.float32)).shape == (1, 1000)  # type: ignore[union-attr]
    assert class_rows(np.zeros((2, 10, 1, 1), np.float32)).shape == (2, 10)  # type: ignore[union-attr]
    assert class_rows(np.zeros((10,), np.float32)).shape == (1, 10)  # type: ignore[union-attr]
    assert class_rows(np.zeros((1, 256, 6, 6), np.float32)) is None
    assert class_rows(np.zeros((1, 1), np.float32)) is None
    assert class_rows(np.zeros((1, 10), np.int64)) is None


def test_read_images_need_an_image_input(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = _images(tmp_path / "images")
    with pytest.raises(ConvlintError, match="4-D image input"):
        read_samples(folder, ["x"], {"x": (1, 8)}, {"x": np.dtype("f4")}, {}, None, PRESETS["unit"])


def test_loaded_model_is_unchanged_by_calibration(planted: Path, tmp_path: Path) -> None:
    before = onnx.load(planted)
    path = tmp_path / "x.npy"
    np.save(path, _normal(4, *SHAPE[1:]))
    assert main(_fix(planted, "--inputs", str(path), "--quiet", *FAST)) == 0
    assert onnx.load(planted) == before


def test_ranks_are_chosen_on_other_held_out_samples_than_those_that_verify(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """64 samples: 16 fit (64 are held out when 16 still fit), and the budget's search
    measures on the first 24 held-out samples, the written model is verified on the other 24:
    a check the search never looked at."""
    path = tmp_path / "inputs.npy"
    np.save(path, _normal(64, *SHAPE[1:]))
    argv = _fix(planted, "--inputs", str(path), "--no-latency")
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "64 samples from" in first
    assert first.endswith(
        ": statistics fitted on 16, ranks chosen on 24, verified on the other 24)"
    )
    assert main([*argv, "--format", "json"]) == 0
    model = _json(capsys)
    assert model["calibration"] == {
        "source": "npy",
        "fit": 16,
        "verify": 24,
        "verify_samples": list(range(40, 64)),
        "select": 24,
        "select_samples": list(range(16, 40)),
    }
    assert model["verification"]["ok"] and model["rewrites"][0]["rank"] == 48
