"""Tickets opened by hand from the device page and the Agents and sites page (admins)."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.domain.tickets import ServiceNotIncluded
from polyfleet.controller.errors import Invalid
from polyfleet.controller.features import sites, tickets
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import dashboard_caller, form_of, page

#: The form's fields, as ``POST /api/v1/tickets`` names them.
FIELDS = ("serial", "site", "category", "summary", "description", "contact")


def _refused(request: web.Request, values: dict[str, str], exc: Invalid) -> web.Response:
    """The form again, as it was sent, under the refusal in words."""
    core, caller = request.app[CORE], dashboard_caller(request)
    return render(
        request,
        "ticket_new.html",
        {
            "nav": "tickets",
            "subject": tickets.ticket_subject(
                core, caller, serial=values["serial"] or None, site=values["site"] or None
            ),
            "sites": sites.list_sites(core, caller),
            "values": values,
            "refusal": exc if isinstance(exc, ServiceNotIncluded) else None,
            "error": translator(request).refusal(exc),
        },
        status=exc.status,
    )


@page("Open a ticket by hand for a unit or a whole site (admins)", roles=ADMINS)
async def open_ticket(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    values = {name: str(form.get(name) or "") for name in FIELDS}
    try:
        opened = await tickets.open_ticket(
            request.app[CORE],
            dashboard_caller(request),
            category=values["category"],
            summary=values["summary"],
            description=values["description"],
            serial=values["serial"] or None,
            site=values["site"] or None,
            contact=values["contact"] or None,
        )
    except Invalid as exc:
        # What the contract or the checks refuse is said on the form, which keeps its text.
        return _refused(request, values, exc)
    raise web.HTTPSeeOther(f"/tickets/{opened['id']}")


def register(app: web.Application) -> None:
    app.router.add_post("/tickets/new", open_ticket)
