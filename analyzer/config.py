"""Configuration from ``[tool.convlint]`` in the nearest pyproject.toml, or convlint.toml."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convlint.errors import UsageError
from convlint.loader import parse_input_shape
from convlint.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_LEVEL_KEYS = ("select", "ignore", "fail-on", "per-node-ignores", "rules", "input-shape")
FAIL_ON = ("error", "warning", "info", "never")
SEVERITIES = ("info", "warning", "error")


def find_config(start: Path) -> Path | None:
    """The nearest convlint.toml, or pyproject.toml with a [tool.convlint] table, upwards."""
    for folder in [start, *start.parents]:
        candidate = folder / "convlint.toml"
        if candidate.is_file():
            return candidate
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue
            if "convlint" in data.get("tool", {}):
                return candidate
    return None


def read_config(path: Path) -> dict[str, Any]:
    """The convlint table of a config file; convlint.toml may use [tool.convlint] or top level."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    table = data.get("tool", {}).get("convlint")
    if table is None and path.name != "pyproject.toml":
        table = {k: v for k, v in data.items() if k != "tool"}
    return dict(table or {})


def _codes(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: expected a list of rule codes or prefixes, got {value!r}")
    return [v.strip().upper() for v in value if v.strip()]


def _check_type(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif default is None:
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = "a number" if default is None else type(default).__name__
        raise UsageError(f"{where}: expected {kind}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        raise UsageError(f"{where}: must be positive, got {value!r}")
    return value


def validate_config(table: Mapping[str, Any], registry: Registry, source: str) -> dict[str, Any]:
    """Check every key and value; unknown keys list what is valid."""
    settings: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [tool.convlint] {key}"
        if key not in TOP_LEVEL_KEYS:
            raise UsageError(
                f"{source}: unknown key {key!r} in [tool.convlint] "
                f"(valid: {', '.join(TOP_LEVEL_KEYS)})"
            )
        if key in ("select", "ignore"):
            settings[key] = registry.known_selectors(_codes(value, where), where)
        elif key == "fail-on":
            if value not in FAIL_ON:
                raise UsageError(f"{where}: {value!r} is not one of {', '.join(FAIL_ON)}")
            settings[key] = value
        elif key == "per-node-ignores":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: expected a table of node-name glob = [codes]")
            settings[key] = {
                glob: registry.known_selectors(_codes(codes, f"{where}.{glob}"), f"{where}.{glob}")
                for glob, codes in value.items()
            }
        elif key == "input-shape":
            if not isinstance(value, dict):
                raise UsageError(f'{where}: expected a table of input name = "1x3x224x224"')
            try:
                settings[key] = dict(parse_input_shape(f"{n}={s}") for n, s in value.items())
            except ValueError as exc:
                raise UsageError(f"{where}: {exc}") from None
        elif key == "rules":
            settings[key] = _rule_tables(value, registry, source)
    return settings


def _rule_tables(value: Any, registry: Registry, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise UsageError(f"{source}: [tool.convlint.rules] must be a table of rule codes")
    tables: dict[str, dict[str, Any]] = {}
    for code, options in value.items():
        rule = registry.get(code)
        if rule is None:
            raise UsageError(
                f"{source}: unknown rule {code!r} in [tool.convlint.rules] "
                f"(rules: {', '.join(registry.codes())})"
            )
        if not isinstance(options, dict):
            raise UsageError(f"{source}: [tool.convlint.rules.{code}] must be a table")
        valid = ["severity", *rule.options]
        checked: dict[str, Any] = {}
        for name, option in options.items():
            where = f"{source}: [tool.convlint.rules.{rule.code}] {name}"
            if name == "severity":
                if option not in SEVERITIES:
                    raise UsageError(f"{where}: {option!r} is not one of {', '.join(SEVERITIES)}")
                checked[name] = option
            elif name in rule.options:
                checked[name] = _check_type(option, rule.options[name], where)
            else:
                raise UsageError(
                    f"{source}: unknown option {name!r} for {rule.code} (valid: {', '.join(valid)})"
                )
        tables[rule.code] = checked
    return tables
