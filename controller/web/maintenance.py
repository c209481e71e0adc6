"""Maintenance of one unit from its page: add a window in the site's time, end one (admins)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from aiohttp import web

from polyfleet.controller.domain.maintenance import MaintenanceOverlap, MaintenanceRefused
from polyfleet.controller.errors import Conflict, Invalid, InvalidInput, Refused
from polyfleet.controller.features import devices, maintenance, sites
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, translator, zone
from polyfleet.controller.web.security import dashboard_caller, form_of, page

#: The form's fields: the bounds as a browser's ``datetime-local`` sends them, and why.
FIELDS = ("from", "until", "reason")


def _device_zone(request: web.Request, serial: str) -> str:
    """The time zone the unit's page shows times in: its site's."""
    core, caller = request.app[CORE], dashboard_caller(request)
    site = sites.site(core, caller, str(devices.device_detail(core, caller, serial)["site"]))
    return str(site.get("timezone") or core.web.timezone)


def _moment(request: web.Request, field: str, text: str, zone_name: str) -> datetime | None:
    """A ``datetime-local`` value read as wall time in ``zone_name``; None when empty."""
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        problem = translator(request).gettext("not a date and time")
        raise InvalidInput(field, f"{field}: {problem} ({text[:40]!r})") from None
    if found.tzinfo is None:
        found = found.replace(tzinfo=zone(zone_name))
    return found


def _refused(
    request: web.Request, serial: str, zone_name: str, values: dict[str, str], exc: Refused
) -> web.Response:
    return render(
        request,
        "maintenance_new.html",
        {
            "nav": "devices",
            "d": devices.device_detail(request.app[CORE], dashboard_caller(request), serial),
            "zone": zone_name,
            "values": values,
            "why": exc.why if isinstance(exc, MaintenanceRefused) else "",
            "other": exc.other if isinstance(exc, MaintenanceOverlap) else None,
            "error": translator(request).refusal(exc),
        },
        status=exc.status,
    )


@page("Put a unit into maintenance from its page (admins)", roles=ADMINS)
async def add_window(request: web.Request) -> web.StreamResponse:
    serial = request.match_info["serial"]
    form = await form_of(request)
    values = {name: str(form.get(name) or "") for name in FIELDS}
    zone_name = _device_zone(request, serial)
    try:
        starts = _moment(request, "from", values["from"], zone_name) or request.app[CORE].clock()
        await maintenance.add_maintenance(
            request.app[CORE],
            dashboard_caller(request),
            serial=serial,
            starts=starts,
            ends=_moment(request, "until", values["until"], zone_name),
            reason=values["reason"],
        )
    except (Invalid, Conflict, InvalidInput) as exc:
        # Said beside the form, which keeps what was typed.
        return _refused(request, serial, zone_name, values, exc)
    raise web.HTTPSeeOther(f"/devices/{quote(serial, safe='')}#maintenance")


@page("End a maintenance window from a unit's page (admins)", roles=ADMINS)
async def end_window(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    serial = str(form.get("serial") or "")
    await maintenance.end_maintenance(
        request.app[CORE], dashboard_caller(request), request.match_info["window_id"]
    )
    back = f"/devices/{quote(serial, safe='')}#maintenance" if serial else "/"
    raise web.HTTPSeeOther(back)


def register(app: web.Application) -> None:
    app.router.add_post("/devices/{serial}/maintenance", add_window)
    app.router.add_post("/maintenance/{window_id}/end", end_window)
