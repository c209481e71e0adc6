"""Rollouts and firmware packages API: plan, show, control, and the packages agents fetch."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from polyfleet.controller.active import run_when_active
from polyfleet.controller.api.agent import check_protocol, marked_text
from polyfleet.controller.api.models import Ok
from polyfleet.controller.domain.faults import FaultEvent
from polyfleet.controller.domain.rollout import FAILURE_TYPES, ROLLOUT_TICK_S, render_csv
from polyfleet.controller.features import rollouts
from polyfleet.controller.http.auth import agent_site, principal
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.errors import ApiError, read_json, read_model
from polyfleet.controller.http.spec import ADMINS, AGENTS, READERS, Param, endpoint
from polyfleet.controller.keys import CORE, METRICS
from polyfleet.controller.services.access import Role
from polyfleet.controller.services.audit import Actor, AuditAction, Origin
from polyfleet.controller.services.packages import UnknownPackage
from polyfleet.controller.services.rollout import (
    DEVICE_STATUS_NAMES,
    ROLLOUT_STATUSES,
    TRANSITIONS,
    RolloutService,
)
from polyfleet.controller.store.base import StoreUnavailable
from polyfleet.controller.store.journal import encode_json
from polyfleet.shared.periodic import Periodic
from polyfleet.shared.schema import JobProgress, RoomCalendarBatch

log = logging.getLogger(__name__)

#: Aliases of ``app[CORE].rollouts`` and ``app[CORE].packages`` for handlers not ported yet.
PACKAGE_CHUNK = 256 * 1024
#: Readers and the site agents (which fetch packages to serve them on site).
PACKAGE_READERS = frozenset({Role.ADMIN, Role.VIEWER, Role.AGENT})

_ROLLOUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A stored plan: id, name, target, status, created_at, waves, devices, "
    "progress; each device has serial, site, room, model, provider, installed, hops, "
    "channel, wave, window, reasons, notes and status.",
}
_PLAN_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["target"],
    "properties": {
        "target": {"type": "string", "description": "release to reach, e.g. 4.2.2-408037"},
        "sites": {"type": "array", "items": {"type": "string"}},
        "models": {"type": "array", "items": {"type": "string"}},
        "canary": {"type": "integer", "minimum": 0, "default": 1},
        "waves": {"type": "string", "default": "10%,50%,100%"},
        "window": {"type": "string", "default": "01:00-05:00"},
        "start": {"type": "string", "format": "date"},
        "wave_gap": {"type": "string", "default": "1d"},
        "max_failures": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10},
        "abort_criteria": {
            "type": "array",
            "description": "when the breaker halts the rollout (default: any canary failure; "
            "a later wave past max_failures percent)",
            "maxItems": 16,
            "items": {
                "type": "object",
                "required": ["waves", "threshold_percent"],
                "properties": {
                    "waves": {"enum": ["canary", "later"]},
                    "failure_type": {"enum": list(FAILURE_TYPES), "default": "any"},
                    "threshold_percent": {"type": "number", "minimum": 0, "maximum": 100},
                    "min_executed": {"type": "integer", "minimum": 1, "default": 1},
                },
            },
        },
        "per_site": {"type": "integer", "minimum": 1, "default": 5},
        "name": {"type": "string"},
        "exclude": {"type": "array", "items": {"type": "string"}},
    },
}


def _rollout_id(request: web.Request) -> str:
    return request.match_info["rollout_id"]


@endpoint(
    summary="List rollouts, newest first",
    roles=READERS,
    response_schema={"type": "object", "properties": {"rollouts": {"type": "array"}}},
    query={"status": Param("only rollouts in this status", {"enum": list(ROLLOUT_STATUSES)})},
    tags=("rollouts",),
)
async def list_rollouts(request: web.Request) -> web.Response:
    status = request.query.get("status")
    found = rollouts.list_rollouts(request.app[CORE], caller(request), status=status)
    return web.json_response({"rollouts": found})


@endpoint(
    summary="Plan a rollout (stored as planned; ?dry_run=1 only computes it)",
    roles=ADMINS,
    request_schema=_PLAN_BODY,
    request_media="application/json",
    response_schema=_ROLLOUT_SCHEMA,
    response_status=201,
    query={"dry_run": "1 to compute and show the plan without storing it"},
    errors=(400, 422),
    tags=("rollouts",),
)
async def create_rollout(request: web.Request) -> web.Response:
    # The shared reader refuses bodies that are not JSON or nest too deep, by name.
    body = await read_json(request)
    dry_run = request.query.get("dry_run") in ("1", "true")
    plan = await rollouts.plan_rollout(request.app[CORE], caller(request), body, dry_run=dry_run)
    # A plan lists every device with its hops and reasons (twice the bytes of the device
    # list): the store's encoder writes it in a tenth of json.dumps' time, the same JSON.
    return web.Response(
        body=encode_json(plan),
        status=200 if dry_run else 201,
        content_type="application/json",
        charset="utf-8",
    )


@endpoint(
    summary="One rollout: plan, waves, every device's state (?format=csv: one row per hop)",
    roles=READERS,
    response_schema=_ROLLOUT_SCHEMA,
    query={"format": Param("json (default) or csv", {"enum": ["json", "csv"]})},
    errors=(404,),
    tags=("rollouts",),
)
async def get_rollout(request: web.Request) -> web.Response:
    rollout = rollouts.rollout(request.app[CORE], caller(request), _rollout_id(request))
    if request.query.get("format") == "csv":
        return web.Response(text=render_csv(rollout["devices"]), content_type="text/csv")
    return web.json_response(rollout)


@endpoint(
    summary="A rollout's progress: counts per status and wave, halt reason, updates under way",
    roles=READERS,
    response_schema={"type": "object"},
    errors=(404,),
    tags=("rollouts",),
)
async def get_status(request: web.Request) -> web.Response:
    status = rollouts.rollout_status(request.app[CORE], caller(request), _rollout_id(request))
    return web.json_response(status)


@endpoint(
    summary="Start, pause, resume or abort a rollout",
    roles=ADMINS,
    response_schema={"type": "object"},
    path={"action": Param("what to do", {"enum": list(TRANSITIONS)}, required=True)},
    errors=(404, 409),
    tags=("rollouts",),
)
async def act(request: web.Request) -> web.Response:
    result = await rollouts.act(
        request.app[CORE], caller(request), _rollout_id(request), request.match_info["action"]
    )
    return web.json_response(result)


@endpoint(
    summary="The rollouts that planned one device, newest first, with its entry in each",
    roles=READERS,
    response_schema={"type": "object", "properties": {"rollouts": {"type": "array"}}},
    errors=(404,),
    tags=("rollouts",),
)
async def device_rollouts(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    found = rollouts.device_rollouts(request.app[CORE], caller(request), serial)
    return web.json_response({"rollouts": found})


@endpoint(
    summary="Devices in the penalty box (failed twice; no rollout retries them)",
    roles=READERS,
    response_schema={"type": "object", "properties": {"devices": {"type": "array"}}},
    tags=("rollouts",),
)
async def penalty_box(request: web.Request) -> web.Response:
    return web.json_response({"devices": rollouts.penalty_box(request.app[CORE], caller(request))})


@endpoint(
    summary="Release a device from the penalty box",
    roles=ADMINS,
    response_schema={"type": "object"},
    errors=(404,),
    tags=("rollouts",),
)
async def release_penalty(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    released = await rollouts.release_from_penalty_box(request.app[CORE], caller(request), serial)
    return web.json_response(released)


# -- firmware packages ----------------------------------------------------------------------


@endpoint(
    summary="Firmware packages kept for the catalogued releases",
    roles=READERS,
    response_schema={"type": "object", "properties": {"packages": {"type": "array"}}},
    tags=("releases",),
)
async def list_packages(request: web.Request) -> web.Response:
    packages = rollouts.list_packages(request.app[CORE], caller(request))
    return web.json_response({"packages": packages})


@endpoint(
    summary="Add a release's firmware package (the release must be catalogued)",
    roles=ADMINS,
    request_media="application/octet-stream",
    response_schema={"type": "object"},
    response_status=201,
    query={"sha256": "the vendor's SHA-256 of the file: refused when it does not match"},
    errors=(400, 413, 422),
    tags=("releases",),
)
async def put_package(request: web.Request) -> web.Response:
    package = await rollouts.add_package(
        request.app[CORE],
        caller(request),
        request.match_info["version"],
        request.content.iter_chunked(PACKAGE_CHUNK),
        sha256=request.query.get("sha256"),
    )
    return web.json_response(package, status=201)


@endpoint(
    summary="Download a release's package (HTTP ranges resume an interrupted download)",
    roles=PACKAGE_READERS,
    response_media="application/octet-stream",
    response_schema={"type": "string", "format": "binary"},
    errors=(404,),
    tags=("releases",),
)
async def get_package(request: web.Request) -> web.StreamResponse:
    # Site agents fetch packages too: the role check is the endpoint's (PACKAGE_READERS).
    packages = request.app[CORE].packages
    version = request.match_info["version"]
    doc = packages.find(version)
    if doc is None:
        raise UnknownPackage(version)
    who = principal(request)
    if who.role is Role.AGENT:
        packages.note_download(doc["version"], who.site_id or "", request.headers.get("Range"))
    response = web.FileResponse(packages.path(doc), chunk_size=PACKAGE_CHUNK)
    response.headers["X-Checksum-Sha256"] = doc["sha256"]
    response.headers["X-Firmware-Version"] = doc["version"]
    return response


@endpoint(
    summary="Progress of a running job (firmware updates): postponed_in_call, downloading...",
    roles=AGENTS,
    request=JobProgress,
    response=Ok,
    errors=(400, 401, 403, 404, 409, 422),
    tags=("agent",),
)
async def post_progress(request: web.Request) -> web.Response:
    progress = marked_text(request, await read_model(request, JobProgress))
    # A word on an update no longer under way is IllegalMove (409), logged by the service:
    # the agent only learns that it changed nothing.
    known = await request.app[CORE].rollouts.on_progress(
        request.match_info["job_id"], agent_site(request), progress
    )
    if not known:
        raise ApiError(404, "not_found", "no running rollout job with this id for this agent")
    return web.json_response(Ok(ok=True).model_dump())


@endpoint(
    summary="Post what an agent read of its units' room calendars (meetings' start and end)",
    roles=AGENTS,
    request=RoomCalendarBatch,
    response=Ok,
    errors=(400, 401, 403, 413, 422),
    tags=("agent",),
)
async def post_calendars(request: web.Request) -> web.Response:
    batch = await read_model(request, RoomCalendarBatch)
    check_protocol({"protocol_version": batch.protocol_version})
    await request.app[CORE].calendars.take(agent_site(request), batch)
    return web.json_response(Ok(ok=True).model_dump())


class RolloutCollector(Collector):
    """Rollouts by status and devices of live rollouts by status, at scrape time."""

    def __init__(self, service: RolloutService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rollouts, devices = self._service.metrics()
        by_status = GaugeMetricFamily("polyfleet_rollouts", "Rollouts by status", labels=["status"])
        for status in ROLLOUT_STATUSES:
            by_status.add_metric([status], rollouts[status])
        yield by_status
        entries = GaugeMetricFamily(
            "polyfleet_rollout_devices",
            "Devices of planned, running, paused or halted rollouts by rollout status",
            labels=["status"],
        )
        for status in DEVICE_STATUS_NAMES:
            entries.add_metric([status], devices[status])
        yield entries


async def _runner(app: web.Application) -> AsyncIterator[None]:
    """Moves running rollouts on every few seconds (results, halts, windows, new orders)."""
    core = app[CORE]
    service = core.rollouts
    desk = core.tickets

    async def file_ticket(event: FaultEvent) -> None:
        await desk.get().handle([event])

    service.file_ticket = file_ticket
    log_book = core.audit

    async def record_halt(rollout_id: str, reason: str) -> None:
        # The circuit breaker acts on no one's request: the controller is the actor.
        await log_book.record(
            Actor(name="circuit breaker", role="system"),
            Origin(via="controller"),
            AuditAction.ROLLOUT_HALT,
            f"rollout:{rollout_id}",
            {"reason": reason},
        )

    service.on_halt = record_halt
    interval = float(core.config.section("rollouts").get("tick_s", ROLLOUT_TICK_S))

    runner = Periodic(
        "rollout runner",
        service.tick,
        interval_s=interval,
        stop_on=(StoreUnavailable,),
        logger=log,
    )
    async with runner.running():
        yield


def register(app: web.Application) -> None:
    core = app[CORE]
    app[METRICS].register(RolloutCollector(core.rollouts))
    # Orders work on devices: on the active controller only.
    run_when_active(app, _runner)
    router = app.router
    router.add_get("/api/v1/rollouts", list_rollouts, allow_head=False)
    router.add_post("/api/v1/rollouts", create_rollout)
    router.add_get("/api/v1/rollouts/penalty-box", penalty_box, allow_head=False)
    router.add_get("/api/v1/devices/{serial}/rollouts", device_rollouts, allow_head=False)
    router.add_delete("/api/v1/rollouts/penalty-box/{serial}", release_penalty)
    router.add_get("/api/v1/rollouts/{rollout_id}", get_rollout, allow_head=False)
    router.add_get("/api/v1/rollouts/{rollout_id}/status", get_status, allow_head=False)
    # Neither the penalty box nor a rollout's status takes a POST: the action route does not
    # claim their paths, so a 405 there names only their own methods in Allow.
    router.add_post(
        "/api/v1/rollouts/{rollout_id:(?!penalty-box/)[^{}/]+}/{action:(?!status$)[^{}/]+}", act
    )
    router.add_get("/api/v1/releases/packages", list_packages, allow_head=False)
    router.add_put("/api/v1/releases/{version}/package", put_package)
    router.add_get("/api/v1/releases/{version}/package", get_package, allow_head=False)
    router.add_post("/api/v1/agent/jobs/{job_id}/progress", post_progress)
    router.add_post("/api/v1/agent/calendars", post_calendars)
