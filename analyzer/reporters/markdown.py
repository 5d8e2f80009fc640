"""Markdown for a PR comment or ``$GITHUB_STEP_SUMMARY`` (`--format markdown`).

Per model: a table of params, MACs, findings and potential savings (the sum over findings of
before - after; findings can overlap, so it is an upper bound), the findings (with what
`convlint fix` needs to apply each one's fix: its applicability), and for each new
finding two Mermaid flowcharts of its neighbourhood, as it is and as suggested (new nodes
green, kept nodes the suggestion changes blue, with their new shapes). The sketches come with
the findings (``Finding.context``); this module only draws them.

On a big folder the report stays usable: diagrams are drawn for the first ``MAX_DIAGRAMS`` new
findings, and the whole is kept within ``MAX_CHARS`` characters, a pull-request comment's
limit (diagrams go first, then ``--verbose`` notes, then the end of the report); a line under
the totals says what was left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from convlint.findings import Applicability, Finding, ModelReport
from convlint.registry import Registry
from convlint.reporters.common import (
    describe_estimate,
    error_counts,
    fmt_int,
    plural,
    printable,
)
from convlint.sketch import Sketch, SketchNode

MAX_DIAGRAMS = 25  # findings drawn; Mermaid renders each chart on the page, slowly past a few dozen
MAX_CHARS = 65_536  # a GitHub pull-request comment's limit (a step summary's is 1 MiB)
NOTICE_RESERVE = 512  # room kept for the lines that say what was left out

STYLES = (
    "classDef flagged fill:#ffebe9,stroke:#cf222e,stroke-width:2px",
    "classDef related fill:#fff8c5,stroke:#9a6700",
    "classDef suggested fill:#dafbe1,stroke:#1a7f37,stroke-width:2px,stroke-dasharray:5 3",
    "classDef changed fill:#ddf4ff,stroke:#0969da,stroke-width:2px",
)


def _cell(text: str) -> str:
    """Text safe in a GFM table cell."""
    text = " ".join(printable(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _code(text: str) -> str:
    """A code span in a table cell (pipes still need escaping inside code spans in GFM)."""
    text = " ".join(printable(text).split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _mermaid_text(text: str) -> str:
    return (
        printable(text)
        .replace("&", "#amp;")
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
    for role in ("flagged", "related", "suggested", "changed"):
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
    if cost.macs is None and cost.incomplete:
        return f"at least {fmt_int(cost.macs_known)}"
    return fmt_int(cost.macs)


@dataclass
class _Block:
    """Consecutive lines of the report, and what they hold (for the size cap's tally)."""

    text: str
    kind: str  # "head", "row" (a finding), "diagram", "notes"
    model: int


def _lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def _model(index: int, report: ModelReport, verbose: bool) -> list[_Block]:
    head = [f"## {_code(report.path)}", ""]
    if report.error and not report.failed_rules:
        return [
            _Block(
                _lines(*head, f"**Could not be read:** {_cell(report.error)}", ""), "head", index
            )
        ]
    if report.error:  # a rule failed: its error, then what the other rules found
        head += [f"**Rule failed:** {_cell(report.error)}", ""]
    known = report.baselined or []
    params = report.cost.params if report.cost else None
    macs = report.cost.macs if report.cost else None
    count = str(len(report.findings)) + (f" (+{len(known)} in baseline)" if known else "")
    head += [
        "| params | MACs | findings | potential savings |",
        "|---:|---:|---:|---|",
        f"| {fmt_int(params)} | {_macs_text(report)} | {count} "
        f"| {savings([*report.findings, *known], params, macs)} |",
        "",
    ]
    if not report.findings and not known:
        head += ["No findings.", ""]
        blocks = [_Block(_lines(*head), "head", index)]
    else:
        head += ["| code | node | finding | estimate | fix |", "|---|---|---|---|---|"]
        blocks = [_Block(_lines(*head), "head", index)]
        for finding, is_known in [
            *((f, False) for f in report.findings),
            *((f, True) for f in known),
        ]:
            code = f"{finding.code} (baseline)" if is_known else finding.code
            estimate = describe_estimate(finding) or ""
            row = (
                f"| {code} | {_code(finding.node)} | {_cell(finding.message)} | {_cell(estimate)} "
                f"| {_fix_cell(finding)} |"
            )
            blocks.append(_Block(_lines(row), "row", index))
        blocks.append(_Block("\n", "head", index))
        blocks += [
            _Block(_lines(*diagram), "diagram", index)
            for finding in report.findings
            if (diagram := _diagrams(finding))
        ]
    if verbose and (report.notes or report.skips):
        notes = [f"- note: {_cell(note)}" for note in report.notes]
        notes += [
            f"- {skip.code} passed over {_code(skip.node)}: {_cell(skip.reason)}"
            for skip in report.skips
        ]
        text = _lines(
            "<details>",
            "<summary>Notes and candidates passed over</summary>",
            "",
            *notes,
            "",
            "</details>",
            "",
        )
        blocks.append(_Block(text, "notes", index))
    return blocks


# What `convlint fix` needs to apply a fix, by applicability (the text format's markers).
FIX_CELLS = {
    Applicability.SAFE: "safe: `convlint fix`",
    Applicability.APPROXIMATE: "approximate: `convlint fix --inputs DATA`",
    Applicability.UNSAFE: "unsafe: `convlint fix --unsafe-fixes`",
    Applicability.DISPLAY_ONLY: "display-only",
}


def _fix_cell(finding: Finding) -> str:
    return FIX_CELLS[finding.fix.applicability] if finding.fix else "–"


def _diagrams(finding: Finding) -> list[str]:
    if finding.context is None:
        return []
    summary = f"{finding.code} <code>{_cell(finding.node)}</code>: as it is and as suggested"
    lines = ["<details>", f"<summary>{summary}</summary>", "", "As it is:", ""]
    lines += mermaid(finding.context.before)
    if finding.context.after is not None:
        lines += ["", "As suggested (new nodes green, changed ones blue):", ""]
        lines += mermaid(finding.context.after)
    return [*lines, "", "</details>", ""]


def _fit(blocks: list[_Block], budget: int) -> tuple[list[_Block], list[_Block]]:
    """Drop diagrams, then notes, from the end until the blocks fit ``budget`` characters; if
    they still do not, cut the report after the last block that fits. Returns (kept, cut)."""
    size = sum(len(b.text) for b in blocks)
    kept = list(blocks)
    for kind in ("diagram", "notes"):
        for i in reversed(range(len(kept))):
            if size <= budget:
                break
            if kept[i].kind == kind:
                size -= len(kept[i].text)
                kept[i] = _Block("", "dropped-" + kind, kept[i].model)
    cut: list[_Block] = [b for b in kept if b.kind.startswith("dropped-")]
    kept = [b for b in kept if not b.kind.startswith("dropped-")]
    if size <= budget:
        return kept, cut
    used = 0
    for i, block in enumerate(kept):
        if used + len(block.text) > budget:
            # A model's heading and table header without a row of it would read as empty.
            while i > 0 and kept[i - 1].kind == "head" and kept[i - 1].model == block.model:
                i -= 1
            return kept[:i], cut + kept[i:]
        used += len(block.text)
    return kept, cut


def render_markdown(
    reports: Sequence[ModelReport],
    registry: Registry,
    verbose: bool = False,
    max_diagrams: int = MAX_DIAGRAMS,
    max_chars: int = MAX_CHARS,
) -> str:
    """The report; at most ``max_diagrams`` findings get diagrams, and the whole stays within
    ``max_chars`` characters (a pull-request comment's limit), saying what was left out."""
    new = sum(len(r.findings) for r in reports)
    known = sum(len(r.baselined or []) for r in reports)
    errors = sum(1 for r in reports if r.error)
    totals = f"{plural(len(reports), 'model')} checked: {plural(new, 'finding')}"
    if known:
        totals += f", {known} known in the baseline"
    if errors:
        totals += error_counts(reports)
    head = _lines("# convlint report", "", totals + ".", "")

    blocks = [block for i, report in enumerate(reports) for block in _model(i, report, verbose)]
    drawable = [b for b in blocks if b.kind == "diagram"]
    over_cap = drawable[max_diagrams:] if max_diagrams >= 0 else []
    blocks = [b for b in blocks if not any(b is o for o in over_cap)]
    kept, cut = _fit(blocks, max_chars - len(head) - NOTICE_RESERVE)

    notices = []
    drawn = sum(1 for b in kept if b.kind == "diagram")
    if drawn < len(drawable):
        why = []
        if over_cap:
            why.append(f"the cap is {max_diagrams}")
        if len(drawable) - len(over_cap) > drawn:
            why.append("the rest did not fit the size limit")
        notices.append(
            f"Diagrams are drawn for {drawn} of {plural(len(drawable), 'finding')} "
            f"({'; '.join(why)})."
        )
    rows_cut = sum(1 for b in cut if b.kind == "row")
    models_cut = len({b.model for b in cut if b.kind in ("head", "row")})
    notes_cut = sum(1 for b in cut if b.kind in ("notes", "dropped-notes"))
    if rows_cut or models_cut or notes_cut:
        parts = []
        if models_cut:
            parts.append(f"{plural(models_cut, 'model')} not shown in full")
        if rows_cut:
            parts.append(f"{plural(rows_cut, 'finding')} left out of the tables")
        if notes_cut:
            parts.append(f"the verbose notes of {plural(notes_cut, 'model')}")
        notices.append(
            f"The report is cut to {max_chars:,} characters (a pull-request comment's limit): "
            f"{', '.join(parts)}. `--format json`, `sarif` or `text` lists everything."
        )
    notice = _lines(*(f"> {text}" for text in notices), "") if notices else ""
    text = head + notice + "".join(b.text for b in kept)
    return text.rstrip("\n") + "\n"
