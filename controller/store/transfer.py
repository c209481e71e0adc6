"""Whole stores moved and checked: copies between the two stores, and one-file backups.

A place is a data directory (the embedded store in ``<dir>/store``) or a PostgreSQL URL.
Reading a database takes one consistent snapshot (a read-only repeatable-read transaction)
and needs no lock, so a running controller may keep going; reading a data directory takes
its lock (a running embedded controller is backed up through its own ``/api/v1/backup``).
Writing always takes the target's lock and refuses a target that holds any document, so
nothing is ever mixed or overwritten; afterwards the target is read afresh and compared
with what was written, document by document.

A backup file is gzip-compressed JSON lines: a header ``{"format": "polyfleet-backup",
"version": 1, "created_at", "source", "collections": {name: count}}``, one line
``[collection, key, document]`` per document, and a trailer ``{"end": true, "documents": N}``
(a file cut short has no trailer and is refused).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from polyfleet.controller.store.base import Doc, StoreError, StoreLocked
from polyfleet.controller.store.journal import encode_json
from polyfleet.controller.store.postgres import (
    PostgresStore,
    decode_json,
    is_postgres_url,
    read_all,
    redact_url,
)
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.shared.durable import StagedFile

#: Every document of a store: collection -> key -> document.
Collections = dict[str, dict[str, Doc]]
#: Called with (documents done, documents in all) while a store is written.
Progress = Callable[[int, int], None]

BACKUP_FORMAT = "polyfleet-backup"
BACKUP_VERSION = 1
#: Documents written per store change (each a group commit).
CHUNK_DOCS = 2000
#: Where the embedded store lives inside a data directory (as the controller opens it).
STORE_SUBDIR = "store"


class TransferError(StoreError):
    """A copy, backup or restore could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class Place:
    """A data directory or a PostgreSQL database."""

    text: str

    @property
    def url(self) -> str | None:
        return self.text if is_postgres_url(self.text) else None

    @property
    def data_dir(self) -> Path:
        return Path(self.text)

    def __str__(self) -> str:
        return redact_url(self.text) if self.url is not None else self.text


@dataclass(frozen=True)
class Mismatch:
    """One document that did not arrive as it was sent."""

    collection: str
    key: str
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"collection": self.collection, "key": self.key, "problem": self.problem}


def count_documents(data: Mapping[str, Mapping[str, Doc]]) -> dict[str, int]:
    return {name: len(docs) for name, docs in sorted(data.items()) if docs}


def holds_embedded_store(data_dir: Path) -> bool:
    store = data_dir / STORE_SUBDIR
    return (store / "CURRENT").exists() or any((store / "journal").glob("*.log"))


def snapshot(store: TinyDBStore | PostgresStore) -> Collections:
    """Every document of an open store at this instant (consistent: nothing runs meanwhile)."""
    return {name: dict(store.scan(name)) for name in store.collections()}


async def read_place(place: Place) -> Collections:
    """Every document of ``place``, as one consistent state."""
    if place.url is not None:
        try:
            return await read_all(place.url)
        except (OSError, TimeoutError) as exc:
            raise TransferError(f"cannot read {place}: {exc}") from exc
    if not holds_embedded_store(place.data_dir):
        raise TransferError(f"{place} holds no controller store: check the directory")
    store = TinyDBStore(place.data_dir / STORE_SUBDIR)
    try:
        await store.open()
    except StoreLocked:
        raise TransferError(
            f"{place} is in use by a running controller: stop it first, or take a consistent "
            "copy while it runs with `polyfleet controller backup`"
        ) from None
    try:
        return snapshot(store)
    finally:
        await store.close()


async def write_place(
    place: Place, data: Mapping[str, Mapping[str, Doc]], progress: Progress | None = None
) -> None:
    """Write every document into an empty store at ``place`` (refused when it holds any)."""
    store: PostgresStore | TinyDBStore
    if place.url is not None:
        store = PostgresStore(place.url)
    else:
        store = TinyDBStore(place.data_dir / STORE_SUBDIR)
    try:
        await store.open()
    except StoreLocked:
        raise TransferError(f"{place} is in use by a running controller: stop it first") from None
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"cannot open {place}: {exc}") from exc
    try:
        held = sum(store.count(name) for name in store.collections())
        if held:
            raise TransferError(
                f"{place} already holds {held} documents: copy or restore only into an empty "
                "store (nothing was changed)"
            )
        total = sum(len(docs) for docs in data.values())
        done = 0
        for name, docs in data.items():
            items = list(docs.items())
            for start in range(0, len(items), CHUNK_DOCS):
                chunk = dict(items[start : start + CHUNK_DOCS])
                await store.wait_durable(store.apply({name: chunk}))
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    finally:
        await store.close()


async def verify_place(place: Place, expected: Mapping[str, Mapping[str, Doc]]) -> list[Mismatch]:
    """Read ``place`` afresh and compare it with ``expected``, document by document."""
    found = await read_place(place)
    return compare(expected, found)


def compare(
    expected: Mapping[str, Mapping[str, Doc]], found: Mapping[str, Mapping[str, Doc]]
) -> list[Mismatch]:
    mismatches: list[Mismatch] = []
    for name in sorted(set(expected) | set(found)):
        want = expected.get(name, {})
        have = found.get(name, {})
        for key, doc in want.items():
            if key not in have:
                mismatches.append(Mismatch(name, key, "missing"))
            elif have[key] != doc:
                mismatches.append(Mismatch(name, key, "differs"))
        for key in have.keys() - want.keys():
            mismatches.append(Mismatch(name, key, "not in the source"))
    return mismatches


# -- backup files (blocking: run in a thread) ----------------------------------------------------


def write_backup(path: Path, data: Mapping[str, Mapping[str, Doc]], *, source: str) -> int:
    """Write ``data`` to ``path`` atomically (a temporary file, fsynced, renamed); documents."""
    with StagedFile(path.parent, name=path.name) as staged:
        count = write_backup_stream(staged.handle, data, source=source)
        staged.commit(path)
    return count


def write_backup_stream(
    raw: IO[bytes], data: Mapping[str, Mapping[str, Doc]], *, source: str
) -> int:
    """Write the backup of ``data`` to an open binary file; how many documents it holds."""
    header = {
        "format": BACKUP_FORMAT,
        "version": BACKUP_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "source": source,
        "collections": count_documents(data),
    }
    count = 0
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
        out.write(encode_json(header) + b"\n")
        for name, docs in data.items():
            for key, doc in docs.items():
                out.write(encode_json([name, key, doc]) + b"\n")
                count += 1
        out.write(encode_json({"end": True, "documents": count}) + b"\n")
    return count


def read_backup(path: Path) -> tuple[dict[str, Any], Collections]:
    """The header and documents of a backup file; TransferError when it is not a whole one."""
    try:
        with gzip.open(path, "rb") as handle:
            return _read_lines(path, iter(handle))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TransferError(f"{path}: not a readable polyfleet backup ({exc})") from exc


def _read_lines(path: Path, lines: Iterator[bytes]) -> tuple[dict[str, Any], Collections]:
    first = next(lines, None)
    try:
        header = decode_json(first) if first is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
        raise TransferError(f"{path}: not a polyfleet backup file")
    if header.get("version") != BACKUP_VERSION:
        raise TransferError(
            f"{path}: backup format version {header.get('version')}, this polyfleet reads "
            f"version {BACKUP_VERSION}"
        )
    data: Collections = {}
    count = 0
    for number, line in enumerate(lines, 2):
        try:
            item = decode_json(line)
        except ValueError as exc:
            raise TransferError(f"{path}: line {number} is not JSON ({exc})") from exc
        if isinstance(item, dict) and item.get("end") is True:
            if item.get("documents") != count:
                raise TransferError(
                    f"{path}: the trailer says {item.get('documents')} documents, the file "
                    f"holds {count}"
                )
            expected = header.get("collections")
            if expected != count_documents(data):
                raise TransferError(f"{path}: the collections differ from the header's counts")
            return header, data
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise TransferError(f"{path}: line {number} is not [collection, key, document]")
        name, key, doc = item
        data.setdefault(name, {})[str(key)] = doc
        count += 1
    raise TransferError(f"{path}: the backup is cut short (no trailer after {count} documents)")
