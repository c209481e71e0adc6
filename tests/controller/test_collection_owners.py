"""Each store collection has one owning module: only it reads or writes the collection.

Others ask the owner's typed queries, and a change that must be durable together with the
owner's (an event with the state it describes, an agent with its credential) is built by the
owner and carried into the other's commit as it is (``EventBus.record``,
``Inventory.enrolled_agent``): the collection's name never appears in the other's change.

The check reads every module under controller/ and resolves each name to the string constant
it was imported as. It counts as a read ``.scan(C)``, ``.count(C)`` and ``.get(C, ...)``; as a
write ``.put_many(C, ...)``, ``.delete(C, ...)`` and a change keyed by ``C`` (a dict display
``{C: ...}`` or ``changes[C] = ...``, as ``store.apply`` takes them), where ``C`` names a
collection. A store (a receiver spelled ``store``, ``_store`` or ``app[CORE].store``) asked for a
collection that no constant names is a problem too: the check could not tell whose it is.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

import polyfleet.controller as controller_package

CONTROLLER = Path(controller_package.__file__).resolve().parent
#: Collection -> the module that owns it (relative to ``polyfleet.controller``).
OWNERS = {
    "sites": "services.inventory",
    "devices": "services.inventory",
    "reports": "services.inventory",
    "health_history": "services.inventory",
    "report_receipts": "services.inventory",
    "agents": "services.inventory",
    "tokens": "services.access",
    "invites": "services.access",
    "events": "events",
    "jobs": "services.jobs",
    "assets": "services.entitlement",
    "tickets": "services.ticket_service",
    "ticket_fault_state": "services.ticket_service",
    "ticket_faults_in_maintenance": "services.ticket_service",
    "maintenance": "services.maintenance",
    "room_calendars": "services.room_calendars",
    "admin_sessions": "services.admin_sessions",
    "ticket_outbox": "services.delivery",
    "ticket_outbox_sent": "services.delivery",
    "ticket_outbox_failed": "services.delivery",
    "rollouts": "services.rollout",
    "rollout_devices": "services.rollout",
    "penalty_box": "services.rollout",
    "firmware_packages": "services.packages",
    "audit": "services.audit",
    "audit_mark": "services.audit",
    "web_sessions": "services.web_sessions",
    "web_signin_links": "services.web_sessions",
    "meta": "services.installation",
}
#: Modules that may read and write every collection, and why.
EVERY_COLLECTION = {
    # The engines: they hold the collections.
    "store.base": "the Store protocol and the core collection names",
    "store.tinydb": "the embedded engine",
    "store.journal": "the embedded engine's journal",
    "store.postgres": "the PostgreSQL engine",
    "store.local_postgres": "a PostgreSQL server for tests and the demo",
    # Copies of the whole store: every collection alike, by design.
    "store.transfer": "backup, restore and copy between engines",
    "api.backup": "GET /api/v1/backup streams every collection",
    "cli.store": "backup, restore and transfer commands",
}


@dataclass(frozen=True)
class Use:
    """One read or write of a collection found in a module."""

    module: str
    line: int
    collection: str | None
    kind: str

    def __str__(self) -> str:
        what = self.collection if self.collection is not None else "a collection no constant names"
        return f"controller/{self.module.replace('.', '/')}.py:{self.line} {self.kind}s {what}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CONTROLLER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _sources() -> dict[str, ast.Module]:
    """Module (relative to ``polyfleet.controller``) -> its syntax tree."""
    return {
        _module_name(path): ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for path in sorted(CONTROLLER.rglob("*.py"))
    }


def _constants(tree: ast.Module) -> dict[str, str]:
    """The module-level ``NAME = "text"`` of a module."""
    found: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return found


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The ``polyfleet.controller``-relative name an import-from statement reads from."""
    if not node.level:
        return (node.module or "").removeprefix("polyfleet.controller.")
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


@functools.cache
def _names() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Module -> (name -> string constant it stands for, alias -> module it stands for)."""
    sources = _sources()
    constants = {module: _constants(tree) for module, tree in sources.items()}
    names: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for module, tree in sources.items():
        known = dict(constants[module])
        modules: dict[str, str] = {}
        is_package = module.endswith("__init__") or (CONTROLLER / module.replace(".", "/")).is_dir()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, node, is_package)
                for alias in node.names:
                    local = alias.asname or alias.name
                    if alias.name in constants.get(source, {}):
                        known[local] = constants[source][alias.name]
                    elif f"{source}.{alias.name}" in sources:
                        modules[local] = f"{source}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name.removeprefix("polyfleet.controller.")
                    if alias.asname is not None and target in sources:
                        modules[alias.asname] = target
        names[module] = (known, modules)
    return names


#: Name -> the collections a loop over a literal binds it to (``for c in (A, B)``), in one
#: function; None among them: something that is not a collection.
Loops = dict[str, set[str | None]]


def _collection(module: str, node: ast.expr | None, *, literal: bool) -> str | None:
    """The collection ``node`` names through a constant (or, with ``literal``, as a string)."""
    known, modules = _names()[module]
    value: str | None = None
    if isinstance(node, ast.Name):
        value = known.get(node.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id in modules:
            value = _constants(_sources()[modules[node.value.id]]).get(node.attr)
    elif literal and isinstance(node, ast.Constant) and isinstance(node.value, str):
        value = node.value
    return value if value in OWNERS else None


def _collections(module: str, node: ast.expr | None, loops: Loops, *, literal: bool) -> set[str]:
    """The collections ``node`` stands for: one constant, or every one a loop binds it to
    (none when any of those is no collection)."""
    if isinstance(node, ast.Name) and node.id in loops:
        bound = loops[node.id]
        return set() if None in bound else {name for name in bound if name is not None}
    named = _collection(module, node, literal=literal)
    return set() if named is None else {named}


def _loops(module: str, function: ast.AST) -> Loops:
    """What loops over literal tuples and lists bind names to in ``function``."""
    literals: dict[str, ast.Tuple | ast.List] = {}
    for node in ast.walk(function):
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Tuple | ast.List):
            literals[target.id] = value
    loops: Loops = {}

    def bind(target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            loops.setdefault(target.id, set()).add(_collection(module, value, literal=False))
        elif isinstance(target, ast.Tuple):
            values = value.elts if isinstance(value, ast.Tuple) else []
            for position, part in enumerate(target.elts):
                if position < len(values):
                    bind(part, values[position])
                else:
                    loops.setdefault(ast.unparse(part), set()).add(None)

    for node in ast.walk(function):
        if isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            iterable = node.iter
            if isinstance(iterable, ast.Name) and iterable.id in literals:
                iterable = literals[iterable.id]
            if isinstance(iterable, ast.Tuple | ast.List):
                for element in iterable.elts:
                    bind(node.target, element)
    return loops


def _is_store(node: ast.expr) -> bool:
    """Whether a call's receiver is, by its name, the store."""
    text = ast.unparse(node)
    return text == "store" or text.endswith(("_store", ".store"))


READS = {"scan": "read", "count": "read", "get": "read"}
WRITES = {"put_many": "write", "delete": "write"}


def uses(module: str) -> list[Use]:
    """Every read and write of a collection in ``module``, in line order."""
    tree = _sources()[module]
    # Each node's innermost enclosing function: loops bind names within one function.
    scope: dict[ast.AST, ast.AST] = {}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            scope.update({node: function for node in ast.walk(function)})
    loops_of: dict[ast.AST, Loops] = {}

    def loops(node: ast.AST) -> Loops:
        function = scope.get(node, tree)
        if function not in loops_of:
            loops_of[function] = _loops(module, function) if function is not tree else {}
        return loops_of[function]

    found: list[Use] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, node.func.value
            kind = READS.get(method) or WRITES.get(method)
            if kind is None:
                continue
            first = node.args[0] if node.args else None
            store = _is_store(receiver)
            # ``get`` and ``count`` are also a dict's and a list's: only a constant (or a
            # store) makes them a store's. ``scan`` is the store's alone.
            named = _collections(module, first, loops(node), literal=store or method == "scan")
            found += [Use(module, node.lineno, name, kind) for name in sorted(named)]
            if not named and store and method != "count":
                found.append(Use(module, node.lineno, None, kind))
        elif isinstance(node, ast.Dict):
            found += [
                Use(module, node.lineno, named, "write")
                for key in node.keys
                if (named := _collection(module, key, literal=False)) is not None
            ]
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [
                Use(module, node.lineno, named, "write")
                for target in targets
                if isinstance(target, ast.Subscript)
                and (named := _collection(module, target.slice, literal=False)) is not None
            ]
    return sorted(found, key=lambda use: use.line)


def trespasses(module: str) -> list[Use]:
    """The uses in ``module`` of collections another module owns (or no constant names)."""
    if module in EVERY_COLLECTION:
        return []
    return [
        use for use in uses(module) if use.collection is None or OWNERS[use.collection] != module
    ]


MODULES = sorted(_sources())


def test_the_owners_and_exceptions_are_real_modules() -> None:
    """Each owner and each module allowed every collection exists (a rename is noticed)."""
    assert set(OWNERS.values()) <= set(MODULES)
    assert set(EVERY_COLLECTION) <= set(MODULES)


def test_every_collection_named_by_a_constant_has_an_owner() -> None:
    """A collection constant of the store or of a service is in :data:`OWNERS`."""
    declared = {
        value
        for module in ("store.base", *(m for m in MODULES if m.startswith("services.")), "events")
        for name, value in _constants(_sources()[module]).items()
        if name.isupper() and value in OWNERS
    }
    assert declared == set(OWNERS)


def test_owners_use_their_collections() -> None:
    """Each owner reads or writes each of its collections (the check sees real calls)."""
    used = {(use.module, use.collection) for module in set(OWNERS.values()) for use in uses(module)}
    assert {(owner, name) for name, owner in OWNERS.items()} - used == set()


@pytest.mark.parametrize("module", MODULES)
def test_only_the_owner_reads_or_writes_a_collection(module: str) -> None:
    """A module reads and writes only its own collections; others it asks their owner."""
    assert [str(use) for use in trespasses(module)] == []


def test_the_check_sees_reads_and_writes_of_anothers_collection() -> None:
    """A scan, a get, a put_many and a change keyed by a foreign collection are all named."""
    source = """
from polyfleet.controller.store import base
from polyfleet.controller.store.base import SITES, DEVICES as D
from polyfleet.controller.services.entitlement import ASSETS

def f(self, store, collection, changes):
    store.scan(SITES)
    self._store.get(D, "x")
    changes.get(ASSETS, {})
    store.count(base.JOBS)
    store.put_many("tickets", {})
    store.apply({ASSETS: {}})
    changes[SITES] = {}
    self._store.scan(collection)
    {"sites": 1}.get("sites")
    for name, kept in ((D, 1), (SITES, 2)):
        store.get(name, "x")
    for other in (D, "x"):
        store.scan(other)
"""
    sources = _sources()
    sources["features.example"] = ast.parse(source)
    _names.cache_clear()
    try:
        found = [(use.line, use.collection, use.kind) for use in trespasses("features.example")]
    finally:
        del sources["features.example"]
        _names.cache_clear()
    assert found == [
        (7, "sites", "read"),
        (8, "devices", "read"),
        (9, "assets", "read"),
        (10, "jobs", "read"),
        (11, "tickets", "write"),
        (12, "assets", "write"),
        (13, "sites", "write"),
        (14, None, "read"),
        (17, "devices", "read"),
        (17, "sites", "read"),
        (19, None, "read"),
    ]
