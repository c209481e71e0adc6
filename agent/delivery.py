"""Sends the outbox upstream in order; reports the controller refuses are held, not in the way."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from pydantic import ValidationError

from polyfleet.agent.held import DEVICE_REFUSALS, HeldReports
from polyfleet.agent.outbox import Entry, Outbox, OutboxFullError
from polyfleet.agent.uplink import ControllerRefused, Uplink
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    AgentNotice,
    AgentStatus,
    Report,
    ReportBatch,
)

log = logging.getLogger(__name__)


def _installed_version() -> str:
    try:
        return version("polyfleet")
    except PackageNotFoundError:
        return ""


#: The agent's own version, sent with each batch so the dashboard can show it.
AGENT_VERSION = _installed_version()

#: Refusals about this agent or the protocol: nothing is wrong with any one report.
AGENT_REFUSALS = frozenset({"unsupported_protocol_version"})
_NAMED_SERIAL = re.compile(r"\bdevice ([A-Za-z0-9._\-]{1,64}) belongs to site\b")
_NAMED_INDEX = re.compile(r"^reports\.(\d+)\b")


@dataclass(frozen=True)
class Refusal:
    """One entry the controller (or our own schema check) will not take, and why."""

    entry: Entry
    code: str
    reason: str


def refuses_reports(exc: ControllerRefused) -> bool:
    """True when a refusal is about what some reports say, so the others may still go."""
    if exc.code in AGENT_REFUSALS:
        return False
    if exc.status == 403:
        return exc.code in DEVICE_REFUSALS
    return exc.status in (400, 413, 422)


def _culprits(exc: ControllerRefused, entries: list[Entry]) -> list[Entry]:
    """The entries a refusal names: by serial (403 other site) or by position (422 field)."""
    reports = [e for e in entries if e.kind == "report"]
    named = set(_NAMED_SERIAL.findall(exc.message))
    if named:
        return [e for e in reports if e.serial in named]
    match = _NAMED_INDEX.match(exc.field or "")
    if match is not None and int(match.group(1)) < len(reports):
        return [reports[int(match.group(1))]]
    return []


class ReportSender:
    """Moves outbox entries to the controller; the one place refusals are sorted out.

    Reports the controller refuses one by one in its answer (``ReportBatchAck.refused``: a
    time before any device existed, a camera whose host is at another site) are set aside
    in :class:`HeldReports` with its reason, as are those of a refused batch. A batch
    refused because of some of its reports (HTTP 403 ``device_at_other_site``,
    400/413/422) is split: the reports the refusal names (or, when it names none,
    the halves of the batch, recursively) are found, set aside in :class:`HeldReports`
    and the rest go on. Later reports of a device refused as a whole queue behind
    its held ones, so each device's reports still reach the controller in order.
    A refusal about the agent itself (bad token, protocol version) blocks the
    outbox instead: holding everything would only hide it.
    """

    def __init__(
        self,
        outbox: Outbox,
        held: HeldReports,
        *,
        batch_size: int,
        held_retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.held = held
        self.batch_size = batch_size
        self.held_retry_s = held_retry_s
        self.clock = clock
        #: Held reports are offered again from this (clock) time on; at once after a restart.
        self.next_held_retry = 0.0
        self.batches_sent = 0

    # --- the outbox ---------------------------------------------------------------------

    async def send_once(self, uplink: Uplink) -> bool:
        """Send the oldest batch and take it off the outbox; False when there was none.

        Raises ControllerUnavailable, ProtocolError or a ControllerRefused about
        the agent itself; then nothing was taken off and the batch goes again later.
        """
        entries = self.outbox.peek(self.batch_size)
        if not entries:
            return False
        waiting = self.held.device_serials
        refused: list[Refusal] = []
        to_send: list[Entry] = []
        for entry in entries:
            behind = self.held.reason_for(entry.serial) if entry.serial in waiting else None
            if entry.kind == "report" and behind is not None:
                refused.append(Refusal(entry, behind.code, behind.reason))
            else:
                to_send.append(entry)
        with self.outbox.sending(entries[-1].seq):
            # On their way: a full outbox must not count them as dropped meanwhile.
            refused += await self._deliver(uplink, to_send)
        if refused:
            await self._hold(refused)
        # Held reports are on disk in the held spool before the outbox lets them go.
        await self.outbox.ack(entries[-1].seq)
        return True

    # --- held reports -------------------------------------------------------------------

    def held_due(self) -> bool:
        return len(self.held) > 0 and self.clock() >= self.next_held_retry

    async def retry_held(self, uplink: Uplink) -> int:
        """Offer every held report again (oldest first); returns how many the controller took."""
        self.next_held_retry = self.clock() + self.held_retry_s
        taken_total = 0
        items = self.held.reports()
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            refused = await self._deliver(uplink, [h.entry for h in chunk])
            still = {r.entry.seq for r in refused}
            taken = [h for h in chunk if h.seq not in still]
            await self.held.release(h.seq for h in taken)
            taken_total += len(taken)
            for serial in sorted({h.serial for h in taken}):
                count = sum(1 for h in taken if h.serial == serial)
                log.info(
                    "controller took %d held report(s) of %s; %d still held",
                    count,
                    serial,
                    len(self.held),
                )
        return taken_total

    # --- one batch ----------------------------------------------------------------------

    async def _deliver(self, uplink: Uplink, entries: list[Entry]) -> list[Refusal]:
        """Post ``entries``; returns those refused one by one (after splitting the batch)."""
        if not entries:
            return []
        refused: list[Refusal] = []
        batch_entries: list[Entry] = []
        reports: list[Report] = []
        notices: list[AgentNotice] = []
        for entry in entries:
            try:
                if entry.kind == "report":
                    reports.append(entry.report())
                else:
                    notices.append(entry.notice())
            except ValidationError as exc:
                # Damaged on disk or written by another version: the controller would refuse it.
                refused.append(Refusal(entry, "invalid_locally", _first_error(exc)))
                continue
            batch_entries.append(entry)
        if not batch_entries:
            return refused
        health = self.outbox.health
        status = AgentStatus(
            version=AGENT_VERSION,
            outbox_reports=len(self.outbox),
            held_reports=len(self.held),
            outbox_disk_ok=health.disk_ok,
            outbox_problem=f"{health.problem}; {health.action}"[:256] if health.problem else "",
        )
        batch = ReportBatch(
            protocol_version=PROTOCOL_VERSION, reports=reports, notices=notices, agent=status
        )
        try:
            ack = await uplink.post_batch(batch)
        except ControllerRefused as exc:
            if not refuses_reports(exc):
                raise
            named = _culprits(exc, batch_entries)
            if named:
                out = {e.seq for e in named}
                rest = [e for e in batch_entries if e.seq not in out]
                refused += [Refusal(e, exc.code, exc.message) for e in named]
                return refused + await self._deliver(uplink, rest)
            if len(batch_entries) == 1:
                return [*refused, Refusal(batch_entries[0], exc.code, exc.message)]
            # The refusal names nobody: halve the batch until the refused reports stand alone.
            middle = len(batch_entries) // 2
            refused += await self._deliver(uplink, batch_entries[:middle])
            return refused + await self._deliver(uplink, batch_entries[middle:])
        self.batches_sent += 1
        # Reports the controller refused one by one (the rest of the batch it stored).
        by_id = {e.report_id: e for e in batch_entries if e.kind == "report"}
        for one in ack.refused:
            refused_entry = by_id.get(one.id)
            if refused_entry is not None:
                refused.append(Refusal(refused_entry, one.code, one.message))
        return refused

    async def _hold(self, refused: list[Refusal]) -> None:
        for r in refused:
            if r.entry.kind != "report":
                # A notice only informs; a refused one cannot be made acceptable by waiting.
                log.warning(
                    "controller refused notice %s (%s): %s; dropped",
                    r.entry.data.get("kind"),
                    r.code,
                    r.reason,
                )
        reports = [r for r in refused if r.entry.kind == "report"]
        if not reports:
            return
        already = self.held.serials
        added = await self.held.hold((r.entry, r.code, r.reason) for r in reports)
        if not added:
            return
        if not self.next_held_retry or self.next_held_retry < self.clock():
            self.next_held_retry = self.clock() + self.held_retry_s
        notices: list[AgentNotice] = []
        for serial in sorted({h.serial for h in added}):
            mine = [h for h in added if h.serial == serial]
            if serial in already and all(h.code in DEVICE_REFUSALS for h in mine):
                continue  # queued behind reports held earlier: said already
            latest = mine[-1]
            log.warning(
                "controller refused %d report(s) of device %s (%s): %s -- held in %s "
                "and offered again every %gs; the other devices keep reporting",
                len(mine),
                serial,
                latest.code,
                latest.reason,
                self.held.path,
                self.held_retry_s,
            )
            notices.append(
                AgentNotice(
                    kind="reports_held",
                    detail=f"{serial}: {latest.code}: {latest.reason}"[:256],
                    count=len(mine),
                    at=datetime.now(UTC),
                )
            )
        if self.held.unreported_drops:
            notices.append(
                AgentNotice(
                    kind="outbox_dropped",
                    detail="held reports over their size limit: dropped repeats of unchanged "
                    "state first, then the oldest",
                    count=self.held.unreported_drops,
                    at=datetime.now(UTC),
                )
            )
            self.held.unreported_drops = 0
        for notice in notices:
            try:
                await self.outbox.put_notice(notice)
            except OutboxFullError as exc:
                log.warning("cannot queue notice %s: %s", notice.kind, exc)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "does not match the wire schema"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "report"
    return f"{where}: {first['msg']}"
