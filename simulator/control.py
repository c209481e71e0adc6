"""The lab's control API: JSON over loopback HTTP, to change the simulated world while it runs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from polyfleet.simulator.device import FaultError, SimDevice
from polyfleet.simulator.fleet import FAULTS, FaultParamError, FleetSpec, MeetingSpec, fault_params
from polyfleet.simulator.other_host import OtherHost


class ControlledLab(Protocol):
    """What the control API changes and shows (``simulator.lab.Lab`` is one)."""

    fleet: FleetSpec
    devices: dict[str, SimDevice]
    other_hosts: dict[str, OtherHost]

    def timeline_seconds(self) -> float: ...

    async def jump_timeline(self, seconds: float) -> None: ...


LAB_KEY: web.AppKey[ControlledLab] = web.AppKey("lab")

ENDPOINTS = [
    "GET /devices",
    "GET /devices/{serial}",
    "GET /devices/{serial}/config",
    "GET /downloads",
    "POST /devices/{serial}/faults {fault, active, ...params}",
    "DELETE /devices/{serial}/faults",
    "POST /sites/{site}/faults {fault, active, ...params}",
    "POST /devices/{serial}/call {active, remote?}",
    "POST /devices/{serial}/power {on}",
    "POST /devices/{serial}/reboot",
    "POST /devices/{serial}/update {version}",
    "POST /devices/{serial}/password {password}",
    "POST /devices/{serial}/device_mode {on}",
    "POST /devices/{serial}/identity {certificate?, host_key?}",
    "GET /devices/{serial}/sessions",
    "POST /devices/{serial}/sessions {address, user?, type?, role?}",
    "DELETE /devices/{serial}/sessions/{session_id}",
    "GET /timeline",
    "POST /timeline {seconds}",
    "POST /timeline/reset",
    "GET /other_hosts",
]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class _BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _device(request: web.Request) -> SimDevice:
    serial = request.match_info["serial"]
    device = request.app[LAB_KEY].devices.get(serial)
    if device is None:
        raise _BadRequest(
            _error(404, f"no device with serial {serial!r} in this lab", serial=serial)
        )
    return device


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(_error(400, f"body is not JSON: {exc}")) from exc
    if not isinstance(payload, dict):
        raise _BadRequest(_error(400, "body must be a JSON object"))
    return payload


def _flag(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    if not isinstance(value, bool):
        raise _BadRequest(_error(400, f"{name} must be true or false", field=name))
    return value


def _text(payload: dict[str, Any], name: str, must: str) -> str:
    """The non-empty string ``payload[name]``; else 400 saying ``name must be <must>``."""
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise _BadRequest(_error(400, f"{name} must be {must}", field=name))
    return value


def _powered_on(device: SimDevice) -> None:
    """409 naming the power state unless the device is on."""
    if device.power != "on":
        raise _BadRequest(
            _error(409, f"device {device.serial} is {device.power}, not on", power=device.power)
        )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _BadRequest as exc:
        return exc.response
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    return response


async def index(_request: web.Request) -> web.Response:
    return web.json_response({"endpoints": ENDPOINTS, "faults": list(FAULTS)})


async def list_devices(request: web.Request) -> web.Response:
    lab = request.app[LAB_KEY]
    return web.json_response(
        {
            "timeline": {"seconds": round(lab.timeline_seconds(), 3)},
            "devices": [d.view() for d in lab.devices.values()],
        }
    )


async def get_device(request: web.Request) -> web.Response:
    return web.json_response(_device(request).view())


async def get_config(request: web.Request) -> web.Response:
    return web.json_response({"vars": dict(sorted(_device(request).config.items()))})


async def set_fault(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    name = payload.pop("fault", None)
    if not isinstance(name, str):
        return _error(400, "fault must be a fault name", field="fault", known=list(FAULTS))
    active = _flag(payload, "active")
    payload.pop("active")
    try:
        await device.set_fault(name, active, **payload)
    except FaultError as exc:
        if exc.field != "fault":
            return _error(400, str(exc), field=exc.field)
        return _error(400, str(exc), field="fault", known=list(FAULTS))
    return web.json_response(device.view())


async def set_site_fault(request: web.Request) -> web.Response:
    """One fault on every device of a site (a site outage: lan_down); all or none."""
    lab = request.app[LAB_KEY]
    site = request.match_info["site"]
    if site not in {s.id for s in lab.fleet.sites}:
        return _error(404, f"no site {site!r} in this lab", site=site)
    payload = await _body(request)
    name = payload.pop("fault", None)
    if not isinstance(name, str) or name not in FAULTS:
        return _error(400, "fault must be a fault name", field="fault", known=list(FAULTS))
    active = _flag(payload, "active")
    payload.pop("active")
    devices = [d for d in lab.devices.values() if d.site == site]
    if active:
        for device in devices:
            try:
                fault_params(name, payload, device.peripherals)
            except FaultParamError as exc:
                return _error(400, f"device {device.serial}: {exc}", field=exc.key)
    for device in devices:
        await device.set_fault(name, active, **payload)
    return web.json_response({"site": site, "devices": [d.view() for d in devices]})


async def clear_faults(request: web.Request) -> web.Response:
    device = _device(request)
    for name in list(device.faults):
        await device.set_fault(name, False)
    return web.json_response(device.view())


async def list_other_hosts(request: web.Request) -> web.Response:
    lab = request.app[LAB_KEY]
    return web.json_response({"other_hosts": [o.view() for o in lab.other_hosts.values()]})


async def set_call(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    if _flag(payload, "active"):
        remote = payload.get("remote", "sip:meeting@127.0.0.1")
        if not isinstance(remote, str):
            return _error(400, "remote must be a string", field="remote")
        await device.start_call(remote)
    else:
        await device.end_call()
    return web.json_response(device.view())


async def add_meeting(request: web.Request) -> web.Response:
    """Book a meeting in the unit's room: ``{start, end, subject?}`` (ISO, with offsets)."""
    device = _device(request)
    payload = await _body(request)
    try:
        start, end = (datetime.fromisoformat(str(payload[k])) for k in ("start", "end"))
    except (KeyError, ValueError):
        return _error(400, "start and end must be ISO date-times with an offset", field="start")
    if start.tzinfo is None or end.tzinfo is None:
        return _error(400, "start and end need a UTC offset", field="start")
    if end <= start:
        return _error(400, "end must be after start", field="end")
    subject = payload.get("subject", "Meeting")
    if not isinstance(subject, str):
        return _error(400, "subject must be a string", field="subject")
    meeting_id = device.add_meeting(MeetingSpec(start=start, end=end, subject=subject))
    return web.json_response({"id": meeting_id, **_meetings(device)}, status=201)


async def remove_meeting(request: web.Request) -> web.Response:
    device = _device(request)
    if device.meetings.pop(request.match_info["meeting_id"], None) is None:
        return _error(404, f"no meeting {request.match_info['meeting_id']}", field="meeting_id")
    return web.json_response(_meetings(device))


async def list_meetings(request: web.Request) -> web.Response:
    return web.json_response(_meetings(_device(request)))


def _meetings(device: SimDevice) -> dict[str, Any]:
    return {
        "calendar": "on" if device.calendar_on else "off",
        "meetings": [
            {"id": k, "start": m.start.isoformat(), "end": m.end.isoformat(), "subject": m.subject}
            for k, m in sorted(device.meetings.items(), key=lambda item: item[1].start)
        ],
    }


async def set_power(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    if _flag(payload, "on"):
        await device.power_on()
    else:
        await device.power_off()
    return web.json_response(device.view())


async def reboot(request: web.Request) -> web.Response:
    device = _device(request)
    _powered_on(device)
    await device.reboot()
    return web.json_response(device.view())


async def deliver_update(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    version = _text(payload, "version", "a firmware version, e.g. 4.2.2-408037")
    _powered_on(device)
    try:
        await device.deliver_update(version)
    except FaultError as exc:
        return _error(400, str(exc), field="version")
    return web.json_response(device.view())


async def set_password(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    device.set_admin_password(_text(payload, "password", "a non-empty string"))
    return web.json_response(device.view())


async def set_device_mode(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    await device.set_device_mode(_flag(payload, "on"))
    return web.json_response(device.view())


async def renew_identity(request: web.Request) -> web.Response:
    device = _device(request)
    payload = await _body(request)
    wanted = {}
    for name in ("certificate", "host_key"):
        if name in payload:
            wanted[name] = _flag(payload, name)
    if not any(wanted.values()):
        return _error(
            400, "say which to renew: certificate and/or host_key true", field="certificate"
        )
    await device.renew_identity(**wanted)
    return web.json_response(device.view())


async def list_sessions(request: web.Request) -> web.Response:
    """The unit's open admin sessions: its own REST logins and those opened here."""
    return web.json_response(_sessions(_device(request)))


async def open_session(request: web.Request) -> web.Response:
    """Another admin signs in: ``{address, user?, type? (web|ssh), role?}``; it stays open
    (kept alive by its client) until closed here or the unit loses power."""
    device = _device(request)
    payload = await _body(request)
    address = payload.get("address")
    if not isinstance(address, str) or not address:
        return _error(400, "address must be the client's address, e.g. 10.9.8.7", field="address")
    texts = {}
    for name, default in (("user", "admin"), ("type", "web"), ("role", "ADMIN")):
        value = payload.get(name, default)
        if not isinstance(value, str) or not value:
            return _error(400, f"{name} must be a non-empty string", field=name)
        texts[name] = value
    try:
        session = device.open_session(
            user=texts["user"], address=address, kind=texts["type"], role=texts["role"]
        )
    except FaultError as exc:
        return _error(409 if exc.field == "power" else 400, str(exc), field=exc.field)
    return web.json_response({"session": session.view(), **_sessions(device)}, status=201)


async def close_session(request: web.Request) -> web.Response:
    device = _device(request)
    session_id = request.match_info["session_id"]
    if device.sessions.pop(session_id, None) is None:
        return _error(404, f"no open session {session_id}", field="session_id")
    return web.json_response(_sessions(device))


def _sessions(device: SimDevice) -> dict[str, Any]:
    device.expire_sessions()
    return {"sessions": [session.view() for session in device.sessions.values()]}


async def get_timeline(request: web.Request) -> web.Response:
    return web.json_response({"seconds": round(request.app[LAB_KEY].timeline_seconds(), 3)})


async def set_timeline(request: web.Request) -> web.Response:
    payload = await _body(request)
    seconds = payload.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return _error(400, "seconds must be a number >= 0", field="seconds")
    await request.app[LAB_KEY].jump_timeline(float(seconds))
    return await get_timeline(request)


async def reset_timeline(request: web.Request) -> web.Response:
    await request.app[LAB_KEY].jump_timeline(0.0)
    return await get_timeline(request)


async def list_downloads(request: web.Request) -> web.Response:
    """Every unit's package downloads (bytes, source, status), oldest first per unit."""
    lab = request.app[LAB_KEY]
    downloads = [
        {"serial": device.serial, **download.view()}
        for device in lab.devices.values()
        for download in device.downloads
    ]
    downloads.sort(key=lambda d: (d["started"], d["serial"]))
    return web.json_response({"downloads": downloads})


def create_control_app(lab: ControlledLab) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[LAB_KEY] = lab
    app.router.add_get("/", index)
    app.router.add_get("/devices", list_devices)
    app.router.add_get("/devices/{serial}", get_device)
    app.router.add_get("/devices/{serial}/config", get_config)
    app.router.add_get("/downloads", list_downloads)
    app.router.add_post("/devices/{serial}/faults", set_fault)
    app.router.add_delete("/devices/{serial}/faults", clear_faults)
    app.router.add_post("/sites/{site}/faults", set_site_fault)
    app.router.add_post("/devices/{serial}/call", set_call)
    app.router.add_get("/devices/{serial}/meetings", list_meetings)
    app.router.add_post("/devices/{serial}/meetings", add_meeting)
    app.router.add_delete("/devices/{serial}/meetings/{meeting_id}", remove_meeting)
    app.router.add_post("/devices/{serial}/power", set_power)
    app.router.add_post("/devices/{serial}/reboot", reboot)
    app.router.add_post("/devices/{serial}/update", deliver_update)
    app.router.add_post("/devices/{serial}/password", set_password)
    app.router.add_post("/devices/{serial}/device_mode", set_device_mode)
    app.router.add_post("/devices/{serial}/identity", renew_identity)
    app.router.add_get("/devices/{serial}/sessions", list_sessions)
    app.router.add_post("/devices/{serial}/sessions", open_session)
    app.router.add_delete("/devices/{serial}/sessions/{session_id}", close_session)
    app.router.add_get("/timeline", get_timeline)
    app.router.add_post("/timeline", set_timeline)
    app.router.add_post("/timeline/reset", reset_timeline)
    app.router.add_get("/other_hosts", list_other_hosts)
    return app
