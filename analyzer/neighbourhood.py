"""Stage 4b: cut a finding's neighbourhood out of the graph as a small sketch for reports.

The sketch holds the flagged node, its related nodes and the span a suggestion replaces (the
core), the immediate producers and consumers of the core, and the graph inputs and outputs the
core touches. The "after" sketch puts the rule's suggested chain in place of the replaced span
(or after the node it is inserted after), gives resized nodes their new shapes, and marks only
what changes: kept nodes are context there, unless the suggestion changes them.
"""

from __future__ import annotations

from collections.abc import Iterable

from convlint.findings import Finding
from convlint.graph import ModelGraph, Shape
from convlint.sketch import Neighbourhood, Sketch, SketchNode, Suggestion

MAX_NEIGHBOURS = 12  # producers and consumers shown around the core; the rest are counted


def shape_text(shape: Shape | None) -> str:
    if shape is None:
        return ""
    return "×".join("?" if d is None else str(d) for d in shape)


# Neighbours come from the producer/consumer tables, not the networkx view, which large
# graphs build only when a rule needs it.
def producers(graph: ModelGraph, name: str) -> list[str]:
    return [graph.producer[t] for t in graph.nodes[name].inputs if t in graph.producer]


def consumers(graph: ModelGraph, name: str) -> list[str]:
    return [c for t in graph.nodes[name].outputs for c in graph.consumers.get(t, [])]


def _reach(graph: ModelGraph, start: str, step: str, window: range) -> set[str]:
    """Nodes reachable from ``start`` (forward or backward) whose index lies in ``window``."""
    walk = consumers if step == "forward" else producers
    seen, stack = {start}, [start]
    while stack:
        for other in walk(graph, stack.pop()):
            if other not in seen and graph.nodes[other].index in window:
                seen.add(other)
                stack.append(other)
    return seen


def replaced_span(graph: ModelGraph, finding: Finding) -> list[str]:
    """The nodes a suggestion takes the place of, in graph order: the named nodes and every
    node on a path between the first and the last of them."""
    named = [finding.node]
    if finding.suggestion is not None and finding.suggestion.replaces:
        named = [n for n in finding.suggestion.replaces if n in graph.nodes] or named
    named.sort(key=lambda name: graph.nodes[name].index)
    first, last = named[0], named[-1]
    # ONNX nodes are topologically sorted, so a path from first to last stays between them.
    window = range(graph.nodes[first].index, graph.nodes[last].index + 1)
    between = _reach(graph, first, "forward", window) & _reach(graph, last, "backward", window)
    span = set(named) | between
    return sorted(span, key=lambda name: graph.nodes[name].index)


def _node(graph: ModelGraph, name: str, role: str) -> SketchNode:
    node = graph.nodes[name]
    shape = graph.shape(node.outputs[0]) if node.outputs else None
    return SketchNode(f"n{node.index}", name, node.op_type, shape_text(shape), role)


def _weight_only(graph: ModelGraph, name: str) -> bool:
    outputs = [tensor for tensor in graph.nodes[name].outputs if tensor]
    return bool(outputs) and all(graph.is_constant(tensor) for tensor in outputs)


def _dedupe(edges: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys(edges))


def _before(graph: ModelGraph, finding: Finding, core: list[str]) -> Sketch:
    related = set(finding.related)
    roles = {
        name: "flagged" if name == finding.node else "related" if name in related else "context"
        for name in core
    }
    neighbours: set[str] = set()
    for name in core:
        neighbours.update(producers(graph, name))
        neighbours.update(consumers(graph, name))
    neighbours -= set(roles)
    # Nodes that only compute weights (torch's Identity of a tied weight, a Cast, a Constant)
    # are part of the weight they carry, not of the neighbourhood.
    neighbours = {name for name in neighbours if not _weight_only(graph, name)}
    ordered = sorted(neighbours, key=lambda name: graph.nodes[name].index)
    shown, omitted = ordered[:MAX_NEIGHBOURS], len(ordered) - MAX_NEIGHBOURS
    roles.update(dict.fromkeys(shown, "context"))
    names = sorted(roles, key=lambda name: graph.nodes[name].index)

    nodes = [_node(graph, name, roles[name]) for name in names]
    keys = {name: f"n{graph.nodes[name].index}" for name in names}
    edges = [(keys[u], keys[v]) for u in names for v in consumers(graph, u) if v in keys]
    # Graph inputs and outputs the core reads or writes, as tensor nodes.
    inputs: dict[str, SketchNode] = {}
    outputs: dict[str, SketchNode] = {}
    input_edges: list[tuple[str, str]] = []
    for name in core:
        node = graph.nodes[name]
        for tensor in node.inputs:
            if tensor in graph.data_inputs:
                shape = shape_text(graph.shape(tensor))
                inputs.setdefault(tensor, SketchNode(f"in:{tensor}", tensor, "input", shape))
                input_edges.append((f"in:{tensor}", keys[name]))
        for tensor in node.outputs:
            if tensor in graph.graph_outputs:
                shape = shape_text(graph.shape(tensor))
                outputs.setdefault(tensor, SketchNode(f"out:{tensor}", tensor, "output", shape))
                edges.append((keys[name], f"out:{tensor}"))
    all_nodes = (*inputs.values(), *nodes, *outputs.values())
    return Sketch(all_nodes, _dedupe([*input_edges, *edges]), max(0, omitted))


def _after(
    before: Sketch,
    span_keys: set[str],
    chain: tuple[str, ...],
    changes: dict[str, str | None],
    insert_after: str | None = None,
) -> Sketch:
    """``before`` with the span replaced by the chain (edges into the span enter the chain's
    head, edges out of it leave from its tail), or with the chain inserted after the node keyed
    ``insert_after``. ``changes`` maps the keys of kept nodes the suggestion changes to their
    new detail (None: the detail stays)."""
    suggested = [SketchNode(f"s{i}", "", "", label, "suggested") for i, label in enumerate(chain)]
    head, tail = suggested[0].key, suggested[-1].key
    nodes: list[SketchNode] = []
    for node in before.nodes:
        if node.key in span_keys:
            if not any(n.role == "suggested" for n in nodes):
                nodes.extend(suggested)  # the chain sits where the span began
            continue
        role = "changed" if node.key in changes else "context"
        detail = changes.get(node.key) or node.detail
        nodes.append(SketchNode(node.key, node.name, node.op_type, detail, role))
        if node.key == insert_after:
            nodes.extend(suggested)
    edges: list[tuple[str, str]] = []
    for u, v in before.edges:
        if u == insert_after:
            edges.append((tail, v))
        elif u in span_keys and v in span_keys:
            continue
        else:
            edges.append((tail if u in span_keys else u, head if v in span_keys else v))
    if insert_after is not None:
        edges.append((insert_after, head))
    edges.extend((a.key, b.key) for a, b in zip(suggested, suggested[1:], strict=False))
    return Sketch(tuple(nodes), _dedupe(edges), before.omitted)


def _changes(graph: ModelGraph, suggestion: Suggestion) -> dict[str, str | None]:
    """Sketch keys of the kept nodes a suggestion changes, with the new output shape of those
    it resizes (and of the graph outputs they write)."""
    changes: dict[str, str | None] = {}
    for name in suggestion.changed:
        if name in graph.nodes:
            changes[f"n{graph.nodes[name].index}"] = None
    for name, axis, size in suggestion.resized:
        node = graph.nodes.get(name)
        if node is None or not node.outputs:
            continue
        shape = graph.shape(node.outputs[0])
        detail = None
        if shape is not None and -len(shape) <= axis < len(shape):
            resized = list(shape)
            resized[axis] = size
            detail = shape_text(tuple(resized))
        changes[f"n{node.index}"] = detail
        changes[f"out:{node.outputs[0]}"] = detail
    return changes


def neighbourhood(graph: ModelGraph, finding: Finding) -> Neighbourhood | None:
    """The sketch of a finding's neighbourhood, or None when its node is not in ``graph``."""
    if finding.node not in graph.nodes:
        return None
    suggestion = finding.suggestion
    inserting = suggestion is not None and suggestion.insert_after in graph.nodes
    span = [] if inserting else replaced_span(graph, finding)
    core = list(dict.fromkeys([finding.node, *span, *finding.related]))
    core = [name for name in core if name in graph.nodes]
    before = _before(graph, finding, core)
    after = None
    if suggestion is not None and suggestion.chain:
        span_keys = {f"n{graph.nodes[name].index}" for name in span}
        insert_key = (
            f"n{graph.nodes[suggestion.insert_after].index}"
            if inserting and suggestion.insert_after is not None
            else None
        )
        changes = _changes(graph, suggestion)
        after = _after(before, span_keys, suggestion.chain, changes, insert_key)
    return Neighbourhood(before, after)
