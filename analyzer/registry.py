"""One table from code to rule: the built-in rules and those of plugins.

Third-party rules register a ``Rule`` object under the entry-point group ``convlint.rules``
(as flake8's ``flake8.extension``); they are validated exactly like built-ins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal, get_args

from convlint.errors import ConvlintError, UsageError, did_you_mean, shown
from convlint.findings import Applicability, Finding, Severity

if TYPE_CHECKING:
    import ast

# A rule's check: ``check(ctx: convlint.engine.RuleContext) -> Iterator[Finding]``. The context
# is typed where it is made (the engine, above this table), so the table imports no stage.
Check = Callable[[Any], Iterator[Finding]]
# How `convlint fix` rewrites a rule's findings, declared by the rule beside its check (as an
# onnxscript rewrite owns its replacement); whether `fix` can rewrite them follows from it. A
# planner ``rewrite(finding, context) -> Target`` (``context``: convlint.rewrite.plan's
# ``RewriteContext``; ``Target``: the protocol of convlint.rewrite.edit) that reads what the
# check matched from ``finding.binding``, as a plugin ships it; or, for a built-in rule, the
# type of the bindings its findings carry, whose planner the fix layer holds (rules sit below
# it and may not import it).
Rewrite = type | Callable[[Finding, Any], Any]

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
# Whether `convlint fix` can rewrite a rule's findings (ruff's FixAvailability).
FixAvailability = Literal["always", "sometimes", "never"]
FIX_AVAILABILITIES: tuple[FixAvailability, ...] = get_args(FixAvailability)
# Selectors: a code, a prefix of codes, or ALL. Every rule runs unless the configuration or
# the command line selects fewer (ruff's default is its own set; convlint's rules are few).
ALL = "ALL"
DEFAULT_SELECT: tuple[str, ...] = (ALL,)


@dataclass(frozen=True)
class Rule:
    """A rule's metadata beside its check."""

    code: str
    name: str
    severity: Severity
    fix: FixAvailability  # whether `convlint fix` can rewrite its findings
    summary: str
    check: Check
    options: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    origin: str = "convlint"
    # The applicabilities of the fixes its findings offer where `convlint fix` rewrites them
    # (display-only ones aside); tests/test_applicability.py checks the findings keep to it.
    fixes: tuple[Applicability, ...] = ()
    # Its rewrite (see ``Rewrite``); None where `convlint fix` never rewrites its findings.
    rewrite: Rewrite | None = None

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
        if self.fix not in FIX_AVAILABILITIES:
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
        if self.rewrite is not None and not callable(self.rewrite):
            raise ConvlintError(f"{where}: {self.code} rewrite is not callable")
        if (self.fix == "never") != (self.rewrite is None):
            declared = "declares a rewrite" if self.rewrite is not None else "has no rewrite"
            raise ConvlintError(f"{where}: {self.code} fix is {self.fix}, but it {declared}")
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
            if selector != ALL and not any(code.startswith(selector) for code in codes):
                hint = did_you_mean(selector, codes)
                raise UsageError(
                    f"{where}: {shown(selector)} matches no rule{hint} (rules: {', '.join(codes)})"
                )
        return list(selectors)


def _plugin_rules() -> Iterator[Rule]:
    from convlint.distributions import declares_entry_points

    if not declares_entry_points(ENTRY_POINT_GROUP):
        return  # importlib.metadata costs tens of milliseconds to import
    from importlib import metadata

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


def load_catalog(plugins: bool = True) -> Registry:
    """The registry as ``rules``, ``rule`` and ``--help`` need it, without importing onnx: each
    built-in rule's metadata is read from its module's source (the literal arguments of its
    ``RULE = Rule(...)``, the module docstring as ``doc``), and its check imports the module
    when first called. A module whose ``RULE`` is not all literals is imported instead; a test
    holds the catalog equal to ``load_registry()``. Plugins load as in ``load_registry``."""
    registry = Registry()
    for module_name in BUILTIN_MODULES:
        registry.add(_read_rule(module_name) or import_module(module_name).RULE)
    if plugins:
        for rule in _plugin_rules():
            registry.add(rule)
    return registry


def _read_rule(module_name: str) -> Rule | None:
    import ast
    from importlib.util import find_spec

    spec = find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    try:
        with open(spec.origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    call = next(
        (
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["RULE"]
            and isinstance(node.value, ast.Call)
        ),
        None,
    )
    if call is None or call.args:
        return None
    fields: dict[str, Any] = {}
    try:
        for keyword in call.keywords:
            value = keyword.value
            if keyword.arg == "check":
                fields["check"] = _deferred_check(module_name)
            elif keyword.arg == "rewrite" and not isinstance(value, ast.Constant):
                fields["rewrite"] = _deferred_rewrite(module_name)
            elif keyword.arg == "doc":
                fields["doc"] = ast.get_docstring(tree, clean=False) or ""
            else:
                fields[str(keyword.arg)] = _literal(value)
        return Rule(**fields)
    except (TypeError, KeyError, ValueError):  # not literals: the module is imported instead
        return None


def _literal(node: ast.expr) -> Any:
    """A literal, or a member of Severity or Applicability (``Severity.WARNING``), or a tuple
    of them; anything else raises ValueError."""
    import ast

    enums: dict[str, Any] = {"Severity": Severity, "Applicability": Applicability}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id in enums:
            return enums[node.value.id][node.attr]
        raise ValueError(node.value.id)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item) for item in node.elts)
    return ast.literal_eval(node)


def _deferred_rewrite(module_name: str) -> Rewrite:
    """A catalog rule's rewrite stands for the one its module declares: the catalog says
    whether a rule has one; `fix` plans with ``load_registry``'s rules, which hold their own."""

    def rewrite(finding: Finding, context: Any) -> Any:
        raise ConvlintError(
            f"{finding.code}: the rule catalog does not plan rewrites; load_registry's "
            f"{module_name} does"
        )

    return rewrite


def _deferred_check(module_name: str) -> Check:
    def check(ctx: Any) -> Iterator[Finding]:
        rule: Rule = import_module(module_name).RULE
        return rule.check(ctx)

    return check
