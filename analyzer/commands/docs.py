"""Commands layer: `convlint rules`, `convlint rule CODE` and `convlint schema REPORT` (the
documentation and schemas themselves are ``convlint.ruledoc``'s)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from convlint.output import emit

if TYPE_CHECKING:
    from convlint.registry import Registry


def cmd_rules(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import render_rules

    emit(render_rules(registry, args.format), None)
    return 0


def cmd_rule(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import render_rule

    emit(render_rule(registry, args.code, args.all, args.format), None)
    return 0


def cmd_schema(args: argparse.Namespace, registry: Registry) -> int:
    from convlint.ruledoc import schema_text

    emit(schema_text(args.report), None)
    return 0
