"""Shape inference in a forked child while the graph is read (issue 21): the same graph, the
same report and the same errors as inferring first; the child reaped whatever happens."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from graph_helpers import save_graph
from onnx import TensorProto, helper, numpy_helper

from convlint import engine, fixtures, loader, shapes, skeleton
from convlint.engine import Settings
from convlint.graph import ModelGraph, build_graph
from convlint.registry import load_registry
from convlint.reporters import render_json

pytestmark = pytest.mark.skipif(not shapes.can_fork(), reason="background inference forks")

# Every builder without subgraphs; the If model is the one that must not take the child.
MODELS = [name for name in fixtures.BUILDERS if name not in ("with_if_subgraph", "big_chain")]


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every model takes the child (no size threshold); the children's pids, as forked."""
    monkeypatch.setattr(loader, "BACKGROUND_NODES", 0)
    pids: list[int] = []
    start = shapes.BackgroundInference.__init__

    def recording(self: shapes.BackgroundInference, encoded: bytes) -> None:
        start(self, encoded)
        pids.append(self._pid)  # type: ignore[arg-type]

    monkeypatch.setattr(shapes.BackgroundInference, "__init__", recording)
    return pids


def _facts(graph: ModelGraph) -> dict[str, object]:
    return {
        "nodes": [
            (name, n.op_type, n.domain, n.inputs, n.outputs, n.index)
            for name, n in graph.nodes.items()
        ],
        "protos": [n.proto for n in graph.nodes.values()],
        "producer": graph.producer,
        "consumers": graph.consumers,
        "shapes": graph.shapes,
        "dtypes": graph.dtypes,
        "declared_dtypes": graph._declared_dtypes,
        "constants": graph.constants,
        "aliases": graph.aliases,
        "data_inputs": graph.data_inputs,
        "forward_references": graph.forward_references,
        "attributes": [n.attrs for n in graph.nodes.values()],
    }


def _report(path: Path, background: bool) -> str:
    registry = load_registry()
    report = engine.analyze(path, registry, Settings(), background=background)
    return render_json([report], registry, verbose=True)


@pytest.mark.parametrize("name", MODELS)
def test_the_graph_read_beside_inference_is_the_graph_read_after_it(
    name: str, tmp_path: Path, forks: list[int]
) -> None:
    path = fixtures.save(fixtures.BUILDERS[name](), tmp_path / f"{name}.onnx")
    serial = loader.load(path)
    assert serial.graph is None and forks == []
    loaded = loader.load(path, background=True)
    assert loaded.graph is not None and len(forks) == 1
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(forks[0], os.WNOHANG)
    assert loaded.graph.proto is loaded.model.graph
    assert all(
        node.proto is proto
        for node, proto in zip(loaded.graph.nodes.values(), loaded.model.graph.node, strict=True)
    )
    expected = _facts(build_graph(serial.model))
    found = _facts(loaded.graph)
    assert found.keys() == expected.keys()
    for key in expected:
        assert found[key] == expected[key], key
    assert _report(path, True) == _report(path, False)


def test_a_computed_weight_waits_for_the_inferred_shapes(tmp_path: Path, forks: list[int]) -> None:
    """A constant computed from a constant computed from a stored one (Identity of a Reshape
    of a weight) takes the shape inference gave it, and its alias, as when read after."""
    weight = helper.make_tensor("w_flat", TensorProto.FLOAT, [4 * 3 * 9], [0.5] * 108)
    target = helper.make_tensor("w_shape", TensorProto.INT64, [4], [4, 3, 3, 3])
    nodes = [
        helper.make_node("Reshape", ["w_flat", "w_shape"], ["w_4d"], name="reshape"),
        helper.make_node("Identity", ["w_4d"], ["w"], name="identity"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    path = save_graph(tmp_path / "computed.onnx", nodes, {"x": (1, 3, 8, 8)}, "y", [weight, target])
    loaded = loader.load(path, background=True)
    assert loaded.graph is not None
    assert loaded.graph.constants["w_4d"] == (4, 3, 3, 3)
    assert loaded.graph.constants["w"] == (4, 3, 3, 3)
    assert loaded.graph.aliases == {"w_4d": "w_flat", "w": "w_flat"}
    assert loaded.graph.shape("y") == (1, 4, 8, 8)
    assert _report(path, True) == _report(path, False)


def test_an_inference_error_from_the_child_is_the_error_inferring_here_gives(
    tmp_path: Path, forks: list[int]
) -> None:
    nodes = [helper.make_node("Add", ["a", "b"], ["c"], name="add")]
    path = save_graph(tmp_path / "mismatch.onnx", nodes, {"a": (1, 3), "b": (1, 4)}, "c")
    with pytest.raises(shapes.InferenceFailed) as here:
        loader.load(path)
    with pytest.raises(shapes.InferenceFailed) as there:
        loader.load(path, background=True)
    assert len(forks) == 1
    assert there.value.problem == here.value.problem
    assert there.value.text == here.value.text
    assert "shape inference failed" in here.value.problem


def test_a_child_that_dies_unheard_leaves_inference_to_this_process(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def dying(*args: object) -> None:
        os._exit(3)  # before a byte of its answer

    monkeypatch.setattr(shapes.BackgroundInference, "_answer", dying)
    path = fixtures.save(fixtures.BUILDERS["resnet_bottleneck"](), tmp_path / "m.onnx")
    loaded = loader.load(path, background=True)
    assert len(forks) == 1 and loaded.graph is not None
    assert _facts(loaded.graph) == _facts(build_graph(loader.load(path).model))


def test_a_failure_while_reading_the_graph_ends_the_child(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: ModelGraph) -> None:
        raise RuntimeError("reading failed")

    monkeypatch.setattr(ModelGraph, "read_conv_attributes", failing)
    path = fixtures.save(fixtures.BUILDERS["vgg16"](), tmp_path / "vgg.onnx")
    with pytest.raises(RuntimeError, match="reading failed"):
        loader.load(path, background=True)
    assert len(forks) == 1
    with pytest.raises(ChildProcessError):  # killed and reaped, not left a zombie
        os.waitpid(forks[0], os.WNOHANG)


def test_the_child_is_for_large_graphs_without_subgraphs_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = fixtures.save(fixtures.BUILDERS["vgg16"](), tmp_path / "vgg.onnx")
    assert loader.load(small, background=True).graph is None  # 41 nodes: below the threshold
    monkeypatch.setattr(loader, "BACKGROUND_NODES", 0)
    assert loader.load(small, background=True).graph is not None
    assert loader.load(small).graph is None  # not asked
    branching = fixtures.BUILDERS["with_if_subgraph"]()
    with_if = fixtures.save(branching, tmp_path / "if.onnx")
    assert loader.load(with_if, background=True).graph is None
    monkeypatch.setattr(shapes, "can_fork", lambda: False)
    monkeypatch.setattr(loader, "can_fork", lambda: False)
    assert loader.load(small, background=True).graph is None


def test_take_inferred_is_for_a_graph_read_without_shapes_and_the_same_nodes() -> None:
    model = fixtures.BUILDERS["resnet_bottleneck"]()
    inferred = onnx.shape_inference.infer_shapes(model)
    with pytest.raises(ValueError, match="read with its shapes"):
        build_graph(inferred).take_inferred(inferred.graph)
    untyped = ModelGraph(model.graph, 17, typed=False)
    other = fixtures.BUILDERS["vgg16"]()
    with pytest.raises(ValueError, match="not the graph read"):
        untyped.take_inferred(other.graph)
    untyped.take_inferred(inferred.graph)
    assert untyped.shapes == build_graph(inferred).shapes


def test_from_the_answer_encoded_only_the_declarations_are_decoded() -> None:
    """The inferred model's encoding gives the shapes and types the decoded graph gives, names
    declared twice included (an input declared again in value_info, without a shape, and an
    output with one), and leaves the nodes' protos those read."""
    model = fixtures.BUILDERS["resnet_bottleneck"]()
    inferred = onnx.shape_inference.infer_shapes(model)
    again = inferred.graph.value_info.add()
    again.name = inferred.graph.input[0].name
    again.type.tensor_type.elem_type = TensorProto.FLOAT
    output = inferred.graph.value_info.add()
    output.CopyFrom(inferred.graph.output[0])
    output.type.tensor_type.shape.dim[0].dim_value = 7
    untyped = ModelGraph(model.graph, 17, typed=False)
    protos = [node.proto for node in untyped.nodes.values()]
    untyped.take_inferred(inferred.SerializeToString())
    decoded = build_graph(inferred)
    assert untyped.shapes == decoded.shapes and untyped.dtypes == decoded.dtypes
    assert untyped._declared_dtypes == decoded._declared_dtypes
    assert untyped.shapes[output.name][0] == 1  # the output's own declaration comes last
    assert untyped.shapes[again.name] == decoded.shape(again.name) is not None
    assert all(
        node.proto is proto for node, proto in zip(untyped.nodes.values(), protos, strict=True)
    )
    with pytest.raises(ValueError, match="read with its shapes"):
        untyped.take_inferred(inferred.SerializeToString())
    with pytest.raises(ValueError, match="has no graph"):
        ModelGraph(model.graph, 17, typed=False).take_inferred(b"")


@pytest.mark.parametrize(
    ("name", "one_pass"), [("resnet_bottleneck", True), ("tf_flatten_dense", False)]
)
def test_one_inference_pass_keeps_the_model_read_and_decodes_only_the_declarations(
    name: str, one_pass: bool, tmp_path: Path, forks: list[int]
) -> None:
    """A graph whose shapes one strict inference gives (no Slice, no shape computed from
    values) keeps the model read, without value_info; another takes the inferred model, as
    the later passes need it. The report is the same either way (see the test above)."""
    model = fixtures.BUILDERS[name]()
    assert shapes.one_pass(frozenset(node.op_type for node in model.graph.node)) is one_pass
    path = fixtures.save(model, tmp_path / f"{name}.onnx")
    loaded = loader.load(path, background=True)
    assert len(forks) == 1 and loaded.graph is not None
    assert (len(loaded.model.graph.value_info) == 0) is one_pass
    assert len(loader.load(path).model.graph.value_info) > 0
    assert _facts(loaded.graph) == _facts(build_graph(loader.load(path).model))


def test_the_answer_is_waited_for_once_and_then_kept(forks: list[int]) -> None:
    model = fixtures.BUILDERS["resnet_bottleneck"]()
    started = shapes.BackgroundInference(model.SerializeToString())
    answer = started.result()
    assert isinstance(answer, bytes) and len(onnx.load_from_string(answer).graph.value_info) > 0
    assert started.result() is answer
    failing = shapes.BackgroundInference(b"not a model")
    text = failing.result()
    assert isinstance(text, str) and failing.result() is text


def test_a_child_that_cannot_be_forked_leaves_inference_to_this_process(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusing() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refusing)
    path = fixtures.save(fixtures.BUILDERS["inception_3a_naive"](), tmp_path / "m.onnx")
    descriptors = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    loaded = loader.load(path, background=True)
    assert loaded.graph is None and forks == []
    if descriptors is not None:  # the pipe made for the child is closed again
        assert len(os.listdir("/proc/self/fd")) == descriptors
    assert _report(path, True) == _report(path, False)


def test_the_bytes_read_without_weights_go_to_the_child_as_they_are(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file walked without its large weights (64 MiB and more; here every file), that has
    nothing else to strip, hands the child the encoding read, not a model to serialize."""
    monkeypatch.setattr(skeleton, "WIRE_READ_BYTES", 0)
    given: list[object] = []
    start = loader._start_inference

    def noting(model: object) -> shapes.BackgroundInference | None:
        given.append(model)
        return start(model)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "_start_inference", noting)
    rng = np.random.default_rng(0)
    weights = [  # 64·64·3·3 floats: 144 KiB each, over the walk's 64 KiB
        numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), f"w{i}")
        for i in range(2)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w1"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    path = save_graph(tmp_path / "walked.onnx", nodes, {"x": (1, 64, 8, 8)}, "y", weights)
    loaded = loader.load(path, background=True)
    assert len(forks) == 1 and len(given) == 1 and isinstance(given[0], bytes)
    assert loaded.graph is not None
    assert _facts(loaded.graph) == _facts(build_graph(loader.load(path).model))
    assert _report(path, True) == _report(path, False)
    assert "CL003" in _report(path, True)  # two linear convs in a row: one finding, either way


def test_bound_input_shapes_reach_the_child(tmp_path: Path, forks: list[int]) -> None:
    path = fixtures.save(fixtures.BUILDERS["symbolic_dims_model"](), tmp_path / "fcn.onnx")
    bound = {"input": (2, 3, 64, 48)}
    serial = loader.load(path, bound)
    loaded = loader.load(path, bound, background=True)
    assert len(forks) == 1 and loaded.graph is not None
    assert loaded.notes == serial.notes and any(n.startswith("bound ") for n in loaded.notes)
    assert _facts(loaded.graph) == _facts(build_graph(serial.model))
    assert loaded.graph.shape("input") == (2, 3, 64, 48)
