"""The durable outbox: every report is on disk before it counts as taken, and leaves in order."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from polyfleet.shared.errors import PolyfleetError
from polyfleet.shared.schema import AgentNotice, Report, Snapshot

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 1024 * 1024
_ACKED_FILE = "acked"
_INSTANCE_FILE = "instance"
_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"


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
    repeat: bool
    make_data: Callable[[int], dict[str, Any]]
    future: asyncio.Future[Entry | None]


class Outbox:
    """A spool directory of append-only JSON-lines segments plus an ``acked`` watermark.

    ``put`` returns once the report is written and fsynced (many puts share one
    fsync). ``peek``/``ack`` give the uplink the oldest entries in order. When the
    spool would grow past ``max_bytes`` it drops the oldest *repeats* (reports
    whose device state equals the report before them), never a state change, and
    queues an ``outbox_dropped`` notice saying how many it dropped.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.clock = clock
        self.instance = ""
        self._entries: list[Entry] = []
        self._bytes = 0
        self._acked = 0
        self._next_seq = 1
        self._last_state: dict[str, str] = {}
        self._segments: list[_Segment] = []
        self._handle: IO[bytes] | None = None
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyfleet-outbox")
        self.dropped_total = 0
        #: Drops not yet told to the controller (one merged notice carries them).
        self.unreported_drops = 0
        self._changed = asyncio.Event()

    # --- opening ------------------------------------------------------------------------

    async def open(self) -> None:
        """Load what a previous run left (a torn last line is discarded, not an error)."""
        await self._run(self._open_blocking)

    def _open_blocking(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        instance_path = self.directory / _INSTANCE_FILE
        if instance_path.exists():
            self.instance = instance_path.read_text().strip()
        if not self.instance:
            self.instance = secrets.token_hex(8)
            _atomic_write(instance_path, self.instance.encode())
        acked_path = self.directory / _ACKED_FILE
        if acked_path.exists():
            text = acked_path.read_text().strip()
            self._acked = int(text) if text.isdigit() else 0
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
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        async with self._io_lock:
            await self._run(self._close_handle)
        self._executor.shutdown(wait=True)

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # --- taking -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def put(self, snapshot: Snapshot) -> Entry | None:
        """Spool one snapshot durably; None when it was a repeat dropped because the spool is full.

        Raises OutboxFullError when full of state changes only (the caller keeps
        the state and tries again next cycle).
        """
        # Dumped once: the state digest and the spooled line both come from this dict.
        doc = snapshot.model_dump(mode="json")
        state = state_key(doc)
        repeat = self._last_state.get(snapshot.serial) == state
        self._last_state[snapshot.serial] = state
        instance = self.instance

        def make(seq: int) -> dict[str, Any]:
            # The shape of shared.schema.Report, built without a second validation.
            return {"id": f"{instance}-{seq}", "snapshot": doc}

        return await self._enqueue("report", snapshot.serial, state, repeat, make)

    async def put_notice(self, notice: AgentNotice) -> Entry | None:
        data = notice.model_dump(mode="json")
        return await self._enqueue("notice", "", "", False, lambda _seq: data)

    async def _enqueue(
        self,
        kind: str,
        serial: str,
        state: str,
        repeat: bool,
        make: Callable[[int], dict[str, Any]],
    ) -> Entry | None:
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(kind, serial, state, repeat, make, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        async with self._io_lock:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._admit_and_write(batch)
                except Exception as exc:  # a disk failure must reach every waiting put
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    async def _admit_and_write(self, batch: list[_Pending]) -> None:
        accepted: list[tuple[Entry, _Pending | None]] = []
        incoming = 0
        dropped_now = 0
        for pending in batch:
            # Numbered before admission: a refused entry leaves a gap, which is harmless.
            seq = self._take_seq()
            entry = _make_entry(
                seq,
                pending.kind,
                pending.serial,
                pending.state,
                pending.repeat,
                pending.make_data(seq),
            )
            size = entry.size
            if self._bytes + incoming + size > self.max_bytes:
                # Free a margin too, so a full spool is not rewritten on every put.
                needed = self._bytes + incoming + size - self.max_bytes + self.max_bytes // 8
                dropped_now += await self._drop_repeats(needed)
            if self._bytes + incoming + size > self.max_bytes:
                if pending.repeat:
                    dropped_now += 1
                    pending.future.set_result(None)
                    continue
                pending.future.set_exception(
                    OutboxFullError(
                        f"outbox {self.directory} is full ({self.max_bytes} bytes) of state changes"
                    )
                )
                continue
            accepted.append((entry, pending))
            incoming += entry.size
        if dropped_now:
            self.dropped_total += dropped_now
            self.unreported_drops += dropped_now
            log.warning("outbox full: dropped %d repeated unchanged reports", dropped_now)
        if self.unreported_drops:
            seq = self._next_seq
            entry = _make_entry(
                seq, "notice", "", "", False, self._drop_notice_data(seq, peek=True)
            )
            if self._bytes + incoming + entry.size <= self.max_bytes:
                self._take_seq()
                entry = _make_entry(seq, "notice", "", "", False, self._drop_notice_data(seq))
                accepted.append((entry, None))
        if not accepted:
            return
        lines = [entry.line for entry, _ in accepted]
        await self._run(self._append_blocking, lines, accepted[0][0].seq, accepted[-1][0].seq)
        for entry, waiting in accepted:
            self._entries.append(entry)
            self._bytes += entry.size
            if waiting is not None and not waiting.future.done():
                waiting.future.set_result(entry)
        self._changed.set()

    def _drop_notice_data(self, _seq: int, *, peek: bool = False) -> dict[str, Any]:
        count = self.unreported_drops
        if not peek:
            self.unreported_drops = 0
        return AgentNotice(
            kind="outbox_dropped",
            detail="outbox full during a controller outage: dropped repeated reports "
            "of unchanged device state (no state change was dropped)",
            count=count,
            at=self.clock(),
        ).model_dump(mode="json")

    def _append_blocking(self, lines: list[bytes], first: int, last: int) -> None:
        segment = self._segments[-1] if self._segments else None
        if segment is None or self._handle is None or segment.size >= self.segment_bytes:
            self._close_handle()
            path = self.directory / f"{_SEGMENT_PREFIX}{first:012d}{_SEGMENT_SUFFIX}"
            self._handle = open(path, "ab")  # noqa: SIM115 (kept open across appends)
            segment = _Segment(path, first, last, 0)
            self._segments.append(segment)
            _fsync_dir(self.directory)
        data = b"".join(lines)
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        segment.size += len(data)
        segment.last_seq = max(segment.last_seq, last)

    async def _drop_repeats(self, needed: int) -> int:
        """Drop the oldest repeats until ``needed`` bytes are free; rewrite the spool once."""
        freed = 0
        dropped = 0
        drop: set[int] = set()
        for entry in self._entries:
            if entry.kind == "notice" and entry.data.get("kind") == "outbox_dropped":
                # Earlier drop notices still queued merge into the next one.
                drop.add(entry.seq)
                freed += entry.size
                self.unreported_drops += int(entry.data.get("count", 0))
        for entry in self._entries:
            if freed >= needed:
                break
            if entry.kind == "report" and entry.repeat:
                drop.add(entry.seq)
                freed += entry.size
                dropped += 1
        if not drop:
            return 0
        keep = [e for e in self._entries if e.seq not in drop]
        await self._run(self._rewrite_blocking, keep)
        self._entries = keep
        self._bytes = sum(e.size for e in keep)
        return dropped

    def _rewrite_blocking(self, keep: list[Entry]) -> None:
        self._close_handle()
        old = list(self._segments)
        self._segments = []
        if not keep:
            for seg in old:
                seg.path.unlink(missing_ok=True)
            return
        # The compacted file takes the oldest segment's name, so a crash before the
        # old files are gone leaves duplicates (ignored by seq on load), never a gap.
        target = (
            old[0].path
            if old
            else self.directory / f"{_SEGMENT_PREFIX}{keep[0].seq:012d}{_SEGMENT_SUFFIX}"
        )
        data = b"".join(e.line for e in keep)
        _atomic_write(target, data)
        for seg in old[1:]:
            seg.path.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        self._segments.append(_Segment(target, keep[0].seq, keep[-1].seq, len(data)))

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

    async def ack(self, up_to_seq: int) -> None:
        """The controller stored everything up to ``up_to_seq``: forget it, free its segments."""
        async with self._io_lock:
            if up_to_seq <= self._acked:
                return
            await self._run(self._ack_blocking, up_to_seq)
            self._acked = up_to_seq
            self._entries = [e for e in self._entries if e.seq > up_to_seq]
            self._bytes = sum(e.size for e in self._entries)
        if self.unreported_drops:
            # Room again: say what was dropped while there was none.
            await self._enqueue("notice", "", "", False, self._drop_notice_data)

    def _ack_blocking(self, up_to_seq: int) -> None:
        _atomic_write(self.directory / _ACKED_FILE, str(up_to_seq).encode())
        keep: list[_Segment] = []
        for index, seg in enumerate(self._segments):
            is_current = index == len(self._segments) - 1
            if seg.last_seq <= up_to_seq:
                if is_current:
                    self._close_handle()
                seg.path.unlink(missing_ok=True)
            else:
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


def _make_entry(
    seq: int, kind: str, serial: str, state: str, repeat: bool, data: dict[str, Any]
) -> Entry:
    entry = Entry(seq=seq, kind=kind, serial=serial, state=state, repeat=repeat, data=data, size=0)
    line = _encode(entry)
    return Entry(**{**entry.__dict__, "size": len(line), "line": line})


def _encode(entry: Entry) -> bytes:
    doc = {
        "seq": entry.seq,
        "kind": entry.kind,
        "serial": entry.serial,
        "state": entry.state,
        "repeat": entry.repeat,
        "data": entry.data,
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> Entry:
    doc = json.loads(line)
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
