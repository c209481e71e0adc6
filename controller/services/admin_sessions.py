"""Admin sessions open on the units, as the agents report them: the latest per unit, and a
new one from outside its site's admin networks told once (audit log, metric).

Owns the ``admin_sessions`` collection (key = serial): ``{serial, site_id, sessions: [{key,
user, role, address, kind, since, first_seen, outside}], updated_at}``: the sessions of other
admins in the unit's latest reading. The agent's own session is never kept (it is new every
poll); a document is written only when the set of other admins' sessions changes, so most
reports write nothing here. Kept in memory by serial (read once at first use).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain.admin_sessions import read_sessions
from polyfleet.controller.services.audit import Actor, AuditAction, AuditLog, Origin
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.settings.tickets import WebhookSettings
from polyfleet.controller.store.base import Doc, Store

log = logging.getLogger(__name__)

ADMIN_SESSIONS = "admin_sessions"
#: The audit log's actor of a security event: the controller, judging what an agent saw.
WATCH_ACTOR = Actor(name="admin session watch", role="system")


@dataclass(frozen=True, kw_only=True)
class UnexpectedSession:
    """A new admin session on a unit from outside its site's admin networks."""

    serial: str
    site_id: str
    session: Doc
    networks: tuple[str, ...]
    agent_id: str

    @property
    def key(self) -> str:
        return str(self.session["key"])

    def details(self) -> Doc:
        """What the audit log and the security webhook say of it."""
        session = self.session
        return {
            "serial": self.serial,
            "user": session.get("user") or "",
            "role": session.get("role") or "",
            "address": session.get("address") or "",
            "kind": session.get("kind") or "other",
            "since": session.get("since"),
            "admin_networks": list(self.networks),
            "reported_by": self.agent_id,
        }


@dataclass
class SessionWatchStats:
    #: New sessions from outside the admin networks since start, by site.
    unexpected: Counter[str] = field(default_factory=Counter)


#: Told of every unexpected session once it is in the audit log (the security webhook).
Listener = Callable[[UnexpectedSession], Awaitable[None]]


class AdminSessionWatch:
    """The other admins' sessions of each unit, and the security events of new ones."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        inventory: Inventory,
        audit: AuditLog,
        *,
        webhook: WebhookSettings | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._inventory = inventory
        self._audit = audit
        self._known: dict[str, Doc] | None = None
        #: Per unit, the collection time of the reading its sessions come from (a report
        #: resent late is older than the one already taken, and must not bring back ended
        #: sessions as new ones).
        self._read_at: dict[str, datetime] = {}
        self.stats = SessionWatchStats()
        self.listeners: list[Listener] = []
        #: ``[security_webhook]``: where each event is posted (None: nowhere).
        self.webhook = webhook

    def _index(self) -> dict[str, Doc]:
        if self._known is None:
            self._known = dict(self._store.scan(ADMIN_SESSIONS))
        return self._known

    def of(self, serial: str) -> list[Doc]:
        """The other admins' sessions open on the unit at its latest reading, oldest first."""
        doc = self._index().get(serial)
        sessions = [dict(s) for s in doc["sessions"]] if doc is not None else []
        return sorted(sessions, key=lambda s: str(s.get("since") or s.get("first_seen") or ""))

    def has_read(self, serial: str) -> bool:
        """Whether the unit's sessions were ever reported (not by agents before the field,
        nor over SSH, nor by a firmware without the list)."""
        return serial in self._index()

    def open_sessions(self) -> Counter[tuple[str, str]]:
        """Other admins' sessions open now, by (site, kind)."""
        counts: Counter[tuple[str, str]] = Counter()
        for doc in self._index().values():
            for session in doc["sessions"]:
                counts[(doc["site_id"], str(session.get("kind") or "other"))] += 1
        return counts

    async def take(self, site_id: str, agent_id: str, documents: Sequence[Doc]) -> int:
        """Take the sessions of a batch's reports (as stored); how many security events."""
        now = self._clock()
        index = self._index()
        networks: tuple[str, ...] | None = None
        puts: dict[str, Doc] = {}
        events: list[UnexpectedSession] = []
        for document in documents:
            snap = document["snapshot"]
            reported = snap.get("sessions")
            if reported is None:
                continue
            serial = snap["serial"]
            collected = datetime.fromisoformat(snap["collected_at"])
            last = self._read_at.get(serial)
            if last is not None and collected < last:
                continue
            self._read_at[serial] = collected
            if networks is None:
                site = self._inventory.find_site(site_id) or {}
                networks = tuple(site.get("admin_networks") or ())
            before = index.get(serial)
            previous = before["sessions"] if before is not None else []
            reading = read_sessions(previous, reported, networks=networks, now=now.isoformat())
            if reading.keys != [s["key"] for s in previous] or before is None:
                puts[serial] = {
                    "serial": serial,
                    "site_id": site_id,
                    "sessions": reading.kept,
                    "updated_at": now.isoformat(),
                }
            events += (
                UnexpectedSession(
                    serial=serial,
                    site_id=site_id,
                    session=session,
                    networks=networks,
                    agent_id=agent_id,
                )
                for session in reading.unexpected
            )
        if puts:
            # Before the audit entries: the journal keeps the order, so a session told of is
            # always one already kept (after a crash it is not told of twice).
            self._store.apply({ADMIN_SESSIONS: puts})
            index.update(puts)
        for event in events:
            await self._tell(event)
        return len(events)

    async def _tell(self, event: UnexpectedSession) -> None:
        details = event.details()
        log.warning(
            "admin session on %s from %s (%s, user %r) outside the admin networks of site %s",
            event.serial,
            details["address"] or "an unknown address",
            details["kind"],
            details["user"],
            event.site_id,
        )
        await self._audit.record(
            WATCH_ACTOR,
            Origin(via="controller"),
            AuditAction.ADMIN_SESSION_UNEXPECTED,
            f"device:{event.serial}",
            details,
            site=event.site_id,
        )
        self.stats.unexpected[event.site_id] += 1
        for listener in self.listeners:
            await listener(event)
