"""Weights on disk for `convlint fix`: read a model without its weights, stream them out again.

`fix` needs the values of a few weights (the convs it factorizes) and must hand every weight to
onnxruntime and to OUT. Holding them all in memory costs the model's size two or three times
over (the file's bytes, the parsed model, each copy of it), so instead:

- :func:`read` parses the model without the values of its main graph's large weights and notes
  where each one lies (a :class:`Span`): in the model file itself (its ``raw_data`` field, found
  by walking the protobuf encoding of a memory-mapped file) or in an external data file;
- :meth:`WeightStore.array` reads one weight's values when a rewrite needs them;
- :func:`stage` copies every large weight, a chunk at a time, into one data file in the
  runtime's folder and points the model there (the "light" model: requests to onnxruntime carry
  only the graph);
- :func:`save` writes OUT from a light model: its weights copied from the staged data file into
  ``OUT.data``, or, for a model whose weights were in the file, spliced into the protobuf
  encoding of OUT field by field, so the whole model is never encoded in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper, serialization

from convlint import loader
from convlint.errors import ModelError

# One reader of the protobuf encoding: the skeleton loader's.
from convlint.skeleton import FileWindow, _encode_varint, _fields

WALK_BYTES = 16 << 20  # model files from this size on are walked; smaller ones parsed whole
WEIGHT_BYTES = 1024  # values of at least this many bytes stay on disk
CHUNK = 16 << 20  # bytes copied at a time

_LENGTH = 2
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9


@dataclass(frozen=True)
class Span:
    """Where a weight's raw little-endian bytes lie."""

    file: Path
    offset: int
    length: int


class WeightStore:
    """The values of a model's large weights, read from their spans on demand."""

    def __init__(self, path: Path, spans: dict[str, Span]) -> None:
        self.path = path
        self.spans = spans

    def array(self, tensor: onnx.TensorProto) -> np.ndarray[Any, Any]:
        """The values of ``tensor`` (from its span when its values were left out)."""
        span = self.spans.get(tensor.name)
        if span is None or tensor.HasField("raw_data"):
            return numpy_helper.to_array(tensor)
        full = onnx.TensorProto()
        full.name, full.data_type = tensor.name, tensor.data_type
        full.dims.extend(tensor.dims)
        full.raw_data = read_span(span, self.path)
        return numpy_helper.to_array(full)


def read_span(span: Span, model_path: Path) -> bytes:
    try:
        with open(span.file, "rb") as handle:
            handle.seek(span.offset)
            data = handle.read(span.length)
    except OSError as exc:
        raise ModelError(model_path, f"cannot read weights: {exc.strerror or exc}") from None
    if len(data) != span.length:
        raise ModelError(
            model_path,
            f"cannot read external data: {span.file.name} ends before offset "
            f"{span.offset + span.length}",
        )
    return data


# -- reading -------------------------------------------------------------------------------


def read(path: Path) -> tuple[onnx.ModelProto, WeightStore]:
    """The model without its large main-graph weights' values, and where they lie.

    Files below :data:`WALK_BYTES`, in a text format, or that the walk cannot read are parsed
    whole (through the loader, which names what is wrong with a damaged file).
    """
    model: onnx.ModelProto | None = None
    spans: dict[str, Span] = {}
    file_format = serialization.registry.get_format_from_file_extension(os.path.splitext(path)[1])
    try:
        large = path.is_file() and path.stat().st_size >= WALK_BYTES
    except OSError:
        large = False
    if large and file_format in (None, "protobuf"):
        walked = _walk(path)
        if walked is not None:
            encoded, spans = walked
            model = onnx.ModelProto()
            try:
                model.ParseFromString(encoded)
            except DecodeError:
                model, spans = None, {}
            if model is not None and not model.HasField("graph"):
                model, spans = None, {}
    if model is None:
        model = loader.read_model(path)
    loader.check_external_locations(model, path)
    loader.validate(model, path)
    folder = path.resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        data = folder / info.get("location", "")
        if not data.is_file():
            raise ModelError(path, f"external data file {data} is missing (or not a file)")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelError(
                path, f"external data of {tensor.name!r} has a non-integer offset or length"
            ) from None
        if length is None:
            length = _expected_bytes(tensor) or max(data.stat().st_size - offset, 0)
        spans[tensor.name] = Span(data, offset, length)
    graphs = loader.walk_graphs(model)  # the main graph first
    others = [t for walked in graphs[1:] for t in walked.graph.initializer]
    others += [
        attr.t
        for walked in graphs
        for node in walked.constants
        for attr in node.attribute
        if attr.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in others:
        # Constant values and subgraph weights with external data: rare and small, read now.
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _load_into(tensor, folder, path)
    check_weight_sizes(model, path, spans)
    return model, WeightStore(path, spans)


def _load_into(tensor: onnx.TensorProto, folder: Path, path: Path) -> None:
    info = {entry.key: entry.value for entry in tensor.external_data}
    data = folder / info.get("location", "")
    if not data.is_file():
        raise ModelError(path, f"external data file {data} is missing (or not a file)")
    try:
        external_data_helper.load_external_data_for_tensor(tensor, str(folder))
    except Exception as exc:  # OSError, ValueError
        message = " ".join(str(exc).split())[:300]
        raise ModelError(path, f"cannot read external data: {message}") from None
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]


def read_graph(path: Path) -> onnx.ModelProto:
    """The model in ``path`` without its large weights' values, unchecked (to see which data
    files it uses); ModelError when it is not a model."""
    if path.stat().st_size >= WALK_BYTES:
        walked = _walk(path)
        if walked is not None:
            model = onnx.ModelProto()
            try:
                model.ParseFromString(walked[0])
                return model
            except DecodeError:
                pass
    return loader.read_model(path)


_FOUR_BIT = {
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, name)
}


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    if tensor.data_type not in _DEFINED_TYPES:  # check_weight_sizes names it
        return None
    count = math.prod(tensor.dims)
    if tensor.data_type in _FOUR_BIT:
        return (count + 1) // 2
    itemsize: int = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * itemsize


_DEFINED_TYPES = frozenset(onnx.TensorProto.DataType.values())


def _check_input_types(model: onnx.ModelProto, path: Path) -> None:
    """`fix` feeds every data input a tensor: each must say of which element type."""
    stored = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in stored:
            continue
        if not value.type.HasField("tensor_type"):
            raise ModelError(
                path, f"input {value.name!r} is not a tensor (no type, or a sequence or map)"
            )
        elem_type = value.type.tensor_type.elem_type
        if elem_type == onnx.TensorProto.UNDEFINED or elem_type not in _DEFINED_TYPES:
            raise ModelError(path, f"input {value.name!r} has no element type ONNX defines")


def check_weight_sizes(model: onnx.ModelProto, path: Path, spans: dict[str, Span]) -> None:
    """Every stored tensor holds as many values as its dims say (else numpy fails deep in a
    rewrite, or onnxruntime refuses the model)."""
    _check_input_types(model, path)
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
            continue
        count = math.prod(tensor.dims)
        dims = "x".join(map(str, tensor.dims)) or "a scalar"
        name = tensor.name or "(unnamed)"
        if tensor.data_type not in _DEFINED_TYPES:
            raise ModelError(
                path,
                f"tensor {name!r} has data type {tensor.data_type}, which ONNX does not define",
            )
        span = spans.get(tensor.name)
        if span is not None or tensor.HasField("raw_data"):
            expected = _expected_bytes(tensor)
            held = span.length if span is not None else len(tensor.raw_data)
            if held != expected:
                raise ModelError(
                    path,
                    f"tensor {name!r} holds {held} bytes of data, but its dims ({dims}) "
                    f"need {expected}",
                )
            if span is not None and span.file != path:
                size = span.file.stat().st_size
                if span.offset + span.length > size:
                    raise ModelError(
                        path,
                        f"cannot read external data: {span.file.name} holds {size} bytes, "
                        f"{name!r} ends at {span.offset + span.length}",
                    )
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        field_name = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        values = len(getattr(tensor, field_name))
        if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            values //= 2
        elif tensor.data_type in _FOUR_BIT:
            count = (count + 1) // 2
        if values != count and not (values == 0 and count == 0):
            raise ModelError(
                path, f"tensor {name!r} holds {values} values, but its dims ({dims}) need {count}"
            )


# -- the protobuf encoding -----------------------------------------------------------------


def _length_field(number: int, payload_length: int) -> bytes:
    return _encode_varint(number << 3 | _LENGTH) + _encode_varint(payload_length)


def _walk(path: Path) -> tuple[bytes, dict[str, Span]] | None:
    """The encoding of the model without its main graph's large raw_data values, and their
    spans in the file; None when the file is not an encoding this walk reads."""
    try:
        with open(path, "rb") as handle:
            data = FileWindow(handle.fileno(), path)
            spans: dict[str, Span] = {}
            pieces: list[bytes] = []
            copied = 0
            for number, wire, first, value, after in _fields(data, 0, len(data)):
                if number == _MODEL_GRAPH and wire == _LENGTH:
                    graph = _walk_graph(data, value, after, path, spans)
                    pieces += [data[copied:first], _length_field(number, len(graph)), graph]
                    copied = after
            pieces.append(data[copied:])
            return b"".join(pieces), spans
    except (OSError, ValueError, IndexError):
        return None


def _walk_graph(
    data: FileWindow, start: int, end: int, path: Path, spans: dict[str, Span]
) -> bytes:
    pieces: list[bytes] = []
    copied = start
    for number, wire, first, value, after in _fields(data, start, end):
        if number != _GRAPH_INITIALIZER or wire != _LENGTH or after - value < WEIGHT_BYTES:
            continue
        tensor = _walk_tensor(data, value, after, path, spans)
        if tensor is not None:
            pieces += [data[copied:first], _length_field(number, len(tensor)), tensor]
            copied = after
    pieces.append(data[copied:end])
    return b"".join(pieces)


def _walk_tensor(
    data: FileWindow, start: int, end: int, path: Path, spans: dict[str, Span]
) -> bytes | None:
    """The tensor's encoding without raw_data if that is large, noting its span; else None."""
    name, raw = None, None
    for number, wire, first, value, after in _fields(data, start, end):
        if number == _TENSOR_NAME and wire == _LENGTH:
            name = bytes(data[value:after]).decode("utf-8", "replace")
        elif number == _TENSOR_RAW_DATA and wire == _LENGTH and after - value >= WEIGHT_BYTES:
            raw = (first, value, after)
    if name is None or raw is None or name in spans:
        return None
    first, value, after = raw
    spans[name] = Span(path, value, after - value)
    return bytes(data[start:first]) + bytes(data[after:end])


# -- staging and saving --------------------------------------------------------------------


def _copy(source: Span, target: IO[bytes], model_path: Path) -> None:
    try:
        with open(source.file, "rb") as handle:
            handle.seek(source.offset)
            left = source.length
            while left:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise ModelError(
                        model_path, f"cannot read external data: {source.file.name} ends early"
                    )
                target.write(chunk)
                left -= len(chunk)
    except OSError as exc:
        raise ModelError(model_path, f"cannot read weights: {exc.strerror or exc}") from None


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(field)
    tensor.ClearField("uint64_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def _in_memory_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """Raw bytes of a large tensor whose values are in the model, else None."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    if tensor.HasField("raw_data"):
        return tensor.raw_data if len(tensor.raw_data) >= WEIGHT_BYTES else None
    expected = _expected_bytes(tensor) or 0
    if expected < WEIGHT_BYTES or tensor.data_type in _FOUR_BIT:
        return None
    return numpy_helper.to_array(tensor).tobytes()


def stage(model: onnx.ModelProto, store: WeightStore, data_path: Path) -> dict[str, Span]:
    """Move every large main-graph weight of ``model`` into ``data_path`` (in place: values left
    in the model are cleared, so the model keeps only the graph). Returns the new spans."""
    staged: dict[str, Span] = {}
    offset = 0
    with open(data_path, "wb") as handle:
        for tensor in model.graph.initializer:
            span = store.spans.get(tensor.name)
            if span is not None and not tensor.HasField("raw_data"):
                _copy(span, handle, store.path)
                length = span.length
            else:
                values = _in_memory_bytes(tensor)
                if values is None:
                    continue
                handle.write(values)
                length = len(values)
            _point_to(tensor, data_path.name, offset, length)
            staged[tensor.name] = Span(data_path, offset, length)
            offset += length
    return staged


def _external_span(tensor: onnx.TensorProto, folder: Path) -> Span | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {entry.key: entry.value for entry in tensor.external_data}
    return Span(folder / info["location"], int(info.get("offset", 0)), int(info["length"]))


def save(model: onnx.ModelProto, path: Path, folder: Path, data_name: str | None) -> None:
    """Write ``model``, whose large weights lie in data files of ``folder``, to ``path``.

    With ``data_name`` the weights (and every inline value of at least WEIGHT_BYTES) go into
    that file beside ``path``; else into the model's own encoding, spliced in one at a time.
    ``model`` itself is left as it was.
    """
    if data_name is not None:
        _save_external(model, path, folder, data_name)
    else:
        _save_inline(model, path, folder)


def _save_external(model: onnx.ModelProto, path: Path, folder: Path, data_name: str) -> None:
    light = onnx.ModelProto()
    light.CopyFrom(model)  # the graph only: the values are in data files
    offset = 0
    with open(path.parent / data_name, "wb") as handle:
        for tensor in light.graph.initializer:
            span = _external_span(tensor, folder)
            if span is not None:
                _copy(span, handle, path)
                length = span.length
            else:
                values = _in_memory_bytes(tensor)
                if values is None:
                    continue
                handle.write(values)
                length = len(values)
            _point_to(tensor, data_name, offset, length)
            offset += length
    onnx.save_model(light, str(path))


def _save_inline(model: onnx.ModelProto, path: Path, folder: Path) -> None:
    """The protobuf encoding of ``model`` with its external weights' values spliced in: the
    model's fields without its graph, then the graph field, whose value is the graph's other
    fields followed by one initializer field per external weight (protobuf reads fields in any
    order), each written as its metadata and a raw_data field copied from the data file."""
    external = [
        (index, tensor, span)
        for index, tensor in enumerate(model.graph.initializer)
        if (span := _external_span(tensor, folder)) is not None
    ]
    header = onnx.ModelProto()
    header.CopyFrom(model)
    header.ClearField("graph")
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    for index, _, _ in reversed(external):
        del graph.initializer[index]
    entries: list[tuple[bytes, Span]] = []
    for _, tensor, span in external:
        meta = onnx.TensorProto()
        meta.CopyFrom(tensor)
        meta.ClearField("data_location")
        del meta.external_data[:]
        encoded = meta.SerializeToString() + _length_field(_TENSOR_RAW_DATA, span.length)
        prefix = _length_field(_GRAPH_INITIALIZER, len(encoded) + span.length) + encoded
        entries.append((prefix, span))
    body = graph.SerializeToString()
    graph_length = len(body) + sum(len(prefix) + span.length for prefix, span in entries)
    with open(path, "wb") as handle:
        handle.write(header.SerializeToString())
        handle.write(_length_field(_MODEL_GRAPH, graph_length))
        handle.write(body)
        for prefix, span in entries:
            handle.write(prefix)
            _copy(span, handle, path)
