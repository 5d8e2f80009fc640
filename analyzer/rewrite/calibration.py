"""The samples `convlint fix` fits its statistics on and verifies with: `--inputs` or noise.

``--inputs`` takes

- an ``.npz`` with one array per model input (by input name);
- an ``.npy`` holding the one input of a single-input model;
- a folder of images (PNG, JPEG, and what else Pillow reads; the optional ``images`` extra),
  turned into the model's input by ``--preprocess`` (:class:`Preprocess`).

An array is one sample (the input's shape), or a stack of samples along a new leading axis. For
a model whose batch (first) dim is 1 or symbolic, an array of the input's rank is also a stack:
``(N, C, H, W)`` is N samples of ``(1, C, H, W)``, as is ``(N, 1, C, H, W)``. Symbolic dims
not bound by ``--input-shape`` take their sizes from the data (a model exported for any image
size is analysed and verified at the size of the user's images).

Float inputs must be finite and not constant over all samples (all zeros verifies only the
biases); integer and bool inputs are indices and flags, so a constant one is normal.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from convlint.errors import ConvlintError, UsageError

Feed = dict[str, npt.NDArray[Any]]
# What --inputs may hold in all (declared sizes, checked before any array is read).
MAX_INPUT_BYTES = 2 * 2**30
# Images: a side of a resize or crop, the pixels of an image once resized, and the aspect ratio
# of an image (checked from its header, before it is decoded: a 3 KB PNG of 1,000,000×1 pixels
# would become gigabytes once its shorter side is resized).
MAX_IMAGE_SIDE = 16384
MAX_RESIZED_PIXELS = 1 << 26
MAX_ASPECT = 64
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
Dims = Sequence[int | str | None]  # an input's declared dims: sizes, names of symbolic dims

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class Samples:
    """Samples read from ``--inputs`` and the per-sample shape of each input they fix."""

    feeds: list[Feed]
    source: str  # "npz", "npy" or "images"
    available: int  # samples in the source (feeds may hold fewer: --samples)
    shapes: dict[str, tuple[int, ...]]
    preprocess: str = ""  # the preprocessing applied to images, as the report states it


# -- --preprocess ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input, in this order: convert to RGB (or grayscale for a
    one-channel input), resize so the shorter side is ``resize`` pixels (bilinear), crop the
    centre to ``crop`` (height × width), reorder the channels (``order``), compute
    ``(pixel · scale - mean) / std`` per channel, lay out as ``layout``."""

    resize: int | None = None  # None: crop / crop_fraction
    crop: tuple[int, int] | None = None  # None: the model's input size, else 224 × 224
    crop_fraction: float = 1.0  # the crop's share of the resized shorter side
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None  # "NCHW" or "NHWC"; None: from the input's shape
    order: str = "RGB"
    name: str = "unit"
    explicit: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self, channels: int, size: tuple[int, int], layout: str) -> str:
        resize = self.resize or round(min(size) / self.crop_fraction)
        text = [
            f"resize {resize}",
            f"crop {size[0]}x{size[1]}",
            f"scale {_number(self.scale)}",
        ]
        if any(self.mean):
            text.append("mean " + ":".join(_number(m) for m in self.mean))
        if any(s != 1 for s in self.std):
            text.append("std " + ":".join(_number(s) for s in self.std))
        text += [layout, "gray" if channels == 1 else self.order]
        return f"{self.name}: " + ", ".join(text)


def _number(value: float) -> str:
    if value and abs(1 / value - round(1 / value)) < 1e-9 and abs(value) < 1:
        return f"1/{round(1 / value)}"
    return f"{value:g}"


PRESETS: dict[str, Preprocess] = {
    # torchvision's ImageNet models: resize 256, centre crop 224, RGB in [0, 1], normalized.
    "imagenet": Preprocess(
        crop_fraction=0.875,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        name="imagenet",
    ),
    # Caffe's VGG and ResNet: BGR in [0, 255], per-channel mean subtracted.
    "caffe": Preprocess(
        crop_fraction=0.875,
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
        order="BGR",
        name="caffe",
    ),
    # TensorFlow's Inception and MobileNet: RGB in [-1, 1].
    "inception": Preprocess(
        crop_fraction=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="inception"
    ),
    "unit": Preprocess(name="unit"),  # RGB in [0, 1]
    "raw": Preprocess(scale=1.0, name="raw"),  # RGB in [0, 255]
}
KEYS = ("resize", "crop", "scale", "mean", "std", "layout", "order")


def parse_preprocess(text: str | None) -> Preprocess:
    """``imagenet``, ``caffe,layout=NHWC``, ``resize=256,crop=224,scale=1/255,mean=0.5,...``:
    at most one preset (default ``unit``), then keys that override it."""
    preset: str | None = None
    explicit: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            if key not in PRESETS:
                raise UsageError(
                    f"--preprocess: unknown preset {key!r} (presets: {', '.join(PRESETS)}; "
                    f"keys: {', '.join(KEYS)})"
                )
            if preset is not None and preset != key:
                raise UsageError(f"--preprocess: two presets, {preset!r} and {key!r}")
            preset = key
        elif key not in KEYS:
            raise UsageError(f"--preprocess: unknown key {key!r} (keys: {', '.join(KEYS)})")
        else:
            explicit[key] = value
    result = PRESETS[preset or "unit"]
    for key, value in explicit.items():
        result = _with_key(result, key, value)
    name = preset or ("custom" if explicit else "unit")
    return replace(result, name=name, explicit=explicit)


def _with_key(base: Preprocess, key: str, value: str) -> Preprocess:
    try:
        if key == "resize":
            size = int(value)
            if not 1 <= size <= MAX_IMAGE_SIDE:
                raise ValueError
            return replace(base, resize=size)
        if key == "crop":
            height, _, width = value.lower().partition("x")
            crop = (int(height), int(width or height))
            if not 1 <= min(crop) <= max(crop) <= MAX_IMAGE_SIDE:
                raise ValueError
            return replace(base, crop=crop)
        if key == "scale":
            numerator, _, denominator = value.partition("/")
            scale = float(numerator) / float(denominator or 1)
            if not FLOAT32_TINY <= scale <= FLOAT32_MAX:
                raise ValueError
            return replace(base, scale=scale)
        if key in ("mean", "std"):
            values = tuple(float(v) for v in value.replace("/", ":").split(":"))
            # Values that float32, the pixels' type, holds (beyond it numpy warns, then inf).
            if not all(abs(v) <= FLOAT32_MAX for v in values) or (
                key == "std" and not all(v >= FLOAT32_TINY for v in values)
            ):
                raise ValueError
            return replace(base, mean=values) if key == "mean" else replace(base, std=values)
        if key == "layout":
            layout = value.upper()
            if layout not in ("NCHW", "NHWC"):
                raise ValueError
            return replace(base, layout=layout)
        order = value.upper()
        if order not in ("RGB", "BGR"):
            raise ValueError
        return replace(base, order=order)
    except (ValueError, ZeroDivisionError, OverflowError):
        expected = {
            "resize": f"a number of pixels, at most {MAX_IMAGE_SIDE}",
            "crop": f"N or HxW pixels, at most {MAX_IMAGE_SIDE}",
            "scale": "a positive number or a fraction such as 1/255 (a float32)",
            "mean": "numbers separated by ':' (one, or one per channel; float32s)",
            "std": "positive numbers separated by ':' (one, or one per channel; float32s)",
            "layout": "NCHW or NHWC",
            "order": "RGB or BGR",
        }[key]
        raise UsageError(f"--preprocess: {key}={value!r}: expected {expected}") from None


# -- reading --------------------------------------------------------------------------------


def read_samples(
    path: Path,
    names: Sequence[str],
    dims: dict[str, Dims],
    dtypes: dict[str, np.dtype[Any]],
    given: dict[str, tuple[int, ...]],
    limit: int | None,
    preprocess: Preprocess | None = None,
) -> Samples:
    """The samples in ``path`` for the inputs ``names`` (their declared ``dims``, numpy
    ``dtypes``; ``given`` the user's --input-shape), at most ``limit`` of them."""
    if path.is_dir():
        if len(names) != 1:
            raise ConvlintError(
                f"--inputs {path}: a folder of images feeds a model with one input; this one "
                f"has {len(names)} ({', '.join(names)}): give an .npz with one array per input"
            )
        name = names[0]
        array, described = read_images(path, dims[name], given.get(name), limit, preprocess)
        arrays, source = {name: array}, "images"
    else:
        if preprocess is not None:
            raise UsageError("--preprocess applies to a folder of images, not to an array file")
        arrays = _read_arrays(path, names)
        source = "npy" if path.suffix.lower() == ".npy" else "npz"
        described = ""
    stacks: dict[str, npt.NDArray[Any]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for name in names:
        stack, shape = _as_stack(path, name, arrays[name], dims[name], given.get(name), symbols)
        dtype = dtypes[name]
        # Same kind only: numpy's "same_kind" casting lets int64 into float32 silently.
        if stack.dtype.kind != dtype.kind or not np.can_cast(stack.dtype, dtype, "same_kind"):
            raise ConvlintError(
                f"{path}: array {name!r} has dtype {stack.dtype}, expected {dtype} for input "
                f"{name!r} (or a dtype of the same kind)"
            )
        check_values(path, name, stack)
        stacks[name], shapes[name] = stack, shape
    counts = {len(stack) for stack in stacks.values()}
    if len(counts) != 1 or 0 in counts:
        raise ConvlintError(f"{path}: the arrays hold different or zero numbers of samples")
    available = counts.pop()
    taken = available if limit is None else min(limit, available)
    feeds = [
        {
            name: np.ascontiguousarray(stacks[name][i], dtype=dtypes[name]).reshape(shapes[name])
            for name in names
        }
        for i in range(taken)
    ]
    return Samples(feeds, source, available, shapes, described)


def _declared(handle: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype an .npy stream declares in its header (nothing else is read)."""
    version = np.lib.format.read_magic(handle)
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = reader(handle)
    return tuple(int(d) for d in shape), dtype


def _refuse_oversized(path: Path, npy: bool) -> None:
    """Refuse arrays whose declared sizes exceed MAX_INPUT_BYTES before reading any (a small
    compressed .npz can declare gigabytes of zeros)."""
    headers: list[tuple[str, tuple[tuple[int, ...], np.dtype[Any]]]] = []
    if npy:
        with open(path, "rb") as handle:
            headers.append((path.stem, _declared(handle)))
    else:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as handle:
                        headers.append((info.filename[:-4], _declared(handle)))
    total = 0
    for name, (shape, dtype) in headers:
        size = math.prod(shape) * dtype.itemsize
        total += size
        if total > MAX_INPUT_BYTES:
            raise ConvlintError(
                f"{path}: array {name!r} declares {'x'.join(map(str, shape))} {dtype} "
                f"({size:,} bytes): the inputs may hold at most {MAX_INPUT_BYTES:,} bytes"
            )


def _read_arrays(path: Path, names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    npy = path.suffix.lower() == ".npy"
    if path.exists() and not path.is_file():
        # A FIFO or a device would block or never end: only a regular file is read.
        raise ConvlintError(f"{path}: not a regular file, cannot hold --inputs")
    try:
        _refuse_oversized(path, npy)
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConvlintError(f"{path}: no such inputs file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        kind = ".npy" if npy else ".npz"
        raise ConvlintError(f"{path}: not a readable {kind} file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise ConvlintError(
                f"{path}: an .npy holds one array; the model has {len(names)} inputs "
                f"({', '.join(names)}): give an .npz with one array per input"
            )
        return {names[0]: loaded}
    try:
        with loaded as data:  # the arrays are read here, one by one
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if "allow_pickle" in str(exc):
            raise ConvlintError(
                f"{path}: holds an array of Python objects (pickled), not numbers"
            ) from None
        raise ConvlintError(f"{path}: not a readable .npz file ({exc})") from None
    for name in names:
        if name not in arrays:
            raise ConvlintError(
                f"{path}: no array for input {name!r} (arrays: {', '.join(arrays) or 'none'})"
            )
    return arrays


def _as_stack(
    path: Path,
    name: str,
    array: npt.NDArray[Any],
    dims: Dims,
    given: tuple[int, ...] | None,
    symbols: dict[str, tuple[int, str]],
) -> tuple[npt.NDArray[Any], tuple[int, ...]]:
    """(samples stacked on axis 0, the shape of one sample) for one input's array."""
    declared: list[int | str | None] = list(given) if given is not None else list(dims)
    rank = len(declared)
    batch_one = declared[0] == 1 or (rank > 0 and not isinstance(declared[0], int))
    candidates: list[tuple[npt.NDArray[Any], tuple[int, ...]]] = []
    if array.ndim == rank + 1:
        candidates.append((array, tuple(array.shape[1:])))
    if array.ndim == rank:
        if batch_one and rank > 0:
            candidates.append((array[:, None], (1, *array.shape[1:])))
        candidates.append((array[None], tuple(array.shape)))
    for stack, shape in candidates:
        if _fits(shape, declared):
            _bind(path, name, shape, declared, symbols)
            return stack, shape
    expected = [d if isinstance(d, int) else (d or "?") for d in declared]
    text = ", ".join(map(str, expected))
    also = f", or [samples, {', '.join(map(str, expected[1:]))}]" if batch_one else ""
    raise ConvlintError(
        f"{path}: array {name!r} has shape {list(array.shape)}, expected [{text}] or "
        f"[samples, {text}]{also}"
    )


def _fits(shape: tuple[int, ...], declared: Sequence[int | str | None]) -> bool:
    return len(shape) == len(declared) and all(
        not isinstance(d, int) or d == s for s, d in zip(shape, declared, strict=True)
    )


def _bind(
    path: Path,
    name: str,
    shape: tuple[int, ...],
    declared: Sequence[int | str | None],
    symbols: dict[str, tuple[int, str]],
) -> None:
    """A named symbolic dim takes one size across all inputs."""
    for size, dim in zip(shape, declared, strict=True):
        if isinstance(dim, str) and dim:
            seen = symbols.setdefault(dim, (size, name))
            if seen[0] != size:
                raise ConvlintError(
                    f"{path}: dim {dim!r} is {seen[0]} in array {seen[1]!r} but {size} in "
                    f"array {name!r}"
                )


def check_values(path: str | Path, name: str, array: npt.NDArray[Any]) -> None:
    """Refuse float inputs that cannot verify anything: non-finite, or one value repeated."""
    if array.dtype.kind not in "fc":
        return  # integer and bool inputs are indices and flags: a constant one is normal
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    if nan or inf:
        raise ConvlintError(
            f"{path}: input {name!r} holds {non_finite_values(nan, inf)}; "
            "verification needs finite inputs"
        )
    flat = array.ravel()
    if flat.size > 1 and np.all(flat == flat[0]):
        raise ConvlintError(
            f"{path}: input {name!r} is constant (every value is {flat[0].item():g}): "
            "zero variance is too degenerate to verify a rewrite on"
        )


def non_finite_values(nan: int, inf: int) -> str:
    """``3 NaN values``, ``1 NaN and 2 infinite values``."""
    counts = " and ".join(
        text for count, text in ((nan, f"{nan} NaN"), (inf, f"{inf} infinite")) if count
    )
    return f"{counts} value{'' if nan + inf == 1 else 's'}"


# -- images ---------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _image_geometry(
    dims: Dims, given: tuple[int, ...] | None, layout: str | None
) -> tuple[str, int, tuple[int | None, int | None]]:
    """(layout, channels, (height, width) or None where symbolic) of an image input."""
    declared = list(given) if given is not None else list(dims)
    if len(declared) != 4:
        raise ConvlintError(
            f"a folder of images feeds a 4-D image input (N, C, H, W or N, H, W, C); this "
            f"input has {len(declared)} dims"
        )
    if layout is None:
        layout = "NHWC" if declared[3] in (1, 3) and declared[1] not in (1, 3) else "NCHW"
    if layout == "NCHW":
        channels, height, width = declared[1], declared[2], declared[3]
    else:
        height, width, channels = declared[1], declared[2], declared[3]
    count = channels if isinstance(channels, int) else 3
    if count not in (1, 3):
        raise ConvlintError(
            f"the image input has {count} channels in layout {layout}; images give 1 or 3 "
            "(set --preprocess layout=NCHW or NHWC if the layout was guessed wrong)"
        )
    size = (
        height if isinstance(height, int) else None,
        width if isinstance(width, int) else None,
    )
    return layout, count, size


def read_images(
    folder: Path,
    dims: Dims,
    given: tuple[int, ...] | None,
    limit: int | None,
    preprocess: Preprocess | None,
) -> tuple[npt.NDArray[np.float32], str]:
    """The images of ``folder`` (sorted by name, at most ``limit``) as an (N, ...) float32
    stack laid out as the input, and a description of the preprocessing."""
    try:
        from PIL import Image
    except ImportError:
        raise ConvlintError(
            f"--inputs {folder}: reading images needs Pillow: pip install 'convlint[images]'"
        ) from None
    preprocess = preprocess or PRESETS["unit"]
    files = image_files(folder)
    if not files:
        raise ConvlintError(
            f"--inputs {folder}: no images in the folder ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if limit is not None:
        files = files[:limit]
    layout, channels, (height, width) = _image_geometry(dims, given, preprocess.layout)
    if preprocess.crop is not None:
        crop = preprocess.crop
        if (height is not None and height != crop[0]) or (width is not None and width != crop[1]):
            raise ConvlintError(
                f"--preprocess crop={crop[0]}x{crop[1]} does not fit the model's input of "
                f"{height}x{width}"
            )
    else:
        crop = (height or DEFAULT_IMAGE_SIZE, width or DEFAULT_IMAGE_SIZE)
    resize = preprocess.resize or round(min(crop) / preprocess.crop_fraction)
    mean = _per_channel(preprocess.mean, channels, "mean")
    std = _per_channel(preprocess.std, channels, "std")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                wide, high = image.size  # from the header: nothing decoded yet
                if max(wide, high) > MAX_ASPECT * min(wide, high):
                    raise ConvlintError(
                        f"--inputs {folder}: image {file.name} is {wide}x{high} pixels: an "
                        f"aspect ratio beyond 1:{MAX_ASPECT} is no photograph to calibrate on"
                    )
                scale = resize / min(image.size)
                new_size = (
                    max(crop[1], round(image.size[0] * scale)),
                    max(crop[0], round(image.size[1] * scale)),
                )
                if new_size[0] * new_size[1] > MAX_RESIZED_PIXELS:
                    raise ConvlintError(
                        f"--inputs {folder}: image {file.name} resized would be "
                        f"{new_size[0]}x{new_size[1]} pixels (at most {MAX_RESIZED_PIXELS:,})"
                    )
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize(new_size, Image.Resampling.BILINEAR)
                left = (new_size[0] - crop[1]) // 2
                top = (new_size[1] - crop[0]) // 2
                image = image.crop((left, top, left + crop[1], top + crop[0]))
                pixels = np.asarray(image, dtype=np.float32)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ConvlintError(
                f"--inputs {folder}: cannot read image {file.name}: {exc}"
            ) from None
        if channels == 1:
            pixels = pixels[..., None]
        elif preprocess.order == "BGR":
            pixels = pixels[..., ::-1]
        with np.errstate(over="ignore", invalid="ignore"):  # an inf is refused by name later
            pixels = (pixels * np.float32(preprocess.scale) - mean) / std
        images.append(pixels if layout == "NHWC" else pixels.transpose(2, 0, 1))
    stack = np.stack(images).astype(np.float32)
    return stack, preprocess.describe(channels, crop, layout)


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> npt.NDArray[np.float32]:
    if len(values) not in (1, channels):
        raise UsageError(
            f"--preprocess {key} has {len(values)} values; the input has {channels} channels"
        )
    return np.asarray(values, dtype=np.float32)
