"""Stage 5c: run models in onnxruntime, in a child process under a time limit, and compare.

onnxruntime runs in a separate Python process (``python -I -c "...serve()"``) so that a model
that crashes the runtime (a segfault in a kernel) or hangs it cannot take the linter down:
every request must answer within ``timeout`` seconds, else the child is killed and the caller
gets a :class:`RuntimeFailure` (one line, exit 2). Requests travel through files in a private
temporary folder (the model, the inputs) and one line on the child's stdin/stdout, so a large
model never blocks a pipe. This is the only module that imports onnxruntime, and only in the
child. The child starts isolated (``-I``): neither the working directory nor the user's site
folder nor ``PYTHONPATH`` is on its ``sys.path``, so an ``onnxruntime.py``, ``numpy.py`` or
``pickle.py`` in the folder where ``convlint fix`` runs is never imported.

The child uses the CPU provider with ``intra_op_num_threads=THREADS`` and basic graph
optimizations. ``CONVLINT_TEST_RUNTIME_FAULT=hang|crash`` in the environment makes the child
hang or abort on its next request (``hang:N``, ``crash:N``: on its N-th request, from 1): a test
hook for the timeout, crash and interruption paths.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import onnx

from convlint.errors import ConvlintError
from convlint.loader import move_to_external_data

Feed = dict[str, npt.NDArray[Any]]
Outputs = list[npt.NDArray[Any]]  # one array per model output, in the model's order

THREADS = 2
DEFAULT_BATCH = 1
DEFAULT_SPATIAL = 224
FAULT_ENV = "CONVLINT_TEST_RUNTIME_FAULT"
INTEGER_HIGH = 16
WEIGHTS_FILE = "weights.bin"  # in the runtime's folder, beside every model it is sent
MAX_WAIT = 1e8  # seconds (three years): select() overflows its time_t on much larger timeouts


class RuntimeFailure(ConvlintError):
    """onnxruntime crashed, hung past the time limit, or refused a model."""


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

    def as_dict(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        data: dict[str, Any] = {
            "max_abs_error": finite(self.max_abs_error),
            "rel_l2_error": finite(self.rel_l2_error),
            "ok": self.ok,
        }
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
                f"{whose}'s output {name!r} holds {_non_finite_values(nan, inf)} on the "
                "verification inputs",
            )
    return None


def _non_finite_values(nan: int, inf: int) -> str:
    """``3 NaN values``, ``1 NaN and 2 infinite values``."""
    counts = " and ".join(
        text for count, text in ((nan, f"{nan} NaN"), (inf, f"{inf} infinite")) if count
    )
    return f"{counts} value{'' if nan + inf == 1 else 's'}"


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
    """Samples from an .npz holding one array per input: the input's shape (one sample) or
    that shape with a leading samples axis."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ConvlintError(f"{path}: no such inputs file") from None
    except (OSError, ValueError) as exc:
        raise ConvlintError(f"{path}: not a readable .npz file ({exc})") from None
    counts = set()
    for spec in specs:
        if spec.name not in arrays:
            raise ConvlintError(
                f"{path}: no array for input {spec.name!r} (arrays: {', '.join(arrays) or 'none'})"
            )
        array = arrays[spec.name]
        if array.shape == spec.shape:
            arrays[spec.name] = array[None]
        elif array.shape[1:] != spec.shape:
            raise ConvlintError(
                f"{path}: array {spec.name!r} has shape {list(array.shape)}, expected "
                f"{list(spec.shape)} or [samples, {', '.join(map(str, spec.shape))}]"
            )
        # Same kind only: numpy's "same_kind" casting lets int64 into float32 silently.
        if array.dtype.kind != spec.dtype.kind or not np.can_cast(
            array.dtype, spec.dtype, "same_kind"
        ):
            raise ConvlintError(
                f"{path}: array {spec.name!r} has dtype {array.dtype}, expected {spec.dtype} "
                f"for input {spec.name!r} (or a dtype of the same kind)"
            )
        _check_values(path, spec.name, arrays[spec.name])
        counts.add(arrays[spec.name].shape[0])
    if len(counts) != 1 or 0 in counts:
        raise ConvlintError(f"{path}: the arrays hold different or zero numbers of samples")
    samples = counts.pop()
    return [
        {s.name: np.ascontiguousarray(arrays[s.name][i], dtype=s.dtype) for s in specs}
        for i in range(samples)
    ]


def _check_values(path: str | Path, name: str, array: npt.NDArray[Any]) -> None:
    """Refuse float inputs that cannot verify anything: non-finite, or one value repeated."""
    if array.dtype.kind not in "fc":
        return  # integer and bool inputs are indices and flags: a constant one is normal
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    if nan or inf:
        raise ConvlintError(
            f"{path}: input {name!r} holds {_non_finite_values(nan, inf)}; "
            "verification needs finite inputs"
        )
    flat = array.ravel()
    if flat.size > 1 and np.all(flat == flat[0]):
        raise ConvlintError(
            f"{path}: input {name!r} is constant (every value is {flat[0].item():g}): "
            "zero variance is too degenerate to verify a rewrite on"
        )


def compare(
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    tolerance: float,
    names: Sequence[str] = (),
) -> Errors:
    """Max abs error and the worst output's relative L2 error over all samples. A NaN or an
    infinity in either side's outputs is a failure: it hides any difference."""
    for outputs, whose in ((reference, "the original model"), (candidate, "the rewritten model")):
        failed = not_finite(outputs, names, whose)
        if failed is not None:
            return failed
    worst_rel, worst_abs = 0.0, 0.0
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
    return Errors(worst_abs, worst_rel, worst_rel <= tolerance)


# -- the child process ------------------------------------------------------------------


def serve() -> None:
    """The child's loop: one request per stdin line, one answer per stdout line."""
    # Keep stdout for the protocol alone: whatever else writes to fd 1 (C libraries included)
    # lands in the stderr log instead.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    out.write("ready\n")
    out.flush()
    fault, _, at = os.environ.get(FAULT_ENV, "").partition(":")
    for request, line in enumerate(sys.stdin, start=1):
        folder = Path(line.strip())
        if not line.strip():
            break
        if not at or int(at) == request:
            if fault == "hang":
                signal.pause()
            if fault == "crash":
                os.abort()
        try:
            with open(folder / "request.pkl", "rb") as handle:
                model_path, feeds, names = pickle.load(handle)
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
            names = list(names) or [o.name for o in session.get_outputs()]
            results = [session.run(names, feed) for feed in feeds]
            with open(folder / "response.pkl", "wb") as handle:
                pickle.dump(results, handle, protocol=pickle.HIGHEST_PROTOCOL)
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
        self._stderr: IO[bytes] | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="convlint-ort-"))
        try:
            self._stderr = open(self._folder / "stderr.log", "wb")  # noqa: SIM115
            # -I: no working directory, user site or PYTHONPATH on the child's sys.path.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", "from convlint.verify import serve; serve()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
            )
            self._answer(None)
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
        """The child's next line; ``what`` the request it answers (None: start-up)."""
        proc = self._proc
        if proc is None:
            raise RuntimeFailure("onnxruntime is not running")
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], min(self.timeout, MAX_WAIT))
        if not ready:
            doing = "start" if what is None else f"finish {what}"
            raise self._fail(f"onnxruntime did not {doing} within {self.timeout:g} s (--timeout)")
        line = proc.stdout.readline()
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

    def externalize(self, model: onnx.ModelProto, threshold: int = 4096) -> onnx.ModelProto:
        """A light copy of ``model`` whose large initializers point into one data file in the
        runtime's folder, written once: later requests built from it carry only what changed."""
        light = onnx.ModelProto()
        light.CopyFrom(model)
        move_to_external_data(light, self._folder / WEIGHTS_FILE, threshold)
        return light

    def run(
        self,
        model: onnx.ModelProto | str | Path,
        feeds: Sequence[Mapping[str, npt.NDArray[Any]]],
        outputs: Sequence[str] = (),
        what: str = "running the model",
    ) -> list[Outputs]:
        """Outputs of ``model`` for every feed (``outputs`` names them; default: all)."""
        proc = self._proc
        if proc is None:
            raise RuntimeFailure(f"onnxruntime is not running (before {what})")
        if isinstance(model, onnx.ModelProto):
            model_path = self._folder / "model.onnx"
            model_path.write_bytes(model.SerializeToString())
        else:
            model_path = Path(model).resolve()
        with open(self._folder / "request.pkl", "wb") as handle:
            pickle.dump(
                (str(model_path), [dict(f) for f in feeds], list(outputs)),
                handle,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
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
            results: list[Outputs] = pickle.load(handle)
        return results
