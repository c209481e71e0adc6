"""Firmware rollouts with side effects: stored plans, admin controls and what dashboards read.

Documents:

- ``rollouts`` (key = id): ``{id, name, target, status, created_at, created_by, request,
  start, window, wave_gap, hop_length, max_failures, abort_criteria, per_site, canary,
  waves, summary, halt, history: [{at, action, by, detail}], started_at, finished_at}``.
  ``status`` moves as ``ROLLOUT_MOVES`` allows: ``planned`` -> ``running`` <-> ``paused``;
  ``running`` -> ``halted`` (circuit breaker) -> ``running`` (resume); any but ``done`` ->
  ``aborted``; ``running`` -> ``done``. ``abort_criteria`` are kept from the plan on; a
  rollout stored before them reads the defaults with its ``max_failures``. ``summary`` as
  stored is the plan's; what is read is counted from the entries as they are now.
- ``rollout_devices`` (key = ``<id>:<serial>``): one device's plan entry (the planner's
  JSON) plus what running it changes: ``status`` (moving only as ``DEVICE_MOVES`` allows),
  ``hop_index``, ``attempts``, ``failures`` (``[{at, hop, check, detail, job_id, code?}]``:
  ``code`` is the agent's failure code, which decides what the failure means; ``check``
  is the detail's first word, shown), ``job_id``, ``evidence``, ``window`` (moved on when
  the hop no longer fits in it), ``booked`` (``{start, end}`` of the meeting that put it
  off), ``not_before`` (a free slot later in its window), ``calendar`` (what its room
  calendar said when it was ordered), ``saved_settings`` (the unit's own update settings,
  as its agent saved them), ``answered_at`` and ``reassigned_at`` (a unit back on the new
  version while its job's agent is silent).
- ``penalty_box`` (key = serial): ``{serial, rollout_id, reason, at}``: a device that
  failed twice; no rollout retries it until an admin releases it.

Every change is a stored document first and an action second, so a restart resumes.
Whenever a hop gets a new install moment (its window passed, its room was booked, a later
hop, a refusal), it is judged again for entitlement at that moment (S4): a unit that lost
it is held ``not_entitled``; one whose contract starts later waits for its first window.
The service is the only writer of ``rollouts`` and ``rollout_devices``: it keeps where
each rollout's entries are, their counts, each serial's rollouts and the rollouts the
runner moves in memory (read once at first use, kept current by its own writes), so neither
a runner tick nor a page reads the whole of ``rollout_devices``.
Read functions (``rollouts``, ``rollout``, ``progress``, ``penalty_box``) return the API's
JSON shapes; the API, the dashboard and the CLI reach them, and the admin actions, through
the use cases of ``controller.features.rollouts``. Refusals are part of the controller's
tree (``controller.errors``): ``UnknownRollout``, ``UnknownAction`` and ``NotInPenaltyBox``
(404), ``RolloutConflict`` and ``IllegalMove`` (409), ``PlanError`` (422 ``invalid_plan``).

Updates ordered and ended are told to ``watchers`` (``UpdateWatcher``), after they are
stored: what else the controller does about a unit being updated hooks in there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain import admin_input
from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.calendar import moment_text
from polyfleet.controller.domain.faults import FaultEvent, FaultEventKind
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.domain.rollout import (
    ADMIN_ACTIONS,
    DEFAULT_MAX_FAILURES,
    DEFAULT_PER_SITE,
    DEFAULT_WAVE_GAP,
    DEFAULT_WAVES,
    DEFAULT_WINDOW,
    DEVICE_STATUSES,
    FINAL_STATUSES,
    MIN_WAVE_GAP,
    REASON_CODES,
    ROLLOUT_NAME_MAX_CHARS,
    UNDER_WAY,
    WAITING,
    Covering,
    DeviceStatus,
    IllegalMove,
    Night,
    PlanDevice,
    PlanError,
    PlanRequest,
    RolloutStatus,
    Window,
    breaker,
    check_text,
    covering,
    detail_text,
    device_move,
    entry_night,
    failure_rule,
    installed_text,
    judge_moment,
    not_entitled_now,
    parse_abort_criteria,
    parse_gap,
    parse_waves,
    penalty_due,
    place_entitled,
    plan_rollout,
    plan_summary,
    rollout_move,
    stored_abort_criteria,
)
from polyfleet.controller.domain.rollout import (
    ROLLOUT_STATUSES as ROLLOUT_STATUSES,  # the API and CLI find it here
)
from polyfleet.controller.domain.rollout_windows import (
    DEFAULT_HOP_LENGTH,
    Busy,
    first_clash,
    free_slot,
)
from polyfleet.controller.errors import Conflict, NotFound
from polyfleet.controller.events import EventBus, RolloutChanged
from polyfleet.controller.services.entitlement import Catalogues, Registry
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.services.jobs import JobPending, JobService
from polyfleet.controller.services.packages import PackageService
from polyfleet.controller.services.room_calendars import RoomCalendars
from polyfleet.controller.services.ticket_service import UPDATE_FAILED, TicketIndex
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.schema import FailureCode, JobKind, JobProgress
from polyfleet.shared.version import FirmwareVersion, VersionError

log = logging.getLogger(__name__)

#: Files a ticket through the ticket service's normal path (a bricked unit).
TicketFiler = Callable[[FaultEvent], Awaitable[None]]
#: The fault a unit that did not come back from its update is ticketed for.
UPDATE_FAULT = UPDATE_FAILED
#: How long after its window a unit's update maintenance lasts: a unit ordered late in the
#: window reboots and is verified after it.
UPDATE_GRACE = timedelta(minutes=30)


class UpdateMaintenance(Protocol):
    """Puts units into maintenance for their update (``services.maintenance``)."""

    async def open_for_update(
        self, serial: str, *, rollout: str, version: str, starts: datetime, ends: datetime
    ) -> object: ...

    async def end_for_update(self, serial: str, *, rollout: str) -> None: ...


ROLLOUTS = "rollouts"
ROLLOUT_DEVICES = "rollout_devices"
PENALTY_BOX = "penalty_box"

#: Device statuses, for metrics.
DEVICE_STATUS_NAMES = DEVICE_STATUSES
#: Which admin action is allowed from which status, and where it leads.
TRANSITIONS = ADMIN_ACTIONS
#: Device statuses of an update under way: pause and abort let these finish.
IN_PROGRESS = UNDER_WAY
#: Rollouts the runner moves on: results still come in after a pause, a halt or an abort.
_TICKED = frozenset(
    {RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTED, RolloutStatus.ABORTED}
)
#: Rollouts whose devices ``/metrics`` counts.
_LIVE = frozenset(
    {RolloutStatus.PLANNED, RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTED}
)
#: A unit answering on its hop's version this long while its job's agent says nothing of
#: the job: the job is handed out again (far sooner than the job lease).
DEFAULT_REASSIGN_AFTER = timedelta(seconds=60)


class UnknownRollout(NotFound, KeyError):
    """No rollout has this id (404 ``not_found``)."""

    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout {rollout_id!r} (see `polyfleet controller rollout list`)")
        self.rollout_id = rollout_id


class UnknownAction(NotFound):
    """An admin action that is none of start, pause, resume and abort (404 ``not_found``)."""

    def __init__(self, action: str) -> None:
        super().__init__(f"no action {action!r}: {', '.join(TRANSITIONS)}")
        self.action = action


class RolloutConflict(Conflict):
    """An action the rollout's status does not allow (e.g. resume a running rollout), or a
    start without a package it needs (409 ``conflict``)."""


class NotInPenaltyBox(NotFound):
    """A release from the penalty box of a device that is not in it (404 ``not_found``)."""

    def __init__(self, serial: str) -> None:
        super().__init__(f"{serial} is not in the penalty box")
        self.serial = serial


@dataclasses.dataclass(frozen=True, kw_only=True)
class HopUpdate:
    """One hop of a rollout on one unit, by the job that carries it."""

    rollout_id: str
    serial: str
    site: str
    job_id: str
    version: str
    #: Which hop of how many (1-based).
    hop: int
    hops: int
    at: datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateOrdered(HopUpdate):
    """A hop ordered on a unit: it is being updated from ``at`` on."""

    #: When the hop should be over (``at`` + the plan's hop length), and its window's end.
    expected_end: datetime
    window_end: datetime


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateEnded(HopUpdate):
    """A hop's job is over: ``verified`` (the unit is on the version, checked), ``failed``
    (``code`` says how), or ``not_started`` (refused: nothing was done to the unit)."""

    outcome: Literal["verified", "failed", "not_started"]
    code: str | None
    detail: str


class UpdateWatcher(Protocol):
    """Told of every update a rollout orders and of how it ended (after both are stored)."""

    async def update_ordered(self, update: UpdateOrdered) -> None: ...

    async def update_ended(self, update: UpdateEnded) -> None: ...


def device_key(rollout_id: str, serial: str) -> str:
    return f"{rollout_id}:{serial}"


def _reason_codes(doc: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(reason["code"]) for reason in doc.get("reasons") or ())


class _Where:
    """Where the rollouts' entries are, how many are in each status and held for each
    reason, and which rollouts the runner moves on."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}
        self._sorted: dict[str, list[str]] = {}
        self._rollouts_of: dict[str, list[str]] = {}
        self._states: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
        self._statuses: dict[str, Counter[str]] = {}
        self._reasons: dict[str, Counter[str]] = {}
        #: Rollouts a tick looks at (running, paused, halted, aborted with jobs out).
        self.ticked: set[str] = set()

    def put(self, rollout_id: str, doc: Mapping[str, Any]) -> None:
        serial = str(doc["serial"])
        members = self._members.setdefault(rollout_id, set())
        if serial not in members:
            members.add(serial)
            self._sorted.pop(rollout_id, None)
            self._rollouts_of.setdefault(serial, []).append(rollout_id)
        statuses = self._statuses.setdefault(rollout_id, Counter())
        reasons = self._reasons.setdefault(rollout_id, Counter())
        old = self._states.get((rollout_id, serial))
        if old is not None:
            statuses[old[0]] -= 1
            reasons.subtract(old[1])
        new = (str(doc["status"]), _reason_codes(doc))
        statuses[new[0]] += 1
        reasons.update(new[1])
        self._states[(rollout_id, serial)] = new

    def note(self, rollout_id: str, status: str) -> None:
        if status in _TICKED:
            self.ticked.add(rollout_id)
        else:
            self.ticked.discard(rollout_id)

    def serials(self, rollout_id: str) -> list[str]:
        """The rollout's serials, sorted (read-only)."""
        found = self._sorted.get(rollout_id)
        if found is None:
            found = self._sorted[rollout_id] = sorted(self._members.get(rollout_id, ()))
        return found

    def rollouts_of(self, serial: str) -> list[str]:
        return list(self._rollouts_of.get(serial, ()))

    def summary(self, rollout_id: str) -> dict[str, Any]:
        """The counts ``plan_summary`` gives for the rollout's entries as they are now."""
        statuses = self._statuses.get(rollout_id, Counter())
        reasons = self._reasons.get(rollout_id, Counter())
        return {
            "devices": len(self._members.get(rollout_id, ())),
            "by_status": {s: n for s, n in sorted(statuses.items()) if n > 0},
            "by_reason": {code: reasons[code] for code in REASON_CODES if reasons[code] > 0},
        }


def plan_devices(
    fleet: Mapping[str, Doc], penalty_box: Mapping[str, Doc], tickets: Mapping[str, Sequence[str]]
) -> list[PlanDevice]:
    """Every reported device (``fleet``: serial -> stored device) as the planner sees it, with
    open tickets (``tickets``: serial -> ids of its tickets not closed) and penalties."""
    penalties = {
        serial: f"failed twice in rollout {doc['rollout_id']}: {doc['reason']}"
        for serial, doc in list(penalty_box.items())
    }
    devices: list[PlanDevice] = []
    for serial, doc in list(fleet.items()):
        firmware = doc.get("firmware") or {}
        health = doc.get("health") or {}
        devices.append(
            PlanDevice(
                serial=serial,
                site=str(doc.get("site_id") or ""),
                model=str(doc.get("model") or "unknown"),
                provider=str(doc.get("provider") or "unknown"),
                room=str(doc.get("room") or ""),
                version=str(firmware.get("version") or ""),
                build=str(firmware.get("build") or ""),
                health=str(health.get("state") or "unreachable"),
                problems=tuple(str(p.get("code")) for p in health.get("problems") or ()),
                host_serial=doc.get("host_serial"),
                open_tickets=tuple(sorted(tickets.get(serial, ()))),
                penalty=penalties.get(serial),
            )
        )
    return devices


def progress_of(entries: Iterable[Mapping[str, Any]], waves: int) -> dict[str, Any]:
    """Counts per device status, overall and per wave."""
    overall: Counter[str] = Counter()
    per_wave: list[Counter[str]] = [Counter() for _ in range(waves)]
    for entry in entries:
        overall[entry["status"]] += 1
        wave = entry.get("wave")
        if isinstance(wave, int) and 0 <= wave < waves:
            per_wave[wave][entry["status"]] += 1

    def ordered(counter: Counter[str]) -> dict[str, int]:
        return {status: counter[status] for status in DEVICE_STATUSES if counter[status]}

    return {
        "by_status": ordered(overall),
        "waves": [{"index": index, "by_status": ordered(c)} for index, c in enumerate(per_wave)],
    }


def _meeting_json(meeting: Busy, zone: ZoneInfo) -> dict[str, str]:
    return {
        "start": meeting[0].astimezone(zone).isoformat(),
        "end": meeting[1].astimezone(zone).isoformat(),
    }


class RolloutService:
    """Plans, stores and controls rollouts; ``tick`` moves running ones on (the runner)."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Clock,
        *,
        inventory: Inventory,
        registry: Registry,
        jobs: JobService,
        packages: PackageService,
        file_ticket: TicketFiler | None = None,
        tickets: TicketIndex | None = None,
        catalogues: Catalogues | None = None,
        calendars: RoomCalendars | None = None,
        min_wave_gap: timedelta = MIN_WAVE_GAP,
        reassign_after: timedelta = DEFAULT_REASSIGN_AFTER,
        maintenance: UpdateMaintenance | None = None,
    ) -> None:
        self._store = store
        #: Units being updated are in maintenance: their reboot opens no fault ticket.
        self._maintenance = maintenance
        #: Open tickets by device, which hold a device back from a plan.
        self._tickets = tickets if tickets is not None else TicketIndex()
        self._bus = bus
        self._clock = clock
        self._inventory = inventory
        self._registry = registry
        self._jobs = jobs
        self._packages = packages
        self._catalogues = catalogues
        self._calendars = calendars
        self.min_wave_gap = min_wave_gap
        self.reassign_after = reassign_after
        self.file_ticket = file_ticket
        #: Told of every halt (the audit log records it), after it is stored.
        self.on_halt: Callable[[str, str], Awaitable[None]] | None = None
        #: Told of every update ordered and ended, after it is stored.
        self.watchers: list[UpdateWatcher] = []
        self._covers: dict[str, tuple[Asset | None, PlanCatalogue, Covering]] = {}
        #: Built from the store at first use (it is open by then), then kept by ``_apply``.
        self._known: _Where | None = None

    # -- the service's writes and what it knows of them --------------------------------------

    def _where(self) -> _Where:
        if self._known is None:
            where = _Where()
            for key, doc in list(self._store.scan(ROLLOUT_DEVICES).items()):
                where.put(str(doc.get("rollout_id") or key.split(":", 1)[0]), doc)
            for rollout_id, doc in list(self._store.scan(ROLLOUTS).items()):
                where.note(rollout_id, str(doc["status"]))
            self._known = where
        return self._known

    def _apply(
        self,
        changes: Mapping[str, Mapping[str, Doc]],
        deletes: Mapping[str, Iterable[str]] | None = None,
    ) -> int:
        """Every write of ``rollouts`` and ``rollout_devices``: the store, then what the
        service knows of them (in the same step: nothing runs in between)."""
        seq = self._store.apply(changes, deletes)
        where = self._where()
        for doc in changes.get(ROLLOUT_DEVICES, {}).values():
            where.put(str(doc["rollout_id"]), doc)
        for rollout_id, doc in changes.get(ROLLOUTS, {}).items():
            where.note(rollout_id, str(doc["status"]))
        return seq

    def _moved(self, entry: Doc, to: DeviceStatus, now: datetime, **changes: Any) -> Doc:
        """Every change of a device entry's status, as a new document with ``changes``.

        The move must be in ``DEVICE_MOVES``; any other is a bug, logged and refused with
        IllegalMove, and nothing is stored (the entry keeps its status).
        """
        subject = f"rollout {entry.get('rollout_id')}, device {entry.get('serial')}"
        try:
            device_move(subject, str(entry["status"]), to)
        except IllegalMove as exc:
            log.error("status change refused: %s", exc)
            raise
        return {**entry, **changes, "status": to.value, "updated_at": now.isoformat()}

    # -- planning --------------------------------------------------------------------------

    def preview(
        self,
        request: PlanRequest,
        *,
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
    ) -> dict[str, Any]:
        """The plan ``request`` gives now, not stored (PlanError names a bad request)."""
        devices = plan_devices(
            self._inventory.fleet(),
            self._store.scan(PENALTY_BOX),
            self._tickets.active_by_serial(),
        )
        plan = plan_rollout(
            dataclasses.replace(request, min_wave_gap=self.min_wave_gap),
            devices,
            site_zones=self._inventory.site_zones(),
            assets=self._registry.by_serial(),
            plans=plans,
            releases=releases,
            now=self._clock(),
            calendars=self._calendars.known() if self._calendars is not None else None,
        )
        return plan.to_json()

    async def plan(
        self,
        request: PlanRequest,
        *,
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
        created_by: str = "",
    ) -> dict[str, Any]:
        """Compute and store a plan; it starts only when an admin starts it."""
        computed = self.preview(request, plans=plans, releases=releases)
        now = self._clock()
        rollout_id = "r_" + now.strftime("%Y%m%d") + "_" + secrets.token_hex(3)
        devices = computed.pop("devices")
        header: Doc = {
            "id": rollout_id,
            **computed,
            "name": request.name or f"{computed['target']} from {computed['start']}",
            "status": "planned",
            "created_at": now.isoformat(),
            "created_by": created_by,
            "started_at": None,
            "finished_at": None,
            "halt": None,
            "history": [],
        }
        docs = {
            device_key(rollout_id, entry["serial"]): {
                **entry,
                "rollout_id": rollout_id,
                "planned_status": entry["status"],
                "hop_index": 0,
                "attempts": 0,
                "failures": [],
                "job_id": None,
                "evidence": [],
                "updated_at": now.isoformat(),
            }
            for entry in devices
        }
        await self._store.wait_durable(
            self._apply({ROLLOUTS: {rollout_id: header}, ROLLOUT_DEVICES: docs})
        )
        return self.rollout(rollout_id)

    # -- reading (also for dashboards) -----------------------------------------------------

    def header(self, rollout_id: str) -> Doc:
        doc = self._store.get(ROLLOUTS, rollout_id)
        if doc is None:
            raise UnknownRollout(rollout_id)
        return doc

    def rollouts(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Every rollout without its device list, newest first."""
        docs = [
            doc
            for doc in list(self._store.scan(ROLLOUTS).values())
            if status is None or doc["status"] == status
        ]
        docs.sort(key=lambda doc: str(doc["created_at"]), reverse=True)
        return [self._summary(doc) for doc in docs]

    def _summary(self, doc: Doc) -> dict[str, Any]:
        found = {
            key: doc.get(key)
            for key in (
                "id",
                "name",
                "target",
                "status",
                "created_at",
                "created_by",
                "started_at",
                "finished_at",
                "start",
                "window",
                "summary",
                "halt",
            )
        }
        # Counted from the entries as they are: the plan's counts change as it runs.
        found["summary"] = self._where().summary(str(doc["id"]))
        return found

    def entries(self, rollout_id: str) -> list[Doc]:
        """The rollout's device entries, by serial."""
        found = []
        for serial in self._where().serials(rollout_id):
            doc = self._store.get(ROLLOUT_DEVICES, device_key(rollout_id, serial))
            if doc is not None:
                found.append(doc)
        return found

    def _installed_now(self, serial: str) -> str | None:
        """The version the unit reports now (None: it never reported one)."""
        device = self._inventory.find_device(serial)
        if device is None:
            return None
        firmware = device.get("firmware") or {}
        version = str(firmware.get("version") or "")
        return installed_text(version, str(firmware.get("build") or "")) or None

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """The whole stored plan with each device's current state."""
        header = self.header(rollout_id)
        entries = self.entries(rollout_id)
        devices = [device_json(entry, self._installed_now(entry["serial"])) for entry in entries]
        return {
            **header,
            "summary": plan_summary(devices),
            "devices": devices,
            "progress": progress_of(entries, len(header["waves"])),
        }

    def progress(self, rollout_id: str) -> dict[str, Any]:
        """Status, counts per status and wave, halt reason: what ``rollout status`` shows."""
        header = self.header(rollout_id)
        entries = self.entries(rollout_id)
        return {
            **self._summary(header),
            "at": self._clock().isoformat(),
            "progress": progress_of(entries, len(header["waves"])),
            "waves": [
                {key: wave[key] for key in ("index", "name", "opens_at")}
                | {"devices": len(wave["devices"])}
                for wave in header["waves"]
            ],
            "active": [
                {
                    "serial": entry["serial"],
                    "status": entry["status"],
                    "wave": entry.get("wave"),
                    "hop": _current_hop(entry),
                }
                for entry in entries
                if entry["status"] in IN_PROGRESS
            ],
        }

    def device_history(self, serial: str) -> list[dict[str, Any]]:
        """Every rollout that planned ``serial``, newest first: the rollout's summary with
        the device's entry in it (``device``)."""
        found = []
        installed = self._installed_now(serial)
        for rollout_id in self._where().rollouts_of(serial):
            header = self._store.get(ROLLOUTS, rollout_id)
            entry = self._store.get(ROLLOUT_DEVICES, device_key(rollout_id, serial))
            if header is not None and entry is not None:
                found.append({**self._summary(header), "device": device_json(entry, installed)})
        found.sort(key=lambda summary: str(summary["created_at"]), reverse=True)
        return found

    def update_under_way(self, serial: str) -> dict[str, Any] | None:
        """The rollout update ordered for ``serial`` and not over yet (its job is out: the
        agent waits for the call or the meeting to end, downloads, installs or verifies),
        or None: what the device's page shows as "updating". ``{rollout_id, name, target,
        status, version, hop, hops}``; ``hop`` counts from 1."""
        for rollout_id in self._where().rollouts_of(serial):
            entry = self._store.get(ROLLOUT_DEVICES, device_key(rollout_id, serial))
            if entry is None or not entry.get("job_id") or entry["status"] in FINAL_STATUSES:
                continue
            header = self.header(rollout_id)
            return {
                "rollout_id": rollout_id,
                "name": header.get("name") or rollout_id,
                "target": header["target"],
                "status": entry["status"],
                "version": _current_hop(entry),
                "hop": int(entry.get("hop_index") or 0) + 1,
                "hops": len(entry.get("hops") or ()),
            }
        return None

    def penalty_box(self) -> list[Doc]:
        """Devices no rollout retries until released, with why."""
        return sorted(self._store.scan(PENALTY_BOX).values(), key=lambda doc: str(doc["serial"]))

    async def release_from_penalty_box(self, serial: str) -> Doc:
        """Let rollouts try ``serial`` again; the entry it had (NotInPenaltyBox: none)."""
        doc = self._store.get(PENALTY_BOX, serial)
        if doc is None:
            raise NotInPenaltyBox(serial)
        await self._store.delete(PENALTY_BOX, serial)
        return doc

    # -- admin actions ---------------------------------------------------------------------

    async def act(self, rollout_id: str, action: str, *, by: str = "") -> dict[str, Any]:
        """start, pause, resume or abort; RolloutConflict when the status does not allow it."""
        allowed = TRANSITIONS.get(action)
        if allowed is None:
            raise UnknownAction(action)
        header = self.header(rollout_id)
        status = header["status"]
        if status not in allowed:
            can = ", ".join(sorted(allowed))
            raise RolloutConflict(
                f"rollout {rollout_id} is {status}: {action} needs it to be {can}"
            )
        extra: dict[str, dict[str, Doc]] = {}
        now = self._clock()
        if action == "start":
            missing = self._missing_packages(rollout_id)
            if missing:
                raise RolloutConflict(
                    f"no firmware package for {', '.join(missing)}: add it with "
                    "`polyfleet controller releases package add VERSION FILE`"
                )
            extra[ROLLOUT_DEVICES] = {
                device_key(rollout_id, e["serial"]): self._moved(
                    e, DeviceStatus.WAITING_WINDOW, now
                )
                for e in self.entries(rollout_id)
                if e["status"] == DeviceStatus.PLANNED
            }
        if action == "abort":
            # Updates under way finish and are verified; nothing else starts (a unit with
            # more hops is skipped once its hop under way is in).
            extra[ROLLOUT_DEVICES] = {
                device_key(rollout_id, e["serial"]): self._moved(e, DeviceStatus.SKIPPED, now)
                for e in self.entries(rollout_id)
                if e["status"] in (DeviceStatus.PLANNED, *WAITING) and not e.get("job_id")
            }
        if action == "resume" and status == "halted":
            # Resuming past a halt acknowledges the failures that caused it: they no longer
            # trip the breaker (the devices keep their retries and the penalty box).
            seen = {d["serial"] for d in (header.get("halt") or {}).get("devices", [])}
            header = {
                **header,
                "acknowledged": sorted(set(header.get("acknowledged") or ()) | seen),
            }
        await self._change(header, action, by=by, extra=extra)
        return self._summary(self.header(rollout_id))

    def _missing_packages(self, rollout_id: str) -> list[str]:
        needed = {
            hop["version"]
            for e in self.entries(rollout_id)
            if e["status"] == "planned" and e["channel"] == "agent"
            for hop in e["hops"]
        }
        return sorted(v for v in needed if self._packages.find(v) is None)

    async def _change(
        self,
        header: Doc,
        action: str,
        *,
        by: str = "",
        detail: str = "",
        halt: dict[str, Any] | None = None,
        extra: Mapping[str, Mapping[str, Doc]] | None = None,
    ) -> None:
        """Store a rollout's new status with its history and event in one change.

        Where ``action`` leads is ``ROLLOUT_MOVES``'; a move it does not list is a bug,
        logged and refused with IllegalMove before anything is stored.
        """
        try:
            status = rollout_move(f"rollout {header['id']}", str(header["status"]), action)
        except IllegalMove as exc:
            log.error("status change refused: %s", exc)
            raise
        now = self._clock()
        updated: Doc = {
            **header,
            "status": status.value,
            "history": [
                *header.get("history", []),
                {"at": now.isoformat(), "action": action, "by": by, "detail": detail},
            ],
        }
        if action == "start":
            updated["started_at"] = now.isoformat()
        if action == "resume":
            updated["halt"] = None
        if halt is not None:
            updated["halt"] = halt
        if status in (RolloutStatus.ABORTED, RolloutStatus.DONE):
            updated["finished_at"] = now.isoformat()
        event = RolloutChanged(
            at=now,
            rollout_id=header["id"],
            action=action,
            status=status.value,
            by=by,
            detail=detail,
        )
        puts, deletes = self._bus.record([event])
        changes: dict[str, dict[str, Doc]] = {ROLLOUTS: {header["id"]: updated}, **puts}
        for collection, docs in (extra or {}).items():
            changes.setdefault(collection, {}).update(docs)
        await self._store.wait_durable(self._apply(changes, deletes))
        self._bus.dispatch([event])

    # -- running ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Move every live rollout on: results in, halts, windows, new orders, completion.

        Each change is stored before anything acts on it: a job document and the entry
        naming it are written together, so after a crash the job either exists (and is
        followed) or was never ordered; no unit is ordered twice.
        """
        for rollout_id in sorted(self._where().ticked):
            try:
                await self._tick_one(rollout_id)
            except Exception:
                log.exception("rollout %s: tick failed", rollout_id)

    async def _tick_one(self, rollout_id: str) -> None:
        now = self._clock()
        await self._collect_results(rollout_id, now)
        header = self.header(rollout_id)
        entries = self.entries(rollout_id)
        await self._reassign_silent(header, entries, now)
        entries = self.entries(rollout_id)
        if header["status"] == RolloutStatus.ABORTED:
            if not any(e.get("job_id") for e in entries):
                # Its last update under way is in: nothing of it is left to follow.
                self._where().ticked.discard(rollout_id)
            return
        if header["status"] == RolloutStatus.RUNNING:
            acknowledged = frozenset(header.get("acknowledged") or ())
            criteria = stored_abort_criteria(header)
            for wave in range(len(header["waves"])):
                verdict = breaker(wave, entries, criteria, acknowledged)
                if verdict is not None:
                    verdict["at"] = now.isoformat()
                    await self._change(
                        header, "halt", by="circuit breaker",
                        detail=verdict["reason"], halt=verdict,
                    )  # fmt: skip
                    log.warning("rollout %s halted: %s", rollout_id, verdict["reason"])
                    if self.on_halt is not None:
                        await self.on_halt(rollout_id, str(verdict["reason"]))
                    return
            await self._track_teams(rollout_id, entries, now)
            entries = self.entries(rollout_id)
            await self._move_missed_windows(header, entries, now)
            entries = self.entries(rollout_id)
            await self._order(header, entries, now)
            entries = self.entries(rollout_id)
        if header["status"] == RolloutStatus.RUNNING and all(
            e["status"] in FINAL_STATUSES for e in entries
        ):
            await self._change(self.header(rollout_id), "finish", by="runner")

    def _zone(self, site: str) -> ZoneInfo:
        try:
            return ZoneInfo(self._inventory.site_zone(site) or "UTC")
        except (KeyError, ValueError):
            return ZoneInfo("UTC")

    async def _put_entries(self, rollout_id: str, entries: Iterable[Doc]) -> None:
        docs = {device_key(rollout_id, e["serial"]): e for e in entries}
        if docs:
            await self._store.wait_durable(self._apply({ROLLOUT_DEVICES: docs}))

    @staticmethod
    def _hop_length(header: Mapping[str, Any]) -> timedelta:
        """The plan's hop length; a rollout planned before it had none (no room needed)."""
        text = header.get("hop_length")
        return parse_gap(str(text), "hop_length") if text else timedelta(0)

    def _night(self, header: Mapping[str, Any], entry: Mapping[str, Any]) -> Night:
        """The night the entry's stored window belongs to, in its site's zone."""
        gap = header.get("wave_gap")
        return entry_night(
            Window.parse(str(header["window"])),
            parse_gap(str(gap)) if gap else DEFAULT_WAVE_GAP,
            entry.get("wave"),
            entry["window"],
            self._zone(str(entry["site"])),
        )

    def _cover(self, serial: str) -> Covering | None:
        """The unit's patch and upgrade windows now; None when this service cannot judge
        (no catalogue wired in: every moment passes)."""
        if self._catalogues is None:
            return None
        plans = self._catalogues.plans
        asset = self._registry.asset(serial)
        known = self._covers.get(serial)
        if known is not None and known[0] is asset and known[1] is plans:
            return known[2]
        found = covering(asset, plans)
        self._covers[serial] = (asset, plans, found)
        return found

    def _next_moment(
        self,
        header: Mapping[str, Any],
        entry: Doc,
        night: Night,
        now: datetime,
        status: DeviceStatus,
        why: str,
        *,
        note_code: str = "moved_to_next_window",
        **changes: Any,
    ) -> Doc:
        """The entry moved to the first window from ``night`` on in which its current hop
        fits, judged there (S4): held when it is no longer entitled, waiting for the first
        window of a contract that starts later, else ``status`` there; said in its notes."""
        index = int(changes.get("hop_index", entry.get("hop_index")) or 0)
        hop = entry["hops"][index] if index < len(entry["hops"]) else entry["hops"][-1]
        notes = [*entry.get("notes", []), *changes.pop("notes", [])]
        cover = self._cover(str(entry["serial"]))
        if cover is None:
            found: Night | None = night.first_ending_after(now)
            placement = None
        else:
            placement = place_entitled(cover, str(hop["kind"]), night, now)
            found = placement.night
        if found is None:
            assert placement is not None
            moment = max(night.first_existing().start, now)
            reason = {
                "code": "not_entitled",
                "text": not_entitled_now(hop, placement.verdict, night.local(moment)),
            }
            return self._moved(
                entry,
                DeviceStatus.HELD,
                now,
                **changes,
                reasons=[*entry.get("reasons", []), reason],
                notes=notes,
                not_before=None,
            )
        start = moment_text(found.local(found.start))
        notes.append({"code": note_code, "text": f"{detail_text(why)}; next window {start}"})
        if placement is not None and placement.waits_for_contract is not None:
            notes.append(
                {
                    "code": "waits_for_contract",
                    "text": f"its contract starts on {placement.waits_for_contract.isoformat()}: "
                    f"hop to {hop['version']} waits for the window of {start}",
                }
            )
        return self._moved(
            entry,
            status,
            now,
            **changes,
            window=found.to_json(),
            notes=notes,
            not_before=None,
        )

    async def _move_missed_windows(self, header: Doc, entries: list[Doc], now: datetime) -> None:
        """A device whose window closed before its update could start waits for its next
        one, judged there (S4)."""
        moved: list[Doc] = []
        for entry in entries:
            window = entry.get("window")
            if entry["status"] not in WAITING or not window or entry.get("job_id"):
                continue
            if entry["channel"] != "agent":
                continue
            night = self._night(header, entry)
            if now < night.end:
                continue
            moved.append(
                self._next_moment(
                    header,
                    entry,
                    night.following(),
                    now,
                    DeviceStatus(entry["status"]),
                    f"window {window['start']} passed before its update could start",
                )
            )
        await self._put_entries(header["id"], moved)

    async def _track_teams(self, rollout_id: str, entries: list[Doc], now: datetime) -> None:
        """Teams units are never ordered: done once a report shows the target, else failed."""
        header = self.header(rollout_id)
        target = FirmwareVersion.parse(header["target"])
        changed: list[Doc] = []
        for entry in entries:
            if (
                entry["channel"] != "teams_admin_center"
                or entry["status"] != DeviceStatus.WAITING_WINDOW
            ):
                continue
            device = self._inventory.find_device(entry["serial"]) or {}
            firmware = device.get("firmware") or {}
            try:
                installed = FirmwareVersion.parse(
                    str(firmware.get("version") or ""), build=firmware.get("build") or None
                )
            except VersionError:
                installed = None
            window = entry.get("window") or {}
            if installed is not None and (installed >= target or installed.same_release(target)):
                evidence = {
                    "at": now.isoformat(),
                    "kind": "teams_report",
                    "after": {"firmware": firmware, "collected_at": device.get("collected_at")},
                }
                evidence_kept = [*entry.get("evidence", []), evidence]
                changed.append(self._moved(entry, DeviceStatus.DONE, now, evidence=evidence_kept))
            elif window and datetime.fromisoformat(window["end"]) < now:
                failure = {
                    "at": now.isoformat(),
                    "hop": header["target"],
                    "check": "teams_not_delivered",
                    "detail": f"no report showed {header['target']} by {window['end']}",
                }
                failures = [*entry["failures"], failure]
                changed.append(self._moved(entry, DeviceStatus.FAILED, now, failures=failures))
        await self._put_entries(rollout_id, changed)

    def _booked(
        self,
        header: Doc,
        entry: Doc,
        night: Night,
        now: datetime,
        meeting: Busy,
        busy: Sequence[Busy],
    ) -> Doc:
        """Its room is booked at its install moment: a free slot later in its window, else its
        next window (judged there); ``postponed_booked`` with the meeting's start and end."""
        length = self._hop_length(header)
        zone = self._zone(str(entry["site"]))
        booked = _meeting_json(meeting, zone)
        slot = free_slot(night, max(now, meeting[1]), length, busy)
        if slot is not None:
            note = {
                "code": "postponed_booked",
                "text": f"room booked {moment_text(meeting[0].astimezone(zone))} to "
                f"{moment_text(meeting[1].astimezone(zone))}: waits for "
                f"{moment_text(slot.astimezone(zone))} in its window",
            }
            return self._moved(
                entry,
                DeviceStatus.POSTPONED_BOOKED,
                now,
                booked=booked,
                not_before=slot.isoformat(),
                notes=[*entry.get("notes", []), note],
            )
        return self._next_moment(
            header,
            entry,
            night.following(),
            now,
            DeviceStatus.POSTPONED_BOOKED,
            f"room booked {booked['start']} to {booked['end']}, no free {length} left in its "
            "window",
            note_code="postponed_booked",
            booked=booked,
        )

    def _tonight(self, header: Doc, entry: Doc, now: datetime) -> bool:
        """The agent's unit is being updated now, or could be ordered now (window open, no
        meeting to wait out): what holds the waves after its own."""
        if entry["channel"] != "agent" or entry["status"] in FINAL_STATUSES:
            return False
        if entry.get("wave") is None:
            return False
        if entry.get("job_id"):
            return True
        if entry["status"] not in WAITING or not entry.get("window"):
            return False
        not_before = entry.get("not_before")
        if not_before and now < datetime.fromisoformat(str(not_before)):
            return False
        night = self._night(header, entry)
        return night.start <= now < night.end

    async def _order(self, header: Doc, entries: list[Doc], now: datetime) -> None:
        """Order the next hop of devices whose window is open and has room for it, whatever
        happened to earlier waves: per-site limited, never into a booked room, and only
        when entitled at this very moment (S4)."""
        rollout_id = header["id"]
        length = self._hop_length(header)
        busy: Counter[str] = Counter(
            e["site"] for e in entries if e.get("job_id") and e["status"] not in FINAL_STATUSES
        )
        # A wave goes once no earlier wave has a unit under way or one that could start now:
        # the canary still comes first, but a unit moved to another night holds nobody.
        tonight = {int(e["wave"]) for e in entries if self._tonight(header, e, now)}
        for entry in sorted(entries, key=lambda e: (e.get("wave") is None, e.get("wave") or 0)):
            if entry["channel"] != "agent" or entry["status"] not in WAITING:
                continue
            if entry.get("job_id") or not entry.get("window"):
                continue
            if any(wave < int(entry["wave"]) for wave in tonight):
                continue
            night = self._night(header, entry)
            # An install starts while its window is open; hop_length only spaces the plan
            # and keeps it clear of meetings (a window ends starts, not installs under way).
            if not night.start <= now < night.end:
                continue
            not_before = entry.get("not_before")
            if not_before and now < datetime.fromisoformat(str(not_before)):
                continue
            site = entry["site"]
            if busy[site] >= int(header["per_site"]):
                continue
            index = int(entry["hop_index"])
            hop = entry["hops"][index]
            serial = str(entry["serial"])
            calendar = self._calendars.of(serial) if self._calendars is not None else None
            meetings = calendar.busy() if calendar is not None else ()
            clash = first_clash(now, length, meetings)
            if clash is not None:
                await self._put_entries(
                    rollout_id, [self._booked(header, entry, night, now, clash, meetings)]
                )
                continue
            cover = self._cover(serial)
            if cover is not None:
                verdict = judge_moment(cover, str(hop["kind"]), now)
                if not verdict.entitled:
                    # S4 at the moment it would really start: a contract that starts later
                    # waits for it, one that ended holds the unit.
                    moved = self._next_moment(
                        header,
                        entry,
                        night,
                        now,
                        DeviceStatus(entry["status"]),
                        f"hop to {hop['version']} not entitled at {moment_text(now)}",
                    )
                    await self._put_entries(rollout_id, [moved])
                    continue
            package = self._packages.find(hop["version"])
            if package is None:
                continue
            window = entry["window"]
            params = {
                "rollout_id": rollout_id,
                "hop_index": index,
                "version": hop["version"],
                "sha256": package["sha256"],
                "size": package["size"],
                "window_start": window["start"],
                "window_end": window["end"],
                "hop_length_s": length.total_seconds(),
                "provider": entry["provider"],
            }
            if entry.get("saved_settings"):
                params["restore"] = entry["saved_settings"]
            try:
                job = self._jobs.prepare(
                    serial, JobKind.FIRMWARE_UPDATE, params, created_by=f"rollout {rollout_id}"
                )
            except JobPending:
                continue  # another firmware job for this unit is pending: order at a later pass
            changes: dict[str, Any] = {"job_id": job["id"], "not_before": None}
            if calendar is not None and calendar.state != "read":
                changes["calendar"] = {
                    "state": calendar.state,
                    "text": calendar.free_text(),
                    "at": now.isoformat(),
                }
            ordered = self._moved(entry, DeviceStatus.DOWNLOADING, now, **changes)
            # One change: the job exists exactly when the entry names it.
            await self._store.wait_durable(
                self._apply(
                    {
                        **self._jobs.storing(job),
                        ROLLOUT_DEVICES: {device_key(rollout_id, serial): ordered},
                    }
                )
            )
            busy[site] += 1
            tonight.add(int(entry["wave"]))
            await self._tell_ordered(
                UpdateOrdered(
                    rollout_id=rollout_id,
                    serial=serial,
                    site=str(site),
                    job_id=str(job["id"]),
                    version=str(hop["version"]),
                    hop=index + 1,
                    hops=len(entry["hops"]),
                    at=now,
                    expected_end=now + length,
                    window_end=night.end,
                )
            )
            if self._maintenance is not None:
                # From the order until it is verified, or its window (and the grace a unit
                # takes to come back) is over: faults the update explains open no ticket.
                await self._maintenance.open_for_update(
                    entry["serial"],
                    rollout=rollout_id,
                    version=hop["version"],
                    starts=now,
                    ends=night.end + UPDATE_GRACE,
                )

    async def _tell_ordered(self, update: UpdateOrdered) -> None:
        for watcher in list(self.watchers):
            try:
                await watcher.update_ordered(update)
            except Exception:
                log.exception("rollout %s: a watcher failed on an order", update.rollout_id)

    async def _tell_ended(self, update: UpdateEnded) -> None:
        for watcher in list(self.watchers):
            try:
                await watcher.update_ended(update)
            except Exception:
                log.exception("rollout %s: a watcher failed on an outcome", update.rollout_id)

    async def _reassign_silent(self, header: Doc, entries: list[Doc], now: datetime) -> None:
        """A unit that answers on its hop's version while the agent its job went to says
        nothing of it (gone, or restarted without it): the job is handed out again once
        ``reassign_after`` has passed, far sooner than its lease."""
        changed: list[Doc] = []
        for entry in entries:
            job_id = entry.get("job_id")
            if not job_id or entry["status"] not in UNDER_WAY:
                continue
            job = self._jobs.get(str(job_id))
            if job is None or job["status"] != "sent" or not job.get("sent_at"):
                continue
            hop = _current_hop(entry)
            device = self._inventory.find_device(str(entry["serial"])) or {}
            # Per-report fields live in the inventory's memory, not in the device document.
            seen = self._inventory.collected_at(str(entry["serial"]))
            if hop is None or not seen or not _reports(device, hop):
                continue
            if datetime.fromisoformat(str(seen)) <= datetime.fromisoformat(str(job["sent_at"])):
                continue
            answered = entry.get("answered_at")
            if not answered:
                changed.append({**entry, "answered_at": now.isoformat()})
                continue
            last = entry.get("reassigned_at") or answered
            if now - datetime.fromisoformat(str(last)) < self.reassign_after:
                continue
            restore = entry.get("saved_settings")
            await self._jobs.reassign(
                str(job_id),
                why=f"the unit answers on {hop} since {answered}; its agent said nothing of it",
                params={"restore": restore} if restore else None,
            )
            note = {
                "code": "reassigned",
                "text": f"the unit answers on {hop} since {answered} while the agent of its "
                f"job says nothing of it: job {job_id} handed out again",
            }
            changed.append(
                {
                    **entry,
                    "reassigned_at": now.isoformat(),
                    "notes": [*entry.get("notes", []), note],
                }
            )
        await self._put_entries(header["id"], changed)

    async def _collect_results(self, rollout_id: str, now: datetime) -> None:
        """Apply finished jobs to their entries (also while paused, halted or aborted)."""
        header = self.header(rollout_id)
        for entry in self.entries(rollout_id):
            job_id = entry.get("job_id")
            if not job_id:
                continue
            job = self._jobs.get(job_id)
            if job is None:
                # Ordered with the entry in one change: a missing job cannot happen but by
                # hand; order it again in the next window rather than never.
                lost = self._moved(entry, DeviceStatus.WAITING_WINDOW, now, job_id=None)
                await self._put_entries(rollout_id, [lost])
                continue
            if job["status"] not in ("done", "failed", "refused"):
                continue
            await self._apply_result(header, entry, job, now)

    def _evidence(self, job: Doc) -> dict[str, Any]:
        path = self._jobs.artifact_path(job["id"])
        if path is None:
            return {}
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _after_hop(self, header: Doc, entry: Doc, now: datetime, **changes: Any) -> Doc:
        """A hop verified with more to go: the next one tonight while the window is still
        open, else where it stopped in its next window (judged there, S4)."""
        index = int(changes["hop_index"])
        hops = entry["hops"]
        done = f"hop {index} of {len(hops)} done"
        if header["status"] == RolloutStatus.ABORTED:
            note = {"code": "aborted", "text": f"{done}; the rollout was aborted: no more hops"}
            return self._moved(
                entry, DeviceStatus.SKIPPED, now, **changes,
                notes=[*entry.get("notes", []), note],
            )  # fmt: skip
        night = self._night(header, entry)
        if now < night.end:
            return self._moved(entry, DeviceStatus.WAITING_WINDOW, now, **changes)
        return self._next_moment(
            header,
            entry,
            night.following(),
            now,
            DeviceStatus.WAITING_WINDOW,
            f"{done}; hop {index + 1} ({hops[index]['version']}) finds its window closed: "
            "it resumes there",
            note_code="resumes_next_window",
            **changes,
        )

    async def _apply_result(self, header: Doc, entry: Doc, job: Doc, now: datetime) -> None:
        """A finished job's result on its entry: the next hop, the next window, another
        attempt or the end, as the result's failure code says (``FAILURE_RULES``)."""
        rollout_id = str(header["id"])
        aborted = header["status"] == RolloutStatus.ABORTED
        result = job.get("result") or {}
        detail = str(result.get("detail") or "")
        code = result.get("code")
        hop_index = int(entry["hop_index"])
        hop = entry["hops"][hop_index] if hop_index < len(entry["hops"]) else {}
        evidence = self._evidence(job)
        kept = [*entry.get("evidence", [])]
        if evidence:
            kept.append({"job_id": job["id"], "hop": hop.get("version"), **evidence})
        status = job["status"]
        extra: dict[str, dict[str, Doc]] = {}
        ticket: FaultEvent | None = None
        common: dict[str, Any] = {"job_id": None, "evidence": kept}
        said = evidence.get("calendar")
        if isinstance(said, dict):
            common["calendar"] = {**said, "at": now.isoformat()}
        if status == "done":
            if hop_index + 1 >= len(entry["hops"]):
                updated = self._moved(
                    entry, DeviceStatus.DONE, now, **common, hop_index=hop_index + 1
                )
            else:
                updated = self._after_hop(header, entry, now, **common, hop_index=hop_index + 1)
        elif status == "refused" and aborted:
            updated = self._moved(entry, DeviceStatus.SKIPPED, now, **common)
        elif status == "refused":
            # Not started (in a call all window long, booked, off, unreachable): nothing
            # was done to the unit; a free slot or its next window, judged there.
            meeting = _meeting_of(evidence)
            night = self._night(header, entry)
            booked = code == FailureCode.ROOM_BOOKED
            if booked and meeting is not None:
                updated = self._booked(header, {**entry, **common}, night, now, meeting, [meeting])
            else:
                updated = self._next_moment(
                    header,
                    entry,
                    night.following(),
                    now,
                    DeviceStatus.POSTPONED_BOOKED if booked else DeviceStatus.WAITING_WINDOW,
                    detail or "not updated",
                    note_code="postponed_booked" if booked else "moved_to_next_window",
                    **common,
                )
        else:
            # Shown as before codes existed; only an agent without codes is judged by it.
            check = detail.split(":", 1)[0] if ":" in detail else "failed"
            rule = failure_rule(code, check)
            failure = {
                "at": now.isoformat(),
                "hop": hop.get("version"),
                "check": check,
                "detail": detail,
                "job_id": job["id"],
                **({"code": code} if code else {}),
            }
            failures = [*entry["failures"], failure]
            changes: dict[str, Any] = {
                **common,
                "failures": failures,
                "attempts": int(entry.get("attempts", 0)) + 1,
            }
            penalty = rule.penalises and (rule.then == "fail" or penalty_due(failures))
            if rule.then == "fail" or penalty:
                updated = self._moved(entry, DeviceStatus.FAILED, now, **changes)
            elif aborted:
                updated = self._moved(entry, DeviceStatus.SKIPPED, now, **changes)
            elif rule.then == "next_window":
                updated = self._next_moment(
                    header,
                    entry,
                    self._night(header, entry).following(),
                    now,
                    rule.waits_as,
                    detail or "failed",
                    **changes,
                )
            else:
                updated = self._moved(entry, DeviceStatus.WAITING_WINDOW, now, **changes)
            if penalty:
                extra[PENALTY_BOX] = {
                    entry["serial"]: {
                        "serial": entry["serial"],
                        "rollout_id": rollout_id,
                        "reason": (
                            f"{check_text(check)} on {hop.get('version')}: {detail_text(detail)}"
                        )[:500],
                        "at": now.isoformat(),
                        "failures": failures,
                    }
                }
            if rule.ticket:
                ticket = FaultEvent(
                    kind=FaultEventKind.OPENED,
                    subject=entry["serial"],
                    fault=UPDATE_FAULT,
                    at=now,
                    site=entry["site"],
                    serial=entry["serial"],
                    model=entry.get("model"),
                    detail=(
                        f"did not come back from firmware update to {hop.get('version')} "
                        f"(rollout {rollout_id}, hop {hop_index + 1} of {len(entry['hops'])}): "
                        f"{detail_text(detail)}"
                    )[:500],
                    first_seen=now,
                    evidence=(
                        *(e for e in (evidence.get("before"), evidence.get("after")) if e),
                        {"rollout": rollout_id, "hop": hop, "job_id": job["id"]},
                    ),
                )
        changes_stored: dict[str, dict[str, Doc]] = {
            ROLLOUT_DEVICES: {device_key(rollout_id, entry["serial"]): updated},
            **extra,
        }
        await self._store.wait_durable(self._apply(changes_stored))
        if self._maintenance is not None:
            # The update is over: what is wrong with the unit now is its own fault.
            await self._maintenance.end_for_update(entry["serial"], rollout=rollout_id)
        if ticket is not None and self.file_ticket is not None:
            # After the entry is stored: a crash here repeats nothing but may miss the ticket,
            # which the unit's own silence then opens through the fault detector.
            await self.file_ticket(ticket)
        outcome: Literal["verified", "failed", "not_started"] = (
            "verified" if status == "done" else "failed" if status == "failed" else "not_started"
        )
        await self._tell_ended(
            UpdateEnded(
                rollout_id=rollout_id,
                serial=str(entry["serial"]),
                site=str(entry["site"]),
                job_id=str(job["id"]),
                version=str(hop.get("version") or ""),
                hop=hop_index + 1,
                hops=len(entry["hops"]),
                at=now,
                outcome=outcome,
                code=str(code) if code else None,
                detail=detail,
            )
        )

    async def on_progress(self, job_id: str, site_id: str, progress: JobProgress) -> bool:
        """An agent's word on a running update: the entry's status follows it.

        IllegalMove (logged) when the entry is not under way, which the job naming it
        rules out: nothing is stored then.
        """
        job = self._jobs.get(job_id)
        if job is None or job["site_id"] != site_id:
            return False
        rollout_id = (job.get("params") or {}).get("rollout_id")
        if not rollout_id:
            return False
        key = device_key(str(rollout_id), job["serial"])
        entry = self._store.get(ROLLOUT_DEVICES, key)
        if entry is None or entry.get("job_id") != job_id:
            return False
        changes: dict[str, Any] = {"progress_detail": progress.detail}
        if progress.settings is not None:
            changes["saved_settings"] = dict(progress.settings)
        if progress.meeting is not None:
            zone = self._zone(str(entry["site"]))
            changes["booked"] = _meeting_json((progress.meeting.start, progress.meeting.end), zone)
        if entry["status"] != progress.status or len(changes) > 1:
            updated = self._moved(entry, DeviceStatus(progress.status), self._clock(), **changes)
            await self._store.wait_durable(self._apply({ROLLOUT_DEVICES: {key: updated}}))
        return True

    def metrics(self) -> tuple[Counter[str], Counter[str]]:
        """(rollouts by status, devices of live rollouts by their status) for ``/metrics``."""
        rollouts: Counter[str] = Counter()
        devices: Counter[str] = Counter()
        for doc in list(self._store.scan(ROLLOUTS).values()):
            rollouts[doc["status"]] += 1
            if doc["status"] in _LIVE:
                for entry in self.entries(doc["id"]):
                    devices[entry["status"]] += 1
        return rollouts, devices


def _reports(device: Mapping[str, Any], version: str) -> bool:
    """Whether a device document reports ``version`` (the same release and build)."""
    firmware = device.get("firmware") or {}
    try:
        wanted = FirmwareVersion.parse(version)
        seen = FirmwareVersion.parse(
            str(firmware.get("version") or ""), build=firmware.get("build") or None
        )
    except VersionError:
        return False
    return seen == wanted or (seen.same_release(wanted) and wanted.build in (0, seen.build))


def _meeting_of(evidence: Mapping[str, Any]) -> Busy | None:
    """The meeting an agent found in the way of an update, from its evidence."""
    calendar = evidence.get("calendar")
    meeting = calendar.get("meeting") if isinstance(calendar, dict) else None
    if not isinstance(meeting, dict):
        return None
    try:
        return (
            datetime.fromisoformat(str(meeting["start"])),
            datetime.fromisoformat(str(meeting["end"])),
        )
    except (KeyError, ValueError):
        return None


def _current_hop(entry: Mapping[str, Any]) -> str | None:
    hops = entry.get("hops") or []
    index = int(entry.get("hop_index") or 0)
    return str(hops[index]["version"]) if index < len(hops) else None


#: An entry's keys as a plan shows them, in this order.
_ENTRY_KEYS = (
    "serial",
    "site",
    "room",
    "model",
    "provider",
    "installed",
    "hops",
    "channel",
    "wave",
    "window",
    "reasons",
    "notes",
    "status",
    "hop_index",
    "attempts",
    "failures",
    "evidence",
    "eligibility",
    "calendar",
    "booked",
    "not_before",
)


def device_json(entry: Mapping[str, Any], installed: str | None = None) -> dict[str, Any]:
    """A device entry as the plan shows it: the planner's keys plus what running changed.

    ``installed`` is the version the unit reports now (the plan's stays in
    ``installed_at_plan``); None keeps the plan's.
    """
    found = {key: entry.get(key) for key in _ENTRY_KEYS}
    found["installed_at_plan"] = entry.get("installed")
    if installed is not None:
        found["installed"] = installed
    return found


def _checked(value: str, field: str, check: Callable[..., str], **limits: Any) -> str:
    """``value`` through ``check``, one of the admin text checks, refused as a plan is."""
    try:
        return str(check(value, field=field, **limits))
    except admin_input.AdminInputError as exc:
        raise PlanError(field, exc.reason) from None


def request_from_json(body: Mapping[str, Any]) -> PlanRequest:
    """A PlanRequest from the API's JSON body (the CLI's flags by the same names).

    Every text goes through the admin text checks (``domain.admin_input``): a name, a site
    or a serial holding a line break or an escape is refused with its field named.
    """

    def text_list(
        name: str, check: Callable[..., str] = admin_input.display_name
    ) -> tuple[str, ...]:
        value = body.get(name) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PlanError(name, "a list of texts expected")
        return tuple(_checked(v, name, check) for v in value)

    def integer(name: str, default: int) -> int:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(name, f"{value!r}: a whole number expected")
        return value

    def duration(name: str, default: timedelta) -> timedelta:
        value = body.get(name)
        return parse_gap(str(value), name) if value else default

    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise PlanError("target", "the version to roll out is required (e.g. 4.2.2-408037)")
    target = _checked(target, "target", admin_input.printable_text)
    waves = body.get("waves")
    if isinstance(waves, list):
        waves = ",".join(str(w) for w in waves)
    start = body.get("start")
    start_day: date | None = None
    if start:
        try:
            start_day = date.fromisoformat(str(start))
        except ValueError:
            raise PlanError("start", f"{start!r} is not YYYY-MM-DD") from None
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise PlanError("name", "a text expected")
    name = _checked(
        name,
        "name",
        admin_input.printable_text,
        max_chars=ROLLOUT_NAME_MAX_CHARS,
        allow_empty=True,
    )
    criteria = body.get("abort_criteria")
    window = Window.parse(str(body.get("window") or DEFAULT_WINDOW))
    return PlanRequest(
        target=target,
        sites=text_list("sites"),
        models=text_list("models"),
        canary=integer("canary", 1),
        waves=parse_waves(str(waves)) if waves else DEFAULT_WAVES,
        window=window,
        start=start_day,
        wave_gap=duration("wave_gap", DEFAULT_WAVE_GAP),
        # A window shorter than the usual hop (plans made before hop_length existed) plans
        # its hops one window long each instead of being refused.
        hop_length=duration("hop_length", min(DEFAULT_HOP_LENGTH, window.nominal)),
        max_failures=integer("max_failures", DEFAULT_MAX_FAILURES),
        per_site=integer("per_site", DEFAULT_PER_SITE),
        name=name,
        exclude=text_list("exclude", admin_input.serial),
        abort_criteria=None if criteria is None else parse_abort_criteria(criteria),
    )
