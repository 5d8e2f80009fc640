"""Small hand-built graphs for tests that need an exact op and attribute (one Conv with
asymmetric pads, a MatMul with a 1-D operand, ...) rather than a network from fixtures/."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def zeros(name: str, shape: Sequence[int]) -> onnx.TensorProto:
    """A float32 initializer of zeros: cost tests need shapes, not values."""
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def save_graph(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[int | str]],
    output: str,
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> Path:
    """Save a one-output float32 graph; the output's shape is left to inference."""
    graph = helper.make_graph(
        list(nodes),
        path.stem,
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        list(initializers),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path
