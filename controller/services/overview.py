"""The fleet at a glance: room tiles, urgent tickets, firmware compliance, expiries, changes.

One function builds it for ``GET /api/v1/overview``, the dashboard's overview page and the
kiosk (``controller.features.overview`` reads its inputs from the services the other
endpoints use: inventory, tickets, entitlement verdicts, the expiry forecast, the event log),
so every number on the page is one the API gives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from polyfleet.controller.domain.entitlement import EXPIRY_HORIZONS, EntitlementVerdict
from polyfleet.controller.domain.forecast import Forecast
from polyfleet.controller.domain.maintenance import Maintenance, MaintenanceScope
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.domain.tickets import ACTIVE, Ticket, TicketStatus
from polyfleet.controller.store.base import Doc
from polyfleet.shared.schema import SEVERITY_ORDER, HealthState, worst_state

#: A running SLA clock with less than this left is "due soon".
DUE_SOON = timedelta(hours=4)
#: Ticket urgency, most urgent first.
URGENCIES = ("overdue", "due_soon", "running", "held", "waiting")
#: What "what changed" looks back over.
CHANGES_WINDOW = timedelta(hours=24)
#: How many recent changes and soonest expiries are listed (all are counted).
LISTED = 15
#: Firmware status of one device against the newest release its contract covers.
FIRMWARE_STATUSES = ("current", "behind", "not_entitled", "not_tracked")
#: How many devices a room tile names among those that are not ok.
ROOM_ATTENTION = 4


#: Health states worst first, as counts are listed.
STATES_WORST_FIRST: tuple[str, ...] = tuple(state.value for state in reversed(SEVERITY_ORDER))


def _health_counts(states: Iterable[str]) -> dict[str, int]:
    counts = Counter(states)
    return {state: counts.get(state, 0) for state in STATES_WORST_FIRST}


def _severity(state: str) -> int:
    """How bad a state is (``SEVERITY_ORDER``); an unknown one counts as unreachable."""
    try:
        return SEVERITY_ORDER.index(HealthState(state))
    except ValueError:
        return SEVERITY_ORDER.index(HealthState.UNREACHABLE)


def worst(states: Iterable[str]) -> str:
    """The worst of device states, by the one order ``worst_state`` uses."""
    return worst_state(
        HealthState(s) if s in _STATES else HealthState.UNREACHABLE for s in states
    ).value


_STATES = frozenset(state.value for state in HealthState)


def room_tiles(sites: Sequence[Doc], devices: Iterable[Doc]) -> list[Doc]:
    """Per site, its rooms (devices without a room are one tile, ``room`` null), each with its
    worst device's state and counts per state; rooms worst first, then by name."""
    by_site: dict[str, dict[str | None, list[tuple[str, Doc]]]] = {}
    for device in devices:
        site_rooms = by_site.setdefault(str(device["site_id"]), {})
        site_rooms.setdefault(device.get("room"), []).append((_state(device), device))
    known = {site["id"]: site for site in sites}
    result: list[Doc] = []
    for site_id in sorted(set(known) | set(by_site)):
        site = known.get(site_id, {"id": site_id, "name": site_id, "timezone": "UTC"})
        rooms: list[Doc] = []
        site_states: list[str] = []
        for room, members in by_site.get(site_id, {}).items():
            states = [state for state, _ in members]
            site_states += states
            attention = sorted(
                ((state, d) for state, d in members if state != "ok"),
                key=lambda item: (-_severity(item[0]), item[1]["serial"]),
            )
            rooms.append(
                {
                    "room": room,
                    "devices": len(members),
                    "worst": worst(states),
                    "health": _health_counts(states),
                    "attention": [
                        {"serial": d["serial"], "model": d.get("model"), "state": state}
                        for state, d in attention[:ROOM_ATTENTION]
                    ],
                }
            )
        rooms.sort(key=lambda r: (-_severity(r["worst"]), r["room"] is None, r["room"] or ""))
        result.append(
            {
                "id": site_id,
                "name": site.get("name", site_id),
                "timezone": site.get("timezone", "UTC"),
                "agent_online": site.get("agent_online"),
                "devices": sum(r["devices"] for r in rooms),
                "worst": worst(site_states),
                "health": _health_counts(site_states),
                "rooms": rooms,
            }
        )
    return result


def _mark(window: Maintenance, model: object = None) -> Doc:
    """How a tile names a window: what it covers (a unit with its model), until when, why."""
    return {
        "id": window.id,
        "scope": window.scope.value,
        "target": window.target,
        "model": model if isinstance(model, str) else None,
        "until": window.until.isoformat(),
        "reason": window.reason,
    }


def mark_maintenance(
    tiles: list[Doc], windows: Iterable[Maintenance], devices: Mapping[str, Doc], now: datetime
) -> None:
    """Give each site and room tile ``maintenance``: the windows in force at ``now`` on the
    site itself, and on the room or a unit in it (a unit where it is now, not where it was
    when its window was made)."""
    by_site: dict[str, list[Doc]] = {}
    by_room: dict[tuple[str, str | None], list[Doc]] = {}
    for window in windows:
        if not window.active(now):
            continue
        if window.scope is MaintenanceScope.SITE and window.site is not None:
            by_site.setdefault(window.site, []).append(_mark(window))
        elif window.scope is MaintenanceScope.ROOM and window.site is not None:
            by_room.setdefault((window.site, window.room), []).append(_mark(window))
        elif window.scope is MaintenanceScope.SERIAL:
            device = devices.get(window.target)
            if device is not None:
                place = (str(device["site_id"]), device.get("room"))
                by_room.setdefault(place, []).append(_mark(window, device.get("model")))
    for site in tiles:
        site["maintenance"] = by_site.get(site["id"], [])
        for room in site["rooms"]:
            room["maintenance"] = by_room.get((site["id"], room["room"]), [])


def _state(device: Doc) -> str:
    health = device.get("health") or {}
    return str(health.get("state", "unreachable"))


def ticket_urgency(ticket: Ticket, now: datetime) -> tuple[str, Doc | None]:
    """How urgent an active ticket is, and its running SLA clock (name, due, seconds left)."""
    clock = ticket.running_clock()
    if clock is not None:
        left = (clock.due - now).total_seconds()
        shown: Doc = {"name": clock.name, "due": clock.due.isoformat(), "seconds_left": int(left)}
        if left < 0:
            return "overdue", shown
        return ("due_soon" if left < DUE_SOON.total_seconds() else "running"), shown
    if ticket.status is TicketStatus.NEEDS_DATA:
        return "held", None
    return "waiting", None


def urgent_tickets(tickets: Iterable[Ticket], now: datetime) -> Doc:
    """Active tickets, most urgent first (overdue the longest first), with counts."""
    items: list[tuple[tuple[int, float, str], Doc]] = []
    for ticket in tickets:
        if ticket.status not in ACTIVE:
            continue
        urgency, clock = ticket_urgency(ticket, now)
        left = clock["seconds_left"] if clock is not None else float("inf")
        order = (URGENCIES.index(urgency), left, ticket.id)
        items.append(
            (
                order,
                {
                    "id": ticket.id,
                    "kind": ticket.kind.value,
                    "status": ticket.status.value,
                    "fault": ticket.fault,
                    "serial": ticket.serial,
                    "model": ticket.model,
                    "site": ticket.site,
                    "site_name": ticket.site_name,
                    "room": ticket.room,
                    "plan": ticket.plan,
                    "missing": ticket.missing,
                    "urgency": urgency,
                    "clock": clock,
                },
            )
        )
    items.sort(key=lambda item: item[0])
    counts = Counter(doc["urgency"] for _, doc in items)
    return {
        "active": len(items),
        "counts": {urgency: counts.get(urgency, 0) for urgency in URGENCIES},
        "items": [doc for _, doc in items],
    }


def firmware_status(verdict: EntitlementVerdict, model: str, releases: ReleaseCatalogue) -> str:
    """``current`` (no newer release applies), ``behind`` (an update the contract covers),
    ``not_entitled`` (newer releases, none covered) or ``not_tracked`` (no catalogue for the
    model, e.g. an E70 camera, or no firmware reported)."""
    firmware = verdict.firmware
    if firmware.installed is None or not releases.applies_to(model):
        return "not_tracked"
    if firmware.entitled_next is not None:
        return "behind"
    if firmware.next is not None:
        return "not_entitled"
    return "current"


def firmware_compliance(
    devices: Mapping[str, Doc],
    verdicts: Iterable[EntitlementVerdict],
    releases: ReleaseCatalogue,
    day: date,
) -> Doc:
    """Reported devices by model x provider mode x installed version, each row counting the
    devices per firmware status and naming the newest release the contracts cover; with the
    newest release published by ``day``, which "up to date" is measured against."""
    rows: dict[tuple[str, str, str], Doc] = {}
    totals = Counter[str]()
    for verdict in verdicts:
        device = devices.get(verdict.serial)
        if device is None:
            continue  # registered, never reported: no installed version to judge
        model = str(device.get("model", "unknown"))
        provider = str(device.get("provider", "unknown"))
        # As the agent reported it, and as the device table's firmware filter takes it.
        firmware = device.get("firmware") or {}
        version, build = str(firmware.get("version") or ""), str(firmware.get("build") or "")
        installed = f"{version}-{build}" if version and build else version
        key = (model, provider, installed)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "model": model,
                "provider": provider,
                "version": installed or None,
                "devices": 0,
                **{status: 0 for status in FIRMWARE_STATUSES},
                "_targets": Counter[str](),
            }
        status = firmware_status(verdict, model, releases)
        row["devices"] += 1
        row[status] += 1
        totals[status] += 1
        if verdict.firmware.entitled_next is not None:
            row["_targets"][verdict.firmware.entitled_next] += 1
    ordered = []
    for key in sorted(rows):
        row = rows[key]
        targets: Counter[str] = row.pop("_targets")
        row["entitled_target"] = targets.most_common(1)[0][0] if targets else None
        ordered.append(row)
    return {
        "rows": ordered,
        "totals": {status: totals.get(status, 0) for status in FIRMWARE_STATUSES},
        "newest": published[-1].text if (published := releases.published(day)) else None,
    }


def expiring(forecast: Forecast) -> Doc:
    """Forecast events counted per horizon (30, 60, 90, 180 days) and kind; the soonest ones."""
    events = [(site.site, event) for site in forecast.sites for event in site.events]
    horizons = []
    for days in EXPIRY_HORIZONS:
        within = [event for _, event in events if event.days_left <= days]
        kinds = Counter(event.kind for event in within)
        horizons.append({"days": days, "total": len(within), "kinds": dict(sorted(kinds.items()))})
    soonest = sorted(events, key=lambda item: (item[1].last_day, item[1].serial, item[1].kind))
    return {
        "horizons": horizons,
        "soonest": [{"site": site, **event.to_json()} for site, event in soonest[:LISTED]],
    }


def recent_changes(events: Sequence[Doc], now: datetime) -> Doc:
    """Stored events of the last 24 hours (``events``: newest first, as ``EventBus.recent``
    gives them, perhaps older ones after): counts per kind and the newest ones."""
    since = now - CHANGES_WINDOW
    recent: list[Doc] = []
    for doc in events:
        if datetime.fromisoformat(doc["at"]) < since:
            break
        recent.append(doc)
    kinds = Counter(doc["kind"] for doc in recent)
    return {
        "since": since.isoformat(),
        "total": len(recent),
        "kinds": dict(sorted(kinds.items())),
        "recent": recent[:LISTED],
    }


@dataclass(frozen=True, kw_only=True)
class OverviewInputs:
    """What the overview is built from, read from the services by the caller."""

    sites: Sequence[Doc]
    devices: Mapping[str, Doc]
    tickets: Sequence[Ticket] | None
    verdicts: Sequence[EntitlementVerdict]
    releases: ReleaseCatalogue
    forecast: Forecast
    #: Stored events of the last 24 hours at least, newest first (``EventBus.recent``).
    events: Sequence[Doc]
    now: datetime
    #: The progress (``RolloutService.progress``) of rollouts under way, newest first.
    rollouts: Sequence[Doc] = ()
    #: Every maintenance window (those in force now are marked on the tiles).
    maintenance: Sequence[Maintenance] = ()


def build_overview(inputs: OverviewInputs) -> dict[str, Any]:
    """The overview document (``GET /api/v1/overview``); ``tickets`` None while starting."""
    devices = inputs.devices
    tiles = room_tiles(inputs.sites, devices.values())
    mark_maintenance(tiles, inputs.maintenance, devices, inputs.now)
    health = _health_counts(_state(device) for device in devices.values())
    return {
        "at": inputs.now.isoformat(),
        "devices": len(devices),
        "health": health,
        "sites": tiles,
        "tickets": None if inputs.tickets is None else urgent_tickets(inputs.tickets, inputs.now),
        "firmware": firmware_compliance(
            devices, inputs.verdicts, inputs.releases, inputs.now.date()
        ),
        "expiring": expiring(inputs.forecast),
        "changes": recent_changes(inputs.events, inputs.now),
        "rollouts": list(inputs.rollouts),
    }
