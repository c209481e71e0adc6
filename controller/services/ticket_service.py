"""Fault tickets with side effects: filed from faults, evidence gathered, sent, escalated."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import operator
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.calendar import to_warsaw, warsaw_date
from polyfleet.controller.domain.contacts import (
    ADDRESS_KEYS,
    CONTACT_KEYS,
    DeliveryAddress,
    SiteContact,
)
from polyfleet.controller.domain.entitlement import plan_in_force
from polyfleet.controller.domain.faults import FaultDetector, FaultEvent, FaultEventKind
from polyfleet.controller.domain.maintenance import Maintenance
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.sla import SlaTerms
from polyfleet.controller.domain.tickets import (
    ACTIVE,
    ADMIN_NOTES,
    CATEGORY_FAULT,
    CATEGORY_SERVICE,
    Bundle,
    DeskContacts,
    Escalation,
    RunningClock,
    ServiceNotIncluded,
    Ticket,
    TicketCategory,
    TicketError,
    TicketKind,
    TicketMomentError,
    TicketStatus,
    choose_language,
    deadline_name,
    eligibility_of,
    late_text,
    legacy_ticket_id,
    render_escalation,
    render_ticket,
    service_refusal,
    ticket_id,
)
from polyfleet.controller.errors import NotFound
from polyfleet.controller.services.delivery import (
    Channel,
    Clock,
    DeliveryWorker,
    OutgoingMessage,
    RecordState,
    Rendering,
    TicketOutbox,
    message_ids,
    outbox_entries,
    utc_now,
)
from polyfleet.controller.services.email import Attachment
from polyfleet.controller.services.entitlement import Registry
from polyfleet.controller.services.installation import Installation
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.settings.tickets import TicketSettings
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.schema import Model, Snapshot

log = logging.getLogger(__name__)

#: The snapshot of a stored report document.
_SNAPSHOT = operator.itemgetter("snapshot")

TICKETS = "tickets"
#: How often ``tick`` looks for delivery records that may be forgotten.
PRUNE_INTERVAL = timedelta(hours=1)
#: The fault detector's lasting state (debounce, open faults, flapping, site outages), saved
#: on transitions so that a restart resumes detection where it stood.
FAULT_STATE = "ticket_fault_state"
#: Faults that opened during a maintenance window: recorded, no ticket until it ends.
FAULTS_IN_MAINTENANCE = "ticket_faults_in_maintenance"
#: The fault a rollout files for a unit its update left failed (``services.rollout``).
UPDATE_FAILED = "firmware_update_failed"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
#: Statuses of tickets still being worked on, as stored.
ACTIVE_STATUSES = tuple(status.value for status in TicketStatus if status in ACTIVE)


@dataclass(frozen=True, kw_only=True)
class CollectedBundle:
    """A diagnostics bundle as the agent uploaded it (logs archive, SSH ``status`` output)."""

    filename: str
    content: bytes
    content_type: str = "application/gzip"


class DiagnosticsSource(Protocol):
    """Asks the device's site agent to collect diagnostics and returns the uploaded artifact."""

    async def collect(
        self,
        serial: str,
        *,
        site: str | None,
        timeout_s: float,
        network_targets: Sequence[str] = (),
    ) -> CollectedBundle:
        """The bundle, with the unit's own network tests to ``network_targets`` when given;
        raises an exception whose message says why it could not be had."""
        ...


class UnknownContract(TicketError):
    """A contract number the asset registry does not know for the serial (W5): 409
    ``unknown_contract`` on ``contract_number``, taken only with ``force``."""

    def __init__(self, ticket: str, serial: str | None, number: str, known: list[str]) -> None:
        held = f"it holds {', '.join(known)}" if known else "it holds none for it"
        where = f"serial {serial}" if serial else "this ticket"
        super().__init__(
            f"ticket {ticket}: the asset registry knows no contract {number!r} for {where} "
            f"({held}); check the number, or give force (tickets fill --force) to use it anyway",
            code="unknown_contract",
            field="contract_number",
        )


class TicketNotFound(NotFound, KeyError):
    def __init__(self, ticket: str) -> None:
        super().__init__(f"no ticket {ticket!r}; polyfleet controller tickets list shows them")
        self.ticket = ticket


@dataclass(frozen=True, kw_only=True)
class _Indexed:
    """What the index keeps of one ticket: enough to choose tickets without reading them."""

    status: str
    site: str | None
    #: The ticket's device and, for a site ticket, every device it names.
    serials: frozenset[str]
    opened_at: datetime
    closed_at: datetime | None
    reopen_count: int


class TicketIndex:
    """Tickets by status, site and device, in memory: pages, listings and periodic checks read
    the few tickets they need instead of parsing every one ever filed.

    Built from the store once (``load``) and kept by every write of the ticket service
    (``put``), which alone writes tickets.
    """

    def __init__(self) -> None:
        self.loaded = False
        self._entries: dict[str, _Indexed] = {}
        self._by_status: dict[str, set[str]] = {}
        self._by_site: dict[str, set[str]] = {}
        self._by_serial: dict[str, set[str]] = {}

    def load(self, store: Store) -> None:
        """Read every stored ticket's status, site and devices (the store is open)."""
        self._entries.clear()
        for groups in (self._by_status, self._by_site, self._by_serial):
            groups.clear()
        for key, doc in list(store.scan(TICKETS).items()):
            try:
                self.put(key, doc)
            except (KeyError, TypeError, ValueError) as exc:
                # One unreadable document must not keep the controller from starting.
                log.warning("ticket %s is not listed: its document cannot be read (%r)", key, exc)
        self.loaded = True

    def put(self, key: str, doc: Doc) -> None:
        """The ticket ``key`` is stored as ``doc`` now."""
        self._drop(key)
        serials = {doc.get("serial"), *(doc.get("affected_serials") or ())}
        site, closed = doc.get("site"), doc.get("closed_at")
        entry = _Indexed(
            status=str(doc.get("status")),
            site=None if site is None else str(site),
            serials=frozenset(str(serial) for serial in serials if serial),
            opened_at=datetime.fromisoformat(str(doc["opened_at"])),
            closed_at=None if closed is None else datetime.fromisoformat(str(closed)),
            reopen_count=int(doc.get("reopen_count") or 0),
        )
        self._entries[key] = entry
        self._by_status.setdefault(entry.status, set()).add(key)
        if entry.site is not None:
            self._by_site.setdefault(entry.site, set()).add(key)
        for serial in entry.serials:
            self._by_serial.setdefault(serial, set()).add(key)

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is None:
            return
        self._by_status[old.status].discard(key)
        if old.site is not None:
            self._by_site[old.site].discard(key)
        for serial in old.serials:
            self._by_serial[serial].discard(key)

    def ids(
        self,
        *,
        statuses: Iterable[str] | None = None,
        site: str | None = None,
        serial: str | None = None,
    ) -> list[str]:
        """Ids of the tickets in one of ``statuses``, of ``site`` and naming ``serial`` (None:
        any), newest first."""
        groups: list[set[str]] = []
        if statuses is not None:
            groups.append(set().union(*(self._by_status.get(s, set()) for s in statuses)))
        if site is not None:
            groups.append(self._by_site.get(site, set()))
        if serial is not None:
            groups.append(self._by_serial.get(serial, set()))
        found = set.intersection(*groups) if groups else set(self._entries)
        entries = self._entries
        return sorted(found, key=lambda key: (entries[key].opened_at, key), reverse=True)

    def closed_since(self, moment: datetime, *, site: str | None = None) -> list[str]:
        """Ids of the closed tickets (of ``site``) closed at ``moment`` or later, newest first."""
        return [
            key
            for key in self.ids(statuses=(TicketStatus.CLOSED.value,), site=site)
            if (closed := self._entries[key].closed_at) is not None and closed >= moment
        ]

    def status(self, key: str) -> str | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.status

    def reopen_count(self, key: str) -> int | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.reopen_count

    def active_by_serial(self) -> dict[str, tuple[str, ...]]:
        """Serial -> ids of the tickets not closed that name the device, in id order."""
        found: dict[str, list[str]] = {}
        for key in self.ids(statuses=ACTIVE_STATUSES):
            for serial in self._entries[key].serials:
                found.setdefault(serial, []).append(key)
        return {serial: tuple(sorted(keys)) for serial, keys in found.items()}


#: Statuses in which a deadline can be missed: sent (reaction), accepted and shipped
#: (delivery), replacement received (return).
ESCALATING = (
    TicketStatus.SENT,
    TicketStatus.ACCEPTED,
    TicketStatus.REPLACEMENT_SHIPPED,
    TicketStatus.REPLACEMENT_RECEIVED,
)


def escalation_purpose(deadline: str, round_: int) -> str:
    """The outbox purpose of a deadline's escalation: ``escalation-2`` for the reaction (as
    it always was), ``escalation_delivery-2`` and ``escalation_return-2`` for the others."""
    if deadline == "reaction":
        return f"escalation-{round_}"
    return f"escalation_{deadline}-{round_}"


def escalated_deadline(purpose: str) -> str:
    """The deadline an escalation purpose (``escalation_delivery-0``) is about."""
    head = purpose.partition("-")[0]
    return head.removeprefix("escalation_") if head.startswith("escalation_") else "reaction"


def _round(purpose: str) -> int:
    """The reopening a message belongs to: ``ticket`` 0, ``reopened-2`` and ``escalation-2`` 2."""
    _, _, number = purpose.rpartition("-")
    return int(number) if number.isdigit() else 0


class MaintenanceLookup(Protocol):
    """Which maintenance window silences a fault (``services.maintenance``)."""

    def covering(
        self, serial: str | None, site: str | None, at: datetime
    ) -> Maintenance | None: ...


class TicketService:
    """The one place that turns faults into tickets and tickets into messages.

    Every ticket change and the outbox entries it causes go into the store in one
    ``apply``, so a crash leaves either both or neither.
    """

    def __init__(
        self,
        store: Store,
        settings: TicketSettings,
        *,
        plans: PlanCatalogue,
        bundle_dir: Path,
        inventory: Inventory,
        registry: Registry,
        diagnostics: DiagnosticsSource | None = None,
        clock: Clock = utc_now,
        data_dir: Path | None = None,
        index: TicketIndex | None = None,
        background: bool = True,
        maintenance: MaintenanceLookup | None = None,
    ) -> None:
        self.store = store
        #: Planned work during which faults are recorded but open no ticket.
        self.maintenance = maintenance
        #: Where sites and agents are known, and the asset registry (their owners).
        self.inventory = inventory
        self.registry = registry
        #: Tickets by status, site and device (the controller's own, loaded with the store).
        self.index = index if index is not None else TicketIndex()
        if not self.index.loaded:
            self.index.load(store)
        #: False in an admin command serving the store itself: a ticket filled in or sent
        #: there is collected and sent by the server when it starts (``resume``), not by a
        #: process that ends with the command.
        self.background = background
        #: The server's data directory, named in the fill command suggested for held tickets.
        self.data_dir = data_dir
        self.settings = settings
        self.plans = plans
        self.bundle_dir = bundle_dir
        self.diagnostics = diagnostics
        self.clock = clock
        #: Named in every ticket id this installation mints.
        self.installation = Installation(store)
        self.detector = FaultDetector(settings.policy)
        self._restore_detector()
        self.worker = DeliveryWorker(
            store,
            settings,
            clock=clock,
            on_delivered=self._on_delivered,
            on_failed=self._on_failed,
            render=self.render_entry,
            on_stored=self._stored,
        )
        self.outbox = TicketOutbox(store)
        self._lock = asyncio.Lock()
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._warned_no_channel = False
        self._warned_no_escalation = False
        self._pruned_at: datetime | None = None

    # -- reading --------------------------------------------------------------------

    def ticket_key(self, subject: str, fault: str) -> str:
        """The id of the one ticket of ``subject`` and ``fault``: the one an older controller
        minted, while a ticket (or a fault waiting out maintenance) is stored under it, else
        this installation's own. Ids once minted are never rewritten: the desk knows them."""
        legacy = legacy_ticket_id(subject, fault)
        if (
            self.store.get(TICKETS, legacy) is not None
            or self.store.get(FAULTS_IN_MAINTENANCE, legacy) is not None
        ):
            return legacy
        return ticket_id(self.installation.id(), subject, fault)

    def get(self, ticket: str) -> Ticket:
        doc = self.store.get(TICKETS, ticket)
        if doc is None:
            raise TicketNotFound(ticket)
        return Ticket.from_document(doc)

    def tickets(
        self, *, status: str | None = None, site: str | None = None, serial: str | None = None
    ) -> list[Ticket]:
        """Tickets in ``status``, of ``site``, naming the device ``serial`` (None: any),
        newest first; chosen by the index, so only those are read."""
        statuses = None if status is None else (status,)
        return self._read(self.index.ids(statuses=statuses, site=site, serial=serial))

    def active_tickets(self, *, site: str | None = None) -> list[Ticket]:
        """Tickets still being worked on (any status but closed), newest first."""
        return self._read(self.index.ids(statuses=ACTIVE_STATUSES, site=site))

    def closed_since(self, moment: datetime, *, site: str | None = None) -> list[Ticket]:
        """Tickets closed at ``moment`` or later, newest first."""
        return self._read(self.index.closed_since(moment, site=site))

    def device_tickets(self, serial: str) -> list[Ticket]:
        """The tickets of a device: its own and the site tickets that name it, newest first."""
        return self._read(self.index.ids(serial=serial))

    def open_tickets_by_serial(self) -> dict[str, tuple[str, ...]]:
        """Serial -> ids of the tickets not closed that name the device (the rollout planner
        holds such devices back)."""
        return self.index.active_by_serial()

    def _read(self, keys: Iterable[str]) -> list[Ticket]:
        found: list[Ticket] = []
        for key in keys:
            doc = self.store.get(TICKETS, key)
            if doc is not None:
                found.append(Ticket.from_document(doc))
        return found

    def _records(
        self, states: Iterable[RecordState], ticket: str | None
    ) -> dict[RecordState, list[tuple[str, Doc]]]:
        """(key, record) of the outbox by state: a ticket's only, or all of them.

        A ticket's records are looked up by the ids its messages can have (one per round,
        purpose and channel: ``message_ids``), so a ticket page reads a handful, not them all.
        """
        if ticket is None:
            return self.outbox.records(states)
        rounds = self.index.reopen_count(ticket)
        if rounds is None:
            return {}
        return self.outbox.records(states, message_ids(ticket, rounds))

    def deliveries(self, ticket: str | None = None, *, state: str | None = None) -> list[Doc]:
        """Outbox records (of one ticket, in one state): ``pending``, ``sent`` or ``failed``
        (given up), oldest first. A pending record that has failed before has ``retrying``
        true, its last error and the time of its next attempt; ``state="retrying"`` lists
        only those.
        """
        found: list[Doc] = []
        kinds: tuple[RecordState, ...] = ("pending", "sent", "failed")
        wanted = [
            kept
            for kept in kinds
            if state in (None, kept) or (state == "retrying" and kept == "pending")
        ]
        for kept, records in self._records(wanted, ticket).items():
            for key, doc in records:
                retrying = kept == "pending" and bool(doc.get("attempts"))
                if state is None or state == kept or (state == "retrying" and retrying):
                    record = {**doc, "id": doc.get("id", key), "state": kept}
                    if kept == "pending":
                        record["retrying"] = retrying
                    found.append(record)
        return sorted(found, key=lambda d: str(d.get("created_at") or d.get("sent_at") or ""))

    def delivery_state(self, ticket: str) -> tuple[str | None, str | None]:
        """How the messages of the ticket's current round fare, and the last error: the
        worst state wins (``failed``: given up, ``retrying``, ``pending``, ``sent``); (None,
        None) when none is queued yet."""
        return self._worst(self.deliveries(ticket)).get(ticket, (None, None))

    def delivery_states(self) -> dict[str, tuple[str, str | None]]:
        """Ticket id -> (state of its current round's messages, the last error), for listings
        of every ticket (see ``delivery_state``)."""
        return self._worst(self.deliveries())

    def _worst(self, records: Iterable[Doc]) -> dict[str, tuple[str, str | None]]:
        rank = {"sent": 0, "pending": 1, "retrying": 2, "failed": 3}
        states: dict[str, tuple[str, str | None]] = {}
        for record in records:
            key = str(record.get("ticket_id"))
            if _round(str(record.get("purpose", ""))) != (self.index.reopen_count(key) or 0):
                continue
            state = "retrying" if record.get("retrying") else str(record["state"])
            current = states.get(key)
            if current is None or rank[state] > rank[current[0]]:
                error = record.get("last_error")
                states[key] = (state, str(error) if error and state != "sent" else None)
        return states

    # -- inputs from the controller -----------------------------------------------------

    async def on_snapshot(self, snapshot: Snapshot, *, site: str | None) -> None:
        await self.on_snapshots([(snapshot, site)])

    async def on_snapshots(self, reports: Iterable[tuple[Snapshot, str | None]]) -> None:
        """Accepted reports (each with its site) in order; detector state is saved once for all."""
        observe = self.detector.observe
        events: list[FaultEvent] = []
        for snapshot, site in reports:
            found = observe(snapshot, site=site, at=snapshot.collected_at)
            if found:
                events += found
        await self.handle(events)

    async def on_documents(self, batches: Iterable[tuple[str | None, Iterable[Doc]]]) -> None:
        """``on_snapshots`` for batches of one site's reports as stored (report documents)."""
        observe = self.detector.observe_documents
        events: list[FaultEvent] = []
        for site, documents in batches:
            found = observe(map(_SNAPSHOT, documents), site=site)
            if found:
                events += found
        await self.handle(events)

    async def on_device_unreachable(self, serial: str, *, site: str | None, at: datetime) -> None:
        await self.handle(self.detector.device_unreachable(serial, site=site, at=at))

    async def on_agent_offline(self, site: str, *, at: datetime) -> None:
        await self.handle(self.detector.agent_offline(site, at=at))

    async def on_agent_online(self, site: str, *, at: datetime) -> None:
        await self.handle(self.detector.agent_online(site, at=at))

    async def on_agent_clock(self, site: str, *, state: str, skew_s: float | None) -> None:
        """A site's agent clock went ahead (or is right again): a note on the site's tickets.

        Their times come from that agent's reports, so whoever reads them must know.
        """
        now = self.clock()
        async with self._lock:
            for ticket in self.active_tickets(site=site):
                if state == "ahead":
                    ticket.note(now, "agent_clock_ahead", skew_s=f"{skew_s or 0:.0f}")
                else:
                    ticket.note(now, "agent_clock_ok")
                await self._save(ticket)

    def _site_clock_ahead(self, site: str | None) -> float | None:
        """How far ahead the clock of a site's agent is, when one is."""
        return self.inventory.site_clock_ahead(site)

    async def tick(self, now: datetime | None = None) -> None:
        """Time passes: hold times run out, reaction deadlines pass."""
        moment = now or self.clock()
        await self.handle(self.detector.tick(moment))
        await self.check_escalations(moment)
        await self.recheck_held(moment)
        await self.release_after_maintenance(moment)
        if self._pruned_at is None or moment - self._pruned_at >= PRUNE_INTERVAL:
            await self.prune_deliveries(moment)

    async def resume(self) -> None:
        """After a restart: finish preparing tickets that were open but not yet enqueued."""
        if self.worker.channels and not self.escalation_destinations():
            self._warn_no_escalation()
        for ticket in self.tickets(status=TicketStatus.OPEN.value):
            self._prepare_later(ticket.id)

    async def close(self) -> None:
        for task in list(self._preparing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.worker.close()

    async def wait_prepared(self) -> None:
        """Wait for every diagnostics collection and enqueue in flight (tests, shutdown)."""
        while self._preparing:
            await asyncio.gather(*list(self._preparing.values()), return_exceptions=True)

    # -- faults to tickets ------------------------------------------------------------

    async def handle(self, events: list[FaultEvent]) -> None:
        """File the events' tickets, then save the detector's transitions (in that order)."""
        for event in events:
            try:
                await self._handle_one(event)
            except Exception:
                # One bad event must not stop detection of the others.
                log.exception("ticket handling failed for %s %s", event.subject, event.fault)
        # After the tickets: a crash in between repeats an event (mapped onto the same
        # ticket), never loses one whose ticket was not yet filed.
        await self._save_detector()

    def _restore_detector(self) -> None:
        docs = dict(self.store.scan(FAULT_STATE))
        skipped = self.detector.restore(docs)
        for key, why in skipped.items():
            log.warning("fault state of %s not restored (%s); detection starts afresh", key, why)
        if docs:
            # News for a server's log; an admin command detects nothing, and says nothing.
            log.log(
                logging.INFO if self.background else logging.DEBUG,
                "fault detection resumed for %d devices and sites",
                len(docs) - len(skipped),
            )

    async def _save_detector(self) -> None:
        puts, deletes = self.detector.changes()
        if not puts and not deletes:
            return
        stamp = self.clock().isoformat()
        for doc in puts.values():
            # Fresh documents from ``changes``: stamped in place, and handed over to the store.
            doc["saved_at"] = stamp
        seq = self.store.apply({FAULT_STATE: puts}, {FAULT_STATE: deletes}, handover=True)
        await self.store.wait_durable(seq)

    def silenced_faults(self) -> list[Doc]:
        """Faults recorded during maintenance that have no ticket yet, oldest first."""
        found = list(self.store.scan(FAULTS_IN_MAINTENANCE).values())
        return sorted(found, key=lambda doc: str(doc.get("first_seen") or doc.get("at")))

    def _silencing(self, event: FaultEvent) -> Maintenance | None:
        if self.maintenance is None:
            return None
        return self.maintenance.covering(event.serial, event.site, event.at)

    async def _record_silenced(self, key: str, event: FaultEvent, window: Maintenance) -> None:
        """Keep the fault, with its real start, for a ticket when the window ends."""
        doc: Doc = {
            "ticket_id": key,
            "subject": event.subject,
            "fault": event.fault,
            "at": event.at.isoformat(),
            "site": event.site,
            "serial": event.serial,
            "detail": event.detail,
            "first_seen": (event.first_seen or event.at).isoformat(),
            "host_serial": event.host_serial,
            "model": event.model,
            "flapping": event.flapping,
            "affected": list(event.affected),
            "evidence": list(event.evidence),
            "maintenance": window.id,
            "reason": window.reason,
            "rollout": window.rollout,
        }
        await self.store.wait_durable(self.store.apply({FAULTS_IN_MAINTENANCE: {key: doc}}))
        log.info(
            "fault %s %s during maintenance %s (%s): no ticket while it lasts",
            event.subject,
            event.fault,
            window.id,
            window.reason,
        )

    def _update_ticket(self, serial: str) -> bool:
        """Whether the unit has an active ticket for a failed firmware update."""
        doc = self.store.get(TICKETS, self.ticket_key(serial, UPDATE_FAILED))
        return doc is not None and doc.get("status") != TicketStatus.CLOSED.value

    async def release_after_maintenance(self, now: datetime | None = None) -> int:
        """Faults recorded during maintenance whose window has ended and that are still
        present get their ticket at once, dated from the fault's real start."""
        moment = now or self.clock()
        released = 0
        for key, doc in sorted(self.store.scan(FAULTS_IN_MAINTENANCE).items()):
            serial, site = doc.get("serial"), doc.get("site")
            if self.maintenance is not None and self.maintenance.covering(serial, site, moment):
                continue
            if serial is not None and not self.detector.still_open(serial, str(doc["fault"])):
                # Gone with the work that caused it (a unit back from its update).
                seq = self.store.apply({}, {FAULTS_IN_MAINTENANCE: [key]})
                await self.store.wait_durable(seq)
                continue
            if serial is not None and doc.get("rollout") and self._update_ticket(serial):
                # The update's own ticket says the update caused it: one ticket, not two.
                seq = self.store.apply({}, {FAULTS_IN_MAINTENANCE: [key]})
                await self.store.wait_durable(seq)
                continue
            event = FaultEvent(
                kind=FaultEventKind.OPENED,
                subject=str(doc["subject"]),
                fault=str(doc["fault"]),
                at=moment,
                site=site,
                serial=serial,
                detail=str(doc.get("detail") or ""),
                first_seen=datetime.fromisoformat(str(doc["first_seen"])),
                host_serial=doc.get("host_serial"),
                model=doc.get("model"),
                flapping=bool(doc.get("flapping")),
                affected=tuple(doc.get("affected") or ()),
                evidence=tuple(doc.get("evidence") or ()),
            )
            after = (
                "after_maintenance",
                {"id": str(doc["maintenance"]), "reason": str(doc["reason"])},
            )
            await self._handle_one(event, note=after)
            await self.store.wait_durable(self.store.apply({}, {FAULTS_IN_MAINTENANCE: [key]}))
            released += 1
        return released

    async def _handle_one(
        self, event: FaultEvent, *, note: tuple[str, Mapping[str, str]] | None = None
    ) -> None:
        key = self.ticket_key(event.subject, event.fault)
        now = self.clock()
        async with self._lock:
            doc = self.store.get(TICKETS, key)
            existing = None if doc is None else Ticket.from_document(doc)
            prepare = False
            if event.kind is FaultEventKind.CLEARED and self.store.get(FAULTS_IN_MAINTENANCE, key):
                # Gone before the window ended: recorded, never ticketed.
                seq = self.store.apply({}, {FAULTS_IN_MAINTENANCE: [key]})
                await self.store.wait_durable(seq)
            if event.kind in (FaultEventKind.OPENED, FaultEventKind.RECURRED) and (
                existing is None or existing.status is TicketStatus.CLOSED
            ):
                # A rollout's own verdict on an update it ran is never silenced by it.
                window = None if event.fault == UPDATE_FAILED else self._silencing(event)
                if window is not None:
                    await self._record_silenced(key, event, window)
                    return
            if event.kind in (FaultEventKind.OPENED, FaultEventKind.RECURRED):
                if existing is None:
                    ticket = self._new_ticket(key, event, now)
                    prepare = True
                elif existing.status is TicketStatus.CLOSED:
                    ticket = existing
                    self._refresh_registry_facts(ticket, now)
                    ticket.reopen(now, event.at)
                    # A new round: flapping only if it flaps now, not because it once did.
                    ticket.flapping = event.flapping
                    prepare = True
                else:
                    # One open ticket per device and fault: a recurrence is a note.
                    ticket = existing
                    ticket.flapping = ticket.flapping or event.flapping
                    ticket.note(now, "seen_again", when=event.at.isoformat())
                for snapshot in event.evidence:
                    ticket.add_evidence(snapshot)
                if note is not None:
                    ticket.note(now, note[0], **note[1])
            elif existing is None:
                return
            elif event.kind is FaultEventKind.CLEARED:
                ticket = existing
                if ticket.status not in ACTIVE:
                    return
                ticket.note(now, "recovered", when=event.at.isoformat())
            elif event.kind is FaultEventKind.FLAPPING:
                ticket = existing
                ticket.flapping = True
                ticket.note(now, "flapping")
            else:
                return
            await self._save(ticket)
        log.info("ticket %s %s (%s %s)", ticket.id, event.kind.value, event.subject, event.fault)
        self._warn_if_held(ticket)
        if prepare:
            self._prepare_later(ticket.id)

    def _warn_if_held(self, ticket: Ticket) -> None:
        if ticket.status is TicketStatus.NEEDS_DATA:
            # W5: the desk refuses it without these; say so where the admin looks, with a
            # command that works as printed (it asks for what is missing).
            log.warning(
                "ticket %s held: missing %s; fill it in with: %s",
                ticket.id,
                ", ".join(ticket.missing),
                self.fill_command(ticket.id),
            )

    def fill_command(self, ticket: str) -> str:
        """The command that completes a held ticket on this server's machine."""
        command = f"polyfleet controller tickets fill {ticket}"
        if self.data_dir is not None:
            command += f" --data-dir {shlex.quote(str(self.data_dir))}"
        return command

    def _asset(self, serial: str | None) -> Asset | None:
        return None if serial is None else self.registry.asset(serial)

    def _refresh_site_name(self, ticket: Ticket) -> None:
        name = None if ticket.site is None else self.inventory.site_name(ticket.site)
        ticket.site_name = name if name is not None and name != ticket.site else None
        # W2, RMA: whom the desk contacts and where hardware goes; what the ticket was given
        # by hand stays, what it lacks comes from the site.
        contact, address = (
            (None, None) if ticket.site is None else self.inventory.site_contacts(ticket.site)
        )
        if contact is not None:
            ticket.reporter = (ticket.reporter or SiteContact()).merged(contact)
        if address is not None:
            ticket.rma_address = (ticket.rma_address or DeliveryAddress()).merged(address)

    def _refresh_registry_facts(self, ticket: Ticket, now: datetime) -> None:
        """Serial, contract, plan, room, language, SLA terms, desk contacts and the contract's
        flags from the registry and the plan catalogue today."""
        self._refresh_site_name(ticket)
        if ticket.kind is TicketKind.SITE:
            ticket.language = self.settings.language
            ticket.contacts = DeskContacts.of(self.plans.contacts_of(None))  # W7
            return
        asset = self._asset(ticket.serial)
        day = warsaw_date(now)
        plan = None if asset is None else plan_in_force(asset, self.plans, day)
        contract = None if asset is None else asset.contract_at(day)
        if contract is not None:
            ticket.contract_number = contract.number
        if asset is not None:
            ticket.room = asset.room or ticket.room
            ticket.host_serial = ticket.host_serial or asset.host_serial
            if not ticket.site:
                ticket.site = asset.site
        ticket.plan = None if plan is None else plan.id
        # The registry may name a site the reports did not (a device not yet reporting).
        self._refresh_site_name(ticket)
        ticket.plan_name = None if plan is None else plan.name
        ticket.language = choose_language(
            None if plan is None else plan.language, self.settings.language
        )
        ticket.apply_terms(None if plan is None else SlaTerms.from_plan(plan))
        ticket.shipping_paid = None if plan is None else plan.shipping_paid  # H6, P3
        ticket.contacts = DeskContacts.of(self.plans.contacts_of(plan))  # W7
        # H1, H5, P5: a flagged contract is said so, with what it means for this request.
        ticket.eligibility = None if asset is None else eligibility_of(asset, contract, self.plans)

    def _new_ticket(self, key: str, event: FaultEvent, now: datetime) -> Ticket:
        ticket = Ticket(
            id=key,
            kind=TicketKind.SITE if event.is_site else TicketKind.DEVICE,
            fault=event.fault,
            fault_detail=event.detail,
            status=TicketStatus.OPEN,
            serial=event.serial,
            model=event.model,
            site=event.site,
            host_serial=event.host_serial,
            affected_serials=list(event.affected),
            language=self.settings.language,
            flapping=event.flapping,
            first_seen=event.first_seen or event.at,
            opened_at=now,
        )
        self._refresh_registry_facts(ticket, now)
        skew_s = self._site_clock_ahead(ticket.site)
        if skew_s is not None:
            ticket.note(now, "agent_clock_ahead", skew_s=f"{skew_s:.0f}")
        if ticket.missing:
            # W5: the desk cannot accept it without these; the admin fills them in.
            ticket.status = TicketStatus.NEEDS_DATA
            ticket.note(now, "held", missing=",".join(ticket.missing))
        return ticket

    async def _save(self, ticket: Ticket) -> None:
        doc = ticket.as_document()
        seq = self.store.apply({TICKETS: {ticket.id: doc}})
        self.index.put(ticket.id, doc)
        await self.store.wait_durable(seq)

    def _stored(self, puts: Mapping[str, Mapping[str, Doc]]) -> None:
        """The delivery worker stored these (a ticket marked sent, a failure noted)."""
        for key, doc in puts.get(TICKETS, {}).items():
            self.index.put(key, doc)

    # -- evidence and sending ---------------------------------------------------------

    def _prepare_later(self, key: str) -> None:
        if key in self._preparing or not self.background:
            return
        task = asyncio.create_task(self._prepare(key), name=f"ticket-{key}")
        self._preparing[key] = task
        task.add_done_callback(lambda _t: self._preparing.pop(key, None))

    async def _prepare(self, key: str) -> None:
        try:
            ticket = self.get(key)
            if (
                ticket.kind is TicketKind.DEVICE
                and ticket.category in (None, TicketCategory.FAULT)
                and ticket.bundle is None
                and ticket.bundle_error is None
            ):
                await self._collect_bundle(ticket)
            ticket = self.get(key)
            if ticket.status is TicketStatus.OPEN:
                await self._enqueue(ticket, self._ticket_purpose(ticket))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ticket %s could not be prepared; it stays open for a resend", key)

    async def _collect_bundle(self, ticket: Ticket) -> None:
        """W4: the desk verifies with the device's logs, so ask the agent for them first."""
        if self.diagnostics is None:
            error = "no diagnostics source configured"
        else:
            target = ticket.serial
            if ticket.model == Model.STUDIO_E70.value and ticket.host_serial:
                # An E70 has no API of its own: its host collects the logs.
                target = ticket.host_serial
            assert target is not None
            try:
                bundle = await self.diagnostics.collect(
                    target,
                    site=ticket.site,
                    timeout_s=self.settings.diagnostics_timeout_s,
                    network_targets=self._network_targets(ticket),
                )
            except Exception as exc:  # the agent, the device or the network may fail
                error = f"diagnostics from {target} failed: {exc}"
            else:
                filename = _SAFE_NAME.sub("_", bundle.filename) or "diagnostics.bin"
                path = self.bundle_dir / ticket.id / filename
                await asyncio.to_thread(write_atomically, path, bundle.content)
                async with self._lock:
                    fresh = self.get(ticket.id)
                    fresh.bundle = Bundle(
                        filename=filename,
                        sha256=hashlib.sha256(bundle.content).hexdigest(),
                        size=len(bundle.content),
                        content_type=bundle.content_type,
                    )
                    fresh.bundle_error = None
                    await self._save(fresh)
                return
        async with self._lock:
            fresh = self.get(ticket.id)
            fresh.bundle_error = error
            fresh.note(self.clock(), "bundle_missing", error=error)
            await self._save(fresh)
        log.warning("ticket %s: %s", ticket.id, error)

    def _network_targets(self, ticket: Ticket) -> tuple[str, ...]:
        """Where the unit tests its reach to: the configured targets, when the ticket's plan
        includes remote diagnostics on failure (H4, P2)."""
        plan = self.plans.plans.get(ticket.plan or "")
        if plan is None or not plan.remote_diagnostics:
            return ()
        return self.settings.network_test_targets

    @staticmethod
    def _ticket_purpose(ticket: Ticket) -> str:
        return "ticket" if ticket.reopen_count == 0 else f"reopened-{ticket.reopen_count}"

    def _bundle_attachments(self, ticket: Ticket) -> tuple[Attachment, ...]:
        if ticket.bundle is None:
            return ()
        if ticket.bundle.size > self.settings.max_attachment_bytes:
            return ()
        return (
            Attachment(
                filename=ticket.bundle.filename,
                path=self.bundle_dir / ticket.id / ticket.bundle.filename,
                content_type=ticket.bundle.content_type,
            ),
        )

    async def _attachments(self, ticket: Ticket, purpose: str) -> tuple[Attachment, ...]:
        """The bundle (W4) and, for the e-mail, the snapshots that show the fault as JSON."""
        found = self._bundle_attachments(ticket)
        if not ticket.evidence:
            return found
        # Written before the outbox entry that names it, so a send never misses it.
        path = self.bundle_dir / ticket.id / f"evidence-{purpose}.json"
        content = json.dumps(ticket.evidence, indent=2, ensure_ascii=False).encode()
        await asyncio.to_thread(write_atomically, path, content)
        evidence = Attachment(
            filename=f"evidence-{ticket.id}.json",
            path=path,
            content_type="application/json",
            email_only=True,
        )
        return (*found, evidence)

    def _payload(self, ticket: Ticket, event: str) -> dict[str, Any]:
        document = ticket.as_document()
        # Notes meant for the admin alone (failed deliveries...) stay out of the desk's copy.
        document["notes"] = [
            note for note in document.get("notes", []) if note.get("key") not in ADMIN_NOTES
        ]
        payload: dict[str, Any] = {"event": event, "ticket": document}
        if ticket.bundle is not None:
            payload["bundle"] = ticket.bundle.model_dump(mode="json")
        return payload

    def render_entry(self, entry: Doc, at: datetime) -> Rendering:
        """The message of ``entry`` as it leaves at ``at``: built from the ticket as it is then.

        A ticket message that starts the reaction clock (W2) states the deadline this very
        send starts: the ticket is rendered as it will be stored once delivered (sent at
        ``at``), so the message and the stored ticket agree to the second.
        """
        ticket = self.get(str(entry["ticket_id"]))
        purpose = str(entry.get("purpose", ""))
        escalation = purpose.startswith("escalation")
        if not escalation and ticket.status is TicketStatus.OPEN:
            ticket.mark_sent(at)
        deadline = escalated_deadline(purpose)
        rendered = render_escalation(ticket, deadline) if escalation else render_ticket(ticket)
        event = "escalation" if escalation else purpose.split("-")[0]
        payload = self._payload(ticket, event)
        if escalation:
            # Which deadline, when it was due, by how much it was missed (W7).
            record = ticket.escalation(deadline)
            payload["deadline"] = deadline
            if record is not None:
                payload["due"] = record.due.isoformat()
                payload["late_s"] = int(record.late_by.total_seconds())
        return Rendering(subject=rendered.subject, body=rendered.body, payload=payload)

    async def _enqueue(self, ticket: Ticket, purpose: str, *, escalation: bool = False) -> None:
        """Queue the ticket's message on each channel; it is rendered when it is sent."""
        channels: tuple[Channel, ...] = (
            self.worker.escalation_channels if escalation else self.worker.channels
        )
        if not channels:
            if not escalation and not self._warned_no_channel:
                log.warning("tickets are filed but not sent: neither [smtp] nor [webhook] is set")
                self._warned_no_channel = True
            return
        to = self.settings.escalation_email if escalation else self.settings.desk_email
        message = OutgoingMessage(
            ticket_id=ticket.id,
            purpose=purpose,
            to=to,
            attachments=() if escalation else await self._attachments(ticket, purpose),
        )
        entries = self.outbox.fresh(outbox_entries(message, channels=channels, now=self.clock()))
        if entries:
            await self.outbox.enqueue(entries)
            self.worker.wake()

    def _on_delivered(self, entry: Doc, at: datetime) -> Mapping[str, Mapping[str, Doc]]:
        """The first channel to deliver a ticket marks it sent: the reaction clock starts (W2)."""
        purpose = str(entry.get("purpose", ""))
        if not (purpose == "ticket" or purpose.startswith("reopened-")):
            return {}
        doc = self.store.get(TICKETS, str(entry["ticket_id"]))
        if doc is None:
            return {}
        ticket = Ticket.from_document(doc)
        if ticket.status is not TicketStatus.OPEN:
            return {}
        ticket.mark_sent(at)
        return {TICKETS: {ticket.id: ticket.as_document()}}

    def _on_failed(self, entry: Doc, at: datetime) -> Mapping[str, Mapping[str, Doc]]:
        """A message given up: the ticket says so in its notes, with the reason (for the admin)."""
        doc = self.store.get(TICKETS, str(entry.get("ticket_id")))
        if doc is None:
            return {}
        ticket = Ticket.from_document(doc)
        ticket.note(
            at,
            "delivery_failed",
            channel=str(entry.get("channel")),
            error=str(entry.get("last_error")),
            ticket=ticket.id,
        )
        return {TICKETS: {ticket.id: ticket.as_document()}}

    async def recheck_held(self, now: datetime | None = None) -> int:
        """W5, W2: held tickets whose contract has since reached the asset registry, or whose
        site has since been given its reporter and delivery address, go out."""
        moment = now or self.clock()
        released: list[str] = []
        for ticket in self.tickets(status=TicketStatus.NEEDS_DATA.value):
            async with self._lock:
                fresh = self.get(ticket.id)
                if fresh.status is not TicketStatus.NEEDS_DATA:
                    continue
                before = set(fresh.missing)
                self._refresh_registry_facts(fresh, moment)
                if fresh.missing:
                    if set(fresh.missing) != before:
                        await self._save(fresh)
                    continue
                fresh.status = TicketStatus.OPEN
                if before & {"serial", "contract_number"}:
                    fresh.note(moment, "completed")
                if before & {*CONTACT_KEYS, *ADDRESS_KEYS}:
                    fresh.note(moment, "completed_from_site")
                await self._save(fresh)
            released.append(fresh.id)
            self._prepare_later(fresh.id)
        return len(released)

    def escalation_destinations(self) -> list[str]:
        """Where an escalation goes (W7): the escalation address by e-mail, and the escalation
        webhook, as configured; never the desk's own webhook."""
        found: list[str] = []
        if "email" in self.worker.escalation_channels:
            found.append(f"email:{self.settings.escalation_email}")
        if self.settings.escalation_webhook is not None:
            found.append(f"webhook:{self.settings.escalation_webhook.url}")
        return found

    async def check_escalations(self, now: datetime | None = None) -> int:
        """W7: one escalation per missed deadline of a ticket: the reaction passed
        unacknowledged (W2), the delivery (W3, P3) or the return (W6, P4) passed.

        With no escalation channel configured the ticket says so, naming the escalation
        contacts to call instead, and the admin is told once in the log.
        """
        moment = now or self.clock()
        count = 0
        for status in ESCALATING:
            for ticket in self.tickets(status=status.value):
                if not ticket.missed_deadlines(moment):
                    continue
                async with self._lock:
                    fresh = self.get(ticket.id)
                    missed = fresh.missed_deadlines(moment)
                    for clock in missed:
                        await self._escalate(fresh, clock, moment)
                    if missed:
                        await self._save(fresh)
                count += len(missed)
        return count

    async def _escalate(self, ticket: Ticket, clock: RunningClock, moment: datetime) -> None:
        """Record one missed deadline on ``ticket`` and queue its escalation (unsaved)."""
        destinations = self.escalation_destinations()
        ticket.escalations = [
            *ticket.escalations,
            Escalation(deadline=clock.name, due=clock.due, at=moment, to=destinations),
        ]
        lang = ticket.language
        late = late_text(moment - clock.due, lang)
        deadline = deadline_name(clock.name, lang)
        if clock.name == "reaction":
            ticket.escalated_at = moment
            ticket.escalated_to = destinations
        if destinations:
            if clock.name == "reaction":
                ticket.note(moment, "escalated", email=", ".join(destinations))
            else:
                ticket.note(
                    moment,
                    "escalated_deadline",
                    deadline=deadline,
                    late=late,
                    email=", ".join(destinations),
                )
            # Enqueue first (idempotent by id), then record: a crash repeats nothing.
            await self._enqueue(
                ticket, escalation_purpose(clock.name, ticket.reopen_count), escalation=True
            )
            return
        contacts = ticket.contacts or DeskContacts.of(self.plans.contacts_of(None))
        phone = contacts.escalation_phone if contacts else "-"
        email = contacts.escalation_email if contacts else "-"
        if clock.name == "reaction":
            ticket.note(moment, "escalation_unsent", phone=phone, email=email)
        else:
            ticket.note(
                moment,
                "escalation_unsent_deadline",
                deadline=deadline,
                late=late,
                phone=phone,
                email=email,
            )
        self._warn_no_escalation(ticket.id)

    def _warn_no_escalation(self, ticket: str | None = None) -> None:
        """Tell the admin, once per run, that escalations have nowhere to go (W7)."""
        if self._warned_no_escalation:
            return
        self._warned_no_escalation = True
        contacts = self.plans.contacts_of(None)
        call = (
            f"; escalate by phone {contacts.escalation_phone} or {contacts.escalation_email}"
            if contacts is not None
            else ""
        )
        what = f"ticket {ticket} passed its reaction time unacknowledged, but " if ticket else ""
        log.warning(
            "%sescalations cannot be sent: configure [smtp] (escalations go to "
            "tickets.escalation_email) or an [escalation_webhook]%s",
            what,
            call,
        )

    async def prune_deliveries(self, now: datetime | None = None) -> int:
        """Forget records of delivered or given-up messages that nothing needs any more.

        A record stops a message of the same id from going out twice (stable Message-ID),
        which matters only while its ticket can still produce that id: until the ticket
        is closed or a later round (reopening) has begun. After that it is history, kept
        for ``sent_retention`` (``tickets.sent_retention_days``) and then dropped, so the
        store does not grow with every ticket ever sent.
        """
        moment = now or self.clock()
        self._pruned_at = moment
        cutoff = moment - self.settings.sent_retention

        def finished(record: Doc) -> bool:
            ticket = str(record.get("ticket_id"))
            status, rounds = self.index.status(ticket), self.index.reopen_count(ticket)
            return (
                status is None
                or status == TicketStatus.CLOSED.value
                or _round(str(record.get("purpose", ""))) < (rounds or 0)
            )

        count = await self.outbox.forget(cutoff, finished)
        if count:
            log.info("forgot %d delivery records of finished tickets", count)
        return count

    # -- admin actions ------------------------------------------------------------------

    async def fill(
        self,
        key: str,
        *,
        serial: str | None = None,
        contract_number: str | None = None,
        by: str | None = None,
        force: bool = False,
        contact: Mapping[str, str] | None = None,
        address: Mapping[str, str] | None = None,
    ) -> Ticket:
        """W5: complete a held ticket; once complete it is prepared and sent.

        A contract number the asset registry does not hold for the ticket's serial is taken
        only with ``force`` (a typo would reach the desk, which refuses unknown contracts).
        ``by`` names who filled it; the ticket records it with the time.
        """
        if contract_number is not None and not contract_number.strip():
            raise TicketError("contract_number is empty: give the service contract number")
        async with self._lock:
            ticket = self.get(key)
            now = self.clock()
            target = (serial or "").strip() or ticket.serial
            number = None if contract_number is None else contract_number.strip()
            known = self._known_contracts(target)
            unknown = number is not None and number not in known
            if unknown and not force:
                raise UnknownContract(key, target, number or "", known)
            ticket.fill(
                serial=serial,
                contract_number=contract_number,
                at=now,
                by=by,
                contact=contact,
                address=address,
            )
            if unknown:
                ticket.note(now, "filled_unknown_contract", contract=number or "", who=by or "?")
            await self._save(ticket)
        if ticket.status is TicketStatus.OPEN:
            self._prepare_later(ticket.id)
        return ticket

    async def open_by_hand(
        self,
        *,
        category: TicketCategory,
        summary: str,
        description: str = "",
        serial: str | None = None,
        site: str | None = None,
        model: str | None = None,
        contact: str | None = None,
        by: str | None = None,
    ) -> Ticket:
        """A ticket the admin opens: a fault the agents cannot see, or a service the plan
        sells beyond repair (technical support, configuration help: H4, P2).

        The plan in force decides: a service it does not include is refused
        (``ServiceNotIncluded``, naming the plan and the plans that include it). Otherwise the
        ticket goes to the desk as automatic ones do: the same SLA terms, W4/W5 fields,
        reporter and delivery address, language and escalation, held while it lacks any.
        ``serial`` names the unit (its site and model from the registry when not given);
        ``site`` alone files a site-wide fault. ``contact`` names the person the desk should
        ask for instead of the site's reporter.
        """
        now = self.clock()
        kind = TicketKind.DEVICE if serial else TicketKind.SITE
        asset = self._asset(serial)
        if kind is TicketKind.SITE and category is not TicketCategory.FAULT:
            raise ServiceNotIncluded(
                f"site {site}: a site has no service plan of its own; ask for "
                f"{category.value} for a unit (serial) whose plan includes it",
                service=CATEGORY_SERVICE[category],
                site_wide=True,
            )
        plan = None if asset is None else plan_in_force(asset, self.plans, warsaw_date(now))
        refusal = service_refusal(category, plan, self.plans, f"unit {serial}")
        if refusal is not None:
            raise refusal
        fault = CATEGORY_FAULT[category]
        subject = serial or f"site:{site}"
        # Any number of hand-opened tickets per unit: each one its own id.
        unique = f"{fault}\x00{now.isoformat()}\x00{secrets.token_hex(4)}"
        key = ticket_id(self.installation.id(), subject, unique)
        ticket = Ticket(
            id=key,
            kind=kind,
            fault=fault,
            fault_detail=summary,
            status=TicketStatus.OPEN,
            serial=serial,
            model=model or (None if asset is None else asset.model),
            site=site or (None if asset is None else asset.site),
            language=self.settings.language,
            first_seen=now,
            opened_at=now,
            category=category,
            summary=summary,
            description=description or None,
            opened_by=by,
        )
        if contact:
            ticket.reporter = SiteContact(name=contact)
        self._refresh_registry_facts(ticket, now)
        if ticket.missing:
            ticket.status = TicketStatus.NEEDS_DATA
            ticket.note(now, "held", missing=",".join(ticket.missing))
        async with self._lock:
            await self._save(ticket)
        log.info("ticket %s opened by hand (%s %s)", ticket.id, subject, category.value)
        self._warn_if_held(ticket)
        self._prepare_later(ticket.id)
        return ticket

    def _known_contracts(self, serial: str | None) -> list[str]:
        """The contract numbers the asset registry holds for ``serial``, oldest first."""
        asset = self._asset(serial)
        return [] if asset is None else [contract.number for contract in asset.contracts]

    async def act(self, key: str, action: str, *, at: datetime | None = None) -> Ticket:
        """An admin lifecycle action (ack, accept, shipped, received, returned, close).

        ``at`` dates it when it happened earlier (the desk accepted by phone this morning);
        it may not be in the future, nor before a step the ticket has already taken.
        """
        async with self._lock:
            ticket = self.get(key)
            now = self.clock()
            if at is not None and at > now:
                raise TicketMomentError(
                    f"{action} at {to_warsaw(at).isoformat()} is in the future (it is now "
                    f"{to_warsaw(now).isoformat()})"
                )
            ticket.transition(action, at or now)
            # Messages still waiting that the new status makes wrong: all of a closed ticket
            # (a false alarm must not reach the desk once SMTP is back), and an escalation
            # once the desk has reacted (W2, W7).
            closed = ticket.status is TicketStatus.CLOSED
            stale = sorted(
                entry_id
                for entry_id, doc in self._records(("pending",), key).get("pending", [])
                if doc.get("ticket_id") == key
                and (closed or str(doc.get("purpose", "")).startswith("escalation"))
            )
            if stale:
                ticket.note(now, "dropped", entries=", ".join(stale))
            doc = ticket.as_document()
            seq = self.store.apply(
                {TICKETS: {ticket.id: doc}}, self.outbox.dropping(stale) if stale else None
            )
            self.index.put(ticket.id, doc)
            await self.store.wait_durable(seq)
        return ticket

    def on_its_way(self, key: str) -> bool:
        """Whether the ticket is being sent: prepared now (its diagnostics collected), or its
        messages wait in the outbox (retried by themselves); sending again adds nothing."""
        if key in self._preparing:
            return True
        state, _ = self.delivery_state(key)
        return state in ("pending", "retrying")

    def send_refusal(self, ticket: Ticket) -> str | None:
        """Why the ticket cannot be sent now, or None when ``resend`` would send it: it is
        open and not on its way (never queued, or its messages were given up on)."""
        if ticket.status is TicketStatus.NEEDS_DATA:
            return f"ticket {ticket.id} is held: missing {', '.join(ticket.missing)}; fill it first"
        if ticket.status is not TicketStatus.OPEN:
            return f"ticket {ticket.id} is {ticket.status.value}: it was already sent"
        if self.on_its_way(ticket.id):
            return (
                f"ticket {ticket.id} is being sent already: its messages are on their way "
                "(polyfleet controller tickets deliveries shows them)"
            )
        return None

    def next_steps(self, ticket: Ticket) -> list[str]:
        """What an admin may do with the ticket now, as ``act_on_ticket`` takes it: ``send``
        (``send_refusal``), then the lifecycle's next steps (``Ticket.allowed_actions``)."""
        steps = ticket.allowed_actions()
        return steps if self.send_refusal(ticket) is not None else ["send", *steps]

    async def resend(self, key: str) -> Ticket:
        """Send an open ticket now (e.g. after fixing the delivery settings)."""
        ticket = self.get(key)
        refused = self.send_refusal(ticket)
        if refused is not None:
            raise TicketError(refused)
        # Deliveries given up on (e.g. a refused webhook, since fixed) may be tried again.
        given_up = [
            entry_id
            for entry_id, doc in self._records(("failed",), key).get("failed", [])
            if doc.get("ticket_id") == key
        ]
        await self.outbox.retry(given_up)
        self._prepare_later(key)
        return ticket
