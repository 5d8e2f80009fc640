"""What keeps check cheap: imports a run does not need are not made, memoized answers are the
answers, and the queries that replace networkx agree with it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import networkx as nx
import onnx
import pytest
from onnx.helper import make_attribute

import convlint
from convlint import fixtures, loader
from convlint.cost import NodeCost, model_cost, node_cost, numel
from convlint.engine import validate_graph
from convlint.errors import GraphError, ModelError
from convlint.graph import ModelGraph, build_graph
from convlint.view import View

NETWORKS = [
    "inception_3a",
    "resnet_bottleneck",
    "densenet_block",
    "squeezenet_fire",
    "yolov8_c2f_sppf",
    "with_if_subgraph",
]


def test_the_analysis_modules_do_not_import_networkx(model_file: Callable[..., Path]) -> None:
    script = (
        "import sys\n"
        "from convlint import engine, loader, graph, cost, view\n"
        "from convlint.engine import Settings, lint, ModelReport\n"
        "from convlint.registry import Registry\n"
        "lint(ModelReport(sys.argv[1]), loader.load(sys.argv[1]), Registry(), Settings())\n"
        "print('networkx' in sys.modules)\n"
    )
    path = model_file("inception_3a")
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", NETWORKS)
def test_has_path_is_networkx_has_path(name: str, model_file: Callable[..., Path]) -> None:
    graph = build_graph(loader.load(model_file(name)).model)
    for sub in graph.all_graphs():
        names = list(sub.nodes)
        for source in names:
            for target in names:
                assert sub.has_path(source, target) == nx.has_path(sub.nx, source, target)


@pytest.mark.parametrize("name", NETWORKS)
def test_memoized_answers_are_the_answers(name: str, model_file: Callable[..., Path]) -> None:
    model = loader.load(model_file(name)).model
    graph, fresh = build_graph(model), build_graph(model)
    for sub, other in zip(graph.all_graphs(), fresh.all_graphs(), strict=True):
        tensors = {t for node in sub for t in [*node.inputs, *node.outputs] if t}
        for tensor in sorted(tensors):  # twice: parsed, then from the memo
            assert sub.shape(tensor) == sub.shape(tensor) == other.shape(tensor)
            assert sub.dtype(tensor) == other.dtype(tensor)
        for node in sub:
            asked = [node.attr(a.name) for a in node.proto.attribute]
            assert asked == [node.attr(a.name) for a in node.proto.attribute]
            assert node.attr("no-such-attribute", 7) == 7
        view, again = View(sub), View(other)
        for role in ("conv", "pool", "concat", "dense", "activation"):
            names = [n.name for n in again.nodes(role)]
            assert (
                view.nodes(role) == view.nodes(role) and [n.name for n in view.nodes(role)] == names
            )
            assert view.nodes(role) is not view.nodes(role)  # each caller gets its own list
        for node, twin in zip(sub, other, strict=True):
            # Roles entered by op type, and geometries made once per kind of conv, are what
            # the node alone gives.
            assert view.role(node) == again._role(twin)
            if view.role(node) == "conv":
                assert view.geometry(node) == View(other)._conv_geometry(twin)
            else:
                assert view.geometry(node) is None
    costs = model_cost(graph).nodes
    for sub in graph.all_graphs():
        for node in sub:
            if not any(node.name == owner for owner, _ in sub.subgraphs):
                assert costs[node.name] == node_cost(sub, node)


def test_node_costs_read_as_before() -> None:
    cost = NodeCost(10, None, 4, ("w",))
    assert (cost.params, cost.macs, cost.macs_per_output_pixel, cost.param_tensors) == (
        10,
        None,
        4,
        ("w",),
    )
    assert NodeCost(0, 0) == NodeCost(0, 0, None, ())
    assert repr(cost) == (
        "NodeCost(params=10, macs=None, macs_per_output_pixel=4, param_tensors=('w',))"
    )
    for shape in [(1, 64, 56, 56), (1, "N", 3), (), (2, None), [3, 4]]:
        expected = None
        if all(isinstance(d, int) for d in shape):
            expected = 1
            for d in shape:
                expected *= d  # type: ignore[operator]
        assert numel(shape) == expected  # type: ignore[arg-type]
    assert numel(None) is None


def test_big_graph_builds_without_networkx(tmp_path: Path) -> None:
    path = fixtures.save(fixtures.big_chain(nodes=400), tmp_path / "chain.onnx")
    graph = build_graph(loader.load(path).model)
    first, last = "block0.conv", "block199.relu"
    assert graph.has_path(first, last) and not graph.has_path(last, first)
    assert graph.find_cycle() == []


def _conv_node(name: str, attributes: list[onnx.AttributeProto]) -> onnx.NodeProto:
    node = onnx.helper.make_node("Conv", ["x", "w"], [f"{name}_out"], name=name)
    node.attribute.extend(attributes)
    return node


def _graph_of(*nodes: onnx.NodeProto) -> ModelGraph:
    graph = onnx.helper.make_graph(list(nodes), "g", [], [])
    return ModelGraph(graph, 17)


def test_nodes_setting_the_same_attributes_share_what_is_read_of_them() -> None:
    group, strides = make_attribute("group", 2), make_attribute("strides", [2, 2])
    graph = _graph_of(
        _conv_node("a", [group, strides]),
        _conv_node("b", [group, strides]),
        _conv_node("c", [make_attribute("group", 4), strides]),
    )
    a, b, c = (graph.nodes[name] for name in "abc")
    assert (a.attr("group"), b.attr("group"), c.attr("group")) == (2, 2, 4)
    assert a._attributes() is b._attributes() is not c._attributes()
    # Values are shared, lists handed out are the caller's own.
    mine = a.attr("strides")
    mine.append(9)
    assert b.attr("strides") == a.attr("strides") == [2, 2]
    assert a.attr("dilations", [1, 1]) == [1, 1] and b.attr("pads") is None


def _node(
    op_type: str, name: str, attributes: list[onnx.AttributeProto], **fields: str
) -> onnx.NodeProto:
    inputs = [fields.pop("input", "x"), "w"]
    node = onnx.helper.make_node(op_type, inputs, [fields.pop("output", f"{name}_out")], name=name)
    node.attribute.extend(attributes)
    for field, value in fields.items():
        setattr(node, field, value)
    return node


def test_nodes_share_settings_whatever_their_names_and_tensors() -> None:
    """The key steps over a node's tensors and name however long (lengths of two bytes and
    more) and whatever their script."""
    group, pads = make_attribute("group", 2), make_attribute("pads", [1, 1, 1, 1])
    graph = _graph_of(
        _node("Conv", "a", [group, pads]),
        _node("Conv", "b" * 300, [group, pads], input="ü" * 70, output="出" * 50),
        _node("Conv", "c", [group, pads], input="x" * 20_000),
    )
    first, *others = graph.nodes.values()
    assert all(node.settings_id() == first.settings_id() for node in others)
    assert [node.attr("pads") for node in graph.nodes.values()] == [[1, 1, 1, 1]] * 3


INVALID = "invalid"  # the read raises GraphError


@pytest.mark.parametrize(
    ("op_types", "first", "second", "read", "expected"),
    [
        # The same name and type, another value.
        (
            ("Conv", "Conv"),
            [make_attribute("strides", [1, 1])],
            [make_attribute("strides", [2, 1])],
            "strides",
            ([1, 1], [2, 1]),
        ),
        # The same value, another type: the INTS node is invalid, and must be read as such.
        (
            ("Conv", "Conv"),
            [make_attribute("group", 1)],
            [make_attribute("group", [1])],
            "group",
            (1, INVALID),
        ),
        # Floats equal as numbers, not as values.
        (
            ("LeakyRelu", "LeakyRelu"),
            [make_attribute("alpha", 0.0)],
            [make_attribute("alpha", -0.0)],
            "alpha",
            ("0.0", "-0.0"),
        ),
        # A name set twice reads as its first value: the order counts.
        (
            ("Conv", "Conv"),
            [make_attribute("group", 2), make_attribute("group", 3)],
            [make_attribute("group", 3), make_attribute("group", 2)],
            "group",
            (2, 3),
        ),
        # An attribute left to its default is not one set to it.
        (("Conv", "Conv"), [], [make_attribute("group", 1)], "group", (None, 1)),
        # The same attributes on another operator.
        (
            ("Conv", "ConvTranspose"),
            [make_attribute("group", 1)],
            [make_attribute("group", 1)],
            "group",
            (1, 1),
        ),
    ],
    ids=["value", "type", "float-sign", "order", "default", "op-type"],
)
def test_nodes_whose_attributes_differ_do_not_share_settings(
    op_types: tuple[str, str],
    first: list[onnx.AttributeProto],
    second: list[onnx.AttributeProto],
    read: str,
    expected: tuple[object, object],
) -> None:
    graph = _graph_of(_node(op_types[0], "a", first), _node(op_types[1], "b", second))
    a, b = graph.nodes["a"], graph.nodes["b"]
    assert a.settings_id() != b.settings_id()
    found: list[object] = []
    for node in (a, b):
        try:
            value = node.attr(read)
        except GraphError:
            value = INVALID
        found.append(str(value) if isinstance(value, float) else value)  # -0.0 stays -0.0
    assert tuple(found) == expected


def test_nodes_of_other_domains_and_constants_never_share_settings() -> None:
    value = make_attribute("group", 2)
    graph = _graph_of(
        _node("Conv", "a", [value], domain="com.example"),
        _node("Conv", "b", [value], domain="com.example"),
        _node("Conv", "c", [value]),
        _node("Conv", "d", [value]),
    )
    a, b, c, d = (graph.nodes[name] for name in "abcd")
    assert a.settings_id() != b.settings_id()
    assert c.settings_id() == d.settings_id() not in (a.settings_id(), b.settings_id())


def test_an_attribute_set_twice_reads_as_its_first_value() -> None:
    graph = _graph_of(_conv_node("a", [make_attribute("group", 2), make_attribute("group", 3)]))
    assert graph.nodes["a"].attr("group") == 2


def test_an_attribute_of_the_wrong_type_is_named_on_every_node_that_reads_it() -> None:
    wrong = make_attribute("group", 2.0)  # FLOAT where the schema wants INT
    graph = _graph_of(_conv_node("a", [wrong]), _conv_node("b", [wrong]))
    for name in "ab":
        with pytest.raises(
            GraphError, match=f"node '{name}' \\(Conv\\): attribute 'group' is FLOAT"
        ):
            graph.nodes[name].attr("group")


def test_a_weight_of_symbolic_dims_is_still_checked_against_its_input() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 6, 6])
    w = onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, ["O", 4, 3, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], "g", [x, w], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    with pytest.raises(ModelError, match="reads 8 channels, its weight Ox4x3x3 with group 1"):
        validate_graph(build_graph(model), "m.onnx")


def test_a_model_is_read_without_memory_mapping(
    model_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapped file that another program shrinks is SIGBUS (issue 20, item 3): never mapped."""
    import mmap

    path = model_file("inception_3a")
    expected = loader.load(path).model

    def unmappable(*args: object, **kwargs: object) -> None:
        raise AssertionError("mapped")

    monkeypatch.setattr(mmap, "mmap", unmappable)
    assert loader.load(path).model == expected


def test_models_checked_in_threads_at_once_get_their_own_results(
    model_file: Callable[..., Path],
) -> None:
    # Attribute reads are shared between a graph's nodes: never between graphs in threads.
    names = ["inception_3a_naive", "vgg_stack", "resnet_bottleneck", "spatial_expansion_bad"]
    paths = [model_file(name) for name in names] * 3

    def summary(path: Path) -> tuple[object, ...]:
        report = convlint.check(path)
        return report.cost.as_dict(), [f.as_dict() for f in report.findings]

    expected = [summary(path) for path in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(summary, paths)) == expected
    assert any(findings for _, findings in expected)
