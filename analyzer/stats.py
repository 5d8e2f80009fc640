"""`convlint stats`: a per-node table of params, MACs and output shapes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from convlint.cost import model_cost
from convlint.graph import Dim, ModelGraph, Shape
from convlint.reporters import fmt_int


def stats_rows(graph: ModelGraph) -> dict[str, Any]:
    cost = model_cost(graph)
    nodes = []
    for sub in graph.all_graphs():
        for node in sub:
            nc = cost.nodes[node.name]
            nodes.append(
                {
                    "name": node.name,
                    "op_type": node.op_type,
                    "output_shapes": [_listed(sub.shape(t)) for t in node.outputs],
                    "params": nc.params,
                    "macs": nc.macs,
                }
            )
    return {"nodes": nodes, "total": {"params": cost.params, "macs": cost.macs}}


def _listed(shape: Shape | None) -> list[Dim] | None:
    return list(shape) if shape is not None else None


def _shape_text(shapes: Sequence[Any]) -> str:
    def one(shape: Any) -> str:
        if shape is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in shape) or "scalar"

    return ", ".join(one(s) for s in shapes)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Align columns; numeric columns (indices in ``right``) are right-justified."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def render_stats_text(path: str, data: dict[str, Any]) -> str:
    total_macs = data["total"]["macs"]
    rows = []
    for node in data["nodes"]:
        share = "-"
        if total_macs and node["macs"] is not None:
            share = f"{100 * node['macs'] / total_macs:.1f}%"
        rows.append(
            [
                node["name"],
                node["op_type"],
                _shape_text(node["output_shapes"]),
                fmt_int(node["params"]),
                fmt_int(node["macs"]),
                share,
            ]
        )
    rows.append(["total", "", "", fmt_int(data["total"]["params"]), fmt_int(total_macs), ""])
    body = table(["node", "op", "output shape", "params", "MACs", "share"], rows, {3, 4, 5})
    return f"{path}\n{body}\n"


def render_stats_json(path: str, data: dict[str, Any]) -> str:
    return json.dumps({"path": path, **data}, indent=2) + "\n"
