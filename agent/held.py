"""Reports the controller refused (device at another site, invalid): kept on disk, retried later."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from polyfleet.agent.outbox import Entry, entry_doc, entry_from_doc, json_line
from polyfleet.shared.durable import write_atomically

log = logging.getLogger(__name__)

HELD_FILE = "held.jsonl"
DEFAULT_HELD_MAX_BYTES = 16 * 1024 * 1024
#: Refusals about the device itself: its later reports queue behind the held ones.
DEVICE_REFUSALS = frozenset({"device_at_other_site"})


@dataclass(frozen=True)
class HeldReport:
    """One refused outbox entry with the controller's reason (its ``code`` and message)."""

    entry: Entry
    code: str
    reason: str
    held_at: str

    @property
    def seq(self) -> int:
        return self.entry.seq

    @property
    def serial(self) -> str:
        return self.entry.serial


class HeldReports:
    """``<data_dir>/held/held.jsonl``: every change is one atomic rewrite, so none is half-done.

    A refused report leaves the outbox only once it is on disk here, so a crash
    in between leaves it in both places (the same seq, kept once), never in
    neither. Bounded: past ``max_bytes`` the oldest repeats
    of unchanged state go first, then the oldest reports, each drop logged and
    counted for a notice (never silently).
    """

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_HELD_MAX_BYTES) -> None:
        self.directory = directory
        self.path = directory / HELD_FILE
        self.max_bytes = max_bytes
        self._held: dict[int, HeldReport] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyfleet-held")
        self._lock = asyncio.Lock()
        #: Drops not yet told to the controller.
        self.unreported_drops = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def serials(self) -> set[str]:
        return {h.serial for h in self._held.values() if h.entry.kind == "report"}

    @property
    def device_serials(self) -> set[str]:
        """Devices refused as a whole (e.g. known at another site), not for one bad report."""
        return {h.serial for h in self._held.values() if h.code in DEVICE_REFUSALS}

    def reports(self) -> list[HeldReport]:
        """Everything held, oldest first (the order they were taken in)."""
        return [self._held[seq] for seq in sorted(self._held)]

    def reason_for(self, serial: str) -> HeldReport | None:
        """The latest refusal of device ``serial`` as a whole (its new reports queue behind it)."""
        found = [h for h in self._held.values() if h.serial == serial and h.code in DEVICE_REFUSALS]
        return max(found, key=lambda h: h.seq) if found else None

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        await self._run(self._open_blocking)

    def _open_blocking(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._held = {h.seq: h for h in read_held(self.directory)}

    async def close(self) -> None:
        """Wait for a rewrite in flight (it finishes even when its caller was cancelled)."""
        async with self._lock:
            await asyncio.to_thread(self._executor.shutdown, True)

    async def hold(self, refused: Iterable[tuple[Entry, str, str]]) -> list[HeldReport]:
        """Keep ``(entry, code, reason)`` items durably; returns the ones newly held."""
        now = datetime.now(UTC).isoformat()
        async with self._lock:
            added = [
                HeldReport(entry=e, code=code, reason=reason[:1024], held_at=now)
                for e, code, reason in refused
                if e.seq not in self._held
            ]
            if not added:
                return []
            merged = {**self._held, **{h.seq: h for h in added}}
            dropped = _over_budget(merged, self.max_bytes)
            for seq in dropped:
                held = merged.pop(seq)
                log.warning(
                    "held reports over %d bytes: dropped report %s of %s (%s)",
                    self.max_bytes,
                    held.entry.report_id,
                    held.serial,
                    "unchanged state" if held.entry.repeat else "oldest",
                )
            await self._run(self._write_blocking, [merged[s] for s in sorted(merged)])
            self._held = merged
            self.unreported_drops += len(dropped)
            return [h for h in added if h.seq in merged]

    async def release(self, seqs: Iterable[int]) -> None:
        """The controller took these: forget them (one rewrite)."""
        async with self._lock:
            gone = set(seqs) & set(self._held)
            if not gone:
                return
            keep = {s: h for s, h in self._held.items() if s not in gone}
            await self._run(self._write_blocking, [keep[s] for s in sorted(keep)])
            self._held = keep

    def _write_blocking(self, items: list[HeldReport]) -> None:
        write_atomically(self.path, b"".join(_encode(h) for h in items))


def read_held(directory: Path) -> list[HeldReport]:
    """What ``directory`` holds, oldest first (blocking; also for ``polyfleet agent held``)."""
    path = directory / HELD_FILE
    if not path.exists():
        return []
    found: dict[int, HeldReport] = {}
    for line in path.read_bytes().splitlines():
        try:
            held = _decode(line)
        except (ValueError, KeyError, TypeError):
            # Written atomically, so this is damage from outside: say so, keep the rest.
            log.error("%s: skipping an unreadable line", path)
            continue
        found[held.seq] = held
    return [found[seq] for seq in sorted(found)]


def summarise(held: list[HeldReport]) -> list[dict[str, Any]]:
    """One line per device: how many reports wait, why (the latest refusal), since when."""
    result = []
    for serial in sorted({h.serial for h in held}):
        mine = [h for h in held if h.serial == serial]
        latest = mine[-1]
        result.append(
            {
                "serial": serial,
                "count": len(mine),
                "code": latest.code,
                "reason": latest.reason,
                "held_since": min(h.held_at for h in mine),
                "report_ids": [h.entry.report_id for h in mine],
            }
        )
    return result


def _over_budget(held: dict[int, HeldReport], max_bytes: int) -> list[int]:
    """Seqs to drop so the spool fits: oldest repeats first, then the oldest of the rest."""
    sizes = {seq: len(_encode(h)) for seq, h in held.items()}
    total = sum(sizes.values())
    dropped: list[int] = []
    order = sorted(held, key=lambda s: (not held[s].entry.repeat, s))
    for seq in order:
        if total <= max_bytes or len(held) - len(dropped) <= 1:
            break
        dropped.append(seq)
        total -= sizes[seq]
    return dropped


def _encode(held: HeldReport) -> bytes:
    doc = {
        **entry_doc(held.entry),
        "code": held.code,
        "reason": held.reason,
        "held_at": held.held_at,
    }
    return json_line(doc)


def _decode(line: bytes) -> HeldReport:
    doc = json.loads(line)
    entry = entry_from_doc(doc)
    return HeldReport(
        entry=entry, code=str(doc["code"]), reason=str(doc["reason"]), held_at=str(doc["held_at"])
    )
