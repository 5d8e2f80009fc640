"""Stage 6 for `convlint rules`, `convlint rule` and `convlint schema`: the rules' documentation
and the reports' JSON Schemas, as text or JSON.

These commands answer from the rule catalog (``registry.load_catalog``) and the schemas shipped
in the package, so they never import onnx.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from convlint.errors import UsageError, did_you_mean
from convlint.registry import Registry, Rule
from convlint.tables import table

SCHEMAS = ("check", "fix", "stats")


def rule_dict(rule: Rule) -> dict[str, Any]:
    """A rule as ``rule --format json`` writes it (ruff's fields where they apply)."""
    return {
        "code": rule.code,
        "name": rule.name,
        "severity": rule.severity.value,
        "fix": rule.fix,
        "fixes": [applicability.value for applicability in rule.fixes],
        "summary": rule.summary,
        "options": dict(rule.options),
        "origin": rule.origin,
        "explanation": explanation(rule),
    }


def explanation(rule: Rule) -> str:
    """The rule's documentation without the title line its docstring starts with."""
    doc = rule.doc.strip()
    if doc.startswith(rule.code):  # the docstring's title line repeats the header
        doc = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
    return doc or rule.summary


def rule_text(rule: Rule) -> str:
    header = f"# {rule.name} ({rule.code})\n\n"
    meta = f"Default severity: {rule.severity.value}. Fix: {rule.fix_text}.\n"
    meta += "".join(f"A fix that is {a.value} is {a.applied}.\n" for a in rule.fixes)
    if rule.options:
        options = ", ".join(f"`{k}` = {v!r}" for k, v in rule.options.items())
        meta += f"Options: {options}.\n"
    return header + meta + "\n" + explanation(rule) + "\n"


def find_rule(registry: Registry, wanted: str) -> Rule:
    """A rule by code (any case) or by name; a mistyped one is refused with the closest."""
    rule = registry.get(wanted) or next((r for r in registry if r.name == wanted.lower()), None)
    if rule is None:
        names = [*registry.codes(), *(r.name for r in registry)]
        raise UsageError(
            f"unknown rule {wanted!r}{did_you_mean(wanted, names)} "
            f"(rules: {', '.join(registry.codes())})"
        )
    return rule


def render_rules(registry: Registry, format: str) -> str:
    """`convlint rules`: a table, or a JSON list of every rule."""
    if format == "json":
        return json.dumps([rule_dict(rule) for rule in registry], indent=2) + "\n"
    rows = [[r.code, r.name, r.severity.value, r.fix_text, r.summary] for r in registry]
    return table(["code", "name", "severity", "fix", "summary"], rows, set()) + "\n"


def render_rule(registry: Registry, code: str | None, every: bool, format: str) -> str:
    """`convlint rule CODE|NAME` and `convlint rule --all`, as Markdown text or JSON."""
    if every == (code is not None):
        raise UsageError("rule takes a rule's CODE or NAME, or --all (e.g. convlint rule CL001)")
    rules = list(registry) if every else [find_rule(registry, str(code))]
    if format == "json":
        document: Any = [rule_dict(rule) for rule in rules] if every else rule_dict(rules[0])
        return json.dumps(document, indent=2) + "\n"
    return "\n".join(rule_text(rule) for rule in rules)


def schema_text(report: str) -> str:
    """The JSON Schema of a report (``check``, ``fix``, ``stats``), as shipped in the package."""
    if report not in SCHEMAS:
        raise UsageError(f"no schema {report!r}{did_you_mean(report, SCHEMAS)}")
    return (resources.files("convlint.schemas") / f"{report}.schema.json").read_text("utf-8")
