"""A finding's neighbourhood as plain data, so reporters can draw it without the graph.

The engine fills a :class:`Neighbourhood` for each finding (see ``neighbourhood.py``): the
flagged node, its related nodes and their immediate producers and consumers as they are, and
the same sketch with the rule's :class:`Suggestion` in place of the nodes it replaces. The
"after" sketch marks only what the suggestion changes: new nodes are "suggested", kept nodes it
changes (a narrower concat, a consumer with fewer input channels) are "changed".
"""

from __future__ import annotations

from dataclasses import dataclass

# What a sketch node is to the finding; reporters style them by role.
ROLES = ("flagged", "related", "context", "suggested", "changed")


@dataclass(frozen=True)
class Suggestion:
    """The suggested design, as a rule describes it: a chain of plain node labels.

    ``chain`` takes the place of ``replaces`` (node names; empty means the flagged node alone).
    When ``replaces`` names several nodes, the span from the first to the last of them in data
    order is replaced, including any node on a path between them. With ``insert_after``,
    nothing is replaced: the chain goes between that node and its consumers.

    ``resized`` names kept nodes whose output changes size along one axis, as
    ``(node, axis, new size)`` (CL002's concat, narrower by the projection); ``changed`` names
    kept nodes that the suggestion rewrites otherwise (the concat's consumers, whose weights
    lose the channels the projection removes).
    """

    chain: tuple[str, ...]
    replaces: tuple[str, ...] = ()
    insert_after: str | None = None
    resized: tuple[tuple[str, int, int], ...] = ()
    changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class SketchNode:
    key: str  # unique within its sketch
    name: str  # ONNX node or tensor name; "" for a suggested node
    op_type: str  # "Conv", ...; "input" or "output" for a graph tensor; "" when suggested
    detail: str  # output shape text ("1×192×28×28"), or a suggested node's label
    role: str = "context"  # one of ROLES


@dataclass(frozen=True)
class Sketch:
    nodes: tuple[SketchNode, ...]
    edges: tuple[tuple[str, str], ...]  # (from key, to key)
    omitted: int = 0  # neighbours left out to keep the sketch readable


@dataclass(frozen=True)
class Neighbourhood:
    before: Sketch  # the flagged neighbourhood as it is
    after: Sketch | None = None  # the same with the suggestion in place, when there is one
