"""Firmware rollouts with side effects: stored plans, admin controls and what dashboards read.

Documents:

- ``rollouts`` (key = id): ``{id, name, target, status, created_at, created_by, request,
  start, window, wave_gap, max_failures, per_site, canary, waves, summary, halt,
  history: [{at, action, by, detail}], started_at, finished_at}``. ``status`` goes
  ``planned`` -> ``running`` <-> ``paused``; ``running`` -> ``halted`` (circuit breaker)
  -> ``running`` (resume) ; any but ``done`` -> ``aborted``; ``running`` -> ``done``.
- ``rollout_devices`` (key = ``<id>:<serial>``): one device's plan entry (the planner's
  JSON) plus what running it changes: ``status``, ``hop_index``, ``attempts``,
  ``failures``, ``job_id``, ``evidence``, ``window`` (moved on when a window is missed).
- ``penalty_box`` (key = serial): ``{serial, rollout_id, reason, at}``: a device that
  failed twice; no rollout retries it until an admin releases it.

Every change is a stored document first and an action second, so a restart resumes.
Read functions (``rollouts``, ``rollout``, ``progress``, ``penalty_box``) return the API's
JSON shapes and are meant to be called directly too (dashboards).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.domain.rollout import (
    DEFAULT_WAVE_GAP,
    DEFAULT_WINDOW,
    DEVICE_STATUSES,
    PlanDevice,
    PlanError,
    PlanRequest,
    Window,
    parse_gap,
    parse_waves,
    plan_rollout,
)
from polyfleet.controller.events import EventBus, RolloutChanged
from polyfleet.controller.services.entitlement import ASSETS
from polyfleet.controller.services.ticket_service import TICKETS
from polyfleet.controller.store.base import DEVICES, EVENTS, SITES, Doc, Store

ROLLOUTS = "rollouts"
ROLLOUT_DEVICES = "rollout_devices"
PENALTY_BOX = "penalty_box"

ROLLOUT_STATUSES = ("planned", "running", "paused", "halted", "aborted", "done")
#: Which admin action is allowed from which status, and where it leads.
TRANSITIONS: dict[str, dict[str, str]] = {
    "start": {"planned": "running"},
    "pause": {"running": "paused"},
    "resume": {"paused": "running", "halted": "running"},
    "abort": {"planned": "aborted", "running": "aborted", "paused": "aborted", "halted": "aborted"},
}
#: Device statuses of an update under way: pause and abort let these finish.
IN_PROGRESS = frozenset({"postponed_in_call", "downloading", "installing", "verifying"})
#: Device statuses that end a device's part in a rollout.
FINISHED = frozenset({"done", "failed", "skipped", "held", "excluded"})
_CLOSED_TICKET = "closed"


class UnknownRollout(KeyError):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(rollout_id)
        self.rollout_id = rollout_id

    def __str__(self) -> str:
        return f"no rollout {self.rollout_id!r} (see `polyfleet controller rollout list`)"


class RolloutConflict(Exception):
    """An action the rollout's status does not allow (e.g. resume a running rollout)."""


def device_key(rollout_id: str, serial: str) -> str:
    return f"{rollout_id}:{serial}"


def plan_devices(store: Store) -> list[PlanDevice]:
    """Every reported device as the planner sees it, with open tickets and penalties."""
    tickets: dict[str, list[str]] = {}
    for ticket in list(store.scan(TICKETS).values()):
        if ticket.get("status") == _CLOSED_TICKET:
            continue
        serials = {ticket.get("serial"), *(ticket.get("affected_serials") or ())}
        for serial in serials:
            if serial:
                tickets.setdefault(str(serial), []).append(str(ticket.get("id")))
    penalties = {
        serial: f"failed twice in rollout {doc['rollout_id']}: {doc['reason']}"
        for serial, doc in list(store.scan(PENALTY_BOX).items())
    }
    devices: list[PlanDevice] = []
    for serial, doc in list(store.scan(DEVICES).items()):
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


class RolloutService:
    """Plans, stores and controls rollouts; the runner moves device states (see ``tick``)."""

    def __init__(self, store: Store, bus: EventBus, clock: Clock) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock

    # -- planning --------------------------------------------------------------------------

    def preview(
        self,
        request: PlanRequest,
        *,
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
    ) -> dict[str, Any]:
        """The plan ``request`` gives now, not stored (PlanError names a bad request)."""
        zones = {
            site_id: str(site.get("timezone") or "UTC")
            for site_id, site in list(self._store.scan(SITES).items())
        }
        assets = {
            serial: Asset.from_doc(doc) for serial, doc in list(self._store.scan(ASSETS).items())
        }
        plan = plan_rollout(
            request,
            plan_devices(self._store),
            site_zones=zones,
            assets=assets,
            plans=plans,
            releases=releases,
            now=self._clock(),
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
            self._store.apply({ROLLOUTS: {rollout_id: header}, ROLLOUT_DEVICES: docs})
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
        return {
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

    def entries(self, rollout_id: str) -> list[Doc]:
        """The rollout's device entries, by serial."""
        prefix = rollout_id + ":"
        found = [
            doc
            for key, doc in list(self._store.scan(ROLLOUT_DEVICES).items())
            if key.startswith(prefix)
        ]
        return sorted(found, key=lambda doc: str(doc["serial"]))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """The whole stored plan with each device's current state."""
        header = self.header(rollout_id)
        entries = self.entries(rollout_id)
        return {
            **header,
            "devices": [device_json(entry) for entry in entries],
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

    def penalty_box(self) -> list[Doc]:
        """Devices no rollout retries until released, with why."""
        return sorted(self._store.scan(PENALTY_BOX).values(), key=lambda doc: str(doc["serial"]))

    async def release_from_penalty_box(self, serial: str) -> bool:
        if self._store.get(PENALTY_BOX, serial) is None:
            return False
        await self._store.delete(PENALTY_BOX, serial)
        return True

    # -- admin actions ---------------------------------------------------------------------

    async def act(self, rollout_id: str, action: str, *, by: str = "") -> dict[str, Any]:
        """start, pause, resume or abort; RolloutConflict when the status does not allow it."""
        allowed = TRANSITIONS.get(action)
        if allowed is None:
            raise ValueError(f"unknown action {action!r}: one of {', '.join(TRANSITIONS)}")
        header = self.header(rollout_id)
        status = header["status"]
        if status not in allowed:
            can = ", ".join(sorted(allowed))
            raise RolloutConflict(
                f"rollout {rollout_id} is {status}: {action} needs it to be {can}"
            )
        await self._change(header, allowed[status], action, by=by)
        return self._summary(self.header(rollout_id))

    async def _change(
        self,
        header: Doc,
        status: str,
        action: str,
        *,
        by: str = "",
        detail: str = "",
        halt: dict[str, Any] | None = None,
        extra: Mapping[str, Mapping[str, Doc]] | None = None,
    ) -> None:
        """Store a rollout's new status with its history and event in one change."""
        now = self._clock()
        updated: Doc = {
            **header,
            "status": status,
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
        if status in ("aborted", "done"):
            updated["finished_at"] = now.isoformat()
        event = RolloutChanged(
            at=now,
            rollout_id=header["id"],
            action=action,
            status=status,
            by=by,
            detail=detail,
        )
        puts, deletes = self._bus.record([event])
        changes: dict[str, dict[str, Doc]] = {ROLLOUTS: {header["id"]: updated}, EVENTS: puts}
        for collection, docs in (extra or {}).items():
            changes.setdefault(collection, {}).update(docs)
        await self._store.wait_durable(self._store.apply(changes, {EVENTS: deletes}))
        self._bus.dispatch([event])


def _current_hop(entry: Mapping[str, Any]) -> str | None:
    hops = entry.get("hops") or []
    index = int(entry.get("hop_index") or 0)
    return str(hops[index]["version"]) if index < len(hops) else None


def device_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A device entry as the plan shows it: the planner's keys plus what running changed."""
    return {
        key: entry.get(key)
        for key in (
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
        )
    }


def request_from_json(body: Mapping[str, Any]) -> PlanRequest:
    """A PlanRequest from the API's JSON body (the CLI's flags by the same names)."""

    def text_list(name: str) -> tuple[str, ...]:
        value = body.get(name) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PlanError(name, "a list of texts expected")
        return tuple(value)

    def integer(name: str, default: int) -> int:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(name, f"{value!r}: a whole number expected")
        return value

    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise PlanError("target", "the version to roll out is required (e.g. 4.2.2-408037)")
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
    gap = body.get("wave_gap")
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise PlanError("name", "a text expected")
    return PlanRequest(
        target=target.strip(),
        sites=text_list("sites"),
        models=text_list("models"),
        canary=integer("canary", 1),
        waves=parse_waves(str(waves)) if waves else (10, 50, 100),
        window=Window.parse(str(body.get("window") or DEFAULT_WINDOW)),
        start=start_day,
        wave_gap=parse_gap(str(gap)) if gap else DEFAULT_WAVE_GAP,
        max_failures=integer("max_failures", 10),
        per_site=integer("per_site", 5),
        name=name,
        exclude=text_list("exclude"),
    )
