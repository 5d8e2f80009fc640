"""Stage 2: the model as a graph (networkx on demand), with shapes, constants and queries.

One graph node per ONNX node (subgraphs of If/Loop/Scan are analyzed as their own graphs, which
see the shapes and constants of the graphs enclosing them); edges run along tensors. Attributes
carry their ONNX defaults, so a rule reads ``node.attrs["group"]`` without caring whether the
exporter wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import onnx
from onnx import helper

from convlint.errors import GraphError

if TYPE_CHECKING:
    import networkx as nx

Dim = int | str | None
Shape = tuple[Dim, ...]

# Ops that pass channels through unchanged and that rules may look through. Activations are
# transparent to the question "what produced these channels?", not to "is this chain linear?".
ACTIVATIONS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
        "Softplus", "Softsign", "Clip", "HardSwish", "Mish", "Gelu", "ThresholdedRelu", "Erf",
    }
)  # fmt: skip
LINEAR_PASSTHROUGH = frozenset({"BatchNormalization", "Identity", "Dropout", "Cast"})
TRANSPARENT = ACTIVATIONS | LINEAR_PASSTHROUGH
# Activations with no weights of their own: a channel projection commutes with them.
PARAMETER_FREE_ACTIVATIONS = ACTIVATIONS - {"PRelu", "Clip"}
WINDOW_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # ONNX float, float16, double, bfloat16

SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})  # ONNX's own operators (ai.onnx, "" for short)

# Where a convolution keeps its operands: (data, weight, bias) input indices. Quantized convs
# count as convs for costs and rules (a QDQ or QOperator export gets its float twin's verdict).
CONV_INPUTS: dict[str, tuple[int, int, int | None]] = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "ConvInteger": (0, 1, None),
    "QLinearConv": (0, 3, 8),
}

# Ops whose output is a constant when every input is one (a weight computed from stored
# values), and which keep their first input's values: the output is that tensor, not a new
# parameter (a DequantizeLinear of an int8 weight counts as that weight's elements, once).
VALUE_PRESERVING = frozenset(
    {
        "Identity", "Cast", "DequantizeLinear", "QuantizeLinear", "Transpose", "Reshape",
        "Squeeze", "Unsqueeze", "Flatten",
    }
)  # fmt: skip
# Ops never folded to a constant even with constant inputs (their output is not a fixed value).
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
     "Bernoulli", "Dropout"}
)  # fmt: skip


_ABSENT = object()  # an attribute a node does not set
# Nodes whose attributes can hold a graph or a tensor (and custom ops, which may): too large
# to compare, and few.
UNSHARED_ATTRIBUTES = frozenset({"Constant", "ConstantOfShape", *SUBGRAPH_OPS})


class _Attributes(NamedTuple):
    """The attributes a node sets, by name, and the values read of them so far (``_ABSENT``
    for a name it does not set)."""

    protos: dict[str, onnx.AttributeProto]
    values: dict[str, Any]


class Node:
    """One ONNX node, with attributes (defaults applied) and the shapes of its tensors."""

    # A plain slotted class rather than a dataclass: large graphs build one per ONNX node, and
    # slotted instances are smaller and quicker to create.
    __slots__ = (
        "name",
        "op_type",
        "domain",
        "inputs",
        "outputs",
        "index",
        "opset",
        "proto",
        "_attrs",
        "_read",
        "_shared",
    )

    def __init__(
        self,
        name: str,
        op_type: str,
        domain: str,
        inputs: list[str],
        outputs: list[str],
        index: int,
        opset: int,
        proto: onnx.NodeProto,
        shared: dict[bytes, _Attributes] | None = None,
    ) -> None:
        self.name = name
        self.op_type = op_type
        self.domain = domain
        self.inputs = inputs
        self.outputs = outputs
        self.index = index
        self.opset = opset
        self.proto = proto
        self._attrs: dict[str, Any] | None = None
        self._read: _Attributes | None = None
        self._shared = shared

    def __repr__(self) -> str:
        return (
            f"Node(name={self.name!r}, op_type={self.op_type!r}, domain={self.domain!r}, "
            f"inputs={self.inputs!r}, outputs={self.outputs!r}, index={self.index!r}, "
            f"opset={self.opset!r})"
        )

    @property
    def is_standard(self) -> bool:
        return self.domain in STANDARD_DOMAINS

    def attr(self, name: str, default: Any = None) -> Any:
        """One attribute's value, without parsing the rest (the default if absent)."""
        if self._attrs is not None:
            return self._attrs.get(name, default)
        read = self._read
        if read is None:
            read = self._read = self._attributes()
        values = read.values
        if name in values:  # validation, costs and rules ask a conv for its group in turn
            value = values[name]
        else:
            found = read.protos.get(name)
            if found is None:
                value = _ABSENT
            else:
                self._check_type(found)
                value = _attribute_value(found)
            values[name] = value
        if value is _ABSENT:
            return default
        return value[:] if type(value) is list else value  # a copy a caller may change

    def settings_id(self) -> int:
        """Equal for nodes of one graph that set the same attributes (and, for most ops,
        only for those): what a fact derived from a node's attributes may be memoized by."""
        read = self._read
        if read is None:
            read = self._read = self._attributes()
        return id(read)

    def _attributes(self) -> _Attributes:
        """This node's attributes, shared with every node of the graph that sets the same ones
        (a network's thousands of convs have a few distinct attribute lists, so each value is
        parsed and checked once per list, not once per node)."""
        shared = self._shared
        key = b""
        if shared is not None:
            key = _settings_key(self.proto.SerializeToString())
            known = shared.get(key)
            if known is not None:
                return known
        attributes = self.proto.attribute
        protos = {attr.name: attr for attr in attributes}
        if len(protos) != len(attributes):  # a name set twice: the first one counts
            protos = {}
            for attr in attributes:
                protos.setdefault(attr.name, attr)
        made = _Attributes(protos, {})
        if shared is not None:
            shared[key] = made
        return made

    def _check_type(self, attr: onnx.AttributeProto) -> None:
        """An attribute of another type than its schema's (a FLOAT or STRING ``group``) is an
        invalid model, as onnxruntime says, not a value to convert."""
        expected = _schema_types(self.op_type, self.opset, self.domain or "").get(attr.name)
        if expected is not None and attr.type != expected:
            raise GraphError(
                f"node {self.name!r} ({self.op_type}): attribute {attr.name!r} is "
                f"{_A.AttributeType.Name(attr.type)}, the operator's schema wants "
                f"{_A.AttributeType.Name(expected)}"
            )

    @property
    def attrs(self) -> dict[str, Any]:
        """Attribute values with the schema's defaults applied (parsed on first use)."""
        if self._attrs is None:
            for attr in self.proto.attribute:
                self._check_type(attr)
            self._attrs = _attribute_values(self.proto, self.opset)
        return self._attrs


# Wire tags of NodeProto's input (1), output (2) and name (3) fields, length-delimited.
_TENSOR_AND_NAME_TAGS = frozenset({0x0A, 0x12, 0x1A})


def _settings_key(encoded: bytes) -> bytes:
    """A node's encoding less the tensors and name it starts with: what it sets (op type,
    domain, attributes). Quicker than a copy of the node with those fields cleared, and as
    exact: protobuf writes fields in number order, so input, output and name come first;
    where they do not, the key only keeps more than it needs (no two different sets of
    attributes ever share a key, as the attributes are never cut)."""
    pos, end = 0, len(encoded)
    while pos < end and encoded[pos] in _TENSOR_AND_NAME_TAGS:
        size = encoded[pos + 1]
        if size < 0x80:  # a length of one byte: names under 128 bytes
            pos += 2 + size
            continue
        pos += 1
        size = shift = 0
        while True:  # the field's length, a varint
            byte = encoded[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        pos += size
    return encoded[pos:] if pos <= end else encoded


@cache
def _schema_defaults(op_type: str, opset: int, domain: str) -> dict[str, Any]:
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # custom or unknown op: no defaults to apply
        return {}
    defaults: dict[str, Any] = {}
    for name, attr in schema.attributes.items():
        if attr.default_value.name:
            defaults[name] = _attribute_value(attr.default_value)
    return defaults


@cache
def _schema_types(op_type: str, opset: int, domain: str) -> dict[str, int]:
    """Each attribute's type as the operator's schema declares it (empty for custom ops)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return {}
    return {
        name: int(attr.type.value)  # type: ignore[attr-defined]
        for name, attr in schema.attributes.items()
    }


_A = onnx.AttributeProto


def _attribute_value(attr: onnx.AttributeProto) -> Any:
    # The common scalar and list types are read directly: onnx.helper's generic reader is the
    # hot spot of loading a 20,000-node graph.
    kind = attr.type
    if kind == _A.INT:
        return attr.i
    if kind == _A.INTS:
        return list(attr.ints)
    if kind == _A.FLOAT:
        return attr.f
    if kind == _A.STRING:
        return attr.s.decode("utf-8", "replace")
    if kind == _A.FLOATS:
        return list(attr.floats)
    return helper.get_attribute_value(attr)


def _attribute_values(node: onnx.NodeProto, opset: int) -> dict[str, Any]:
    values = dict(_schema_defaults(node.op_type, opset, node.domain or ""))
    for attr in node.attribute:
        if attr.type not in (_A.GRAPH, _A.GRAPHS):
            values[attr.name] = _attribute_value(attr)
    return values


TypeFacts = tuple[Shape | None, int]  # a tensor's shape (None if unknown) and element type


class _Declared(NamedTuple):
    """What a graph's inputs, value_info and outputs declare, by tensor name."""

    shapes: dict[str, Shape | None]
    dtypes: dict[str, int]


def _declared(
    declarations: Iterable[tuple[list[str], list[bytes]]], known: dict[bytes, TypeFacts]
) -> _Declared:
    """The shape and element type of every tensor of ``declarations``, lists of names and of
    their types' encodings (a graph's inputs, value_info and outputs, see ``_declarations`` and
    ``_encoded_declarations``); where a name is declared twice, a later entry counts only if
    it has a shape.

    Read in bulk, one list per field, and through ``known``: a graph's tensors share few
    distinct types, and a type's serialization and one lookup cost a quarter of reading its
    dims from protobuf; each distinct type is parsed once. A large graph's rules and costs ask
    the shape of nearly every tensor (each conv's input and output), so the shapes go into the
    graph's shape table at once rather than one lookup at a time.
    """
    shapes: dict[str, Shape | None] = {}
    dtypes: dict[str, int] = {}
    for names, keys in declarations:
        if not names:
            continue
        for key in set(keys).difference(known):
            known[key] = _shape_of(onnx.TypeProto.FromString(key))
        found = list(map(known.__getitem__, keys))
        batch = dict(zip(names, [each[0] for each in found], strict=True))
        if len(batch) == len(names) and shapes.keys().isdisjoint(batch):
            shapes.update(batch)  # no name declared twice: the common case
            dtypes.update(zip(names, [each[1] for each in found], strict=True))
            continue
        for name, (shape, dtype) in zip(names, found, strict=True):
            if name not in shapes or shape is not None:
                shapes[name] = shape
                dtypes[name] = dtype
    return _Declared(shapes, dtypes)


def _declarations(graph: onnx.GraphProto) -> Iterator[tuple[list[str], list[bytes]]]:
    """A graph's inputs, value_info and outputs: the names, and their types encoded."""
    for values in (graph.input, graph.value_info, graph.output):
        yield [value.name for value in values], [value.type.SerializeToString() for value in values]


def _encoded_declarations(encoded: bytes) -> Iterator[tuple[list[str], list[bytes]]]:
    """What ``_declarations`` reads of a model's main graph, read from the model's encoding
    without decoding anything else: its nodes, initializers and types stay bytes (decoding the
    nodes of a 100,000-node model takes longer than reading all it declares)."""
    model = _declarations_message().FromString(encoded)
    if not model.HasField("graph"):  # never inference's answer: a model always has a graph
        raise ValueError("take_inferred: the inferred model has no graph")
    graph = model.graph
    for values in (graph.input, graph.value_info, graph.output):
        yield [value.name for value in values], [value.type for value in values]


@cache
def _declarations_message() -> Any:
    """A message class for a ModelProto's encoding of which only the main graph's inputs,
    value_info and outputs are decoded, each as its name and its type's encoding: the field
    numbers are ONNX's (ModelProto.graph 7; GraphProto.input 11, output 12, value_info 13;
    ValueInfoProto.name 1, type 2); every other field is kept undecoded."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    described = descriptor_pb2.FileDescriptorProto(
        name="convlint_declarations.proto", package="convlint_declarations", syntax="proto2"
    )
    field = descriptor_pb2.FieldDescriptorProto
    value = described.message_type.add(name="Value")
    value.field.add(name="name", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    value.field.add(name="type", number=2, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    graph = described.message_type.add(name="Graph")
    for name, number in (("input", 11), ("output", 12), ("value_info", 13)):
        graph.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_REPEATED,
            type_name=".convlint_declarations.Value",
        )
    model = described.message_type.add(name="Model")
    model.field.add(
        name="graph",
        number=7,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=".convlint_declarations.Graph",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(described)
    model_type = pool.FindMessageTypeByName("convlint_declarations.Model")
    return message_factory.GetMessageClass(model_type)


def _shape_of(value_type: onnx.TypeProto) -> TypeFacts:
    if not value_type.HasField("tensor_type"):
        return None, 0
    tensor_type = value_type.tensor_type
    if not tensor_type.HasField("shape"):
        return None, tensor_type.elem_type
    return _dims(tensor_type.shape), tensor_type.elem_type


def _dims(shape: onnx.TensorShapeProto) -> Shape:
    dims: list[Dim] = []
    for dim in shape.dim:
        value = dim.dim_value
        # A non-zero dim_value must be the one set; only a zero needs the (slower) oneof check.
        if value or dim.HasField("dim_value"):
            dims.append(value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class ModelGraph:
    """A read-only view of one ONNX graph for rules, the cost model and reporters."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        opset: int,
        prefix: str = "",
        outer: ModelGraph | None = None,
        *,
        typed: bool = True,
    ) -> None:
        """``typed=False`` reads the graph's nodes before its shapes are inferred: what the
        graph declares, and the constants computed from others (which take their shapes from
        it), wait for :meth:`take_inferred`, given the inferred graph (of the same nodes)."""
        self.proto = graph
        self.opset = opset
        self.nodes: dict[str, Node] = {}
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        self.shapes: dict[str, Shape | None]  # what the graph declares, and its constants
        self.dtypes: dict[str, int] = {}
        self.constants: dict[str, Shape] = {}
        self.aliases: dict[str, str] = {}  # Identity output -> the initializer it passes on
        self.graph_inputs = [v.name for v in graph.input]
        self.graph_outputs = [v.name for v in graph.output]
        self.subgraphs: list[tuple[str, ModelGraph]] = []
        # A subgraph reads the enclosing graphs' tensors by name (PyTorch exports keep the weights
        # of an If branch in the main graph): their constants are constants here too.
        self.outer = outer
        self._types: dict[bytes, TypeFacts] = {} if outer is None else outer._types
        if outer is not None:
            self.constants.update(outer.constants)
            self.dtypes.update(outer.dtypes)
            self.aliases.update(outer.aliases)

        constants, dtypes = self.constants, self.dtypes
        for init in graph.initializer:
            name = init.name
            constants[name] = tuple(init.dims[:])  # a slice first: quicker than iterating
            dtypes[name] = init.data_type
        self.shapes = {}
        self._declared_dtypes: dict[str, int] = {}
        if typed:
            self._take_declared(_declarations(graph))
        # Computed constants whose shapes wait for the inferred graph (``typed=False``): the
        # node's op type, inputs and output, in graph order, and the outputs.
        untyped: list[tuple[str, list[str], str]] = []
        untyped_outputs: set[str] = set()
        # IR < 4 lists initializers among graph inputs too; those are weights, not data.
        self.data_inputs = [name for name in self.graph_inputs if name not in self.constants]

        nodes, producer, consumers = self.nodes, self.producer, self.consumers
        # Tensors read before any node produced them: graph inputs and weights, or (in a
        # main graph; a subgraph reads its outer graphs' tensors) a forward reference, which a
        # cycle needs (see ``find_cycle``).
        unproduced: list[str] = []
        main = outer is None
        # Standard-domain nodes by op type, in graph order: every rule asks ``of_type``.
        self._standard_by_type: dict[str, list[Node]] = {}
        by_type = self._standard_by_type
        # Nodes that set the same attributes share what is read of them (see Node._attributes).
        shared: dict[bytes, _Attributes] = {} if outer is None else outer._attribute_sets
        self._attribute_sets: dict[bytes, _Attributes] = shared
        for index, proto in enumerate(graph.node):
            # Every read of a protobuf field builds a new Python object: read each one once
            # (a slice of a repeated field is the quickest copy of it).
            op_type = proto.op_type
            inputs = proto.input[:]
            outputs = proto.output[:]
            name = proto.name or f"{op_type}_{index}"
            if prefix:
                name = prefix + name
            if name in nodes:
                name = f"{name}_{index}"
            domain = proto.domain
            nodes[name] = node = Node(
                name,
                op_type,
                domain,
                inputs,
                outputs,
                index,
                opset,
                proto,
                shared
                if domain in STANDARD_DOMAINS and op_type not in UNSHARED_ATTRIBUTES
                else None,
            )
            if domain in STANDARD_DOMAINS:
                if op_type in by_type:
                    by_type[op_type].append(node)
                else:
                    by_type[op_type] = [node]
            for tensor in inputs:
                if tensor:
                    readers = consumers.get(tensor)
                    if readers is not None:
                        readers.append(name)
                    else:
                        consumers[tensor] = [name]
                        if main and tensor not in producer:
                            unproduced.append(tensor)
            for tensor in outputs:
                if tensor:
                    producer[tensor] = name
            if op_type == "Constant":
                self._add_constant(proto)
            elif inputs and outputs and inputs[0] in constants:
                if typed:
                    self._add_computed_constant(op_type, inputs, outputs[0])
                else:
                    untyped.append((op_type, inputs, outputs[0]))
                    untyped_outputs.add(outputs[0])
            elif untyped_outputs and inputs and outputs and inputs[0] in untyped_outputs:
                untyped.append((op_type, inputs, outputs[0]))
                untyped_outputs.add(outputs[0])
            if op_type not in SUBGRAPH_OPS:
                continue
            for attr in proto.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self.subgraphs.append(
                        (node.name, ModelGraph(attr.g, opset, f"{node.name}/{attr.name}/", self))
                    )
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for i, sub in enumerate(attr.graphs):
                        self.subgraphs.append(
                            (
                                node.name,
                                ModelGraph(sub, opset, f"{node.name}/{attr.name}{i}/", self),
                            )
                        )
        self.memo: dict[tuple[str, str], Any] = {}  # per-node facts rules derive, e.g. geometry
        # Tensors a node reads before the node that produces them (ONNX requires topological
        # order; only a cycle makes one unavoidable).
        self.forward_references = [t for t in unproduced if t in producer]
        self._untyped = None if typed else untyped

    def read_conv_attributes(self) -> None:
        """Read every conv's attributes now (each distinct set once, see Node._attributes):
        validation, costs and rules all ask them. For a graph read with ``typed=False``, whose
        nodes the inferred graph's replace: the same attributes, read while inference runs."""
        by_type = self._standard_by_type
        for op_type in CONV_INPUTS:
            for node in by_type.get(op_type, ()):
                node.settings_id()

    def _take_declared(self, declarations: Iterable[tuple[list[str], list[bytes]]]) -> None:
        """Shape and type of each tensor the graph declares, read in bulk (see ``_declared``);
        a constant's own shape counts over what is declared of it."""
        declared = _declared(declarations, self._types)
        self.shapes = declared.shapes
        self.shapes.update(self.constants)
        self._declared_dtypes = declared.dtypes

    def take_inferred(self, inferred: onnx.GraphProto | bytes) -> None:
        """Finish a graph read with ``typed=False`` from ``inferred``, the same graph inferred:
        what it declares becomes this graph's shapes. Given the graph, its nodes become this
        graph's protos; given the inferred model's encoding, only its declarations are
        decoded (see ``_encoded_declarations``) and the nodes stay those read, the same nodes.
        Refused (a ValueError) for a graph with subgraphs, or one whose nodes differ in
        number (checked for a graph given decoded)."""
        untyped = self._untyped
        if untyped is None:
            raise ValueError("take_inferred: the graph was read with its shapes")
        if isinstance(inferred, bytes):
            if self.subgraphs:
                raise ValueError("take_inferred: a graph with subgraphs")
            self._take_declared(_encoded_declarations(inferred))
        else:
            if self.subgraphs or len(inferred.node) != len(self.nodes):
                raise ValueError("take_inferred: not the graph read (or one with subgraphs)")
            self.proto = inferred
            for node, proto in zip(self.nodes.values(), inferred.node, strict=True):
                node.proto = proto
            self._take_declared(_declarations(inferred))
        self._untyped = None
        for op_type, inputs, output in untyped:  # in graph order, as the typed read does
            self._add_computed_constant(op_type, inputs, output)

    @cached_property
    def nx(self) -> nx.DiGraph:
        """The networkx view: one graph node per ONNX node, edges along tensors (built on use;
        networkx is imported then, as it costs a fifth of a run's start-up)."""
        import networkx

        graph = networkx.DiGraph()
        graph.add_nodes_from(self.nodes)
        for tensor, consumers in self.consumers.items():
            source = self.producer.get(tensor)
            if source is None:
                continue
            for target in consumers:
                if graph.has_edge(source, target):
                    graph.edges[source, target]["tensors"].append(tensor)
                else:
                    graph.add_edge(source, target, tensors=[tensor])
        return graph

    def _add_constant(self, proto: onnx.NodeProto) -> None:
        if not proto.output:  # invalid; shape inference names it
            return
        for attr in proto.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                shape = tuple(int(d) for d in attr.t.dims)
                self.constants[proto.output[0]] = shape
                self.shapes[proto.output[0]] = shape
                self.dtypes[proto.output[0]] = attr.t.data_type

    def _add_computed_constant(self, op_type: str, inputs: list[str], output: str) -> None:
        """A node computing from constants only gives a constant (of known shape).

        Exporters share one initializer among equal weights through Identity nodes (PyTorch
        does for the zero biases of folded BatchNorms), store weights as DequantizeLinear of
        int8 (QDQ), Transposed or Reshaped (TensorFlow converters), or as ConstantOfShape
        (onnx's weight-stripped zoo graphs), and compute a BatchNorm's scale from its
        statistics (Mul of Rsqrt): each is a constant of the shape inference gave it.
        """
        constants = self.constants
        if op_type in NONDETERMINISTIC or not all(t in constants for t in inputs if t):
            return
        shape: Shape | None
        if op_type in ("Identity", "Cast", "DequantizeLinear", "QuantizeLinear"):
            shape = constants[inputs[0]]
        else:
            shape = self.shape(output)
            if shape is None or not all(isinstance(d, int) for d in shape):
                return
        constants[output] = shape
        self.shapes[output] = shape
        if op_type in VALUE_PRESERVING:
            self.aliases[output] = self.aliases.get(inputs[0], inputs[0])

    def find_cycle(self) -> list[str]:
        """The nodes of one cycle, in order ([] when the graph has none). Only graphs with a
        forward reference can have one, so others pay nothing."""
        if not self.forward_references:
            return []
        import networkx

        try:
            edges = networkx.find_cycle(self.nx)
        except networkx.NetworkXNoCycle:
            return []
        return [source for source, _ in edges]

    def has_path(self, source: str, target: str) -> bool:
        """Whether tensors lead from node ``source`` to node ``target`` (networkx's
        ``has_path`` on :attr:`nx`, without building it)."""
        seen, stack = {source}, [source]
        producer, consumers = self.producer, self.consumers
        while stack:
            name = stack.pop()
            if name == target:
                return True
            for tensor in self.nodes[name].outputs:
                if producer.get(tensor) != name:  # an edge runs from a tensor's producer only
                    continue
                for consumer in consumers.get(tensor, ()):
                    if consumer not in seen:
                        seen.add(consumer)
                        stack.append(consumer)
        return False

    # -- queries rules use -------------------------------------------------------------------

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def of_type(self, *op_types: str) -> list[Node]:
        """Standard-domain nodes of the given op types, in graph order."""
        by_type = self._standard_by_type
        present = [by_type[op_type] for op_type in set(op_types) if op_type in by_type]
        if len(present) == 1:  # one op type, as most asks find: already in graph order
            return list(present[0])
        found = [n for nodes in present for n in nodes]
        found.sort(key=lambda node: node.index)
        return found

    def all_graphs(self) -> Iterator[ModelGraph]:
        """This graph and every subgraph below it."""
        yield self
        for _, sub in self.subgraphs:
            yield from sub.all_graphs()

    def shape(self, tensor: str) -> Shape | None:
        known = self.shapes.get(tensor, _ABSENT)
        if known is not _ABSENT:
            return known  # type: ignore[return-value]
        # Neither declared here nor a constant.
        if self.outer is not None and tensor not in self.producer:
            return self.outer.shape(tensor)  # a tensor of an enclosing graph
        self.shapes[tensor] = None
        return None

    def dtype(self, tensor: str) -> int:
        """The ONNX element type of a tensor (0 when unknown)."""
        if tensor in self.dtypes:
            return self.dtypes[tensor]
        declared = self._declared_dtypes.get(tensor)
        if declared is None and self.outer is not None and tensor not in self.producer:
            return self.outer.dtype(tensor)
        return declared if declared is not None else 0

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def producer_of(self, tensor: str) -> Node | None:
        name = self.producer.get(tensor)
        return self.nodes[name] if name is not None else None

    def consumers_of(self, tensor: str) -> list[Node]:
        return [self.nodes[name] for name in self.consumers.get(tensor, [])]

    def data_input(self, node: Node) -> str | None:
        """The first non-constant input of a node: the activation it transforms."""
        for tensor in node.inputs:
            if tensor and not self.is_constant(tensor):
                return tensor
        return None

    def source_of(
        self, tensor: str, through: Iterable[str] = TRANSPARENT
    ) -> tuple[Node | None, list[Node]]:
        """What produced this tensor, looking through ``through`` ops.

        Returns the first producer that is not transparent (None for a graph input or a
        constant) and the transparent nodes walked over, nearest first.
        """
        through = frozenset(through)
        walked: list[Node] = []
        node = self.producer_of(tensor)
        while node is not None and node.op_type in through and node.is_standard:
            walked.append(node)
            upstream = self.data_input(node)
            if upstream is None:
                return None, walked
            node = self.producer_of(upstream)
        return node, walked

    def users_of(
        self, tensor: str, through: Iterable[str] = TRANSPARENT
    ) -> list[tuple[Node, list[Node]]]:
        """Who consumes this tensor, looking through ``through`` ops (single-consumer chains)."""
        through = frozenset(through)
        found: list[tuple[Node, list[Node]]] = []
        stack: list[tuple[str, list[Node]]] = [(tensor, [])]
        while stack:
            current, walked = stack.pop()
            for consumer in self.consumers_of(current):
                if consumer.op_type in through and consumer.is_standard and consumer.outputs:
                    stack.append((consumer.outputs[0], [*walked, consumer]))
                else:
                    found.append((consumer, walked))
        found.sort(key=lambda item: item[0].index)
        return found

    def channels(self, tensor: str) -> int | None:
        """Channel count (dim 1) of an NCHW tensor, if static."""
        shape = self.shape(tensor)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return None
        return shape[1]


def model_opset(model: onnx.ModelProto) -> int:
    """The model's version of ONNX's own operators (onnx's newest if it declares none)."""
    return next(
        (int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")),
        onnx.defs.onnx_opset_version(),
    )


def build_graph(model: onnx.ModelProto) -> ModelGraph:
    return ModelGraph(model.graph, model_opset(model))
