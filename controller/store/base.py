"""The ``Store`` protocol: durable collections of JSON documents, kept in memory, keyed by string.

Every piece of controller state is a document in a named collection. Core collections are
named below; features add their own (``assets``, ``tickets``, ``ticket_outbox``...) simply by
writing to a new name: collections need no declaration and no change to any store module.

Contract (what callers may rely on):

- Reads (``get``, ``scan``, ``count``) are synchronous and see every change applied so far.
- ``apply(puts, deletes, patches)`` changes state at once and returns a sequence number; the
  change is durable (it survives ``kill -9``) once ``await wait_durable(seq)`` returns.
  ``patches`` name only the fields that change in a document (merged over it, or the whole
  document when there is none yet): the cheap form for a caller that knows what it changed.
  ``put_many`` and ``delete`` are the simple form: they return only when the change is durable.
  The store keeps its own copy of each put document, unless the caller hands them over
  (``handover=True``: documents built for this change alone, never touched again), as
  ingestion does with thousands of fresh report documents a second.
- Documents are plain JSON values (dict/list/str/int/float/bool/None). An object with no JSON
  form is refused (TypeError) before anything changes; a value with a standard one (datetime,
  tuple, enum) is written in that form, so it reads back as str/list after a restart: pass
  plain JSON. A stored document is never modified in place: treat what ``get``/``scan``
  return as read-only and ``put`` a new dict to change it. ``scan`` returns a live view; copy
  it (``list(...)``) before awaiting.
- Several changes given to one ``apply`` become durable together or not at all.
- If the disk fails, the store stops accepting changes: ``StoreUnavailable`` is raised, and a
  restart recovers every acknowledged change.

Recovery (what a store does when its disk, or database, comes back):

- A store does not stay failed: it tries again by itself (with a backoff) to make durable the
  changes it had applied, in their order, and once they are, it accepts changes again; no
  restart is needed. While it cannot, ``apply`` and ``wait_durable`` raise
  ``StoreUnavailable`` (whose message says why); a change whose ``wait_durable`` raised may
  still become durable later, or be lost if the process stops first, so it was never
  acknowledged and its sender must send it again.
- Reads keep answering meanwhile and may show those applied changes that are not durable. A
  store that can tell offers ``health() -> StoreHealth`` (found with ``getattr``; it is not
  part of the protocol): the API then says on every answer that what it shows may not be
  saved, and ``/metrics`` has it. A store without it is taken to be healthy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: A JSON document as stored.
Doc = dict[str, Any]

SITES = "sites"
DEVICES = "devices"
REPORTS = "reports"
HEALTH_HISTORY = "health_history"
AGENTS = "agents"
TOKENS = "tokens"
INVITES = "invites"
EVENTS = "events"
JOBS = "jobs"
META = "meta"

COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The store cannot make changes durable now (disk failure); it retries by itself."""


@dataclass(frozen=True, kw_only=True)
class StoreHealth:
    """What a store says of its writes (see "Recovery" in the module docstring)."""

    #: The disk (or database) refuses writes now; changes are refused until it takes them.
    failing: bool
    #: What it said, with the path where known ("No space left on device: /data/...").
    cause: str | None = None
    failing_for_s: float | None = None
    #: Applied changes (visible to reads) that are not durable yet.
    not_durable: int = 0
    #: Failed write attempts since the store opened.
    write_failures: int = 0


class StoreLocked(StoreError):
    """Another process (a running controller) holds the data directory."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(
            f"{data_dir} is in use by a running controller; "
            "the command goes through that server instead"
        )
        self.data_dir = data_dir


class Store(Protocol):
    """Durable document collections; see the module docstring for the contract."""

    async def open(self) -> None:
        """Load state (snapshot plus journal replay) and start the background writers."""

    async def close(self) -> None:
        """Make everything durable, write a final snapshot and release the data directory."""

    def get(self, collection: str, key: str) -> Doc | None:
        """The document under ``key``, or None."""

    def scan(self, collection: str) -> Mapping[str, Doc]:
        """A read-only live view of a whole collection, key -> document."""

    def count(self, collection: str) -> int:
        """How many documents a collection holds."""

    def apply(
        self,
        puts: Mapping[str, Mapping[str, Doc]],
        deletes: Mapping[str, Iterable[str]] | None = None,
        patches: Mapping[str, Mapping[str, Doc]] | None = None,
        *,
        handover: bool = False,
    ) -> int:
        """Change state now: puts and patches (collection -> key -> document or changed
        fields), then deletes (collection -> keys). ``handover``: the caller gives the put
        documents up (never changes them again), so the store keeps them without a copy."""

    async def wait_durable(self, seq: int) -> None:
        """Return once the change numbered ``seq`` (and all before it) is on disk."""

    async def sync(self) -> None:
        """Return once every change applied so far is on disk."""

    async def put_many(self, collection: str, docs: Mapping[str, Doc]) -> None:
        """Store ``docs`` (key -> document); durable when this returns."""

    async def delete(self, collection: str, key: str) -> None:
        """Remove one document (no error when absent); durable when this returns."""

    async def checkpoint(self) -> None:
        """Write a full snapshot now and drop the journal it covers."""


def check_collection(name: str) -> str:
    """``name`` if it is a valid collection name (also a safe file name)."""
    if not COLLECTION_NAME.match(name):
        raise ValueError(f"collection name {name!r} must match {COLLECTION_NAME.pattern}")
    return name
