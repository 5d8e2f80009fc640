"""Stage 1: read an ONNX file safely, check it, bind symbolic dims; its shapes are then
inferred and computed by :mod:`convlint.shapes`.

Weights are never read here: models are loaded without their external data (every
external-data location is checked to stay inside the model's folder before anything opens it),
and the values of weights stored inside the file are left out (:mod:`convlint.skeleton`).
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import onnx
from google.protobuf.message import DecodeError
from onnx import serialization

from convlint import skeleton
from convlint.errors import ModelError, shown
from convlint.graph import STANDARD_DOMAINS, SUBGRAPH_OPS, ModelGraph, model_opset
from convlint.shapes import BackgroundInference, can_fork, one_pass
from convlint.shapes import infer_shapes as infer_shapes  # fix calls it as the loader's

InputShapes = Mapping[str, tuple[int, ...]]
# Standard ops whose graph attributes are walked for their tensors and checks.
WALKED_SUBGRAPH_OPS = frozenset({*SUBGRAPH_OPS, "SequenceMap"})
TENSOR_ATTRIBUTE_OPS = frozenset({"Constant", "ConstantOfShape"})
GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


@dataclass
class LoadedModel:
    """A model proto with inferred shapes, and where it came from."""

    path: str
    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    # The model's graph, when it was read while shape inference ran (``load``'s
    # ``background``); else the caller builds it from ``model``.
    graph: ModelGraph | None = None

    @property
    def opset(self) -> int:
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                return int(entry.version)
        return 0


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` as given to ``--input-shape``."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise ValueError(f"--input-shape {shown(text)}: expected NAME=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise ValueError(
            f"--input-shape {shown(text)}: dims must be integers joined by 'x'"
        ) from None
    if any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape {shown(text)}: dims must be positive")
    if any(d >= 2**63 for d in shape):
        raise ValueError(f"--input-shape {shown(text)}: dims must fit in 64 bits")
    return name, shape


class GraphNodes(NamedTuple):
    """One graph, with what the loader's checks need from its nodes."""

    graph: onnx.GraphProto
    domains: set[str]
    # Nodes whose attributes may hold tensors: Constant, ConstantOfShape, custom-domain ops.
    constants: list[onnx.NodeProto]
    op_types: frozenset[str] = frozenset()


def walk_graphs(model: onnx.ModelProto) -> list[GraphNodes]:
    """The main graph and the subgraphs of its If/Loop/Scan/SequenceMap nodes, recursively.

    Each graph's nodes are read once for every check, in comprehensions (reading a protobuf
    field from Python builds an object, which adds up on large graphs); the nodes of the few
    op types that need a closer look are read again.
    """
    graphs, stack = [], [model.graph]
    while stack:
        graph = stack.pop()
        nodes = list(graph.node)  # a list is quicker to iterate than the repeated field
        op_types = frozenset([node.op_type for node in nodes])
        domains = {node.domain for node in nodes}
        custom = bool(domains - STANDARD_DOMAINS)
        constants = (
            [
                n
                for n in nodes
                if n.op_type in TENSOR_ATTRIBUTE_OPS or n.domain not in STANDARD_DOMAINS
            ]
            if custom or not op_types.isdisjoint(TENSOR_ATTRIBUTE_OPS)
            else []
        )
        if not op_types.isdisjoint(WALKED_SUBGRAPH_OPS):
            for node in nodes:
                if node.op_type in WALKED_SUBGRAPH_OPS:
                    for attr in node.attribute:
                        if attr.type == onnx.AttributeProto.GRAPH:
                            stack.append(attr.g)
                        stack.extend(attr.graphs)
        graphs.append(GraphNodes(graph, domains, constants, op_types))
    return graphs


def _stored_tensors(
    graphs: list[GraphNodes], functions: Sequence[onnx.FunctionProto] = ()
) -> list[onnx.TensorProto]:
    """Every tensor that can carry external data, wherever it sits: initializers and sparse
    initializers of every graph, tensor attributes (Constant's value and sparse_value,
    ConstantOfShape's value, a custom op's tensors and graphs), and those of model-local
    functions."""
    tensors: list[onnx.TensorProto] = []
    for walked in graphs:
        tensors.extend(_graph_tensors(walked.graph, walked.constants))
    for function in functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node))
    return tensors


def _graph_tensors(
    graph: onnx.GraphProto, holders: Sequence[onnx.NodeProto] | None = None
) -> list[onnx.TensorProto]:
    """A graph's stored tensors; ``holders`` are its nodes that may hold tensor attributes
    (all nodes when not known)."""
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    for node in graph.node if holders is None else holders:
        tensors.extend(_attribute_tensors(node))
    return tensors


def _attribute_tensors(node: onnx.NodeProto) -> list[onnx.TensorProto]:
    kinds = onnx.AttributeProto
    tensors: list[onnx.TensorProto] = []
    for attr in node.attribute:
        if attr.type == kinds.TENSOR:
            tensors.append(attr.t)
        elif attr.type == kinds.TENSORS:
            tensors.extend(attr.tensors)
        elif attr.type == kinds.SPARSE_TENSOR:
            tensors += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
        elif attr.type == kinds.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                tensors += [sparse.values, sparse.indices]
        elif attr.type == kinds.GRAPH and node.domain not in STANDARD_DOMAINS:
            tensors.extend(_graph_tensors(attr.g))  # If/Loop/Scan bodies are walked already
        elif attr.type == kinds.GRAPHS and node.domain not in STANDARD_DOMAINS:
            for graph in attr.graphs:
                tensors.extend(_graph_tensors(graph))
    return tensors


def check_external_locations(
    model: onnx.ModelProto, path: Path, graphs: list[GraphNodes] | None = None
) -> None:
    """Refuse external-data locations that leave the model's folder, before opening any.

    ``graphs`` is ``walk_graphs(model)`` when the caller has it already.
    """
    base = path.resolve().parent
    checked: set[str] = set()  # thousands of tensors usually share one data file
    walked = graphs if graphs is not None else walk_graphs(model)
    for tensor in _stored_tensors(walked, model.functions):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if type(location) is not str:  # protobuf's bytes for a string that is not UTF-8
            raise ModelError(
                path,
                f"external data of {tensor.name!r} has a location that is not UTF-8: {location!r}"[
                    :300
                ],
            )
        if location in checked:
            continue
        checked.add(location)
        if not location:
            raise ModelError(path, f"external data of {tensor.name!r} has no location")
        if "\x00" in location:
            raise ModelError(
                path, f"external data of {tensor.name!r} has a location with a NUL byte"
            )
        if os.path.isabs(location) or Path(location).drive:
            raise ModelError(
                path, f"external data of {tensor.name!r} has absolute location {location!r}"
            )
        if ".." in Path(location).parts:
            raise ModelError(
                path, f"external data of {tensor.name!r} leaves the model folder: {location!r}"
            )
        resolved = (base / location).resolve()
        if not resolved.is_relative_to(base):
            raise ModelError(
                path,
                f"external data of {tensor.name!r} resolves outside the model folder: "
                f"{location!r} -> {resolved}",
            )


def read_model(path: str | Path) -> onnx.ModelProto:
    """Parse the protobuf without external data; every failure is a ModelError."""
    return _read_model(Path(path))[0]


def _parse_file(path: Path) -> onnx.ModelProto | None:
    """The model in ``path``, read into one buffer and parsed from it; None when the file has
    no size to go by (a pipe, a device). Not memory-mapped: a mapped file that another program
    shrinks meanwhile kills the process with SIGBUS; read, it is a :class:`ModelError`."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode) or size == 0:
            return None
        buffer = bytearray(size)
        view = memoryview(buffer)
        try:
            if handle.readinto(view) != size or handle.read(1):
                raise ModelError(path, skeleton.changed_size(size))
            _refuse_lfs_pointer(bytes(view[: len(GIT_LFS_POINTER)]), path)
            model = onnx.ModelProto()
            model.ParseFromString(view)
        finally:
            view.release()
    return model


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
EXPORT_HINT = "export it with torch.onnx.export(model, example_input, 'model.onnx') first"


def other_format(path: Path) -> str | None:
    """What a file that is not ONNX protobuf looks like, from its first bytes and name: the
    model formats people pass by mistake (a PyTorch checkpoint most of all)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    suffix = path.suffix.lower()
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip since PyTorch 1.6
        if suffix in TORCH_SUFFIXES or b"data.pkl" in head or b"archive/" in head:
            return f"a PyTorch checkpoint (torch.save, a zip archive); {EXPORT_HINT}"
        return "a zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if suffix in TORCH_SUFFIXES:
            return f"a PyTorch checkpoint (a pickle, legacy torch.save); {EXPORT_HINT}"
        return "a Python pickle, not a model graph"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (a Keras model?); convert it with tf2onnx first"
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model; convert it with tf2onnx first"
    if suffix == ".safetensors" or (len(head) > 8 and head[8:10] == b'{"'):
        return "a safetensors file (weights without a graph); export the model to ONNX first"
    return None


def _refuse_lfs_pointer(head: bytes, path: Path) -> None:
    if head.startswith(GIT_LFS_POINTER):
        raise ModelError(
            path, "is a Git LFS pointer, not the model: run `git lfs pull` to fetch it"
        )


def _read_model(path: Path, weights: bool = True) -> tuple[onnx.ModelProto, bytes | None]:
    """The model, and the file's bytes when they are its protobuf encoding (not a text format).

    Without ``weights``, a large file's weights are not read (see :mod:`convlint.skeleton`):
    the bytes returned are then the encoding of the model without them.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelError(path, "no such file") from None
    except OSError as exc:
        raise ModelError(path, f"cannot read: {exc.strerror}") from None
    if path.is_dir():
        raise ModelError(path, "is a directory, not an .onnx file")
    if size == 0:
        raise ModelError(path, "empty file, not an ONNX model")
    # The format from the extension as onnx.load decides it (text formats are parsed by onnx).
    file_format = serialization.registry.get_format_from_file_extension(os.path.splitext(path)[1])
    serialized = None
    try:
        if file_format in (None, "protobuf") and not weights and size >= skeleton.WIRE_READ_BYTES:
            serialized = skeleton.read_without_weights(path)
        if file_format not in (None, "protobuf"):
            model = onnx.load(str(path), load_external_data=False)
        elif serialized is not None:
            model = onnx.load_model_from_string(serialized)
        else:
            mapped = _parse_file(path)
            if mapped is None:  # a file without a size (a pipe, a device)
                serialized = path.read_bytes()
                _refuse_lfs_pointer(serialized, path)
                mapped = onnx.load_model_from_string(serialized)
            model = mapped
    except ModelError:
        raise
    except DecodeError:
        other = other_format(path)
        raise ModelError(
            path,
            f"not an ONNX model: {other}"
            if other
            else "not an ONNX model (protobuf parse failed: truncated or corrupt)",
        ) from None
    except OSError as exc:
        raise ModelError(path, f"cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # onnx raises assorted types for damaged files
        other = other_format(path)
        if other:
            raise ModelError(path, f"not an ONNX model: {other}") from None
        raise ModelError(path, f"not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph") or (model.ir_version == 0 and not model.graph.node):
        other = other_format(path)
        if other:
            raise ModelError(path, f"not an ONNX model: {other}")
        raise ModelError(path, "not an ONNX model (no graph; truncated or not a model file)")
    return model, serialized


def _clear_dims(values: Iterable[onnx.ValueInfoProto], stored: Callable[[int], bool]) -> list[str]:
    """Clear the dims whose stored value ``stored`` accepts; returns the names that had one."""
    cleared: list[str] = []
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and stored(dim.dim_value):
                dim.Clear()
                if value.name not in cleared:
                    cleared.append(value.name)
    return cleared


def clear_negative_dims(model: onnx.ModelProto) -> list[str]:
    """Read dims stored as -1 in the main graph's inputs and outputs as unknown.

    Some exporters write -1 for a dynamic dim, and onnxruntime reads it so; ONNX inference
    would carry it on as a size of -1 (and refuse to merge it with a bound size). When inputs
    or outputs have any, value_info entries are cleared of them too. Returns a note.
    """
    graph = model.graph
    cleared = _clear_dims([*graph.input, *graph.output], lambda size: size < 0)
    if not cleared:
        return []
    _clear_dims(graph.value_info, lambda size: size < 0)
    return [f"read dims stored as -1 as unknown ({', '.join(cleared)})"]


def bind_input_shapes(
    model: onnx.ModelProto,
    input_shapes: InputShapes,
    path: Path,
    configured: InputShapes | None = None,
    source: str = "configuration",
) -> list[str]:
    """Write user-given shapes into the graph inputs; returns notes for --verbose.

    ``configured`` shapes come from a configuration file (``source`` names it and the key):
    one for an input this model does not have is skipped with a note, as a repository's
    configuration covers several models; ``input_shapes`` (the command line's) override them
    and must name an input.
    """
    notes: list[str] = []
    zero_bound = False
    inputs = {value.name: value for value in model.graph.input}
    valid = ", ".join(sorted(inputs)) or "none"
    chosen: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, shape in (configured or {}).items():
        if name in inputs:
            chosen[name] = (source, tuple(shape))
        else:
            notes.append(
                f"{source}: no input {shown(name)} in this model (inputs: {valid}); skipped"
            )
    for name, shape in input_shapes.items():
        if name not in inputs:
            raise ModelError(path, f"--input-shape names unknown input {name!r} (inputs: {valid})")
        chosen[name] = ("--input-shape", tuple(shape))
    for name, (given_by, shape) in chosen.items():
        tensor_type = inputs[name].type.tensor_type
        dims = tensor_type.shape.dim
        if tensor_type.HasField("shape") and len(dims) != len(shape):
            raise ModelError(
                path,
                f"{given_by} {name}: rank {len(shape)} given, the input has rank {len(dims)}",
            )
        for dim, value in zip(dims, shape, strict=True):
            # A stored 0 or -1 is bound like a symbol: exporters write them for a dynamic dim.
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
                raise ModelError(
                    path, f"{given_by} {name}: dim {dim.dim_value} is fixed, {value} given"
                )
            zero_bound = zero_bound or (dim.HasField("dim_value") and dim.dim_value == 0)
        del dims[:]
        for value in shape:
            dims.add().dim_value = value
        notes.append(f"bound {name} to {'x'.join(map(str, shape))}")
    if zero_bound:  # the exporter's other zeros mean dynamic too: let inference size them
        _clear_dims([*model.graph.output, *model.graph.value_info], lambda size: size == 0)
    return notes


def validate(
    model: onnx.ModelProto, path: str | Path, graphs: list[GraphNodes] | None = None
) -> None:
    """Structural checks that shape inference does not make.

    onnx.checker is not used: it opens external data files (relative to the working
    directory, not the model) and costs a third of the load time on large graphs, while strict
    shape inference already checks every node against its schema. ``graphs`` is
    ``walk_graphs(model)`` when the caller has it already.
    """
    if model.ir_version < 3:
        raise ModelError(path, f"invalid model: IR version {model.ir_version} (need >= 3)")
    declared = {entry.domain or "" for entry in model.opset_import}
    if not declared:
        raise ModelError(path, "invalid model: no opset_import")
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < 1:
            # No operator schema has a version below 1: nothing would check the nodes.
            raise ModelError(
                path, f"invalid model: opset {entry.version} (ONNX's opsets start at 1)"
            )
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelError(
                path,
                f"invalid model: opset {entry.version} is newer than the newest this onnx "
                f"{onnx.__version__} knows ({newest})",
            )
    if "" in declared:
        declared.add("ai.onnx")
    opset = next((int(e.version) for e in model.opset_import if e.domain in STANDARD_DOMAINS), 0)
    for walked in graphs if graphs is not None else walk_graphs(model):
        _refuse_undecodable_text(walked, path)
        _refuse_unknown_operators(walked, opset, path)
        undeclared = walked.domains - declared
        if undeclared:
            domain = sorted(undeclared)[0]
            node = next(n for n in walked.graph.node if n.domain == domain)
            raise ModelError(
                path,
                f"invalid model: node {node.name or node.op_type!r} uses domain "
                f"{domain!r}, which opset_import does not declare",
            )


def _refuse_undecodable_text(walked: GraphNodes, path: str | Path) -> None:
    """An op type or domain that is not UTF-8: protobuf hands such a string over as bytes,
    which no later step expects. (Node names are checked where they are shown: the findings.)"""
    for text in (*walked.op_types, *walked.domains):
        if type(text) is not str:
            node = next(n for n in walked.graph.node if text in (n.op_type, n.domain))
            what = "op type" if node.op_type == text else "domain"
            raise ModelError(
                path, f"invalid model: node {node.name!r} has an {what} that is not UTF-8: {text!r}"
            )


def _refuse_unknown_operators(walked: GraphNodes, opset: int, path: str | Path) -> None:
    """A standard-domain op type that ONNX does not define (strict inference passes over it;
    onnxruntime refuses it). One lookup per distinct op type."""
    standard = walked.op_types
    if not walked.domains <= STANDARD_DOMAINS:  # some nodes are custom: look at the others
        standard = frozenset(n.op_type for n in walked.graph.node if n.domain in STANDARD_DOMAINS)
    for op_type in standard:
        if not onnx.defs.has(op_type):
            node = next(n for n in walked.graph.node if n.op_type == op_type)
            raise ModelError(
                path,
                f"invalid model: node {node.name or op_type!r} has op type {op_type!r}, which "
                f"is no ONNX operator (opset {opset})",
            )


def _start_inference(model: onnx.ModelProto | bytes) -> BackgroundInference | None:
    """Shape inference of ``model`` started in a child process, or None where it cannot start
    (a model protobuf cannot encode, no pipe or process to be had): inference then runs in this
    process, and says what is wrong as it always does."""
    try:
        # Serialized here, the child infers at once: its inference is the longer part.
        return BackgroundInference(model if isinstance(model, bytes) else model.SerializeToString())
    except Exception:
        return None


# Graphs from this many nodes on have their shapes inferred in a child process while this one
# reads the graph, when ``load`` may (the fork and the answer's trip cost a few milliseconds;
# at 10,000 nodes inference takes about 0.1 s and reading the graph 0.05 s).
BACKGROUND_NODES = 10_000


def load(
    path: str | Path,
    input_shapes: InputShapes | None = None,
    configured: InputShapes | None = None,
    source: str = "configuration",
    background: bool = False,
) -> LoadedModel:
    """Read, check and shape-infer a model file; never reads weight data.

    The model returned keeps its weights' dims and types, not their values (see
    :mod:`convlint.skeleton`), whether they were stored in the file or beside it.

    ``configured`` input shapes (from ``source``, a configuration file and key) bind only the
    inputs the model has; ``input_shapes`` must name inputs it has.

    With ``background`` (a second core is this model's to use), a graph of
    :data:`BACKGROUND_NODES` nodes or more and no subgraphs is inferred in a forked child
    while this process reads its graph (:class:`~convlint.shapes.BackgroundInference`); the
    graph comes back in the result, finished with the inferred shapes.
    """
    path = Path(path)
    model, serialized = _read_model(path, weights=False)
    graphs = walk_graphs(model)
    # Analysis reads no weight values: hold none.
    if skeleton.strip_weights(model, graphs[0].constants):
        serialized = None
    check_external_locations(model, path, graphs)
    validate(model, path, graphs)
    notes = clear_negative_dims(model)
    bound = bind_input_shapes(model, input_shapes or {}, path, configured, source)
    changed = bool(notes) or any(note.startswith("bound ") for note in bound)
    notes += bound
    # Inference takes the model serialized. Unless a dim was changed or weights were dropped,
    # the bytes read are that already.
    unchanged = serialized if serialized is not None and not changed else None
    inferring = unchanged if unchanged is not None else model
    main = graphs[0]
    started = (
        _start_inference(inferring)
        if background
        and len(main.graph.node) >= BACKGROUND_NODES
        and len(graphs) == 1  # no subgraphs (their graphs are read with their shapes)
        and can_fork()
        else None
    )
    if started is None:
        return LoadedModel(str(path), infer_shapes(inferring, path, notes, main.op_types), notes)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as engine.lint does for the same graph read after inference
    try:
        # The nodes, their producers and consumers, the constants: all but the shapes. Every
        # later inference pass keeps the model's nodes and initializers (see ``shapes``).
        graph = ModelGraph(model.graph, model_opset(model), typed=False)
        graph.read_conv_attributes()
        answer = started.result() if one_pass(main.op_types) else None
        if isinstance(answer, bytes):
            # All the shapes there will be: only what the answer declares is decoded, and the
            # model stays the one read (``_scaling_cost`` infers its own copies again).
            graph.take_inferred(answer)
            return LoadedModel(str(path), model, notes, graph)
        inferred = infer_shapes(inferring, path, notes, main.op_types, started)
        graph.take_inferred(inferred.graph)
    except BaseException:
        started.cancel()
        raise
    finally:
        if gc_was_enabled:
            gc.enable()
    return LoadedModel(str(path), inferred, notes, graph)
