"""Ticket routes (``/api/v1/tickets``) and the background work that files and sends tickets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from polyfleet.controller.active import run_when_active
from polyfleet.controller.domain.admin_input import ContractNumberText, SerialText
from polyfleet.controller.domain.tickets import TicketCategory
from polyfleet.controller.events import (
    AgentClockChanged,
    AgentOffline,
    AgentOnline,
    DeviceUnreachable,
    Event,
    SnapshotsIngested,
)
from polyfleet.controller.features import tickets
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.errors import read_model
from polyfleet.controller.http.files import download
from polyfleet.controller.http.spec import ADMINS, READERS, Param, endpoint
from polyfleet.controller.keys import CORE, METRICS
from polyfleet.controller.services.delivery import RESULTS
from polyfleet.controller.services.ticket_service import TicketService
from polyfleet.controller.store.base import Doc
from polyfleet.shared.periodic import Periodic

log = logging.getLogger(__name__)

#: The ticket desk under its older key, for handlers not yet reading ``app[CORE].tickets``.


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
    """What the desk requires, filled in by the admin (W5, W2, RMA): printable text,
    checked before storing; the keys are the names ``missing`` lists."""

    model_config = ConfigDict(extra="forbid")

    serial: SerialText | None = None
    contract_number: ContractNumberText | None = None
    #: Take a contract number the asset registry does not hold for the serial.
    force: bool = False
    contact_name: str | None = Field(default=None, max_length=256)
    contact_phone: str | None = Field(default=None, max_length=256)
    contact_email: str | None = Field(default=None, max_length=256)
    address_street: str | None = Field(default=None, max_length=256)
    address_postal_code: str | None = Field(default=None, max_length=256)
    address_city: str | None = Field(default=None, max_length=256)
    address_country: str | None = Field(default=None, max_length=256)


class TicketOpen(BaseModel):
    """A ticket opened by hand: the unit's ``serial`` (or the ``site`` for a site-wide
    fault), what it asks for (``category``: fault, support, configuration), a one-line
    ``summary``, a ``description`` of any length and lines, and optionally the ``contact``
    the desk should ask for instead of the site's reporter."""

    model_config = ConfigDict(extra="forbid")

    serial: str | None = Field(default=None, max_length=256)
    site: str | None = Field(default=None, max_length=256)
    category: TicketCategory
    summary: str = Field(max_length=1000)
    description: str = Field(default="", max_length=20000)
    contact: str | None = Field(default=None, max_length=256)


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


@endpoint(
    summary="List fault tickets",
    roles=READERS,
    response=TicketList,
    query={"status": "only tickets in this status", "site": "only tickets of this site"},
    errors=(400,),
    tags=("tickets",),
)
async def list_tickets(request: web.Request) -> web.Response:
    found = tickets.list_tickets(
        request.app[CORE],
        caller(request),
        status=request.query.get("status"),
        site=request.query.get("site"),
    )
    return web.json_response({"tickets": found})


@endpoint(
    summary="Open a ticket by hand: a fault the agents cannot see, or the technical support or "
    "configuration help the unit's plan includes (refused, naming the plan, when it does not)",
    roles=ADMINS,
    request=TicketOpen,
    response=TicketDetail,
    response_status=201,
    errors=(400, 404, 422),
    tags=("tickets",),
)
async def open_ticket(request: web.Request) -> web.Response:
    body = await read_model(request, TicketOpen)
    opened = await tickets.open_ticket(
        request.app[CORE],
        caller(request),
        category=body.category.value,
        summary=body.summary,
        description=body.description,
        serial=body.serial,
        site=body.site,
        contact=body.contact,
    )
    return web.json_response(opened, status=201)


@endpoint(
    summary="Ticket messages by channel: waiting, retrying, sent or failed (with the reason)",
    roles=READERS,
    response=DeliveryList,
    query={
        "state": Param(
            "only deliveries in this state",
            {"type": "string", "enum": ["pending", "retrying", "sent", "failed"]},
        ),
        "ticket": "only this ticket's deliveries",
    },
    errors=(400,),
    tags=("tickets",),
)
async def list_deliveries(request: web.Request) -> web.Response:
    found = tickets.list_deliveries(
        request.app[CORE],
        caller(request),
        ticket=request.query.get("ticket"),
        state=request.query.get("state"),
    )
    return web.json_response({"deliveries": found})


@endpoint(
    summary="One ticket with its deliveries",
    roles=READERS,
    response=TicketDetail,
    errors=(404,),
    tags=("tickets",),
)
async def show_ticket(request: web.Request) -> web.Response:
    key = request.match_info["ticket_id"]
    return web.json_response(tickets.ticket_detail(request.app[CORE], caller(request), key))


@endpoint(
    summary="Fill in what a held ticket lacks (serial, contract number, the reporter's contact, "
    "the delivery address); complete, it is sent",
    roles=ADMINS,
    request=TicketFill,
    response=TicketDetail,
    errors=(404, 409, 422),
    tags=("tickets",),
)
async def fill_ticket(request: web.Request) -> web.Response:
    body = await read_model(request, TicketFill)
    filled = await tickets.fill_ticket(
        request.app[CORE],
        caller(request),
        request.match_info["ticket_id"],
        serial=body.serial,
        contract_number=body.contract_number,
        force=body.force,
        details=body.model_dump(exclude={"serial", "contract_number", "force"}, exclude_none=True),
    )
    return web.json_response(filled)


@endpoint(
    summary="Move a ticket to a next step of its lifecycle (ack, accept, shipped, received, "
    "returned, close: those its status and kind allow, else 409 saying why) or send an open "
    "one; the body may date the step (at)",
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
    at = None
    if request.body_exists:
        at = (await read_model(request, TicketActionBody)).at
    done = await tickets.act_on_ticket(
        request.app[CORE],
        caller(request),
        request.match_info["ticket_id"],
        request.match_info["action"],
        at=at,
    )
    return web.json_response(done)


@endpoint(
    summary="The ticket's diagnostics bundle (W4)",
    roles=READERS,
    response_media="application/octet-stream",
    errors=(404,),
    tags=("tickets",),
)
async def ticket_bundle(request: web.Request) -> web.StreamResponse:
    key = request.match_info["ticket_id"]
    bundle = tickets.ticket_bundle(request.app[CORE], caller(request), key)
    return download(bundle.path, filename=bundle.filename, content_type=bundle.content_type)


def register(app: web.Application) -> None:
    """Add the ticket routes and the background work (``ticket_context``)."""
    # Detection, escalations and deliveries: on the active controller only.
    run_when_active(app, ticket_context)
    app.router.add_get("/api/v1/tickets", list_tickets)
    app.router.add_post("/api/v1/tickets", open_ticket)
    # Before the ticket routes: "deliveries" is not a ticket id (those are PF-...).
    app.router.add_get("/api/v1/tickets/deliveries", list_deliveries)
    app.router.add_get("/api/v1/tickets/{ticket_id}", show_ticket)
    # The deliveries list takes no PATCH: a 405 there names only GET and HEAD in Allow.
    app.router.add_patch("/api/v1/tickets/{ticket_id:(?!deliveries$)[^{}/]+}", fill_ticket)
    app.router.add_get("/api/v1/tickets/{ticket_id}/bundle", ticket_bundle)
    # A ticket's bundle takes no POST: a 405 there names only GET and HEAD in Allow.
    app.router.add_post("/api/v1/tickets/{ticket_id}/{action:(?!bundle$)[^{}/]+}", ticket_action)


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
        subscription = app[CORE].bus.subscribe_batches(
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
        app[CORE].tickets.service = None
