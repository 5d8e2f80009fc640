"""What every reporter shares: numbers as people read them, a finding's estimate in one line,
the summary counts."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from convlint.errors import printable as printable  # re-exported for the reporters
from convlint.findings import Applicability, Finding, ModelReport

# The ``schema_version`` of every JSON report (check, fix, stats): raised on any incompatible
# change to one of them; adding a field is compatible.
# Version 2: a fix's applicability gained "approximate" (CL001, CL005 and CL002's projection,
# which version 1 called "safe"), and the summary counts the fixes of each applicability.
SCHEMA_VERSION = 2


def json_text(document: Any, **options: Any) -> str:
    """A report as standard JSON: a non-finite number (an infinite error) is written null,
    never the ``Infinity`` or ``NaN`` that strict parsers refuse."""
    return json.dumps(_finite(document), allow_nan=False, indent=2, **options) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def fmt_int(value: int | float | None) -> str:
    if value is None:
        return "?"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def change_ratio(before: int | float | None, after: int | float | None) -> str:
    """`` (6.1x fewer)``, ``(2.0x more)``; a change under 10% as a percentage, which a ratio
    would round to ``1.0x``: `` (3.1% fewer)``. Empty when either is unknown or zero, or
    both are equal."""
    if not before or not after or before == after:
        return ""
    if before > after:
        ratio, direction = before / after, "fewer"
    else:
        ratio, direction = after / before, "more"
    if ratio >= 1.1:
        return f" ({ratio:.1f}x {direction})"
    return f" ({abs(after - before) / before:.1%} {direction})"


def describe_estimate(finding: Finding) -> str | None:
    est = finding.estimate
    if est is None:
        return None
    parts = [f"params {fmt_int(est.params_before)} -> {fmt_int(est.params_after)}"]
    if est.macs_before is not None and est.macs_after is not None:
        parts.append(f"MACs {fmt_int(est.macs_before)} -> {fmt_int(est.macs_after)}")
        parts[-1] += change_ratio(est.macs_before, est.macs_after)
    elif est.macs_per_output_pixel is not None:
        before, after = est.macs_per_output_pixel, est.macs_per_output_pixel_after
        parts.append(f"MACs per output pixel {fmt_int(before)} -> {fmt_int(after)}")
    if "channels_before" in est.extra:
        parts.insert(
            0,
            f"concat channels {est.extra['channels_before']} -> {est.extra['channels_after']}",
        )
    return ", ".join(parts)


def summary(reports: Sequence[ModelReport]) -> dict[str, Any]:
    """The counts of a report: models, findings (by code), unreadable models, and the findings'
    fixes by applicability (every applicability present, zero or not)."""
    by_code = Counter(f.code for r in reports for f in r.findings)
    fixes = Counter(f.fix.applicability for r in reports for f in r.findings if f.fix)
    return {
        "models": len(reports),
        "findings": sum(by_code.values()),
        "by_code": dict(sorted(by_code.items())),
        "errors": sum(1 for r in reports if r.error),
        "fixes": {a.value: fixes[a] for a in Applicability},
    }


def error_title(report: ModelReport) -> str:
    """What a model's error is: a rule that raised on it (the other rules' findings are still
    reported) or a model that could not be read."""
    return "rule failed" if report.failed_rules else "model not readable"


def error_counts(reports: Sequence[ModelReport], separator: str = ", ") -> str:
    """``, 1 model could not be read, a rule failed on 1 model`` (empty without errors)."""
    broken = sum(1 for r in reports if r.error and r.failed_rules)
    unreadable = sum(1 for r in reports if r.error) - broken
    text = f"{separator}{plural(unreadable, 'model')} could not be read" if unreadable else ""
    return text + (f"{separator}a rule failed on {plural(broken, 'model')}" if broken else "")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
