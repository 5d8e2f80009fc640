"""Stage 6: render reports. A reporter formats what the engine found; it never reads the graph.

One module per format (``text``, ``json_report``, ``sarif``, ``junit``, ``markdown``,
``github``, ``gitlab``), as ruff's ``message/`` has one emitter per format; ``RENDERERS`` is the
table of formats. The formats other than text and JSON are imported when first used;
``statistics`` renders ``check --statistics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from typing import Protocol

from convlint.findings import ModelReport
from convlint.registry import Registry
from convlint.reporters.common import SCHEMA_VERSION, describe_estimate, fmt_int, plural, summary
from convlint.reporters.json_report import render_json
from convlint.reporters.text import render_text, use_color


class Renderer(Protocol):
    """A format: the reports in, the document out. ``verbose`` adds notes and what the rules
    passed over where the format has a place for them."""

    def __call__(
        self, reports: Sequence[ModelReport], registry: Registry, verbose: bool = False
    ) -> str: ...


def _lazy(module: str, function: str) -> Renderer:
    """A renderer from its own module (``reporters/<format>.py``), imported when first used."""

    def render(reports: Sequence[ModelReport], registry: Registry, verbose: bool = False) -> str:
        renderer: Renderer = getattr(import_module(f"convlint.reporters.{module}"), function)
        return renderer(reports, registry, verbose=verbose)

    return render


RENDERERS: dict[str, Renderer] = {
    "text": render_text,
    "json": render_json,
    "sarif": _lazy("sarif", "render_sarif"),
    "junit": _lazy("junit", "render_junit"),
    "markdown": _lazy("markdown", "render_markdown"),
    "github": _lazy("github", "render_github"),
    "gitlab": _lazy("gitlab", "render_gitlab"),
}


__all__ = [
    "RENDERERS",
    "SCHEMA_VERSION",
    "Renderer",
    "describe_estimate",
    "fmt_int",
    "plural",
    "render_json",
    "render_text",
    "summary",
    "use_color",
]
