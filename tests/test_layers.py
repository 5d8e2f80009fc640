"""The house's layers, read from the installed package's imports: no import circles, and
nothing below the commands layer imports it (issue 17, part 3)."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import convlint

PACKAGES = ("convlint", "convlint.rules", "convlint.fixtures")
COMMANDS = ("convlint.cli", "convlint.commands")  # the layer above the library
# The house's layers, bottom up (README, Layout): a module imports from its own layer or those
# below it. A name stands for the module and every module under it; the longest name wins.
LAYERS = {
    "foundation": "version errors tables atomic distributions sketch findings paths registry "
    "fixtures",
    "model": "skeleton loader shapes graph view cost",
    "analysis": "engine neighbourhood baseline config rules",
    "fix": "rewrite",
    "output": "reporters rewrite.report ruledoc nodestats runner output",
    "api": "api",
    "commands": "commands cli entry __main__",
}


def _modules() -> dict[str, Path]:
    """Every module of the installed packages and its source file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        found[package] = Path(spec.origin)
        locations = list(spec.submodule_search_locations or [])
        for info in pkgutil.walk_packages(locations, f"{package}."):
            sub = importlib.util.find_spec(info.name)
            assert sub is not None and sub.origin is not None
            found.setdefault(info.name, Path(sub.origin))
    return found


def _imported(
    name: str, path: Path, modules: dict[str, Path], typing_only: bool = True
) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source: at the top, inside
    functions (imported when they run) and under ``TYPE_CHECKING`` (unless ``typing_only`` is
    False). ``from a import b`` is an import of ``a.b`` where that is a module, else of ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if not typing_only:
        for block in ast.walk(tree):
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
                skipped.update(id(inner) for inner in ast.walk(block))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return {target for target in targets if target in modules and target != name}


def _graph(typing_only: bool = True) -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        imported = _imported(name, path, modules, typing_only)
        graph.add_edges_from((name, target) for target in imported)
    return graph


@pytest.fixture(scope="module")
def imports() -> nx.DiGraph:
    return _graph()


def test_the_graph_is_read_from_the_installed_package(imports: nx.DiGraph) -> None:
    assert convlint.__file__ is not None
    # a few arrows every reader of the house knows, so that an empty graph cannot pass
    assert imports.has_edge("convlint.engine", "convlint.registry")
    assert imports.has_edge("convlint.cli", "convlint.commands")
    assert imports.has_edge("convlint.rules.wide_conv_without_reduction", "convlint.engine")
    assert {"convlint.commands.check", "convlint.output", "convlint.rewrite.options"} <= set(
        imports
    )
    assert imports.number_of_nodes() > 60 and imports.number_of_edges() > 200


def test_no_import_circles(imports: nx.DiGraph) -> None:
    cycles = sorted(" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(imports))
    assert cycles == []


def test_an_import_circle_is_found() -> None:
    """The check itself: a circle added to the graph is reported."""
    graph = _graph()
    graph.add_edge("convlint.registry", "convlint.engine")
    assert ["convlint.engine", "convlint.registry"] in [
        sorted(cycle) for cycle in nx.simple_cycles(graph)
    ]


def test_nothing_below_the_commands_imports_them(imports: nx.DiGraph) -> None:
    def commands_layer(name: str) -> bool:
        return any(name == top or name.startswith(f"{top}.") for top in COMMANDS)

    upward = sorted(
        f"{source} -> {target}"
        for source, target in imports.edges
        if commands_layer(target) and not commands_layer(source)
    )
    # convlint.entry runs the process around cli.main, and __main__ runs entry
    assert upward == ["convlint.entry -> convlint.cli"]


def test_reporters_read_reports_not_the_graph(imports: nx.DiGraph) -> None:
    """A reporter formats what the engine found (``convlint.findings.ModelReport``); it never
    imports the model's stages, and rendering imports no onnx."""
    stages = {"convlint.engine", "convlint.graph", "convlint.view", "convlint.loader"}
    reporters = sorted(name for name in imports if name.startswith("convlint.reporters"))
    assert len(reporters) == 10
    for reporter in reporters:
        assert not set(imports.successors(reporter)) & stages, reporter
    code = f"import sys; import {', '.join(reporters)}; print(sorted(sys.modules.keys() & {{'onnx', 'numpy', 'convlint.engine'}}))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout == "[]\n"


def _layer(name: str) -> int:
    if name == "convlint":  # the package: its API, looked up on first use
        return list(LAYERS).index("api")
    found = [
        (len(prefix), index)
        for index, names in enumerate(LAYERS.values())
        for prefix in (f"convlint.{part}" for part in names.split())
        if name == prefix or name.startswith(f"{prefix}.")
    ]
    assert found, f"{name} is in no layer of LAYERS: say where it belongs"
    return max(found)[1]


def test_every_import_runs_down_the_layers() -> None:
    """A stage imports only what is below it (STYLE.md, Layers); imports made for type
    annotations alone (``TYPE_CHECKING``) are not counted here, the circles test counts them."""
    graph = _graph(typing_only=False)
    names = list(LAYERS)
    upward = sorted(
        f"{source} ({names[_layer(source)]}) -> {target} ({names[_layer(target)]})"
        for source, target in graph.edges
        if _layer(target) > _layer(source)
    )
    assert upward == []
    assert names[_layer("convlint.rewrite.report")] == "output"  # the longest name wins
    assert names[_layer("convlint.rewrite.plan")] == "fix"
    assert graph.has_edge("convlint.runner", "convlint.reporters")  # within a layer: allowed
    assert not graph.has_edge("convlint.findings", "convlint.cost")  # an annotation only
