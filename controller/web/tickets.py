"""Tickets: open and recent ones with their SLA clocks; one ticket with its evidence and actions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from polyfleet.controller.api.tickets import (
    TICKET_DESK,
    TicketFill,
    act_on,
    bundle_response,
    fill_in,
)
from polyfleet.controller.domain.tickets import ACTIVE, TicketStatus, note_text
from polyfleet.controller.http.errors import ApiError, validate
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CLOCK, INVENTORY, STORE
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.overview import ticket_urgency, urgent_tickets
from polyfleet.controller.services.ticket_service import TicketNotFound, TicketService
from polyfleet.controller.store.base import SITES
from polyfleet.controller.web.keys import SESSION, SETTINGS
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import audit_action, form_of, page

#: Closed tickets stay on the list this long.
RECENT = timedelta(days=7)
#: Actions that ask for a confirmation first (they cannot be undone).
CONFIRMED = frozenset({"close"})


def _service(request: web.Request) -> TicketService:
    service = request.app[TICKET_DESK].service
    if service is None:
        raise ApiError(503, "tickets_unavailable", "the ticket service is starting")
    return service


def _zones(request: web.Request) -> dict[str, str]:
    default = request.app[SETTINGS].timezone
    return {
        site_id: str(site.get("timezone") or default)
        for site_id, site in request.app[STORE].scan(SITES).items()
    }


@page("Tickets: open ones by urgency with their SLA clocks, and recently closed ones")
async def tickets_page(request: web.Request) -> web.Response:
    service = _service(request)
    now = request.app[CLOCK]()
    site = request.query.get("site") or None
    tickets = [t for t in service.tickets() if site is None or t.site == site]
    active = urgent_tickets(tickets, now)
    closed = [
        t
        for t in tickets
        if t.status is TicketStatus.CLOSED
        and t.closed_at is not None
        and now - t.closed_at < RECENT
    ]
    return render(
        request,
        "tickets.html",
        {
            "nav": "tickets",
            "live": True,
            "active": active,
            "closed": closed,
            "sites": request.app[INVENTORY].sites(),
            "site": site,
            "zones": _zones(request),
        },
    )


def _ticket_page(
    request: web.Request,
    service: TicketService,
    key: str,
    *,
    error: str | None = None,
    status: int = 200,
    confirm: str | None = None,
) -> web.Response:
    try:
        ticket = service.get(key)
    except TicketNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    now = request.app[CLOCK]()
    urgency, clock = ticket_urgency(ticket, now) if ticket.status in ACTIVE else ("", None)
    t = translator(request)
    zone = _zones(request).get(ticket.site or "", request.app[SETTINGS].timezone)
    session = request[SESSION]
    actions = ticket.allowed_actions()
    if ticket.status is TicketStatus.OPEN:
        actions = ["send", *actions]
    return render(
        request,
        "ticket.html",
        {
            "nav": "tickets",
            "live": error is None and confirm is None,
            "tk": ticket,
            "sla": ticket.sla(),
            "urgency": urgency,
            "clock": clock,
            "zone": zone,
            "notes": [(note.at, note_text(note, t.language)) for note in reversed(ticket.notes)],
            "deliveries": service.deliveries(ticket.id),
            "actions": actions if session is not None and session.principal.role in ADMINS else [],
            "confirm_needed": CONFIRMED,
            "done": request.query.get("done"),
            "error": error,
            "confirm": confirm,
        },
        status=status,
    )


@page("One ticket: SLA deadlines, evidence, diagnostics bundle, history and actions")
async def ticket_page(request: web.Request) -> web.Response:
    return _ticket_page(request, _service(request), request.match_info["ticket_id"])


@page("Move a ticket along its lifecycle or send it (admins)", roles=ADMINS)
async def ticket_action(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    key = request.match_info["ticket_id"]
    form = await form_of(request)
    verb = str(form.get("action") or "")
    if verb in CONFIRMED and form.get("confirmed") != "1":
        # Without JavaScript nobody asked yet: the page asks, and the answer posts again.
        return _ticket_page(request, service, key, confirm=verb)
    try:
        ticket = await act_on(service, key, verb)
    except ApiError as exc:
        if exc.status != 409:
            raise
        return _ticket_page(request, service, key, error=exc.message, status=409)
    details = {"status": ticket.status.value}
    await audit_action(
        request, AuditAction(f"ticket.{verb}"), f"ticket:{ticket.id}", details, site=ticket.site
    )
    raise web.HTTPSeeOther(f"/tickets/{key}?done={verb}")


@page("Fill in a held ticket's serial or contract number (admins)", roles=ADMINS)
async def ticket_fill(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    key = request.match_info["ticket_id"]
    form = await form_of(request)
    serial, contract = form.get("serial"), form.get("contract_number")
    filled: dict[str, Any] = {
        name: value
        for name, value in (("serial", serial), ("contract_number", contract))
        if isinstance(value, str)
    }
    if form.get("force") == "1":
        filled["force"] = True
    session = request[SESSION]
    assert session is not None  # an admin page: the security middleware saw a session
    principal = session.principal
    by = f"{principal.name or principal.token_id} (token {principal.token_id}, dashboard)"
    try:
        # The API's own model: the same limits on what a serial or contract number may be.
        ticket = await fill_in(service, key, validate(TicketFill, dict(filled)), by=by)
    except ApiError as exc:
        if exc.status not in (409, 422):
            raise
        return _ticket_page(request, service, key, error=exc.message, status=exc.status)
    await audit_action(
        request, AuditAction.TICKET_FILL, f"ticket:{ticket.id}", filled, site=ticket.site
    )
    raise web.HTTPSeeOther(f"/tickets/{key}?done=fill")


@page("A ticket's diagnostics bundle")
async def ticket_bundle(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    try:
        ticket = service.get(request.match_info["ticket_id"])
    except TicketNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return bundle_response(service, ticket)


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/tickets", tickets_page, allow_head=False, name="tickets")
    router.add_get("/tickets/{ticket_id}", ticket_page, allow_head=False)
    router.add_post("/tickets/{ticket_id}/action", ticket_action)
    router.add_post("/tickets/{ticket_id}/fill", ticket_fill)
    router.add_get("/tickets/{ticket_id}/bundle", ticket_bundle, allow_head=False)
