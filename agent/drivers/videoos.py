"""Driver for Poly VideoOS bars and codecs (Studio X30/X50/X70, G7500), E70 through its host."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from polyfleet.agent.drivers.base import DeviceDriver
from polyfleet.agent.transport.rest import FeatureAbsent, RestClient, fetch_certificate_fingerprint
from polyfleet.agent.transport.ssh import SshClient, SshSession
from polyfleet.shared.errors import (
    DeviceError,
    DeviceProtocolError,
    DeviceUnreachable,
    DeviceWedged,
    NotAPolyDevice,
)
from polyfleet.shared.schema import (
    MAX_ADMIN_SESSIONS,
    AdminSession,
    Firmware,
    Health,
    HealthState,
    Meeting,
    Model,
    Peripheral,
    Problem,
    ProblemCode,
    Provider,
    Snapshot,
    Via,
)

log = logging.getLogger(__name__)

#: ``GET /rest/system`` ``model`` (spaces and case removed) -> our model.
MODEL_MAP: dict[str, Model] = {
    "studiox30": Model.STUDIO_X30,
    "polystudiox30": Model.STUDIO_X30,
    "studiox50": Model.STUDIO_X50,
    "polystudiox50": Model.STUDIO_X50,
    "studiox70": Model.STUDIO_X70,
    "polystudiox70": Model.STUDIO_X70,
    "g7500": Model.G7500,
    "polyg7500": Model.G7500,
    "studioe70": Model.STUDIO_E70,
    "polystudioe70": Model.STUDIO_E70,
}

#: Package or persona names -> provider mode (Teams/Zoom names are assumed, see the device doc).
PROVIDER_HINTS: tuple[tuple[str, Provider], ...] = (
    ("teams", Provider.TEAMS),
    ("skype", Provider.TEAMS),
    ("zoom", Provider.ZOOM),
    ("polylauncher", Provider.POLY),
    ("polyvideo", Provider.POLY),
    ("poly", Provider.POLY),
)

#: The Device Mode app's persona: active (``/rest/system/mode``) while the unit is in USB device
#: mode. The app itself (``com.polycom.camuvc``, "Device Mode") is installed on every unit.
DEVICE_MODE_PERSONA = "camuvc"

#: Peripheral states that count as present.
GOOD_PERIPHERAL_STATES = frozenset({"CONNECTED", "PAIRED"})
#: Status values that are never a fault: ``off`` = not configured, ``unknown`` = optional.
NEUTRAL_STATUS = frozenset({"off", "unknown", ""})
GOOD_STATUS = frozenset({"up", "all_up", "ok", "on", "registered"})
#: Connection states that mean a call is live.
CALL_STATES = frozenset({"CONNECTED", "RINGING", "CONNECTING", "ALERTING", "DIALING"})
_VERSION_TEXT = re.compile(r"^(?P<release>\d+\.\d+\.\d+(?:_\d+)?)(?:[.\-](?P<build>\d+))?$")
_UPTIME_PART = re.compile(r"(\d+)\s*(day|hour|minute|second)s?", re.IGNORECASE)
_MAX_ITEMS = 64


def normalise_model(raw: str) -> Model:
    key = re.sub(r"[^a-z0-9]", "", raw.lower())
    return MODEL_MAP.get(key, Model.UNKNOWN)


def provider_from_text(*texts: str) -> Provider:
    for text in texts:
        lowered = text.lower()
        for needle, provider in PROVIDER_HINTS:
            if needle in lowered:
                return provider
    return Provider.UNKNOWN


def _text(value: Any, limit: int = 256) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value).strip()[:limit]
    return ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value[: _MAX_ITEMS * 4] if isinstance(value, list) else []


def _float(value: Any) -> float | None:
    """A finite number >= 0 from a device's answer, else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _serial(value: Any) -> str:
    text = _text(value, 64)
    return text if re.fullmatch(r"[A-Za-z0-9._\-]+", text) else ""


def split_firmware(version: str, build: str = "") -> Firmware:
    """``4.1.0`` + ``382263``, or ``4.1.0-382263`` alone -> Firmware(version, build)."""
    match = _VERSION_TEXT.match(version.strip())
    if match is None:
        return Firmware(version=version[:256], build=build[:256])
    # Keep the build as printed (leading zeros included): it is an identifier.
    return Firmware(version=match["release"], build=match["build"] or build)


def status_map(entries: Any) -> dict[str, str]:
    """``GET /rest/system/status`` list -> {short name: state}, e.g. {"mr.camera": "all_up"}."""
    result: dict[str, str] = {}
    for entry in _list(entries):
        item = _dict(entry)
        name = _text(item.get("name")).lower()
        if not name:
            continue
        states = _list(item.get("stateList"))
        state = _text(states[0]).lower() if states else _text(item.get("state")).lower()
        result[name.removeprefix("system.status.")] = state
    return result


#: SSH ``status`` names (legacy API) -> the REST short names.
SSH_STATUS_NAMES = {
    "ipnetwork": "ipnetwork",
    "lan": "ipnetwork",
    "network": "ipnetwork",
    "camera": "mr.camera",
    "cameras": "mr.camera",
    "mr.camera": "mr.camera",
    "trackablecamera": "trackablecamera",
    "audio": "mr.audio",
    "microphone": "mr.audio",
    "microphones": "mr.audio",
    "mr.audio": "mr.audio",
    "sip": "sipserver",
    "sipserver": "sipserver",
    "logthreshold": "logthreshold",
    "log": "logthreshold",
}


#: Legacy-API states -> REST states.
SSH_STATES = {"online": "up", "offline": "down", "disabled": "off"}


def ssh_status_map(text: str) -> dict[str, str]:
    """SSH ``status`` output (``<name> <state>`` lines, ``status end``) -> REST-style names."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) < 2 or parts[0].lower() in ("status", "error:", "info:"):
            continue
        name = parts[0].lower().removeprefix("system.status.")
        name = SSH_STATUS_NAMES.get(name, name)
        state = parts[-1].lower()
        result[name] = SSH_STATES.get(state, state)
    return result


def problems_from_status(status: dict[str, str], *, lan_state: str = "") -> list[Problem]:
    """Problem codes from subsystem states (the device document's mapping table)."""
    problems: list[Problem] = []

    def bad(name: str) -> str | None:
        value = status.get(name)
        if value is None or value in NEUTRAL_STATUS or value in GOOD_STATUS:
            return None
        return value

    ipnet = status.get("ipnetwork", "")
    if (lan_state and lan_state != "LAN_UP") or ipnet == "down":
        problems.append(
            Problem(code=ProblemCode.LAN_DOWN, detail=f"lan {lan_state or ipnet}".strip())
        )
    camera = bad("mr.camera")
    tracking = status.get("trackablecamera")
    if camera is not None or tracking == "down":
        problems.append(
            Problem(code=ProblemCode.CAMERA_DOWN, detail=f"camera {camera or 'tracking down'}")
        )
    audio = bad("mr.audio")
    if audio is not None:
        problems.append(Problem(code=ProblemCode.MICROPHONE_DOWN, detail=f"audio {audio}"))
    if status.get("sipserver") == "down":
        problems.append(Problem(code=ProblemCode.SIP_UNREGISTERED, detail="sip server down"))
    if status.get("logthreshold") == "full":
        problems.append(Problem(code=ProblemCode.LOG_STORAGE_FULL, detail="log storage full"))
    return problems


def provider_from_mode(mode: dict[str, Any]) -> Provider:
    """Provider from ``GET /rest/system/mode`` (4.x): the active persona first, then the app."""
    if _text(mode.get("activePersona")).lower() == DEVICE_MODE_PERSONA:
        return Provider.DEVICE_MODE
    return provider_from_text(
        _text(mode.get("app")),
        _text(mode.get("appPersona")),
        _text(mode.get("activePersona")),
        _text(mode.get("mode")),
    )


def device_mode_on(answer: Any) -> bool:
    """``GET /rest/system/mode/device``: only ``{"result": true}`` (or a bare ``true``) is on."""
    return answer is True or _dict(answer).get("result") is True


def is_device_mode_app(app: dict[str, Any]) -> bool:
    """The Device Mode app, listed by every unit whether or not device mode is on."""
    package = _text(app.get("packageName")).lower()
    persona = _text(app.get("personaName")).lower()
    name = _text(app.get("appName")).lower()
    return DEVICE_MODE_PERSONA in package or persona == DEVICE_MODE_PERSONA or name == "device mode"


def provider_from_apps(apps: Any) -> Provider:
    """Provider from ``GET /rest/system/apps`` when the firmware lacks ``/rest/system/mode``.

    Teams or Zoom when its app is installed, else Poly Video. The Device Mode app
    never decides: every unit has it (``GET /rest/system/mode/device`` tells device
    mode). Apps marked active, where a unit marks them, count before the others.
    """
    items = [a for a in (_dict(x) for x in _list(apps)) if not is_device_mode_app(a)]
    active = [
        a
        for a in items
        if a.get("active") is True or a.get("isActive") is True or a.get("running") is True
    ]
    for app in active or items:
        found = provider_from_text(
            _text(app.get("packageName")), _text(app.get("personaName")), _text(app.get("appName"))
        )
        # Poly Video is on every unit; a third-party app wins over it.
        if found not in (Provider.UNKNOWN, Provider.POLY):
            return found
    for app in active or items:
        found = provider_from_text(_text(app.get("packageName")), _text(app.get("appName")))
        if found is not Provider.UNKNOWN:
            return found
    return Provider.UNKNOWN


def in_call_from_conferences(conferences: Any) -> bool:
    for conference in _list(conferences):
        item = _dict(conference)
        connections = _list(item.get("connections"))
        if not connections:
            return True
        for connection in connections:
            if _text(_dict(connection).get("state")).upper() in CALL_STATES:
                return True
    return False


#: ``clientType`` of a session -> how it reached the unit.
SESSION_KINDS = {"WEB": "web", "HTTP": "web", "HTTPS": "web", "REST": "web", "SSH": "ssh"}
#: Session start times outside these are no time at all (ms since the epoch).
_EARLIEST_MS, _LATEST_MS = 1_000_000_000_000, 32_503_680_000_000


def _session_start(value: Any) -> datetime | None:
    """``startTime``: milliseconds since the epoch (like ``systemTime``) or ISO with an offset."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if _EARLIEST_MS <= value <= _LATEST_MS:
            return datetime.fromtimestamp(value / 1000, UTC)
        return None
    if isinstance(value, str):
        try:
            found = datetime.fromisoformat(value.strip()[:64])
        except ValueError:
            return None
        return found if found.tzinfo is not None else None
    return None


def admin_sessions(
    answer: Any, *, is_ours: Callable[[str], bool], user: str, location: str
) -> list[AdminSession] | None:
    """``GET /rest/current/session/sessions`` -> the unit's open admin sessions, ours first.

    Real answers are not documented field by field: each entry is read like the login's
    session object (``sessionId``, ``userId``, ``role``, ``clientType``, ``location``) with
    ``startTime``, and what is missing or odd stays empty. The session id (a credential)
    never leaves: a digest of it tells sessions apart. A session is ours when this agent
    opened it (``is_ours``), or, where the unit gives no id, when it is ``user``'s from the
    ``location`` the unit named at our login. None: the answer is no list of sessions.
    """
    if isinstance(answer, dict) and isinstance(answer.get("sessions"), list):
        answer = answer["sessions"]
    if not isinstance(answer, list):
        return None
    found: dict[str, AdminSession] = {}
    for item in map(_dict, answer[: MAX_ADMIN_SESSIONS * 4]):
        if not item:
            continue
        session_id = _text(item.get("sessionId"), 512)
        who = _text(item.get("userId") or item.get("user"), 128)
        address = _text(item.get("location") or item.get("address") or item.get("ip"), 64)
        kind = SESSION_KINDS.get(_text(item.get("clientType")).upper(), "other")
        since = _session_start(item.get("startTime"))
        identity = session_id or f"{who}|{address}|{kind}|{since}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:32]
        if session_id:
            ours = is_ours(session_id)
        else:
            ours = bool(location) and (who, address) == (user, location)
        found.setdefault(
            key,
            AdminSession(
                key=key,
                user=who,
                role=_text(item.get("role"), 64),
                address=address,
                kind=kind,  # type: ignore[arg-type]  # one of SESSION_KINDS' values
                since=since,
                agent=ours,
            ),
        )
    ordered = sorted(found.values(), key=lambda s: not s.agent)
    return ordered[:MAX_ADMIN_SESSIONS]


def parse_uptime_text(text: str) -> float | None:
    """``3 Days, 2 Hours, 5 Minutes`` -> seconds."""
    units = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
    parts = _UPTIME_PART.findall(text)
    if not parts:
        return None
    return _float(sum(int(n) * units[u.lower()] for n, u in parts))


def parse_whoami(text: str) -> dict[str, str]:
    """``Hi, my name is : X`` / ``Model: ...`` lines -> {"name", "model", "serial", ...}."""
    keys = {
        "hi, my name is": "name",
        "model": "model",
        "serial number": "serial",
        "software version": "version",
        "build information": "build",
    }
    result: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if not sep:
            continue
        key = keys.get(label.strip().lower())
        if key and key not in result:
            result[key] = value.strip()
    return result


class VideoOSDriver(DeviceDriver):
    """REST first (log in, read, log out), SSH where REST cannot answer and for diagnostics."""

    platform = "videoos"

    async def _rest(self) -> RestClient:
        pins = self.context.pins
        pin = pins.tls
        if pin is None:
            pin = await fetch_certificate_fingerprint(
                self.device.host, self.device.rest_port, timeout=self.context.request_timeout_s
            )
            pins.seen_tls = pin
        return RestClient(
            self.device.host,
            self.device.rest_port,
            session=self.context.session,
            pin=pin,
            timeout=self.context.request_timeout_s,
            ledger=self.context.ledger,
        )

    async def _end_left_sessions(self, rest: RestClient) -> None:
        """Log out what an earlier run of the agent left open here: it could wedge the unit."""
        ledger = self.context.ledger
        if ledger is None:
            return
        for entry in ledger.left_open(self.device.host, self.device.rest_port):
            try:
                await rest.end_left_session(entry)
            except DeviceError as exc:
                # The poll that follows meets the same failure and reports it.
                log.debug("%s: a session left open stays for now: %s", self.device.host, exc)
                return
            log.info("%s: logged out a session an earlier run left open", self.device.host)

    async def _sessions(self, rest: RestClient) -> list[AdminSession] | None:
        """The unit's admin sessions; None where it cannot list them (an extra, not health)."""
        try:
            answer = await rest.get("/rest/current/session/sessions")
        except DeviceProtocolError:
            return None
        ledger = self.context.ledger
        own = rest.session_id

        def is_ours(session_id: str) -> bool:
            return session_id == own or (ledger is not None and ledger.is_ours(session_id))

        return admin_sessions(
            answer, is_ours=is_ours, user=self.device.user, location=rest.location
        )

    def _ssh(self) -> SshClient:
        if not self.device.ssh_port:
            raise DeviceProtocolError(
                f"{self.device.host}: no SSH port configured", host=self.device.host
            )
        return SshClient(
            self.device.host,
            self.device.ssh_port,
            user=self.device.user,
            password=self._password,
            pin=self.context.pins.ssh,
            key_file=self.device.ssh_key_file,
            timeout=self.context.request_timeout_s,
        )

    async def _ssh_run(self, commands: list[str], *, wait_reply: bool = True) -> SshSession:
        result = await self._ssh().run(commands, wait_reply=wait_reply)
        self.context.pins.seen_ssh = result.host_key_fingerprint
        return result

    async def poll(self) -> list[Snapshot]:
        rest = await self._rest()
        await self._end_left_sessions(rest)
        async with rest.logged_in_session(self.device.user, self._password):
            system = await rest.get("/rest/system")
            if not isinstance(system, dict) or not (
                "serialNumber" in system and "softwareVersion" in system
            ):
                raise NotAPolyDevice(
                    f"{self.device.host}: /rest/system is not a VideoOS system answer",
                    host=self.device.host,
                )
            status = status_map(await rest.get("/rest/system/status"))
            provider = await self._provider(rest)
            peripherals_raw = await self._optional(
                rest, "POST", "/rest/current/devicemanagement/devices"
            )
            microphones = await self._optional(rest, "GET", "/rest/audio/microphones")
            conferences = await self._optional(rest, "GET", "/rest/conferences")
            sessions = await self._sessions(rest)
        snapshots = self._snapshots(
            system, status, provider, peripherals_raw, microphones, conferences
        )
        return [snapshots[0].model_copy(update={"sessions": sessions}), *snapshots[1:]]

    async def _optional(self, rest: RestClient, method: str, path: str) -> Any:
        try:
            if method == "POST":
                return await rest.post(path)
            return await rest.get(path)
        except FeatureAbsent:
            return None

    async def _provider(self, rest: RestClient) -> Provider:
        try:
            mode = await rest.get("/rest/system/mode")
        except FeatureAbsent:
            # 3.x: no mode endpoint. Device mode is what /rest/system/mode/device says (the
            # Device Mode app is installed everywhere); the other installed apps tell the rest.
            if device_mode_on(await self._optional(rest, "GET", "/rest/system/mode/device")):
                return Provider.DEVICE_MODE
            apps = await self._optional(rest, "GET", "/rest/system/apps")
            return provider_from_apps(apps)
        return provider_from_mode(_dict(mode))

    def _snapshots(
        self,
        system: dict[str, Any],
        status: dict[str, str],
        provider: Provider,
        peripherals_raw: Any,
        microphones: Any,
        conferences: Any,
    ) -> list[Snapshot]:
        now = datetime.now(UTC)
        serial = _serial(system.get("serialNumber"))
        if not serial:
            raise DeviceProtocolError(
                f"{self.device.host}: no usable serial number", host=self.device.host
            )
        model_raw = _text(system.get("model"))
        system_name = _text(system.get("systemName"))
        lan_state = _text(_dict(system.get("lanStatus")).get("state"))
        problems = problems_from_status(status, lan_state=lan_state)
        if system.get("rebootNeeded") is True:
            problems.append(
                Problem(code=ProblemCode.REBOOT_NEEDED, detail="device asks for a reboot")
            )
        mic_problem = self._microphone_problem(microphones)
        if mic_problem and not any(p.code is ProblemCode.MICROPHONE_DOWN for p in problems):
            problems.append(Problem(code=ProblemCode.MICROPHONE_DOWN, detail=mic_problem))
        peripherals: list[Peripheral] = []
        cameras: list[Peripheral] = []
        seen: set[tuple[str, str]] = set()
        for entry in _list(peripherals_raw):
            item = _dict(entry)
            category = _text(item.get("deviceCategory")).upper()
            device_type = _text(item.get("deviceType")).upper()
            p_serial = _serial(item.get("serialNumber"))
            if category == "SYSTEM" or device_type == "CODEC" or (p_serial and p_serial == serial):
                continue
            kind = _peripheral_kind(category, device_type)
            product = _text(item.get("productName"))
            key = (p_serial, product)
            if key in seen:
                continue  # real units repeat entries
            seen.add(key)
            state = _text(item.get("deviceState")).upper()
            peripheral = Peripheral(
                kind=kind,
                model_raw=product,
                serial=p_serial,
                firmware=_text(item.get("softwareVersion")),
                state=state,
            )
            if len(peripherals) < _MAX_ITEMS:
                peripherals.append(peripheral)
            if state not in GOOD_PERIPHERAL_STATES:
                problems.append(
                    Problem(
                        code=ProblemCode.PERIPHERAL_DISCONNECTED,
                        detail=f"{product or kind} {p_serial} {state or 'missing'}".strip()[:256],
                    )
                )
            if kind == "camera" and normalise_model(product) is Model.STUDIO_E70 and p_serial:
                cameras.append(peripheral)
        in_call = in_call_from_conferences(conferences)
        host = Snapshot(
            serial=serial,
            model=normalise_model(model_raw),
            model_raw=model_raw,
            system_name=system_name,
            firmware=split_firmware(
                _text(system.get("softwareVersion")), _text(system.get("build"))
            ),
            provider=provider,
            health=Health.from_problems(problems[:64]),
            in_call=in_call,
            uptime_s=_float(system.get("uptime")),
            peripherals=peripherals,
            collected_at=now,
            via=Via.REST,
        )
        result = [host]
        for camera in cameras:
            cam_problems: list[Problem] = []
            if camera.state not in GOOD_PERIPHERAL_STATES:
                cam_problems.append(
                    Problem(
                        code=ProblemCode.PERIPHERAL_DISCONNECTED, detail=camera.state or "missing"
                    )
                )
            # The camera's own entry: losing it is a fault for the camera itself.
            cam_state = HealthState.FAULT if cam_problems else HealthState.OK
            result.append(
                Snapshot(
                    serial=camera.serial,
                    model=Model.STUDIO_E70,
                    model_raw=camera.model_raw,
                    system_name=system_name,
                    firmware=split_firmware(camera.firmware),
                    provider=provider,
                    health=Health(state=cam_state, problems=cam_problems),
                    in_call=in_call,
                    host_serial=serial,
                    collected_at=now,
                    via=Via.REST,
                )
            )
        return result

    @staticmethod
    def _microphone_problem(microphones: Any) -> str:
        bad = []
        for mic in _list(microphones):
            state = _text(_dict(mic).get("state")).upper()
            if state and state != "MIC_STATE_GREEN":
                bad.append(state)
        return f"microphone {', '.join(sorted(set(bad)))}" if bad else ""

    async def poll_fallback(self, cause: Exception) -> list[Snapshot]:
        result = await self._ssh_run(["whoami", "status", "callinfo all", "uptime get"])
        who = parse_whoami(result.outputs.get("whoami", "") or result.banner)
        serial = _serial(who.get("serial"))
        if not serial:
            raise NotAPolyDevice(
                f"{self.device.host}: SSH whoami names no serial number", host=self.device.host
            )
        status = ssh_status_map(result.outputs.get("status", ""))
        problems = problems_from_status(status)
        reason = cause.reason if isinstance(cause, DeviceError) else type(cause).__name__
        problems.insert(0, Problem(code=ProblemCode.API_ERROR, detail=f"REST: {reason}"))
        callinfo = result.outputs.get("callinfo all", "")
        in_call = status.get("inacall") == "up" or (
            "callinfo begin" in callinfo and "not in a call" not in callinfo
        )
        model_raw = who.get("model", "")
        return [
            Snapshot(
                serial=serial,
                model=normalise_model(model_raw),
                model_raw=model_raw,
                system_name=who.get("name", ""),
                firmware=split_firmware(
                    who.get("version", ""), _build_digits(who.get("build", ""))
                ),
                provider=Provider.UNKNOWN,
                health=Health.from_problems(problems),
                in_call=in_call,
                uptime_s=parse_uptime_text(result.outputs.get("uptime get", "")),
                collected_at=datetime.now(UTC),
                via=Via.SSH,
            )
        ]

    async def cross_check(self, snapshot: Snapshot) -> list[Problem]:
        """SSH ``whoami``: model, serial and firmware must match what REST said."""
        result = await self._ssh_run(["whoami"])
        who = parse_whoami(result.outputs.get("whoami", "") or result.banner)
        if not who:
            raise DeviceProtocolError(
                f"{self.device.host}: SSH whoami answered nothing readable", host=self.device.host
            )
        firmware = split_firmware(who.get("version", ""), _build_digits(who.get("build", "")))
        ssh_model = normalise_model(who.get("model", ""))
        checks = [
            ("serial", _serial(who.get("serial")), snapshot.serial),
            (
                "model",
                who.get("model", "") if ssh_model is not snapshot.model else "",
                snapshot.model_raw if ssh_model is not snapshot.model else "",
            ),
            ("firmware", firmware.version, snapshot.firmware.version),
            ("build", firmware.build, snapshot.firmware.build),
        ]
        problems = []
        for what, over_ssh, over_rest in checks:
            # A value one side does not give is no disagreement.
            if over_ssh and over_rest and over_ssh != over_rest:
                problems.append(
                    Problem(
                        code=ProblemCode.API_ERROR,
                        detail=f"SSH cross-check: {what} {over_ssh} over SSH, "
                        f"{over_rest} over REST"[:256],
                    )
                )
        return problems

    async def in_call(self) -> bool:
        """REST conferences; over SSH (``callinfo all``) when REST is wedged or down."""
        try:
            rest = await self._rest()
            async with rest.logged_in_session(self.device.user, self._password):
                return in_call_from_conferences(await rest.get("/rest/conferences"))
        except _REST_DOWN as exc:
            if not self.device.ssh_port:
                raise
            try:
                result = await self._ssh_run(["callinfo all"])
            except DeviceError as ssh_exc:
                raise _both_failed(exc, ssh_exc) from None
            callinfo = result.outputs.get("callinfo all", "")
            if "not in a call" in callinfo:
                return False
            if "callinfo begin" in callinfo:
                return True
            # Neither answer: a call cannot be ruled out, and a call must never be cut.
            raise DeviceProtocolError(
                f"{self.device.host}: SSH callinfo gave no answer ({callinfo[:64]!r})",
                host=self.device.host,
            ) from exc

    async def reboot(self) -> None:
        """REST reboot; ``reboot now`` over SSH when REST is wedged (what a wedged unit needs)."""
        try:
            rest = await self._rest()
            async with rest.logged_in_session(self.device.user, self._password):
                await rest.post("/rest/system/reboot", {"action": "reboot"})
        except _REST_DOWN as exc:
            if not self.device.ssh_port:
                raise
            try:
                # The unit drops the line as it goes down: no reply to wait for.
                await self._ssh_run(["reboot now"], wait_reply=False)
            except DeviceError as ssh_exc:
                raise _both_failed(exc, ssh_exc) from None
            log.info("%s: rebooted over SSH (REST: %s)", self.device.host, exc.reason)

    async def read_config(self, names: list[str]) -> dict[str, str]:
        rest = await self._rest()
        async with rest.logged_in_session(self.device.user, self._password):
            answer = await rest.post("/rest/config", {"names": list(names)})
        values: dict[str, str] = {}
        for var in _list(_dict(answer).get("vars")):
            var = _dict(var)
            if var.get("result", "NOERROR") == "NOERROR" and isinstance(var.get("name"), str):
                values[var["name"]] = _text(var.get("value"))
        return values

    async def meetings(self, start: datetime, end: datetime) -> list[Meeting] | None:
        """``GET /rest/calendar/meetings``; None when the unit answers it has no calendar
        (404: a Poly Video room, or a firmware from before the calendar API)."""
        query = urlencode({"start": start.isoformat(), "end": end.isoformat()})
        rest = await self._rest()
        try:
            async with rest.logged_in_session(self.device.user, self._password):
                answer = await rest.get(f"/rest/calendar/meetings?{query}")
        except FeatureAbsent:
            return None
        found: list[Meeting] = []
        for item in map(_dict, _list(answer)):
            try:
                found.append(
                    Meeting(
                        start=datetime.fromisoformat(_text(item.get("startTime"))),
                        end=datetime.fromisoformat(_text(item.get("endTime"))),
                    )
                )
            except ValueError as exc:
                raise DeviceProtocolError(
                    f"{self.device.host}: a calendar meeting without times: {exc}",
                    host=self.device.host,
                ) from None
        return found

    async def write_config(self, values: dict[str, str]) -> None:
        rest = await self._rest()
        body = {"vars": [{"name": name, "value": value} for name, value in values.items()]}
        async with rest.logged_in_session(self.device.user, self._password):
            answer = await rest.post("/rest/config", body)
        refused = [
            f"{_text(var.get('name'))} ({_text(var.get('result'))})"
            for var in map(_dict, _list(_dict(answer).get("vars")))
            if var.get("result", "NOERROR") != "NOERROR"
        ]
        if refused:
            raise DeviceProtocolError(
                f"{self.device.host}: configuration refused: {', '.join(refused)}",
                host=self.device.host,
            )

    async def _network_tests(self, rest: RestClient, targets: Sequence[str]) -> bytes:
        """The unit's ping and traceroute to each target, as JSON for the bundle."""
        results = [
            {
                "target": target,
                "ping": await _network_test(rest, "ping", target),
                "traceroute": await _network_test(rest, "traceroute", target),
            }
            for target in targets
        ]
        return json.dumps(results, indent=2).encode()

    async def update_status(self) -> dict[str, str]:
        rest = await self._rest()
        async with rest.logged_in_session(self.device.user, self._password):
            try:
                answer = _dict(await rest.get("/rest/system/softwareupdate"))
            except FeatureAbsent:
                return {"state": "IDLE", "version": "", "reason": ""}
        return {key: _text(answer.get(key)) for key in ("state", "version", "reason")}

    async def diagnostics(self, network_targets: Sequence[str] = ()) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        try:
            rest = await self._rest()
            async with rest.logged_in_session(self.device.user, self._password):
                files["system-logs.tar"] = await rest.get_bytes("/rest/system/logs")
                if network_targets:
                    files["network-tests.json"] = await self._network_tests(rest, network_targets)
        except DeviceError as exc:
            files["system-logs.error.txt"] = f"{exc.reason}: {exc}\n".encode()
        try:
            result = await self._ssh_run(["status", "whoami"])
            files["ssh-status.txt"] = result.outputs.get("status", "").encode() + b"\n"
            files["ssh-whoami.txt"] = result.outputs.get("whoami", "").encode() + b"\n"
        except DeviceError as exc:
            files["ssh.error.txt"] = f"{exc.reason}: {exc}\n".encode()
        return files


async def _network_test(rest: RestClient, kind: str, target: str) -> dict[str, Any]:
    """One of the unit's own network tests (``ping``, ``traceroute``) to ``target``; a test
    the unit cannot run is recorded with why, the others still run."""
    try:
        answer = await rest.post(f"/rest/system/network/{kind}", {"address": target})
    except DeviceError as exc:
        return {"error": f"{exc.reason}: {exc}"}
    return answer if isinstance(answer, dict) else {"answer": answer}


#: REST failures after which SSH may still reach the unit (not credentials or pins).
_REST_DOWN = (DeviceWedged, DeviceUnreachable, DeviceProtocolError)


def _both_failed(rest_exc: DeviceError, ssh_exc: DeviceError) -> DeviceError:
    """The REST failure (its kind decides the reason), with why SSH could not stand in."""
    return type(rest_exc)(f"{rest_exc}; over SSH: {ssh_exc}", host=rest_exc.host)


PeripheralKind = Literal["camera", "touch_controller", "microphone", "remote", "other"]


def _peripheral_kind(category: str, device_type: str) -> PeripheralKind:
    if category == "CAMERA" or device_type == "CAMERA":
        return "camera"
    if device_type == "TOUCHCONTROL":
        return "touch_controller"
    if category == "REMOTE":
        return "remote"
    if "MIC" in device_type or "MIC" in category:
        return "microphone"
    return "other"


def _build_digits(text: str) -> str:
    match = re.search(r"\d{3,}", text)
    return match.group(0) if match else ""
