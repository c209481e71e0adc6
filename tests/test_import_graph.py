"""Imports run one way: no module circles back to itself, and the controller keeps its layers.

agent, the lab and the controller import ``shared``; ``shared`` imports none of them.

The controller is one core with three faces. Its layers, top to bottom (a module imports
modules of its own layer and of the layers below it, never above)::

    cli             controller/cli/: the admin commands (only polyfleet/cli.py loads them)
    app             app.py (create_app, serve), testing.py (a running app for tests, benchmarks)
    api | web       controller/api/ (JSON) and controller/web/ (the dashboard): side by side,
                    neither imports the other
    http            controller/http/ (what both faces share: specs, errors, caller, throttle),
                    active.py (which controller of a database serves: its middleware,
                    header, application key and endpoint, read by http/caller.py too) and
                    keys.py (the application's typed keys; it names ``Controller``, so it
                    sits above core, with the aiohttp code that reads it)
    features        controller/features/: the use cases
    core            core.py: build_controller, the one factory of store, bus and services
    services        controller/services/: what has side effects, each owning its collections
    events          events.py: the event bus (it records events in the store)
    store           controller/store/: the Store protocol and its engines
    infrastructure  config.py and settings/ (the configuration model and its sections),
                    clock.py (the time source)
    domain          controller/domain/: pure rules (tests/controller/
                    test_controller_domain_purity.py holds it to no I/O); the configuration
                    reads its constants (the rollout tick) and the clock its time helpers
    errors          errors.py: the refusal tree, a leaf every layer may raise

A module not placed in a layer here fails :func:`test_every_controller_module_has_a_layer`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Source folders checked here, as import package names under ``polyfleet``.
PACKAGES = ("agent", "simulator", "shared", "controller")
#: What each package may import of the others (style: agent and controller import shared,
#: shared imports neither; the lab is its own world of devices on loopback).
ALLOWED = {
    "agent": {"agent", "shared"},
    "simulator": {"simulator", "shared"},
    "shared": {"shared"},
    "controller": {"controller", "shared"},
}
#: The controller's layers, top to bottom: name, then the modules or packages it holds
#: (relative to ``polyfleet.controller``). Layers in one tuple stand side by side.
LAYERS: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...] = (
    (("cli", ("cli",)),),
    (("app", ("app", "testing")),),
    (("api", ("api",)), ("web", ("web",))),
    (("http", ("http", "active", "keys")),),
    (("features", ("features",)),),
    (("core", ("core",)),),
    (("services", ("services",)),),
    (("events", ("events",)),),
    (("store", ("store",)),),
    (("infrastructure", ("config", "settings", "clock")),),
    (("domain", ("domain",)),),
    (("errors", ("errors",)),),
)
#: The one module outside controller/cli/ that loads the admin commands (by name, in GROUPS).
CLI_ENTRY = "polyfleet.cli"


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


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """A source file's syntax tree (read once for all the tests of this module)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_names(module: str, path: Path) -> set[str]:
    """Every module name ``module`` imports anywhere: top level, functions, TYPE_CHECKING.

    An import that only type checkers run is still an arrow between two modules: a
    circle drawn with it is as much a circle as one Python would trip over.
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(_parsed(path)):
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


def test_import_graph_has_no_cycles() -> None:
    """No module of agent/, simulator/, shared/ or controller/ imports, step by step, itself."""
    graph = import_graph()
    assert "polyfleet.agent.config" in graph and "polyfleet.simulator.device" in graph
    assert "polyfleet.controller.keys" in graph and "polyfleet.controller.core" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_layers_allow(package: str) -> None:
    """agent, the lab and the controller import only themselves and shared (never the demo)."""
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


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank from the top, layer name) of a controller module, or None when it has none."""
    parts = module.split(".")
    if parts[:2] != ["polyfleet", "controller"] or len(parts) < 3:
        return None
    for rank, row in enumerate(LAYERS):
        for name, members in row:
            if parts[2] in members:
                return rank, name
    return None


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow of ``graph`` that points up a layer or across to a side-by-side one."""
    wrong: list[str] = []
    for module, targets in sorted(graph.items()):
        source = layer_of(module)
        if source is None:
            continue
        for target in sorted(targets):
            found = layer_of(target)
            if found is None:
                continue
            if found[0] < source[0] or (found[0] == source[0] and found[1] != source[1]):
                wrong.append(f"{module} ({source[1]}) imports {target} ({found[1]})")
    return wrong


def test_every_controller_module_has_a_layer() -> None:
    """Each module of the controller belongs to one of the layers drawn in the docstring."""
    controller = [module for module in _modules() if module.startswith("polyfleet.controller.")]
    assert len(controller) > 50
    assert [module for module in controller if layer_of(module) is None] == []


def test_controller_imports_point_down_its_layers() -> None:
    """No controller module imports a layer above its own, and api and web never each other."""
    assert layering_problems(import_graph()) == []


def test_layer_check_sees_an_upward_and_a_sideways_arrow() -> None:
    """The checker itself names an arrow up (config -> web) and across (web -> api)."""
    graph = {
        "polyfleet.controller.config": {"polyfleet.controller.web.settings"},
        "polyfleet.controller.web.pages": {"polyfleet.controller.api.models"},
        "polyfleet.controller.api.admin": {"polyfleet.controller.http.spec"},
    }
    assert layering_problems(graph) == [
        "polyfleet.controller.config (infrastructure) imports "
        "polyfleet.controller.web.settings (web)",
        "polyfleet.controller.web.pages (web) imports polyfleet.controller.api.models (api)",
    ]


def test_only_the_command_line_entry_loads_the_admin_commands() -> None:
    """Nothing imports controller/cli/ but itself; polyfleet/cli.py names it in its groups."""
    importers: list[str] = []
    sources = dict(_modules())
    sources.update(
        {f"polyfleet.{path.stem}": path for path in sorted((REPO / "polyfleet").glob("*.py"))}
    )
    for module, path in sources.items():
        if module.startswith("polyfleet.controller.cli") or module == CLI_ENTRY:
            continue
        importers += [
            f"{module} imports {name}"
            for name in _imported_names(module, path)
            if name == "polyfleet.controller.cli" or name.startswith("polyfleet.controller.cli.")
        ]
    assert importers == []
    assert '"polyfleet.controller.cli"' in sources[CLI_ENTRY].read_text(encoding="utf-8")
