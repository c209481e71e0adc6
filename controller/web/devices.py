"""The device table (filters, search, sort, pages, CSV export) and one device's page."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Any

from aiohttp import web

from polyfleet.controller.api.entitlement import CATALOGUES, verdict_lookup
from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.errors import InvalidInput
from polyfleet.controller.features.rollouts import device_rollouts
from polyfleet.controller.keys import CLOCK, CORE, INVENTORY, JOBS, STORE
from polyfleet.controller.services.device_table import (
    CSV_COLUMNS,
    SORT_KEYS,
    DeviceQuery,
    DeviceRows,
    csv_row,
    query_devices,
)
from polyfleet.controller.services.inventory import UnknownDevice
from polyfleet.controller.store.base import DEVICES, SITES, Doc
from polyfleet.controller.web.keys import SETTINGS
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import dashboard_caller, page
from polyfleet.controller.web.settings import MAX_PAGE_SIZE
from polyfleet.controller.web.timeline import timeline
from polyfleet.shared.schema import HealthState, Model, Provider

#: Page sizes offered in the table's footer.
PAGE_SIZES = (25, 50, 100, 200, 500)
#: The export adds the entitlement flags to the CLI's device columns.
EXPORT_COLUMNS = (*CSV_COLUMNS, "entitlement_flags")
#: A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _paging(request: web.Request) -> tuple[int, int]:
    """(page, per page) from the address; InvalidInput names a bad value."""
    default = request.app[SETTINGS].page_size
    per_text, page_text = request.query.get("per_page", ""), request.query.get("page", "")
    if per_text and (not per_text.isdigit() or not 1 <= int(per_text) <= MAX_PAGE_SIZE):
        raise InvalidInput("per_page", f"per_page must be a whole number 1..{MAX_PAGE_SIZE}")
    if page_text and (not page_text.isdigit() or int(page_text) < 1):
        raise InvalidInput("page", "page must be a whole number from 1")
    return (int(page_text) if page_text else 1), (int(per_text) if per_text else default)


def _options(request: web.Request, sites: list[Doc]) -> dict[str, Any]:
    """The choices of each filter, from what the inventory holds."""
    site = request.query.get("site") or None
    rooms: set[str] = set()
    versions: set[str] = set()
    for device in request.app[STORE].scan(DEVICES).values():
        if (site is None or device.get("site_id") == site) and device.get("room"):
            rooms.add(str(device["room"]))
        version = (device.get("firmware") or {}).get("version")
        if version:
            versions.add(str(version))
    return {
        "sites": sites,
        "rooms": sorted(rooms, key=str.casefold),
        "models": [m.value for m in Model],
        "providers": [p.value for p in Provider],
        "health": [h.value for h in HealthState],
        "firmware": sorted(versions),
        "flags": list(FLAGS),
    }


@page("Devices: a filterable, sortable, paged table")
async def devices_page(request: web.Request) -> web.Response:
    error: str | None = None
    page_number, per_page = 1, request.app[SETTINGS].page_size
    query = DeviceQuery()
    found = DeviceRows(rows=[], total=0)
    verdict_of = await verdict_lookup(request.app)
    try:
        page_number, per_page = _paging(request)
        query = DeviceQuery.parse(request.query)
        query = replace(query, offset=(page_number - 1) * per_page, limit=per_page)
        found = query_devices(request.app[INVENTORY], query, verdict_of)
    except InvalidInput as exc:
        error = translator(request).gettext("{field}: {problem}", field=exc.field, problem=str(exc))
    flags: dict[str, tuple[str, ...]] = {}
    for row in found.rows:
        verdict = verdict_of(row["serial"])
        flags[row["serial"]] = verdict.flags if verdict is not None else ()
    pages = max(1, -(-found.total // per_page))
    sites = request.app[INVENTORY].sites()
    zones = {site["id"]: site["timezone"] for site in sites}
    return render(
        request,
        "devices.html",
        {
            "nav": "devices",
            "live": True,
            "error": error,
            "rows": found.rows,
            "total": found.total,
            "flags": flags,
            "query": query,
            "sort_keys": SORT_KEYS,
            "page": page_number,
            "pages": pages,
            "per_page": per_page,
            "page_sizes": PAGE_SIZES,
            "options": _options(request, sites),
            "zones": zones,
            "selected": {key: request.query.get(key, "") for key in request.query},
        },
    )


def _cell(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


@page("The device table's rows as CSV: every page of the current view, in its order")
async def devices_csv(request: web.Request) -> web.StreamResponse:
    query = replace(DeviceQuery.parse(request.query), offset=0, limit=None)
    verdict_of = await verdict_lookup(request.app)
    found = query_devices(request.app[INVENTORY], query, verdict_of)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for device in found.rows:
        verdict = verdict_of(device["serial"])
        row = [*csv_row(device), " ".join(verdict.flags if verdict is not None else ())]
        writer.writerow([_cell(value) for value in row])
    stamp = request.app[CLOCK]().strftime("%Y%m%d-%H%M")
    return web.Response(
        body=out.getvalue().encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="devices-{stamp}.csv"',
            "Cache-Control": "no-store",
        },
    )


def _device_or_none(request: web.Request, serial: str | None) -> Doc | None:
    if not serial:
        return None
    try:
        detail: Doc = request.app[INVENTORY].device_detail(serial)
    except UnknownDevice:
        return None
    return detail


@page("One device: snapshot, peripherals, health history, entitlement, tickets, jobs, reports")
async def device_page(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    app = request.app
    detail = app[INVENTORY].device_detail(serial)
    site = app[STORE].get(SITES, detail["site"]) or {}
    verdict = (await verdict_lookup(app))(serial)
    plans = app[CATALOGUES].plans
    plan = plans.plans.get(verdict.plan) if verdict is not None and verdict.plan else None
    service = app[CORE].tickets.service
    tickets = service.device_tickets(serial) if service is not None else None
    reports = app[INVENTORY].recent_reports(serial)
    rollouts = device_rollouts(app[CORE], dashboard_caller(request), serial)
    now = app[CLOCK]()
    return render(
        request,
        "device.html",
        {
            "nav": "devices",
            "live": True,
            "d": detail,
            "zone": site.get("timezone") or app[SETTINGS].timezone,
            "site": site,
            "host": _device_or_none(request, detail.get("host_serial")),
            "cameras": [_device_or_none(request, camera) for camera in detail["cameras"]],
            "verdict": verdict,
            "plan": plan,
            "plans": plans,
            "tickets": tickets,
            "jobs": sorted(
                app[JOBS].find(serial=serial),
                key=lambda job: str(job.get("created_at", "")),
                reverse=True,
            ),
            "reports": list(reversed(reports)),
            "rollouts": rollouts,
            "timeline": timeline(detail["health_history"], now),
        },
    )


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/devices", devices_page, allow_head=False, name="devices")
    router.add_get("/devices.csv", devices_csv, allow_head=False)
    router.add_get("/devices/{serial}", device_page, allow_head=False)
