"""Files are replaced only through shared/durable.py: no hand-made rename, temporary or fsync."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Product code: the packages and the top-level modules (cli, demo).
SOURCES = sorted(
    [
        *(path for package in ("agent", "controller", "shared", "simulator")
          for path in (REPO / package).rglob("*.py")),
        *(REPO / "polyfleet").glob("*.py"),
    ]
)  # fmt: skip
DURABLE = REPO / "shared" / "durable.py"
#: ``module.function`` calls that write or move files by hand.
FORBIDDEN_CALLS = frozenset(
    {
        "os.replace",
        "os.rename",
        "os.fsync",
        "shutil.move",
        "tempfile.mkstemp",
        "tempfile.NamedTemporaryFile",
    }
)
#: Files allowed some of the calls above, and why: none of them replaces a file by hand.
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "agent/outbox.py": (
        frozenset({"os.fsync"}),
        "segments are appended to and fsynced, like a journal; rewrites go through durable",
    ),
    "controller/store/journal.py": (
        frozenset({"os.fsync"}),
        "the journal is appended to and fsynced, and a torn tail cut off in place",
    ),
    "controller/store/tinydb.py": (
        frozenset({"os.fsync"}),
        "snapshot shards are written into a staged folder that move_into_place puts in place",
    ),
    "agent/update_server.py": (
        frozenset({"os.fsync"}),
        "a download resumes (HTTP ranges) into a part file kept across attempts; the finished "
        "file goes through move_into_place",
    ),
    "controller/services/jobs.py": (
        frozenset({"os.replace", "os.fsync"}),
        "an uploaded artifact is still streamed into a temporary file of its own",
    ),
}


def _hand_writes(path: Path) -> list[tuple[int, str]]:
    """(line, what) of each use in ``path`` of a call that renames, stages or fsyncs a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        # Called or handed on (``asyncio.to_thread(os.replace, a, b)``) alike.
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in FORBIDDEN_CALLS:
                found.append((node.lineno, name))
        if not isinstance(node, ast.Call):
            continue
        target, args = node.func, node.args
        if _dotted(target) == "asyncio.to_thread" and args:
            target, args = args[0], args[1:]
        if (
            isinstance(target, ast.Attribute)
            and target.attr in ("replace", "rename")
            and _dotted(target) not in ("os.replace", "os.rename")
            and len(args) == 1
            and not node.keywords
        ):
            # ``Path.replace(target)`` / ``Path.rename(target)`` (``str.replace`` takes two).
            found.append((node.lineno, f"Path.{target.attr}"))
    return found


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ""


def test_the_scan_sees_the_sources_and_what_it_looks_for() -> None:
    """The sources are found, and durable.py itself is caught by the scan (so it can fail)."""
    assert len(SOURCES) > 100 and DURABLE in SOURCES
    assert {what for _, what in _hand_writes(DURABLE)} >= {"os.replace", "os.fsync"}


def test_no_file_is_replaced_by_hand_outside_durable() -> None:
    """Outside shared/durable.py, no rename, temporary file or fsync but the documented ones."""
    offenders = []
    for path in SOURCES:
        if path == DURABLE:
            continue
        relative = path.relative_to(REPO).as_posix()
        allowed, _why = ALLOWED.get(relative, (frozenset(), ""))
        offenders += [
            f"{relative}:{line} {what}" for line, what in _hand_writes(path) if what not in allowed
        ]
    assert offenders == [], "write through polyfleet.shared.durable instead"


def test_every_exception_is_still_needed() -> None:
    """Each allowed file still makes the calls it is allowed (a stale exception is removed)."""
    for relative, (allowed, _why) in ALLOWED.items():
        made = {what for _, what in _hand_writes(REPO / relative)}
        assert allowed <= made, relative
