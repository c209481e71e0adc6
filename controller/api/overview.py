"""``GET /api/v1/overview``: the numbers of the dashboard's overview, for scripts and checks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from polyfleet.controller.api.models import EventOut
from polyfleet.controller.features import overview
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.spec import READERS, endpoint
from polyfleet.controller.keys import CORE

State = Literal["fault", "degraded", "unreachable", "ok"]
#: Where the rollout pages still look for the statuses the overview shows.
ROLLOUTS_UNDER_WAY = overview.ROLLOUTS_UNDER_WAY


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


class MaintenanceMark(_Out):
    id: str
    scope: Literal["site", "room", "serial"]
    target: str
    model: str | None = Field(description="the unit's model, for a unit's window")
    until: datetime = Field(description="when it stops silencing faults")
    reason: str


class RoomTile(_Out):
    room: str | None
    devices: int
    worst: State
    health: HealthCounts
    attention: list[AttentionOut]
    maintenance: list[MaintenanceMark] = Field(
        default=[], description="windows in force now on the room or a unit in it"
    )


class SiteTiles(_Out):
    id: str
    name: str
    timezone: str
    agent_online: bool | None
    devices: int
    worst: State
    health: HealthCounts
    rooms: list[RoomTile]
    maintenance: list[MaintenanceMark] = Field(
        default=[], description="windows in force now on the whole site"
    )


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
    #: The site's name where it differs from its id.
    site_name: str | None
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
    newest: str | None = Field(
        default=None,
        description="The newest published release: up to date means on it or newer.",
    )


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


@endpoint(
    summary="The fleet at a glance: rooms by worst device, urgent tickets, firmware "
    "compliance, what expires within 30/60/90/180 days, what changed in 24 hours, the "
    "rollouts under way",
    roles=READERS,
    response=Overview,
    tags=("overview",),
)
async def get_overview(request: web.Request) -> web.Response:
    return web.json_response(await overview.overview(request.app[CORE], caller(request)))


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/overview", get_overview, allow_head=False)
