"""One table from code to rule: the built-in rules and those of plugins.

Third-party rules register a ``Rule`` object under the entry-point group ``convlint.rules``
(as flake8's ``flake8.extension``); they are validated exactly like built-ins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from convlint.errors import ConvlintError, UsageError
from convlint.findings import Applicability, Finding, Severity

if TYPE_CHECKING:
    from convlint.engine import RuleContext

CODE_PATTERN = re.compile(r"^[A-Z]{1,3}[0-9]{0,3}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
DOC_SECTIONS = (
    "What it does",
    "Why is this bad?",
    "Example",
    "Known problems",
    "Fix safety",
    "References",
)
BUILTIN_MODULES = (
    "convlint.rules.wide_conv_without_reduction",
    "convlint.rules.pool_branch_inflates_concat",
    "convlint.rules.linear_conv_chain",
    "convlint.rules.dense_head_on_feature_map",
    "convlint.rules.wide_expansion_by_spatial_conv",
)
ENTRY_POINT_GROUP = "convlint.rules"


@dataclass(frozen=True)
class Rule:
    """A rule's metadata beside its check."""

    code: str
    name: str
    severity: Severity
    fix: str  # "always", "sometimes" or "never": whether `convlint fix` can rewrite it
    summary: str
    check: Callable[[RuleContext], Iterator[Finding]]
    options: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    origin: str = "convlint"
    # The applicabilities of the fixes its findings offer where `convlint fix` rewrites them
    # (display-only ones aside); tests/test_applicability.py checks the findings keep to it.
    fixes: tuple[Applicability, ...] = ()

    @property
    def fix_text(self) -> str:
        """Fix availability as `convlint rules` shows it: ``sometimes (approximate)``."""
        if self.fix == "never":
            return "never (display-only)"
        if not self.fixes:
            return self.fix
        return f"{self.fix} ({', '.join(a.value for a in self.fixes)})"

    def validate(self) -> None:
        where = f"rule from {self.origin}"
        if not isinstance(self.code, str) or not CODE_PATTERN.match(self.code):
            raise ConvlintError(f"{where}: code {self.code!r} must match {CODE_PATTERN.pattern}")
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ConvlintError(f"{where}: name {self.name!r} of {self.code} is not kebab-case")
        if not isinstance(self.severity, Severity):
            raise ConvlintError(f"{where}: {self.code} severity must be a convlint Severity")
        if self.fix not in ("always", "sometimes", "never"):
            raise ConvlintError(f"{where}: {self.code} fix must be always, sometimes or never")
        if not isinstance(self.fixes, tuple) or not all(
            isinstance(a, Applicability) and a is not Applicability.DISPLAY_ONLY for a in self.fixes
        ):
            raise ConvlintError(
                f"{where}: {self.code} fixes must be a tuple of convlint Applicability values "
                "other than display-only"
            )
        if self.fix == "never" and self.fixes:
            raise ConvlintError(f"{where}: {self.code} fix is never, but it lists fixes")
        if not callable(self.check):
            raise ConvlintError(f"{where}: {self.code} check is not callable")
        if not self.summary:
            raise ConvlintError(f"{where}: {self.code} has no summary")


class Registry:
    """Rules by code; raises on a duplicate code or name."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> None:
        rule.validate()
        if rule.code in self._rules:
            other = self._rules[rule.code]
            raise ConvlintError(
                f"rule from {rule.origin}: code {rule.code} is already taken by {other.origin}"
            )
        for other in self._rules.values():
            if other.name == rule.name:
                raise ConvlintError(
                    f"rule from {rule.origin}: name {rule.name!r} is already taken by "
                    f"{other.code} ({other.origin})"
                )
        self._rules[rule.code] = rule

    def __iter__(self) -> Iterator[Rule]:
        return iter(sorted(self._rules.values(), key=lambda r: r.code))

    def __len__(self) -> int:
        return len(self._rules)

    def get(self, code: str) -> Rule | None:
        return self._rules.get(code.upper())

    def codes(self) -> list[str]:
        return sorted(self._rules)

    def known_selectors(self, selectors: Sequence[str], where: str) -> list[str]:
        """The selectors, if each (a code or a prefix; ALL for every rule) names a rule."""
        codes = self.codes()
        for selector in selectors:
            if selector != "ALL" and not any(code.startswith(selector) for code in codes):
                raise UsageError(
                    f"{where}: {selector!r} matches no rule (rules: {', '.join(codes)})"
                )
        return list(selectors)


def _plugin_rules() -> Iterator[Rule]:
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = f"plugin {entry.name!r} ({entry.value})"
        try:
            loaded = entry.load()
        except Exception as exc:
            raise ConvlintError(f"{origin}: cannot load: {type(exc).__name__}: {exc}") from None
        rules = loaded if isinstance(loaded, list | tuple) else [loaded]
        for rule in rules:
            if not isinstance(rule, Rule):
                raise ConvlintError(
                    f"{origin}: expected a convlint Rule, got {type(rule).__name__}"
                )
            yield Rule(**{**rule.__dict__, "origin": origin})


def load_registry(plugins: bool = True) -> Registry:
    registry = Registry()
    for module_name in BUILTIN_MODULES:
        module = import_module(module_name)
        registry.add(module.RULE)
    if plugins:
        for rule in _plugin_rules():
            registry.add(rule)
    return registry
