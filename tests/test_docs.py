"""Rule docs are complete and in the fixed sections (as ruff's check_docs_formatted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convlint.errors import ConvlintError
from convlint.findings import Severity
from convlint.registry import CODE_PATTERN, DOC_SECTIONS, Registry, Rule, load_registry

RULES = list(load_registry(plugins=False))
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_docstring_has_every_section_in_order(rule: Rule) -> None:
    headings = re.findall(r"^## (.+)$", rule.doc, flags=re.MULTILINE)
    assert headings == list(DOC_SECTIONS)
    assert rule.doc.startswith(f"{rule.code} {rule.name}\n")
    assert "Use instead:" in rule.doc
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", rule.doc)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_module_is_named_for_the_rule(rule: Rule) -> None:
    module = ROOT / "rules" / (rule.name.replace("-", "_") + ".py")
    assert module.is_file()
    assert CODE_PATTERN.match(rule.code)


def test_readme_lists_every_rule() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for rule in RULES:
        assert f"`{rule.code}`" in readme and rule.name in readme


def test_registry_refuses_duplicates_and_malformed_rules() -> None:
    rule = RULES[0]
    with pytest.raises(ConvlintError, match="already taken"):
        Registry([rule, rule])
    renamed = Rule(**{**rule.__dict__, "code": "XX1"})
    with pytest.raises(ConvlintError, match="name 'wide-conv-without-reduction' is already taken"):
        Registry([rule, renamed])
    for field, value, message in (
        ("code", "cl-1", "must match"),
        ("name", "Not Kebab", "not kebab-case"),
        ("severity", "loud", "severity"),
        ("fix", "maybe", "fix must be"),
    ):
        bad = Rule(**{**rule.__dict__, field: value})
        with pytest.raises(ConvlintError, match=message):
            Registry([bad])
    assert Severity.WARNING.rank > Severity.INFO.rank
