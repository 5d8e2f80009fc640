"""Stage 6: render reports. A reporter formats what the engine found; it never reads the graph.

One module per format (``text``, ``json_report``, ``sarif``, ``junit``, ``markdown``,
``github``, ``gitlab``), as ruff's ``message/`` has one emitter per format; ``RENDERERS`` is the
table of formats. The formats other than text and JSON are imported when first used;
``statistics`` renders ``check --statistics``. ``STREAMED`` lists the formats `check` prints
model by model as the models are done, each rendered in parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Protocol

from convlint.findings import ModelReport
from convlint.registry import Registry
from convlint.reporters.common import SCHEMA_VERSION, describe_estimate, fmt_int, plural, summary
from convlint.reporters.json_report import render_json
from convlint.reporters.text import render_text, render_text_model, render_text_tail, use_color


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


@dataclass(frozen=True)
class Streamed:
    """A format printed model by model as the models are checked: each model's part
    (``model(report, registry, verbose, color)``), then the tail (``tail(reports, color)``);
    the whole document is exactly their concatenation, so nothing printed is cut from it."""

    model: Callable[[ModelReport, Registry, bool, bool], str]
    tail: Callable[[Sequence[ModelReport], bool], str]


def _github_model(report: ModelReport, registry: Registry, verbose: bool, color: bool) -> str:
    from convlint.reporters.github import render_github_model

    return render_github_model(report, registry, verbose)


STREAMED: dict[str, Streamed] = {
    "text": Streamed(render_text_model, render_text_tail),
    "github": Streamed(_github_model, lambda reports, color: ""),
}


__all__ = [
    "RENDERERS",
    "STREAMED",
    "SCHEMA_VERSION",
    "Renderer",
    "Streamed",
    "describe_estimate",
    "fmt_int",
    "plural",
    "render_json",
    "render_text",
    "summary",
    "use_color",
]
