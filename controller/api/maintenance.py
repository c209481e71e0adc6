"""Maintenance routes (``/api/v1/maintenance``): windows during which faults open no ticket."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from polyfleet.controller.features import maintenance
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.errors import read_model
from polyfleet.controller.http.spec import ADMINS, READERS, endpoint
from polyfleet.controller.keys import CORE


class MaintenanceIn(BaseModel):
    """One of ``site``, ``room`` (``SITE/ROOM``, or the room's name when one site has it)
    or ``serial``; ``from`` and ``until`` (ISO 8601 with an offset; both required: no
    open-ended maintenance), and why."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    site: str | None = Field(default=None, max_length=128)
    room: str | None = Field(default=None, max_length=300)
    serial: str | None = Field(default=None, max_length=64)
    starts: AwareDatetime = Field(alias="from")
    until: AwareDatetime
    reason: str = Field(max_length=1000)


class MaintenanceOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    scope: str
    target: str
    starts: str
    ends: str
    reason: str
    state: str = Field(description="planned, active or over")


class MaintenanceList(BaseModel):
    maintenance: list[MaintenanceOut]


@endpoint(
    summary="Maintenance windows, with their state and the faults each holds back",
    roles=READERS,
    response=MaintenanceList,
    tags=("maintenance",),
)
async def list_windows(request: web.Request) -> web.Response:
    found = maintenance.list_maintenance(request.app[CORE], caller(request))
    return web.json_response({"maintenance": found})


@endpoint(
    summary="Put a site, a room or a unit into maintenance: its faults open no ticket until it "
    "ends (overlapping and open-ended windows are refused)",
    roles=ADMINS,
    request=MaintenanceIn,
    response=MaintenanceOut,
    response_status=201,
    errors=(400, 404, 409, 422),
    tags=("maintenance",),
)
async def add_window(request: web.Request) -> web.Response:
    body = await read_model(request, MaintenanceIn)
    added = await maintenance.add_maintenance(
        request.app[CORE],
        caller(request),
        site=body.site,
        room=body.room,
        serial=body.serial,
        starts=body.starts,
        ends=body.until,
        reason=body.reason,
    )
    return web.json_response(added, status=201)


@endpoint(
    summary="End a maintenance window now (cancel one not started)",
    roles=ADMINS,
    response=MaintenanceOut,
    errors=(404, 409),
    tags=("maintenance",),
)
async def end_window(request: web.Request) -> web.Response:
    ended: dict[str, Any] = await maintenance.end_maintenance(
        request.app[CORE], caller(request), request.match_info["window_id"]
    )
    return web.json_response(ended)


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/maintenance", list_windows)
    app.router.add_post("/api/v1/maintenance", add_window)
    app.router.add_delete("/api/v1/maintenance/{window_id}", end_window)
