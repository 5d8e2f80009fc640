"""Configuration from ``[tool.convlint]`` in the nearest pyproject.toml, or convlint.toml.

As in ruff, the configuration of a model is found from the model's folder upwards, so a
repository of different models can keep one file per folder; globs in it (``exclude``,
``per-file-ignores``, ``input-shapes``) are matched against the model's path relative to the
configuration file's folder, and a glob without a ``/`` also against the file name alone.
In each folder ``.convlint.toml`` is looked for first, then ``convlint.toml``, then a
``pyproject.toml`` with a ``[tool.convlint]`` table (ruff's order). ``extend = "PATH"`` reads
another configuration first (relative to the file that names it) and overrides its keys;
``--config KEY=VALUE`` overrides the keys of whichever file applies.

Trust, as git's ``safe.directory``: a file the search finds is ignored, with a one-line note on
stderr, when it (or, for a symbolic link, the link or its target) is owned by a user other than
the one running convlint or root, or when it is a symbolic link whose target lies outside the
folder that holds the link: a shared ``/tmp`` or a multi-user machine cannot silence findings
below it. A file named by ``--config`` or ``extend`` is read as named. Values from a file are
quoted in messages at most :data:`~convlint.errors.SHOWN_CHARACTERS` long.
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from convlint.errors import UsageError, did_you_mean, printable, shown
from convlint.findings import Severity
from convlint.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_LEVEL_KEYS = (
    "extend",
    "select",
    "extend-select",
    "ignore",
    "fail-on",
    "exclude",
    "extend-exclude",
    "per-file-ignores",
    "per-node-ignores",
    "rules",
    "input-shape",
    "input-shapes",
)
# The lowest severity that fails a run (`--fail-on`, `fail-on`).
FailOn = Literal["error", "warning", "info", "never"]
FAIL_ON: tuple[FailOn, ...] = get_args(FailOn)
DEFAULT_FAIL_ON: FailOn = "warning"
MAX_INTEGER = (1 << 63) - 1  # an option's integers are counts ONNX stores as int64
SEVERITIES = tuple(severity.value for severity in Severity)  # a rule's `severity` option


CONFIG_NAMES = (".convlint.toml", "convlint.toml")  # then pyproject.toml, as ruff


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """The loader's ``NAME=1x3x224x224`` parser, imported when a configuration has shapes
    (the loader imports onnx, which ``--help`` and ``rules`` do without)."""
    from convlint.loader import parse_input_shape as parse

    return parse(text)


Note = Callable[[str], None]


def note_on_stderr(text: str) -> None:
    print(printable(f"convlint: warning: {text}"), file=sys.stderr)


def current_uid() -> int | None:
    """The user running convlint (its effective uid), or None where the system has no uids."""
    geteuid = getattr(os, "geteuid", None)
    return int(geteuid()) if geteuid is not None else None


def distrust(candidate: Path) -> str | None:
    """Why a configuration file the search found is not to be read, or None to read it."""
    uid = current_uid()
    try:
        owners = {candidate.lstat().st_uid, candidate.stat().st_uid}
    except OSError:
        return None  # gone meanwhile: reading it names the problem
    if uid is not None:
        for owner in sorted(owners):
            if owner not in (uid, 0):
                return f"owned by another user (uid {owner}), not by you (uid {uid}) or root"
    if candidate.is_symlink():
        folder = candidate.parent.resolve()
        target = candidate.resolve()
        if not target.is_relative_to(folder):
            return f"a symbolic link to {target}, outside {folder}"
    return None


def find_config(start: Path, note: Note = note_on_stderr) -> Path | None:
    """The nearest .convlint.toml, convlint.toml, or pyproject.toml with a [tool.convlint]
    table, upwards; a file :func:`distrust` refuses is passed over with a ``note``."""
    for folder in [start, *start.parents]:
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                why = distrust(candidate)
                if why is None:
                    return candidate
                note(f"ignoring {candidate}: {why}")
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            why = distrust(candidate)
            if why is not None:  # not parsed: noted if it looks like it configures convlint
                if _mentions_convlint(candidate):
                    note(f"ignoring {candidate}: {why}")
                continue
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):  # not TOML, not UTF-8, too deep
                continue
            tool = data.get("tool", {})
            if isinstance(tool, dict) and "convlint" in tool:
                return candidate
    return None


def _mentions_convlint(path: Path, limit: int = 1 << 20) -> bool:
    """Whether the first ``limit`` bytes of an untrusted pyproject.toml name convlint (it is
    never parsed: another user's file of any size must not cost the user its reading)."""
    try:
        with open(path, "rb") as handle:
            return b"convlint" in handle.read(limit)
    except OSError:
        return False


def read_config(path: Path) -> dict[str, Any]:
    """The convlint table of a config file; convlint.toml may use [tool.convlint] or top level."""
    if path.exists() and not path.is_file():
        # A FIFO or a device would block or never end: only a regular file is read.
        raise UsageError(f"{path}: not a regular file, cannot be a config file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        raise UsageError(f"{path}: invalid TOML: an integer too long to read") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid TOML: nested too deeply") from None
    tool = data.get("tool", {})
    table = tool.get("convlint") if isinstance(tool, dict) else None
    if table is None and path.name != "pyproject.toml":
        table = {k: v for k, v in data.items() if k != "tool"}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.convlint] must be a table, got {shown(table)}")
    return dict(table)


def load_config(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``read_config`` with ``extend`` followed: the extended file's table (itself maybe
    extending another) under this one's keys. As in ruff, ``extend-select`` and
    ``extend-exclude`` add up along the chain, ``[rules.CODE]`` tables merge option by
    option, and every other key of the extending file replaces the extended one's."""
    table = read_config(path)
    base = table.pop("extend", None)
    if base is None:
        return table
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path}: [tool.convlint] extend: expected a path, got {shown(base)}")
    try:
        target = (path.parent / Path(base).expanduser()).resolve()
        exists = target.exists()
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a loop, a NUL
        problem = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(
            f"{path}: [tool.convlint] extend: {shown(base, quote=False)}: {problem}"
        ) from None
    if target in chain or target == path.resolve():
        raise UsageError(
            f"{path}: [tool.convlint] extend: {shown(base, quote=False)} extends itself (a cycle)"
        )
    if not exists:
        raise UsageError(
            f"{path}: [tool.convlint] extend: {shown(base, quote=False)}: no such file"
        )
    return merge_tables(load_config(target, (*chain, path.resolve())), table)


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s keys over ``base``'s (``extend``, ``--config KEY=VALUE``)."""
    merged = dict(base)
    for key, value in over.items():
        if key in ("extend-select", "extend-exclude") and key in merged:
            merged[key] = [*_as_list(merged[key]), *_as_list(value)]
        elif key == "rules" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            rules = dict(merged[key])
            for code, options in value.items():
                before = rules.get(code)
                if isinstance(before, dict) and isinstance(options, dict):
                    rules[code] = {**before, **options}
                else:
                    rules[code] = options
            merged[key] = rules
        else:
            merged[key] = value
    return merged


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def parse_override(text: str) -> dict[str, Any]:
    """``--config KEY=VALUE`` as a table: the pair is TOML (``select = ["CL001"]``,
    ``rules.CL001.min-channels = 64``); a value that is not TOML is taken as a string
    (``fail-on=info``)."""
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or not _:
        raise UsageError(f"--config {shown(text, quote=False)}: expected a file or KEY=VALUE")
    try:
        return dict(tomllib.loads(f"{key} = {value.strip()}"))
    except ValueError:  # not TOML (or an integer too long to read): a string
        pass
    try:
        return dict(tomllib.loads(f"{key} = {_toml_string(value.strip())}"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"--config {shown(text, quote=False)}: not a TOML KEY = VALUE pair: {exc}"
        ) from None


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _codes(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: expected a list of rule codes or prefixes, got {shown(value)}")
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
        raise UsageError(f"{where}: expected {kind}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: must be a finite number, got {shown(value)}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        raise UsageError(f"{where}: must be positive, got {shown(value)}")
    if isinstance(value, int) and value > MAX_INTEGER:
        raise UsageError(f"{where}: must be at most {MAX_INTEGER} (2**63 - 1), got {shown(value)}")
    return value


def validate_config(table: Mapping[str, Any], registry: Registry, source: str) -> dict[str, Any]:
    """Check every key and value; unknown keys list what is valid."""
    settings: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [tool.convlint] {key}"
        if key not in TOP_LEVEL_KEYS:
            raise UsageError(
                f"{source}: unknown key {shown(key)} in [tool.convlint]"
                f"{did_you_mean(key, TOP_LEVEL_KEYS)} (valid: {', '.join(TOP_LEVEL_KEYS)})"
            )
        if key == "extend":  # followed by load_config before validation
            continue
        if key in ("select", "extend-select", "ignore"):
            settings[key] = registry.known_selectors(_codes(value, where), where)
        elif key in ("exclude", "extend-exclude"):
            settings[key] = _globs(value, where)
        elif key in ("per-file-ignores", "per-node-ignores"):
            settings[key] = _glob_codes(value, registry, where, key.split("-")[1])
        elif key == "input-shapes":
            settings[key] = _input_shape_tables(value, where)
        elif key == "fail-on":
            if value not in FAIL_ON:
                raise UsageError(f"{where}: {shown(value)} is not one of {', '.join(FAIL_ON)}")
            settings[key] = value
        elif key in ("per-file-ignores", "per-node-ignores"):
            settings[key] = _glob_codes(value, registry, where, key.split("-")[1])
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


def _glob_codes(value: Any, registry: Registry, where: str, what: str) -> dict[str, list[str]]:
    """A table of glob = [codes] (``what``: "file" for path globs, "node" for node names)."""
    if not isinstance(value, dict):
        glob = "path glob" if what == "file" else "node-name glob"
        raise UsageError(f"{where}: expected a table of {glob} = [codes]")
    return {
        glob: registry.known_selectors(
            _codes(codes, f"{where}.{shown(glob, quote=False)}"),
            f"{where}.{shown(glob, quote=False)}",
        )
        for glob, codes in value.items()
    }


def _globs(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{where}: expected a list of path globs, got {shown(value)}")
    return list(value)


def _input_shape_tables(value: Any, where: str) -> dict[str, dict[str, tuple[int, ...]]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UsageError(f'{where}: expected tables of path glob = {{input = "1x3x224x224"}}')
    tables: dict[str, dict[str, tuple[int, ...]]] = {}
    for glob, shapes in value.items():
        try:
            tables[glob] = dict(parse_input_shape(f"{n}={s}") for n, s in shapes.items())
        except ValueError as exc:
            raise UsageError(
                f"{where}.{shown(glob)}: {str(exc).replace('--input-shape ', '')}"
            ) from None
    return tables


def path_matches(path: Path, root: Path, pattern: str) -> bool:
    """Whether ``pattern`` matches ``path`` relative to ``root`` (the configuration's folder),
    or, for a pattern without ``/``, the file name alone."""
    try:
        relative = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        relative = path.as_posix()
    if fnmatch.fnmatchcase(relative, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(path.name, pattern)


@dataclass(frozen=True)
class Configuration:
    """One validated configuration file (or none: the defaults) and where it lies."""

    path: Path | None = None
    table: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def _matching(self, key: str, model: Path) -> list[Any]:
        return [
            value
            for pattern, value in self.table.get(key, {}).items()
            if path_matches(model, self.root, pattern)
        ]

    def excluded(self, model: Path) -> bool:
        """``exclude`` (replacing the default, none) plus ``extend-exclude`` name the model."""
        patterns = [*self.table.get("exclude", []), *self.table.get("extend-exclude", [])]
        return any(path_matches(model, self.root, pattern) for pattern in patterns)

    def file_ignores(self, model: Path) -> list[str]:
        """Codes ``per-file-ignores`` ignores for this model."""
        return [code for codes in self._matching("per-file-ignores", model) for code in codes]

    def input_shapes(self, model: Path) -> dict[str, tuple[int, ...]]:
        """``input-shape`` for every model, then ``input-shapes`` whose glob names this one."""
        shapes = dict(self.table.get("input-shape", {}))
        for table in self._matching("input-shapes", model):
            shapes.update(table)
        return shapes


class ConfigFinder:
    """The configuration of each model, found from its folder upwards (each file read and
    validated once), or the one ``--config`` names for every model."""

    def __init__(
        self,
        registry: Registry,
        explicit: Path | None = None,
        overrides: Sequence[str] = (),
        note: Note = note_on_stderr,
    ) -> None:
        self.registry = registry
        self.explicit = explicit
        self._note = note
        self._noted: set[str] = set()
        # ``--config KEY=VALUE`` pairs, in order, each checked now so that a bad one is named.
        self.overrides: dict[str, Any] = {}
        for text in overrides:
            pair = parse_override(text)
            validate_config(pair, registry, f"--config {shown(text, quote=False)}")
            self.overrides = merge_tables(self.overrides, pair)
        self._by_file: dict[Path | None, Configuration] = {}
        self._by_folder: dict[Path, Path | None] = {}

    def for_model(self, model: Path) -> Configuration:
        if self.explicit is not None:
            source: Path | None = self.explicit
        else:
            folder = model.resolve().parent
            if folder not in self._by_folder:
                self._by_folder[folder] = find_config(folder, self._note_once)
            source = self._by_folder[folder]
        if source not in self._by_file:
            raw = load_config(source) if source is not None else {}
            where = str(source) if source is not None else "--config"
            table = validate_config(merge_tables(raw, self.overrides), self.registry, where)
            self._by_file[source] = Configuration(source, table)
        return self._by_file[source]

    def _note_once(self, text: str) -> None:
        if text not in self._noted:  # each model's folder searches the same parents
            self._noted.add(text)
            self._note(text)


def _rule_tables(value: Any, registry: Registry, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise UsageError(f"{source}: [tool.convlint.rules] must be a table of rule codes")
    tables: dict[str, dict[str, Any]] = {}
    for code, options in value.items():
        rule = registry.get(code)
        if rule is None:
            raise UsageError(
                f"{source}: unknown rule {shown(code)} in [tool.convlint.rules]"
                f"{did_you_mean(code, registry.codes())} (rules: {', '.join(registry.codes())})"
            )
        if not isinstance(options, dict):
            raise UsageError(f"{source}: [tool.convlint.rules.{code}] must be a table")
        valid = ["severity", *rule.options]
        checked: dict[str, Any] = {}
        for name, option in options.items():
            where = f"{source}: [tool.convlint.rules.{rule.code}] {name}"
            if name == "severity":
                if option not in SEVERITIES:
                    raise UsageError(
                        f"{where}: {shown(option)} is not one of {', '.join(SEVERITIES)}"
                    )
                checked[name] = option
            elif name in rule.options:
                checked[name] = _check_type(option, rule.options[name], where)
            else:
                raise UsageError(
                    f"{source}: unknown option {shown(name)} for {rule.code}"
                    f"{did_you_mean(name, valid)} (valid: {', '.join(valid)})"
                )
        tables[rule.code] = checked
    return tables
