"""The admin API: sites, devices, moves, jobs, events, tokens and enrollment codes."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from polyfleet.controller.api.models import (
    AdminSessionList,
    AgentList,
    DeviceDetail,
    DeviceList,
    DeviceOut,
    DevicePatch,
    EventList,
    InviteIn,
    InviteOut,
    JobIn,
    JobOut,
    JobOutList,
    MoveIn,
    Ok,
    ReportList,
    SignInLinkIn,
    SignInLinkOut,
    SiteIn,
    SiteList,
    SiteOut,
    SitePatch,
    TokenCreated,
    TokenIn,
    TokenList,
)
from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.features import access, devices, events, sites
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.errors import ApiError, read_model
from polyfleet.controller.http.spec import ADMINS, READERS, Param, endpoint
from polyfleet.controller.keys import CORE, EVENT_STREAMS
from polyfleet.controller.services.device_table import (
    MAX_LIMIT,
    MONITORING,
    NO_ROOM_VALUES,
    SORT_KEYS,
    DeviceQuery,
)
from polyfleet.shared.schema import HealthState, Model, Provider

DEVICE_QUERY: dict[str, str | Param] = {
    "site": "only devices of this site id",
    "model": Param("only this model", {"type": "string", "enum": [m.value for m in Model]}),
    "provider": Param(
        "only this provider", {"type": "string", "enum": [p.value for p in Provider]}
    ),
    "health": Param(
        "only this health state", {"type": "string", "enum": [h.value for h in HealthState]}
    ),
    "firmware": "firmware version, e.g. 4.1.0 (or version-build)",
    "room": "only devices in this room",
    "no_room": Param(
        "1: only devices without a room", {"type": "string", "enum": list(NO_ROOM_VALUES)}
    ),
    "monitoring": Param(
        "polled: only units an agent reports; not_monitored: only registered Poly products the "
        "agents do not poll (health state not_monitored); none: both",
        {"type": "string", "enum": list(MONITORING)},
    ),
    "q": "words that must all appear in the serial, name, room, site, model or firmware",
    "flag": Param(
        "only devices whose entitlement verdict carries this flag",
        {"type": "string", "enum": list(FLAGS)},
    ),
    "sort": Param(
        "order by this column; a leading - sorts descending (default serial)",
        {"type": "string", "enum": [*SORT_KEYS, *(f"-{key}" for key in SORT_KEYS)]},
    ),
    "offset": Param("skip this many (after sorting)", {"type": "integer", "minimum": 0}),
    "limit": Param("at most this many", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
}
EVENT_QUERY = {
    "since": Param(
        "only events with a larger id (poll with the last id seen)",
        {"type": "integer", "minimum": 0},
    ),
    "after": Param(
        "the events after this id in id order, with the cursor to ask with next in next "
        "(the first limit of them)",
        {"type": "integer", "minimum": 0},
    ),
    "kind": "only this kind (health_changed, device_unreachable, agent_offline...)",
    "site": "only events of this site id",
    "serial": "only events of this device",
    "limit": Param(
        "at most this many (default 100; more than 1000 gives 1000); without since, the newest",
        {"type": "integer", "minimum": 1},
    ),
}


@endpoint(summary="List sites", roles=READERS, response=SiteList, tags=("sites",))
async def list_sites(request: web.Request) -> web.Response:
    return web.json_response({"sites": sites.list_sites(request.app[CORE], caller(request))})


@endpoint(
    summary="Add a site (409 if the id is taken: rename with PATCH)",
    roles=ADMINS,
    request=SiteIn,
    response=SiteOut,
    response_status=201,
    errors=(400, 401, 403, 409, 422),
    tags=("sites",),
)
async def add_site(request: web.Request) -> web.Response:
    body = await read_model(request, SiteIn)
    site = await sites.add_site(
        request.app[CORE], caller(request), site_id=body.id, name=body.name, timezone=body.timezone
    )
    return web.json_response(site, status=201)


@endpoint(
    summary="Rename a site, change its time zone, its authorised reporter (contact), its RMA "
    "delivery address or its admin networks",
    roles=ADMINS,
    request=SitePatch,
    response=SiteOut,
    errors=(400, 404, 422),
    tags=("sites",),
)
async def patch_site(request: web.Request) -> web.Response:
    body = await read_model(request, SitePatch)
    site = await sites.update_site(
        request.app[CORE],
        caller(request),
        request.match_info["site_id"],
        name=body.name,
        timezone=body.timezone,
        contact=None if body.contact is None else body.contact.model_dump(exclude_none=True),
        delivery_address=None
        if body.delivery_address is None
        else body.delivery_address.model_dump(exclude_none=True),
        admin_networks=body.admin_networks,
    )
    return web.json_response(site)


@endpoint(
    summary="List devices (E70 cameras are their own entries)",
    roles=READERS,
    response=DeviceList,
    query=DEVICE_QUERY,
    errors=(400, 401),
    tags=("devices",),
)
async def list_devices(request: web.Request) -> web.Response:
    query = DeviceQuery.parse(request.query)
    found = await devices.find_devices(request.app[CORE], caller(request), query)
    return web.json_response({"devices": found.rows, "total": found.total})


@endpoint(
    summary="One device with peripherals, host/camera links and health history; a registered "
    "Poly product the agents do not poll answers with its entitlement and registry facts",
    roles=READERS,
    response=DeviceDetail,
    errors=(401, 404),
    tags=("devices",),
)
async def get_device(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    return web.json_response(
        await devices.device_or_asset(request.app[CORE], caller(request), serial)
    )


@endpoint(
    summary="Set a device's room",
    roles=ADMINS,
    request=DevicePatch,
    response=DeviceOut,
    errors=(401, 403, 404, 422),
    tags=("devices",),
)
async def patch_device(request: web.Request) -> web.Response:
    body = await read_model(request, DevicePatch)
    serial = request.match_info["serial"]
    device = await devices.set_room(request.app[CORE], caller(request), serial, body.room)
    return web.json_response(device)


@endpoint(
    summary="Move a device (and its E70 cameras) to another site",
    roles=ADMINS,
    request=MoveIn,
    response=DeviceOut,
    errors=(401, 403, 404, 422),
    tags=("devices",),
)
async def move_device(request: web.Request) -> web.Response:
    body = await read_model(request, MoveIn)
    serial = request.match_info["serial"]
    device = await devices.move_device(request.app[CORE], caller(request), serial, body.site)
    return web.json_response(device)


@endpoint(
    summary="The retained reports of a device, oldest first",
    roles=READERS,
    response=ReportList,
    errors=(401, 404),
    tags=("devices",),
)
async def device_reports(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    reports = devices.device_reports(request.app[CORE], caller(request), serial)
    return web.json_response({"reports": reports})


@endpoint(
    summary="Other admins' sessions open on a device (who, from where, web or SSH, since "
    "when, outside the site's admin networks or not); never their session ids",
    roles=READERS,
    response=AdminSessionList,
    errors=(401, 404),
    tags=("devices",),
)
async def device_sessions(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    return web.json_response(devices.device_sessions(request.app[CORE], caller(request), serial))


@endpoint(
    summary="Jobs of a device",
    roles=READERS,
    response=JobOutList,
    errors=(401, 404),
    tags=("jobs",),
)
async def device_jobs(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    return web.json_response(
        {"jobs": devices.device_jobs(request.app[CORE], caller(request), serial)}
    )


@endpoint(
    summary="Queue a job (collect_diagnostics, reboot...) for the device's site agent; one "
    "pending job of a kind per device (409 names the pending one)",
    roles=ADMINS,
    request=JobIn,
    response=JobOut,
    response_status=201,
    errors=(401, 403, 404, 409, 422),
    tags=("jobs",),
)
async def create_job(request: web.Request) -> web.Response:
    body = await read_model(request, JobIn)
    serial = request.match_info["serial"]
    job = await devices.create_job(
        request.app[CORE], caller(request), serial, body.kind, body.params
    )
    return web.json_response(job, status=201)


@endpoint(
    summary="Cancel a pending job (the agent no longer gets it)",
    roles=ADMINS,
    response=JobOut,
    errors=(401, 403, 404, 409),
    tags=("jobs",),
)
async def cancel_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    return web.json_response(await devices.cancel_job(request.app[CORE], caller(request), job_id))


@endpoint(summary="One job", roles=READERS, response=JobOut, errors=(401, 404), tags=("jobs",))
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    return web.json_response(devices.job(request.app[CORE], caller(request), job_id))


@endpoint(
    summary="Download a job's artifact",
    roles=READERS,
    response_media="application/octet-stream",
    errors=(401, 404),
    tags=("jobs",),
)
async def get_job_artifact(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    path = devices.job_artifact(request.app[CORE], caller(request), job_id)
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


@endpoint(
    summary="Events (health changes, unreachable devices, offline sites, jobs...)",
    roles=READERS,
    response=EventList,
    query=EVENT_QUERY,
    errors=(400, 401),
    tags=("events",),
)
async def list_events(request: web.Request) -> web.Response:
    query = request.query
    since = _int_query(request, "since", 0)
    if since < 0:
        raise ApiError(400, "invalid", "since must be 0 or more (an event id)", "since")
    limit = min(_int_query(request, "limit", 100), 1000)
    if limit < 1:
        raise ApiError(400, "invalid", "limit must be at least 1", "limit")
    if "after" in query:
        after = _event_id(query["after"], "after")
        found, cursor = events.events_after(
            request.app[CORE],
            caller(request),
            after=after,
            kind=query.get("kind"),
            site=query.get("site"),
            serial=query.get("serial"),
            limit=limit,
        )
        return web.json_response({"events": found, "next": cursor})
    found = events.list_events(
        request.app[CORE],
        caller(request),
        since=since,
        kind=query.get("kind"),
        site=query.get("site"),
        serial=query.get("serial"),
        limit=limit,
    )
    return web.json_response({"events": found})


def _event_id(text: str, name: str) -> int:
    """An event id given as a cursor (``after``, ``Last-Event-ID``)."""
    if not text.isascii() or not text.isdigit():
        raise ApiError(
            400, "invalid", f"{name} must be an event id (0 or more), got {text!r}", name
        )
    return int(text)


@endpoint(
    summary="Events as Server-Sent Events: those after Last-Event-ID (or after), then each one "
    "as it is recorded",
    roles=READERS,
    response_media="text/event-stream",
    response_schema={
        "type": "string",
        "description": "id: the event id, event: its kind, data: the event as GET "
        "/api/v1/events lists it; event: reset (data: reason, after, oldest, newest, "
        "resumes_after) when the id asked for is older than the events kept; a comment line "
        "as keep-alive. The stream ends after a while (the client resumes with Last-Event-ID).",
    },
    query={
        "after": Param(
            "the events after this id (Last-Event-ID, when sent, wins)",
            {"type": "integer", "minimum": 0},
        ),
        "once": Param(
            "1: end the stream once caught up (no waiting for new events)",
            {"type": "string", "enum": ["0", "1"]},
        ),
    },
    errors=(400, 401),
    tags=("events",),
    extra={
        "parameters": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "the id of the last event seen: the stream resumes after it",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        ]
    },
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    core = request.app[CORE]
    # Both are checked: a reconnecting client sends the header with the first URL's after.
    after = _event_id(request.query.get("after", "0"), "after")
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        after = _event_id(header.strip(), "Last-Event-ID")
    once_text = request.query.get("once", "0")
    if once_text not in ("0", "1"):
        raise ApiError(400, "invalid", f"once must be 0 or 1, got {once_text!r}", "once")
    config = core.config
    items = events.follow_events(
        core,
        caller(request),
        after=after,
        keepalive_s=config.events_stream_keepalive_s,
        once=once_text == "1",
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    streams = request.app[EVENT_STREAMS]
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        # The stream ends on its own after a while: a forgotten client holds nothing for
        # ever, and resumes exactly where it was with Last-Event-ID.
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(config.events_stream_max_s), contextlib.aclosing(items):
                async for item in items:
                    await response.write(_sse(item))
    finally:
        streams.discard(task)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _sse(item: events.StreamItem) -> bytes:
    """One Server-Sent Events message (a comment line for a keep-alive)."""
    if item.doc is None:
        return b": keep-alive\n\n"
    data = json.dumps(item.doc, separators=(",", ":"))
    # A reset carries the id it resumes after, so a reconnect does not ask again.
    event_id = item.doc["resumes_after"] if item.kind == "reset" else item.doc["id"]
    return f"id: {event_id}\nevent: {item.kind}\ndata: {data}\n\n".encode()


def _int_query(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "invalid", f"{name} must be an integer, got {text!r}", name) from None


@endpoint(
    summary="List API tokens, admin and viewer (never their secrets; agents: /api/v1/agents)",
    roles=ADMINS,
    response=TokenList,
    tags=("access",),
)
async def list_tokens(request: web.Request) -> web.Response:
    return web.json_response({"tokens": access.list_tokens(request.app[CORE], caller(request))})


@endpoint(
    summary="Create an admin or viewer token (shown once)",
    roles=ADMINS,
    request=TokenIn,
    response=TokenCreated,
    response_status=201,
    errors=(401, 403, 422),
    tags=("access",),
)
async def create_token(request: web.Request) -> web.Response:
    body = await read_model(request, TokenIn)
    created = await access.create_token(
        request.app[CORE],
        caller(request),
        role=body.role,
        name=body.name,
        expires_at=body.expires_at,
    )
    return web.json_response(created, status=201)


@endpoint(
    summary="Revoke an API token (not an agent's credential; never the last admin token)",
    roles=ADMINS,
    response=Ok,
    errors=(401, 403, 404, 409),
    tags=("access",),
)
async def revoke_token(request: web.Request) -> web.Response:
    await access.revoke_token(request.app[CORE], caller(request), request.match_info["token_id"])
    return web.json_response({"ok": True})


@endpoint(
    summary="List site agents and their credentials' ids",
    roles=ADMINS,
    response=AgentList,
    query={"site": "only agents of this site id"},
    tags=("access",),
)
async def list_agents(request: web.Request) -> web.Response:
    site = request.query.get("site") or None
    return web.json_response(
        {"agents": access.list_agents(request.app[CORE], caller(request), site)}
    )


@endpoint(
    summary="Revoke a site agent: its credential stops working at once",
    roles=ADMINS,
    response=Ok,
    errors=(401, 403, 404),
    tags=("access",),
)
async def revoke_agent(request: web.Request) -> web.Response:
    await access.revoke_agent(request.app[CORE], caller(request), request.match_info["agent_id"])
    return web.json_response({"ok": True})


@endpoint(
    summary="Create a one-time, expiring enrollment code for a site's agent",
    roles=ADMINS,
    request=InviteIn,
    response=InviteOut,
    response_status=201,
    errors=(401, 403, 404, 422),
    tags=("sites",),
)
async def create_invite(request: web.Request) -> web.Response:
    body = await read_model(request, InviteIn)
    invite = await sites.invite_agent(request.app[CORE], caller(request), body.site)
    return web.json_response(invite, status=201)


@endpoint(
    summary="Create a one-time dashboard sign-in link for an admin or viewer token",
    roles=ADMINS,
    request=SignInLinkIn,
    response=SignInLinkOut,
    response_status=201,
    errors=(404,),
    tags=("dashboard",),
)
async def create_signin_link(request: web.Request) -> web.Response:
    body = await read_model(request, SignInLinkIn)
    link = await access.create_signin_link(request.app[CORE], caller(request), body.token_id)
    return web.json_response(link, status=201)


def register(app: web.Application) -> None:
    router = app.router
    router.add_post("/api/v1/signin-links", create_signin_link)
    router.add_get("/api/v1/sites", list_sites, allow_head=False)
    router.add_post("/api/v1/sites", add_site)
    router.add_patch("/api/v1/sites/{site_id}", patch_site)
    router.add_post("/api/v1/invites", create_invite)
    router.add_get("/api/v1/devices", list_devices, allow_head=False)
    router.add_get("/api/v1/devices/{serial}", get_device, allow_head=False)
    router.add_patch("/api/v1/devices/{serial}", patch_device)
    router.add_post("/api/v1/devices/{serial}/move", move_device)
    router.add_get("/api/v1/devices/{serial}/reports", device_reports, allow_head=False)
    router.add_get("/api/v1/devices/{serial}/sessions", device_sessions, allow_head=False)
    router.add_get("/api/v1/devices/{serial}/jobs", device_jobs, allow_head=False)
    router.add_post("/api/v1/devices/{serial}/jobs", create_job)
    router.add_get("/api/v1/jobs/{job_id}", get_job, allow_head=False)
    router.add_get("/api/v1/jobs/{job_id}/artifact", get_job_artifact, allow_head=False)
    router.add_post("/api/v1/jobs/{job_id}/cancel", cancel_job)
    router.add_get("/api/v1/events", list_events, allow_head=False)
    router.add_get("/api/v1/events/stream", stream_events, allow_head=False)
    router.add_get("/api/v1/tokens", list_tokens, allow_head=False)
    router.add_post("/api/v1/tokens", create_token)
    router.add_delete("/api/v1/tokens/{token_id}", revoke_token)
    router.add_get("/api/v1/agents", list_agents, allow_head=False)
    router.add_delete("/api/v1/agents/{agent_id}", revoke_agent)
