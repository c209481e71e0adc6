"""Sites, devices and peripherals: report ingestion, site moves and reachability.

A device document (collection ``devices``, key = serial) holds the latest snapshot's fields
that seldom change (model, firmware, provider, peripherals, health...) plus ``site_id``,
``room`` and ``first_seen``; it is written only when one of them changes. Each retained report
is a document in ``reports`` (key = ``<agent id>/<report id>``: report ids are unique per
agent, not across the fleet): ``{id, serial, site_id, agent_id, received_at, snapshot}``.
What every report changes is derived from those: which reports a device retains, and from
its latest one ``last_seen`` (when the controller received it),
``collected_at`` and ``uptime_s``; the inventory keeps them in memory, rebuilds them from the
stored reports on start, and adds them to the device wherever a device is shown. So a steady
report writes nothing but itself. Health changes (not every report) are kept in
``health_history`` (key = serial): ``{"changes": [{at, state, problems}, ...]}``.

A report that leaves the retained history with the batch that brought it (a newer one of the
same batch replaced it, as in an outbox's backlog, or it was too old to keep on arrival) is
still remembered by id, so that a resend of the batch is all duplicates, not new
acceptances: per agent, the ids of its last ``REMEMBERED_IDS`` such reports, kept in
``report_receipts`` (key = ``<agent id>/<number>``, one document per batch that had any).

What a batch changes is planned without I/O by ``controller.domain.ingest``; ``stage`` applies
that plan, and is the only part of ingestion that writes to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from polyfleet.controller.clock import Clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.domain import reported
from polyfleet.controller.domain.admin_input import AdminInputError, display_name, shown
from polyfleet.controller.domain.contacts import (
    DeliveryAddress,
    SiteContact,
    site_address,
    site_contact,
)
from polyfleet.controller.domain.ingest import (
    ClockChange,
    DeviceFound,
    HealthChange,
    IngestPlan,
    IngestRules,
    KnownState,
    Latest,
    Retained,
    plan_batch,
)
from polyfleet.controller.errors import Conflict, InvalidInput, NotAllowed, NotFound
from polyfleet.controller.events import (
    AgentClockChanged,
    AgentNoticeReceived,
    AgentOffline,
    AgentOnline,
    DeviceAdded,
    DeviceMoved,
    DeviceUnreachable,
    Event,
    EventBus,
    HealthChanged,
    SnapshotIngested,
    SnapshotsIngested,
)
from polyfleet.controller.services.access import Principal, UnknownSite
from polyfleet.controller.store.base import (
    AGENTS,
    DEVICES,
    HEALTH_HISTORY,
    REPORTS,
    SITES,
    Doc,
    Store,
)
from polyfleet.shared.schema import (
    MAX_BATCH_SNAPSHOTS,
    AgentStatus,
    HealthState,
    Model,
    Problem,
    ProblemCode,
    Provider,
    RefusedReport,
    ReportBatch,
    ReportBatchAck,
    Snapshot,
    reports_json,
)

log = logging.getLogger(__name__)

SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

#: Ids of reports that left the retained history, one document per batch and agent.
REPORT_RECEIPTS = "report_receipts"
#: Per agent, how many ids of reports that left the retained history are remembered: an
#: agent resends its unacknowledged batch (at most ``MAX_BATCH_SNAPSHOTS``) before anything
#: newer, so two batches' worth recognise every resend.
REMEMBERED_IDS = 2 * MAX_BATCH_SNAPSHOTS


#: Fields an earlier version kept in device documents; now derived from the retained reports.
_DERIVED = frozenset({"last_seen", "collected_at", "uptime_s", "reports"})


class DeviceAtOtherSite(NotAllowed):
    """A batch mentions devices that belong to another site; nothing of it was stored."""

    #: How many of the foreign devices the message names (an agent holds those it names).
    NAMED = 20

    def __init__(self, site_id: str, foreign: dict[str, str]) -> None:
        self.site_id = site_id
        self.foreign = foreign
        named = list(foreign.items())[: self.NAMED]
        first = named[0][0]
        owners = ", ".join(f"device {serial} belongs to site {owner!r}" for serial, owner in named)
        more = f" (and {len(foreign) - len(named)} more)" if len(foreign) > len(named) else ""
        super().__init__(
            f"{owners}{more}, not {site_id!r}; nothing from this "
            f"batch was stored. An admin moves a device between sites with "
            f"`polyfleet controller devices move {first} --site {site_id}` "
            f"(POST /api/v1/devices/{first}/move)",
            code="device_at_other_site",
            field="reports",
        )


class SiteExists(Conflict):
    """A site with that id exists already; adding it again would silently rename it."""

    def __init__(self, site: Doc) -> None:
        site_id = site["id"]
        super().__init__(
            f"site {site_id!r} exists already (named {shown(str(site.get('name', site_id)))!r}, "
            f"time zone {site.get('timezone', 'UTC')}); rename it with PATCH /api/v1/sites/"
            f"{site_id} or `polyfleet controller site rename {site_id} --name NAME`",
            code="site_exists",
            field="id",
        )
        self.site = site


def site_changes(old: Doc, new: Doc) -> dict[str, list[Any]]:
    """What ``update_site`` changed, as the audit log keeps it: field -> [before, after]."""
    return {
        key: [old.get(key), new.get(key)]
        for key in ("name", "timezone", "contact", "delivery_address", "admin_networks")
        if old.get(key) != new.get(key)
    }


def _site_name(name: str, *, allow_empty: bool) -> str:
    try:
        return display_name(name, field="name", allow_empty=allow_empty)
    except AdminInputError as exc:
        raise InvalidInput(exc.field or "name", str(exc)) from None


def _check_timezone(timezone: str) -> None:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            "timezone", f"unknown time zone {timezone!r} (use an IANA name like Europe/Warsaw)"
        ) from None


class UnknownDevice(NotFound, KeyError):
    def __init__(self, serial: str) -> None:
        super().__init__(
            f"no device {serial!r}",
            field="serial",
            template="no device {serial}",
            params={"serial": repr(serial)},
        )
        self.serial = serial


@dataclass(frozen=True, kw_only=True)
class DeviceFilter:
    """Filters of ``GET /api/v1/devices`` and ``polyfleet controller devices``; None = any."""

    site: str | None = None
    model: Model | None = None
    provider: Provider | None = None
    health: HealthState | None = None
    firmware: str | None = None
    room: str | None = None

    def matches(self, doc: Doc) -> bool:
        if self.site is not None and doc.get("site_id") != self.site:
            return False
        if self.model is not None and doc.get("model") != self.model.value:
            return False
        if self.provider is not None and doc.get("provider") != self.provider.value:
            return False
        if self.health is not None and doc["health"]["state"] != self.health.value:
            return False
        if self.room is not None and doc.get("room") != self.room:
            return False
        if self.firmware is not None:
            firmware = doc.get("firmware") or {}
            version, build = firmware.get("version", ""), firmware.get("build", "")
            # Accept what people type: "3.12.0", "3.12.0-366027" or "3.12.0_366027".
            if self.firmware not in (version, f"{version}-{build}", f"{version}_{build}"):
                return False
        return True

    @classmethod
    def parse(cls, values: dict[str, str | None]) -> DeviceFilter:
        """From query or CLI strings; InvalidInput names the bad field."""
        kwargs: dict[str, Any] = {}
        enums: dict[str, Any] = {"model": Model, "provider": Provider, "health": HealthState}
        for name in ("site", "model", "provider", "health", "firmware", "room"):
            value = values.get(name)
            if value is None or value == "":
                continue
            enum = enums.get(name)
            if enum is not None:
                try:
                    kwargs[name] = enum(value)
                except ValueError:
                    allowed = ", ".join(member.value for member in enum)
                    raise InvalidInput(
                        name, f"{name} must be one of {allowed}; got {value!r}"
                    ) from None
            else:
                kwargs[name] = value
        return cls(**kwargs)


@dataclass
class _SiteLiveness:
    online: bool | None
    last_call: datetime
    #: Since when the site's agent calls in (devices get a full silence period from then).
    watched_since: datetime


@dataclass(frozen=True, kw_only=True)
class StagedBatch:
    """A batch the store has taken but not yet made durable, and what its answer says."""

    started: float
    now: datetime
    site_id: str
    agent_id: str
    accepted: int
    duplicates: int
    superseded: int
    events: list[Event]
    accepted_documents: list[Doc]
    #: Reports not stored, each with why (the rest of the batch was).
    refused: list[reported.ReportRefusal] = field(default_factory=list)
    #: Unprintable characters of the batch's text replaced by a mark.
    marked_characters: int = 0


@dataclass
class IngestStats:
    """Counters the metrics endpoint reads."""

    accepted: int = 0
    duplicates: int = 0
    #: Reports older than every retained one of a full history: not kept, not accepted.
    superseded: int = 0
    refused_batches: int = 0
    #: Reports refused one by one, by code (``domain.reported``).
    refused_reports: Counter[str] = field(default_factory=Counter)
    #: Unprintable characters in reported text, replaced by a mark (``domain.reported``).
    marked_characters: int = 0
    observers: list[Callable[[float], None]] = field(default_factory=list)


_NO_IDS: frozenset[str] = frozenset()

#: What the device index keeps of a device: its site, room, firmware version and host.
_IndexKey = tuple[str, str | None, str | None, str | None]
#: Snapshot fields that change what the device index keeps (a site or room never comes in a
#: report: agents cannot see them).
_INDEXED_FIELDS = frozenset({"firmware", "host_serial"})


def _index_key(doc: Doc) -> _IndexKey:
    version = (doc.get("firmware") or {}).get("version")
    return (
        str(doc["site_id"]),
        doc.get("room") or None,
        str(version) if version else None,
        doc.get("host_serial") or None,
    )


class _DeviceIndex:
    """What pages ask of many devices at once, kept up to date on every device write so they
    never read the whole collection: serials per site, rooms per site, E70 cameras per host,
    and how many devices report each firmware version."""

    def __init__(self) -> None:
        self.by_site: dict[str, set[str]] = {}
        self.rooms: dict[str, Counter[str]] = {}
        self.cameras: dict[str, set[str]] = {}
        self.versions: Counter[str] = Counter()
        self._keys: dict[str, _IndexKey] = {}

    @classmethod
    def of(cls, devices: Iterable[Doc]) -> _DeviceIndex:
        index = cls()
        for doc in devices:
            index.put(doc)
        return index

    def put(self, doc: Doc) -> None:
        """Take ``doc`` (a device's whole stored document) in place of what was known of it."""
        serial = str(doc["serial"])
        key = _index_key(doc)
        old = self._keys.get(serial)
        if old == key:
            return
        if old is not None:
            self._remove(serial, old)
        self._keys[serial] = key
        site, room, version, host = key
        self.by_site.setdefault(site, set()).add(serial)
        if room is not None:
            self.rooms.setdefault(site, Counter())[room] += 1
        if version is not None:
            self.versions[version] += 1
        if host is not None:
            self.cameras.setdefault(host, set()).add(serial)

    def _remove(self, serial: str, key: _IndexKey) -> None:
        site, room, version, host = key
        members = self.by_site[site]
        members.discard(serial)
        if not members:
            del self.by_site[site]
        if room is not None:
            rooms = self.rooms[site]
            rooms[room] -= 1
            if rooms[room] <= 0:
                del rooms[room]
            if not rooms:
                del self.rooms[site]
        if version is not None:
            self.versions[version] -= 1
            if self.versions[version] <= 0:
                del self.versions[version]
        if host is not None:
            cameras = self.cameras[host]
            cameras.discard(serial)
            if not cameras:
                del self.cameras[host]

    def site_of(self, serial: str) -> str | None:
        key = self._keys.get(serial)
        return None if key is None else key[0]


@dataclass
class _LeftIds:
    """One agent's reports that left the retained history: their ids, and by receipt."""

    ids: set[str] = field(default_factory=set)
    receipts: deque[tuple[str, list[str]]] = field(default_factory=deque)

    def add(self, key: str, ids: list[str]) -> None:
        self.receipts.append((key, ids))
        self.ids.update(ids)

    def beyond(self, room: int) -> list[str]:
        """Keys of the oldest receipts to let go so that at most ``room`` ids stay."""
        total = len(self.ids)
        keys = []
        for key, ids in self.receipts:
            if total <= room:
                break
            keys.append(key)
            total -= len(ids)
        return keys

    def forget(self, count: int) -> None:
        """Let go of the ``count`` oldest receipts."""
        for _ in range(count):
            _, ids = self.receipts.popleft()
            self.ids.difference_update(ids)


def report_key(agent_id: str, report_id: str) -> str:
    """Where a report is stored: report ids are unique per agent, not across the fleet."""
    return f"{agent_id}/{report_id}"


class Inventory:
    """Owns the ``sites``, ``devices``, ``reports``, ``health_history``, ``report_receipts``
    and ``agents`` collections (an agent is enrolled and removed by ``AccessService``, which
    hands its credential's change to ``add_agent`` and ``remove_agent``)."""

    def __init__(self, store: Store, bus: EventBus, clock: Clock, config: ControllerConfig) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._rules = IngestRules(
            report_history=config.report_history,
            max_clock_skew=timedelta(seconds=config.max_clock_skew_s),
        )
        self._health_history = config.health_history
        self._silence = timedelta(seconds=config.silence_s)
        self._persist_every = timedelta(seconds=config.poll_interval_s)
        self.stats = IngestStats()
        self._started_at = clock()
        self._agent_calls: dict[str, datetime] = {}
        #: Per agent, what it last said about itself (version, outbox, held) and when.
        self._agent_status: dict[str, Doc] = {}
        self._sites: dict[str, _SiteLiveness] = {}
        #: Per device, its retained reports (id, collection time), oldest first.
        self._retained: dict[str, list[Retained]] = {}
        #: Per device, from its latest report: (last seen, uptime).
        self._latest: dict[str, Latest] = {}
        #: Per agent, ids of its reports that left the retained history (``REPORT_RECEIPTS``).
        self._left: dict[str, _LeftIds] = {}
        self._receipt_number = 0
        self._turn = asyncio.Lock()
        self._index = _DeviceIndex()
        #: Site -> ids of its agents; built from the store at first use, kept by
        #: ``add_agent`` and ``remove_agent`` (which alone add or remove agents).
        self._agent_ids: dict[str, set[str]] | None = None

    def load(self) -> None:
        """Take reachability baselines and each device's reports from the store (once open)."""
        self._started_at = self._clock()
        for site_id, site in self._store.scan(SITES).items():
            self._sites[site_id] = _SiteLiveness(
                online=site.get("agent_online"),
                last_call=self._started_at,
                watched_since=self._started_at,
            )
        self._migrate_report_keys()
        retained: dict[str, list[Retained]] = {}
        reports = self._store.scan(REPORTS)
        for key, report in reports.items():
            retained.setdefault(report["serial"], []).append(
                (key, report["snapshot"]["collected_at"])
            )
        latest: dict[str, Latest] = {}
        for serial, items in retained.items():
            items.sort(key=lambda item: datetime.fromisoformat(item[1]))
            newest = reports[items[-1][0]]
            latest[serial] = (newest["received_at"], newest["snapshot"]["uptime_s"])
        self._retained, self._latest = retained, latest
        self._load_receipts()
        self._migrate_devices()
        self._index = _DeviceIndex.of(self._store.scan(DEVICES).values())
        self._agent_ids = None

    def _migrate_report_keys(self) -> None:
        """Key reports an earlier version stored by their id alone by agent and id."""
        old = [
            (key, report)
            for key, report in self._store.scan(REPORTS).items()
            if key == report["id"] and "/" not in key
        ]
        if old:
            self._store.apply(
                {REPORTS: {report_key(r["agent_id"], r["id"]): r for _, r in old}},
                {REPORTS: [key for key, _ in old]},
            )
            log.info("%d reports keyed by agent and report id", len(old))

    def _load_receipts(self) -> None:
        left: dict[str, _LeftIds] = {}
        number = 0
        for key, receipt in sorted(self._store.scan(REPORT_RECEIPTS).items()):
            agent_id, _, counter = key.rpartition("/")
            number = max(number, int(counter))
            left.setdefault(agent_id, _LeftIds()).add(key, receipt["ids"])
        self._left, self._receipt_number = left, number

    def _migrate_devices(self) -> None:
        """Drop what an earlier version wrote into device documents on every report."""
        old = {
            serial: {name: value for name, value in doc.items() if name not in _DERIVED}
            for serial, doc in self._store.scan(DEVICES).items()
            if not _DERIVED.isdisjoint(doc)
        }
        if old:
            self._store.apply({DEVICES: old})
            log.info("%d device documents rewritten without per-report fields", len(old))

    def _with_latest(self, doc: Doc) -> Doc:
        """A device document with what its latest report says (``last_seen``...)."""
        serial = doc["serial"]
        latest = self._latest.get(serial)
        if latest is None:
            return {**doc, "last_seen": None, "collected_at": None, "uptime_s": None}
        last_seen, uptime_s = latest
        collected_at = self._retained[serial][-1][1]
        return {**doc, "last_seen": last_seen, "collected_at": collected_at, "uptime_s": uptime_s}

    # -- sites -------------------------------------------------------------------------------

    async def add_site(self, site_id: str, *, name: str, timezone: str) -> Doc:
        """A new site; ``SiteExists`` when the id is taken (``update_site`` renames)."""
        if not SITE_ID.match(site_id):
            raise InvalidInput(
                "site_id", f"site id {site_id!r} must be lowercase letters, digits, '.', '_', '-'"
            )
        name = _site_name(name, allow_empty=True)
        _check_timezone(timezone)
        existing = self._store.get(SITES, site_id)
        if existing is not None:
            raise SiteExists(existing)
        doc: Doc = {
            "id": site_id,
            "name": name or site_id,
            "timezone": timezone,
            "created_at": self._clock().isoformat(),
            "agent_online": None,
        }
        # Checked and written with no await in between: two adds of one id cannot both pass.
        await self._store.wait_durable(self._store.apply({SITES: {site_id: doc}}))
        self._sites.setdefault(
            site_id,
            _SiteLiveness(
                online=doc["agent_online"], last_call=self._clock(), watched_since=self._clock()
            ),
        )
        return doc

    async def update_site(
        self,
        site_id: str,
        *,
        name: str | None = None,
        timezone: str | None = None,
        contact: Mapping[str, str] | None = None,
        delivery_address: Mapping[str, str] | None = None,
        admin_networks: Sequence[str] | None = None,
    ) -> tuple[Doc, Doc]:
        """Rename a site, change its time zone, its authorised reporter (``contact``: the
        fields given, checked; "" clears one), its RMA ``delivery_address`` (the same way) or
        its admin networks: (the document before, the one after)."""
        existing = self._store.get(SITES, site_id)
        if existing is None:
            raise UnknownSite(site_id)
        if all(
            value is None for value in (name, timezone, contact, delivery_address, admin_networks)
        ):
            raise InvalidInput(
                "name",
                "give a new name, a new timezone, a contact, a delivery address or admin networks",
            )
        changed = dict(existing)
        if name is not None:
            changed["name"] = _site_name(name, allow_empty=False)
        if timezone is not None:
            _check_timezone(timezone)
            changed["timezone"] = timezone
        for key, given in (("contact", contact), ("delivery_address", delivery_address)):
            if given is not None:
                merged = {**(existing.get(key) or {}), **given}
                kept = {field: value for field, value in merged.items() if value}
                changed[key] = kept or None
        if admin_networks is not None:
            changed["admin_networks"] = list(dict.fromkeys(admin_networks))
        await self._store.wait_durable(self._store.apply({SITES: {site_id: changed}}))
        return existing, changed

    def sites(self) -> list[Doc]:
        by_site, agents = self._index.by_site, self._agents_by_site()
        return [
            site_summary(site, len(by_site.get(site_id, ())), len(agents.get(site_id, ())))
            for site_id, site in sorted(self._store.scan(SITES).items())
        ]

    def site(self, site_id: str) -> Doc:
        """One site as ``sites()`` lists it; ``UnknownSite`` when there is none."""
        found = self.find_site(site_id)
        if found is None:
            raise UnknownSite(site_id)
        return found

    def find_site(self, site_id: str) -> Doc | None:
        """One site as ``sites()`` lists it, or None."""
        site = self._store.get(SITES, site_id)
        if site is None:
            return None
        agents = len(self._agents_by_site().get(site_id, ()))
        return site_summary(site, len(self._index.by_site.get(site_id, ())), agents)

    def has_site(self, site_id: str) -> bool:
        return self._store.get(SITES, site_id) is not None

    def site_ids(self) -> list[str]:
        """Every site's id, sorted."""
        return sorted(self._store.scan(SITES))

    def site_zone(self, site_id: str) -> str | None:
        """The IANA time zone a site's times are shown in, or None for an unknown site."""
        site = self._store.get(SITES, site_id)
        return None if site is None else str(site.get("timezone") or "UTC")

    def site_zones(self) -> dict[str, str]:
        """Every site's time zone by site id."""
        return {
            site_id: str(site.get("timezone") or "UTC")
            for site_id, site in self._store.scan(SITES).items()
        }

    def site_contacts(self, site_id: str) -> tuple[SiteContact | None, DeliveryAddress | None]:
        """A site's authorised reporter and RMA delivery address (None: not set or no site)."""
        site = self._store.get(SITES, site_id)
        return site_contact(site), site_address(site)

    def site_name(self, site_id: str) -> str | None:
        """A site's display name, or None for an unknown site."""
        site = self._store.get(SITES, site_id)
        name = None if site is None else site.get("name")
        return name if isinstance(name, str) else None

    # -- agents ------------------------------------------------------------------------------

    def _agents_by_site(self) -> dict[str, set[str]]:
        if self._agent_ids is None:
            found: dict[str, set[str]] = {}
            for agent_id, doc in self._store.scan(AGENTS).items():
                found.setdefault(str(doc["site_id"]), set()).add(agent_id)
            self._agent_ids = found
        return self._agent_ids

    def agent(self, agent_id: str) -> Doc | None:
        """An enrolled agent's stored document, or None."""
        return self._store.get(AGENTS, agent_id)

    def agents(self, site_id: str | None = None) -> list[Doc]:
        """The stored documents of the enrolled agents (of ``site_id``), by id."""
        by_site = self._agents_by_site()
        ids = (
            sorted(by_site.get(site_id, ()))
            if site_id is not None
            else sorted(agent_id for ids in by_site.values() for agent_id in ids)
        )
        get = self._store.get
        return [doc for agent_id in ids if (doc := get(AGENTS, agent_id)) is not None]

    def site_clock_ahead(self, site_id: str | None) -> float | None:
        """How far ahead (seconds) the clock of a site's agent is, when one's is ahead."""
        if site_id is None:
            return None
        for doc in self.agents(site_id):
            clock = doc.get("clock") or {}
            if clock.get("state") == "ahead":
                return float(clock.get("skew_s") or 0)
        return None

    def add_agent(
        self,
        agent: Doc,
        *,
        together: Mapping[str, Mapping[str, Doc]],
        gone: Mapping[str, Iterable[str]],
    ) -> int:
        """Store a newly enrolled ``agent`` in one change with ``together`` (its credential)
        and the deletes ``gone`` (its spent code); applied, returns the change to wait for."""
        seq = self._store.apply({**together, AGENTS: {agent["id"]: agent}}, gone)
        self._agents_by_site().setdefault(str(agent["site_id"]), set()).add(agent["id"])
        return seq

    def remove_agent(self, agent_id: str, *, gone: Mapping[str, Iterable[str]]) -> int:
        """Remove an agent in one change with the deletes ``gone`` (its credentials);
        applied, returns the change to wait for."""
        seq = self._store.apply({}, {**gone, AGENTS: [agent_id]})
        for ids in self._agents_by_site().values():
            ids.discard(agent_id)
        return seq

    # -- devices -----------------------------------------------------------------------------

    def devices(self, where: DeviceFilter | None = None) -> list[Doc]:
        where = where or DeviceFilter()
        if where.site is None:
            docs: Iterable[Doc] = self._store.scan(DEVICES).values()
        else:
            get = self._store.get
            docs = (
                doc
                for serial in self._index.by_site.get(where.site, ())
                if (doc := get(DEVICES, serial)) is not None
            )
        return [
            device_summary(self._with_latest(doc))
            for doc in sorted(docs, key=lambda doc: str(doc["serial"]))
            if where.matches(doc)
        ]

    def collected_at(self, serial: str) -> str | None:
        """When the unit's latest report was collected (kept in memory), or None."""
        retained = self._retained.get(serial)
        return str(retained[-1][1]) if retained else None

    def device(self, serial: str) -> Doc:
        doc = self._store.get(DEVICES, serial)
        if doc is None:
            raise UnknownDevice(serial)
        return doc

    def find_device(self, serial: str) -> Doc | None:
        """A device's stored document (``device`` without the refusal), or None.

        Documents are replaced, never changed in place: the same object again means the
        device has not changed (what ``VerdictCache`` relies on).
        """
        return self._store.get(DEVICES, serial)

    def fleet(self) -> Mapping[str, Doc]:
        """Every device's stored document by serial, read-only: for views of the whole fleet
        (the overview, metrics) that group every device anyway."""
        return MappingProxyType(self._store.scan(DEVICES))

    def serials(self, site: str | None = None) -> set[str]:
        """Serials of every reported device (of ``site``)."""
        if site is not None:
            return set(self._index.by_site.get(site, ()))
        return set(self._store.scan(DEVICES))

    def site_of(self, serial: str) -> str | None:
        """The site a reported device belongs to, or None when no report mentioned it."""
        return self._index.site_of(serial)

    def rooms(self, site: str | None = None) -> list[str]:
        """The rooms devices stand in (at ``site``), as people sort them."""
        if site is not None:
            found = set(self._index.rooms.get(site, ()))
        else:
            found = {room for rooms in self._index.rooms.values() for room in rooms}
        return sorted(found, key=str.casefold)

    def firmware_versions(self) -> list[str]:
        """Every firmware version a device reports, sorted as text."""
        return sorted(self._index.versions)

    def device_detail(self, serial: str) -> Doc:
        """One device with its peripherals, host/camera links, health history, recent reports."""
        doc = self._with_latest(self.device(serial))
        detail = device_summary(doc)
        # Its own site's cameras: one another site reports is that site's (see move_device).
        site_id = doc["site_id"]
        index = self._index
        cameras = sorted(c for c in index.cameras.get(serial, ()) if index.site_of(c) == site_id)
        detail.update(
            model_raw=doc.get("model_raw", ""),
            system_name=doc.get("system_name", ""),
            in_call=doc.get("in_call", False),
            uptime_s=doc.get("uptime_s"),
            via=doc.get("via"),
            collected_at=doc.get("collected_at"),
            first_seen=doc.get("first_seen"),
            peripherals=doc.get("peripherals", []),
            cameras=cameras,
            health_history=self.health_history(serial),
            reports=[key.partition("/")[2] for key, _ in self._retained.get(serial, ())],
        )
        return detail

    def health_history(self, serial: str) -> list[Doc]:
        """The device's health changes, oldest first: ``{at, state, problems}``."""
        doc = self._store.get(HEALTH_HISTORY, serial)
        return list(doc["changes"]) if doc else []

    def _record_change(self, serial: str, change: Doc, pending: dict[str, Doc]) -> None:
        known = pending.get(serial) or self._store.get(HEALTH_HISTORY, serial)
        changes = known["changes"] if known else []
        pending[serial] = {"changes": [*changes[-(self._health_history - 1) :], change]}

    def recent_reports(self, serial: str) -> list[Doc]:
        """The retained reports of a device, oldest first (tickets attach these as evidence)."""
        self.device(serial)
        found = []
        for key, _ in self._retained.get(serial, ()):
            report = self._store.get(REPORTS, key)
            if report is not None:
                found.append(report)
        return found

    async def move_device(self, serial: str, site_id: str) -> Doc:
        """Assign a device (and the cameras hanging off it at its site) to another site."""
        doc = self.device(serial)
        if self._store.get(SITES, site_id) is None:
            raise UnknownSite(site_id)
        now = self._clock()
        moved = {serial: {**doc, "site_id": site_id}}
        for other_serial in self._index.cameras.get(serial, ()):
            other = self._store.get(DEVICES, other_serial)
            # A camera another site's agent reports stays at that site: no admin action on
            # one site's device moves what another site holds.
            if other is not None and other["site_id"] == doc["site_id"]:
                moved[other_serial] = {**other, "site_id": site_id}
        events: list[Event] = [
            DeviceMoved(at=now, site_id=site_id, serial=moved_serial, from_site=old["site_id"])
            for moved_serial, old in ((s, self.device(s)) for s in moved)
            if old["site_id"] != site_id
        ]
        puts, deletes = self._bus.record(events)
        seq = self._store.apply({DEVICES: moved, **puts}, deletes)
        for moved_doc in moved.values():
            self._index.put(moved_doc)
        await self._store.wait_durable(seq)
        self._bus.dispatch(events)
        return device_summary(self._with_latest(moved[serial]))

    async def set_room(self, serial: str, room: str | None) -> Doc:
        doc = self.device(serial)
        updated = {**doc, "room": room or None}
        seq = self._store.apply({DEVICES: {serial: updated}})
        self._index.put(updated)
        await self._store.wait_durable(seq)
        return device_summary(self._with_latest(updated))

    def place(
        self,
        rooms: Mapping[str, str],
        *,
        together: Mapping[str, Mapping[str, Doc]] | None = None,
    ) -> tuple[int, list[str]]:
        """Put reported devices that have no room yet into the room ``rooms`` names (serial ->
        room); a room an admin set on the device itself is never overwritten.

        ``together``: other documents to store in the same change (the registry's), so both
        become durable or neither does. Applied, not yet durable: returns the change to wait
        for (``Store.wait_durable``) and the serials placed. Read and written with no await in
        between, so no report can slip in and be lost.
        """
        placed: dict[str, Doc] = {}
        for serial, room in rooms.items():
            device = self._store.get(DEVICES, serial)
            if room and device is not None and not device.get("room"):
                placed[serial] = {**device, "room": room}
        changes: dict[str, Mapping[str, Doc]] = dict(together or {})
        if placed:
            changes[DEVICES] = placed
        if not any(changes.values()):
            return 0, []
        seq = self._store.apply(changes)
        for doc in placed.values():
            self._index.put(doc)
        return seq, sorted(placed)

    # -- ingestion ---------------------------------------------------------------------------

    async def ingest(
        self, agent: Principal, batch: ReportBatch, *, raw: bytes | None = None
    ) -> ReportBatchAck:
        """Store a batch: all of it or (403) none of it; returns once it is durable.

        ``raw``: the request body the batch was validated from, read again for the reports'
        JSON form where it already is in that form (``reports_json``).
        """
        async with self.turn():
            staged = self.stage(agent, batch, raw=raw)
        del batch
        return await self.finish(staged)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One batch's work at a time (its validation too), and one per pass of the event loop.

        The batches of many agents arrive together. Staged back to back they would hold the
        loop until the last was done, and the store's writer, whose answers from its database
        wait meanwhile, would commit none of them before: on PostgreSQL the whole round's
        commit came after all of its work, instead of alongside it on the other core. Keeping
        the turn through one more pass of the loop lets the writer (and other I/O) go between
        two batches.
        """
        async with self._turn:
            yield
            await asyncio.sleep(0)

    def stage(
        self, agent: Principal, batch: ReportBatch, *, raw: bytes | None = None
    ) -> StagedBatch:
        """Plan a batch and apply the plan (not yet durable): ``ingest`` without its wait."""
        started = time.perf_counter()
        assert agent.site_id is not None and agent.agent_id is not None
        site_id = agent.site_id
        agent_id = agent.agent_id
        now = self._clock()
        # Reported text is marked where it enters: none of it reaches a store unchecked.
        marked_notices = [(notice, reported.marked(notice.detail)) for notice in batch.notices]
        marked_characters = sum(found for _, (_, found) in marked_notices)
        notices: list[Event] = [
            AgentNoticeReceived(
                at=now,
                site_id=site_id,
                agent_id=agent_id,
                notice=notice.kind,
                detail=detail,
                count=notice.count,
            )
            for notice, (detail, _) in marked_notices
        ]
        # The reports in their JSON form, as stored: from the body where an agent wrote them
        # so, else one serializer call for the whole batch. From here on only that form is
        # read, and the models go at once (a batch holds thousands of objects that the
        # collector would otherwise walk again and again).
        plain_reports: list[Doc] = (
            batch.model_dump(mode="json")["reports"] if raw is None else reports_json(raw, batch)
        )
        if raw is None or reported.may_hold_unprintable(raw):
            for plain in plain_reports:
                marked_characters += reported.mark_snapshot(plain["snapshot"])
        status = batch.agent
        if status is not None:
            status, found = reported.mark_model(status)
            marked_characters += found
        del batch
        plan = plan_batch(
            plain_reports,
            site_id=site_id,
            agent_id=agent_id,
            known=self._known(agent_id),
            rules=self._rules,
            now=now,
        )
        if plan.foreign:
            self.stats.refused_batches += 1
            raise DeviceAtOtherSite(site_id, plan.foreign)
        events = self._apply(plan, site_id, agent_id, status, notices, now)
        return StagedBatch(
            started=started,
            now=now,
            site_id=site_id,
            agent_id=agent_id,
            accepted=len(plan.accepted),
            duplicates=plan.duplicates,
            superseded=plan.superseded,
            events=events,
            accepted_documents=plan.accepted,
            refused=plan.refused,
            marked_characters=marked_characters,
        )

    def _known(self, agent_id: str) -> KnownState:
        """What a batch of ``agent_id`` is planned against."""
        store = self._store
        agent = store.get(AGENTS, agent_id)
        remembered = self._left.get(agent_id)
        return KnownState(
            # Live read-only views: nothing awaits from planning to the one ``apply``, and
            # nothing outside this call changes the store before it.
            devices=store.scan(DEVICES),
            report_keys=store.scan(REPORTS),
            left_ids=_NO_IDS if remembered is None else remembered.ids,
            retained=self._retained,
            agent_clock=None if agent is None else (agent.get("clock") or {}).get("state", "ok"),
        )

    def _apply(
        self,
        plan: IngestPlan,
        site_id: str,
        agent_id: str,
        status: AgentStatus | None,
        notices: list[Event],
        now: datetime,
    ) -> list[Event]:
        """Apply an accepted batch's plan (the store takes it, not yet durable): its events."""
        now_text = now.isoformat()
        self._note_call(agent_id, site_id, now)
        if status is not None:
            self._agent_status[agent_id] = {**status.model_dump(), "at": now_text}
        agent_doc = self._agent_update(agent_id, now)
        events = notices
        history: dict[str, Doc] = {}
        for news in plan.news:
            if isinstance(news, DeviceFound):
                events.append(
                    DeviceAdded(at=now, site_id=site_id, serial=news.serial, model=news.model)
                )
            else:
                self._health_changed(site_id, news, now, events, history)
        if plan.clock is not None:
            clock = self._clock_changed(agent_id, site_id, plan.clock, now, events)
            agent_doc = {**(agent_doc or self._store.get(AGENTS, agent_id) or {}), **clock}
        event_puts, event_deletes = self._bus.record(events)
        puts: dict[str, dict[str, Doc]] = {
            DEVICES: plan.new_devices,
            REPORTS: plan.reports,
            HEALTH_HISTORY: history,
            **event_puts,
        }
        if agent_doc:
            puts[AGENTS] = {agent_id: agent_doc}
        receipts, expired = self._receipts(agent_id, plan.gone)
        if receipts:
            puts[REPORT_RECEIPTS] = {key: {"ids": ids} for key, ids in receipts}
        # Every document here was built for this change (the plan's reports and new devices,
        # history, events, receipts): handed over to the store, not copied.
        self._store.apply(
            puts,
            {REPORTS: plan.dropped, REPORT_RECEIPTS: expired, **event_deletes},
            {DEVICES: plan.patches},
            handover=True,
        )
        # Only now that the store took the batch (``apply`` refuses all of it or nothing).
        self._retained.update(plan.retained)
        self._latest.update(plan.latest)
        index = self._index
        for device_doc in plan.new_devices.values():
            index.put(device_doc)
        for serial, changed in plan.patches.items():
            if not _INDEXED_FIELDS.isdisjoint(changed):
                patched = self._store.get(DEVICES, serial)
                if patched is not None:
                    index.put(patched)
        self._remember(receipts)
        return events

    async def finish(self, staged: StagedBatch) -> ReportBatchAck:
        """Wait until a staged batch is durable, then count it and tell the listeners."""
        # Also covers resends of reports still in flight from an earlier request.
        await self._store.sync()
        self.stats.accepted += staged.accepted
        self.stats.duplicates += staged.duplicates
        self.stats.superseded += staged.superseded
        self.stats.refused_reports.update(refusal.code for refusal in staged.refused)
        self.stats.marked_characters += staged.marked_characters
        elapsed = time.perf_counter() - staged.started
        for observer in self.stats.observers:
            observer(elapsed)
        self._bus.dispatch(staged.events)
        if staged.accepted_documents:
            self._bus.dispatch(
                self._ingested(
                    staged.now, staged.site_id, staged.agent_id, staged.accepted_documents
                )
            )
        return ReportBatchAck(
            accepted=staged.accepted,
            duplicates=staged.duplicates,
            refused=[RefusedReport.model_validate(r.to_json()) for r in staged.refused],
        )

    def _clock_changed(
        self, agent_id: str, site_id: str, change: ClockChange, now: datetime, events: list[Event]
    ) -> Doc:
        """The agent's new ``clock`` field; the change logged and as an event."""
        state, skew = change.state, change.skew_s
        log.warning(
            "agent %s of site %s: clock %s%s",
            agent_id,
            site_id,
            state,
            f" by {skew:.0f} s; its report times are replaced by receive times" if skew else "",
        )
        events.append(
            AgentClockChanged(at=now, site_id=site_id, agent_id=agent_id, state=state, skew_s=skew)
        )
        return {"clock": {"state": state, "skew_s": skew, "since": now.isoformat()}}

    def _receipts(
        self, agent_id: str, ids: list[str]
    ) -> tuple[list[tuple[str, list[str]]], list[str]]:
        """For the ids of an agent's reports leaving the retained history with their batch:
        the new receipt (key, ids), and the keys of its receipts beyond ``REMEMBERED_IDS``."""
        if not ids:
            return [], []
        self._receipt_number += 1
        receipt = (f"{agent_id}/{self._receipt_number:012d}", ids)
        remembered = self._left.get(agent_id)
        expired = [] if remembered is None else remembered.beyond(REMEMBERED_IDS - len(ids))
        return [receipt], expired

    def _remember(self, receipts: list[tuple[str, list[str]]]) -> None:
        for key, ids in receipts:
            agent_id = key.rpartition("/")[0]
            remembered = self._left.setdefault(agent_id, _LeftIds())
            remembered.forget(len(remembered.beyond(REMEMBERED_IDS - len(ids))))
            remembered.add(key, ids)

    def _ingested(
        self, now: datetime, site_id: str, agent_id: str, documents: list[Doc]
    ) -> list[Event]:
        """The batch's ingest event, and one per report only when a subscriber asks for those."""
        ingested: list[Event] = []
        if self._bus.wants(SnapshotIngested):
            # Models again, only for such a subscriber: ingestion itself lets them go early.
            ingested.extend(
                SnapshotIngested(
                    at=now,
                    site_id=site_id,
                    serial=document["serial"],
                    snapshot=Snapshot.model_validate(document["snapshot"]),
                    report_id=document["id"],
                    agent_id=agent_id,
                )
                for document in documents
            )
        if self._bus.wants(SnapshotsIngested):
            ingested.append(
                SnapshotsIngested(
                    at=now, site_id=site_id, agent_id=agent_id, documents=tuple(documents)
                )
            )
        return ingested

    def _health_changed(
        self,
        site_id: str,
        change: HealthChange,
        now: datetime,
        events: list[Event],
        history: dict[str, Doc],
    ) -> None:
        """Record a change of health in history and as an event."""
        new = change.new
        self._record_change(change.serial, {"at": change.at, **new}, history)
        events.append(
            HealthChanged(
                at=now,
                site_id=site_id,
                serial=change.serial,
                old=None if change.old is None else HealthState(change.old["state"]),
                new=HealthState(new["state"]),
                problems=tuple(new["problems"]),
            )
        )

    # -- reachability ------------------------------------------------------------------------

    def note_agent_call(self, principal: Principal) -> None:
        """An agent called in (jobs poll = heartbeat); may bring its site back online."""
        assert principal.agent_id is not None and principal.site_id is not None
        now = self._clock()
        self._note_call(principal.agent_id, principal.site_id, now)
        doc = self._agent_update(principal.agent_id, now)
        if doc is not None:
            self._store.apply({AGENTS: {principal.agent_id: doc}})

    def _note_call(self, agent_id: str, site_id: str, now: datetime) -> None:
        self._agent_calls[agent_id] = now
        liveness = self._sites.setdefault(
            site_id, _SiteLiveness(online=None, last_call=now, watched_since=now)
        )
        liveness.last_call = max(liveness.last_call, now)
        if liveness.online is not True:
            was_offline = liveness.online is False
            liveness.online = True
            # Back from silence: its devices get a whole silence period to be mentioned again.
            liveness.watched_since = now
            site = self._store.get(SITES, site_id)
            events: list[Event] = (
                [AgentOnline(at=now, site_id=site_id, agent_id=agent_id)] if was_offline else []
            )
            puts, deletes = self._bus.record(events)
            changes: dict[str, dict[str, Doc]] = dict(puts)
            if site is not None:
                changes[SITES] = {site_id: {**site, "agent_online": True}}
            self._store.apply(changes, deletes)
            self._bus.dispatch(events)

    def _agent_update(self, agent_id: str, now: datetime) -> Doc | None:
        """The agent document with a fresh ``last_seen`` (and status), if worth a write."""
        doc = self._store.get(AGENTS, agent_id)
        if doc is None:
            return None
        last = datetime.fromisoformat(doc["last_seen"])
        if now - last < self._persist_every:
            return None
        updated = {**doc, "last_seen": now.isoformat()}
        status = self._agent_status.get(agent_id)
        if status is not None:
            updated["status"] = status
        return updated

    def agent_status(self, agent_id: str) -> Doc | None:
        """What the agent last said about itself: ``{version, outbox_reports, held_reports,
        at}`` (kept in memory, stored with its ``last_seen``), or None when it never said."""
        found = self._agent_status.get(agent_id)
        if found is not None:
            return found
        doc = self._store.get(AGENTS, agent_id)
        stored = None if doc is None else doc.get("status")
        return stored if isinstance(stored, dict) else None

    def agent_last_call(self, agent_id: str) -> datetime | None:
        return self._agent_calls.get(agent_id)

    def site_online(self, site_id: str) -> bool | None:
        liveness = self._sites.get(site_id)
        return None if liveness is None else liveness.online

    async def check_liveness(self) -> list[Event]:
        """Mark silent sites ``agent offline`` and silent devices ``unreachable``; durable."""
        now = self._clock()
        events: list[Event] = []
        sites: dict[str, Doc] = {}
        for site_id, liveness in self._sites.items():
            if liveness.online and now - liveness.last_call > self._silence:
                liveness.online = False
                site = self._store.get(SITES, site_id)
                if site is not None:
                    sites[site_id] = {**site, "agent_online": False}
                # One event for the site; its devices are not judged while nobody watches them.
                events.append(AgentOffline(at=now, site_id=site_id, last_seen=liveness.last_call))
        devices: dict[str, Doc] = {}
        history: dict[str, Doc] = {}
        baseline = now - self._silence
        latest = self._latest
        for serial, doc in self._store.scan(DEVICES).items():
            watch = self._sites.get(doc["site_id"])
            if doc.get("unreachable_since") or (watch is not None and watch.online is False):
                continue
            seen = latest.get(serial)
            if seen is None:
                continue  # no report retained: nothing says when it was last heard from
            last_seen = datetime.fromisoformat(seen[0])
            watched_since = watch.watched_since if watch is not None else self._started_at
            if max(last_seen, self._started_at, watched_since) >= baseline:
                continue
            devices[serial] = self._mark_unreachable(doc, now, last_seen, events, history)
        if events:
            puts, deletes = self._bus.record(events)
            changes: dict[str, dict[str, Doc]] = {
                DEVICES: devices,
                SITES: sites,
                HEALTH_HISTORY: history,
                **puts,
            }
            await self._store.wait_durable(self._store.apply(changes, deletes))
            self._bus.dispatch(events)
        return events

    def _mark_unreachable(
        self,
        doc: Doc,
        now: datetime,
        last_seen: datetime,
        events: list[Event],
        history: dict[str, Doc],
    ) -> Doc:
        silent_s = int((now - last_seen).total_seconds())
        problem = Problem(code=ProblemCode.UNREACHABLE, detail=f"no report for {silent_s} s")
        problem_doc: Doc = problem.model_dump(mode="json")
        health: Doc = {"state": HealthState.UNREACHABLE.value, "problems": [problem_doc]}
        serial, site_id = doc["serial"], doc["site_id"]
        events.append(
            DeviceUnreachable(at=now, site_id=site_id, serial=serial, last_seen=last_seen)
        )
        change = HealthChange(serial=serial, old=doc.get("health"), new=health, at=now.isoformat())
        self._health_changed(site_id, change, now, events, history)
        return {
            **doc,
            "health": health,
            "unreachable_since": now.isoformat(),
        }


def device_summary(doc: Doc) -> Doc:
    """A device as ``GET /api/v1/devices`` lists it."""
    firmware = doc.get("firmware") or {"version": "", "build": ""}
    health = doc.get("health") or {"state": HealthState.UNREACHABLE.value, "problems": []}
    return {
        "serial": doc["serial"],
        "model": doc.get("model", Model.UNKNOWN.value),
        "provider": doc.get("provider", Provider.UNKNOWN.value),
        "firmware": {"version": firmware.get("version", ""), "build": firmware.get("build", "")},
        "health": {"state": health["state"], "problems": list(health.get("problems", []))},
        "site": doc["site_id"],
        "room": doc.get("room"),
        "system_name": doc.get("system_name", ""),
        "host_serial": doc.get("host_serial"),
        "last_seen": doc.get("last_seen"),
    }


def site_summary(site: Doc, devices: int, agents: int) -> Doc:
    contact, address = site_contact(site), site_address(site)
    return {
        "id": site["id"],
        "name": site.get("name", site["id"]),
        "timezone": site.get("timezone", "UTC"),
        "agent_online": site.get("agent_online"),
        "agents": agents,
        "devices": devices,
        "contact": None if contact is None else contact.model_dump(),
        "delivery_address": None if address is None else address.model_dump(),
        "admin_networks": list(site.get("admin_networks") or []),
        # What a ticket of this site would be held for (W2, RMA): filled here once for all.
        "ticket_fields_missing": (contact or SiteContact()).missing()
        + (address or DeliveryAddress()).missing(),
    }
