"""`convlint check --statistics`: how many findings each rule has, instead of the findings.

As ruff's ``--statistics``: a line per rule with findings, ``COUNT<TAB>CODE<TAB>[*] name``
(the text report's markers: ``[*]`` when `convlint fix` rewrites some of its findings safely,
``[~]`` approximately, ``[ ]`` neither; the column left out when no rule has either), most
findings first. Findings a node's ``convlint.ignore``
silenced and findings a baseline knew are not in the count; each rule with some says how many
after its name. ``--format json`` writes a list of ``{"code", "name", "count", "fixable",
"suppressed", "baselined"}``; the other formats print the text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from convlint.findings import Applicability, ModelReport
from convlint.registry import Registry
from convlint.reporters.text import MARKERS  # as the text report marks them, safe ones first


def statistics(reports: Sequence[ModelReport], registry: Registry) -> list[dict[str, Any]]:
    """A row per rule with findings, suppressed or known ones: most findings first."""
    counts: Counter[str] = Counter()
    kinds: dict[str, set[Applicability]] = {}
    suppressed: Counter[str] = Counter()
    baselined: Counter[str] = Counter()
    for report in reports:
        for finding in report.findings:
            counts[finding.code] += 1
            if finding.fix is not None:
                kinds.setdefault(finding.code, set()).add(finding.fix.applicability)
        suppressed.update(finding.code for finding in report.suppressed)
        baselined.update(finding.code for finding in report.baselined or [])
    codes = sorted(set(counts) | set(suppressed) | set(baselined), key=lambda c: (-counts[c], c))
    rows = []
    for code in codes:
        rule = registry.get(code)
        rows.append(
            {
                "code": code,
                "name": rule.name if rule is not None else "",
                "count": counts[code],
                "fixable": bool(kinds.get(code, set()) & set(MARKERS)),
                "marker": next((MARKERS[a] for a in MARKERS if a in kinds.get(code, ())), "[ ]"),
                "suppressed": suppressed[code],
                "baselined": baselined[code],
            }
        )
    return rows


def render_statistics(reports: Sequence[ModelReport], registry: Registry, format: str) -> str:
    rows = statistics(reports, registry)
    if format == "json":
        shown = [{k: v for k, v in row.items() if k != "marker"} for row in rows]
        return json.dumps(shown, indent=2) + "\n"
    if not rows:
        return ""
    count_width = max(len(str(row["count"])) for row in rows)
    code_width = max(len(row["code"]) for row in rows)
    any_fixable = any(row["fixable"] for row in rows)
    lines = []
    for row in rows:
        marker = f"{row['marker']} " if any_fixable else ""
        also = [
            f"{row[key]} {what}"
            for key, what in (("suppressed", "suppressed in the model"), ("baselined", "known"))
            if row[key]
        ]
        extra = f" ({', '.join(also)})" if also else ""
        lines.append(
            f"{str(row['count']).rjust(count_width)}\t{row['code'].ljust(code_width)}\t"
            f"{marker}{row['name']}{extra}"
        )
    return "".join(line + "\n" for line in lines)
