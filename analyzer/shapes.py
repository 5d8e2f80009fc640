"""Stage 1, after reading: shapes. Strict ONNX shape inference with data propagation, and what
it leaves unknown computed here: dims a Slice does not touch, and the shapes exporters compute
from ``Shape``/``Size`` (evaluated from small stored values, at two batch sizes, so that a
symbolic batch stays symbolic).

``convlint.loader`` reads the model safely and hands it here; nothing in this module reads a
file or a weight's values beyond a few small integer vectors (axes, starts, shapes). A large
graph's first inference may run in a forked child (:class:`BackgroundInference`) while the
loader reads the graph.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import onnx
from onnx import helper, numpy_helper

try:  # what onnx.shape_inference.infer_shapes calls, for a child to answer in bytes
    from onnx.onnx_cpp2py_export import shape_inference as C  # noqa: N812 (onnx's own name)
except ImportError:  # another onnx layout: no inference in a child (see can_fork)
    C = None  # type: ignore[assignment]

from convlint.errors import ModelError
from convlint.graph import SUBGRAPH_OPS


class InferenceFailed(ModelError):
    """Shape inference refused the model; ``text`` is onnx's whole message."""

    def __init__(self, path: str | Path, text: str) -> None:
        super().__init__(path, f"shape inference failed: {text.splitlines()[-1]}")
        self.text = text


def _run_inference(
    model: onnx.ModelProto | bytes,
    path: str | Path,
    strict: bool = True,
    started: BackgroundInference | None = None,
) -> onnx.ModelProto:
    """``started``: the same inference already running in a child process (its answer is
    taken; if the child gave none, the inference runs here)."""
    if started is not None:
        answer = started.result()
        if isinstance(answer, bytes):
            return onnx.load_model_from_string(answer)
        if isinstance(answer, str):
            raise InferenceFailed(path, answer)
    try:
        # check_type: a weight of another element type than its input (float64 weights on
        # a float32 input) is invalid, as onnxruntime and the full checker say.
        return onnx.shape_inference.infer_shapes(
            model, strict_mode=strict, data_prop=True, check_type=True
        )
    except Exception as exc:
        raise InferenceFailed(path, _failure_text(exc)) from None


def _failure_text(exc: Exception) -> str:
    """What onnx says of a failed inference (its exception's name if it says nothing)."""
    return str(exc).strip() or type(exc).__name__


class BackgroundInference:
    """Strict inference of one model's encoding (:func:`_run_inference`'s first pass) in a
    forked child, while this process reads the model's graph: onnx's inference holds the GIL,
    so a thread would not run beside it. The child sends the inferred model's encoding (or
    onnx's error text) through a pipe and ends with ``os._exit``; it imports nothing and
    touches no lock of this process.

    :meth:`result` is the inferred model's encoding, the error text (what ``_run_inference``
    would have raised), or None when the child ended without a whole answer (killed, out of
    memory): the caller then infers in this process. :meth:`cancel` ends the child unheard.
    Only where ``os.fork`` is safe (see :func:`can_fork`).
    """

    # The answer: one status byte and the payload's length (8 bytes, little-endian), then it.
    _INFERRED, _FAILED = b"I", b"F"

    def __init__(self, encoded: bytes) -> None:
        read, write = os.pipe()
        try:
            with warnings.catch_warnings():  # Python 3.12 warns of any fork with threads running
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except BaseException:
            os.close(read)
            os.close(write)
            raise
        if pid == 0:  # the child: never returns into the caller's code
            try:
                os.close(read)
                self._answer(write, encoded)
            finally:
                os._exit(0)
        os.close(write)
        self._pid: int | None = pid
        self._read = read
        self._result: bytes | str | None = None

    @classmethod
    def _answer(cls, write: int, encoded: bytes) -> None:
        try:
            payload = C.infer_shapes(encoded, True, True, True)  # check_type, strict, data_prop
            status = cls._INFERRED
        except Exception as exc:
            payload = _failure_text(exc).encode("utf-8", "replace")
            status = cls._FAILED
        with open(write, "wb") as out:
            out.write(status + len(payload).to_bytes(8, "little"))
            out.write(payload)

    def result(self) -> bytes | str | None:
        """The child's answer (waited for on the first call, the same on every later one).
        For one thread: a second thread calling it while the first waits gets None."""
        if self._read < 0:
            return self._result
        read, self._read = self._read, -1  # the file below closes it
        with open(read, "rb") as answer:
            head = answer.read(9)
            length = int.from_bytes(head[1:], "little") if len(head) == 9 else -1
            payload = answer.read(length) if length >= 0 else b""  # one buffer of its size
        self._reap()
        if length < 0 or len(payload) != length:
            self._result = None
        elif head[:1] == self._INFERRED:
            self._result = payload
        else:
            self._result = payload.decode("utf-8", "replace")
        return self._result

    def cancel(self) -> None:
        if self._pid is None:
            return
        os.kill(self._pid, signal.SIGKILL)  # not yet reaped: it exists, if only as a zombie
        if self._read >= 0:
            os.close(self._read)
            self._read = -1
        self._reap()

    def _reap(self) -> None:
        if self._pid is not None:
            os.waitpid(self._pid, 0)
            self._pid = None


def can_fork() -> bool:
    """Whether a child may be forked to infer shapes: Linux and other Unix, not macOS (its
    system libraries are not fork-safe), with onnx's inference reachable as bytes to bytes."""
    return hasattr(os, "fork") and sys.platform != "darwin" and C is not None


# How onnx names a node its inference failed on; errors are listed in graph order.
_FAILED_NODE = re.compile(r"\(op_type:(\w+)(?:, node name: ([^)]*))?\)")


def _fails_in_subgraph(model: onnx.ModelProto | bytes, failure: InferenceFailed) -> bool:
    """Whether strict inference first failed on an If, Loop or Scan (inside its subgraph).

    Exporters declare shapes on subgraph outputs that inference then contradicts, and
    onnxruntime runs such models (it merges the shapes leniently); a failure in the main graph
    makes the model invalid.
    """
    failed = _FAILED_NODE.search(failure.text)
    if failed is not None:
        return failed.group(1) in SUBGRAPH_OPS
    if isinstance(model, bytes):  # only on this failure path: parse the bytes again
        model = onnx.load_model_from_string(model)
    return any(node.op_type in SUBGRAPH_OPS for node in model.graph.node)


def _small_int_constants(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Integer vectors of at most 8 values stored in the model (axes, starts, shapes)."""
    int_types = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [
        (n.output[0], a.t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    values: dict[str, list[int]] = {}
    for name, tensor in tensors:
        small = len(tensor.dims) <= 1 and (not tensor.dims or tensor.dims[0] <= 8)
        inline = tensor.data_location != onnx.TensorProto.EXTERNAL
        if tensor.data_type in int_types and small and inline:
            try:
                values[name] = [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
            except ValueError:  # dims that disagree with the data: not a value to use
                continue
    return values


def _refine_slices(model: onnx.ModelProto) -> bool:
    """Keep the dims a Slice does not touch when ONNX inference lost them all.

    Exporters write ``x.chunk(2, dim=1)`` as a Slice whose ends are computed from ``Shape``, and
    ONNX inference then forgets every dim of the output, so every cost below it is unknown
    (torchvision's ShuffleNetV2). Dims outside the slice's constant ``axes`` are the input's.
    Returns whether any shape was refined (and inference should run again).
    """
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    if not slices:
        return False
    values = {v.name: v for v in [*model.graph.input, *model.graph.value_info]}
    constants = _small_int_constants(model)
    refined = False
    for node in slices:
        if len(node.input) > 3 and node.input[3]:
            axes = constants.get(node.input[3])
        else:
            axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        source, target = values.get(node.input[0]), values.get(node.output[0])
        if axes is None or source is None or target is None:
            continue
        source_dims = source.type.tensor_type.shape.dim
        target_dims = target.type.tensor_type.shape.dim
        rank = len(source_dims)
        if rank == 0 or len(target_dims) != rank:
            continue
        sliced = {axis % rank for axis in axes}
        for index in range(rank):
            kept, dim = source_dims[index], target_dims[index]
            if index in sliced or dim.HasField("dim_value"):
                continue
            if kept.HasField("dim_value"):
                dim.dim_value = kept.dim_value
                refined = True
            elif kept.HasField("dim_param") and dim.dim_param != kept.dim_param:
                dim.dim_param = kept.dim_param
                refined = True
    return refined


# Ops a shape computation is made of, whose output is no larger than their inputs broadcast
# together: evaluating a chain of them from small constants and Shape is cheap. ConstantOfShape,
# Expand, Tile and Range are left out: they can build a weight-sized tensor.
SHAPE_ARITHMETIC = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Round", "Sqrt",
        "Reciprocal", "Pow", "Min", "Max", "Clip", "Equal", "Less", "LessOrEqual", "Greater",
        "GreaterOrEqual", "Not", "And", "Or", "Where", "Cast", "CastLike", "Identity", "Gather",
        "GatherElements", "Slice", "Concat", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
        "Transpose", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax",
    }
)  # fmt: skip
SHAPE_OF = ("Shape", "Size")
# Ops whose output shape is read from an input's values: where one of those values is computed
# (from Shape, or from stored constants through Transpose/Reshape/Cast, as tf2onnx writes a
# Pad's paddings), ONNX inference may leave the output shape unknown.
VALUE_SHAPED = frozenset(
    {"Reshape", "Pad", "Resize", "Upsample", "Expand", "Tile", "Slice", "ConstantOfShape"}
)
MAX_SHAPE_VALUES = 64  # elements of a stored tensor read as part of a shape computation
# The two batch sizes shape computations are evaluated at when they read the batch symbol: a
# dim that doubles from the first to the second is that many times the batch.
BATCH_PROBES = (1, 2)


def _static_dims(value: onnx.ValueInfoProto | None) -> list[int] | None:
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return [dim.dim_value for dim in dims]


def batch_symbols(graph: onnx.GraphProto) -> frozenset[str]:
    """The symbolic dim 0 of each data input (an input that is no initializer)."""
    stored = {t.name for t in graph.initializer}
    symbols = set()
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in stored and dims and dims[0].dim_param:
            symbols.add(dims[0].dim_param)
    return frozenset(symbols)


def dim_at(dim: onnx.TensorShapeProto.Dimension, batch: int, symbols: frozenset[str]) -> int | None:
    """A dim's value with every batch symbol taken as ``batch``: a static dim, a batch symbol,
    or a product of them and integers written ``32*N`` (as the loader writes the dims it
    resolves); None for any other symbol."""
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if not dim.dim_param:
        return None
    value = 1
    for factor in dim.dim_param.split("*"):
        factor = factor.strip()
        if factor in symbols:
            value *= batch
        elif factor.isdigit():
            value *= int(factor)
        else:
            return None
    return value


def _dims_at(
    value: onnx.ValueInfoProto | None, batch: int, symbols: frozenset[str]
) -> list[int] | None:
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    dims = [dim_at(d, batch, symbols) for d in value.type.tensor_type.shape.dim]
    return None if any(d is None for d in dims) else cast(list[int], dims)


def _shape_value(node: onnx.NodeProto, dims: list[int]) -> onnx.NodeProto:
    """The Constant node a Shape or Size node is for an input of static ``dims``."""
    if node.op_type == "Size":
        value = np.array(math.prod(dims), np.int64)
    else:
        attrs = {a.name: a.i for a in node.attribute}
        value = np.array(dims[attrs.get("start", 0) : attrs.get("end", len(dims))], np.int64)
    return helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(value))


def _small_constant(node: onnx.NodeProto) -> bool:
    return all(
        a.type != onnx.AttributeProto.TENSOR or math.prod(a.t.dims) <= MAX_SHAPE_VALUES
        for a in node.attribute
    )


class ShapeComputations(NamedTuple):
    # computed tensor -> its value at each of BATCH_PROBES (the same array when it does not
    # depend on the batch)
    values: dict[str, tuple[np.ndarray, np.ndarray]]
    readers: dict[str, list[str]]  # the nodes of unknown output shape reading them -> outputs
    # Those computed from stored values by ops ONNX data propagation follows: inference knew
    # their values already, so reading them from a constant would tell it nothing.
    propagated: frozenset[str] = frozenset()


def _shape_computations(model: onnx.ModelProto, done: set[str]) -> ShapeComputations:
    """Evaluate the shape computations that leave a node's output shape unknown.

    A shape computation is a chain of :data:`SHAPE_ARITHMETIC` nodes from small stored
    tensors, Constant nodes and Shape/Size of tensors whose shape is static but for the batch
    symbol (Shape -> Gather -> Cast -> Mul -> Floor -> Cast -> Concat -> Resize, as PyTorch
    exports ``interpolate(scale_factor=2)``; Shape -> Gather(0) -> Unsqueeze -> Concat with
    [-1] -> Reshape, as tf2onnx writes a flatten). Returns the values of the chains' results
    that feed a node whose output shape is not static (less those in ``done``), evaluated by
    onnx's reference evaluator with the batch symbol at each of :data:`BATCH_PROBES`.
    """
    graph = model.graph
    symbols = batch_symbols(graph)
    values = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    known: dict[str, onnx.TensorProto | None] = {  # small stored tensors, and computed ones
        t.name: t
        for t in graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and math.prod(t.dims[:]) <= MAX_SHAPE_VALUES
    }
    producer: dict[str, tuple[int, onnx.NodeProto]] = {}
    blocked: dict[str, None] = {}  # computed tensors read by a node of unknown output shape
    readers: dict[str, list[str]] = {}
    for index, node in enumerate(graph.node):
        op_type = node.op_type
        inputs = [t for t in node.input if t]
        computable = node.domain in ("", "ai.onnx") and (
            (op_type in SHAPE_OF and _dims_at(values.get(node.input[0]), 1, symbols) is not None)
            or (op_type == "Constant" and _small_constant(node))
            or (op_type in SHAPE_ARITHMETIC and all(t in known for t in inputs))
        )
        if computable:
            for tensor in node.output:
                known[tensor] = None
                producer[tensor] = (index, node)
            continue
        computed = [t for t in inputs if t in producer and t not in done]
        outputs = [t for t in node.output if t]
        if computed and any(_static_dims(values.get(t)) is None for t in outputs):
            blocked.update(dict.fromkeys(computed))
            readers[node.name or f"{op_type}_{index}"] = outputs
    # The chains behind them, in graph order.
    needed: dict[int, onnx.NodeProto] = {}
    stack = list(blocked)
    while stack:
        index, node = producer[stack.pop()]
        if index not in needed:
            needed[index] = node
            stack.extend(t for t in node.input if t in producer)
    if not needed:
        return ShapeComputations({}, {})
    from onnx.reference import ReferenceEvaluator  # 0.2 s to import: only when needed

    shapes = [node for node in needed.values() if node.op_type in SHAPE_OF]
    batched = any(
        _dims_at(values[n.input[0]], 1, symbols) != _dims_at(values[n.input[0]], 2, symbols)
        for n in shapes
    )
    read = {t for node in needed.values() for t in node.input}
    stored = [tensor for name, tensor in known.items() if tensor is not None and name in read]
    runs: list[list[np.ndarray]] = []
    for batch in BATCH_PROBES if batched else BATCH_PROBES[:1]:
        nodes = []
        for _, node in sorted(needed.items()):
            if node.op_type in SHAPE_OF:
                dims = _dims_at(values[node.input[0]], batch, symbols)
                assert dims is not None  # what made it computable
                node = _shape_value(node, dims)
            nodes.append(node)
        computation = helper.make_graph(
            nodes,
            "shape_computation",
            [],
            [helper.make_empty_tensor_value_info(t) for t in blocked],
            stored,
        )
        evaluator = ReferenceEvaluator(
            helper.make_model(computation, opset_imports=model.opset_import)
        )
        runs.append(cast(list[np.ndarray], evaluator.run(None, {})))
    first, second = runs[0], runs[-1]
    computed_values = {
        t: (np.asarray(a), np.asarray(b)) for t, a, b in zip(blocked, first, second, strict=True)
    }
    return ShapeComputations(computed_values, readers, _propagated(blocked, producer))


# Ops whose values ONNX data propagation computes from stored inputs (onnx's PropagateShapeData
# of each op's schema); a chain of only these tells inference nothing new.
DATA_PROPAGATED = frozenset(
    {"Constant", "Identity", "Cast", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze",
     "Add", "Sub", "Mul"}
)  # fmt: skip


def _propagated(
    blocked: Iterable[str], producer: dict[str, tuple[int, onnx.NodeProto]]
) -> frozenset[str]:
    found = set()
    for tensor in blocked:
        stack, ok, seen = [tensor], True, set()
        while stack and ok:
            current = stack.pop()
            if current in seen or current not in producer:
                continue
            seen.add(current)
            node = producer[current][1]
            ok = node.op_type in DATA_PROPAGATED
            stack.extend(node.input)
        if ok:
            found.add(tensor)
    return frozenset(found)


def _reshaped_dims(
    node: onnx.NodeProto,
    targets: tuple[np.ndarray, np.ndarray],
    values: dict[str, onnx.ValueInfoProto],
    symbols: frozenset[str],
) -> list[int | str | None] | None:
    """The output dims of a Reshape of ``targets`` (its target at each of :data:`BATCH_PROBES`)
    whose input is static but for the batch: each dim is an int, the batch symbol times an int
    (``32*N``), or None where it is neither."""
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    outs = []
    for batch, target in zip(BATCH_PROBES, targets, strict=True):
        dims = _dims_at(values.get(node.input[0]), batch, symbols)
        wanted = [int(v) for v in np.asarray(target).reshape(-1)]
        if dims is None or wanted.count(-1) > 1:
            return None
        out = [
            dims[i] if d == 0 and not allowzero and i < len(dims) else d
            for i, d in enumerate(wanted)
        ]
        if -1 in out:
            rest = math.prod(d for d in out if d != -1)
            if rest <= 0 or math.prod(dims) % rest:
                return None
            out[out.index(-1)] = math.prod(dims) // rest
        outs.append(out)
    symbol = min(symbols) if symbols else None
    resolved: list[int | str | None] = []
    for one, two in zip(*outs, strict=True):
        if one == two:
            resolved.append(one)
        elif symbol is not None and two == 2 * one and one > 0:
            resolved.append(symbol if one == 1 else f"{one}*{symbol}")
        else:
            resolved.append(None)
    return resolved


def _set_shape(
    model: onnx.ModelProto, tensor: str, source: str, dims: list[int | str | None]
) -> None:
    """Declare ``tensor``'s shape (element type from ``source``) in value_info."""
    graph = model.graph
    info = next((v for v in graph.value_info if v.name == tensor), None)
    if info is None:
        elem = next(
            (
                v.type.tensor_type.elem_type
                for v in (*graph.input, *graph.value_info)
                if v.name == source
            ),
            onnx.TensorProto.FLOAT,
        )
        info = graph.value_info.add()
        info.CopyFrom(helper.make_tensor_value_info(tensor, elem, dims))
        return
    shape = info.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif isinstance(dim, str):
            entry.dim_param = dim


def _resolve_computed_shapes(
    inferred: onnx.ModelProto, path: str | Path, strict: bool, notes: list[str] | None
) -> onnx.ModelProto:
    """Infer shapes again with the shape computations ONNX data propagation could not follow
    evaluated (a Resize's sizes from float math, a Pad's from an integer Div or a Transpose of
    stored paddings), while that resolves more; the model keeps its nodes, only its value_info
    is completed. A computation that does not depend on the batch is read from a constant of
    its value; a Reshape target that does (``view(T * b, h)``, tf2onnx's flatten) gives the
    output's dims directly, the batch symbol kept (``32*N``: 32 rows per sample).
    """
    tried: set[str] = set()
    declared: set[str] = set()  # Reshape outputs whose dims were declared
    readers: dict[str, list[str]] = {}
    while True:  # each round uses a tensor or declares a Reshape not before, so it ends
        try:
            computations = _shape_computations(inferred, tried)
        except Exception:  # a computation the reference evaluator cannot run: keep what we have
            break
        reshaped = _reshape_batched(inferred, computations, declared)
        fixed = {
            t: one
            for t, (one, two) in computations.values.items()
            if np.array_equal(one, two) and t not in computations.propagated
        }
        if not fixed and not reshaped:
            break
        tried.update(fixed)
        tried.update(computations.values)
        # Each computed tensor is read from a constant of its value instead, under a new name
        # (a tensor has one producer), and every reader gets its original input back after.
        renamed = {t: f"{t}::computed" for t in fixed}
        positions = [
            (n, i)
            for n, node in enumerate(inferred.graph.node)
            for i, tensor in enumerate(node.input)
            if tensor in renamed
        ]
        for n, i in positions:
            node = inferred.graph.node[n]
            node.input[i] = renamed[node.input[i]]
        inferred.graph.initializer.extend(
            numpy_helper.from_array(np.asarray(value), renamed[t]) for t, value in fixed.items()
        )
        made_up = _drop_made_up_dims(inferred)
        try:
            again: onnx.ModelProto | None = _run_inference(inferred, path, strict)
        except InferenceFailed:
            again = None
            inferred.graph.value_info.extend(made_up)  # keep what the last inference found
        originals = {name: t for t, name in renamed.items()}
        for model in (inferred, again):
            if model is None:
                continue
            for n, i in positions:
                node = model.graph.node[n]
                node.input[i] = originals[node.input[i]]
            initializers = model.graph.initializer
            for index in reversed(range(len(initializers))):
                if initializers[index].name in originals:
                    del initializers[index]
        if again is None:
            break
        inferred = again
        readers.update(computations.readers)
    if readers and notes is not None:
        graph = inferred.graph
        symbols = batch_symbols(graph)
        values = {v.name: v for v in (*graph.value_info, *graph.output)}
        resolved = [
            name
            for name, outputs in readers.items()
            if all(_dims_at(values.get(t), 1, symbols) is not None for t in outputs)
        ]
        if resolved:
            notes.append(
                f"shapes the graph computes evaluated for {', '.join(resolved)} (ONNX shape "
                "inference alone left their output shapes unknown)"
            )
    return inferred


def _reshape_batched(
    model: onnx.ModelProto, computations: ShapeComputations, declared: set[str]
) -> set[str]:
    """Declare the output dims of each Reshape that inference left with dims it made up
    (``unk__0``) while its input is static but for the batch and its target is known (stored,
    or computed, batch-dependent or not): PyTorch's ``x.view(-1, 25088)`` and
    ``view(T * b, h)``, tf2onnx's flatten. Returns the outputs declared (added to
    ``declared``, which lists those declared before and so not looked at again)."""
    graph = model.graph
    symbols = batch_symbols(graph)
    values = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    stored: dict[str, list[int]] | None = None
    used: set[str] = set()
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.output[0] in declared:
            continue
        if _dims_at(values.get(node.output[0]), 1, symbols) is not None:
            continue  # inference knew it, up to the batch
        if _dims_at(values.get(node.input[0]), 1, symbols) is None:
            continue
        targets = computations.values.get(node.input[1])
        if targets is None:
            if stored is None:
                stored = _small_int_constants(model)
            value = stored.get(node.input[1])
            if value is None:
                continue
            targets = (np.array(value), np.array(value))
        dims = _reshaped_dims(node, targets, values, symbols)
        if dims is not None and all(d is not None for d in dims):
            _set_shape(model, node.output[0], node.input[0], dims)
            used.add(node.output[0])
    declared |= used
    return used


def _drop_made_up_dims(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Remove (and return) the value_info entries with dims inference made up for what it could
    not follow (``unk__0``): kept, they would stay on the tensors downstream of a shape now
    known, as inference merges what it finds into what is declared."""
    infos = model.graph.value_info
    removed = []
    for index in reversed(range(len(infos))):
        if any(d.dim_param.startswith("unk__") for d in infos[index].type.tensor_type.shape.dim):
            removed.append(onnx.ValueInfoProto())
            removed[-1].CopyFrom(infos[index])
            del infos[index]
    return removed


def raise_if_cyclic(model: onnx.ModelProto | bytes, path: str | Path) -> None:
    """A ModelError naming the nodes of a cycle in the main graph, if it has one."""
    from convlint.graph import build_graph

    if isinstance(model, bytes):
        model = onnx.load_model_from_string(model)
    cycle = build_graph(model).find_cycle()
    if cycle:
        raise cycle_error(path, cycle)


def cycle_error(path: str | Path, cycle: list[str]) -> ModelError:
    return ModelError(
        path, f"invalid model: the graph has a cycle: {' -> '.join([*cycle, cycle[0]])}"
    )


def infer_shapes(
    model: onnx.ModelProto | bytes,
    path: str | Path,
    notes: list[str] | None = None,
    op_types: frozenset[str] | None = None,
    started: BackgroundInference | None = None,
) -> onnx.ModelProto:
    """Strict shape inference with data propagation; notes for --verbose go to ``notes``.

    A model whose subgraphs fail strict inference is inferred non-strictly (with a note), as
    onnxruntime loads it; every other failure is a ModelError. ``op_types`` are those of the
    main graph's nodes when the caller knows them already. ``started``: the first strict
    inference of ``model``, running in a child process (see :class:`BackgroundInference`).
    """
    strict = True
    try:
        inferred = _run_inference(model, path, started=started)
    except InferenceFailed as failure:
        if not _fails_in_subgraph(model, failure):
            raise_if_cyclic(model, path)  # a cycle says more than the inference error it causes
            raise
        strict = False
        inferred = _run_inference(model, path, strict)
        if notes is not None:
            failed = _FAILED_NODE.search(failure.text)
            owner = f" of {failed.group(2)!r}" if failed is not None and failed.group(2) else ""
            reason = failure.text.splitlines()[0].rsplit("] ", 1)[-1]
            notes.append(
                f"strict shape inference failed in a subgraph{owner} ({reason}); shapes are "
                "from non-strict inference, as onnxruntime reads the model"
            )
    if op_types is None:  # one pass over a large graph
        op_types = frozenset([node.op_type for node in inferred.graph.node])
    if "Slice" in op_types and _refine_slices(inferred):
        inferred = _run_inference(inferred, path, strict)
    if _computes_shapes(op_types):
        inferred = _resolve_computed_shapes(inferred, path, strict, notes)
    return inferred


def _computes_shapes(op_types: frozenset[str]) -> bool:
    return not op_types.isdisjoint(SHAPE_OF) or not op_types.isdisjoint(VALUE_SHAPED)


def one_pass(op_types: frozenset[str]) -> bool:
    """Whether the first strict inference gives a main graph of these op types (and no
    subgraphs) all the shapes :func:`infer_shapes` would: no Slice to refine, no shape
    computed from values (VALUE_SHAPED has Slice)."""
    return not _computes_shapes(op_types)
