"""Ticket routes (``/api/v1/tickets``) and the background work that files and sends tickets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from polyfleet.controller.active import run_when_active
from polyfleet.controller.api import audit
from polyfleet.controller.core import TicketDesk
from polyfleet.controller.domain.admin_input import ContractNumberText, SerialText
from polyfleet.controller.domain.tickets import (
    ACTIONS,
    Ticket,
    TicketError,
    TicketMomentError,
    TicketStatus,
)
from polyfleet.controller.events import (
    AgentClockChanged,
    AgentOffline,
    AgentOnline,
    DeviceUnreachable,
    Event,
    SnapshotsIngested,
)
from polyfleet.controller.http.caller import who_and_where
from polyfleet.controller.http.errors import ApiError, read_model
from polyfleet.controller.http.spec import ADMINS, READERS, endpoint
from polyfleet.controller.keys import CORE, EVENT_BUS, METRICS
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.delivery import RESULTS
from polyfleet.controller.services.ticket_service import (
    TicketNotFound,
    TicketService,
    UnknownContract,
)
from polyfleet.controller.store.base import Doc
from polyfleet.shared.periodic import Periodic

log = logging.getLogger(__name__)

#: ``send`` (re)sends an open ticket; the rest are lifecycle steps.
VERBS = (*ACTIONS, "send")


TICKET_DESK = web.AppKey("ticket_desk", TicketDesk)


class TicketView(BaseModel):
    """A ticket as stored, plus what W5 still needs and its SLA deadlines."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    status: str
    fault: str
    serial: str | None = None
    contract_number: str | None = None
    plan: str | None = None
    missing: list[str] = Field(default_factory=list)
    sla: dict[str, str | None] | None = None
    #: How its messages fare: pending, retrying, sent or failed (null: none queued yet).
    delivery: str | None = None
    #: Why the last attempt failed, while retrying or once given up.
    delivery_error: str | None = None


class TicketList(BaseModel):
    tickets: list[TicketView]


class TicketDetail(TicketView):
    deliveries: list[dict[str, Any]] = Field(default_factory=list)


class TicketFill(BaseModel):
    """The data W5 requires, filled in by the admin: printable text, checked before storing."""

    model_config = ConfigDict(extra="forbid")

    serial: SerialText | None = None
    contract_number: ContractNumberText | None = None
    #: Take a contract number the asset registry does not hold for the serial.
    force: bool = False


class TicketActionBody(BaseModel):
    """Optional: when the step happened, if earlier than now (ISO 8601 with an offset)."""

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime | None = None


class DeliveryView(BaseModel):
    """One message of a ticket on one channel: pending (``retrying`` once it failed), sent, or
    failed (given up, with the reason in ``last_error``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    channel: str
    ticket_id: str
    purpose: str
    state: str
    attempts: int = 0
    last_error: str | None = None
    retrying: bool = False


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


#: States a delivery record can be listed in.
DELIVERY_STATES = ("pending", "retrying", "sent", "failed")


def _service(request: web.Request) -> TicketService:
    return request.app[TICKET_DESK].get()


def _ticket(service: TicketService, key: str) -> Ticket:
    try:
        return service.get(key)
    except TicketNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


def _listed(ticket: Ticket, states: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """The ticket's document with how its messages fare (``delivery``, ``delivery_error``)."""
    state, error = states.get(ticket.id, (None, None))
    return {**ticket.as_document(), "delivery": state, "delivery_error": error}


def _detail(service: TicketService, ticket: Ticket) -> dict[str, Any]:
    return {
        **_listed(ticket, service.delivery_states()),
        "deliveries": service.deliveries(ticket.id),
    }


@endpoint(
    summary="List fault tickets",
    roles=READERS,
    response=TicketList,
    query={"status": "only tickets in this status", "site": "only tickets of this site"},
    errors=(400,),
    tags=("tickets",),
)
async def list_tickets(request: web.Request) -> web.Response:
    service = _service(request)
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in TicketStatus}:
        known = ", ".join(s.value for s in TicketStatus)
        raise ApiError(400, "invalid", f"status: {status!r} is not one of {known}", "status")
    site = request.query.get("site")
    tickets = [t for t in service.tickets(status=status) if site is None or t.site == site]
    states = service.delivery_states()
    return web.json_response({"tickets": [_listed(t, states) for t in tickets]})


@endpoint(
    summary="Ticket messages by channel: waiting, retrying, sent or failed (with the reason)",
    roles=READERS,
    response=DeliveryList,
    query={
        "state": "only deliveries in this state (pending, retrying, sent, failed)",
        "ticket": "only this ticket's deliveries",
    },
    errors=(400,),
    tags=("tickets",),
)
async def list_deliveries(request: web.Request) -> web.Response:
    service = _service(request)
    state = request.query.get("state")
    if state is not None and state not in DELIVERY_STATES:
        known = ", ".join(DELIVERY_STATES)
        raise ApiError(400, "invalid", f"state: {state!r} is not one of {known}", "state")
    found = service.deliveries(request.query.get("ticket"), state=state)
    return web.json_response({"deliveries": found})


@endpoint(
    summary="One ticket with its deliveries",
    roles=READERS,
    response=TicketDetail,
    errors=(404,),
    tags=("tickets",),
)
async def show_ticket(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(_detail(service, _ticket(service, request.match_info["ticket_id"])))


@endpoint(
    summary="Fill in a held ticket's serial or contract number (W5); complete, it is sent",
    roles=ADMINS,
    request=TicketFill,
    response=TicketDetail,
    errors=(404, 409, 422),
    tags=("tickets",),
)
async def fill_ticket(request: web.Request) -> web.Response:
    service = _service(request)
    key = request.match_info["ticket_id"]
    _ticket(service, key)
    body = await read_model(request, TicketFill)
    actor, _ = who_and_where(request)
    by = actor.name + (f" (token {actor.token_id})" if actor.token_id else " (on the controller)")
    ticket = await fill_in(service, key, body, by=by)
    # What was given (force only when used), for the audit log.
    filled = body.model_dump(exclude_none=True, exclude_defaults=True)
    await audit.record(
        request, AuditAction.TICKET_FILL, f"ticket:{ticket.id}", filled, site=ticket.site
    )
    return web.json_response(_detail(service, ticket))


async def fill_in(
    service: TicketService, key: str, body: TicketFill, *, by: str | None = None
) -> Ticket:
    """Complete a held ticket (W5), as ``PATCH /api/v1/tickets/{id}`` and the dashboard do:
    404 for an unknown ticket, 409 when its state refuses it or when the asset registry
    lacks the contract number for the serial and ``force`` is not given."""
    _ticket(service, key)
    try:
        return await service.fill(
            key,
            serial=body.serial,
            contract_number=body.contract_number,
            by=by,
            force=body.force,
        )
    except UnknownContract as exc:
        raise ApiError(409, "unknown_contract", str(exc), "contract_number") from None
    except TicketError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


async def act_on(
    service: TicketService, key: str, verb: str, *, at: datetime | None = None
) -> Ticket:
    """One lifecycle step or a send, as ``POST /api/v1/tickets/{id}/{action}`` and the
    dashboard's buttons do: 404 for an unknown ticket or action, 409 when refused, 422
    when ``at`` (the step's moment, default now) is before an earlier step or ahead."""
    if verb not in VERBS:
        raise ApiError(
            404, "not_found", f"no ticket action {verb!r}; use one of {', '.join(VERBS)}"
        )
    _ticket(service, key)
    try:
        if verb == "send":
            return await service.resend(key)
        return await service.act(key, verb, at=at)
    except TicketMomentError as exc:
        raise ApiError(422, "invalid", str(exc), "at") from None
    except TicketError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


@endpoint(
    summary="Move a ticket along its lifecycle (ack, accept, shipped, received, returned, "
    "close) or send an open one; the body may date the step (at)",
    roles=ADMINS,
    request=TicketActionBody,
    response=TicketDetail,
    errors=(404, 409, 422),
    tags=("tickets",),
    # The body is optional: without it the step is dated now.
    extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TicketActionBody"}}
            },
        }
    },
)
async def ticket_action(request: web.Request) -> web.Response:
    service = _service(request)
    key = request.match_info["ticket_id"]
    verb = request.match_info["action"]
    at = None
    if request.body_exists:
        at = (await read_model(request, TicketActionBody)).at
    ticket = await act_on(service, key, verb, at=at)
    details = {"status": ticket.status.value}
    if at is not None:
        details["at"] = at.isoformat()
    await audit.record(
        request, AuditAction(f"ticket.{verb}"), f"ticket:{ticket.id}", details, site=ticket.site
    )
    return web.json_response(_detail(service, ticket))


def bundle_response(service: TicketService, ticket: Ticket) -> web.FileResponse:
    """The ticket's diagnostics bundle as a download (API and dashboard); 404 without one."""
    if ticket.bundle is None:
        reason = ticket.bundle_error or "not collected yet"
        raise ApiError(404, "not_found", f"ticket {ticket.id} has no diagnostics bundle: {reason}")
    path = service.bundle_dir / ticket.id / ticket.bundle.filename
    return web.FileResponse(
        path,
        headers={
            "Content-Type": ticket.bundle.content_type,
            "Content-Disposition": f'attachment; filename="{ticket.bundle.filename}"',
        },
    )


@endpoint(
    summary="The ticket's diagnostics bundle (W4)",
    roles=READERS,
    response_media="application/octet-stream",
    errors=(404,),
    tags=("tickets",),
)
async def ticket_bundle(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    return bundle_response(service, _ticket(service, request.match_info["ticket_id"]))


def register(app: web.Application) -> None:
    """Add the ticket routes and the background work (``ticket_context``)."""
    app[TICKET_DESK] = app[CORE].tickets
    # Detection, escalations and deliveries: on the active controller only.
    run_when_active(app, ticket_context)
    app.router.add_get("/api/v1/tickets", list_tickets)
    # Before the ticket routes: "deliveries" is not a ticket id (those are PF-...).
    app.router.add_get("/api/v1/tickets/deliveries", list_deliveries)
    app.router.add_get("/api/v1/tickets/{ticket_id}", show_ticket)
    app.router.add_patch("/api/v1/tickets/{ticket_id}", fill_ticket)
    app.router.add_get("/api/v1/tickets/{ticket_id}/bundle", ticket_bundle)
    app.router.add_post("/api/v1/tickets/{ticket_id}/{action}", ticket_action)


class TicketDeliveryCollector(Collector):
    """Ticket messages waiting, retrying and given up, and attempts by result, at scrape time."""

    def __init__(self, service: TicketService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        channels = sorted({*self._service.worker.channels, "email", "webhook"})
        waiting = GaugeMetricFamily(
            "polyfleet_ticket_deliveries",
            "Ticket messages not (yet) delivered, by channel and state (failed: given up, "
            "see GET /api/v1/tickets/deliveries?state=failed)",
            labels=["channel", "state"],
        )
        counts = Counter(
            (str(record.get("channel")), "retrying" if record.get("retrying") else record["state"])
            for record in self._service.deliveries()
            if record["state"] != "sent"
        )
        for channel in channels:
            for state in ("pending", "retrying", "failed"):
                waiting.add_metric([channel, state], counts[(channel, state)])
        yield waiting
        attempts = CounterMetricFamily(
            "polyfleet_ticket_delivery_attempts",
            "Delivery attempts of ticket messages since start, by channel and result",
            labels=["channel", "result"],
        )
        done = self._service.worker.stats.attempts
        for channel in channels:
            for result in RESULTS:
                attempts.add_metric([channel, result], done[(channel, result)])
        yield attempts


async def _feed(service: TicketService, events: list[Event]) -> None:
    """Events in order; the reports of consecutive batches go to the detector together."""
    reports: list[tuple[str | None, tuple[Doc, ...]]] = []
    for event in events:
        if isinstance(event, SnapshotsIngested):
            reports.append((event.site_id, event.documents))
            continue
        if reports:
            await service.on_documents(reports)
            reports = []
        if isinstance(event, DeviceUnreachable) and event.serial is not None:
            await service.on_device_unreachable(event.serial, site=event.site_id, at=event.at)
        elif isinstance(event, AgentOffline) and event.site_id is not None:
            await service.on_agent_offline(event.site_id, at=event.at)
        elif isinstance(event, AgentOnline) and event.site_id is not None:
            await service.on_agent_online(event.site_id, at=event.at)
        elif isinstance(event, AgentClockChanged) and event.site_id is not None:
            await service.on_agent_clock(event.site_id, state=event.state, skew_s=event.skew_s)
    if reports:
        await service.on_documents(reports)


def _ticker(service: TicketService) -> Periodic:
    """Hold times, reaction deadlines and escalations, looked at every check interval."""
    return Periodic(
        "ticket tick", service.tick, interval_s=service.settings.check_interval_s, logger=log
    )


async def ticket_context(app: web.Application) -> AsyncIterator[None]:
    """Background work for ``cleanup_ctx``: detection from events, delivery, escalation."""
    service = app[CORE].start_tickets()
    collector = TicketDeliveryCollector(service)
    app[METRICS].register(collector)
    tasks: list[asyncio.Task[None]] = []
    subscription = None
    if service.settings.enabled:
        # In batches: each call saves detector state durably once, however much it took in.
        subscription = app[EVENT_BUS].subscribe_batches(
            lambda events: _feed(service, events),
            kinds={
                SnapshotsIngested,
                DeviceUnreachable,
                AgentOffline,
                AgentOnline,
                AgentClockChanged,
            },
        )
        await service.resume()
        tasks = [
            asyncio.create_task(service.worker.run(), name="ticket-delivery"),
            asyncio.create_task(_ticker(service).run(), name="ticket-tick"),
        ]
    try:
        yield
    finally:
        if subscription is not None:
            subscription.cancel()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        app[METRICS].unregister(collector)
        await service.close()
        app[TICKET_DESK].service = None
