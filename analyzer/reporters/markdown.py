"""Markdown for a PR comment or ``$GITHUB_STEP_SUMMARY`` (`--format markdown`).

Per model: a table of params, MACs, findings and potential savings (the sum over findings of
before - after; findings can overlap, so it is an upper bound), the findings, and for each new
finding two Mermaid flowcharts of its neighbourhood, as it is and as suggested. The sketches
come with the findings (``Finding.context``); this module only draws them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from convlint.engine import ModelReport
from convlint.findings import Finding
from convlint.registry import Registry
from convlint.reporters.common import describe_estimate, fmt_int, plural
from convlint.sketch import Sketch, SketchNode

STYLES = (
    "classDef flagged fill:#ffebe9,stroke:#cf222e,stroke-width:2px",
    "classDef related fill:#fff8c5,stroke:#9a6700",
    "classDef suggested fill:#dafbe1,stroke:#1a7f37,stroke-width:2px,stroke-dasharray:5 3",
)


def _cell(text: str) -> str:
    """Text safe in a GFM table cell."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _code(text: str) -> str:
    """A code span in a table cell (pipes still need escaping inside code spans in GFM)."""
    text = " ".join(text.split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("`", "#96;")
    )


def _label(node: SketchNode) -> str:
    if node.role == "suggested":
        lines = [node.detail]
    elif node.op_type in ("input", "output"):
        lines = [node.name, node.detail]
    else:
        lines = [node.name, f"{node.op_type} {node.detail}".strip()]
    return "<br/>".join(_mermaid_text(line) for line in lines if line)


def mermaid(sketch: Sketch) -> list[str]:
    ids = {node.key: f"k{i}" for i, node in enumerate(sketch.nodes)}
    lines = ["```mermaid", "flowchart TD"]
    for node in sketch.nodes:
        label = _label(node)
        shape = f'(["{label}"])' if node.op_type in ("input", "output") else f'["{label}"]'
        lines.append(f"  {ids[node.key]}{shape}")
    lines.extend(f"  {ids[u]} --> {ids[v]}" for u, v in sketch.edges if u in ids and v in ids)
    if sketch.omitted:
        lines.append(f'  more["… {plural(sketch.omitted, "more neighbour")}"]')
    for role in ("flagged", "related", "suggested"):
        members = [ids[n.key] for n in sketch.nodes if n.role == role]
        if members:
            lines.append(f"  class {','.join(members)} {role}")
    lines.extend(f"  {style}" for style in STYLES)
    lines.append("```")
    return lines


def _signed(value: int) -> str:
    return f"−{fmt_int(value)}" if value > 0 else f"+{fmt_int(-value)}" if value < 0 else "0"


def _share(part: int, whole: int | float | None) -> str:
    return f" ({part / whole:.0%})" if whole else ""


def savings(findings: Iterable[Finding], params: int | None, macs: int | None) -> str:
    estimates = [f.estimate for f in findings if f.estimate is not None]
    if not estimates:
        return "–"
    saved_params = sum(e.params_before - e.params_after for e in estimates)
    text = f"{_signed(saved_params)} params{_share(saved_params, params)}"
    with_macs = [e for e in estimates if e.macs_before is not None and e.macs_after is not None]
    if with_macs:
        saved_macs = sum(int(e.macs_before or 0) - int(e.macs_after or 0) for e in with_macs)
        text += f", {_signed(saved_macs)} MACs{_share(saved_macs, macs)}"
    return text


def _macs_text(report: ModelReport) -> str:
    cost = report.cost
    if cost is None:
        return "?"
    if cost.macs is None and cost.macs_per_input_pixel is not None:
        return f"{fmt_int(cost.macs_per_input_pixel)} × H × W"
    return fmt_int(cost.macs)


def _model(report: ModelReport) -> list[str]:
    lines = [f"## {_code(report.path)}", ""]
    if report.error:
        return [*lines, f"**Could not be read:** {_cell(report.error)}", ""]
    known = report.baselined or []
    params = report.cost.params if report.cost else None
    macs = report.cost.macs if report.cost else None
    count = str(len(report.findings)) + (f" (+{len(known)} in baseline)" if known else "")
    lines += [
        "| params | MACs | findings | potential savings |",
        "|---:|---:|---:|---|",
        f"| {fmt_int(params)} | {_macs_text(report)} | {count} "
        f"| {savings([*report.findings, *known], params, macs)} |",
        "",
    ]
    if not report.findings and not known:
        return [*lines, "No findings.", ""]
    lines += ["| code | node | finding | estimate |", "|---|---|---|---|"]
    for finding, is_known in [*((f, False) for f in report.findings), *((f, True) for f in known)]:
        code = f"{finding.code} (baseline)" if is_known else finding.code
        estimate = describe_estimate(finding) or ""
        lines.append(
            f"| {code} | {_code(finding.node)} | {_cell(finding.message)} | {_cell(estimate)} |"
        )
    lines.append("")
    for finding in report.findings:
        lines += _diagrams(finding)
    return lines


def _diagrams(finding: Finding) -> list[str]:
    if finding.context is None:
        return []
    summary = f"{finding.code} <code>{_cell(finding.node)}</code>: as it is and as suggested"
    lines = ["<details>", f"<summary>{summary}</summary>", "", "As it is:", ""]
    lines += mermaid(finding.context.before)
    if finding.context.after is not None:
        lines += ["", "As suggested:", ""]
        lines += mermaid(finding.context.after)
    return [*lines, "", "</details>", ""]


def render_markdown(reports: Sequence[ModelReport], registry: Registry) -> str:
    new = sum(len(r.findings) for r in reports)
    known = sum(len(r.baselined or []) for r in reports)
    errors = sum(1 for r in reports if r.error)
    totals = f"{plural(len(reports), 'model')} checked: {plural(new, 'finding')}"
    if known:
        totals += f", {known} known in the baseline"
    if errors:
        totals += f", {plural(errors, 'model')} could not be read"
    lines = ["# convlint report", "", totals + ".", ""]
    for report in reports:
        lines += _model(report)
    return "\n".join(lines).rstrip("\n") + "\n"
