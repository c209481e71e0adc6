"""The device table (filters, search, sort, pages, CSV export) and one device's page."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Any

from aiohttp import web

from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.errors import InvalidInput
from polyfleet.controller.features import devices, maintenance
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.device_table import (
    CSV_COLUMNS,
    MONITORING,
    SORT_KEYS,
    DeviceQuery,
    DeviceRows,
    csv_row,
)
from polyfleet.controller.services.inventory import UnknownDevice
from polyfleet.controller.settings.web import MAX_PAGE_SIZE
from polyfleet.controller.web.render import render, site_zones, translator
from polyfleet.controller.web.security import admin_forms, dashboard_caller, page
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
    default = request.app[CORE].web.page_size
    per_text, page_text = request.query.get("per_page", ""), request.query.get("page", "")
    if per_text and (not per_text.isdigit() or not 1 <= int(per_text) <= MAX_PAGE_SIZE):
        raise InvalidInput("per_page", f"per_page must be a whole number 1..{MAX_PAGE_SIZE}")
    if page_text and (not page_text.isdigit() or int(page_text) < 1):
        raise InvalidInput("page", "page must be a whole number from 1")
    return (int(page_text) if page_text else 1), (int(per_text) if per_text else default)


def _options(request: web.Request) -> dict[str, Any]:
    """The choices of each filter: what the inventory holds, and the fixed ones."""
    choices = devices.filter_choices(
        request.app[CORE], dashboard_caller(request), site=request.query.get("site") or None
    )
    return {
        **choices,
        "models": [m.value for m in Model],
        "providers": [p.value for p in Provider],
        "health": [h.value for h in HealthState],
        "flags": list(FLAGS),
        "monitoring": list(MONITORING),
    }


@page("Devices: a filterable, sortable, paged table")
async def devices_page(request: web.Request) -> web.Response:
    error: str | None = None
    page_number, per_page = 1, request.app[CORE].web.page_size
    query = DeviceQuery()
    found = DeviceRows(rows=[], total=0)
    flags: dict[str, tuple[str, ...]] = {}
    try:
        page_number, per_page = _paging(request)
        query = DeviceQuery.parse(request.query)
        query = replace(query, offset=(page_number - 1) * per_page, limit=per_page)
        found, flags = await devices.device_table(
            request.app[CORE], dashboard_caller(request), query
        )
    except InvalidInput as exc:
        # The table stays, with the filter that cannot be read named above it.
        error = translator(request).gettext("{field}: {problem}", field=exc.field, problem=str(exc))
    pages = max(1, -(-found.total // per_page))
    options = _options(request)
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
            "options": options,
            "zones": site_zones(request, options["sites"]),
            "selected": {key: request.query.get(key, "") for key in request.query},
        },
    )


def _cell(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


@page("The device table's rows as CSV: every page of the current view, in its order")
async def devices_csv(request: web.Request) -> web.StreamResponse:
    query = replace(DeviceQuery.parse(request.query), offset=0, limit=None)
    found, flags = await devices.device_table(request.app[CORE], dashboard_caller(request), query)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for device in found.rows:
        row = [*csv_row(device), " ".join(flags[device["serial"]])]
        writer.writerow([_cell(value) for value in row])
    stamp = request.app[CORE].clock().strftime("%Y%m%d-%H%M")
    return web.Response(
        body=out.getvalue().encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="devices-{stamp}.csv"',
            "Cache-Control": "no-store",
        },
    )


@page("One device: snapshot, peripherals, health history, entitlement, tickets, jobs, reports")
async def device_page(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    core = request.app[CORE]
    try:
        found = await devices.device_page(core, dashboard_caller(request), serial)
    except UnknownDevice:
        # Registered but never reported (a Poly product the agents do not poll): its own page.
        return await _asset_page(request, serial)
    site = found.site or {}
    return render(
        request,
        "device.html",
        {
            "nav": "devices",
            "live": True,
            "d": found.detail,
            "zone": site.get("timezone") or request.app[CORE].web.timezone,
            "site": site,
            "host": found.host,
            "cameras": found.cameras,
            "verdict": found.verdict,
            "plan": found.plan,
            "plans": found.plans,
            "tickets": found.tickets,
            "jobs": found.jobs,
            "reports": found.reports,
            "rollouts": found.rollouts,
            "updating": found.updating,
            "admin_sessions": found.admin_sessions,
            "admin_sessions_read": found.admin_sessions_read,
            "timeline": timeline(found.detail["health_history"], core.clock()),
            "can_act": admin_forms(request),
            "maintenance": maintenance.device_maintenance(core, dashboard_caller(request), serial),
        },
    )


async def _asset_page(request: web.Request, serial: str) -> web.Response:
    found = await devices.asset_page(request.app[CORE], dashboard_caller(request), serial)
    site = found.site or {}
    return render(
        request,
        "asset.html",
        {
            "nav": "devices",
            "live": True,
            "a": found.asset,
            "site": site,
            "zone": site.get("timezone") or request.app[CORE].web.timezone,
            "verdict": found.verdict,
            "plan": found.plan,
            "plans": found.plans,
            "expiries": found.expiries,
            "tickets": found.tickets,
            "can_act": admin_forms(request),
        },
    )


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/devices", devices_page, allow_head=False, name="devices")
    router.add_get("/devices.csv", devices_csv, allow_head=False)
    router.add_get("/devices/{serial}", device_page, allow_head=False)
