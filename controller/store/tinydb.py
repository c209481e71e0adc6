"""The TinyDB-backed ``Store``: state in memory, a fsynced journal, periodic TinyDB snapshots.

TinyDB rewrites its whole file on every write (~130 ms at 10,000 devices), so it is never
on the write path of a report. Instead:

- every change is applied in memory and appended to ``journal/<gen>.log``; one fsync covers
  all changes waiting at that moment (group commit), and a change counts as durable (a report
  is acknowledged) only after that fsync; a new version of a document that changes few of its
  fields is journaled as those fields (``"u"``), merged into the document on replay;
- every ``snapshot_interval_s`` (or when the journal grows past ``journal_max_bytes``) the
  whole state is copied and written as TinyDB files into ``snapshots/<gen>.tmp``, fsynced,
  renamed to ``snapshots/<gen>``, then ``CURRENT`` is replaced atomically and older journals
  and snapshots are removed;
- on start, the snapshot named by ``CURRENT`` is loaded and every journal from that
  generation on is replayed, cutting off a torn last line;
- when the disk refuses a write (full, read-only, an I/O error), new changes are refused
  (``StoreUnavailable``) while the changes already applied are written again, with a
  backoff from ``RETRY_INITIAL_S`` to ``retry_max_s``, until the disk takes them: then the
  store accepts changes again by itself. ``health()`` says meanwhile what failed, since
  when, and how many applied changes are not on disk (reads show them).

All file I/O runs in threads; the event loop only touches memory and encodes lines.
This is the only module that imports tinydb.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from tinydb import TinyDB
from tinydb.storages import JSONStorage

from polyfleet.controller.config import (
    DEFAULT_JOURNAL_MAX_BYTES,
    DEFAULT_SNAPSHOT_INTERVAL_S,
    DEFAULT_WRITE_RETRY_MAX_S,
)
from polyfleet.controller.store.base import (
    Doc,
    StoreError,
    StoreHealth,
    StoreLocked,
    StoreUnavailable,
)
from polyfleet.controller.store.journal import (
    JournalWriteError,
    JournalWriter,
    encode_json,
    encode_line,
    fsync_dir,
    journal_generations,
    read_journal,
)
from polyfleet.controller.store.memory import EMPTY, InMemoryCollections, StagedChange
from polyfleet.shared.durable import move_into_place, write_atomically
from polyfleet.shared.retry import Backoff

log = logging.getLogger(__name__)

#: Documents per TinyDB file, so no single file write holds the interpreter for long.
SHARD_DOCS = 4000
_TABLE = "docs"
_ABSENT = object()
#: A change as the journal writer takes it: the generation it belongs to, and its line.
_JournalEntry = tuple[int, bytes]
#: First wait before writing again after the disk refused a write; it doubles each time.
RETRY_INITIAL_S = 0.1


class _SnapshotStorage(JSONStorage):
    """TinyDB's JSON file storage (same file layout, fsync on write) with the journal's encoder.

    A snapshot holds every document; the standard encoder made writing one the largest cost
    of a busy controller (it holds the interpreter lock in the writer thread).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), access_mode="rb+")

    def write(self, data: dict[str, dict[str, Doc]]) -> None:
        self._handle.seek(0)
        self._handle.write(encode_json(data))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.truncate()


def _journal_form(
    current: Mapping[str, Doc], docs: dict[str, Doc]
) -> tuple[dict[str, Doc], dict[str, Doc]]:
    """How ``docs`` go into the journal: whole documents, and changed fields of known ones.

    A new version of a document often changes few of its fields (a ticket's status, a fault
    state's latest report); journaling just those keeps the line short, so the journal fills
    (and forces a full snapshot) that much later. Replay merges the fields into the document
    as it stood, which is the document ``current`` holds now. A caller that knows which
    fields it changed passes them as ``patches`` to ``apply`` and skips this comparison.
    """
    whole: dict[str, Doc] = {}
    fields: dict[str, Doc] = {}
    for key, doc in docs.items():
        old = current.get(key)
        if old is not None and old.keys() <= doc.keys():
            # Identity first: fields carried over from the old document are the same objects.
            changed = {
                name: value
                for name, value in doc.items()
                if (was := old.get(name, _ABSENT)) is not value and was != value
            }
            if 2 * len(changed) < len(doc):
                if changed:
                    fields[key] = changed
                continue
        whole[key] = doc
    return whole, fields


class TinyDBStore(InMemoryCollections[_JournalEntry]):
    """``Store`` over a directory; see the module docstring for the write path.

    Flush observers are called with ("journal" | "snapshot", seconds) after each durable write.
    """

    def __init__(
        self,
        directory: Path,
        *,
        snapshot_interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S,
        journal_max_bytes: int = DEFAULT_JOURNAL_MAX_BYTES,
        retry_max_s: float = DEFAULT_WRITE_RETRY_MAX_S,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.snapshot_interval_s = snapshot_interval_s
        self.journal_max_bytes = journal_max_bytes
        self.retry_max_s = retry_max_s
        self._write_backoff = Backoff(first_s=RETRY_INITIAL_S, max_s=retry_max_s)
        self._generation = 0
        self._snapshot_seq = 0
        self._checkpoint_wanted = asyncio.Event()
        self._checkpoint_lock = asyncio.Lock()
        #: What the disk refused last, while writes are failing (None: they are not).
        self._failure: OSError | None = None
        self._failing_since: float | None = None
        self._write_failures = 0
        self._retry_now = asyncio.Event()
        self._closing = False
        self._stop_snapshots = False
        self._opened = False
        self._lock_fd: int | None = None
        self._journal = JournalWriter(directory / "journal")
        self._writer_task: asyncio.Task[None] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Load and start; a disk that refuses what this needs raises ``StoreUnavailable``
        naming the path and the cause (a full disk, no permission, a read-only one)."""
        try:
            self._lock_fd = await asyncio.to_thread(self._take_lock)
        except OSError as exc:
            raise StoreUnavailable(cannot_open(self.directory, exc)) from exc
        try:
            current, data, replayed, last_gen = await asyncio.to_thread(self._load)
        except OSError as exc:
            self._release_lock()
            raise StoreUnavailable(cannot_open(self.directory, exc)) from exc
        except BaseException:
            self._release_lock()
            raise
        self._data = data
        self._generation = max(current, last_gen) + 1
        self._opened = True
        self._stop_snapshots = False
        self._writer_task = asyncio.create_task(self._write_loop(), name="store-journal")
        self._snapshot_task = asyncio.create_task(self._snapshot_loop(), name="store-snapshot")
        if replayed:
            log.info("store %s: replayed %d journal changes", self.directory, replayed)
            # Mark state as newer than any snapshot so the checkpoint folds the journal in.
            self._applied_seq = self._durable_seq = 1
            try:
                await self.checkpoint()
            except OSError as exc:
                await self.close()
                raise StoreUnavailable(cannot_open(self.directory, exc)) from exc

    async def close(self) -> None:
        if not self._opened:
            return
        with contextlib.suppress(StoreUnavailable):
            await self.sync()
        if self._snapshot_task is not None:
            # Asked to stop, not cancelled: a cancel mid-snapshot leaves its thread running on,
            # and that thread's commit removes every other snapshot directory (the final one).
            self._stop_snapshots = True
            self._checkpoint_wanted.set()
            await self._snapshot_task
        if self._failure is None:
            try:
                await self.checkpoint()
            except (OSError, StoreUnavailable):
                log.exception(
                    "store %s: final snapshot failed; the journal keeps it", self.directory
                )
        self._closing = True
        self._wake.set()
        self._retry_now.set()
        if self._writer_task is not None:
            await self._writer_task
        if self._pending:
            log.error(
                "store %s: stopping while the disk refuses writes (%s): %d applied changes "
                "were never written and are lost",
                self.directory,
                self._failure,
                len(self._pending),
            )
        try:
            await asyncio.to_thread(self._journal.close)
        except OSError as exc:
            log.error("store %s: closing the journal failed: %s", self.directory, exc)
        self._release_lock()
        self._opened = False

    def _take_lock(self) -> int:
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.mkdir(exist_ok=True, mode=0o700)
        (self.directory / "journal").mkdir(exist_ok=True, mode=0o700)
        (self.directory / "snapshots").mkdir(exist_ok=True, mode=0o700)
        # Opened read-only (flock needs no more): the filesystem can be remounted read-only
        # under a running controller while the journal is closed after a failed write.
        fd = os.open(self.directory / "LOCK", os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(str(self.directory.parent)) from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writes ------------------------------------------------------------------------------

    def _refuse_if_unwritable(self) -> None:
        if self._failure is not None:
            raise StoreUnavailable(self._refusal())
        if not self._opened:
            raise StoreUnavailable(f"store {self.directory} is not open")

    def _record(self, change: StagedChange) -> _JournalEntry:
        journal_puts: dict[str, dict[str, Doc]] = {}
        journal_fields: dict[str, dict[str, Doc]] = {}
        for collection, given in change.puts.items():
            whole, fields = _journal_form(self._data.get(collection, EMPTY), given)
            if whole:
                journal_puts[collection] = whole
            if fields:
                journal_fields[collection] = fields
        for collection, changes in change.patches.items():
            fields = journal_fields.setdefault(collection, {})
            for key, changed in changes.items():
                # Only encoded (below, before apply returns): no copy of the caller's dict.
                fields[key] = {**fields[key], **changed} if key in fields else changed
        record: dict[str, object] = {"p": journal_puts, "d": change.deletes}
        if journal_fields:
            record["u"] = journal_fields
        return self._generation, encode_line(record)

    async def wait_durable(self, seq: int) -> None:
        while self._durable_seq < seq:
            if self._failure is not None:
                raise StoreUnavailable(self._refusal())
            await self._progress.wait()

    # -- background writers ------------------------------------------------------------------

    async def _write_loop(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(self._journal.write, [entry for _, entry in batch])
                except JournalWriteError as exc:
                    if exc.done:
                        self._durable_seq = batch[exc.done - 1][0]
                    # Written again, in order, before anything applied since.
                    self._pending = batch[exc.done :] + self._pending
                    self._failing(exc)
                    if self._closing:
                        return
                    failures += 1
                    with contextlib.suppress(TimeoutError):
                        delay = self._write_backoff.delay(failures)
                        await asyncio.wait_for(self._retry_now.wait(), delay)
                    continue
                self._observe("journal", time.perf_counter() - started)
                self._durable_seq = batch[-1][0]
                if self._failure is not None:
                    self._recovered()
                    failures = 0
                self._notify()
                if self._journal.bytes_written >= self.journal_max_bytes:
                    self._checkpoint_wanted.set()
            if self._closing:
                return

    def _failing(self, cause: OSError) -> None:
        """The disk refused a write: refuse changes and say so (once), and count it."""
        self._write_failures += 1
        before = self._failure
        self._failure = cause
        if before is not None and before.errno != cause.errno:
            log.error(
                "store %s: the disk still refuses writes, now for another reason (%s)",
                self.directory,
                describe_os_error(cause),
            )
        if before is None:
            self._failing_since = time.monotonic()
            log.error(
                "store %s: the disk refuses writes (%s); changes are refused and the %d "
                "applied ones not yet on disk are written again as soon as it takes them",
                self.directory,
                describe_os_error(cause),
                len(self._pending),
            )
            # Waiters learn at once that their change is not durable (it may still become so).
            self._notify()

    def _recovered(self) -> None:
        since = self._failing_since or time.monotonic()
        log.warning(
            "store %s: the disk takes writes again; every applied change is on disk and "
            "changes are accepted again (refused for %.1f s, %d failed writes)",
            self.directory,
            time.monotonic() - since,
            self._write_failures,
        )
        self._failure = None
        self._failing_since = None
        # A snapshot may have failed meanwhile: take one soon, not at the next interval.
        self._checkpoint_wanted.set()

    def _refusal(self) -> str:
        assert self._failure is not None
        return (
            f"the disk of store {self.directory} refuses writes "
            f"({describe_os_error(self._failure)}); nothing more is accepted until it takes "
            "them again (retried by itself)"
        )

    def health(self) -> StoreHealth:
        """Whether writes are failing, since when and why, and what is not on disk yet."""
        since = self._failing_since
        return StoreHealth(
            failing=self._failure is not None,
            cause=None if self._failure is None else describe_os_error(self._failure),
            failing_for_s=None if since is None else time.monotonic() - since,
            not_durable=self._applied_seq - self._durable_seq if self._failure else 0,
            write_failures=self._write_failures,
        )

    async def _snapshot_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_wanted.wait(), self.snapshot_interval_s)
            if self._stop_snapshots:
                return
            self._checkpoint_wanted.clear()
            try:
                await self.checkpoint()
            except StoreUnavailable:
                continue  # writes are failing; a snapshot is wanted again once they resume
            except OSError as exc:
                # The journal still holds everything; the next attempt folds it in.
                log.error("store %s: snapshot failed: %s", self.directory, describe_os_error(exc))

    async def checkpoint(self) -> None:
        async with self._checkpoint_lock:
            if self._applied_seq == self._snapshot_seq:
                return
            if self._failure is not None:
                raise StoreUnavailable(self._refusal())
            # From here on new changes go to the next journal; the copy is the state before them.
            self._generation += 1
            generation = self._generation
            covered_seq = self._applied_seq
            # Shallow copies suffice: stored documents are replaced, never mutated.
            copy = {name: dict(docs) for name, docs in self._data.items() if docs}
            started = time.perf_counter()
            await asyncio.to_thread(self._write_snapshot, generation, copy)
            # The older journal must be complete before it may be dropped.
            await self.wait_durable(covered_seq)
            await asyncio.to_thread(self._commit_snapshot, generation)
            self._snapshot_seq = covered_seq
            self._observe("snapshot", time.perf_counter() - started)

    # -- blocking file work (threads only) ---------------------------------------------------

    def _load(self) -> tuple[int, dict[str, dict[str, Doc]], int, int]:
        current = 0
        current_file = self.directory / "CURRENT"
        if current_file.exists():
            current = int(current_file.read_text(encoding="ascii").strip())
        data: dict[str, dict[str, Doc]] = {}
        if current:
            snapshot_dir = self.directory / "snapshots" / f"{current:012d}"
            if not snapshot_dir.is_dir():
                # Starting empty here would silently lose the whole inventory.
                raise StoreError(
                    f"{current_file} names snapshot {snapshot_dir.name}, which is missing; "
                    "restore it from backup (nothing was changed)"
                )
            for path in sorted(snapshot_dir.glob("*.json")):
                collection = path.name.split(".", 1)[0]
                docs = data.setdefault(collection, {})
                db = TinyDB(path, access_mode="r")
                try:
                    for row in db.table(_TABLE).all():
                        docs[row["k"]] = row["v"]
                finally:
                    db.close()
        replayed = 0
        generations = journal_generations(self.directory / "journal")
        for generation in generations:
            if generation < current:
                continue
            for record in read_journal(self.directory / "journal" / f"{generation:012d}.log"):
                for collection, docs in record.get("p", {}).items():
                    data.setdefault(collection, {}).update(docs)
                for collection, changes in record.get("u", {}).items():
                    target = data.setdefault(collection, {})
                    for key, fields in changes.items():
                        target[key] = {**target.get(key, {}), **fields}
                for collection, keys in record.get("d", {}).items():
                    target = data.get(collection, {})
                    for key in keys:
                        target.pop(key, None)
                replayed += 1
        return current, data, replayed, max(generations, default=0)

    def _write_snapshot(self, generation: int, copy: dict[str, dict[str, Doc]]) -> None:
        snapshots = self.directory / "snapshots"
        final = snapshots / f"{generation:012d}"
        tmp = snapshots / f"{generation:012d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write_snapshot_files(tmp, copy)
        except OSError:
            # A half-written snapshot only takes space a full disk needs.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        move_into_place(tmp, final)

    def _write_snapshot_files(self, tmp: Path, copy: dict[str, dict[str, Doc]]) -> None:
        tmp.mkdir(mode=0o700)
        for collection, docs in copy.items():
            items = list(docs.items())
            for shard, start in enumerate(range(0, len(items), SHARD_DOCS)):
                storage = _SnapshotStorage(tmp / f"{collection}.{shard:04d}.json")
                try:
                    # The table as TinyDB lays it out (document ids from 1), in one fsynced write.
                    rows = items[start : start + SHARD_DOCS]
                    storage.write(
                        {
                            _TABLE: {
                                str(number): {"k": key, "v": doc}
                                for number, (key, doc) in enumerate(rows, 1)
                            }
                        }
                    )
                finally:
                    storage.close()
        fsync_dir(tmp)

    def _commit_snapshot(self, generation: int) -> None:
        write_atomically(self.directory / "CURRENT", f"{generation}\n")
        journal_dir = self.directory / "journal"
        for old in journal_generations(journal_dir):
            if old < generation:
                (journal_dir / f"{old:012d}.log").unlink(missing_ok=True)
        for path in (self.directory / "snapshots").iterdir():
            if path.name != f"{generation:012d}":
                shutil.rmtree(path, ignore_errors=True)


def describe_os_error(exc: OSError) -> str:
    """What the disk said, and where: ``No space left on device: /data/store/journal/...``."""
    what = exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def cannot_open(directory: Path, exc: OSError) -> str:
    """Why a store could not be opened: the path and the cause, and what to do."""
    advice = {
        errno.ENOSPC: "free space on that disk",
        errno.EDQUOT: "raise the quota or free space",
        errno.EROFS: "mount it read-write",
        errno.EACCES: "give the controller's user write access",
        errno.EPERM: "give the controller's user write access",
    }.get(exc.errno or 0, "fix the disk")
    return (
        f"cannot open the store in {directory}: {describe_os_error(exc)}; {advice} and start again"
    )
