"""The JSON report (`--format json`): the stable document of the contract.

Every JSON report convlint writes (``check``, ``fix``, ``stats``) carries ``schema_version``
at the top level, raised on any incompatible change; ``schemas/`` in the repository holds the
JSON Schema of each, and the tests validate real output against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convlint.findings import ModelReport
from convlint.registry import Registry
from convlint.reporters.common import SCHEMA_VERSION, json_text, summary
from convlint.version import __version__


def model_dict(report: ModelReport, verbose: bool = False) -> dict[str, Any]:
    """A model object; with ``verbose``, also what the rules passed over and the notes."""
    data = report.as_dict()
    # Findings the model's own convlint.ignore metadata silenced, listed so none goes unseen
    # (the key only where there are some, or with --verbose, as the contract's object is).
    if report.suppressed or verbose:
        data["suppressed"] = [finding.as_dict() for finding in report.suppressed]
    if verbose:
        data["skipped"] = [
            {"code": skip.code, "node": skip.node, "reason": skip.reason} for skip in report.skips
        ]
        data["notes"] = list(report.notes)
    return data


def check_document(reports: Sequence[ModelReport], verbose: bool = False) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "convlint", "version": __version__},
        "models": [model_dict(r, verbose) for r in reports],
        "summary": summary(reports),
    }


def render_json(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
    return json_text(check_document(reports, verbose))
