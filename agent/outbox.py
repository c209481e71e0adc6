"""The durable outbox: every report is on disk before it counts as taken, and leaves in order.

When the disk refuses writes (full, read-only, failing), what cannot be written waits in
memory, is sent from there, and goes to disk once the disk takes writes again; the outbox
says so (log, notices, :attr:`Outbox.health`) instead of failing the polls that feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from polyfleet.shared.durable import fsync_directory, write_atomically
from polyfleet.shared.errors import PolyfleetError, os_error_words
from polyfleet.shared.retry import Backoff
from polyfleet.shared.schema import AgentNotice, Report, Snapshot

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 1024 * 1024
#: First wait before the disk is tried again after it refused a write; doubles up to the max.
DISK_RETRY_S = 1.0
DISK_RETRY_MAX_S = 30.0
_ACKED_FILE = "acked"
_INSTANCE_FILE = "instance"
_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"
#: The notice that counts what a full outbox dropped.
DROP_NOTICE: Literal["outbox_dropped"] = "outbox_dropped"
#: Notices about the outbox's own disk.
OwnNotice = Literal["outbox_failing", "outbox_recovered"]


class OutboxFullError(PolyfleetError):
    """The outbox is at its size limit and holds nothing it may drop for a new state change."""


@dataclass(frozen=True)
class Entry:
    """One spooled item: a report or a notice, with its place in the send order."""

    seq: int
    kind: str  # "report" | "notice"
    serial: str
    state: str
    repeat: bool
    data: dict[str, Any]
    size: int
    line: bytes = field(default=b"", repr=False)

    @property
    def report_id(self) -> str:
        return str(self.data.get("id", ""))

    def report(self) -> Report:
        return Report.model_validate(self.data)

    def notice(self) -> AgentNotice:
        return AgentNotice.model_validate(self.data)

    def problem_codes(self) -> frozenset[str]:
        """The problem codes a report says its device has (empty for a notice)."""
        if self.kind != "report":
            return frozenset()
        health = self.data.get("snapshot", {}).get("health", {})
        return frozenset(str(p.get("code", "")) for p in health.get("problems", ()))


@dataclass(frozen=True)
class OutboxHealth:
    """Whether the outbox's disk takes writes, and if not, why and what the outbox does."""

    disk_ok: bool
    #: In words, empty while the disk takes writes: "cannot write to DIR (no space left...)".
    problem: str
    #: What the outbox does about it, in words.
    action: str
    since: datetime | None
    #: Entries that exist only in memory (sent from there; written once the disk recovers).
    memory_entries: int
    write_failures: int


def state_key(snapshot: Snapshot | dict[str, Any]) -> str:
    """Digest of what a snapshot says about the device, ignoring when it was taken and uptime."""
    doc = snapshot.model_dump(mode="json") if isinstance(snapshot, Snapshot) else snapshot
    payload = {k: v for k, v in doc.items() if k not in ("collected_at", "uptime_s")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int
    size: int


@dataclass
class _Pending:
    """A put waiting for the writer; its seq is given at write time so disk order is seq order."""

    kind: str
    serial: str
    state: str
    make_data: Callable[[int], dict[str, Any]]
    future: asyncio.Future[Entry | None]


@dataclass
class _DropPlan:
    """What making room drops: entries, how many of them were reports, notices merged."""

    seqs: set[int] = field(default_factory=set)
    freed: int = 0
    reports: int = 0
    #: Counts carried by earlier drop notices that are merged into the new one.
    merged: int = 0


class Outbox:
    """A spool directory of append-only JSON-lines segments plus an ``acked`` watermark.

    ``put`` returns once the report is written and fsynced (many puts share one
    fsync). ``peek``/``ack`` give the uplink the oldest entries in order. A device's
    state counts as recorded (the next equal one is a repeat) only once its report is
    in the outbox: a refused one is tried again by the next poll.

    At ``max_bytes`` the outbox makes room, oldest first: repeats of unchanged state
    go first, then state changes are folded into the later reports of their device
    (a change whose every problem its device still or again shows next is dropped:
    an episode may start later or end later, or two of one problem merge, but every
    episode keeps its start and its end). A device's newest report is never folded
    (a repeat of the one before it may go), nor is a report whose problems its device
    shows in no neighbouring report, nor anything on its way to the controller; with
    nothing else left, a new state change is refused (OutboxFullError). Each drop is
    counted once, in one ``outbox_dropped`` notice written together with the drop.

    When the disk refuses a write (full, read-only, I/O error), entries stay in memory
    (within ``max_bytes``), are sent from there, and are written in order once the disk
    takes writes again (tried every few seconds, backing off). The outbox logs that once,
    queues ``outbox_failing`` and later ``outbox_recovered`` notices, and shows it in
    :attr:`health`; a poll never fails for it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        disk_retry_s: float = DISK_RETRY_S,
        disk_retry_max_s: float = DISK_RETRY_MAX_S,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.clock = clock
        self.disk_retry_s = disk_retry_s
        self.disk_retry_max_s = disk_retry_max_s
        self.instance = ""
        #: Differs on every open: ids of reports sent from memory before a crash never recur.
        self.run = ""
        self._entries: list[Entry] = []
        self._bytes = 0
        self._acked = 0
        self._acked_on_disk = 0
        self._next_seq = 1
        self._last_state: dict[str, str] = {}
        self._segments: list[_Segment] = []
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyfleet-outbox")
        #: Seqs of entries that exist only in memory (the disk refused them).
        self._memory: set[int] = set()
        #: Entries up to this seq are being sent: never dropped meanwhile.
        self._sending_upto = 0
        self._disk_error: OSError | None = None
        self._failing_since: datetime | None = None
        self._disk_backoff = Backoff(first_s=disk_retry_s, max_s=disk_retry_max_s)
        #: Writes the disk refused in a row.
        self._disk_failures = 0
        self._next_disk_try = 0.0
        self._retrier: asyncio.Task[None] | None = None
        self._closed = False
        self.write_failures = 0
        self.dropped_total = 0
        #: State changes refused for want of room (each tried again by the next poll).
        self.refused_total = 0
        #: Reports taken this run (spooled, or dropped at once as a repeat): each of them is
        #: delivered, counted in ``dropped_total``, or still waiting.
        self.taken_total = 0
        #: Drops not yet in a notice (a notice that did not fit carries them later).
        self.unreported_drops = 0
        self._changed = asyncio.Event()

    # --- opening ------------------------------------------------------------------------

    async def open(self) -> None:
        """Load what a previous run left (a torn last line is discarded, not an error)."""
        await self._run(self._open_blocking)

    def _open_blocking(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run = secrets.token_hex(4)
        instance_path = self.directory / _INSTANCE_FILE
        if instance_path.exists():
            self.instance = instance_path.read_text().strip()
        if not self.instance:
            self.instance = secrets.token_hex(8)
            write_atomically(instance_path, self.instance.encode())
        acked_path = self.directory / _ACKED_FILE
        if acked_path.exists():
            text = acked_path.read_text().strip()
            self._acked = int(text) if text.isdigit() else 0
        self._acked_on_disk = self._acked
        entries: dict[int, Entry] = {}
        max_seq = self._acked
        for path in sorted(self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")):
            raw = path.read_bytes()
            good_end = 0
            first = last = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    entry = _decode(line)
                except (ValueError, KeyError, TypeError):
                    break
                good_end += len(line)
                first = first or entry.seq
                last = entry.seq
                max_seq = max(max_seq, entry.seq)
                if entry.seq > self._acked:
                    entries[entry.seq] = entry
            if good_end < len(raw):
                # A crash mid-write left a torn line: it never counted as taken.
                with open(path, "r+b") as handle:
                    handle.truncate(good_end)
                    handle.flush()
                    os.fsync(handle.fileno())
            if good_end == 0 or last <= self._acked:
                path.unlink()
                continue
            self._segments.append(_Segment(path, first, last, good_end))
        self._entries = [entries[s] for s in sorted(entries)]
        self._bytes = sum(e.size for e in self._entries)
        self._next_seq = max_seq + 1
        for entry in self._entries:
            if entry.kind == "report":
                self._last_state[entry.serial] = entry.state

    async def close(self) -> None:
        """Finish writes in flight, try once more to write what waits in memory, stop."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
        async with self._io_lock:
            if self._memory:
                await self._write_backlog()
            if self._memory:
                log.warning(
                    "outbox: %d entries were only in memory (the disk refused them) and are "
                    "lost with this stop; the controller has what was sent",
                    len(self._memory),
                )
        if self._flusher is not None:
            # A notice the last attempt queued (the disk recovered) is written too.
            await asyncio.shield(self._flusher)
        self._executor.shutdown(wait=True)

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # --- what it holds ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def disk_ok(self) -> bool:
        return self._disk_error is None

    @property
    def health(self) -> OutboxHealth:
        """Whether writes reach the disk; when not, the cause and what the outbox does."""
        if self._disk_error is None:
            return OutboxHealth(
                disk_ok=True,
                problem="",
                action="",
                since=None,
                memory_entries=len(self._memory),
                write_failures=self.write_failures,
            )
        return OutboxHealth(
            disk_ok=False,
            problem=self._problem_text(self._disk_error),
            action=self._action_text(),
            since=self._failing_since,
            memory_entries=len(self._memory),
            write_failures=self.write_failures,
        )

    def _problem_text(self, exc: OSError) -> str:
        return f"cannot write to {self.directory} ({os_error_words(exc)})"

    def _action_text(self) -> str:
        budget = _size_text(self.max_bytes)
        return (
            f"keeping new reports in memory (up to {budget} in all; repeats of unchanged "
            "state dropped first) and sending them from there; trying the disk again every "
            f"{self.disk_retry_max_s:g} s at most; reports kept only in memory are lost if "
            "the agent stops"
        )

    # --- taking -------------------------------------------------------------------------

    async def put(self, snapshot: Snapshot) -> Entry | None:
        """Spool one snapshot; None when it was a repeat dropped because the outbox is full.

        Raises OutboxFullError when full of what may not be dropped: the state is then
        not recorded, so the next poll offers it again.
        """
        # Dumped once: the state digest and the spooled line both come from this dict.
        doc = snapshot.model_dump(mode="json")
        state = state_key(doc)
        prefix = f"{self.instance}-{self.run}"

        def make(seq: int) -> dict[str, Any]:
            # The shape of shared.schema.Report, built without a second validation.
            return {"id": f"{prefix}-{seq}", "snapshot": doc}

        return await self._enqueue("report", snapshot.serial, state, make)

    async def put_notice(self, notice: AgentNotice) -> Entry | None:
        data = notice.model_dump(mode="json")
        return await self._enqueue("notice", "", "", lambda _seq: data)

    async def _enqueue(
        self, kind: str, serial: str, state: str, make: Callable[[int], dict[str, Any]]
    ) -> Entry | None:
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(kind, serial, state, make, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox writer")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        async with self._io_lock:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._admit_and_write(batch)
                except Exception as exc:  # a bug must still reach every waiting put
                    log.exception("outbox: taking %d entries failed", len(batch))
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                            # A put whose caller has gone must not leave an unread error.
                            pending.future.exception()

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    async def _admit_and_write(self, batch: list[_Pending]) -> None:
        accepted: list[tuple[Entry, _Pending]] = []
        incoming = 0
        last_state = dict(self._last_state)
        for pending in batch:
            # Numbered before admission: a refused entry leaves a gap, which is harmless.
            seq = self._take_seq()
            repeat = pending.kind == "report" and last_state.get(pending.serial) == pending.state
            entry = _make_entry(
                seq,
                pending.kind,
                pending.serial,
                pending.state,
                repeat,
                pending.make_data(seq),
            )
            if self._bytes + incoming + entry.size > self.max_bytes:
                # Free a margin too, so a full spool is not rewritten on every put.
                needed = self._bytes + incoming + entry.size - self.max_bytes
                await self._make_room(needed + self.max_bytes // 8, [e for e, _ in accepted])
            if self._bytes + incoming + entry.size > self.max_bytes:
                if repeat:
                    self.taken_total += 1
                    self._count_drops(1)
                    pending.future.set_result(None)
                    continue
                self.refused_total += 1
                pending.future.set_exception(
                    OutboxFullError(
                        f"outbox {self.directory} is full ({_size_text(self.max_bytes)}) of "
                        "state changes it may not drop; this one is offered again next poll"
                    )
                )
                continue
            accepted.append((entry, pending))
            incoming += entry.size
            if entry.kind == "report":
                last_state[entry.serial] = entry.state
        tail = self._entries[-1].seq if self._entries else 0
        if accepted and accepted[0][0].seq < tail:
            # Making room queued its drop notice after these were numbered. Number them
            # again: seq order must stay append order, since an ack covers every seq up to
            # its own (a batch sent meanwhile, ending at that notice, must not cover them).
            accepted = [(self._renumbered(e, p), p) for e, p in accepted]
        notice = self._drop_notice_for_unreported()
        entries = [e for e, _ in accepted] + ([notice] if notice is not None else [])
        if not entries:
            return
        await self._store(entries)
        for entry, pending in accepted:
            if entry.kind == "report":
                # Recorded only now: a refused state is no "last state" to repeat.
                self._last_state[entry.serial] = entry.state
                self.taken_total += 1
            if not pending.future.done():
                pending.future.set_result(entry)
        self._changed.set()

    def _renumbered(self, entry: Entry, pending: _Pending) -> Entry:
        seq = self._take_seq()
        data = pending.make_data(seq)
        return _make_entry(seq, entry.kind, entry.serial, entry.state, entry.repeat, data)

    def _count_drops(self, count: int) -> None:
        if count:
            self.dropped_total += count
            self.unreported_drops += count

    def _drop_notice_for_unreported(self) -> Entry | None:
        """A notice for drops not yet told, written with the batch that dropped them.

        Never refused for room: a few hundred bytes over the limit, at most one such notice
        at a time (making room merges queued ones), are worth every drop being told.
        """
        if not self.unreported_drops:
            return None
        entry = _make_entry(self._take_seq(), "notice", "", "", False, self._drop_notice_data())
        self.unreported_drops = 0
        return entry

    def _drop_notice_data(self, count: int | None = None) -> dict[str, Any]:
        return AgentNotice(
            kind=DROP_NOTICE,
            detail="outbox full while the controller could not take reports: dropped "
            "repeats of unchanged state first, then folded state changes into later "
            "reports of the same device (every fault episode kept with its start and end)",
            count=self.unreported_drops if count is None else count,
            at=self.clock(),
        ).model_dump(mode="json")

    # --- writing ------------------------------------------------------------------------

    async def _store(self, entries: list[Entry]) -> None:
        """Append ``entries`` (after whatever waits in memory) to disk, or keep them in memory."""
        wrote = False
        if self._disk_error is None or time.monotonic() >= self._next_disk_try:
            backlog = [e for e in self._entries if e.seq in self._memory]
            wrote = await self._append(backlog + entries)
            if wrote and backlog:
                self._memory.clear()
        for entry in entries:
            self._entries.append(entry)
            self._bytes += entry.size
            if not wrote:
                self._memory.add(entry.seq)

    async def _append(self, entries: list[Entry]) -> bool:
        """Write and fsync ``entries``; False (and the outbox knows why) when the disk refused."""
        if not entries:
            return True
        try:
            await self._run(
                self._append_blocking,
                [e.line for e in entries],
                entries[0].seq,
                entries[-1].seq,
            )
        except OSError as exc:
            await self._disk_failed(exc)
            return False
        await self._disk_works()
        return True

    def _append_blocking(self, lines: list[bytes], first: int, last: int) -> None:
        segment = self._segments[-1] if self._segments else None
        new_segment = segment is None or segment.size >= self.segment_bytes
        if new_segment:
            path = self.directory / f"{_SEGMENT_PREFIX}{first:012d}{_SEGMENT_SUFFIX}"
            segment = _Segment(path, first, last, 0)
        assert segment is not None
        data = b"".join(lines)
        # Opened for each append, not held: a disk can be remounted read-only meanwhile,
        # and no half-written line stays behind a failed write.
        try:
            with open(segment.path, "ab") as handle:
                try:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        handle.truncate(segment.size)
                    raise
            if new_segment:
                fsync_directory(self.directory)
        except OSError:
            if new_segment:
                with contextlib.suppress(OSError):
                    segment.path.unlink(missing_ok=True)
            raise
        if new_segment:
            self._segments.append(segment)
        segment.size += len(data)
        segment.last_seq = max(segment.last_seq, last)

    async def _disk_failed(self, exc: OSError) -> None:
        self.write_failures += 1
        first = self._disk_error is None
        self._disk_error = exc
        if first:
            self._failing_since = self.clock()
            self._disk_failures = 0
            log.error("outbox: %s; %s", self._problem_text(exc), self._action_text())
            self._queue_own_notice(
                "outbox_failing", f"{self._problem_text(exc)}; {self._action_text()}"
            )
        self._disk_failures += 1
        self._next_disk_try = time.monotonic() + self._disk_backoff.delay(self._disk_failures)
        self._start_retrier()

    async def _disk_works(self) -> None:
        if self._disk_error is None:
            return
        if not await self._persist_ack():
            return  # the watermark did not take: still failing
        since = self._failing_since
        written = len(self._memory)
        self._disk_error = None
        self._failing_since = None
        self._disk_failures = 0
        took = "" if since is None else f" after {_duration_text(self.clock() - since)}"
        detail = f"{self.directory} takes writes again{took}: reports are on disk again"
        log.warning("outbox: %s (%d kept in memory meanwhile)", detail, written)
        self._queue_own_notice("outbox_recovered", detail)

    def _queue_own_notice(self, kind: OwnNotice, detail: str) -> None:
        """Queue a notice about the outbox itself (it goes out like any other entry)."""
        data = AgentNotice(kind=kind, detail=detail[:256], at=self.clock())
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        payload = data.model_dump(mode="json")
        self._queue.append(_Pending("notice", "", "", lambda _seq: payload, future))
        # Nobody awaits this one: read its outcome so that no error is left unread.
        future.add_done_callback(_read_outcome)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox writer")

    def _start_retrier(self) -> None:
        if self._closed or (self._retrier is not None and not self._retrier.done()):
            return
        self._retrier = asyncio.create_task(self._retry_disk(), name="outbox disk retry")

    async def _retry_disk(self) -> None:
        """While the disk refuses writes, try it again now and then (even with no new report)."""
        while self._disk_error is not None and not self._closed:
            delay = max(0.0, self._next_disk_try - time.monotonic())
            await asyncio.sleep(delay)  # waits-for: the disk's next try (backing off)
            async with self._io_lock:
                if self._disk_error is None or time.monotonic() < self._next_disk_try:
                    continue
                await self._write_backlog()
                if self._disk_error is None:
                    self._changed.set()

    async def _write_backlog(self) -> None:
        backlog = [e for e in self._entries if e.seq in self._memory]
        if not backlog:
            # Nothing waits in memory: the watermark, written anew, tells whether writes work.
            try:
                await self._run(self._ack_blocking, self._acked)
            except OSError as exc:
                await self._disk_failed(exc)
                return
            self._acked_on_disk = self._acked
            await self._disk_works()
            return
        if await self._append(backlog):
            self._memory.clear()

    # --- making room --------------------------------------------------------------------

    async def _make_room(self, needed: int, incoming: list[Entry]) -> None:
        """Drop (repeats, then foldable changes, oldest first) until ``needed`` bytes are free."""
        memory_only = self._disk_error is not None
        plan = self._plan_drops(needed, incoming, memory_only=memory_only)
        if not plan.seqs:
            return
        count = plan.reports + plan.merged + self.unreported_drops
        notice_seq = self._take_seq()
        notice = _make_entry(notice_seq, "notice", "", "", False, self._drop_notice_data(count))
        keep = [e for e in self._entries if e.seq not in plan.seqs]
        if not memory_only:
            durable = [e for e in keep if e.seq not in self._memory] + [notice]
            try:
                # Drops and the notice that counts them land together, or neither does.
                await self._run(self._rewrite_blocking, durable)
            except OSError as exc:
                await self._disk_failed(exc)
                # The spool is as it was; what may be dropped now is only in memory.
                await self._make_room(needed, incoming)
                return
        else:
            self._memory.add(notice_seq)
        self._entries = [*keep, notice]
        self._memory -= plan.seqs
        self._bytes = sum(e.size for e in self._entries)
        self.dropped_total += plan.reports
        self.unreported_drops = 0
        log.warning(
            "outbox full (%s): dropped %d reports (repeats of unchanged state, then changes "
            "folded into later reports of their device)",
            _size_text(self.max_bytes),
            plan.reports,
        )

    def _plan_drops(self, needed: int, incoming: list[Entry], *, memory_only: bool) -> _DropPlan:
        plan = _DropPlan()

        def may_drop(entry: Entry) -> bool:
            if entry.seq <= self._sending_upto:
                return False
            return not memory_only or entry.seq in self._memory

        for entry in self._entries:
            if entry.kind == "notice" and entry.data.get("kind") == DROP_NOTICE and may_drop(entry):
                # Earlier drop notices still queued merge into the new one.
                plan.seqs.add(entry.seq)
                plan.freed += entry.size
                plan.merged += int(entry.data.get("count", 0))
        by_serial: dict[str, list[Entry]] = {}
        for entry in [*self._entries, *incoming]:
            if entry.kind == "report":
                by_serial.setdefault(entry.serial, []).append(entry)
        position = {e.seq: i for reports in by_serial.values() for i, e in enumerate(reports)}

        def neighbour(entry: Entry, step: int) -> Entry | None:
            reports = by_serial[entry.serial]
            i = position[entry.seq] + step
            while 0 <= i < len(reports):
                if reports[i].seq not in plan.seqs:
                    return reports[i]
                i += step
            return None

        def drop(entry: Entry) -> None:
            plan.seqs.add(entry.seq)
            plan.freed += entry.size
            plan.reports += 1

        # 1. Repeats: the same state as the device's previous report still queued.
        for entry in self._entries:
            if plan.freed >= needed:
                return plan
            if entry.kind != "report" or not may_drop(entry):
                continue
            before = neighbour(entry, -1)
            if before is not None and before.state == entry.state:
                drop(entry)
        # 2. Folds: a change every problem of which its device shows again just before or
        # after; never the device's newest report (its current state).
        for entry in self._entries:
            if plan.freed >= needed:
                return plan
            if entry.kind != "report" or not may_drop(entry) or entry.seq in plan.seqs:
                continue
            after = neighbour(entry, +1)
            if after is None:
                continue
            before = neighbour(entry, -1)
            around = after.problem_codes() | (before.problem_codes() if before else frozenset())
            if entry.problem_codes() <= around:
                drop(entry)
        return plan

    def _rewrite_blocking(self, keep: list[Entry]) -> None:
        old = list(self._segments)
        if not keep:
            for seg in old:
                seg.path.unlink(missing_ok=True)
            self._segments = []
            return
        # The compacted file takes the oldest segment's name, so a crash before the
        # old files are gone leaves duplicates (ignored by seq on load), never a gap.
        target = (
            old[0].path
            if old
            else self.directory / f"{_SEGMENT_PREFIX}{keep[0].seq:012d}{_SEGMENT_SUFFIX}"
        )
        data = b"".join(e.line for e in keep)
        write_atomically(target, data)
        for seg in old[1:]:
            seg.path.unlink(missing_ok=True)
        fsync_directory(self.directory)
        self._segments = [_Segment(target, keep[0].seq, keep[-1].seq, len(data))]

    # --- sending ------------------------------------------------------------------------

    def peek(self, max_reports: int, max_notices: int = 64) -> list[Entry]:
        """The oldest entries in order, up to the given counts (stops at the first misfit)."""
        chosen: list[Entry] = []
        reports = notices = 0
        for entry in self._entries:
            if entry.kind == "report":
                if reports >= max_reports:
                    break
                reports += 1
            else:
                if notices >= max_notices:
                    break
                notices += 1
            chosen.append(entry)
        return chosen

    @contextlib.contextmanager
    def sending(self, up_to_seq: int) -> Iterator[None]:
        """While a batch up to ``up_to_seq`` is on its way, none of it is dropped."""
        self._sending_upto = up_to_seq
        try:
            yield
        finally:
            self._sending_upto = 0

    async def ack(self, up_to_seq: int) -> None:
        """The controller stored everything up to ``up_to_seq``: forget it, free its segments."""
        async with self._io_lock:
            if up_to_seq <= self._acked:
                return
            self._acked = up_to_seq
            self._entries = [e for e in self._entries if e.seq > up_to_seq]
            self._memory = {s for s in self._memory if s > up_to_seq}
            self._bytes = sum(e.size for e in self._entries)
            if self._disk_error is None:
                await self._persist_ack()
            else:
                # Acked segments still free space on a full disk (unlinking needs none).
                await self._run(self._free_acked_segments, up_to_seq)

    async def _persist_ack(self) -> bool:
        """Write the acked watermark and free acked segments; False when the disk refused."""
        if self._acked_on_disk >= self._acked:
            return True
        try:
            await self._run(self._ack_blocking, self._acked)
        except OSError as exc:
            await self._disk_failed(exc)
            return False
        self._acked_on_disk = self._acked
        return True

    def _ack_blocking(self, up_to_seq: int) -> None:
        write_atomically(self.directory / _ACKED_FILE, str(up_to_seq).encode())
        self._free_acked_segments(up_to_seq)

    def _free_acked_segments(self, up_to_seq: int) -> None:
        """Delete segments holding only acknowledged entries; one the disk will not let go
        of (read-only) stays listed and goes with a later ack, its entries ignored on load."""
        keep: list[_Segment] = []
        for seg in self._segments:
            if seg.last_seq > up_to_seq:
                keep.append(seg)
                continue
            try:
                seg.path.unlink(missing_ok=True)
            except OSError:
                keep.append(seg)
        self._segments = keep

    async def wait_for_entries(self, timeout: float) -> None:
        """Return when something new was spooled, or after ``timeout``."""
        if self._entries:
            return
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass


def _read_outcome(future: asyncio.Future[Entry | None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning(
            "outbox: a notice about the outbox itself was not taken: %s", future.exception()
        )


def _size_text(size: int) -> str:
    for unit, step in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= step:
            return f"{size / step:.3g} {unit}"
    return f"{size} bytes"


def _duration_text(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _make_entry(
    seq: int, kind: str, serial: str, state: str, repeat: bool, data: dict[str, Any]
) -> Entry:
    entry = Entry(seq=seq, kind=kind, serial=serial, state=state, repeat=repeat, data=data, size=0)
    line = _encode(entry)
    return Entry(**{**entry.__dict__, "size": len(line), "line": line})


def entry_doc(entry: Entry) -> dict[str, Any]:
    """An entry as its spool line holds it (the held reports' lines hold it too)."""
    return {
        "seq": entry.seq,
        "kind": entry.kind,
        "serial": entry.serial,
        "state": entry.state,
        "repeat": entry.repeat,
        "data": entry.data,
    }


def entry_from_doc(doc: Mapping[str, Any], *, line: bytes = b"") -> Entry:
    """The entry ``entry_doc`` wrote (sized by its outbox ``line``, when there is one)."""
    return Entry(
        seq=int(doc["seq"]),
        kind=str(doc["kind"]),
        serial=str(doc["serial"]),
        state=str(doc["state"]),
        repeat=bool(doc["repeat"]),
        data=dict(doc["data"]),
        size=len(line),
        line=line,
    )


def json_line(doc: Mapping[str, Any]) -> bytes:
    """One spool line: compact JSON and a newline."""
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _encode(entry: Entry) -> bytes:
    return json_line(entry_doc(entry))


def _decode(line: bytes) -> Entry:
    return entry_from_doc(json.loads(line), line=line)
