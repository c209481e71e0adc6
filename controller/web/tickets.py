"""Tickets: open and recent ones with their SLA clocks; one ticket with its evidence and actions."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.domain.tickets import note_text
from polyfleet.controller.errors import Conflict, Invalid, InvalidInput
from polyfleet.controller.features import sites, tickets
from polyfleet.controller.http.files import download
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, site_zones, translator
from polyfleet.controller.web.security import (
    act_from_page,
    button_state,
    dashboard_caller,
    form_of,
    page,
)

#: Actions that ask for a confirmation first (they cannot be undone).
CONFIRMED = frozenset({"close"})


@page("Tickets: searched, filtered and sorted, each with its age and SLA clock")
async def tickets_page(request: web.Request) -> web.Response:
    core, caller = request.app[CORE], dashboard_caller(request)
    error: str | None = None
    query = tickets.BoardQuery()
    try:
        query = tickets.BoardQuery.parse(request.query)
    except InvalidInput as exc:
        # The list stays, unfiltered, with the parameter that cannot be read named above it.
        error = translator(request).gettext("{field}: {problem}", field=exc.field, problem=str(exc))
    board = tickets.ticket_board(core, caller, query)
    found = sites.list_sites(core, caller)
    return render(
        request,
        "tickets.html",
        {
            "nav": "tickets",
            "live": True,
            "error": error,
            "board": board,
            "query": query,
            "statuses": tickets.STATUSES,
            "kinds": tickets.KINDS,
            "urgencies": tickets.URGENCY_LEVELS,
            "sites": found,
            "zones": site_zones(request, found),
        },
    )


def _ticket_page(
    request: web.Request,
    key: str,
    *,
    error: str | None = None,
    status: int = 200,
    confirm: str | None = None,
) -> web.Response:
    core, caller = request.app[CORE], dashboard_caller(request)
    view = tickets.ticket_view(core, caller, key)
    ticket = view.ticket
    t = translator(request)
    found = sites.list_sites(core, caller)
    zones = site_zones(request, found)
    zone = zones.get(ticket.site or "", request.app[CORE].web.timezone)
    # The site's name as it is now (a ticket keeps the one it was filed with, if any).
    names = {str(site["id"]): str(site.get("name") or site["id"]) for site in found}
    return render(
        request,
        "ticket.html",
        {
            "nav": "tickets",
            **button_state(request, error=error, confirm=confirm),
            "tk": ticket,
            "site_name": names.get(ticket.site or "", ticket.site_name or ticket.site),
            "sla": ticket.sla(),
            "urgency": view.urgency,
            "clock": view.clock,
            "zone": zone,
            "notes": [(note.at, note_text(note, t.language)) for note in reversed(ticket.notes)],
            "deliveries": view.deliveries,
            "actions": view.actions,
            "confirm_needed": CONFIRMED,
        },
        status=status,
    )


@page("One ticket: SLA deadlines, evidence, diagnostics bundle, history and actions")
async def ticket_page(request: web.Request) -> web.Response:
    return _ticket_page(request, request.match_info["ticket_id"])


@page("Move a ticket along its lifecycle or send it (admins)", roles=ADMINS)
async def ticket_action(request: web.Request) -> web.StreamResponse:
    key = request.match_info["ticket_id"]
    form = await form_of(request)
    verb = str(form.get("action") or "")

    async def act() -> None:
        await tickets.act_on_ticket(request.app[CORE], dashboard_caller(request), key, verb)

    return await act_from_page(request, _ticket_page, key, verb, act, ask_first=verb in CONFIRMED)


@page("Fill in a held ticket's serial or contract number (admins)", roles=ADMINS)
async def ticket_fill(request: web.Request) -> web.StreamResponse:
    key = request.match_info["ticket_id"]
    form = await form_of(request)
    serial, contract = form.get("serial"), form.get("contract_number")

    async def fill() -> None:
        await tickets.fill_ticket(
            request.app[CORE],
            dashboard_caller(request),
            key,
            serial=serial if isinstance(serial, str) else None,
            contract_number=contract if isinstance(contract, str) else None,
            force=form.get("force") == "1",
        )

    # An invalid value is shown on the ticket's own page too, above the form to correct.
    return await act_from_page(request, _ticket_page, key, "fill", fill, shown=(Conflict, Invalid))


@page("A ticket's diagnostics bundle")
async def ticket_bundle(request: web.Request) -> web.StreamResponse:
    key = request.match_info["ticket_id"]
    bundle = tickets.ticket_bundle(request.app[CORE], dashboard_caller(request), key)
    return download(bundle.path, filename=bundle.filename, content_type=bundle.content_type)


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/tickets", tickets_page, allow_head=False, name="tickets")
    router.add_get("/tickets/{ticket_id}", ticket_page, allow_head=False)
    router.add_post("/tickets/{ticket_id}/action", ticket_action)
    router.add_post("/tickets/{ticket_id}/fill", ticket_fill)
    router.add_get("/tickets/{ticket_id}/bundle", ticket_bundle, allow_head=False)
