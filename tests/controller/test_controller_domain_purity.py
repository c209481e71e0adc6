"""controller/domain stays pure: it imports no other controller module, no I/O, reads no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import polyfleet.controller.domain as domain_package

DOMAIN = Path(domain_package.__file__).resolve().parent
MODULES = sorted(DOMAIN.glob("*.py"))
#: The controller's refusal tree: pure, imported by every layer, the domain's included.
ERRORS = DOMAIN.parent / "errors.py"
#: Controller modules outside domain/ that a domain module may import.
PURE_NEIGHBOURS = frozenset({"polyfleet.controller.errors"})
#: Libraries that talk to the network, disks, processes or the event loop.
IO_MODULES = frozenset(
    {
        "aiohttp",
        "apscheduler",
        "asyncio",
        "os",
        "paramiko",
        "pathlib",
        "psycopg",
        "shutil",
        "smtplib",
        "socket",
        "sqlite3",
        "ssl",
        "subprocess",
        "tinydb",
        "urllib",
    }
)
#: Calls that read the clock; domain functions take ``now`` as an argument instead.
CLOCK_READS = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter"})


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A relative import, resolved against polyfleet.controller.domain.
                parts = ["polyfleet", "controller", "domain"][: 4 - node.level]
                base = ".".join(parts)
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def test_domain_modules_are_found() -> None:
    """The check below looks at the real modules (an empty glob would prove nothing)."""
    assert {path.name for path in MODULES} >= {"faults.py", "sla.py", "tickets.py", "plans.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_domain_imports_nothing_else_of_the_controller(path: Path) -> None:
    """A domain module imports only domain modules of the controller (arrows run one way)."""
    outside = [
        f"{path.name}:{line} imports {name}"
        for line, name in imported(path)
        if (name == "polyfleet.controller" or name.startswith("polyfleet.controller."))
        and not (
            name == "polyfleet.controller.domain" or name.startswith("polyfleet.controller.domain.")
        )
        and name not in PURE_NEIGHBOURS
    ]
    outside += [
        f"{path.name}:{line} imports {name}"
        for line, name in imported(path)
        if name.split(".")[0] in {"controller", "agent", "simulator"}
        or name.startswith(("polyfleet.agent", "polyfleet.simulator"))
    ]
    assert outside == []


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_domain_does_no_io_and_reads_no_clock(path: Path) -> None:
    """No network, disk, process or event-loop library, and no call that reads the time."""
    io_imports = [
        f"{path.name}:{line} imports {name}"
        for line, name in imported(path)
        if name.split(".")[0] in IO_MODULES
    ]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    clock_reads = [
        f"{path.name}:{node.lineno} calls {ast.unparse(node.func)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_READS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in {"datetime", "date", "time"}
    ]
    assert io_imports + clock_reads == []


def test_the_refusal_tree_imports_nothing_of_polyfleet() -> None:
    """controller/errors.py, which the domain may import, stays a leaf: no polyfleet, no I/O."""
    names = [name for _, name in imported(ERRORS)]
    assert names, "errors.py imports at least its typing helpers"
    assert not [name for name in names if name.startswith("polyfleet")]
    assert not [name for name in names if name.split(".")[0] in IO_MODULES]
