"""Stage 3: exact parameter and multiply-accumulate counts, per node and in total.

Conventions (documented in the README):
- params count weights and biases: every constant weight input of Conv, ConvTranspose, Gemm and
  MatMul; weight and bias of ConvInteger and QLinearConv (not their scales and zero points); a
  QDQ weight, DequantizeLinear of an int8 tensor, is that tensor's elements, counted once however
  many nodes read it; scale and bias of normalizations (BatchNormalization's running mean and
  variance are statistics, not parameters, as in PyTorch's ``parameters()``); PRelu slopes;
  float constants of more than one element added or multiplied in (learned biases and layer
  scales; constants subtracted or divided by are statistics, as TensorFlow's batch norm
  ``Sub(mean)`` and an input's mean/std normalization, and are not counted). A weight the
  graph computes from stored values (ConstantOfShape, a Constant node,
  Identity/Cast/Transpose/Reshape/DequantizeLinear of a constant) is a parameter of its
  inferred shape; one that only passes a stored tensor on counts as that tensor, once.
- MACs are those of one sample: the batch dim is never multiplied in.
- Conv, ConvInteger, QLinearConv: C_out * C_in/group * prod(kernel) per output pixel.
  ConvTranspose: C_in * C_out/group * prod(kernel) per input pixel. Gemm: K * N per row of
  its 2-D A, whose M rows count as MatMul's do (a classifier's M is the batch symbol or 1: one
  row; crnn's ``view(T * b, h)`` gives T·N, T rows per sample). MatMul: K * N per row, and
  every row of every leading dim of the output counts (a sequence-first T×N×K by K×M is
  T·N·K·M), except the model's batch symbol (the symbolic dim 0 of a data input, counted as
  1; a static batch of 1 is 1 anyway; a dim the loader resolved as ``32*N`` is 32); another
  symbolic leading dim makes MACs None. A 1-D MatMul operand is one row or one column, as in
  numpy. Pooling: one MAC per window element read, and so do global
  pools and reductions of a float tensor (ReduceMean, ReduceMax...: the dynamo exporter's
  ``mean`` over H and W costs what GlobalAveragePool does). Normalizations: one MAC per
  output element (a folded scale and shift), and so is a Mul or Div by a constant of
  more than one element (a per-channel scale: Caffe's Scale, TensorFlow's batch norm), so that
  a network costs the same however its batch norm was exported. Activations, other
  elementwise arithmetic and shape ops: zero (they are not multiply-accumulates).
- LSTM, GRU, RNN: params are their constant W, R and B inputs and an LSTM's peepholes P. MACs are
  seq_length × num_directions × gates × hidden_size × (input_size + hidden_size), gates = 4
  (LSTM), 3 (GRU), 1 (RNN): the gate matmuls of every step in every direction; biases and the
  elementwise gate math are not MACs. seq_length is X's dim 0 (dim 1 with layout=1), the
  batch is not multiplied in; with a symbolic seq_length, MACs are None.
- With symbolic non-batch dims, MACs are None; convolutions still carry
  ``macs_per_output_pixel``. Sizes the graph computes from its input's shape (Shape -> ... ->
  Resize/Reshape/Pad) are known once the input is bound: the loader resolves them.
- Subgraphs (If, Loop, Scan): their nodes are costed, and their weights are parameters of the
  model (each tensor once). An If, Loop or Scan whose subgraphs have MACs, or unknown ones, has
  unknown MACs (an If runs one branch, a Loop's trip count is unknown), so the model's total
  is None, never the main graph's alone; one whose subgraphs cost nothing costs nothing.
- When the total is None, ``ModelCost.blocked_by`` names the first node of the main graph, in
  graph order, whose MACs are unknown, ``unknown_nodes`` all of them, and ``macs_known`` sums
  the MACs of the others: the total is at least that (reports say "incomplete").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from convlint.graph import (
    CONV_INPUTS,
    FLOAT_TYPES,
    GLOBAL_POOLS,
    STANDARD_DOMAINS,
    WINDOW_POOLS,
    ModelGraph,
    Node,
    Shape,
)

NORMALIZATIONS = frozenset(
    {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
)
REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
        "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip
ELEMENTWISE_WITH_WEIGHTS = frozenset({"Add", "Sub", "Mul", "Div"})


class NodeCost(NamedTuple):
    """A NamedTuple rather than a frozen dataclass: as immutable, and four times quicker to
    create, which counts when every node of a large graph gets one."""

    params: int
    macs: int | None
    macs_per_output_pixel: int | None = None
    # The constant inputs counted in ``params``: a weight shared by several nodes is one
    # parameter tensor, counted once in the model's total.
    param_tensors: tuple[str, ...] = ()


@dataclass
class ModelCost:
    nodes: dict[str, NodeCost] = field(default_factory=dict)
    params: int = 0
    macs: int | None = 0
    macs_per_input_pixel: float | int | None = None
    # Why ``macs`` is None: the first node of the main graph, in graph order, whose MACs are
    # unknown (an If, Loop or Scan whose subgraphs have MACs, or a node with symbolic dims).
    blocked_by: str | None = None
    # Every node of the main graph whose MACs are unknown, in graph order, and the MACs of the
    # others: a lower bound of the total, which is then None (never a silently low number).
    unknown_nodes: list[str] = field(default_factory=list)
    macs_known: int = 0

    @property
    def incomplete(self) -> bool:
        return bool(self.unknown_nodes)

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "params": self.params,
            "macs": self.macs,
            "macs_per_input_pixel": self.macs_per_input_pixel,
        }
        data.update(self.completeness())
        return data

    def completeness(self) -> dict[str, object]:
        """The report's fields for a total that could not be computed completely: none when
        it could; else ``incomplete``, ``unknown_nodes`` and ``macs_at_least``."""
        if not self.unknown_nodes:
            return {}
        return {
            "incomplete": True,
            "unknown_nodes": list(self.unknown_nodes),
            "macs_at_least": self.macs_known,
        }


def numel(shape: Shape | None) -> int | None:
    if shape is None:
        return None
    if type(shape) is tuple:
        return _numel(shape)
    return _count(shape)


def _count(shape: Shape) -> int | None:
    for dim in shape:
        if not isinstance(dim, int):
            return None
    return math.prod(shape)  # type: ignore[arg-type]


# A graph's tensors have few distinct shapes: each is counted once.
_numel = lru_cache(maxsize=1 << 14)(_count)


def per_sample(shape: Shape | None) -> int | None:
    """Elements of one sample: the product of every dim after the batch dim."""
    if shape is None or len(shape) == 0:
        return None
    return numel(shape[1:]) if len(shape) > 1 else 1


def spatial_pixels(graph: ModelGraph, tensor: str) -> int | None:
    """H·W (·D) of an N×C×spatial tensor, if static."""
    return spatial_size(graph.shape(tensor))


def spatial_size(shape: Shape | None) -> int | None:
    """H·W (·D) of an N×C×spatial shape, if static (for a shape already read)."""
    if shape is None:
        return None
    if type(shape) is tuple:
        return _spatial(shape)
    return _count(shape[2:]) if len(shape) > 2 else None


@lru_cache(maxsize=1 << 14)
def _spatial(shape: Shape) -> int | None:
    return _count(shape[2:]) if len(shape) > 2 else None


def _const_size(graph: ModelGraph, tensor: str) -> int:
    if not tensor or not graph.is_constant(tensor):
        return 0
    return numel(graph.constants[tensor]) or 0


def _cost(
    graph: ModelGraph, weights: Sequence[str], macs: int | None, per_pixel: int | None = None
) -> NodeCost:
    """A node's cost, its params summed over its constant weight inputs."""
    constants = graph.constants
    tensors = tuple([t for t in weights if t and t in constants])
    params = 0
    for tensor in tensors:
        params += numel(constants[tensor]) or 0
    return NodeCost(params, macs, per_pixel, tensors)


def _conv(graph: ModelGraph, node: Node) -> NodeCost:
    inputs = node.inputs
    if node.op_type == "Conv" and len(inputs) == 2:
        # A stored weight and no bias (most of a large graph's convs): the general way below,
        # in short (a stored weight's shape is its constant's).
        stored = graph.constants.get(inputs[1])
        per_pixel = _numel(stored) if stored is not None else None
        if per_pixel is not None:
            pixels = spatial_size(graph.shape(node.outputs[0]))
            macs = per_pixel * pixels if pixels is not None else None
            return NodeCost(per_pixel, macs, per_pixel, (inputs[1],))
    data, weight_at, bias_at = CONV_INPUTS[node.op_type]
    count = len(inputs)
    if weight_at >= count:
        return _cost(graph, [], None)
    weights = [inputs[weight_at]]
    if bias_at is not None and bias_at < count:
        weights.append(inputs[bias_at])
    per_pixel = numel(graph.shape(weights[0]))
    if per_pixel is None:
        return _cost(graph, weights, None)
    if node.op_type == "ConvTranspose":  # each input pixel is spread over the kernel
        pixels = spatial_pixels(graph, inputs[data])
        return _cost(graph, weights, per_pixel * pixels if pixels is not None else None)
    pixels = spatial_pixels(graph, node.outputs[0])
    macs = per_pixel * pixels if pixels is not None else None
    return _cost(graph, weights, macs, per_pixel)


def _gemm(graph: ModelGraph, node: Node) -> NodeCost:
    b_shape = graph.shape(node.inputs[1])
    a_shape = graph.shape(node.inputs[0])
    if b_shape is None or len(b_shape) != 2 or numel(b_shape) is None:
        return _cost(graph, node.inputs[1:3], None)
    # M rows of one sample: a classifier's M is the batch (1 row); crnn's view(T * b, h)
    # makes it T·N, T rows per sample.
    rows: int | None = 1
    if a_shape is not None and len(a_shape) == 2:
        rows = rows_of_one_sample(graph, a_shape[1:] if node.attr("transA", 0) else a_shape[:1])
    if rows is None:
        return _cost(graph, node.inputs[1:3], None)
    return _cost(graph, node.inputs[1:3], rows * numel(b_shape))  # type: ignore[operator]


def batch_symbols(graph: ModelGraph) -> frozenset[str]:
    """The model's batch symbols: the symbolic dim 0 of each data input of the main graph."""
    while graph.outer is not None:
        graph = graph.outer
    symbols = set()
    for name in graph.data_inputs:
        shape = graph.shape(name)
        if shape and isinstance(shape[0], str):
            symbols.add(shape[0])
    return frozenset(symbols)


def rows_of_one_sample(graph: ModelGraph, dims: Shape) -> int | None:
    """The product of ``dims``, the model's batch symbol counting as 1 (None if another dim is
    symbolic). A dim the loader resolved as a multiple of the batch, ``32*N``, is 32."""
    rows = 1
    batch: frozenset[str] | None = None
    for dim in dims:
        if isinstance(dim, int):
            rows *= dim
            continue
        if batch is None:
            batch = batch_symbols(graph)
        if dim is None:
            return None
        for factor in dim.split("*"):
            factor = factor.strip()
            if factor.isdigit():
                rows *= int(factor)
            elif factor not in batch:
                return None
    return rows


def _matmul(graph: ModelGraph, node: Node) -> NodeCost:
    a_shape, b_shape = graph.shape(node.inputs[0]), graph.shape(node.inputs[1])
    out_shape = graph.shape(node.outputs[0])
    if a_shape is None or b_shape is None or out_shape is None or not a_shape or not b_shape:
        return _cost(graph, node.inputs[:2], None)
    k = a_shape[-1]
    # numpy semantics drop the row dim of a 1-D A and the column dim of a 1-D B from the
    # output; put them back so that the output is rows × columns.
    if len(b_shape) == 1:
        out_shape = (*out_shape, 1)
    if len(a_shape) == 1:
        out_shape = (*out_shape[:-1], 1, out_shape[-1])
    rows = rows_of_one_sample(graph, out_shape[:-1])
    columns = out_shape[-1]
    if not isinstance(k, int) or not isinstance(columns, int) or rows is None:
        return _cost(graph, node.inputs[:2], None)
    return _cost(graph, node.inputs[:2], rows * k * columns)


RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
LSTM_PEEPHOLES = 7  # input index of P


def _recurrent(graph: ModelGraph, node: Node) -> NodeCost:
    inputs = node.inputs
    weights = list(inputs[1:4])
    if node.op_type == "LSTM" and len(inputs) > LSTM_PEEPHOLES:
        weights.append(inputs[LSTM_PEEPHOLES])
    x_shape = graph.shape(inputs[0])
    seq_axis = 1 if node.attr("layout", 0) == 1 else 0
    seq = x_shape[seq_axis] if x_shape is not None and len(x_shape) == 3 else None
    # W is directions × gates·hidden × input and R directions × gates·hidden × hidden (gates 4,
    # 3, 1), so their elements are the MACs of one step: directions·gates·hidden·(input+hidden).
    w = numel(graph.shape(inputs[1])) if len(inputs) > 1 else None
    r = numel(graph.shape(inputs[2])) if len(inputs) > 2 else None
    if not isinstance(seq, int) or w is None or r is None:
        return _cost(graph, weights, None)
    return _cost(graph, weights, seq * (w + r))


def _normalization(graph: ModelGraph, node: Node) -> NodeCost:
    return _cost(graph, node.inputs[1:3], per_sample(graph.shape(node.outputs[0])))


def _window_pool(graph: ModelGraph, node: Node) -> NodeCost:
    kernel = math.prod(node.attr("kernel_shape", [1]))
    elements = per_sample(graph.shape(node.outputs[0]))
    return NodeCost(0, elements * kernel if elements is not None else None)


def _global_pool(graph: ModelGraph, node: Node) -> NodeCost:
    return NodeCost(0, per_sample(graph.shape(node.inputs[0])))


def _reduction(graph: ModelGraph, node: Node) -> NodeCost:
    if graph.dtype(node.inputs[0]) not in FLOAT_TYPES:  # shape arithmetic, not features
        return FREE
    return _global_pool(graph, node)


def _prelu(graph: ModelGraph, node: Node) -> NodeCost:
    return _cost(graph, node.inputs[1:2], 0)


def _elementwise(graph: ModelGraph, node: Node) -> NodeCost:
    per_channel = [  # float constants of more than one element: learned or statistics
        t for t in node.inputs if _const_size(graph, t) > 1 and graph.dtype(t) in FLOAT_TYPES
    ]
    if not per_channel:
        return FREE
    # A per-channel scale is a multiply per element, as BatchNormalization's folded scale:
    # the same network costs the same whether BN is one op or Mul + Add (Caffe) or
    # Sub, Mul, Add (TensorFlow). Subtracted and divided constants are statistics (a running
    # mean, an input's mean and std), not parameters; added and multiplied ones are learned.
    scales = node.op_type in ("Mul", "Div")
    macs = per_sample(graph.shape(node.outputs[0])) if scales else 0
    learned = per_channel if node.op_type in ("Add", "Mul") else []
    return _cost(graph, learned, macs)


# The standard ops that have params or MACs; every other op costs nothing, so a large graph's
# activations and shape ops are passed over with one dict lookup.
COST_BY_OP: dict[str, Callable[[ModelGraph, Node], NodeCost]] = {
    **dict.fromkeys(CONV_INPUTS, _conv),
    "Gemm": _gemm,
    "MatMul": _matmul,
    **dict.fromkeys(RECURRENT, _recurrent),
    **dict.fromkeys(NORMALIZATIONS, _normalization),
    **dict.fromkeys(WINDOW_POOLS, _window_pool),
    **dict.fromkeys(GLOBAL_POOLS, _global_pool),
    **dict.fromkeys(REDUCTIONS, _reduction),
    "PRelu": _prelu,
    **dict.fromkeys(ELEMENTWISE_WITH_WEIGHTS, _elementwise),
}
FREE = NodeCost(0, 0)


def node_cost(graph: ModelGraph, node: Node) -> NodeCost:
    cost_of = COST_BY_OP.get(node.op_type)
    if cost_of is None or not node.is_standard:
        return FREE
    return cost_of(graph, node)


def model_cost(graph: ModelGraph) -> ModelCost:
    """Costs of every node of every graph, and the model's totals.

    params count the weights of every graph, each tensor once. MACs total the main graph; an If,
    Loop or Scan whose subgraphs have MACs (or unknown ones) has unknown MACs, so the total is
    None: an If runs one branch, a Loop's trip count is unknown.
    """
    cost = ModelCost()
    cost.macs, cost.blocked_by = _graph_cost(graph, cost, set(), None)
    return cost


@dataclass(frozen=True)
class _Scope:
    """The tensors a subgraph defines itself, inside the scopes enclosing it: a parameter is
    counted once by name, except that sibling branches may each define the same name."""

    graph: ModelGraph
    local: frozenset[str]
    outer: _Scope | None

    def key(self, tensor: str) -> Hashable:
        scope: _Scope | None = self
        while scope is not None:
            if tensor in scope.local:
                return (id(scope.graph), tensor)
            scope = scope.outer
        return tensor  # a tensor of the main graph


def _graph_cost(
    graph: ModelGraph, cost: ModelCost, counted: set[Hashable], scope: _Scope | None
) -> tuple[int | None, str | None]:
    """Cost ``graph``'s nodes (and its subgraphs') into ``cost``; returns the MACs of one run of
    ``graph`` and the first of its nodes whose MACs are unknown."""
    owners: dict[str, list[ModelGraph]] = {}
    for owner, sub in graph.subgraphs:
        owners.setdefault(owner, []).append(sub)
    nodes, aliases, constants = cost.nodes, graph.aliases, graph.constants
    total: int | None = 0
    blocked: str | None = None
    # Sums kept in locals, added to ``cost`` at the end (a subgraph's adds to it meanwhile).
    params = macs_known = 0
    for node in graph:
        if owners and node.name in owners:
            nc = _control_flow_cost(owners[node.name], cost, counted, scope)
        else:
            cost_of = COST_BY_OP.get(node.op_type)  # node_cost, inlined: once per node
            nc = (
                FREE
                if cost_of is None or node.domain not in STANDARD_DOMAINS
                else cost_of(graph, node)
            )
        nodes[node.name] = nc
        if nc is FREE:
            continue
        for tensor in nc.param_tensors:
            source = aliases.get(tensor, tensor)
            key = source if scope is None else scope.key(source)
            if key not in counted:
                counted.add(key)
                params += numel(constants[tensor]) or 0
        macs = nc.macs
        if macs is None:
            total = None
            if blocked is None:
                blocked = node.name
            if scope is None:
                cost.unknown_nodes.append(node.name)
        else:
            macs_known += macs
            if total is not None:
                total += macs
    cost.params += params
    if scope is None:
        cost.macs_known += macs_known
    return total, blocked


def _control_flow_cost(
    subgraphs: list[ModelGraph], cost: ModelCost, counted: set[Hashable], scope: _Scope | None
) -> NodeCost:
    """An If, Loop or Scan: free when its subgraphs are, else of unknown MACs."""
    free = True
    for sub in subgraphs:
        local = frozenset(t.name for t in sub.proto.initializer) | frozenset(sub.producer)
        macs, _ = _graph_cost(sub, cost, counted, _Scope(sub, local, scope))
        free = free and macs == 0
    return FREE if free else NodeCost(0, None)
