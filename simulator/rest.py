"""The VideoOS REST API of one simulated device, with the quirks real firmware shows."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from polyfleet.shared.version import FirmwareVersion
from polyfleet.simulator.device import Session, SimDevice
from polyfleet.simulator.subsystems import (
    lan_status,
    microphones,
    peripheral_state,
    status_entries,
)

#: From this firmware the login sets XSRF-TOKEN and later calls need the x-xsrf-token header.
XSRF_SINCE = FirmwareVersion(4, 6, 2)
#: ``/rest/system/mode`` exists from this firmware (404 before); ``/rest/system/mode/device``
#: answers on every firmware, and is what tells device mode on 3.x.
MODE_API_SINCE = FirmwareVersion(4, 0, 0)
#: ``/rest/calendar`` exists from this firmware (404 before).
CALENDAR_SINCE = FirmwareVersion(3, 14, 0)
#: The simulated reboot starts this long after the answer to ``POST /rest/system/reboot``,
#: so the answer reaches the client before the connection drops.
REBOOT_DELAY = 0.1
HTML = "text/html"

FORBIDDEN_HTML = (
    "<!DOCTYPE html><html><head><title>403 Forbidden</title></head>"
    "<body><h1>403 Forbidden</h1><p>Access is denied.</p></body></html>\r\n"
)
NOT_FOUND_HTML = (
    "<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
    "<body><h1>404 Not Found</h1></body></html>\r\n"
)
ERROR_HTML = (
    "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
    "<body><h1>500 Internal Server Error</h1></body></html>\r\n"
)

#: Provider mode -> what ``/rest/system/mode`` reports (app names: device document, assumed).
MODE_BY_PROVIDER: dict[str, dict[str, Any]] = {
    "teams": {
        "activePersona": "teams",
        "app": "com.microsoft.skype.teams.ipphone",
        "appPersona": "teams",
        "mode": "PARTNER",
    },
    "zoom": {
        "activePersona": "zoom",
        "app": "us.zoom.zoompresence",
        "appPersona": "zoom",
        "mode": "PARTNER",
    },
    "poly": {
        "activePersona": "polyvideo",
        "app": "com.poly.polylauncher",
        "appPersona": "polyvideo",
        "mode": "POLY",
    },
}
#: In device mode the active persona is the Device Mode app's [seen]; the provider's own app
#: stays the configured one [assumed].
DEVICE_MODE_PERSONA = "camuvc"

#: (appName, packageName, personaName, versionInfo) of ``/rest/system/apps``. Every unit
#: has Poly Video and the Device Mode app installed, whether or not device mode is on.
POLY_VIDEO_APP = ("Poly Video", "com.poly.polylauncher", "polyvideo")
DEVICE_MODE_APP = ("Device Mode", "com.polycom.camuvc", DEVICE_MODE_PERSONA)
#: The provider's own app, installed with its provider mode.
APPS_BY_PROVIDER: dict[str, list[tuple[str, str, str, str]]] = {
    "teams": [
        ("Microsoft Teams", "com.microsoft.skype.teams.ipphone", "teams", "1449/1.0.96.2023")
    ],
    "zoom": [("Zoom Rooms", "us.zoom.zoompresence", "zoom", "5.17.5.3720")],
    "poly": [],
}

Handler = Callable[["SimDevice", web.BaseRequest, "Session | None"], Awaitable[web.StreamResponse]]


def json_body(value: Any, *, status: int = 200, crlf: bool = False) -> web.Response:
    text = json.dumps(value, ensure_ascii=False) + ("\r\n" if crlf else "")
    return web.Response(status=status, text=text, content_type="application/json")


def scalar_body(text: str) -> web.Response:
    """A bare scalar (``39``, ``true``, even unquoted ``CONTENT_IDLE``) with a JSON content type."""
    return web.Response(text=text, content_type="application/json")


def html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type=HTML)


class RestApi:
    """The request handler of one device (an aiohttp low-level ``web.Server`` handler)."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        device = self.device
        slow = device.faults.get("slow")
        if slow is not None:
            await asyncio.sleep(float(slow.get("latency_ms", 0)) / 1000)  # waits-for: fault "slow"
        if request.path == "/" and request.method in ("GET", "HEAD"):
            return landing_page(device)
        if request.path.startswith("/rest") and device.has_fault("wedged"):
            return html(500, ERROR_HTML)
        route = ROUTES.get((request.method, request.path.rstrip("/") or "/"))
        if route is None:
            return html(404, NOT_FOUND_HTML)
        handler, needs_session, since = route
        if since is not None and device.version < since:
            return html(404, NOT_FOUND_HTML)
        if not needs_session:
            return await handler(device, request, None)
        session = device.find_session(request.cookies.get("session_id"))
        if session is None:
            return html(403, FORBIDDEN_HTML)
        if device.version >= XSRF_SINCE:
            header = request.headers.get("x-xsrf-token", "")
            cookie = request.cookies.get("XSRF-TOKEN", "")
            if header != session.xsrf_token or cookie != session.xsrf_token:
                return html(403, FORBIDDEN_HTML)
        if device.has_fault("garbage"):
            return garbage(request.path)
        return await handler(device, request, session)


def landing_page(device: SimDevice) -> web.Response:
    os_name = "PolyOS" if device.version.major >= 4 else "Poly VideoOS"
    title = f"Poly {device.spec.model_name}"
    body = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body>"
        f"<h1>{title}</h1><p>{os_name}</p>"
        "<p><a href='/#/login'>Sign in</a> to manage this system.</p>"
        "</body></html>\r\n"
    )
    return html(200, body)


def garbage(path: str) -> web.Response:
    """Hostile answers: the agent must survive them without crashing or trusting them."""
    if path == "/rest/system":
        return scalar_body('{"model": "StudioX5')
    if path == "/rest/system/status":
        return json_body({"stateList": "oops", "name": None})
    if path == "/rest/system/mode":
        return json_body(["not", "an", "object"])
    if path == "/rest/current/devicemanagement/devices":
        return json_body(
            [None, 42, {"serialNumber": {"nested": True}, "deviceState": 7}, "x" * 4096]
        )
    if path == "/rest/conferences":
        return scalar_body("CONTENT_IDLE")
    if path == "/rest/audio":
        return json_body({"numOfMicsConnected": "lots", "volume": None})
    if path == "/rest/current/session/sessions":
        return json_body(
            [
                None,
                {"sessionId": 7, "userId": "x" * 5000, "location": {"ip": "10.0.0.1"}},
                {"userId": "admin\x1b[2J\u202e", "clientType": "SSH", "startTime": "soon"},
                *({"sessionId": f"PS{n}", "location": "203.0.113.9"} for n in range(500)),
            ]
        )
    return web.Response(body=b"\x00\xff\xfe garbage \x80", content_type="application/json")


# --- login ---------------------------------------------------------------------------------


def _login_failure(device: SimDevice, reason: str, login_result: str) -> web.Response:
    # 3.x answers 400 with a reason; 4.x answers 403; some builds 200 (device document).
    status = device.spec.login_failure_status or (400 if device.version.major < 4 else 403)
    remaining = max(0, int(device.locked_until - device.clock()))
    return json_body(
        {
            "success": False,
            "reason": reason,
            "loginStatus": {
                "failedLogins": device.failed_logins,
                "isTimeLocked": login_result == "LOCKOUT",
                "lockoutTimeRemaining": remaining,
                "loginResult": login_result,
            },
        },
        status=status,
    )


async def login(device: SimDevice, request: web.BaseRequest, _s: Session | None) -> web.Response:
    try:
        payload = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("password"), str):
        return _login_failure(device, "SessionRequestInvalid", "NOLOCKOUT")
    existing = device.find_session(request.cookies.get("session_id"))
    if existing is not None and device.version.major < 4:
        return _login_failure(device, "SessionAlreadyActive", "NOLOCKOUT")
    user = payload.get("user", "admin")
    # Blocking-free: the check is a constant-time compare, no I/O.
    verdict = device.login(
        user if isinstance(user, str) else "", payload["password"], address=request.remote or ""
    )
    if verdict.outcome == "locked_out":
        return _login_failure(device, "SessionPortLockout", "LOCKOUT")
    if verdict.outcome == "bad_credentials":
        if device.locked_out():
            return _login_failure(device, "SessionPortLockout", "LOCKOUT")
        return _login_failure(device, "SessionRequestInvalid", "NOLOCKOUT")
    if verdict.outcome == "session_limit":
        return _login_failure(device, "SessionLimitReached", "NOLOCKOUT")
    session = verdict.session
    assert session is not None
    response = json_body(
        {
            "success": True,
            "loginStatus": {
                "failedLogins": 0,
                "isTimeLocked": False,
                "lockoutTimeRemaining": 0,
                "loginResult": "NOLOCKOUT",
            },
            "session": {
                "sessionId": session.session_id,
                "role": "ADMIN",
                "userId": "admin",
                "clientType": "WEB",
                "isAuthenticated": True,
                "isConnected": True,
                "location": request.remote or "",
            },
        }
    )
    response.set_cookie("session_id", session.session_id, path="/", secure=True, httponly=True)
    if device.version >= XSRF_SINCE:
        response.set_cookie("XSRF-TOKEN", session.xsrf_token, path="/", secure=True)
    return response


async def logout(device: SimDevice, request: web.BaseRequest, _s: Session | None) -> web.Response:
    session = device.find_session(request.cookies.get("session_id"))
    if session is None:
        if device.version.major < 4:
            return json_body({"success": False, "reason": "SessionNoActiveSession"}, status=400)
        return html(403, FORBIDDEN_HTML)
    if device.version >= XSRF_SINCE and request.headers.get("x-xsrf-token") != session.xsrf_token:
        return html(403, FORBIDDEN_HTML)
    device.sessions.pop(session.session_id, None)
    return json_body({"success": True})


async def admin_sessions(
    device: SimDevice, _r: web.BaseRequest, _s: Session | None
) -> web.Response:
    """The unit's open admin sessions, web and SSH, the caller's own included.

    The shape [assumed: the VideoOS 3.x reference names the call, a vendor adapter's capture
    shows a list of up to 8; no public capture shows the fields] is the list of the session
    objects the login answers, each with when it started::

        [{"sessionId": "PS0b6f...", "userId": "admin", "role": "ADMIN", "clientType": "WEB",
          "location": "10.20.1.15", "isAuthenticated": true, "isConnected": true,
          "startTime": 1700000000000}]

    ``clientType`` is ``WEB`` or ``SSH``; ``location`` is the client's address as the unit
    sees it; ``startTime`` is milliseconds since the epoch, like ``systemTime``.
    """
    device.expire_sessions()
    return json_body(
        [
            {
                "sessionId": session.session_id,
                "userId": session.user,
                "role": session.role,
                "clientType": session.kind.upper(),
                "location": session.address,
                "isAuthenticated": True,
                "isConnected": True,
                "startTime": int(session.started_at * 1000),
            }
            for session in sorted(device.sessions.values(), key=lambda s: s.started_at)
        ],
        crlf=True,
    )


# --- the poll cycle ------------------------------------------------------------------------


def _time_offset_ms(timezone: str) -> int:
    offset = datetime.now(ZoneInfo(timezone)).utcoffset()
    return int(offset.total_seconds() * 1000) if offset is not None else 0


async def system(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    return json_body(
        {
            "build": device.build,
            "buildType": "Release",
            "hardwareVersion": "1",
            "lanStatus": lan_status(device),
            "model": device.spec.rest_model,
            "rebootNeeded": device.has_fault("reboot_needed"),
            "serialNumber": device.serial,
            "softwareVersion": device.firmware_version,
            "state": "READY" if device.call is not None else "ASLEEP",
            "systemName": device.spec.display_name,
            "systemTime": int(time.time() * 1000),
            "timeOffset": _time_offset_ms(device.timezone),
            "timeServerState": "TIMESERVER_UP",
            "uptime": round(device.uptime(), 2),
        }
    )


async def system_status(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    entries = [
        {
            "langtag": name.upper().replace(".", "_"),
            "name": f"system.status.{name}",
            "stateList": [state],
        }
        for name, state in status_entries(device)
    ]
    return json_body(entries, crlf=True)


async def system_mode(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    provider = device.provider_mode
    mode = dict(MODE_BY_PROVIDER[provider])
    if device.device_mode:
        mode.update({"activePersona": DEVICE_MODE_PERSONA, "mode": "DEVICE"})
    mode.update({"appLocked": provider in ("teams", "zoom"), "ecoMode": False})
    mode["polyCallControl"] = provider == "poly"
    return json_body(mode)


async def system_mode_device(
    device: SimDevice, _r: web.BaseRequest, _s: Session | None
) -> web.Response:
    return json_body({"result": device.device_mode})


async def system_apps(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    # No "active" marker: a unit lists what is installed, not what runs [seen fields].
    release = device.firmware_version
    apps = [(*POLY_VIDEO_APP, release), (*DEVICE_MODE_APP, release)]
    apps += APPS_BY_PROVIDER[device.provider_mode]
    return json_body(
        [
            {
                "appName": name,
                "packageName": package,
                "personaName": persona,
                "versionInfo": version,
                "lastUpdatedOn": "2024-06-21T00:00:00Z",
            }
            for name, package, persona, version in apps
        ]
    )


def _mac(serial: str, salt: str) -> str:
    digest = hashlib.sha256((serial + salt).encode()).digest()
    return ":".join(f"{b:02x}" for b in (b"\x00\xe0\xdb" + digest[:3]))


async def device_list(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    host_uid = f"uid-{device.serial.lower()}"
    entries: list[dict[str, Any]] = [
        {
            "connectionType": "LOCAL",
            "deviceCategory": "SYSTEM",
            "deviceState": "CONNECTED",
            "deviceType": "CODEC",
            "ip": device.address,
            "macAddress": _mac(device.serial, "host"),
            "productName": device.spec.model_name,
            "serialNumber": device.serial,
            "softwareVersion": f"{device.firmware_version}-{device.build}",
            "systemName": device.spec.display_name,
            "uid": host_uid,
        }
    ]
    for p in device.peripherals:
        category, kind, connection = {
            "touch_controller": ("MODULE", "TOUCHCONTROL", "NETWORK"),
            "e70": ("CAMERA", "CAMERA", "USB" if device.model != "g7500" else "NETWORK"),
            "microphone": ("MODULE", "UNKNOWN", "WIRED"),
        }[p.kind]
        entries.append(
            {
                "connectionType": connection,
                "deviceCategory": category,
                "deviceState": peripheral_state(device, p.serial, p.kind),
                "deviceType": kind,
                # Real units leave these empty for wired and USB modules.
                "ip": "",
                "macAddress": "" if p.kind == "microphone" else _mac(p.serial, "peripheral"),
                "productName": p.product_name,
                "serialNumber": p.serial,
                "softwareVersion": p.firmware,
                "systemName": "",
                "uid": f"uid-{p.serial.lower()}",
            }
        )
    # Real output repeats the host uid on a remote entry with empty fields.
    entries.append(
        {
            "connectionType": "BLUETOOTH",
            "deviceCategory": "REMOTE",
            "deviceState": "PAIRED",
            "deviceType": "UNKNOWN",
            "ip": "",
            "macAddress": "00:00:00:00:00:00",
            "productName": "",
            "serialNumber": "",
            "softwareVersion": "",
            "systemName": "",
            "uid": host_uid,
        }
    )
    return json_body(entries)


async def conferences(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    call = device.call
    if call is None:
        return json_body([], crlf=True)
    started_ms = int((time.time() - (device.clock() - call.started)) * 1000)
    return json_body(
        [
            {
                "id": 0,
                "isActive": True,
                "startTime": started_ms,
                "connections": [
                    {
                        "id": 0,
                        "address": call.remote,
                        "callType": "VIDEO",
                        "state": "CONNECTED",
                        "startTime": started_ms,
                    }
                ],
            }
        ],
        crlf=True,
    )


async def content_status(_d: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    return scalar_body("CONTENT_IDLE")


async def audio(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    connected = sum(1 for m in microphones(device) if m["state"] == "MIC_STATE_GREEN")
    return json_body(
        {"muteLocked": False, "muted": False, "numOfMicsConnected": connected, "volume": 39},
        crlf=True,
    )


async def audio_muted(_d: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    return scalar_body("false")


async def audio_volume(_d: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    return scalar_body("39")


async def audio_microphones(
    device: SimDevice, _r: web.BaseRequest, _s: Session | None
) -> web.Response:
    return json_body(microphones(device))


async def sipservers(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    if not device.spec.sip:
        return json_body([])
    state = "DOWN" if device.has_fault("sip_unregistered") else "UP"
    return json_body(
        [
            {
                "address": "127.0.0.1",
                "port": 5061,
                "protocol": "TLS",
                "registrar": True,
                "state": state,
            }
        ]
    )


async def calendar(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    status = "ONLINE" if device.provider_mode in ("teams", "zoom") else "DISABLED"
    return json_body({"status": status, "meetings": []})


async def calendar_meetings(
    device: SimDevice, request: web.BaseRequest, _s: Session | None
) -> web.Response:
    """The room's meetings between ``start`` and ``end`` (ISO, aware); 404 without a calendar."""
    if not device.calendar_on:
        return json_body({"success": False, "reason": "CalendarDisabled"}, status=404)
    try:
        start, end = (datetime.fromisoformat(request.query[k]) for k in ("start", "end"))
    except (KeyError, ValueError):
        return json_body({"success": False, "reason": "InvalidTimeRange"}, status=400)
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        return json_body({"success": False, "reason": "InvalidTimeRange"}, status=400)
    return json_body(
        [
            {
                "id": meeting_id,
                "subject": meeting.subject,
                "startTime": meeting.start.isoformat(),
                "endTime": meeting.end.isoformat(),
            }
            for meeting_id, meeting in device.meetings_between(start, end)
        ]
    )


async def system_reboot(
    device: SimDevice, request: web.BaseRequest, _s: Session | None
) -> web.Response:
    try:
        payload = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict) or payload.get("action", "reboot") != "reboot":
        return json_body({"success": False, "reason": "InvalidAction"}, status=400)
    loop = asyncio.get_running_loop()
    loop.call_later(REBOOT_DELAY, lambda: loop.create_task(device.reboot()))
    return json_body({"success": True})


def _config_value_ok(name: str, value: str) -> bool:
    if name in ("upgrade.auto.enable", "upgrade.auto.timeFrame.enable"):
        return value.lower() in ("true", "false")
    if name == "upgrade.auto.polling.interval":
        return value.isdigit()
    if name == "upgrade.auto.version" and value:
        try:
            FirmwareVersion.parse(value)
        except ValueError:
            return False
    return True


async def config(device: SimDevice, request: web.BaseRequest, _s: Session | None) -> web.Response:
    try:
        payload = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("names"), list):
        out = []
        for name in payload["names"]:
            key = str(name)
            if key in device.config:
                out.append({"name": key, "value": device.config[key], "result": "NOERROR"})
            else:
                out.append({"name": key, "value": "", "result": "ERR_NOTFOUND"})
        return json_body({"vars": out})
    if isinstance(payload, dict) and isinstance(payload.get("vars"), list):
        out = []
        for item in payload["vars"]:
            if not isinstance(item, dict) or "name" not in item:
                out.append({"name": "", "value": "", "result": "ERR_BADREQUEST"})
                continue
            key, value = str(item["name"]), item.get("value", "")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if key not in device.config:
                out.append({"name": key, "value": "", "result": "ERR_NOTFOUND"})
            elif not _config_value_ok(key, text):
                out.append({"name": key, "value": device.config[key], "result": "ERR_INVALIDVALUE"})
            else:
                device.config[key] = text
                out.append({"name": key, "value": text, "result": "NOERROR"})
        return json_body({"vars": out})
    return json_body(
        {"success": False, "reason": "expected {names: [...]} or {vars: [...]}"}, status=400
    )


def log_archive(device: SimDevice) -> bytes:
    """A small tar archive like the device's log download."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lan = lan_status(device)
    files = {
        "logs/system.log": (
            f"{now} INFO  boot: {device.spec.model_name} {device.firmware_version}-{device.build}\n"
            f"{now} INFO  net: {lan['state']} {lan['speedMbps']}/{lan['duplex']}\n"
            + "".join(f"{now} WARN  fault: {name} active\n" for name in sorted(device.faults))
        ),
        "logs/network.log": (
            f"{now} INFO  eth0: {device.address}/24 gateway {_gateway(device)}"
            f" link {lan['state']}\n"
            + (
                f"{now} WARN  eth0: packet loss beyond gateway\n"
                if device.has_fault("lan_degraded")
                else ""
            )
        ),
        "logs/sip.log": (
            f"{now} INFO  sip: registration "
            + ("failed (408 Request Timeout)" if device.has_fault("sip_unregistered") else "ok")
            + "\n"
        ),
        "logs/info.txt": (
            f"serial={device.serial}\nmodel={device.spec.rest_model}\n"
            f"softwareVersion={device.firmware_version}\nbuild={device.build}\n"
        ),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def system_logs(device: SimDevice, _r: web.BaseRequest, _s: Session | None) -> web.Response:
    return web.Response(
        body=log_archive(device),
        content_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{device.serial}-logs.tar"'},
    )


#: How the lab answers network tests: the path a unit's packets take to a target.
_GATEWAY_HOP = 1


async def _target_of(request: web.BaseRequest) -> str | None:
    try:
        payload = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    target = payload.get("address") if isinstance(payload, dict) else None
    return target if isinstance(target, str) and target.strip() else None


def _gateway(device: SimDevice) -> str:
    """The unit's default gateway: the first address of its /24, as a site LAN has it."""
    head, _, _ = device.address.rpartition(".")
    return f"{head}.{_GATEWAY_HOP}"


async def network_ping(
    device: SimDevice, request: web.BaseRequest, _s: Session | None
) -> web.Response:
    """The unit's own ping to a target [doc: VideoOS REST API 3.x]; every packet is lost
    while its LAN is degraded (the link is up, the path beyond the gateway is not)."""
    target = await _target_of(request)
    if target is None:
        return json_body({"success": False, "reason": "address is required"}, status=400)
    lost = device.has_fault("lan_degraded")
    return json_body(
        {
            "address": target,
            "transmitted": 4,
            "received": 0 if lost else 4,
            "lossPercent": 100 if lost else 0,
            "rttAvgMs": None if lost else 0.4,
            "result": "FAILED" if lost else "SUCCESS",
        }
    )


async def network_traceroute(
    device: SimDevice, request: web.BaseRequest, _s: Session | None
) -> web.Response:
    """The unit's own traceroute to a target; it stops after the gateway while its LAN is
    degraded."""
    target = await _target_of(request)
    if target is None:
        return json_body({"success": False, "reason": "address is required"}, status=400)
    hops: list[dict[str, Any]] = [{"hop": 1, "address": _gateway(device), "rttMs": 0.3}]
    if device.has_fault("lan_degraded"):
        hops += [{"hop": number, "address": "*", "rttMs": None} for number in (2, 3)]
        result = "FAILED"
    else:
        hops.append({"hop": 2, "address": target, "rttMs": 0.5})
        result = "SUCCESS"
    return json_body({"address": target, "hops": hops, "result": result})


async def software_update(
    device: SimDevice, _r: web.BaseRequest, _s: Session | None
) -> web.Response:
    """The state of the last ordered update and why it failed [assumed shape]."""
    return json_body(dict(device.update_status))


#: (method, path) -> (handler, needs a session, firmware it appeared in or None).
ROUTES: dict[tuple[str, str], tuple[Handler, bool, FirmwareVersion | None]] = {
    ("POST", "/rest/session"): (login, False, None),
    ("DELETE", "/rest/session"): (logout, False, None),
    ("GET", "/rest/system"): (system, True, None),
    ("GET", "/rest/current/session/sessions"): (admin_sessions, True, None),
    ("GET", "/rest/system/status"): (system_status, True, None),
    ("GET", "/rest/system/mode"): (system_mode, True, MODE_API_SINCE),
    ("GET", "/rest/system/mode/device"): (system_mode_device, True, None),
    ("GET", "/rest/system/apps"): (system_apps, True, None),
    ("POST", "/rest/current/devicemanagement/devices"): (device_list, True, None),
    ("GET", "/rest/conferences"): (conferences, True, None),
    ("GET", "/rest/conferences/contentstatus"): (content_status, True, None),
    ("GET", "/rest/audio"): (audio, True, None),
    ("GET", "/rest/audio/muted"): (audio_muted, True, None),
    ("GET", "/rest/audio/volume"): (audio_volume, True, None),
    ("GET", "/rest/audio/microphones"): (audio_microphones, True, None),
    ("GET", "/rest/system/sipservers"): (sipservers, True, None),
    ("GET", "/rest/calendar"): (calendar, True, CALENDAR_SINCE),
    ("GET", "/rest/calendar/meetings"): (calendar_meetings, True, CALENDAR_SINCE),
    ("POST", "/rest/system/reboot"): (system_reboot, True, None),
    ("GET", "/rest/system/softwareupdate"): (software_update, True, None),
    ("POST", "/rest/config"): (config, True, None),
    ("GET", "/rest/system/logs"): (system_logs, True, None),
    ("POST", "/rest/system/network/ping"): (network_ping, True, None),
    ("POST", "/rest/system/network/traceroute"): (network_traceroute, True, None),
}
