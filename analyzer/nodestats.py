"""`convlint stats`: a per-node table of params, MACs and output shapes, for one model or
several, and ``--diff MODEL OUT``: what a rewrite changed, per node and in total.

With symbolic spatial dims a node's MACs are unknown, but a convolution's cost per pixel of its
output is not (``macs_per_output_pixel``), and when every spatial size scales with the input's
the model's total is ``macs_per_input_pixel`` × H × W of the input: the same figures `check`
reports. The text table shows them and says how to bind the dims (``--input-shape``).

As onnx-tool's profile: each node's activation memory (the bytes of the outputs it computes,
one sample), the peak of the activations alive at once when the nodes run in graph order, and
totals per op type; ``--sort params|macs|memory`` and ``--top N`` pick the rows, ``--format``
``text``, ``json``, ``csv`` or ``markdown`` writes them. Identity and Cast nodes that only pass
a weight on (torch exports write them for shared or tied weights) are folded into the weight
they carry: no row of their own, named under ``folded``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from convlint.cost import ModelCost, model_cost, rows_of_one_sample
from convlint.graph import Dim, ModelGraph, Node, Shape
from convlint.reporters.common import (
    SCHEMA_VERSION,
    change_ratio,
    fmt_int,
    json_text,
    printable,
)
from convlint.tables import table
from convlint.version import __version__

if TYPE_CHECKING:
    from convlint.engine import Settings
    from convlint.registry import Registry

EXAMPLE_SIZE = 224  # what the --input-shape hint puts in place of a symbolic spatial dim
FOLDED_OPS = ("Identity", "Cast")  # weight-only ones are folded into the weight they carry
# Bits of an element of each ONNX tensor type (strings have no fixed size).
ELEMENT_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64,
    14: 64, 15: 128, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2,
    26: 2,
}  # fmt: skip


class NodeRow(TypedDict):
    """One node of ``StatsReport.nodes`` (the JSON node object)."""

    name: str
    op_type: str
    output_shapes: list[list[Dim] | None]
    params: int
    macs: int | None
    macs_per_output_pixel: int | None
    memory: int | None


class _Total(TypedDict):
    params: int
    macs: int | None
    memory: int | None
    peak_memory: int | None


class Total(_Total, total=False):
    """``StatsReport.total``; ``incomplete``, ``unknown_nodes``, ``macs_at_least`` only when
    some node's MACs are unknown."""

    macs_per_input_pixel: int | float | None
    incomplete: bool
    unknown_nodes: list[str]
    macs_at_least: int


class OpTypeRow(TypedDict):
    """One op type of ``StatsReport.op_types``."""

    op_type: str
    nodes: int
    params: int
    macs: int | None
    memory: int | None


class InputRow(TypedDict):
    name: str
    shape: list[Dim] | None


@dataclass
class StatsReport:
    """What ``convlint.stats`` returns: the stats JSON object of one model, typed."""

    path: str
    nodes: list[NodeRow]
    total: Total
    op_types: list[OpTypeRow] = field(default_factory=list)
    inputs: list[InputRow] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatsReport:
        return cls(
            path=data["path"],
            nodes=data["nodes"],
            total=data["total"],
            op_types=data.get("op_types", []),
            inputs=data.get("inputs", []),
            folded=data.get("folded", []),
            notes=data.get("notes", []),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of `convlint stats MODEL --format json` (without its header)."""
        return {
            "path": self.path,
            "inputs": self.inputs,
            "nodes": self.nodes,
            "total": self.total,
            "op_types": self.op_types,
            "folded": self.folded,
            "notes": self.notes,
            "error": None,
        }

    def __getitem__(self, key: str) -> Any:
        """``report["total"]``: the dictionary access of convlint 0.1, whose stats returned
        the JSON object itself."""
        return self.as_dict()[key]


def tensor_bytes(graph: ModelGraph, tensor: str) -> int | None:
    """The bytes of one sample of ``tensor`` (the batch symbol counting as 1), or None when
    a dim other than the batch is symbolic or the type has no fixed size."""
    shape = graph.shape(tensor)
    bits = ELEMENT_BITS.get(graph.dtype(tensor))
    if shape is None or bits is None:
        return None
    elements = rows_of_one_sample(graph, shape)
    return None if elements is None else -(-elements * bits // 8)


def _activation_bytes(graph: ModelGraph, node: Node) -> int | None:
    """The bytes of the activations a node computes (outputs that are not constants)."""
    total = 0
    for tensor in node.outputs:
        if tensor and not graph.is_constant(tensor):
            size = tensor_bytes(graph, tensor)
            if size is None:
                return None
            total += size
    return total


def peak_activation_bytes(graph: ModelGraph) -> int | None:
    """The most activation bytes alive at once when the main graph's nodes run in graph order:
    a tensor lives from the node that computes it (the start, for a graph input) to its last
    reader (the end, for a graph output); while a node runs, its inputs and outputs are all
    alive. None when a live tensor's size is unknown."""
    order = list(graph)
    last: dict[str, int] = {}
    for index, node in enumerate(order):
        for tensor in node.inputs:
            if tensor:
                last[tensor] = index
    for tensor in graph.graph_outputs:
        last[tensor] = len(order)
    sizes: dict[str, int] = {}
    for tensor in graph.data_inputs:
        size = tensor_bytes(graph, tensor)
        if size is None:
            return None
        sizes[tensor] = size
    live = peak = sum(sizes.values())
    for index, node in enumerate(order):
        for tensor in node.outputs:
            if tensor and not graph.is_constant(tensor) and tensor not in sizes:
                size = tensor_bytes(graph, tensor)
                if size is None:
                    return None
                sizes[tensor] = size
                live += size
        peak = max(peak, live)
        for tensor in (*node.inputs, *node.outputs):
            if tensor in sizes and last.get(tensor, index) <= index:
                live -= sizes.pop(tensor)
    return peak


def _weight_only(graph: ModelGraph, node: Node, params: int) -> bool:
    return (
        node.op_type in FOLDED_OPS
        and params == 0
        and bool(node.outputs)
        and all(graph.is_constant(tensor) for tensor in node.outputs if tensor)
    )


def _sum(values: Sequence[int | None]) -> int | None:
    return None if any(value is None for value in values) else sum(v or 0 for v in values)


def op_type_totals(nodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes, params, MACs and activation memory per op type, most MACs (then params) first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        groups.setdefault(node["op_type"], []).append(node)
    totals = [
        {
            "op_type": op_type,
            "nodes": len(members),
            "params": sum(n["params"] for n in members),
            "macs": _sum([n["macs"] for n in members]),
            "memory": _sum([n["memory"] for n in members]),
        }
        for op_type, members in groups.items()
    ]
    totals.sort(key=lambda t: (-(t["macs"] or 0), -t["params"], t["op_type"]))
    return totals


def stats_rows(graph: ModelGraph, cost: ModelCost | None = None) -> dict[str, Any]:
    """Every node of every graph (subgraphs too) but the weight-only Identity/Cast ones, the
    model's total and the totals per op type."""
    cost = cost if cost is not None else model_cost(graph)
    nodes = []
    folded = []
    for sub in graph.all_graphs():
        for node in sub:
            nc = cost.nodes[node.name]
            if _weight_only(sub, node, nc.params):
                folded.append(node.name)
                continue
            nodes.append(
                {
                    "name": node.name,
                    "op_type": node.op_type,
                    "output_shapes": [_listed(sub.shape(t)) for t in node.outputs],
                    "params": nc.params,
                    "macs": nc.macs,
                    "macs_per_output_pixel": nc.macs_per_output_pixel,
                    "memory": _activation_bytes(sub, node),
                }
            )
    return {
        "nodes": nodes,
        "total": {
            "params": cost.params,
            "macs": cost.macs,
            **cost.completeness(),
            "memory": _sum([n["memory"] for n in nodes]),
            "peak_memory": peak_activation_bytes(graph),
        },
        "op_types": op_type_totals(nodes),
        "folded": folded,
    }


def pick_rows(data: dict[str, Any], sort: str | None, top: int | None) -> dict[str, Any]:
    """The stats object with its nodes sorted by ``sort`` (most first; unknown last) and cut
    to the first ``top``; ``shown`` says so."""
    if sort is None and top is None:
        return data
    nodes = list(data["nodes"])
    if sort is not None:

        def key(node: dict[str, Any]) -> tuple[bool, float, float]:
            value = node[sort]
            per_pixel = node.get("macs_per_output_pixel") if sort == "macs" else None
            return (value is None, -(value or 0), -(per_pixel or 0))

        nodes.sort(key=key)
    if top is not None:
        nodes = nodes[:top]
    shown = {"sort": sort, "top": top, "nodes": len(data["nodes"])}
    return {**data, "nodes": nodes, "shown": shown}


def model_stats(path: str | Path, registry: Registry, settings: Settings) -> dict[str, Any]:
    """The stats object of one model: ``path``, ``inputs``, ``nodes``, ``total`` and ``notes``.
    Raises ModelError for a model `check` could not read either."""
    from convlint import loader
    from convlint.engine import lint
    from convlint.findings import ModelReport

    loaded = loader.load(
        path, settings.input_shapes, settings.configured_input_shapes, settings.configured_source
    )
    report = ModelReport(path=str(path))
    # No rules: lint costs the model and, where MACs are symbolic, finds the per-pixel total.
    graph = lint(report, loaded, registry, settings, rules=[])
    assert report.cost is not None
    inputs = [{"name": name, "shape": _listed(graph.shape(name))} for name in graph.data_inputs]
    rows = stats_rows(graph, report.cost)
    for name in (*(n["name"] for n in rows["nodes"]), *rows["folded"]):
        if type(name) is not str:  # protobuf's bytes for a name not UTF-8
            raise loader.ModelError(
                path, f"invalid model: a node name is not UTF-8: {name!r}"[:300]
            )
    rows["total"]["macs_per_input_pixel"] = report.cost.macs_per_input_pixel
    return {"path": str(path), "inputs": inputs, **rows, "notes": list(report.notes), "error": None}


def _listed(shape: Shape | None) -> list[Dim] | None:
    return list(shape) if shape is not None else None


def _shape_text(shapes: Sequence[Any]) -> str:
    def one(shape: Any) -> str:
        if shape is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in shape) or "scalar"

    return ", ".join(one(s) for s in shapes)


def _macs_cell(macs: int | None, per_pixel: int | float | None, unit: str) -> str:
    if macs is None and per_pixel is not None:
        return f"{fmt_int(per_pixel)}{unit}"
    return fmt_int(macs)


def _total_macs_cell(total: dict[str, Any]) -> str:
    """The total row's MACs: exact, per input pixel, or a lower bound when incomplete."""
    per_pixel = total.get("macs_per_input_pixel")
    if total["macs"] is None and per_pixel is None and total.get("incomplete"):
        return f"at least {fmt_int(total['macs_at_least'])}"
    return _macs_cell(total["macs"], per_pixel, " × H × W")


def _is_symbolic(dim: Any) -> bool:
    return not isinstance(dim, int) or dim <= 0


def _binding_hint(data: dict[str, Any]) -> list[str]:
    """Lines under a table whose MACs are symbolic: what the per-pixel figures mean, and the
    --input-shape that binds the dims."""
    total = data["total"]
    if total["macs"] is not None:
        return []
    lines = []
    if any(n["macs"] is None and n.get("macs_per_output_pixel") for n in data["nodes"]):
        lines.append(
            "MACs ending in /px are per pixel of the node's output (its spatial dims are symbolic)."
        )
    if total.get("macs_per_input_pixel") is not None:
        lines.append(f"total MACs = {fmt_int(total['macs_per_input_pixel'])} × H × W of the input.")
    if total.get("incomplete") and total.get("macs_per_input_pixel") is None:
        unknown = total["unknown_nodes"]
        named = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        lines.append(
            f"MACs incomplete: at least {fmt_int(total['macs_at_least'])} MACs; unknown for "
            f"{named}."
        )
    bindings = []
    for each in data.get("inputs", []):
        shape = each["shape"]
        if shape is None or not any(_is_symbolic(d) for d in shape):
            continue
        example = [
            str(d) if not _is_symbolic(d) else "1" if i == 0 else str(EXAMPLE_SIZE)
            for i, d in enumerate(shape)
        ]
        bindings.append(f"--input-shape {each['name']}={'x'.join(example)}")
    if bindings:
        named = ", ".join(
            f"{e['name']} is {_shape_text([e['shape']])}"
            for e in data["inputs"]
            if e["shape"] is not None and any(_is_symbolic(d) for d in e["shape"])
        )
        lines.append(f"Bind the symbolic dims for exact MACs ({named}), e.g. {' '.join(bindings)}")
    return lines


def fmt_bytes(value: int | None) -> str:
    """Bytes as people read them: ``784.0 KiB``, ``3.1 MiB``."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _node_cells(node: dict[str, Any], total_macs: int | None) -> list[str]:
    share = "-"
    if total_macs and node["macs"] is not None:
        share = f"{100 * node['macs'] / total_macs:.1f}%"
    return [
        node["name"],
        node["op_type"],
        _shape_text(node["output_shapes"]),
        fmt_int(node["params"]),
        _macs_cell(node["macs"], node.get("macs_per_output_pixel"), "/px"),
        share,
        fmt_bytes(node.get("memory")),
    ]


HEADERS = ["node", "op", "output shape", "params", "MACs", "share", "memory"]


def _table_rows(data: dict[str, Any]) -> list[list[str]]:
    total = data["total"]
    rows = [_node_cells(node, total["macs"]) for node in data["nodes"]]
    rows.append(
        [
            "total",
            "",
            "",
            fmt_int(total["params"]),
            _total_macs_cell(total),
            "",
            fmt_bytes(total.get("memory")),
        ]
    )
    return rows


def _peak_line(data: dict[str, Any]) -> str:
    peak = data["total"].get("peak_memory")
    if peak is None:
        return "peak activation memory: unknown (symbolic dims; --input-shape binds them)"
    return (
        f"peak activation memory: {fmt_bytes(peak)} ({fmt_int(peak)} bytes alive at once, "
        "nodes run in graph order)"
    )


def _op_type_rows(data: dict[str, Any]) -> list[list[str]]:
    total_macs = data["total"]["macs"]
    rows = []
    for each in data.get("op_types", []):
        share = "-"
        if total_macs and each["macs"] is not None:
            share = f"{100 * each['macs'] / total_macs:.1f}%"
        rows.append(
            [
                each["op_type"],
                str(each["nodes"]),
                fmt_int(each["params"]),
                fmt_int(each["macs"]),
                share,
                fmt_bytes(each["memory"]),
            ]
        )
    return rows


OP_TYPE_HEADERS = ["op type", "nodes", "params", "MACs", "share", "memory"]


def _shown_line(data: dict[str, Any]) -> list[str]:
    shown = data.get("shown")
    if not shown:
        return []
    order = f", most {shown['sort']} first" if shown["sort"] else ""
    return [f"({len(data['nodes'])} of {shown['nodes']} nodes{order}; the totals are the model's)"]


def render_stats_text(path: str, data: dict[str, Any], quiet: bool = False) -> str:
    """The per-node table, the totals per op type, and (unless ``quiet``) the notes under
    them: rows left out, weights folded, how to bind symbolic dims."""
    body = table(HEADERS, _table_rows(data), {3, 4, 5, 6})
    by_type = table(OP_TYPE_HEADERS, _op_type_rows(data), {1, 2, 3, 4, 5})
    lines = [] if quiet else _shown_line(data) + _folded_line(data) + _binding_hint(data)
    hint = "".join(line + "\n" for line in lines)
    # No blank line inside one model's tables: a blank line separates models.
    return f"{path}\n{body}\n{_peak_line(data)}\n{by_type}\n{hint}"


def _folded_line(data: dict[str, Any]) -> list[str]:
    folded = data.get("folded") or []
    if not folded:
        return []
    named = ", ".join(folded[:3]) + (f" and {len(folded) - 3} more" if len(folded) > 3 else "")
    return [f"{len(folded)} weight-only Identity/Cast nodes folded into their weights ({named})."]


def render_stats_markdown(path: str, data: dict[str, Any], quiet: bool = False) -> str:
    """The same tables in Markdown (a pull-request comment, a step summary)."""

    def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int) -> str:
        align = ["---"] * right + ["---:"] * (len(headers) - right)
        lines = [headers, align, *rows]
        return "\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines)

    parts = [
        f"### `{_md_cell(path)}`",
        markdown(HEADERS, _table_rows(data), 3),
        _peak_line(data),
        markdown(OP_TYPE_HEADERS, _op_type_rows(data), 1),
    ]
    if not quiet:
        parts.extend(f"> {line}" for line in _shown_line(data) + _folded_line(data))
    return "\n\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return printable(text).replace("|", "\\|").replace("`", "'")


CSV_HEADERS = (
    "model", "node", "op_type", "output_shapes", "params", "macs", "macs_per_output_pixel",
    "memory_bytes",
)  # fmt: skip


def render_stats_csv(models: Sequence[dict[str, Any]]) -> str:
    """One row per node of every model (no total rows: sum the columns), as spreadsheets and
    pandas read it; shapes as ``1x64x56x56``, unknown values empty."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADERS)
    for data in models:
        if data.get("error") is not None:
            continue
        for node in data["nodes"]:
            writer.writerow(
                [
                    data["path"],
                    node["name"],
                    node["op_type"],
                    _shape_text(node["output_shapes"]),
                    node["params"],
                    "" if node["macs"] is None else node["macs"],
                    node.get("macs_per_output_pixel") or "",
                    "" if node.get("memory") is None else node["memory"],
                ]
            )
    return buffer.getvalue()


def _document(data: dict[str, Any], verbose: bool) -> dict[str, Any]:
    shown = dict(data)
    if not verbose:
        shown.pop("notes", None)
    return shown


def stats_document(models: Sequence[dict[str, Any]], verbose: bool = False) -> dict[str, Any]:
    """One model: its object at the top level (as the contract reads); several: ``models``."""
    head = {"schema_version": SCHEMA_VERSION, "tool": {"name": "convlint", "version": __version__}}
    if len(models) == 1:
        return {**head, **_document(models[0], verbose)}
    return {**head, "models": [_document(m, verbose) for m in models]}


# --- stats --diff MODEL OUT ---------------------------------------------------------------


def _changed(
    before: dict[str, Any], after: dict[str, Any], dims: dict[str, str] | None = None
) -> bool:
    keys = ("op_type", "params", "macs", "macs_per_output_pixel")
    if any(before.get(key) != after.get(key) for key in keys):
        return True
    return _renamed(before["output_shapes"], dims or {}) != after["output_shapes"]


def _is_inferred(dim: Any) -> bool:
    """A symbolic dim ONNX shape inference named (``unk__7``): each model numbers its own."""
    return isinstance(dim, str) and dim.startswith("unk__")


def _renamed(shapes: Any, dims: dict[str, str]) -> Any:
    if not dims or shapes is None:
        return shapes
    return [
        None if shape is None else [dims.get(d, d) if isinstance(d, str) else d for d in shape]
        for shape in shapes
    ]


def _match_inferred_dims(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, str]:
    """Which of ``after``'s inferred dims each of ``before``'s is: shape inference names them
    ``unk__N`` in the order it meets them, so a rewrite that adds nodes renumbers the rest.
    Two are the same dim when a node both models have (same name, same op) has them at the
    same place of the same output: both came from the same input dims through the same ops."""
    mapping: dict[str, str] = {}
    for before, after in pairs:
        for old_shape, new_shape in zip(
            before["output_shapes"] or [], after["output_shapes"] or [], strict=False
        ):
            if old_shape is None or new_shape is None or len(old_shape) != len(new_shape):
                continue
            for old, new in zip(old_shape, new_shape, strict=True):
                if _is_inferred(old) and _is_inferred(new):
                    mapping.setdefault(old, new)
    return mapping


def _diff_row(change: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict:
    either = after if after is not None else before
    assert either is not None

    def side(node: dict[str, Any] | None, key: str) -> Any:
        return None if node is None else node.get(key)

    return {
        "name": either["name"],
        "op_type": either["op_type"],
        "change": change,
        "output_shapes_before": side(before, "output_shapes"),
        "output_shapes_after": side(after, "output_shapes"),
        "params_before": side(before, "params"),
        "params_after": side(after, "params"),
        "macs_before": side(before, "macs"),
        "macs_after": side(after, "macs"),
    }


def diff_stats(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Nodes added, removed or changed (output shape, params or MACs) from ``before`` to
    ``after``, matched by name and op (`fix` keeps the names of the nodes it does not touch
    and names the nodes it adds after the node they replace; a name that now holds another op
    is a node removed and one added), in data order; and the totals. Symbolic dims shape
    inference named (``unk__N``) are compared as the dims they are, not by their numbers."""
    old = {(n["name"], n["op_type"]): n for n in before["nodes"]}
    new = {(n["name"], n["op_type"]): n for n in after["nodes"]}
    old_keys, new_keys = list(old), list(new)
    dims = _match_inferred_dims([(old[key], new[key]) for key in old_keys if key in new])
    rows: list[dict[str, Any]] = []
    matcher = SequenceMatcher(None, old_keys, new_keys, autojunk=False)
    for _, i1, i2, j1, j2 in matcher.get_opcodes():
        rows += [_diff_row("removed", old[k], None) for k in old_keys[i1:i2] if k not in new]
        for key in new_keys[j1:j2]:
            if key not in old:
                rows.append(_diff_row("added", None, new[key]))
            elif _changed(old[key], new[key], dims):
                rows.append(_diff_row("changed", old[key], new[key]))
    counts = {kind: sum(1 for r in rows if r["change"] == kind) for kind in ("added", "removed")}
    counts["changed"] = sum(1 for r in rows if r["change"] == "changed")
    b, a = before["total"], after["total"]
    return {
        "before": before["path"],
        "after": after["path"],
        "nodes": rows,
        "total": {
            "nodes_before": len(old),
            "nodes_after": len(new),
            **counts,
            "params_before": b["params"],
            "params_after": a["params"],
            "macs_before": b["macs"],
            "macs_after": a["macs"],
            "macs_per_input_pixel_before": b.get("macs_per_input_pixel"),
            "macs_per_input_pixel_after": a.get("macs_per_input_pixel"),
        },
    }


def _change(before: int | float | None, after: int | float | None) -> str:
    return f"{fmt_int(before)} -> {fmt_int(after)}{change_ratio(before, after)}"


def render_diff_text(diff: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else fmt_int(value)

    def shapes(row: dict[str, Any]) -> str:
        old, new = row["output_shapes_before"], row["output_shapes_after"]
        if old is None or new is None or old == new:
            return _shape_text(new if new is not None else old)
        return f"{_shape_text(old)} -> {_shape_text(new)}"

    rows = [
        [
            r["name"],
            r["op_type"],
            r["change"],
            shapes(r),
            cell(r["params_before"]),
            cell(r["params_after"]),
            cell(r["macs_before"]),
            cell(r["macs_after"]),
        ]
        for r in diff["nodes"]
    ]
    total = diff["total"]
    lines = [f"{diff['before']} -> {diff['after']}"]
    if rows:
        headers = ["node", "op", "change", "output shape"]
        headers += ["params before", "params after", "MACs before", "MACs after"]
        rows.append(
            [
                "total",
                "",
                "",
                "",
                cell(total["params_before"]),
                cell(total["params_after"]),
                cell(total["macs_before"]),
                cell(total["macs_after"]),
            ]
        )
        lines.append(table(headers, rows, {4, 5, 6, 7}))
    else:
        lines.append("no node changed")
    macs = _change(total["macs_before"], total["macs_after"])
    if total["macs_before"] is None and total["macs_per_input_pixel_before"] is not None:
        per_pixel = _change(
            total["macs_per_input_pixel_before"], total["macs_per_input_pixel_after"]
        )
        macs = f"{per_pixel} × H × W"
    lines.append(
        f"nodes {total['nodes_before']} -> {total['nodes_after']} "
        f"({total['added']} added, {total['removed']} removed, {total['changed']} changed); "
        f"params {_change(total['params_before'], total['params_after'])}; MACs {macs}"
    )
    return "\n".join(lines) + "\n"


def render_diff_json(diff: dict[str, Any]) -> str:
    head = {"schema_version": SCHEMA_VERSION, "tool": {"name": "convlint", "version": __version__}}
    return json_text({**head, "diff": diff})
