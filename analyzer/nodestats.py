"""`convlint stats`: a per-node table of params, MACs and output shapes, for one model or
several, and ``--diff MODEL OUT``: what a rewrite changed, per node and in total.

With symbolic spatial dims a node's MACs are unknown, but a convolution's cost per pixel of its
output is not (``macs_per_output_pixel``), and when every spatial size scales with the input's
the model's total is ``macs_per_input_pixel`` × H × W of the input: the same figures `check`
reports. The text table shows them and says how to bind the dims (``--input-shape``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from difflib import SequenceMatcher
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlint import __version__
from convlint.cost import ModelCost, model_cost
from convlint.graph import Dim, ModelGraph, Shape
from convlint.reporters.common import (
    SCHEMA_VERSION,
    change_ratio,
    fmt_int,
    json_text,
    printable,
)
from convlint.tables import table

if TYPE_CHECKING:
    import argparse

    from convlint.engine import Settings
    from convlint.registry import Registry

EXAMPLE_SIZE = 224  # what the --input-shape hint puts in place of a symbolic spatial dim


def stats_rows(graph: ModelGraph, cost: ModelCost | None = None) -> dict[str, Any]:
    """Every node of every graph (subgraphs too) and the model's total."""
    cost = cost if cost is not None else model_cost(graph)
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
                    "macs_per_output_pixel": nc.macs_per_output_pixel,
                }
            )
    return {
        "nodes": nodes,
        "total": {"params": cost.params, "macs": cost.macs, **cost.completeness()},
    }


def model_stats(path: str | Path, registry: Registry, settings: Settings) -> dict[str, Any]:
    """The stats object of one model: ``path``, ``inputs``, ``nodes``, ``total`` and ``notes``.
    Raises ModelError for a model `check` could not read either."""
    from convlint import loader
    from convlint.engine import ModelReport, lint

    loaded = loader.load(
        path, settings.input_shapes, settings.configured_input_shapes, settings.configured_source
    )
    report = ModelReport(path=str(path))
    # No rules: lint costs the model and, where MACs are symbolic, finds the per-pixel total.
    graph = lint(report, loaded, registry, settings, rules=[])
    assert report.cost is not None
    inputs = [{"name": name, "shape": _listed(graph.shape(name))} for name in graph.data_inputs]
    rows = stats_rows(graph, report.cost)
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
                _macs_cell(node["macs"], node.get("macs_per_output_pixel"), "/px"),
                share,
            ]
        )
    total = data["total"]
    rows.append(
        [
            "total",
            "",
            "",
            fmt_int(total["params"]),
            _total_macs_cell(total),
            "",
        ]
    )
    body = table(["node", "op", "output shape", "params", "MACs", "share"], rows, {3, 4, 5})
    hint = "".join(line + "\n" for line in _binding_hint(data))
    return f"{path}\n{body}\n{hint}"


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


def render_stats_json(path: str, data: dict[str, Any], verbose: bool = False) -> str:
    return json_text(stats_document([{"path": path, **data}], verbose))


# --- stats --diff MODEL OUT ---------------------------------------------------------------


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    keys = ("op_type", "output_shapes", "params", "macs", "macs_per_output_pixel")
    return any(before.get(key) != after.get(key) for key in keys)


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
    """Nodes added, removed or changed (op, output shape, params or MACs) from ``before`` to
    ``after``, matched by name (`fix` keeps the names of the nodes it does not touch and names
    the nodes it adds after the node they replace), in data order; and the totals."""
    old = {n["name"]: n for n in before["nodes"]}
    new = {n["name"]: n for n in after["nodes"]}
    old_names, new_names = list(old), list(new)
    rows: list[dict[str, Any]] = []
    matcher = SequenceMatcher(None, old_names, new_names, autojunk=False)
    for _, i1, i2, j1, j2 in matcher.get_opcodes():
        rows += [_diff_row("removed", old[n], None) for n in old_names[i1:i2] if n not in new]
        for name in new_names[j1:j2]:
            if name not in old:
                rows.append(_diff_row("added", None, new[name]))
            elif _changed(old[name], new[name]):
                rows.append(_diff_row("changed", old[name], new[name]))
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


# --- the command ----------------------------------------------------------------------------


def run_stats(args: argparse.Namespace, registry: Registry) -> int:
    """`convlint stats MODEL...` and `convlint stats --diff MODEL OUT`: 0, or 2 when a model
    cannot be read (the others are still reported). Each model gets its own settings, as in
    `check` (its input shapes from its configuration)."""
    from convlint.cli import emit, model_paths, refuse_overwriting_inputs, resolve_settings
    from convlint.config import ConfigFinder
    from convlint.errors import ModelError, UsageError

    def one(path: str) -> dict[str, Any]:
        return model_stats(path, registry, resolve_settings(args, registry, path)[0])

    if args.diff:  # two files as given (the same one twice compares it with itself)
        paths = [str(model) for model in args.models]
        if len(paths) != 2 or any(Path(path).is_dir() for path in paths):
            raise UsageError(
                f"--diff compares two model files, MODEL and OUT, not {' '.join(paths)} "
                "(e.g. convlint stats --diff model.onnx fixed.onnx)"
            )
    else:
        finder = ConfigFinder(registry, Path(args.config) if args.config else None)
        paths = model_paths(args, finder)
    if not paths:
        raise UsageError(f"no .onnx files found in {', '.join(args.models)}")
    refuse_overwriting_inputs(
        [("--output", args.output)],
        [
            *((f"the model {path}", path) for path in paths),
            (f"--config {args.config}", args.config),
        ],
        paths,
    )
    as_json = args.format == "json"
    if args.diff:
        before, after = (one(path) for path in paths)
        diff = diff_stats(before, after)
        emit(render_diff_json(diff) if as_json else render_diff_text(diff), args.output)
        return 0
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            results.append(one(path))
        except ModelError as exc:
            results.append({"path": path, "error": exc.problem})
    if as_json:
        text = json_text(stats_document(results, args.verbose))
    else:
        tables = []
        for data in results:
            if data["error"] is None:
                notes = (
                    [f"{data['path']}: note: {n}" for n in data["notes"]] if args.verbose else []
                )
                tables.append(
                    "".join(f"{line}\n" for line in notes) + render_stats_text(data["path"], data)
                )
        text = "\n".join(tables)
    emit(text, args.output)
    failed = [data for data in results if data["error"] is not None]
    for data in failed:
        print(printable(f"convlint: error: {data['path']}: {data['error']}"), file=sys.stderr)
    return 2 if failed else 0
