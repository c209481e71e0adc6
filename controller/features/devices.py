"""Devices: the table, one device, its reports and jobs; set its room, move it, order a job."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.admin_input import display_name
from polyfleet.controller.domain.assets import is_polled_model
from polyfleet.controller.domain.entitlement import EntitlementVerdict
from polyfleet.controller.domain.forecast import MAX_FORECAST_DAYS, ForecastEvent
from polyfleet.controller.domain.plans import Plan, PlanCatalogue
from polyfleet.controller.domain.tickets import Ticket
from polyfleet.controller.errors import NotFound
from polyfleet.controller.features.assets import monitoring
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.features.entitlement import now as entitlement_now
from polyfleet.controller.features.entitlement import registry_forecast, verdict_lookup
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.device_table import (
    DeviceQuery,
    DeviceRows,
    query_devices,
    unpolled_row,
)
from polyfleet.controller.services.inventory import DeviceFilter, UnknownDevice
from polyfleet.controller.services.jobs import UnknownJob
from polyfleet.controller.store.base import Doc
from polyfleet.shared.schema import JobKind


def _unpolled(core: Controller, query: DeviceQuery) -> list[Doc]:
    """The registered Poly products the agents do not poll (of the query's site), as rows."""
    where = query.where
    # A filter on what only polled units have: no registered product can match, so the
    # registry is not read at all.
    if query.monitoring == "polled" or any(
        value is not None for value in (where.model, where.provider, where.health, where.firmware)
    ):
        return []
    inventory = core.inventory
    return [
        unpolled_row(asset)
        for asset in core.registry.assets(where.site)
        if not is_polled_model(asset.model) and inventory.find_device(asset.serial) is None
    ]


async def find_devices(core: Controller, caller: Caller, query: DeviceQuery) -> DeviceRows:
    """The device table's rows for ``query`` (filters, search, sort, page): the units agents
    report and the registered products they do not poll (``monitoring``)."""
    caller.require(Permission.READ)
    verdict_of: Callable[[str], Any] | None = None
    if query.flag is not None:
        verdict_of = await verdict_lookup(core)
    return query_devices(core.inventory, query, verdict_of, _unpolled(core, query))


async def device_table(
    core: Controller, caller: Caller, query: DeviceQuery
) -> tuple[DeviceRows, dict[str, tuple[str, ...]]]:
    """The device table's rows for ``query``, and each row's entitlement flags by serial."""
    caller.require(Permission.READ)
    verdict_of = await verdict_lookup(core)
    found = query_devices(core.inventory, query, verdict_of, _unpolled(core, query))
    flags: dict[str, tuple[str, ...]] = {}
    for row in found.rows:
        verdict = verdict_of(row["serial"])
        flags[row["serial"]] = verdict.flags if verdict is not None else ()
    return found, flags


def filter_choices(core: Controller, caller: Caller, *, site: str | None = None) -> dict[str, Any]:
    """What the device table's filters offer from what the inventory holds: the sites, the
    rooms (of ``site``) and the firmware versions reported."""
    caller.require(Permission.READ)
    inventory = core.inventory
    return {
        "sites": inventory.sites(),
        "rooms": inventory.rooms(site),
        "firmware": inventory.firmware_versions(),
    }


@dataclass(frozen=True, kw_only=True)
class DevicePage:
    """Everything one device's page shows."""

    detail: Doc
    #: The device's site as ``list_sites`` shows it (None: a site no longer there).
    site: Doc | None
    host: Doc | None
    cameras: Sequence[Doc | None]
    verdict: EntitlementVerdict | None
    plan: Plan | None
    plans: PlanCatalogue
    #: None while the ticket service is starting.
    tickets: Sequence[Ticket] | None
    jobs: Sequence[Doc]
    #: Retained reports, newest first.
    reports: Sequence[Doc]
    rollouts: Sequence[Doc]
    #: The rollout update under way for it (``RolloutService.update_under_way``), or None.
    updating: Doc | None = None
    #: Other admins' sessions open on the unit at its latest reading (not the agent's own).
    admin_sessions: Sequence[Doc] = ()
    #: Whether the unit's sessions were ever reported (else nothing can be said of them).
    admin_sessions_read: bool = False


async def device_page(core: Controller, caller: Caller, serial: str) -> DevicePage:
    """One device: its snapshot and links, verdict and plan, tickets, jobs, reports, rollouts."""
    caller.require(Permission.READ)
    inventory = core.inventory
    detail = inventory.device_detail(serial)
    verdict = (await verdict_lookup(core))(serial)
    plans = core.catalogues.plans
    plan = plans.plans.get(verdict.plan) if verdict is not None and verdict.plan else None
    service = core.tickets.service
    tickets = (
        None
        if service is None
        else [
            ticket
            for ticket in service.tickets()
            if ticket.serial == serial or serial in ticket.affected_serials
        ]
    )
    jobs = sorted(
        core.jobs.find(serial=serial),
        key=lambda job: str(job.get("created_at", "")),
        reverse=True,
    )
    return DevicePage(
        detail=detail,
        site=inventory.find_site(detail["site"]),
        host=_detail_or_none(core, detail.get("host_serial")),
        cameras=[_detail_or_none(core, camera) for camera in detail["cameras"]],
        verdict=verdict,
        plan=plan,
        plans=plans,
        tickets=tickets,
        jobs=jobs,
        reports=list(reversed(inventory.recent_reports(serial))),
        rollouts=core.rollouts.device_history(serial),
        updating=core.rollouts.update_under_way(serial),
        admin_sessions=core.admin_sessions.of(serial),
        admin_sessions_read=core.admin_sessions.has_read(serial),
    )


@dataclass(frozen=True, kw_only=True)
class AssetPage:
    """A registered unit no agent reports (a Poly product they do not poll, or one not seen
    yet), as its page shows it: the registry's facts, entitlement, what expires, tickets."""

    #: As ``GET /api/v1/assets`` lists it, with ``monitoring``.
    asset: Doc
    site: Doc | None
    verdict: EntitlementVerdict | None
    plan: Plan | None
    plans: PlanCatalogue
    #: Its rights that end within ``MAX_FORECAST_DAYS``, soonest first.
    expiries: Sequence[ForecastEvent]
    #: None while the ticket service is starting.
    tickets: Sequence[Ticket] | None


async def asset_page(core: Controller, caller: Caller, serial: str) -> AssetPage:
    """One registered unit that no agent reports; ``UnknownDevice`` when the registry does
    not hold it either."""
    caller.require(Permission.READ)
    asset = core.registry.asset(serial)
    if asset is None:
        raise UnknownDevice(serial)
    verdict = (await verdict_lookup(core))(serial)
    plans = core.catalogues.plans
    plan = plans.plans.get(verdict.plan) if verdict is not None and verdict.plan else None
    forecast = registry_forecast(core, entitlement_now(core), MAX_FORECAST_DAYS, site=asset.site)
    service = core.tickets.service
    return AssetPage(
        asset={**asset.to_doc(), "monitoring": monitoring(core, asset.serial, asset.model)},
        site=core.inventory.find_site(asset.site),
        verdict=verdict,
        plan=plan,
        plans=plans,
        expiries=[
            event for site in forecast.sites for event in site.events if event.serial == serial
        ],
        tickets=None if service is None else service.device_tickets(serial),
    )


def _detail_or_none(core: Controller, serial: str | None) -> Doc | None:
    if not serial:
        return None
    try:
        return core.inventory.device_detail(serial)
    except UnknownDevice:
        return None


def list_devices(core: Controller, caller: Caller, filters: Mapping[str, str | None]) -> list[Doc]:
    """Every device the plain filters select (site, model, provider, health, firmware...)."""
    caller.require(Permission.READ)
    return core.inventory.devices(DeviceFilter.parse(dict(filters)))


def device_detail(core: Controller, caller: Caller, serial: str) -> Doc:
    caller.require(Permission.READ)
    return core.inventory.device_detail(serial)


async def device_or_asset(core: Controller, caller: Caller, serial: str) -> Doc:
    """One device as ``GET /api/v1/devices/{serial}`` answers it: a reported unit's detail,
    or a registered Poly product the agents do not poll as the list shows it, with its
    entitlement and the registry's facts (nothing reported: no history, peripherals or
    reports). ``UnknownDevice`` when neither is known."""
    caller.require(Permission.READ)
    if core.inventory.find_device(serial) is not None:
        return core.inventory.device_detail(serial)
    asset = core.registry.asset(serial)
    if asset is None or is_polled_model(asset.model):
        raise UnknownDevice(serial)
    verdict = (await verdict_lookup(core))(serial)
    return {
        **unpolled_row(asset),
        "model_raw": "",
        "in_call": False,
        "uptime_s": None,
        "via": None,
        "collected_at": None,
        "first_seen": None,
        "peripherals": [],
        "cameras": [],
        "health_history": [],
        "reports": [],
        "entitlement": None if verdict is None else verdict.to_json(),
        "registry": asset.to_doc(),
    }


def device_sessions(core: Controller, caller: Caller, serial: str) -> Doc:
    """Other admins' sessions open on a reported unit at its latest reading, oldest first:
    ``{serial, read, sessions: [{user, role, address, kind, since, first_seen,
    outside_admin_networks}]}``. The unit's session ids are never given out (whoever holds
    one can act as that admin); ``read`` is false while no agent reported its sessions."""
    caller.require(Permission.READ)
    if core.inventory.find_device(serial) is None:
        raise UnknownDevice(serial)
    watch = core.admin_sessions
    return {
        "serial": serial,
        "read": watch.has_read(serial),
        "sessions": [
            {
                "user": session.get("user") or "",
                "role": session.get("role") or "",
                "address": session.get("address") or "",
                "kind": session.get("kind") or "other",
                "since": session.get("since"),
                "first_seen": session.get("first_seen"),
                "outside_admin_networks": bool(session.get("outside")),
            }
            for session in watch.of(serial)
        ],
    }


def device_reports(core: Controller, caller: Caller, serial: str) -> list[Doc]:
    caller.require(Permission.READ)
    return core.inventory.recent_reports(serial)


async def set_room(core: Controller, caller: Caller, serial: str, room: str | None) -> Doc:
    """Put a device in a room (or none: ``None`` or an empty name)."""
    caller.require(Permission.OPERATE)
    checked = display_name(room, field="room", allow_empty=True) if room is not None else None
    old = core.inventory.device(serial).get("room")
    device = await core.inventory.set_room(serial, checked or None)
    details = {"room": [old, device["room"]]}
    await record(
        core, caller, AuditAction.DEVICE_ROOM, f"device:{serial}", details, site=device["site"]
    )
    return device


async def move_device(core: Controller, caller: Caller, serial: str, site_id: str) -> Doc:
    """Move a device, and the E70 cameras hanging off it, to another site."""
    caller.require(Permission.ADMINISTER)
    old = core.inventory.device(serial)["site_id"]
    device = await core.inventory.move_device(serial, site_id)
    details = {"site": [old, site_id]}
    await record(core, caller, AuditAction.DEVICE_MOVE, f"device:{serial}", details, site=site_id)
    return device


def device_jobs(core: Controller, caller: Caller, serial: str) -> list[Doc]:
    caller.require(Permission.READ)
    core.inventory.device(serial)
    return core.jobs.find(serial=serial)


async def create_job(
    core: Controller, caller: Caller, serial: str, kind: JobKind, params: Mapping[str, Any]
) -> Doc:
    """Queue a job for the device's site agent; ``JobPending`` names a pending one of the kind."""
    caller.require(Permission.OPERATE)
    job = await core.jobs.enqueue(serial, kind, dict(params), created_by=caller.name)
    details = {"kind": job["kind"], "serial": job["serial"], "params": job["params"]}
    await record(
        core, caller, AuditAction.JOB_CREATE, f"job:{job['id']}", details, site=job["site_id"]
    )
    return job


async def cancel_job(core: Controller, caller: Caller, job_id: str) -> Doc:
    caller.require(Permission.OPERATE)
    job = await core.jobs.cancel(job_id, by=caller.name)
    details = {"kind": job["kind"], "serial": job["serial"]}
    await record(
        core, caller, AuditAction.JOB_CANCEL, f"job:{job_id}", details, site=job["site_id"]
    )
    return job


def job(core: Controller, caller: Caller, job_id: str) -> Doc:
    caller.require(Permission.READ)
    found = core.jobs.get(job_id)
    if found is None:
        raise UnknownJob(job_id)
    return found


def job_artifact(core: Controller, caller: Caller, job_id: str) -> Path:
    """Where a finished job's artifact (a diagnostics bundle...) is kept."""
    caller.require(Permission.READ)
    path = core.jobs.artifact_path(job_id)
    if path is None:
        raise NotFound(f"job {job_id!r} has no artifact", field="job_id")
    return path
