"""The JSON report (`--format json`): the stable document of the contract."""

from __future__ import annotations

import json
from collections.abc import Sequence

from convlint import __version__
from convlint.engine import ModelReport
from convlint.registry import Registry
from convlint.reporters.common import summary


def render_json(reports: Sequence[ModelReport], registry: Registry) -> str:
    document = {
        "tool": {"name": "convlint", "version": __version__},
        "models": [r.as_dict() for r in reports],
        "summary": summary(reports),
    }
    return json.dumps(document, indent=2) + "\n"
