"""The half both store engines share: collections in memory, their reads, and applying a change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from polyfleet.controller.store.base import Doc, check_collection

#: How an engine queues one change for its writer (a journal line, encoded documents...).
Record = TypeVar("Record")
#: Called with (what was written, seconds) after each durable write.
FlushObserver = Callable[[str, float], None]

EMPTY: Mapping[str, Doc] = MappingProxyType({})


@dataclass(slots=True)
class StagedChange:
    """One ``apply`` checked and copied, before anything changes: what memory will hold, and
    what the caller gave, so that an engine writes the change in its own form."""

    #: Whole documents given as puts, by collection (keys checked, copied unless handed over).
    puts: dict[str, dict[str, Doc]] = field(default_factory=dict)
    #: The fields each patch changes, by collection and key, as given.
    patches: dict[str, dict[str, Doc]] = field(default_factory=dict)
    #: Every document the change leaves, patches merged: what memory holds afterwards.
    docs: dict[str, dict[str, Doc]] = field(default_factory=dict)
    #: Keys removed, by collection.
    deletes: dict[str, list[str]] = field(default_factory=dict)


class InMemoryCollections(Generic[Record]):
    """State in memory, read at once, changed by ``apply`` and made durable by the engine.

    An engine says whether it takes changes now (``_refuse_if_unwritable``), how a change is
    recorded for its writer (``_record``, which raises before anything changes when a
    document has no JSON form), and runs the writer that takes ``_pending`` and moves
    ``_durable_seq`` on (then ``_notify``).
    """

    def __init__(self) -> None:
        self.flush_observers: list[FlushObserver] = []
        self._data: dict[str, dict[str, Doc]] = {}
        self._applied_seq = 0
        self._durable_seq = 0
        self._pending: list[tuple[int, Record]] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()

    # -- what an engine provides -------------------------------------------------------------

    def _refuse_if_unwritable(self) -> None:
        """Raise ``StoreUnavailable`` (saying why) when no change may be applied now."""
        raise NotImplementedError

    def _record(self, change: StagedChange) -> Record:
        """``change`` in the form the writer stores it; memory does not hold it yet."""
        raise NotImplementedError

    def _key(self, key: object) -> str:
        """A document key as stored."""
        return str(key)

    def _keep(self, docs: Mapping[str, Doc], handover: bool) -> dict[str, Doc]:
        """Put documents as kept: the caller's own when handed over, else copies."""
        return dict(docs) if handover else {str(k): dict(d) for k, d in docs.items()}

    # -- reads -------------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> Doc | None:
        docs = self._data.get(collection)
        return None if docs is None else docs.get(key)

    def scan(self, collection: str) -> Mapping[str, Doc]:
        docs = self._data.get(collection)
        return EMPTY if docs is None else MappingProxyType(docs)

    def collections(self) -> list[str]:
        """Names of the collections that hold documents (backups and copies list them)."""
        return [name for name, docs in self._data.items() if docs]

    def count(self, collection: str) -> int:
        return len(self._data.get(collection, EMPTY))

    # -- writes ------------------------------------------------------------------------------

    def apply(
        self,
        puts: Mapping[str, Mapping[str, Doc]],
        deletes: Mapping[str, Iterable[str]] | None = None,
        patches: Mapping[str, Mapping[str, Doc]] | None = None,
        *,
        handover: bool = False,
    ) -> int:
        self._refuse_if_unwritable()
        change = self._stage(puts, deletes or {}, patches or {}, handover)
        if not change.docs and not change.deletes:
            return self._applied_seq
        # Recorded first: a document that is not JSON fails here, before anything changes.
        record = self._record(change)
        for collection, docs in change.docs.items():
            self._data.setdefault(collection, {}).update(docs)
        for collection, key_list in change.deletes.items():
            target = self._data.get(collection)
            if target is not None:
                for key in key_list:
                    target.pop(key, None)
        self._applied_seq += 1
        self._pending.append((self._applied_seq, record))
        self._wake.set()
        return self._applied_seq

    def _stage(
        self,
        puts: Mapping[str, Mapping[str, Doc]],
        deletes: Mapping[str, Iterable[str]],
        patches: Mapping[str, Mapping[str, Doc]],
        handover: bool,
    ) -> StagedChange:
        change = StagedChange()
        key_of = self._key
        for collection, docs in puts.items():
            check_collection(collection)
            if docs:
                change.puts[collection] = change.docs[collection] = self._keep(docs, handover)
        for collection, changes in patches.items():
            check_collection(collection)
            if changes:
                current = self._data.get(collection, EMPTY)
                # Its own dict: the puts as given stay apart from the patches merged here.
                merged = change.docs[collection] = dict(change.docs.get(collection, EMPTY))
                fields = change.patches[collection] = {}
                for key, changed in changes.items():
                    key = key_of(key)
                    old = merged.get(key) or current.get(key)
                    # The caller names what changed: no comparison of whole documents here.
                    merged[key] = dict(changed) if old is None else {**old, **changed}
                    fields[key] = {**fields[key], **changed} if key in fields else changed
        for collection, keys in deletes.items():
            check_collection(collection)
            key_list = [key_of(key) for key in keys]
            if key_list:
                change.deletes[collection] = key_list
        return change

    async def sync(self) -> None:
        await self.wait_durable(self._applied_seq)

    async def wait_durable(self, seq: int) -> None:
        raise NotImplementedError

    async def put_many(self, collection: str, docs: Mapping[str, Doc]) -> None:
        await self.wait_durable(self.apply({collection: docs}))

    async def delete(self, collection: str, key: str) -> None:
        await self.wait_durable(self.apply({}, {collection: [key]}))

    # -- for the writer ----------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every ``wait_durable``: durable progress, or a failure to say."""
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _observe(self, kind: str, seconds: float) -> None:
        for observer in self.flush_observers:
            observer(kind, seconds)
