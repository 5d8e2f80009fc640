"""Read an ONNX model without the values of its weights: the graph, shapes and types only.

Analysis needs a weight's dims and element type, never its values (costs count elements; the
canonical view reads constants of at most 64 elements; shape inference reads integer tensors and
a Resize's few scales). A model that keeps hundreds of megabytes of weights inside the .onnx file
would otherwise be held two or three times over: the file's bytes, the parsed model, and the
copy shape inference makes.

Which tensors lose their values (:func:`is_weight`): the main graph's initializers of at least
:data:`WEIGHT_ELEMENTS` elements and an element type that cannot be a shape (not int32, int64 or
string), and such tensors held inline by a main-graph node's attribute (a Constant's ``value``).
They keep everything else (name, dims, type, external-data fields). Subgraphs (If, Loop and Scan
bodies) are kept whole: their weights are rare and small.

Two ways to the same model:

- :func:`strip_weights` clears those values in a parsed model (upb parses a file at memory speed,
  so for files up to :data:`WIRE_READ_BYTES` this is the quickest);
- :func:`read_without_weights` never reads the large ones: it walks the protobuf encoding of the
  model and its graph in the file (through a :class:`FileWindow`, a block at a time: a memory map
  would kill the process with SIGBUS if the file shrank meanwhile), copying every field except the
  values of weights of :data:`LARGE_TENSOR_BYTES` or more (decoding a tensor costs Python time,
  reading a small one costs protobuf next to nothing); it returns that encoding, for protobuf to
  parse and :func:`strip_weights` to finish. A file it cannot walk (damaged, or an encoding it does
  not expect) gives None, and the caller parses the file as a whole, which names what is wrong.

What the walk leaves out, protobuf never sees, so the walk checks it at least as strictly as
protobuf would (upb, as ``onnx.load`` parses): every tag and length it steps over (a tag of at
most 5 bytes with a field number, a wire type protobuf knows, a length of at most 5 bytes inside
the message and under 2 GiB, varints of at most 10 bytes), and each value field it drops (packed
``float_data``/``double_data`` a whole number of 4 or 8 bytes; packed ``int32_data``,
``int64_data`` and ``uint64_data`` whole varints, checked with numpy a chunk at a time, the only
values it reads). Whatever fails a check, the caller's whole parse judges: a damaged large file
gets the verdict and the message a small one gets. So that its time follows the number of tensors
and not the number of fields of other kinds, the walk steps over at most
:data:`MAX_WALKED_FIELDS` fields (or packed dims); a file with more is parsed whole.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, overload

import numpy as np
import onnx

from convlint.errors import ModelError

# More than any reader of values asks for (at most 64 elements: MAX_READ_ELEMENTS in the view,
# MAX_SHAPE_VALUES in the loader).
WEIGHT_ELEMENTS = 256
# Element types a shape computation reads (shape inference parses their values), kept always.
KEPT_TYPES = frozenset(
    {
        onnx.TensorProto.UNDEFINED,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.STRING,
    }
)
WIRE_READ_BYTES = 64 << 20  # files from this size on are walked, not parsed whole

_OTHER_VALUE_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def _number(message: Any, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)


_MODEL_GRAPH = _number(onnx.ModelProto, "graph")
_GRAPH_INITIALIZER = _number(onnx.GraphProto, "initializer")
_GRAPH_NODE = _number(onnx.GraphProto, "node")
_NODE_ATTRIBUTE = _number(onnx.NodeProto, "attribute")
_ATTRIBUTE_TENSOR = _number(onnx.AttributeProto, "t")
_TENSOR_DIMS = _number(onnx.TensorProto, "dims")
_TENSOR_DATA_TYPE = _number(onnx.TensorProto, "data_type")
_TENSOR_VALUES = frozenset(
    _number(onnx.TensorProto, name) for name in ("raw_data", *_OTHER_VALUE_FIELDS)
)
LARGE_TENSOR_BYTES = 64 << 10  # the walk looks inside initializers from this size on

# Fields (and packed dims) one walk steps over before it leaves the file to a whole parse: a
# chain of 100,000 nodes has 150,000 (nodes, initializers, inputs), walked in 0.18 s.
MAX_WALKED_FIELDS = 1 << 19
MAX_LENGTH = (1 << 31) - 2  # upb refuses a length of INT32_MAX or more
VARINT_CHUNK = 4 << 20  # bytes of a packed varint field checked at a time

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# Packed value fields: the fixed width of each element, or None for varints.
_PACKED_WIDTH: dict[int, int | None] = {
    _number(onnx.TensorProto, "float_data"): 4,
    _number(onnx.TensorProto, "double_data"): 8,
    _number(onnx.TensorProto, "int32_data"): None,
    _number(onnx.TensorProto, "int64_data"): None,
    _number(onnx.TensorProto, "uint64_data"): None,
}
DROP = b""  # what a rewrite returns to leave a field out (a message it rewrites is never empty)
# A rewrite of a message's fields: (data, field number, wire type, value start, end) -> the
# field's new value (length-delimited fields only), DROP, or None to keep the field as it is.
_Rewrite = Callable[["FileWindow", int, int, int, int], "bytes | None"]


class FileWindow:
    """A file's bytes by index and slice, as a memory map gives them, read with ``os.pread`` a
    block at a time. A file that ends before the size it had when opened (shrunk by another
    program meanwhile) is a :class:`ModelError` where a memory map's page would be SIGBUS.
    It also keeps the walk's budget of fields (:meth:`spend`)."""

    BLOCK = 1 << 20

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path
        self._size = os.fstat(fd).st_size
        self._start = 0
        self._block = b""
        self._fields_left = MAX_WALKED_FIELDS

    def spend(self, fields: int) -> None:
        """Count ``fields`` more stepped over; ValueError past :data:`MAX_WALKED_FIELDS`."""
        self._fields_left -= fields
        if self._fields_left < 0:
            raise ValueError(f"more than {MAX_WALKED_FIELDS} fields")

    @property
    def fields_left(self) -> int:
        """Fields the walk may still step over (a loop that counts its own spends it later)."""
        return self._fields_left

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self._size)
            if stop <= start:
                return b""
            offset = start - self._start
            if offset >= 0 and stop - self._start <= len(self._block):
                return self._block[offset : stop - self._start]
            if stop - start > self.BLOCK:
                return self._read(start, stop - start)
            self._load(start)
            return self._block[: stop - start]
        offset = key - self._start
        if 0 <= offset < len(self._block):
            return self._block[offset]
        if not 0 <= key < self._size:
            raise IndexError("index out of range")
        self._load(key)
        return self._block[0]

    def block(self, pos: int) -> tuple[int, bytes]:
        """The block the window holds from ``pos`` on (read if it does not hold ``pos`` and
        the next :data:`_MAX_HEADER` bytes), and where it starts in the file."""
        if not 0 <= pos < self._size:
            raise IndexError("index out of range")
        held = pos - self._start
        if held < 0 or held + _MAX_HEADER > len(self._block):
            self._load(pos)
        return self._start, self._block

    def _load(self, pos: int) -> None:
        self._block = self._read(pos, min(self.BLOCK, self._size - pos))
        self._start = pos

    def _read(self, pos: int, count: int) -> bytes:
        data = os.pread(self._fd, count, pos)
        if len(data) < count:
            raise ModelError(self._path, changed_size(self._size))
        return data


def changed_size(size: int) -> str:
    return f"changed size while being read (it had {size:,} bytes; another program wrote it?)"


def is_weight(data_type: int, dims: list[int] | tuple[int, ...]) -> bool:
    return data_type not in KEPT_TYPES and math.prod(dims) >= WEIGHT_ELEMENTS


def strip_weights(model: onnx.ModelProto, holders: Iterable[onnx.NodeProto] | None = None) -> bool:
    """Clear the values of ``model``'s weights, those of its main graph's initializers and of
    the tensors its main graph's nodes hold inline (a Constant's ``value``: ``holders`` are the
    nodes that may hold one, every node when not known); returns whether any had values."""
    stripped = False
    nodes = model.graph.node if holders is None else holders
    inline = [
        attr.t
        for node in nodes
        for attr in node.attribute
        if attr.type == onnx.AttributeProto.TENSOR
    ]
    for tensor in [*model.graph.initializer, *inline]:
        # The dims sliced first: math.prod would step through the repeated field's
        # iterator, one protobuf call a dim (a third of this loop on 50,000 initializers).
        if tensor.data_type in KEPT_TYPES or math.prod(tensor.dims[:]) < WEIGHT_ELEMENTS:
            continue
        if tensor.HasField("raw_data"):  # reading raw_data would copy it: ask, then clear
            tensor.ClearField("raw_data")
            stripped = True
            continue  # a tensor holds its values in one field
        for name in _OTHER_VALUE_FIELDS:
            if len(getattr(tensor, name)):
                tensor.ClearField(name)
                stripped = True
    return stripped


def read_without_weights(path: Path) -> bytes | None:
    """The encoding of the model in ``path`` with the large weights' values left out, or None
    when it has none or the file is not a model this walk can read (the caller then parses it
    whole)."""
    try:
        with open(path, "rb") as handle:
            data = FileWindow(handle.fileno(), path)
            return _message(data, 0, len(data), _model_field)
    except (OSError, ValueError, IndexError):
        return None


def node_bytes(path: str | Path, limit: int = 64 << 10) -> int:
    """How many bytes the main graph's nodes take in the first ``limit`` bytes of the file: a
    cheap measure of how large a graph is, which the file's size is not (weights make a file
    large, not slow). Encoders write a graph's nodes before its other fields; 0 when the file
    does not start with them, or cannot be read."""
    try:
        # Not blocking on a FIFO (whose reader would wait for a writer): regular files only.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return 0
            head = os.pread(fd, limit, 0)
        finally:
            os.close(fd)
        pos = 0
        while True:  # the model's fields before its graph (versions, producer, doc string)
            number, wire, value, end = _header(head, pos)
            if number == _MODEL_GRAPH and wire == _LENGTH:
                break
            pos = end
    except (OSError, ValueError, IndexError):
        return 0
    stop = min(end, len(head))
    pos = value
    try:
        while pos < stop:
            number, wire, _, after = _header(head, pos)
            if number != _GRAPH_NODE or wire != _LENGTH:
                break
            pos = after
    except (ValueError, IndexError):  # a header cut by the limit
        pass
    return min(pos, stop) - value


def _header(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(field number, wire type, start of the value, end of the field) of the field at
    ``pos``; IndexError when its header runs past ``data``."""
    tag, pos = (
        _block_varint(data, pos + 1, data[pos]) if data[pos] >= 0x80 else (data[pos], pos + 1)
    )
    wire = tag & 7
    if wire == _LENGTH:
        length, value = (
            _block_varint(data, pos + 1, data[pos])
            if data[pos] >= 0x80
            else (
                data[pos],
                pos + 1,
            )
        )
        return tag >> 3, wire, value, value + length
    if wire == _VARINT:
        _, end = _block_varint(data, pos + 1, data[pos]) if data[pos] >= 0x80 else (0, pos + 1)
        return tag >> 3, wire, pos, end
    if wire in (_FIXED64, _FIXED32):
        return tag >> 3, wire, pos, pos + (8 if wire == _FIXED64 else 4)
    raise ValueError(f"wire type {wire}")


# -- the protobuf encoding ---------------------------------------------------------------------


def _varint(data: FileWindow, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: FileWindow, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end) of each field of
    the message encoded in ``data[start:end]``."""
    pos = start
    while pos < end:
        data.spend(1)
        first = pos
        tag, pos = _varint(data, pos)
        if pos - first > 5 or tag > 0xFFFFFFFF or tag >> 3 == 0:
            raise ValueError("invalid tag")  # as upb: 5 bytes at most, field number 0 refused
        wire = tag & 7
        if wire == _LENGTH:
            value = pos
            length, pos = _varint(data, pos)
            if pos - value > 5 or length > MAX_LENGTH:
                raise ValueError("invalid length")
            value, pos = pos, pos + length
        elif wire == _VARINT:
            value = pos
            _, pos = _varint(data, pos)
        elif wire == _FIXED64:
            value, pos = pos, pos + 8
        elif wire == _FIXED32:
            value, pos = pos, pos + 4
        else:  # groups (not in ONNX's schema: left to protobuf) or no wire type at all
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated")
        yield tag >> 3, wire, first, value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _message(data: FileWindow, start: int, end: int, rewrite: _Rewrite) -> bytes | None:
    """The message in ``data[start:end]`` with the fields ``rewrite`` replaces replaced (None
    when it replaces none): runs of other fields are copied as they are."""
    pieces: list[bytes] = []
    copied = start
    for number, wire, first, value, after in _fields(data, start, end):
        replaced = rewrite(data, number, wire, value, after)
        if replaced is None:
            continue
        pieces.append(data[copied:first])
        if replaced is not DROP:
            pieces.append(_encode_varint(number << 3 | _LENGTH))
            pieces.append(_encode_varint(len(replaced)))
            pieces.append(replaced)
        copied = after
    if not pieces:
        return None
    pieces.append(data[copied:end])
    return b"".join(pieces)


def _model_field(data: FileWindow, number: int, wire: int, start: int, end: int) -> bytes | None:
    if number == _MODEL_GRAPH and wire == _LENGTH:
        return _graph_message(data, start, end)
    return None


def _graph_message(data: FileWindow, start: int, end: int) -> bytes | None:
    """``_message(data, start, end, _graph_field)``, for the one message of a model that has a
    field per node, initializer and tensor type (hundreds of thousands in a large graph): each
    field's header is decoded inline from the block the window holds, not byte by byte through
    calls, and only fields of :data:`LARGE_TENSOR_BYTES` or more are looked into. Its checks
    and its budget are :func:`_fields`'s: the fields it steps over are counted here and spent
    from the window's budget in one call (before it looks into a field, at the end, or when
    they pass what is left, which raises)."""
    pieces: list[bytes] = []
    copied = pos = start
    base, block = data.block(pos)
    walked, left = 0, data.fields_left
    while pos < end:
        walked += 1
        if walked > left:
            data.spend(walked)  # past the budget: ValueError, the file is parsed whole
        offset = pos - base
        if offset + _MAX_HEADER > len(block) and base + len(block) < len(data):
            base, block = data.block(pos)
            offset = 0
        first = pos
        # The tag and (for a length-delimited field) the length: varints of one byte mostly,
        # checked as upb does (at most 5 bytes each, a field number, a length under 2 GiB).
        tag = block[offset]
        offset += 1
        if tag >= 0x80:
            tag, offset = _block_varint(block, offset, tag)
            if offset - (first - base) > 5 or tag > 0xFFFFFFFF:
                raise ValueError("invalid tag")
        if tag < 8:
            raise ValueError("invalid tag")  # field number 0
        wire = tag & 7
        if wire == _LENGTH:
            length = block[offset]
            offset += 1
            if length >= 0x80:
                length_start = offset - 1
                length, offset = _block_varint(block, offset, length)
                if offset - length_start > 5 or length > MAX_LENGTH:
                    raise ValueError("invalid length")
            value = base + offset
            pos = value + length
        elif wire == _VARINT:
            value = base + offset
            while block[offset] >= 0x80:
                offset += 1
            offset += 1
            pos = base + offset
            if offset - (value - base) > 10:
                raise ValueError("varint too long")
        elif wire == _FIXED64:
            value, pos = base + offset, base + offset + 8
        elif wire == _FIXED32:
            value, pos = base + offset, base + offset + 4
        else:  # groups (not in ONNX's schema: left to protobuf) or no wire type at all
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated")
        if wire != _LENGTH or length < LARGE_TENSOR_BYTES:
            continue
        data.spend(walked)  # the fields it looks into spend from the same budget
        replaced = _graph_field(data, tag >> 3, wire, value, pos)
        walked, left = 0, data.fields_left
        if replaced is None:
            continue
        pieces.append(data[copied:first])
        if replaced is not DROP:
            pieces.append(_encode_varint(tag >> 3 << 3 | _LENGTH))
            pieces.append(_encode_varint(len(replaced)))
            pieces.append(replaced)
        copied = pos
    data.spend(walked)
    if not pieces:
        return None
    pieces.append(data[copied:end])
    return b"".join(pieces)


_MAX_HEADER = 20  # a field's tag and length: two varints of at most 10 bytes


def _block_varint(block: bytes, offset: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``first`` (at ``offset - 1``) had its high bit
    set, and where it ends."""
    result, shift = first & 0x7F, 7
    while True:
        byte = block[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, offset
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _graph_field(data: FileWindow, number: int, wire: int, start: int, end: int) -> bytes | None:
    if wire != _LENGTH or end - start < LARGE_TENSOR_BYTES:
        return None
    if number == _GRAPH_INITIALIZER:
        return _tensor(data, start, end)
    if number == _GRAPH_NODE:  # a Constant holding a large tensor inline
        return _message(data, start, end, _node_field)
    return None


def _node_field(data: FileWindow, number: int, wire: int, start: int, end: int) -> bytes | None:
    if number == _NODE_ATTRIBUTE and wire == _LENGTH and end - start >= LARGE_TENSOR_BYTES:
        return _message(data, start, end, _attribute_field)
    return None


def _attribute_field(
    data: FileWindow, number: int, wire: int, start: int, end: int
) -> bytes | None:
    if number == _ATTRIBUTE_TENSOR and wire == _LENGTH and end - start >= LARGE_TENSOR_BYTES:
        return _tensor(data, start, end)
    return None


def _tensor(data: FileWindow, start: int, end: int) -> bytes | None:
    """A TensorProto without its values if it is a weight, else None (kept as it is)."""
    data_type = 0
    dims: list[int] = []
    values = False
    for number, wire, _, value, after in _fields(data, start, end):
        if number == _TENSOR_DATA_TYPE and wire == _VARINT:
            data_type = _int32(_varint(data, value)[0])
        elif number == _TENSOR_DIMS:
            if wire == _VARINT:
                dims.append(_varint(data, value)[0])
            elif wire == _LENGTH:  # packed
                pos = value
                while pos < after:
                    data.spend(1)
                    dim, pos = _varint(data, pos)
                    dims.append(dim)
        elif number in _TENSOR_VALUES:
            values = True
    if not values or not is_weight(data_type, [_signed(d) for d in dims]):
        return None
    return _message(data, start, end, _drop_values)


def _int32(value: int) -> int:
    """An int32 field's value as protobuf reads it from its varint (the low 32 bits, signed)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _signed(value: int) -> int:
    """An int64 from its varint (negative values take ten bytes, two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _drop_values(data: FileWindow, number: int, wire: int, start: int, end: int) -> bytes | None:
    if number not in _TENSOR_VALUES:
        return None
    if wire == _LENGTH and number in _PACKED_WIDTH:  # packed: checked, as protobuf would
        width = _PACKED_WIDTH[number]
        if width is None:
            check_packed_varints(data, start, end)
        elif (end - start) % width:
            raise ValueError(f"packed field of {end - start} bytes, elements of {width}")
    # Other wire types: the value itself is an element (or, mismatched, an unknown field).
    return DROP


def check_packed_varints(data: FileWindow | bytes, start: int, end: int) -> None:
    """ValueError unless ``data[start:end]`` is a run of whole varints of at most 10 bytes each
    (as protobuf reads a packed int32, int64 or uint64 field), checked a chunk at a time."""
    run = 0  # continuation bytes (high bit set) since the last varint ended
    for chunk_start in range(start, end, VARINT_CHUNK):
        chunk = np.frombuffer(data[chunk_start : min(chunk_start + VARINT_CHUNK, end)], np.uint8)
        ends = np.flatnonzero(chunk < 0x80)  # the last byte of each varint
        if ends.size == 0:
            run += chunk.size
        else:
            # Bytes per varint: the first's includes the run carried over from the last chunk.
            longest = max(run + int(ends[0]) + 1, int(np.diff(ends).max(initial=0)))
            if longest > 10:
                raise ValueError("a packed varint longer than 10 bytes")
            run = chunk.size - 1 - int(ends[-1])
        if run >= 10:
            raise ValueError("a packed varint longer than 10 bytes")
    if run:
        raise ValueError("a packed varint runs past the end of its field")
