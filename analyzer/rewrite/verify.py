"""Stage 5c: run models in onnxruntime, in a child process under a time limit, and compare.

onnxruntime runs in a separate Python process (``python -I -c "...serve()"``) so that a model
that crashes the runtime (a segfault in a kernel) or hangs it cannot take the linter down:
every request must answer within ``timeout`` seconds, else the child is killed and the caller
gets a :class:`RuntimeFailure` (one line, exit 2). Requests travel through files in a private
temporary folder (the model, the inputs) and one line on the child's stdin/stdout, so a large
model never blocks a pipe. This is the only module that imports onnxruntime, and only in the
child. The child starts isolated (``-I``): neither the working directory nor the user's site
folder nor ``PYTHONPATH`` is on its ``sys.path``, so an ``onnxruntime.py``, ``numpy.py`` or
``pickle.py`` in the folder where ``convlint fix`` runs is never imported. What it needs is put
back explicitly: the ``sys.path`` entries this process imported convlint, onnx and numpy from
(and where it would import onnxruntime from, the working directory left out), in this process's
order, so the child imports each from exactly where this process did, also when they come
through ``PYTHONPATH``, ``pip install --target`` or the user site (``import_roots``). A child
that cannot import them says so in its first line (``cannot import convlint in the onnxruntime
process: ...``) instead of ``ready``.

Requests: run a model on feeds (its outputs come back); accumulate channel second moments of
named tensors sample by sample, at each pixel or between pixels some rows apart (only channels
× channels matrices come back, never the activations); time models on one feed, interleaved
(``_serve_time``: the latency `fix` reports); run ``onnx.checker``'s full check on a file (it
holds the file twice over in memory, so it runs here, beside the sessions, not in `fix`'s
process). Each request's sessions are freed before the next, so the child holds one model at a
time (two small ones when timing).

The child uses the CPU provider with ``intra_op_num_threads=THREADS`` and basic graph
optimizations to run and verify; timing uses every optimization and the provider and threads
it is given (``--provider``, ``--latency-threads``), and goes on while the confidence interval
of the ratio holds 1 (``latency.undecided``, numpy only). The child's first line names the
execution providers its onnxruntime has (``Runtime.providers``), so that an unknown
``--provider`` is refused before any work.
``CONVLINT_TEST_RUNTIME_FAULT=hang|crash`` in the environment makes the child hang or abort on
its next request (``hang:N``, ``crash:N``: on its N-th request, from 1; ``hang:0``, ``crash:0``:
while starting, before it says it is ready): a test hook for the timeout, crash and
interruption paths.

Starting the child (importing onnxruntime, numpy and onnx) is not bounded by ``timeout`` but by
``max(timeout, START_TIMEOUT)``: on a busy machine the imports alone can take seconds, and a
short ``--timeout`` is meant for the model's runs, not for Python's start-up.

Errors compare every output over all samples; an output that looks like class scores
(``class_rows``) also gets its top-1 agreement, which ``min_top1`` bounds as ``tolerance``
bounds the relative L2 error. A count of flips is a 0/1 event per sample: at a true flip rate of
2%, none of 50 samples flips one time in three. So the top-1 agreement is also
*expected* from the margins (``expected_agreement``): every row's margin (its top class's score
over the runner-up's, in log space for rows of probabilities) against every row's change of
margin under the rewrite; ``min_top1`` must hold for both the count and the expectation on
the samples that verify. On the samples the budget's search chooses ranks on (when they are
not those that verify, ``prepare.Feeds``) the expectation alone decides: one row near a tie
would otherwise stop the search wherever it flips, and those samples promise nothing.

Verification means something only on finite, varying inputs: ``--inputs`` holding NaN or
infinities, or a float input that is constant over every sample (all zeros: a conv net's output
is then its biases, which every rewrite keeps), is refused; an output that is not finite, of the
original or of a rewrite, fails verification.

Default inputs (no ``--inputs``): seeded standard normal values for float inputs, integers
uniform in [0, 16) for integer inputs, booleans at random; symbolic dims are bound by
``--input-shape``, else the batch (first) dim to 1 and every other symbolic dim to 224.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import onnx

from convlint.errors import ConvlintError
from convlint.rewrite.calibration import non_finite_values

Feed = dict[str, npt.NDArray[Any]]
Outputs = list[npt.NDArray[Any]]  # one array per model output, in the model's order

THREADS = 2
WARMUP_RUNS = 2  # untimed runs of each session before timing
MAX_TIMED_RUNS = 1000
TIME_ROUNDS = 4  # session pairs at least, each with its own thread pools
DEFAULT_BATCH = 1
DEFAULT_SPATIAL = 224
FAULT_ENV = "CONVLINT_TEST_RUNTIME_FAULT"
INTEGER_HIGH = 16
WEIGHTS_FILE = "weights.bin"  # in the runtime's folder, beside every model it is sent
# An output whose root-mean-square difference stays under this passes --tolerance whatever its
# relative error (float32 rounding of a fold is about 1e-7 of the values involved).
ABSOLUTE_FLOOR = 1e-5
WILSON_Z = 1.959964  # the normal quantile of a two-sided 95% interval
PROGRESS = ".\n"  # the child's line after each sample it has run (restarts the time limit)
START_TIMEOUT = 120.0  # seconds for the child to start, whatever --timeout says (at least)
MAX_WAIT = 1e8  # seconds (three years): select() overflows its time_t on much larger timeouts


CHILD_PACKAGES = ("convlint", "onnx", "onnxruntime", "numpy")
# The child's program: the import roots (its arguments) first on sys.path, then serve().
CHILD_CODE = """import sys
sys.path[0:0] = sys.argv[1:]
try:
    from convlint.rewrite.verify import serve
except BaseException as exc:
    why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    print(f"cannot import convlint in the onnxruntime process: {why}", flush=True)
    raise SystemExit(3) from None
serve()
"""


def import_roots() -> list[str]:
    """The ``sys.path`` entries that ``CHILD_PACKAGES`` come from in this process, in the order
    of ``sys.path``. A package not imported yet (onnxruntime) is looked up as an import would
    find it, the working directory left out; a package that an import hook maps from a folder
    of another name (an editable install) is left to the same hook in the child."""
    import importlib.machinery
    import importlib.util

    here = {"", ".", os.getcwd()}
    searched = [entry for entry in sys.path if entry not in here]
    roots: list[str] = []
    for name in CHILD_PACKAGES:
        module = sys.modules.get(name)
        spec = (
            module.__spec__
            if module is not None
            else importlib.machinery.PathFinder.find_spec(name, searched)
        )
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations or Path(locations[0]).name != name:
            continue
        root = str(Path(locations[0]).parent)
        if root not in roots:
            roots.append(root)
    position: dict[str, int] = {}
    for index, entry in enumerate(sys.path):
        position.setdefault(os.path.realpath(entry or "."), index)
    return sorted(roots, key=lambda root: position.get(os.path.realpath(root), len(sys.path)))


class RuntimeFailure(ConvlintError):
    """onnxruntime crashed, hung past the time limit, or refused a model."""


@dataclass(frozen=True)
class PatchSpec:
    """Where to read rows of a 2-D feature map (N, C, H, W): the patches a conv of this
    geometry reads for ``per_sample`` of its ``out_shape`` output pixels (a 1×1 geometry reads
    the channel vector at each pixel)."""

    tensor: str
    out_shape: tuple[int, int]
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    per_sample: int = 64
    seed: int = 0


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    elem_type: int

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


@dataclass(frozen=True)
class Errors:
    """How far a model's outputs moved from the reference's, over every sample."""

    max_abs_error: float
    rel_l2_error: float  # worst output's ||y' - y|| / ||y||
    ok: bool
    problem: str = ""  # why the outputs cannot be compared (a NaN output), else empty
    # Share of rows whose arg-max class is unchanged, worst output that looks like class scores
    # (see ``class_rows``); None when no output does.
    top1_agreement: float | None = None
    top1_samples: int = 0  # the rows behind top1_agreement
    top1_interval: tuple[float, float] | None = None  # its 95% Wilson score interval
    # The agreement expected from the rows' margins and changes of margin (``expected_agreement``)
    top1_expected: float | None = None

    def as_dict(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        data: dict[str, Any] = {
            "max_abs_error": finite(self.max_abs_error),
            "rel_l2_error": finite(self.rel_l2_error),
            "ok": self.ok,
        }
        if self.top1_agreement is not None:
            data["top1_agreement"] = self.top1_agreement
            data["top1_samples"] = self.top1_samples
            if self.top1_interval is not None:
                data["top1_agreement_interval"] = list(self.top1_interval)
            if self.top1_expected is not None:
                data["top1_expected_agreement"] = self.top1_expected
        if self.problem:
            data["problem"] = self.problem
        return data


def not_finite(
    outputs: Sequence[Outputs], names: Sequence[str] = (), whose: str = "the model"
) -> Errors | None:
    """A failed ``Errors`` naming the first output holding NaN or infinity, else None."""
    for index in range(len(outputs[0]) if outputs else 0):
        values = [np.asarray(sample[index]) for sample in outputs]
        if not all(v.dtype.kind in "fc" for v in values):
            continue
        nan = sum(int(np.count_nonzero(np.isnan(v))) for v in values)
        inf = sum(int(np.count_nonzero(np.isinf(v))) for v in values)
        if nan or inf:
            name = names[index] if index < len(names) else f"#{index}"
            return Errors(
                math.inf,
                math.inf,
                False,
                f"{whose}'s output {name!r} holds {non_finite_values(nan, inf)} on the "
                "verification inputs",
            )
    return None


def bind_dims(dims: Sequence[int | str | None], given: tuple[int, ...] | None) -> tuple[int, ...]:
    """Concrete dims for one input: the user's --input-shape, else the documented defaults."""
    if given is not None:
        return given
    return tuple(
        d if isinstance(d, int) else DEFAULT_BATCH if i == 0 else DEFAULT_SPATIAL
        for i, d in enumerate(dims)
    )


def random_feeds(specs: Sequence[InputSpec], samples: int, seed: int) -> list[Feed]:
    rng = np.random.default_rng(seed)
    feeds: list[Feed] = []
    for _ in range(samples):
        feed: Feed = {}
        for spec in specs:
            dtype = spec.dtype
            # np.asarray: for a scalar input (an If's condition) numpy hands back a numpy
            # scalar, which onnxruntime refuses; a 0-d array it takes.
            if dtype == np.bool_:
                feed[spec.name] = np.asarray(rng.random(spec.shape) < 0.5)
            elif np.issubdtype(dtype, np.integer):
                feed[spec.name] = np.asarray(rng.integers(0, INTEGER_HIGH, spec.shape), dtype)
            else:
                feed[spec.name] = np.asarray(rng.standard_normal(spec.shape), dtype)
        feeds.append(feed)
    return feeds


def load_feeds(path: str | Path, specs: Sequence[InputSpec]) -> list[Feed]:
    """Samples from an .npz holding one array per input (or an .npy for a single input): the
    input's shape (one sample) or that shape with a leading samples axis (see
    ``calibration``)."""
    from convlint.rewrite.calibration import read_samples

    names = [s.name for s in specs]
    samples = read_samples(
        Path(path),
        names,
        {s.name: s.shape for s in specs},
        {s.name: s.dtype for s in specs},
        {},
        None,
    )
    return samples.feeds


def class_rows(output: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """One sample's output as (rows, classes) when it looks like class scores, else None.

    Class scores: a float output with one axis of at least 2 entries after the first (batch)
    axis and every other axis of size 1: (N, K) as most classifiers end, (N, K, 1, 1) as a
    fully convolutional one does, or a plain (K,) vector. Each of the N rows is one prediction.
    """
    array = np.asarray(output)
    if array.dtype.kind != "f" or array.ndim == 0:
        return None
    if array.ndim == 1:
        return array[None] if array.shape[0] >= 2 else None
    wide = [d for d in array.shape[1:] if d != 1]
    if len(wide) != 1 or wide[0] < 2:
        return None
    return array.reshape(array.shape[0], wide[0])


def class_outputs(outputs: Outputs) -> list[int]:
    """Indices of the outputs that look like class scores (see ``class_rows``)."""
    return [i for i, output in enumerate(outputs) if class_rows(output) is not None]


def top1_agreement(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float | None:
    """The share of rows whose arg-max is the same in both, worst class-score output; None
    when no output looks like class scores."""
    counts = top1_counts(reference, candidate)
    return None if counts is None else counts[0] / counts[1]


def wilson_interval(same: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a share ``same / total`` (95% for the default z): unlike
    the plain ``p ± z·√(p(1-p)/n)``, it stays inside [0, 1] and is not empty at 100%."""
    if total <= 0:
        return (0.0, 1.0)
    share = same / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if same == 0 else max(0.0, centre - half)
    high = 1.0 if same == total else min(1.0, centre + half)
    return (low, high)


def top1_counts(
    reference: Sequence[Outputs], candidate: Sequence[Outputs]
) -> tuple[int, int] | None:
    """(rows with the same arg-max, rows) of the worst class-score output; None when no
    output looks like class scores."""
    worst: tuple[int, int] | None = None
    for index in class_outputs(reference[0]) if reference else []:
        same = total = 0
        for ref, new in zip(reference, candidate, strict=True):
            a, b = class_rows(ref[index]), class_rows(new[index])
            if a is None or b is None or a.shape != b.shape:
                return (0, max(len(reference), 1))
            same += int(np.count_nonzero(a.argmax(axis=1) == b.argmax(axis=1)))
            total += a.shape[0]
        if total and (worst is None or same / total < worst[0] / worst[1]):
            worst = (same, total)
    return worst


def _probabilities(rows: npt.NDArray[Any]) -> bool:
    """Whether rows of class scores are probabilities (a softmax's: non-negative, each row
    summing to 1)."""
    return bool(rows.size and rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def _scores(rows: npt.NDArray[Any], logs: bool) -> npt.NDArray[np.float64]:
    """Rows of class scores as comparable margins: with ``logs`` (rows of probabilities), their
    logs, where the margin of two classes is the difference of their logits; else as they are."""
    values = rows.astype(np.float64)
    return np.log(np.maximum(values, np.finfo(rows.dtype).tiny)) if logs else values


def margin_changes(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], index: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Every row's margin in the reference (its top class's score over the runner-up's) and
    how much the candidate changes it (the same class's score over its best other class's, less
    the margin: below minus the margin, the row flips). Changes within float rounding of the
    row's scores are zero. None when a row is not class scores or the shapes differ."""
    margins, changes = [], []
    for ref, new in zip(reference, candidate, strict=True):
        a, b = class_rows(ref[index]), class_rows(new[index])
        if a is None or b is None or a.shape != b.shape:
            return None
        logs = _probabilities(a)  # the reference's rows decide, for both sides alike
        before, after = _scores(a, logs), _scores(b, logs)
        rows = np.arange(before.shape[0])
        top = before.argmax(axis=1)
        runner_up = np.sort(before, axis=1)[:, -2]
        margin = before[rows, top] - runner_up
        others = after.copy()
        others[rows, top] = -np.inf
        change = after[rows, top] - others.max(axis=1) - margin
        rounding = 1e-5 * np.maximum(1.0, np.abs(before).max(axis=1))
        margins.append(margin)
        changes.append(np.where(np.abs(change) <= rounding, 0.0, change))
    return np.concatenate(margins), np.concatenate(changes)


def expected_agreement(margins: npt.NDArray[Any], changes: npt.NDArray[Any]) -> float:
    """The top-1 agreement expected when any row's change of margin may meet any row's margin:
    the share of the n×n pairs (i, j) with ``margins[i] + changes[j] >= 0``.

    Counting flips tells 0 of 50 from 1 of 50 and nothing finer; this uses the whole
    distribution of the changes (how often a change of this size occurs) against the whole
    distribution of the margins (how many rows are that close to their runner-up), so it moves
    smoothly as the rewrite degrades, and it does not read 100% for a rewrite whose changes
    are large just because no held-out row happened to sit near its boundary. It assumes a
    row's change does not depend on its margin; it is sorted, not paired (O(n log n))."""
    if margins.size == 0:
        return 1.0
    ordered = np.sort(changes)
    flips = np.searchsorted(ordered, -margins, side="left")  # changes[j] < -margins[i]
    return float(1.0 - flips.sum() / (margins.size * ordered.size))


def expected_top1(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float | None:
    """The worst class-score output's ``expected_agreement``; None when no output looks like
    class scores."""
    worst: float | None = None
    for index in class_outputs(reference[0]) if reference else []:
        measured = margin_changes(reference, candidate, index)
        value = 0.0 if measured is None else expected_agreement(*measured)
        worst = value if worst is None else min(worst, value)
    return worst


def compare(
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    tolerance: float,
    names: Sequence[str] = (),
    min_top1: float | None = None,
    counted: bool = True,
) -> Errors:
    """Max abs error and the worst output's relative L2 error over all samples, and the top-1
    agreement of class-score outputs; ``min_top1`` bounds it as ``tolerance`` bounds the error:
    the agreement expected from the margins, and (``counted``) the agreement counted.
    A NaN or an infinity in either side's outputs is a failure: it hides any difference."""
    for outputs, whose in ((reference, "the original model"), (candidate, "the rewritten model")):
        failed = not_finite(outputs, names, whose)
        if failed is not None:
            return failed
    worst_rel, worst_abs, within = 0.0, 0.0, True
    for index in range(len(reference[0])):
        ref = np.concatenate([np.ravel(r[index]).astype(np.float64) for r in reference])
        new = np.concatenate([np.ravel(c[index]).astype(np.float64) for c in candidate])
        if ref.shape != new.shape:
            return Errors(math.inf, math.inf, False)
        diff = new - ref
        norm = float(np.linalg.norm(ref))
        delta = float(np.linalg.norm(diff))
        rel = delta / norm if norm > 0 else (0.0 if delta == 0 else math.inf)
        worst_rel = max(worst_rel, rel)
        worst_abs = max(worst_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        # An output near zero everywhere (a sigmoid map of an empty page) makes the relative
        # error measure rounding: a root-mean-square difference under the floor passes.
        rms = delta / math.sqrt(diff.size) if diff.size else 0.0
        within = within and (rel <= tolerance or rms <= ABSOLUTE_FLOOR)
    counts = top1_counts(reference, candidate)
    if counts is None:
        return Errors(worst_abs, worst_rel, within)
    share = counts[0] / counts[1]
    expected = expected_top1(reference, candidate)
    ok = within and (
        min_top1 is None
        or (
            (share >= min_top1 or not counted)
            and (expected is None or expected >= min_top1 - 1e-12)
        )
    )
    return Errors(
        worst_abs,
        worst_rel,
        ok,
        top1_agreement=share,
        top1_samples=counts[1],
        top1_interval=wilson_interval(*counts),
        top1_expected=expected,
    )


# -- the child process ------------------------------------------------------------------


def _session_options(ort: Any, threads: int, optimize_all: bool = False) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize_all
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    return options


_progress_out: IO[str] | None = None  # the child's protocol stream (``serve`` sets it)


def _progressed() -> None:
    """Tell the parent one more sample has run (``PROGRESS``)."""
    if _progress_out is not None:
        _progress_out.write(PROGRESS)
        _progress_out.flush()


def _serve_run(ort: Any, model_path: str, feeds: list[Feed], names: Sequence[str]) -> list[Outputs]:
    session = ort.InferenceSession(
        model_path, _session_options(ort, THREADS), providers=["CPUExecutionProvider"]
    )
    names = list(names) or [o.name for o in session.get_outputs()]
    outputs = []
    for feed in feeds:
        outputs.append(session.run(names, feed))
        _progressed()
    return outputs


def row_statistic(tensor: str, apart: int) -> str:
    """The name (a key of ``fix``'s statistics) of E[x(h) x(h+apart)ᵀ] of an NCHW tensor."""
    return f"{tensor}#rows{apart}"


def _by_channel(array: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """An NC... array as channels × (every other position), in float64."""
    return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1).astype(np.float64)


def _serve_moments(
    ort: Any, model_path: str, feeds: list[Feed], statistics: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """E[x xᵀ] and E[x] over the channel axis (1) of each named NC... tensor, one sample at a
    time: the activations never leave the child, only matrices of channels × channels. Each
    statistic is (tensor, d): d = 0 the moment at each pixel; d > 0 E[x(h) x(h+d)ᵀ] of an NCHW
    tensor, over every pair of pixels d rows apart in one column (its mean: the upper rows')."""
    session = ort.InferenceSession(
        model_path, _session_options(ort, THREADS), providers=["CPUExecutionProvider"]
    )
    tensors = list(dict.fromkeys(tensor for tensor, _ in statistics))
    sums: dict[tuple[str, int], list[Any]] = {}
    for feed in feeds:
        arrays = dict(zip(tensors, session.run(tensors, feed), strict=True))
        for name in statistics:
            tensor, apart = name
            array = arrays[tensor]
            channels = array.shape[1]
            if name not in sums:
                sums[name] = [np.zeros((channels, channels)), np.zeros(channels), 0]
            if not apart:
                upper = lower = _by_channel(array)
            elif array.ndim == 4 and array.shape[2] > apart:
                upper, lower = _by_channel(array[:, :, :-apart]), _by_channel(array[:, :, apart:])
            else:
                continue  # no two rows that far apart: left at zero
            sums[name][0] += upper @ lower.T
            sums[name][1] += upper.sum(axis=1)
            sums[name][2] += upper.shape[1]
        _progressed()
    return {
        name: (moment / max(count, 1), total / max(count, 1))
        for name, (moment, total, count) in sums.items()
    }


def patch_rows(array: npt.NDArray[Any], spec: PatchSpec, sample: int) -> npt.NDArray[np.float32]:
    """The patches (rows of C·kh·kw, in a conv weight's order) that ``spec.per_sample`` output
    pixels of one sample read from ``array`` (N, C, H, W): the pixels are drawn from the seed
    and the sample's index, so every tensor sampled with the same spec shape and seed is read at
    the same output pixels. Each batch item counts as a sample of its own."""
    kernel, strides, pads, dilations = spec.kernel, spec.strides, spec.pads, spec.dilations
    out_h, out_w = spec.out_shape
    padded = np.pad(array, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    rows = []
    for item in range(array.shape[0]):
        rng = np.random.default_rng([spec.seed, sample, item])
        count = min(spec.per_sample, out_h * out_w)
        flat = np.sort(rng.choice(out_h * out_w, size=count, replace=False))
        oy, ox = flat // out_w, flat % out_w
        r = oy[:, None] * strides[0] + np.arange(kernel[0]) * dilations[0]
        c = ox[:, None] * strides[1] + np.arange(kernel[1]) * dilations[1]
        patch = padded[item][:, r[:, :, None], c[:, None, :]]  # (C, n, kh, kw)
        rows.append(np.moveaxis(patch, 1, 0).reshape(count, -1).astype(np.float32))
    return np.concatenate(rows)


def _serve_sample(
    ort: Any, model_path: str, feeds: list[Feed], specs: Sequence[PatchSpec]
) -> list[npt.NDArray[np.float32]]:
    """Patch rows of named tensors at sampled output pixels (``patch_rows``), one array per
    spec over every feed: only the sampled rows leave the child, never whole activations."""
    session = ort.InferenceSession(
        model_path, _session_options(ort, THREADS), providers=["CPUExecutionProvider"]
    )
    names = list(dict.fromkeys(spec.tensor for spec in specs))
    rows: list[list[npt.NDArray[np.float32]]] = [[] for _ in specs]
    for index, feed in enumerate(feeds):
        values = dict(zip(names, session.run(names, feed), strict=True))
        for found, spec in zip(rows, specs, strict=True):
            found.append(patch_rows(values[spec.tensor], spec, index))
        _progressed()
    return [np.concatenate(found) for found in rows]


def _serve_time(
    ort: Any,
    model_paths: list[str],
    feed: Feed,
    threads: int,
    provider: str,
    min_runs: int,
    budget: float,
    confirm_budget: float,
    resident: bool,
) -> tuple[list[list[float]], list[int]]:
    """Seconds of each timed run of each model, on the same feed, runs interleaved; and how
    many runs of each every round timed.

    A round loads a fresh session of each model (fresh thread pools: where a pool's threads
    land and what else runs then differ from session to session, and a single pair of sessions
    can be 10% apart on identical models on a busy machine), in alternating order.
    ``resident``: both sessions at once, the models alternating run by run (ABBA...). Else one
    session at a time, a block of runs each: a model too large to hold twice is still compared
    under the same conditions over the same span. Each session's first ``WARMUP_RUNS`` runs
    (allocations, lazy kernels) are not timed, and its threads do not spin between runs (a
    spinning pool of one session takes the cores the other's needs: identical models then
    differ by up to 1.8x). At least ``TIME_ROUNDS`` rounds and ``min_runs`` runs of each, more
    while ``budget`` seconds last; then, for two models, more rounds while the 99% interval of
    their ratio holds 1 (``latency.undecided`` at ``EARLY_CONFIDENCE``, looked at each time
    the rounds have grown by ``latency.GROWTH``) and ``confirm_budget`` lasts.
    """
    import time

    from convlint.rewrite.latency import EARLY_CONFIDENCE, GROWTH, undecided

    options = _session_options(ort, threads, optimize_all=True)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cpu = "CPUExecutionProvider"
    providers = [provider] if provider == cpu else [provider, cpu]

    def load(path: str) -> Any:
        session = ort.InferenceSession(path, options, providers=providers)
        for _ in range(WARMUP_RUNS):
            session.run(None, feed)
        return session

    def timed(session: Any) -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return time.perf_counter() - start

    times: list[list[float]] = [[] for _ in model_paths]
    rounds: list[int] = []
    count = len(model_paths)
    per_round = -(-min_runs // TIME_ROUNDS)
    start = time.perf_counter()
    deadline = start + budget + confirm_budget
    look = TIME_ROUNDS
    while True:
        order = list(range(count)) if len(rounds) % 2 == 0 else list(reversed(range(count)))
        runs = 0
        if resident:
            sessions = {k: load(model_paths[k]) for k in order}
            begun = time.perf_counter()
            # Fast models: the first round runs while its share of the budget lasts, and
            # every later round as many runs (rounds of one size weigh alike in the interval).
            while runs < per_round or (
                time.perf_counter() - begun < budget / TIME_ROUNDS
                and len(times[0]) < MAX_TIMED_RUNS // TIME_ROUNDS
            ):
                for k in order if runs % 2 == 0 else reversed(order):
                    times[k].append(timed(sessions[k]))
                runs += 1
            per_round = runs
            del sessions
        else:
            for k in order:
                session = load(model_paths[k])
                times[k].extend(timed(session) for _ in range(per_round))
                del session
            runs = per_round
        rounds.append(runs)
        if len(rounds) < TIME_ROUNDS or len(rounds) < look:
            continue
        if (
            count != 2
            or len(times[0]) + per_round > MAX_TIMED_RUNS
            or time.perf_counter() >= deadline
            or not undecided(times, rounds, EARLY_CONFIDENCE)
        ):
            return times, rounds
        look = math.ceil(len(rounds) * GROWTH)


def _serve_check(ort: Any, model_path: str) -> str:
    """onnx.checker's full check of a model file; the problem in one line, or ""."""
    try:
        onnx.checker.check_model(model_path, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and what a damaged file raises
        return " ".join(str(exc).split())[:300]
    return ""


def _fault(fault: str) -> None:
    """The test hook (``FAULT_ENV``): hang until killed, or abort."""
    if fault == "hang":
        while True:
            signal.pause()
    if fault == "crash":
        os.abort()


def serve() -> None:
    """The child's loop: one request per stdin line, one answer per stdout line."""
    # Keep stdout for the protocol alone: whatever else writes to fd 1 (C libraries included)
    # lands in the stderr log instead.
    global _progress_out
    out = os.fdopen(os.dup(1), "w")
    _progress_out = out
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    fault, _, at = os.environ.get(FAULT_ENV, "").partition(":")
    if at == "0":  # the test hook, while starting
        _fault(fault)
    try:
        import onnxruntime as ort
    except Exception as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        out.write(f"cannot import onnxruntime in the onnxruntime process: {why}\n")
        out.flush()
        return

    # The providers this onnxruntime has, for --provider to be checked against.
    out.write(f"ready {','.join(ort.get_available_providers())}\n")
    out.flush()
    handlers: dict[str, Callable[..., Any]] = {
        "run": _serve_run,
        "moments": _serve_moments,
        "sample": _serve_sample,
        "time": _serve_time,
        "check": _serve_check,
    }
    for request, line in enumerate(sys.stdin, start=1):
        folder = Path(line.strip())
        if not line.strip():
            break
        if not at or int(at) == request:
            _fault(fault)
        try:
            with open(folder / "request.pkl", "rb") as handle:
                kind, *arguments = pickle.load(handle)
            # Each handler's sessions are freed when it returns: one model at a time.
            results = handlers[kind](ort, *arguments)
            with open(folder / "response.pkl", "wb") as handle:
                pickle.dump(results, handle, protocol=pickle.HIGHEST_PROTOCOL)
            del results
            out.write("ok\n")
        except Exception as exc:
            message = " ".join(str(exc).split())[:300]
            out.write(f"error {type(exc).__name__}: {message}\n")
        out.flush()


class Runtime:
    """onnxruntime in a child process; every request answers within ``timeout`` seconds."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[str] | None = None
        self._pending = b""  # what the child wrote after the line last read
        self._stderr: IO[bytes] | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="convlint-ort-"))
        try:
            self._stderr = open(self._folder / "stderr.log", "wb")  # noqa: SIM115
            # -I: no working directory, user site or PYTHONPATH on the child's sys.path; the
            # places this process imports from are given instead.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", CHILD_CODE, *import_roots()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
            )
            ready = self._answer(None)
            if not ready.startswith("ready"):
                raise self._fail(ready)
            self.providers: tuple[str, ...] = tuple(filter(None, ready[6:].split(",")))
        except BaseException:  # no `with` block owns the folder yet: remove it here
            self.close(kill=True)
            raise

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Leaving on an exception (Ctrl-C, SIGTERM, a timeout) the child may be busy with a
        # request: stop it at once rather than wait for it to read the request to quit.
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and kill:
            proc.kill()
            proc.wait()
        elif proc is not None:
            try:
                assert proc.stdin is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _fail(self, message: str) -> RuntimeFailure:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        return RuntimeFailure(message)

    def _answer(self, what: str | None) -> str:
        """The child's next line; ``what`` the request it answers (None: start-up). The
        child says ``PROGRESS`` after each sample it runs: each one restarts the time limit,
        so ``timeout`` bounds one sample's run, not a request over many samples."""
        proc = self._proc
        if proc is None:
            raise RuntimeFailure("onnxruntime is not running")
        assert proc.stdout is not None
        limit = self.timeout if what is not None else max(self.timeout, START_TIMEOUT)
        line: str | None = PROGRESS
        while line == PROGRESS:
            line = self._line(proc.stdout.fileno(), limit)
            if line is None:
                doing = "start" if what is None else f"finish {what}"
                option = " (--timeout)" if limit == self.timeout else ""
                raise self._fail(f"onnxruntime did not {doing} within {limit:g} s{option}")
        if not line:
            code = proc.wait()
            cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            assert self._stderr is not None
            self._stderr.flush()
            tail = (self._folder / "stderr.log").read_text(errors="replace").strip()
            detail = f": {tail.splitlines()[-1][:200]}" if tail else ""
            doing = "starting" if what is None else what
            raise self._fail(f"onnxruntime crashed while {doing} ({cause}){detail}")
        return line.strip()

    def _line(self, fd: int, limit: float) -> str | None:
        """The next line the child writes ("" when it closed its end), None after ``limit``
        seconds without one. Read from the descriptor itself: a buffered reader could hold a
        second line that select() would then not see."""
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], min(limit, MAX_WAIT))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                line, self._pending = self._pending, b""
                return line.decode(errors="replace")
            self._pending += chunk
        line_bytes, _, self._pending = self._pending.partition(b"\n")
        return line_bytes.decode(errors="replace") + "\n"

    def check(self, path: Path, what: str = "checking the written model") -> str:
        """onnx.checker's full check of ``path``, run here because it holds the whole file in
        memory twice over; the problem found, or ""."""
        problem: str = self._request(what, "check", str(Path(path).resolve()))
        return problem

    def save(self, model: onnx.ModelProto, name: str) -> Path:
        """Write ``model`` into the runtime's folder (where its staged weights are)."""
        path = self._folder / name
        path.write_bytes(model.SerializeToString())
        return path

    def peak_memory(self) -> int | None:
        """The child's peak resident memory in bytes so far (Linux; else None)."""
        proc = self._proc
        if proc is None:
            return None
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    @property
    def alive(self) -> bool:
        """False once the child crashed, hung past the time limit, or was closed."""
        return self._proc is not None

    @property
    def folder(self) -> Path:
        """The runtime's private folder: models sent by path must have their data here."""
        return self._folder

    def _model_path(self, model: onnx.ModelProto | str | Path, name: str = "model.onnx") -> str:
        if isinstance(model, onnx.ModelProto):
            model_path = self._folder / name
            model_path.write_bytes(model.SerializeToString())
            return str(model_path)
        return str(Path(model).resolve())

    def _request(self, what: str, kind: str, *arguments: Any) -> Any:
        proc = self._proc
        if proc is None:
            raise RuntimeFailure(f"onnxruntime is not running (before {what})")
        with open(self._folder / "request.pkl", "wb") as handle:
            pickle.dump((kind, *arguments), handle, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{self._folder}\n")
            proc.stdin.flush()
        except OSError:
            raise self._fail(f"onnxruntime crashed before {what}") from None
        answer = self._answer(what)
        if answer.startswith("error "):
            raise RuntimeFailure(f"onnxruntime failed while {what}: {answer[6:]}")
        with open(self._folder / "response.pkl", "rb") as handle:
            return pickle.load(handle)

    def run(
        self,
        model: onnx.ModelProto | str | Path,
        feeds: Sequence[Mapping[str, npt.NDArray[Any]]],
        outputs: Sequence[str] = (),
        what: str = "running the model",
    ) -> list[Outputs]:
        """Outputs of ``model`` for every feed (``outputs`` names them; default: all)."""
        path = self._model_path(model)
        results: list[Outputs] = self._request(
            what, "run", path, [dict(f) for f in feeds], list(outputs)
        )
        return results

    def moments(
        self,
        model: onnx.ModelProto | str | Path,
        feeds: Sequence[Mapping[str, npt.NDArray[Any]]],
        statistics: Sequence[tuple[str, int]],
        what: str = "collecting activation statistics",
    ) -> dict[tuple[str, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
        """(E[x xᵀ], E[x]) over the channel axis of each (tensor, rows apart), computed in the
        child (``_serve_moments``)."""
        path = self._model_path(model)
        moments: dict[tuple[str, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
        moments = self._request(what, "moments", path, [dict(f) for f in feeds], list(statistics))
        return moments

    def sample(
        self,
        model: onnx.ModelProto | str | Path,
        feeds: Sequence[Mapping[str, npt.NDArray[Any]]],
        specs: Sequence[PatchSpec],
        what: str = "sampling activations",
    ) -> list[npt.NDArray[np.float32]]:
        """Patch rows of each spec's tensor over every feed (see ``patch_rows``)."""
        path = self._model_path(model)
        rows: list[npt.NDArray[np.float32]] = self._request(
            what, "sample", path, [dict(f) for f in feeds], list(specs)
        )
        return rows

    def time(
        self,
        models: Sequence[onnx.ModelProto | str | Path],
        feed: Mapping[str, npt.NDArray[Any]],
        threads: int,
        provider: str,
        min_runs: int,
        budget: float,
        confirm_budget: float,
        resident: bool,
        what: str = "timing the models",
    ) -> tuple[list[list[float]], list[int]]:
        """Seconds of each timed run of each model, interleaved, and the runs of each round
        (see ``_serve_time``)."""
        paths = [self._model_path(m, f"timed{i}.onnx") for i, m in enumerate(models)]
        times: tuple[list[list[float]], list[int]] = self._request(
            what,
            "time",
            paths,
            dict(feed),
            threads,
            provider,
            min_runs,
            budget,
            confirm_budget,
            resident,
        )
        return times
