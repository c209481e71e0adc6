"""The admin API: sites, devices, moves, jobs, events, tokens and enrollment codes."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.api import audit
from polyfleet.controller.api.auth import principal
from polyfleet.controller.api.entitlement import verdict_lookup
from polyfleet.controller.api.errors import ApiError, read_model
from polyfleet.controller.api.models import (
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
    SiteIn,
    SiteList,
    SiteOut,
    SitePatch,
    TokenCreated,
    TokenIn,
    TokenList,
)
from polyfleet.controller.api.spec import ADMINS, READERS, Param, endpoint
from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.keys import ACCESS, INVENTORY, JOBS, STORE
from polyfleet.controller.services.access import (
    BadExpiry,
    LastAdminToken,
    Role,
    UnknownAgent,
    UnknownToken,
)
from polyfleet.controller.services.device_table import (
    MAX_LIMIT,
    SORT_KEYS,
    DeviceQuery,
    query_devices,
)
from polyfleet.controller.services.inventory import SiteExists, site_changes
from polyfleet.controller.services.jobs import JobPending, UnknownJob
from polyfleet.controller.store.base import EVENTS, Doc

DEVICE_QUERY: dict[str, str | Param] = {
    "site": "only devices of this site id",
    "model": "studio_x30, studio_x50, studio_x70, studio_e70, g7500 or unknown",
    "provider": "teams, zoom, poly, device_mode or unknown",
    "health": "ok, degraded, fault or unreachable",
    "firmware": "firmware version, e.g. 4.1.0 (or version-build)",
    "room": "only devices in this room",
    "no_room": Param("1: only devices without a room", {"type": "string", "enum": ["1", "0"]}),
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
    "since": "only events with a larger id (poll with the last id seen)",
    "kind": "only this kind (health_changed, device_unreachable, agent_offline...)",
    "site": "only events of this site id",
    "serial": "only events of this device",
    "limit": "at most this many (default 100, max 1000); without since, the newest",
}


@endpoint(summary="List sites", roles=READERS, response=SiteList, tags=("sites",))
async def list_sites(request: web.Request) -> web.Response:
    return web.json_response({"sites": request.app[INVENTORY].sites()})


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
    inventory = request.app[INVENTORY]
    try:
        await inventory.add_site(body.id, name=body.name, timezone=body.timezone)
    except SiteExists as exc:
        raise ApiError(409, "site_exists", str(exc), "id") from None
    site = _site(request, body.id)
    details = {"name": site["name"], "timezone": site["timezone"]}
    await audit.record(request, "site.add", f"site:{body.id}", details, site=body.id)
    return web.json_response(site, status=201)


@endpoint(
    summary="Rename a site or change its time zone",
    roles=ADMINS,
    request=SitePatch,
    response=SiteOut,
    errors=(400, 404),
    tags=("sites",),
)
async def patch_site(request: web.Request) -> web.Response:
    body = await read_model(request, SitePatch)
    site_id = request.match_info["site_id"]
    old, new = await request.app[INVENTORY].update_site(
        site_id, name=body.name, timezone=body.timezone
    )
    changes = site_changes(old, new)
    await audit.record(request, "site.update", f"site:{site_id}", changes, site=site_id)
    return web.json_response(_site(request, site_id))


def _site(request: web.Request, site_id: str) -> Doc:
    return next(site for site in request.app[INVENTORY].sites() if site["id"] == site_id)


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
    verdict_of = await verdict_lookup(request.app) if query.flag is not None else None
    found = query_devices(request.app[INVENTORY], query, verdict_of)
    return web.json_response({"devices": found.rows, "total": found.total})


@endpoint(
    summary="One device with peripherals, host/camera links and health history",
    roles=READERS,
    response=DeviceDetail,
    errors=(401, 404),
    tags=("devices",),
)
async def get_device(request: web.Request) -> web.Response:
    return web.json_response(request.app[INVENTORY].device_detail(request.match_info["serial"]))


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
    inventory = request.app[INVENTORY]
    old = inventory.device(serial).get("room")
    device = await inventory.set_room(serial, body.room)
    details = {"room": [old, device["room"]]}
    await audit.record(request, "device.room", f"device:{serial}", details, site=device["site"])
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
    inventory = request.app[INVENTORY]
    old = inventory.device(serial)["site_id"]
    device = await inventory.move_device(serial, body.site)
    details = {"site": [old, body.site]}
    await audit.record(request, "device.move", f"device:{serial}", details, site=body.site)
    return web.json_response(device)


@endpoint(
    summary="The retained reports of a device, oldest first",
    roles=READERS,
    response=ReportList,
    errors=(401, 404),
    tags=("devices",),
)
async def device_reports(request: web.Request) -> web.Response:
    reports = request.app[INVENTORY].recent_reports(request.match_info["serial"])
    return web.json_response({"reports": reports})


@endpoint(
    summary="Jobs of a device",
    roles=READERS,
    response=JobOutList,
    errors=(401, 404),
    tags=("jobs",),
)
async def device_jobs(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    request.app[INVENTORY].device(serial)
    return web.json_response({"jobs": request.app[JOBS].find(serial=serial)})


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
    try:
        job = await request.app[JOBS].enqueue(
            request.match_info["serial"],
            body.kind,
            body.params,
            created_by=principal(request).name,
        )
    except JobPending as exc:
        raise ApiError(409, "job_pending", str(exc), "kind") from None
    details = {"kind": job["kind"], "serial": job["serial"], "params": job["params"]}
    await audit.record(request, "job.create", f"job:{job['id']}", details, site=job["site_id"])
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
    who = principal(request)
    job = await request.app[JOBS].cancel(job_id, by=who.name or who.token_id)
    details = {"kind": job["kind"], "serial": job["serial"]}
    await audit.record(request, "job.cancel", f"job:{job_id}", details, site=job["site_id"])
    return web.json_response(job)


@endpoint(summary="One job", roles=READERS, response=JobOut, errors=(401, 404), tags=("jobs",))
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    job = request.app[JOBS].get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    return web.json_response(job)


@endpoint(
    summary="Download a job's artifact",
    roles=READERS,
    response_media="application/octet-stream",
    errors=(401, 404),
    tags=("jobs",),
)
async def get_job_artifact(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    path = request.app[JOBS].artifact_path(job_id)
    if path is None:
        raise ApiError(404, "not_found", f"job {job_id!r} has no artifact")
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
    limit = min(_int_query(request, "limit", 100), 1000)
    if limit < 1:
        raise ApiError(400, "invalid", "limit must be at least 1", "limit")
    kind, site, serial = query.get("kind"), query.get("site"), query.get("serial")
    found = [
        doc
        for key, doc in sorted(request.app[STORE].scan(EVENTS).items())
        if doc["id"] > since
        and (kind is None or doc["kind"] == kind)
        and (site is None or doc["site_id"] == site)
        and (serial is None or doc["serial"] == serial)
    ]
    found = found[:limit] if since else found[-limit:]
    return web.json_response({"events": found})


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
    return web.json_response({"tokens": request.app[ACCESS].list_tokens()})


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
    try:
        token, record = await request.app[ACCESS].create_token(
            Role(body.role), body.name, expires_at=body.expires_at
        )
    except BadExpiry as exc:
        raise ApiError(422, "invalid", str(exc), "expires_at") from None
    details = {"role": record["role"], "name": record["name"]}
    if record["expires_at"] is not None:
        details["expires_at"] = record["expires_at"]
    await audit.record(request, "token.create", f"token:{record['id']}", details)
    return web.json_response({**record, "token": token}, status=201)


@endpoint(
    summary="Revoke an API token (not an agent's credential; never the last admin token)",
    roles=ADMINS,
    response=Ok,
    errors=(401, 403, 404, 409),
    tags=("access",),
)
async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    try:
        revoked = await request.app[ACCESS].revoke_token(token_id)
    except UnknownToken as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except LastAdminToken as exc:
        raise ApiError(409, "last_admin_token", str(exc)) from None
    details = {"role": revoked["role"], "name": revoked["name"]}
    await audit.record(request, "token.revoke", f"token:{token_id}", details)
    return web.json_response({"ok": True})


@endpoint(
    summary="List site agents and their credentials' ids",
    roles=ADMINS,
    response=AgentList,
    query={"site": "only agents of this site id"},
    tags=("access",),
)
async def list_agents(request: web.Request) -> web.Response:
    inventory = request.app[INVENTORY]
    agents = request.app[ACCESS].list_agents(request.query.get("site") or None)
    for agent in agents:
        call = inventory.agent_last_call(agent["id"])
        if call is not None and (
            agent["last_seen"] is None or call.isoformat() > agent["last_seen"]
        ):
            agent["last_seen"] = call.isoformat()
    return web.json_response({"agents": agents})


@endpoint(
    summary="Revoke a site agent: its credential stops working at once",
    roles=ADMINS,
    response=Ok,
    errors=(401, 403, 404),
    tags=("access",),
)
async def revoke_agent(request: web.Request) -> web.Response:
    agent_id = request.match_info["agent_id"]
    try:
        agent = await request.app[ACCESS].revoke_agent(agent_id)
    except UnknownAgent as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    details = {"name": agent["name"], "hostname": agent["hostname"], "token_id": agent["token_id"]}
    await audit.record(request, "agent.revoke", f"agent:{agent_id}", details, site=agent["site_id"])
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
    code, expires = await request.app[ACCESS].create_invite(body.site)
    details = {"expires_at": expires.isoformat()}
    await audit.record(request, "invite.create", f"site:{body.site}", details, site=body.site)
    return web.json_response(
        {"code": code, "site": body.site, "expires_at": expires.isoformat()}, status=201
    )


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/sites", list_sites, allow_head=False)
    router.add_post("/api/v1/sites", add_site)
    router.add_patch("/api/v1/sites/{site_id}", patch_site)
    router.add_post("/api/v1/invites", create_invite)
    router.add_get("/api/v1/devices", list_devices, allow_head=False)
    router.add_get("/api/v1/devices/{serial}", get_device, allow_head=False)
    router.add_patch("/api/v1/devices/{serial}", patch_device)
    router.add_post("/api/v1/devices/{serial}/move", move_device)
    router.add_get("/api/v1/devices/{serial}/reports", device_reports, allow_head=False)
    router.add_get("/api/v1/devices/{serial}/jobs", device_jobs, allow_head=False)
    router.add_post("/api/v1/devices/{serial}/jobs", create_job)
    router.add_get("/api/v1/jobs/{job_id}", get_job, allow_head=False)
    router.add_get("/api/v1/jobs/{job_id}/artifact", get_job_artifact, allow_head=False)
    router.add_post("/api/v1/jobs/{job_id}/cancel", cancel_job)
    router.add_get("/api/v1/events", list_events, allow_head=False)
    router.add_get("/api/v1/tokens", list_tokens, allow_head=False)
    router.add_post("/api/v1/tokens", create_token)
    router.add_delete("/api/v1/tokens/{token_id}", revoke_token)
    router.add_get("/api/v1/agents", list_agents, allow_head=False)
    router.add_delete("/api/v1/agents/{agent_id}", revoke_agent)
