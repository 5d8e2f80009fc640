"""Stage 2b: the canonical view: what each node means, however the exporter wrote it.

Exporters write the same network with different ops: Caffe conversions write a BatchNorm as
Mul + Add, TensorFlow converters wrap layers in NHWC Transposes and write BatchNorm as
Sub, Mul, Add, ultralytics writes SiLU as ``x * Sigmoid(x)``, quantizers put
QuantizeLinear -> DequantizeLinear around every conv or replace it by QLinearConv. Rules ask
this view, never raw op types: "what role does this node play?", "which axis holds the
channels?", "what set this tensor's width?". Each composite pattern is recognized once, here.

Roles (``View.role``):

- ``conv``: Conv, ConvInteger, QLinearConv (a quantized export gets its float twin's verdict);
- ``deconv``: ConvTranspose (a linear map like a conv: walks look through it as through a conv
  of the same widths, and a chain of it and a conv with nothing nonlinear between folds);
- ``affine``: a per-channel affine map: BatchNormalization, and Mul/Add/Sub/Div whose other
  operand is a constant broadcasting as a scalar or along the channel axis (``x / c`` only);
- ``activation``: an elementwise nonlinearity, or a composite one (SiLU, HardSwish, GELU, Mish
  as exporters spell them out) seen as one node at its last op;
- ``layout``: a Transpose (the view tracks the channel axis through it);
- ``quantize``: QuantizeLinear / DequantizeLinear on activations (transparent);
- ``select``: Split, Slice or Gather along the channel axis (a channel selection);
- ``passthrough``: Identity, Dropout, Cast;
- ``merge``: Add or Sum of two or more feature maps of one shape (a residual connection);
- ``pool``: MaxPool, AveragePool, LpPool; ``concat``; ``dense``: Gemm, MatMul with a constant
  weight; ``flatten``: Flatten, Reshape, Squeeze, Unsqueeze;
- ``spatial-reduce``: a reduction over every spatial axis and nothing else: GlobalAveragePool,
  GlobalMaxPool, GlobalLpPool, and ReduceMean/ReduceMax/ReduceSum/... whose constant axes are
  exactly the axes that are neither batch nor channels (the dynamo exporter's ``mean``);
- ``normalize``: LayerNormalization, GroupNormalization, InstanceNormalization,
  LpNormalization, MeanVarianceNormalization (per-position statistics: no spatial mixing that
  a rule asks about, but not affine either);
- ``other``: everything else.

The view is built once per graph and shared by every rule; every answer is computed on first
use and memoized, so a large graph pays only for what rules ask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple, cast, get_args

import numpy as np
import onnx
from onnx import numpy_helper

from convlint.cost import numel, spatial_pixels, spatial_size
from convlint.errors import GraphError
from convlint.graph import (
    CONV_INPUTS,
    FLOAT_TYPES,
    GLOBAL_POOLS,
    WINDOW_POOLS,
    ModelGraph,
    Node,
    Shape,
)

ELEMENTWISE_NONLINEAR = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
        "Softplus", "Softsign", "Clip", "HardSwish", "Mish", "Gelu", "ThresholdedRelu", "Erf",
        "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
        "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Sign", "Round", "Floor", "Ceil", "Shrink",
        "Softmax", "LogSoftmax", "Hardmax",
    }
)  # fmt: skip
# Nonlinear only with a constant operand (Max(x, 0) is a ReLU, Pow(x, 3) a cube).
NONLINEAR_WITH_CONSTANT = frozenset({"Max", "Min", "Pow"})
ARITHMETIC = frozenset({"Mul", "Add", "Sub", "Div"})
PASSTHROUGH = frozenset({"Identity", "Dropout", "Cast"})
MERGES = frozenset({"Add", "Sum"})
QUANTIZE = frozenset({"QuantizeLinear", "DequantizeLinear"})
SELECT = frozenset({"Split", "Slice", "Gather"})
FLATTENERS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})
DENSE = frozenset({"Gemm", "MatMul"})
REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
        "ReduceLogSumExp", "ReduceSumSquare", "ReduceProd",
    }
)  # fmt: skip
NORMALIZATIONS = frozenset(
    {
        "LayerNormalization", "GroupNormalization", "InstanceNormalization",
        "LpNormalization", "MeanVarianceNormalization",
    }
)  # fmt: skip

# What a node means (the module's docstring says what each holds); a closed set, so that a
# mistyped role is a type error, and at run time a ValueError naming the roles.
Role = Literal[
    "conv", "deconv", "affine", "activation", "layout", "quantize", "select", "passthrough",
    "merge", "pool", "concat", "dense", "flatten", "spatial-reduce", "normalize", "other",
]  # fmt: skip
ROLES: frozenset[Role] = frozenset(get_args(Role))

# The walks rules take (sets of roles looked through).
LINEAR: frozenset[Role] = frozenset({"affine", "passthrough", "layout", "quantize"})  # linear
# the same channels, maybe a nonlinearity
CHANNEL_PRESERVING: frozenset[Role] = LINEAR | {"activation"}
WIDTH_SOURCE: frozenset[Role] = CHANNEL_PRESERVING | {"select"}  # what set a tensor's width?
LAYOUT_ONLY: frozenset[Role] = frozenset({"passthrough", "layout", "quantize"})  # same values
# what `convlint fix` folds between two convs
FOLDABLE: frozenset[Role] = frozenset({"affine", "passthrough"})
# What a value reduced over space may pass through and still be one value per channel:
# ConvNeXt's head normalizes its pooled features channels-last and flattens them.
AFTER_POOLING: frozenset[Role] = LINEAR | {"activation", "normalize", "flatten"}

# Names of activations in messages.
ACTIVATION_NAMES = {"Relu": "ReLU", "Gelu": "GELU", "HardSwish": "HardSwish", "Mish": "Mish"}
_UNKNOWN = object()  # not computed yet
MAX_READ_ELEMENTS = 64  # the view reads small constants only (axes, clip bounds)
MAX_COMPOSITE_NODES = 12  # the longest composite activation (GELU's tanh form) has 9


@dataclass(frozen=True)
class Composite:
    """A composite activation: ``nodes`` compute ``name`` of ``input``, ending at ``head``."""

    name: str
    input: str
    head: str
    nodes: frozenset[str]


class ConvGeometry(NamedTuple):
    """A conv's shape facts, read from its weight and attributes.

    A NamedTuple rather than a frozen dataclass: as immutable, and three times quicker to
    create, which counts on graphs of thousands of convs.
    """

    cin: int
    cout: int
    kernel: tuple[int, ...]
    group: int
    strides: tuple[int, ...]
    has_bias: bool
    out_pixels: int | None

    @property
    def kernel_area(self) -> int:
        return math.prod(self.kernel)

    @property
    def is_pointwise(self) -> bool:
        return self.kernel.count(1) == len(self.kernel)  # every dim 1; count runs in C

    @property
    def is_spatial(self) -> bool:
        return not self.is_pointwise

    @property
    def kernel_text(self) -> str:
        """The kernel as "3×3", "1×7", "3×3×3"; a 1-D kernel reads "1-D 3"."""
        if len(self.kernel) == 1:
            return f"1-D {self.kernel[0]}"
        return "×".join(map(str, self.kernel))

    @property
    def stride_area(self) -> int:
        return math.prod(self.strides)

    @property
    def shape_text(self) -> str:
        return f"{self.kernel_text} {self.cin}->{self.cout}"


class View:
    """The canonical view of one ModelGraph (see the module docstring)."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self._roles: dict[str, Role] = {}
        self._axes: dict[str, int] = {}
        self._geometry: dict[str, ConvGeometry | None] = {}
        # Geometries by what they are made of: a network repeats a few kinds of conv.
        self._made: dict[tuple[int, Shape, Shape | None, bool], ConvGeometry] = {}
        self._by_role: dict[Role, list[Node]] = {}
        self._conv_geometries: list[tuple[Node, ConvGeometry | None]] | None = None
        # The roles an op type decides alone, entered for all their nodes at once: rules ask
        # the role of nearly every conv and activation of a large graph.
        # Nodes of another role than conv have no geometry (what walks ask of each they meet).
        for op_type, role in FIXED_ROLES.items():
            nodes = graph.of_type(op_type)
            if nodes:
                names = [node.name for node in nodes]
                self._roles.update(dict.fromkeys(names, role))
                if role != "conv":
                    self._geometry.update(dict.fromkeys(names))

    # -- what a node is -----------------------------------------------------------------------

    def role(self, node: Node) -> Role:
        role = self._roles.get(node.name)
        if role is None:
            role = self._roles[node.name] = self._role(node)
        return role

    def _role(self, node: Node) -> Role:
        if node.name in self._composite_of:
            return "activation"
        if not node.is_standard:
            return "other"
        op = node.op_type
        if op == "ConvTranspose":
            return "deconv"
        if op in CONV_INPUTS:
            return "conv"
        if op in ELEMENTWISE_NONLINEAR:
            return "activation"
        if op == "BatchNormalization" or (op in ARITHMETIC and self._is_affine(node)):
            return "affine"
        if op in MERGES and self._is_merge(node):
            return "merge"
        if op in NONLINEAR_WITH_CONSTANT and self._constant_operand(node) is not None:
            return "activation"
        if op in PASSTHROUGH:
            return "passthrough"
        if op == "Transpose":
            return "layout"
        if op in QUANTIZE and self.graph.data_input(node) is not None:
            # A QuantizeLinear whose zero point is its type's minimum clamps negatives to
            # zero: a ReLU fused into quantization (onnxruntime's QDQ quantizer drops the
            # ReLU after a conv and writes exactly that).
            return "activation" if self._clamps_at_zero(node) else "quantize"
        if op in SELECT and self._selects_channels(node):
            return "select"
        if op in WINDOW_POOLS:
            return "pool"
        if op == "Concat":
            return "concat"
        if op in DENSE and len(node.inputs) > 1 and self.graph.is_constant(node.inputs[1]):
            return "dense"
        if op in FLATTENERS:
            return "flatten"
        if op in GLOBAL_POOLS or (op in REDUCTIONS and self._reduces_space(node)):
            return "spatial-reduce"
        if op in NORMALIZATIONS:
            return "normalize"
        return "other"

    def nodes(self, role: Role) -> list[Node]:
        """Nodes of a role, in graph order (every rule asks for the convs: listed once)."""
        found = self._by_role.get(role)
        if found is None:
            if role not in ROLES:  # a plugin's typo would otherwise find nothing, silently
                raise ValueError(f"no role {role!r} (roles: {', '.join(sorted(ROLES))})")
            found = [node for node in self._candidates(role) if self.role(node) == role]
            self._by_role[role] = found
        return list(found)

    def _candidates(self, role: Role) -> Iterable[Node]:
        # Most roles belong to a few op types: ask the graph's index rather than every node.
        by_role = {
            "conv": [op for op in CONV_INPUTS if op != "ConvTranspose"],
            "deconv": ["ConvTranspose"],
            "pool": sorted(WINDOW_POOLS),
            "concat": ["Concat"],
            "dense": sorted(DENSE),
        }
        if role in by_role:
            return self.graph.of_type(*by_role[role])
        return self.graph

    def activation_name(self, node: Node) -> str | None:
        """The activation a node computes ("SiLU", "ReLU6", "ReLU"), None if it is none."""
        if self.role(node) != "activation":
            return None
        composite = self._composite_of.get(node.name)
        if composite is not None:
            return composite.name
        if node.op_type == "Clip" and self._clip_bounds(node) == (0.0, 6.0):
            return "ReLU6"
        return ACTIVATION_NAMES.get(node.op_type, node.op_type)

    def describe(self, node: Node) -> str:
        """How messages name a node: its role's name and its ONNX name."""
        composite = self._composite_of.get(node.name)
        if composite is not None:
            return f"{composite.name} {composite.head!r}"
        return f"{self.activation_name(node) or node.op_type} {node.name!r}"

    def describe_tensor(self, tensor: str) -> str:
        producer = self.graph.producer_of(tensor)
        if producer is None:
            return "a constant" if self.graph.is_constant(tensor) else f"graph input {tensor!r}"
        return self.describe(producer)

    # -- operands and shapes ------------------------------------------------------------------

    def data_input(self, node: Node) -> str | None:
        """The tensor a node transforms: a composite activation's input, a conv's data."""
        composite = self._composite_of.get(node.name)
        if composite is not None:
            return composite.input
        if node.op_type in CONV_INPUTS and node.is_standard:
            return node.inputs[0] or None
        return self.graph.data_input(node)

    def conv_weight(self, node: Node) -> str | None:
        """The weight tensor of a conv-role node (an initializer, or computed from one)."""
        if node.op_type not in CONV_INPUTS:
            return None
        index = CONV_INPUTS[node.op_type][1]
        return node.inputs[index] if len(node.inputs) > index else None

    def conv_bias(self, node: Node) -> str | None:
        index = CONV_INPUTS[node.op_type][2] if node.op_type in CONV_INPUTS else None
        if index is None or len(node.inputs) <= index or not node.inputs[index]:
            return None
        return node.inputs[index]

    def dense_bias(self, node: Node) -> str | None:
        """The constant bias of a dense layer: Gemm's C, or a constant added to a MatMul's
        output (as exporters write a Linear layer on more than 2-D inputs)."""
        graph = self.graph
        if node.op_type == "Gemm":
            bias = node.inputs[2] if len(node.inputs) > 2 else ""
            return bias if bias and graph.is_constant(bias) else None
        for user in graph.consumers_of(node.outputs[0]):
            if user.op_type == "Add" and self.role(user) == "affine":
                return next(t for t in user.inputs if graph.is_constant(t))
        return None

    def geometry(self, node: Node) -> ConvGeometry | None:
        """The geometry of a conv-role node with a known weight shape (memoized)."""
        known = self._geometry.get(node.name, _UNKNOWN)
        if known is not _UNKNOWN:  # rules ask every conv's, several times each
            return known  # type: ignore[return-value]
        geometry = self._conv_geometry(node) if self.role(node) == "conv" else None
        self._geometry[node.name] = geometry
        return geometry

    def deconv_geometry(self, node: Node) -> ConvGeometry | None:
        """The geometry of a deconv-role node (ConvTranspose: weight C_in × C_out/group × k),
        with ``out_pixels`` those of its (upsampled) output."""
        if self.role(node) != "deconv" or len(node.inputs) < 2:
            return None
        weight = self.graph.shape(node.inputs[1])
        if weight is None or len(weight) < 3 or numel(weight) is None:
            return None
        group = int(node.attr("group", 1))
        kernel: tuple[int, ...] = weight[2:]  # type: ignore[assignment]  # ints, as checked
        strides = node.attr("strides")
        return ConvGeometry(
            weight[0],  # type: ignore[arg-type]
            weight[1] * group,  # type: ignore[operator]
            kernel,
            group,
            tuple(strides) if strides else (1,) * len(kernel),
            len(node.inputs) > 2 and bool(node.inputs[2]),
            spatial_pixels(self.graph, node.outputs[0]),
        )

    def linear_geometry(self, node: Node) -> ConvGeometry | None:
        """A conv's geometry, or a ConvTranspose's: what walks back over channel widths read."""
        return self.geometry(node) or self.deconv_geometry(node)

    def conv_geometries(self) -> list[tuple[Node, ConvGeometry | None]]:
        """Every Conv of the graph with its geometry (None where its weight's shape is not
        static), in graph order, made in one pass: validation asks for every one, the rules
        then for most. Each is checked as it is made, against what ONNX shape inference lets
        pass and onnxruntime refuses: the first Conv without an input, a weight and an output,
        or whose weight does not fit its input's channels, is a GraphError naming it."""
        made = self._conv_geometries
        if made is not None:
            return made
        graph = self.graph
        # Each conv's input, weight and output shapes are read once, from the graph's table
        # (where every declared shape is) before asking the graph (an enclosing graph's).
        shapes, shape, known = graph.shapes, graph.shape, self._geometry
        made = []
        for node in graph.of_type("Conv"):
            inputs, outputs = node.inputs, node.outputs
            if not outputs or len(inputs) < 2:  # strict inference skips some bodies
                raise GraphError(f"conv {node.name!r} needs an input, a weight and an output")
            weight = shapes[inputs[1]] if inputs[1] in shapes else shape(inputs[1])
            memo = known.get(node.name, _UNKNOWN)
            if memo is not _UNKNOWN:  # a rule asked for it first
                geometry = cast(ConvGeometry | None, memo)
            elif weight is None or len(weight) < 3 or numel(weight) is None:
                geometry = known[node.name] = None
            else:
                output = shapes[outputs[0]] if outputs[0] in shapes else shape(outputs[0])
                has_bias = len(inputs) > 2 and bool(inputs[2])
                geometry = self._made_geometry(node, weight, output, has_bias)
                known[node.name] = geometry
            made.append((node, geometry))
            if geometry is not None:
                expected: int = geometry.cin
            elif weight is None or len(weight) < 2 or not isinstance(weight[1], int):
                continue
            else:  # a weight with a symbolic dim: its channels may still be known
                expected = weight[1] * int(node.attr("group", 1))
            data = shapes[inputs[0]] if inputs[0] in shapes else shape(inputs[0])
            if data is None or len(data) < 2 or not isinstance(data[1], int):
                continue
            if data[1] != expected:
                assert weight is not None  # the expected channels came from it
                raise GraphError(
                    f"conv {node.name!r} reads {data[1]} channels, its weight "
                    f"{'x'.join(map(str, weight))} with group {node.attr('group', 1)} expects "
                    f"{expected}"
                )
        self._conv_geometries = made
        return made

    def _conv_geometry(self, node: Node) -> ConvGeometry | None:
        # The weight and bias are found by position rather than through ``conv_weight`` and
        # ``conv_bias``.
        inputs = node.inputs
        _, weight_at, bias_at = CONV_INPUTS[node.op_type]
        graph = self.graph
        weight = graph.shape(inputs[weight_at]) if len(inputs) > weight_at else None
        # numel is None exactly when a dim is not an int (and is memoized per shape).
        if weight is None or len(weight) < 3 or numel(weight) is None:
            return None
        has_bias = bias_at is not None and len(inputs) > bias_at and bool(inputs[bias_at])
        return self._made_geometry(node, weight, graph.shape(node.outputs[0]), has_bias)

    def _made_geometry(
        self, node: Node, weight: Shape, output: Shape | None, has_bias: bool
    ) -> ConvGeometry:
        """The geometry of a conv of a static ``weight`` shape, made once per kind of conv."""
        key = (node.settings_id(), weight, output, has_bias)
        made = self._made.get(key)
        if made is not None:
            return made
        group = int(node.attr("group", 1))
        kernel: tuple[int, ...] = weight[2:]  # type: ignore[assignment]  # ints, as checked
        strides = node.attr("strides")
        made = self._made[key] = ConvGeometry(
            weight[1] * group,  # type: ignore[operator]
            weight[0],  # type: ignore[arg-type]
            kernel,
            group,
            tuple(strides) if strides else (1,) * len(kernel),
            has_bias,
            spatial_size(output),
        )
        return made

    def is_float_conv(self, node: Node) -> bool:
        """A plain Conv (or ConvTranspose) with stored float weights (an initializer, or a
        Constant node's tensor as paddle2onnx writes them): what ``convlint fix`` can
        rewrite. Weights fed as a graph input are not stored: the caller can change them."""
        weight = self.conv_weight(node)
        if node.op_type not in ("Conv", "ConvTranspose") or weight is None:
            return False
        producer = self.graph.producer_of(weight)
        if producer is None:  # an initializer, not a graph input the caller feeds
            stored = weight in self.graph.constants
        else:
            stored = producer.op_type == "Constant" and "value" in producer.attrs
        return stored and self.graph.dtype(weight) in FLOAT_TYPES

    def channel_axis(self, tensor: str) -> int:
        """Which axis of ``tensor`` holds channels: 1 (NCHW) unless a layout change moved it."""
        known = self._axes.get(tensor)
        if known is not None:
            return known
        # Walk back to a tensor whose axis is known, then carry it forward (no recursion:
        # chains are as long as the graph).
        chain: list[tuple[str, Node]] = []
        current = tensor
        axis = 1
        while True:
            if current in self._axes:
                axis = self._axes[current]
                break
            node = self.graph.producer_of(current)
            if node is None:
                axis = self._input_axis(current)
                break
            if node.op_type not in AXIS_KEEPING and node.op_type != "Transpose":
                axis = 1  # convs, pools, norms write NCHW; unknown ops are taken as NCHW
                break
            upstream = self.graph.data_input(node) if node.op_type != "Concat" else None
            upstream = upstream or (node.inputs[0] if node.inputs else None)
            if upstream is None:
                break
            chain.append((current, node))
            current = upstream
        self._axes[current] = axis
        for produced, node in reversed(chain):
            if node.op_type == "Transpose":
                perm = list(node.attr("perm") or [])
                axis = perm.index(axis) if axis in perm else 1
            self._axes[produced] = axis
        return axis

    def _input_axis(self, tensor: str) -> int:
        """A graph input is NHWC when it is read through a Transpose that moves axis 3 to 1."""
        shape = self.graph.shape(tensor)
        if shape is None or len(shape) != 4:
            return 1
        for consumer in self.graph.consumers_of(tensor):
            if consumer.op_type == "Transpose" and list(consumer.attr("perm") or [])[1:2] == [3]:
                return 3
        return 1

    def channels(self, tensor: str) -> int | None:
        """The channel count of a feature map, on whichever axis holds channels."""
        shape = self.graph.shape(tensor)
        if shape is None or len(shape) < 2:
            return None
        axis = self.channel_axis(tensor)
        width = shape[axis] if axis < len(shape) else None
        return width if isinstance(width, int) else None

    def spatial_dims(self, tensor: str) -> Shape | None:
        """The dims of a feature map that are neither batch nor channels."""
        shape = self.graph.shape(tensor)
        if shape is None or len(shape) < 3:
            return None
        axis = self.channel_axis(tensor)
        return tuple(d for i, d in enumerate(shape) if i not in (0, axis))

    # -- walks --------------------------------------------------------------------------------

    def source_of(
        self, tensor: str, through: frozenset[Role] = WIDTH_SOURCE
    ) -> tuple[Node | None, list[Node]]:
        """What produced ``tensor``, looking through nodes whose role is in ``through``.

        Returns the first producer of another role (None for a graph input or a constant,
        which the walked list then ends before) and the nodes walked over, nearest first; a
        composite activation is walked as one node (its last op).
        """
        walked: list[Node] = []
        node = self.graph.producer_of(tensor)
        while node is not None and self.role(node) in through:
            walked.append(node)
            upstream = self.data_input(node)
            if upstream is None:
                return None, walked
            node = self.graph.producer_of(upstream)
        return node, walked

    def users_of(
        self, tensor: str, through: frozenset[Role] = LINEAR
    ) -> list[tuple[Node, list[Node]]]:
        """Who reads ``tensor``, looking through nodes whose role is in ``through``."""
        found: list[tuple[Node, list[Node]]] = []
        seen: set[str] = set()
        stack: list[tuple[str, list[Node]]] = [(tensor, [])]
        while stack:
            current, walked = stack.pop()
            for consumer in self.graph.consumers_of(current):
                composite = self._composite_of.get(consumer.name)
                if composite is not None:
                    consumer = self.graph.nodes[composite.head]
                if consumer.name in seen:
                    continue
                seen.add(consumer.name)
                if self.role(consumer) in through and consumer.outputs:
                    stack.extend((out, [*walked, consumer]) for out in consumer.outputs if out)
                else:
                    found.append((consumer, walked))
        found.sort(key=lambda item: item[0].index)
        return found

    def spatial_reduction(self, tensor: str) -> Node | None:
        """The node that reduced ``tensor``'s values over every spatial axis (a global pool, a
        reduction over H and W, a pool whose output is 1×1), looking back through the steps
        that keep one value per channel (:data:`AFTER_POOLING`); None if there is none."""
        source, _ = self.source_of(tensor, through=AFTER_POOLING)
        if source is None:
            return None
        role = self.role(source)
        if role == "spatial-reduce":
            return source
        if role == "pool":
            spatial = self.spatial_dims(source.outputs[0])
            if spatial is not None and all(d == 1 for d in spatial):
                return source
        return None

    def origin(self, tensor: str) -> str:
        """The tensor ``tensor`` holds the values of, before layout and quantization steps."""
        node = self.graph.producer_of(tensor)
        while node is not None and self.role(node) in LAYOUT_ONLY:
            upstream = self.data_input(node)
            if upstream is None:
                break
            tensor, node = upstream, self.graph.producer_of(upstream)
        return tensor

    # -- affine maps and channel selections ---------------------------------------------------

    def _constant_operand(self, node: Node) -> tuple[int, str] | None:
        """(position, tensor) of the one constant operand of a binary op with one data input."""
        if len(node.inputs) != 2:
            return None
        first, second = (self.graph.is_constant(t) for t in node.inputs)
        if first == second:
            return None
        return (0, node.inputs[0]) if first else (1, node.inputs[1])

    def _is_affine(self, node: Node) -> bool:
        operand = self._constant_operand(node)
        if operand is None:
            return False
        position, constant = operand
        if node.op_type == "Div" and position == 0:
            return False  # c / x is not affine in x
        data = node.inputs[1 - position]
        shape = self.graph.shape(data)
        const_shape = self.graph.constants[constant]
        if shape is None:
            return math.prod(d for d in const_shape if isinstance(d, int)) == 1
        return _broadcasts_per_channel(const_shape, len(shape), self.channel_axis(data))

    def _is_merge(self, node: Node) -> bool:
        data = [t for t in node.inputs if t and not self.graph.is_constant(t)]
        if len(data) < 2:
            return False
        shapes = {self.graph.shape(t) for t in data}
        return len(shapes) == 1 and None not in shapes

    def merged_inputs(self, node: Node) -> list[str]:
        """The feature maps a merge adds up (for a residual Add: the branch and the shortcut)."""
        if self.role(node) != "merge":
            return []
        return [t for t in node.inputs if t and not self.graph.is_constant(t)]

    def _clamps_at_zero(self, node: Node) -> bool:
        if node.op_type != "QuantizeLinear":
            return False
        if len(node.inputs) < 3 or not node.inputs[2]:
            return True  # the default zero point is uint8 0
        zero_point = self._stored_value(node.inputs[2])
        if zero_point is None or zero_point.dtype.kind not in "iu":
            return False
        lowest = np.iinfo(zero_point.dtype).min
        return bool((zero_point == lowest).all())

    def _reduces_space(self, node: Node) -> bool:
        """A Reduce* op whose axes are exactly its input's spatial axes."""
        data = node.inputs[0] if node.inputs else ""
        shape = self.graph.shape(data)
        if shape is None or len(shape) < 3:
            return False
        if len(node.inputs) > 1 and node.inputs[1]:  # opset 18: axes is an input
            axes = self._int_values(node.inputs[1])
        else:
            axes = node.attr("axes")
        if not axes:
            return False  # no axes: every axis, channels too
        rank, channel = len(shape), self.channel_axis(data)
        spatial = {i for i in range(rank) if i not in (0, channel)}
        return {int(a) % rank for a in axes} == spatial

    def _selects_channels(self, node: Node) -> bool:
        data = node.inputs[0] if node.inputs else ""
        shape = self.graph.shape(data)
        if shape is None or len(shape) < 3:
            return False
        axis = self.channel_axis(data)
        if node.op_type == "Slice":
            axes = self._int_values(node.inputs[3]) if len(node.inputs) > 3 else [0]
            if axes is None:
                return False
            return [a % len(shape) for a in axes] == [axis]
        return int(node.attr("axis", 0)) % len(shape) == axis

    def _int_values(self, tensor: str) -> list[int] | None:
        value = self._stored_value(tensor)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    def _stored_value(self, tensor: str) -> np.ndarray | None:
        """The values of a small stored constant (initializer or Constant node), else None."""
        proto = self._initializers.get(tensor)
        if proto is None:
            producer = self.graph.producer_of(tensor)
            if producer is None or producer.op_type != "Constant":
                return None
            proto = producer.attr("value")
        if (
            not isinstance(proto, onnx.TensorProto)
            or proto.data_location == onnx.TensorProto.EXTERNAL
        ):
            return None
        if math.prod(proto.dims) > MAX_READ_ELEMENTS:
            return None
        try:
            return numpy_helper.to_array(proto)
        except ValueError:  # dims that disagree with the data: no value to read
            return None

    @cached_property
    def _initializers(self) -> dict[str, onnx.TensorProto]:
        return {init.name: init for init in self.graph.proto.initializer}

    def _clip_bounds(self, node: Node) -> tuple[float | None, float | None]:
        bounds: list[float | None] = []
        for index, attr_name in ((1, "min"), (2, "max")):
            if len(node.inputs) > index and node.inputs[index]:
                value = self._stored_value(node.inputs[index])
                bounds.append(
                    float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None
                )
            else:
                attr = node.attr(attr_name)
                bounds.append(float(attr) if attr is not None else None)
        return bounds[0], bounds[1]

    # -- composite activations ----------------------------------------------------------------

    @cached_property
    def _composite_of(self) -> dict[str, Composite]:
        """Every node of a composite activation -> the composite (one pass over Mul and Div)."""
        found: dict[str, Composite] = {}
        for head in reversed(self.graph.of_type("Mul", "Div")):
            if head.name in found:
                continue
            composite = self._match_composite(head)
            if composite is not None:
                found.update(dict.fromkeys(composite.nodes, composite))
        return found

    def _match_composite(self, head: Node) -> Composite | None:
        """``x · g(x)`` (times or over constants), g elementwise and nonlinear: an activation.

        SiLU is ``x · Sigmoid(x)``, HardSwish ``x · HardSigmoid(x)`` or ``x · Clip(x + 3, 0,
        6) / 6``, GELU ``0.5 · x · (1 + Erf(x / √2))`` or its Tanh form, Mish
        ``x · Tanh(Softplus(x))``. The gate's ops name the activation.
        """
        factors: list[str] = []
        members: set[str] = set()
        stack = [head]
        while stack:  # the product tree: Mul nodes, and Div by a constant
            node = stack.pop()
            members.add(node.name)
            operands = node.inputs if node.op_type == "Mul" else node.inputs[:1]
            if node.op_type == "Div" and not self.graph.is_constant(node.inputs[1]):
                return None
            for tensor in operands:
                if self.graph.is_constant(tensor):
                    continue
                inner = self.graph.producer_of(tensor)
                if (
                    inner is not None
                    and inner.op_type in ("Mul", "Div")
                    and inner.is_standard
                    and self._only_read_by(inner, members | {node.name})
                    and len(members) < MAX_COMPOSITE_NODES
                ):
                    stack.append(inner)
                else:
                    factors.append(tensor)
        if len(factors) != 2:
            return None
        for x, gate in (factors, factors[::-1]):
            gate_nodes = self._gate(gate, x)
            if gate_nodes is None:
                continue
            nodes = members | {n.name for n in gate_nodes}
            if not all(self._only_read_by(self.graph.nodes[n], nodes) for n in nodes - {head.name}):
                continue
            ops = {n.op_type for n in gate_nodes}
            return Composite(_composite_name(ops), x, head.name, frozenset(nodes))
        return None

    def _gate(self, tensor: str, x: str) -> list[Node] | None:
        """The nodes computing ``tensor`` elementwise from ``x`` alone, with a nonlinearity."""
        nodes: list[Node] = []
        stack = [tensor]
        while stack:
            current = stack.pop()
            if current == x:
                continue
            node = self.graph.producer_of(current)
            if node is None or not node.is_standard or len(nodes) >= MAX_COMPOSITE_NODES:
                return None
            op = node.op_type
            if op not in ELEMENTWISE_NONLINEAR and op not in ARITHMETIC | NONLINEAR_WITH_CONSTANT:
                return None
            nodes.append(node)
            data = [t for t in node.inputs if t and not self.graph.is_constant(t)]
            if not data:
                return None
            stack.extend(data)
        nonlinear = any(n.op_type in ELEMENTWISE_NONLINEAR | NONLINEAR_WITH_CONSTANT for n in nodes)
        return nodes if nonlinear else None

    def _only_read_by(self, node: Node, readers: set[str]) -> bool:
        """Every output of ``node`` is read only by ``readers`` (and is no graph output)."""
        for tensor in node.outputs:
            if tensor in self.graph.graph_outputs:
                return False
            if any(c not in readers for c in self.graph.consumers.get(tensor, ())):
                return False
        return True


# Standard ops whose role their op type decides, whatever surrounds them: what ``_role`` gives
# them (an elementwise nonlinearity inside a composite activation is an activation too).
FIXED_ROLES: dict[str, Role] = {
    **dict.fromkeys(sorted(CONV_INPUTS.keys() - {"ConvTranspose"}), "conv"),
    "ConvTranspose": "deconv",
    **dict.fromkeys(sorted(ELEMENTWISE_NONLINEAR), "activation"),
    "BatchNormalization": "affine",
    **dict.fromkeys(sorted(PASSTHROUGH), "passthrough"),
    "Transpose": "layout",
    **dict.fromkeys(sorted(WINDOW_POOLS), "pool"),
    "Concat": "concat",
}

AXIS_KEEPING = (
    ELEMENTWISE_NONLINEAR
    | ARITHMETIC
    | NONLINEAR_WITH_CONSTANT
    | PASSTHROUGH
    | QUANTIZE
    | SELECT
    | {"BatchNormalization", "Concat", "Pad", "Resize", "Upsample"}
)


# -- folds of ConvTranspose chains (CL003 and the rewrite that folds them) ---------------


def _spatial_attr(node: Node, name: str, rank: int, default: int) -> list[int]:
    value = node.attrs.get(name)
    return [int(v) for v in value] if value else [default] * rank


def transposed_fold(
    deconv: Node, conv: Node, deconv_kernel: tuple[int, ...], conv_kernel: tuple[int, ...]
) -> tuple[tuple[int, ...], list[int], str]:
    """The single ConvTranspose that a ConvTranspose (stride s, pads p) then a conv (stride 1,
    pads q) compute: kernel K1 + K2 - 1, stride s, pads p + K2 - 1 - q on each side. Returns
    (kernel, pads, why) with ``why`` saying what stops the fold ("" when it folds)."""
    rank = len(deconv_kernel)
    if conv.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return (), [], "the conv after the ConvTranspose uses auto_pad"
    if deconv.attrs.get("auto_pad", "NOTSET") != "NOTSET" or deconv.attrs.get("output_shape"):
        return (), [], "the ConvTranspose sets auto_pad or output_shape"
    if any(_spatial_attr(deconv, "output_padding", rank, 0)):
        return (), [], "the ConvTranspose has output_padding"
    if any(d != 1 for d in _spatial_attr(deconv, "dilations", rank, 1)):
        return (), [], "the ConvTranspose is dilated"
    if any(d != 1 for d in _spatial_attr(conv, "dilations", rank, 1)):
        return (), [], "the conv after the ConvTranspose is dilated"
    if any(s != 1 for s in _spatial_attr(conv, "strides", rank, 1)):
        return (), [], "the conv after the ConvTranspose is strided"
    p = _spatial_attr(deconv, "pads", 2 * rank, 0)
    q = _spatial_attr(conv, "pads", 2 * rank, 0)
    pads = [p[i] + conv_kernel[i % rank] - 1 - q[i] for i in range(2 * rank)]
    if any(v < 0 for v in pads):
        return (), [], "the conv pads more than its kernel reaches"
    kernel = tuple(k1 + k2 - 1 for k1, k2 in zip(deconv_kernel, conv_kernel, strict=True))
    return kernel, pads, ""


def border_caveat(deconv: Node, conv: Node, shifted: bool) -> str:
    """Where the fold of a ConvTranspose into a padded conv differs at the borders ("" where it
    is exact): the conv reads zeros past the map's edge, the folded ConvTranspose reads what
    the ConvTranspose would have written there (its bias, a shift between, cropped rows)."""
    rank = len(deconv.attrs.get("kernel_shape") or []) or 2
    if not any(_spatial_attr(conv, "pads", 2 * rank, 0)):
        return ""
    if any(_spatial_attr(deconv, "pads", 2 * rank, 0)):
        return "the rows the ConvTranspose crops"
    if shifted:
        return "the ConvTranspose's bias (or the shift between)"
    return ""


def _composite_name(ops: set[str]) -> str:
    if "Sigmoid" in ops:
        return "SiLU"
    if "HardSigmoid" in ops or ops & {"Clip", "Relu", "Min", "Max"}:
        return "HardSwish"
    if "Erf" in ops:
        return "GELU"
    if "Softplus" in ops:
        return "Mish"
    if "Tanh" in ops:
        return "GELU"
    return "x·f(x)"


def _broadcasts_per_channel(const_shape: Shape, rank: int, axis: int) -> bool:
    """A constant of ``const_shape`` broadcasts against a rank-``rank`` tensor as a scalar or
    along ``axis`` only (numpy's right-aligned broadcasting)."""
    if len(const_shape) > rank:
        return False
    offset = rank - len(const_shape)
    return all(d == 1 or offset + i == axis for i, d in enumerate(const_shape))
