"""``GET /api/v1/overview``: the numbers of the dashboard's overview, for scripts and checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from polyfleet.controller.api.entitlement import CATALOGUES, VERDICTS, registry_forecast
from polyfleet.controller.api.rollouts import ROLLOUTS
from polyfleet.controller.api.tickets import TICKET_DESK
from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.entitlement import EXPIRY_HORIZONS
from polyfleet.controller.http.spec import READERS, endpoint
from polyfleet.controller.keys import CLOCK, STORE
from polyfleet.controller.services import entitlement as entitlement_service
from polyfleet.controller.services.overview import OverviewInputs, build_overview
from polyfleet.controller.store.base import DEVICES, EVENTS, SITES

State = Literal["fault", "degraded", "unreachable", "ok"]
#: Rollouts the overview shows: those that move, or may move again.
ROLLOUTS_UNDER_WAY = ("running", "paused", "halted")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthCounts(_Out):
    fault: int
    degraded: int
    unreachable: int
    ok: int


class AttentionOut(_Out):
    serial: str
    model: str | None
    state: str


class RoomTile(_Out):
    room: str | None
    devices: int
    worst: State
    health: HealthCounts
    attention: list[AttentionOut]


class SiteTiles(_Out):
    id: str
    name: str
    timezone: str
    agent_online: bool | None
    devices: int
    worst: State
    health: HealthCounts
    rooms: list[RoomTile]


class ClockOut(_Out):
    name: Literal["reaction", "delivery", "return"]
    due: datetime
    seconds_left: int


class UrgentTicket(_Out):
    id: str
    kind: str
    status: str
    fault: str
    serial: str | None
    model: str | None
    site: str | None
    room: str | None
    plan: str | None
    missing: list[str]
    urgency: Literal["overdue", "due_soon", "running", "held", "waiting"]
    clock: ClockOut | None


class UrgencyCounts(_Out):
    overdue: int
    due_soon: int
    running: int
    held: int
    waiting: int


class TicketsOut(_Out):
    active: int
    counts: UrgencyCounts
    items: list[UrgentTicket]


class FirmwareRow(_Out):
    model: str
    provider: str
    version: str | None
    devices: int
    current: int
    behind: int
    not_entitled: int
    not_tracked: int
    entitled_target: str | None


class FirmwareTotals(_Out):
    current: int
    behind: int
    not_entitled: int
    not_tracked: int


class FirmwareOut(_Out):
    rows: list[FirmwareRow]
    totals: FirmwareTotals


class HorizonOut(_Out):
    days: int
    total: int
    kinds: dict[str, int]


class ExpiryOut(_Out):
    site: str
    date: str
    days_left: int
    kind: str
    serial: str
    room: str
    model: str
    plan: str | None
    contract_number: str | None


class ExpiringOut(_Out):
    horizons: list[HorizonOut]
    soonest: list[ExpiryOut]


class EventOut(BaseModel):
    id: int
    kind: str
    at: str
    site_id: str | None
    serial: str | None
    data: dict[str, Any]


class ChangesOut(_Out):
    since: datetime
    total: int
    kinds: dict[str, int]
    recent: list[EventOut]


class RolloutUnderWay(BaseModel):
    """A running, paused or halted rollout: ``GET /api/v1/rollouts/{id}/status``."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    status: str
    target: str


class Overview(_Out):
    """The fleet at a glance; ``tickets`` is null while the ticket service is starting."""

    at: datetime
    devices: int
    health: HealthCounts
    sites: list[SiteTiles]
    tickets: TicketsOut | None
    firmware: FirmwareOut
    expiring: ExpiringOut
    changes: ChangesOut
    rollouts: list[RolloutUnderWay]


async def overview_of(app: web.Application) -> dict[str, Any]:
    """The overview now, from the same services as the devices, tickets and entitlement API."""
    store = app[STORE]
    now = to_warsaw(app[CLOCK]())
    catalogues = app[CATALOGUES]
    releases = await catalogues.releases()
    service = app[TICKET_DESK].service
    rollouts = app[ROLLOUTS]
    inputs = OverviewInputs(
        sites=list(store.scan(SITES).values()),
        devices=store.scan(DEVICES),
        tickets=None if service is None else service.active_tickets(),
        verdicts=entitlement_service.live_verdicts(
            store, catalogues.plans, releases, now, cache=app[VERDICTS]
        ),
        releases=releases,
        forecast=registry_forecast(app, now, max(EXPIRY_HORIZONS)),
        events=store.scan(EVENTS),
        now=now,
        rollouts=[
            rollouts.progress(found["id"])
            for found in rollouts.rollouts()
            if found["status"] in ROLLOUTS_UNDER_WAY
        ],
    )
    return build_overview(inputs)


@endpoint(
    summary="The fleet at a glance: rooms by worst device, urgent tickets, firmware "
    "compliance, what expires within 30/60/90/180 days, what changed in 24 hours, the "
    "rollouts under way",
    roles=READERS,
    response=Overview,
    tags=("overview",),
)
async def get_overview(request: web.Request) -> web.Response:
    return web.json_response(await overview_of(request.app))


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/overview", get_overview, allow_head=False)
