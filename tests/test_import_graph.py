"""The agent, the lab and the shared code import one way: no module circles back to itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Source folders checked here, as import package names under ``polyfleet``.
PACKAGES = ("agent", "simulator", "shared")
#: What each package may import of the others (style: agent and controller import shared,
#: shared imports neither; the lab is its own world of devices on loopback).
ALLOWED = {
    "agent": {"agent", "shared"},
    "simulator": {"simulator", "shared"},
    "shared": {"shared"},
}


def _modules() -> dict[str, Path]:
    """``polyfleet.agent.drivers.base`` -> its file, for every module of :data:`PACKAGES`."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["polyfleet", *parts])] = path
    return found


def _imported_names(module: str, path: Path) -> set[str]:
    """Every module name ``module`` imports anywhere: top level, functions, TYPE_CHECKING.

    An import that only type checkers run is still an arrow between two modules: a
    circle drawn with it is as much a circle as one Python would trip over.
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # ``from package import module`` imports that module too.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of :data:`PACKAGES` it makes Python run when imported.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those
    packages count as imported too, except the importer's own enclosing packages
    (those have already started running by the time it runs).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        targets: set[str] = set()
        for name in _imported_names(module, path):
            parts = name.split(".")
            for i in range(2, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate not in own_packages:
                    targets.add(candidate)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as ``[a, b, ..., a]``, or None when the graph has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = pending.pop(0)
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt in done:
                continue
            path.append(nxt)
            on_path.add(nxt)
            stack.append((nxt, sorted(graph[nxt])))
    return None


def test_import_graph_of_agent_lab_and_shared_has_no_cycles() -> None:
    """No module of agent/, simulator/ or shared/ imports, step by step, itself again."""
    graph = import_graph()
    assert "polyfleet.agent.config" in graph and "polyfleet.simulator.device" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_layers_allow(package: str) -> None:
    """agent and the lab import only themselves and shared (never the controller or the demo)."""
    wrong: list[str] = []
    for module, path in _modules().items():
        if module.split(".")[1] != package:
            continue
        for name in _imported_names(module, path):
            parts = name.split(".")
            if parts[0] == "polyfleet" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "; ".join(sorted(wrong))


def test_cycle_finder_reports_a_circle() -> None:
    """The checker itself sees a circle through a package's __init__ and names its path."""
    graph = {
        "p.config": {"p.drivers"},
        "p.drivers": {"p.drivers.base"},
        "p.drivers.base": {"p.config"},
    }
    assert find_cycle(graph) == ["p.config", "p.drivers", "p.drivers.base", "p.config"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
