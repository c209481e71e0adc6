"""Fleet files: which simulated devices a lab runs, where, and what happens to them."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, AwareDatetime, ConfigDict, model_validator

from polyfleet.shared.config import (
    ConfigModel,
    KeyProblem,
    at_least,
    between,
    check,
    config_error,
    key_path,
    one_of,
    read_toml,
)
from polyfleet.shared.version import FirmwareVersion, VersionError

MODELS = ("studio_x30", "studio_x50", "studio_x70", "g7500")
PROVIDERS = ("teams", "zoom", "poly", "device_mode")
PERIPHERAL_KINDS = ("touch_controller", "microphone", "e70")
UPDATE_OUTCOMES = ("ok", "fail", "brick")
SSH_HOST_KEY_TYPES = ("ed25519", "rsa")
LOGIN_FAILURE_STATUSES = (None, 200, 400, 403)
SSH_LINE_ENDINGS = ("crlf", "crcrlf")
#: How a device that does not answer (LAN down, off, booting, bricked) is silent:
#: ``refuse`` = connections refused at once (fast tests); ``drop`` = connection
#: attempts time out, as with a real unit whose cable is out.
SILENT_MODES = ("refuse", "drop")
#: Hosts that answer on the network but are not Poly VideoOS devices (see OtherHostSpec).
OTHER_HOST_KINDS = ("web_server", "json_api", "poly_phone")

#: Every fault a device can carry (timeline, control API and SimDevice.set_fault use these).
FAULTS = (
    "camera_down",
    "microphone_down",
    "lan_down",
    "lan_degraded",
    "sip_unregistered",
    "log_storage_full",
    "reboot_needed",
    "wedged",
    "slow",
    "locked_out",
    "peripheral_disconnected",
    "e70_down",
    "garbage",
    "admin_session",
)

#: The parameters a fault takes; any other parameter is an error.
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "slow": frozenset({"latency_ms"}),
    "lan_down": frozenset({"mode"}),
    "peripheral_disconnected": frozenset({"serial"}),
    "admin_session": frozenset({"address", "user", "type"}),
}
#: Where the ``admin_session`` fault's admin signs in from unless told (TEST-NET-2: an
#: address no site's admin networks hold; it is only a label, nothing is sent there).
DEFAULT_INTRUDER_ADDRESS = "198.51.100.23"
DEFAULT_SLOW_LATENCY_MS = 2000.0

DEFAULT_PASSWORD = "Polycom12345"  # noqa: S105 - the factory default of a lab device
DEFAULT_FIRMWARE = "4.2.2"
DEFAULT_BUILD = "408037"
DEFAULT_LOCKOUT_FAILURES = 10
DEFAULT_LOCKOUT_SECONDS = 300.0
DEFAULT_SESSION_LIMIT = 5
DEFAULT_SESSION_IDLE_SECONDS = 600.0
DEFAULT_BOOT_SECONDS = 2.0
DEFAULT_INSTALL_SECONDS = 10.0
DEFAULT_UPTIME_SECONDS = 3 * 86400.0 + 2 * 3600.0 + 5 * 60.0
#: The software part of the SSH identification string (``SSH-2.0-<this>``). Nobody
#: documents what real units send [assumed]; a stock OpenSSH, as on an embedded Linux.
DEFAULT_SSH_SERVER_VERSION = "OpenSSH_8.4"
_SSH_VERSION = re.compile(r"[!-,.-~]{1,64}( [ -~]{1,120})?")

#: Builds of releases the device document lists, so a fleet may name the version alone.
KNOWN_BUILDS = {
    "3.5.0": "344025",
    "3.10.0": "362035",
    "3.12.0": "366027",
    "3.14.1": "374010",
    "4.0.0": "376092",
    "4.0.1": "380048",
    "4.0.2": "384012",
    "4.1.0": "382263",
    "4.1.0_00": "180034",
    "4.1.2": "388101",
    "4.1.3": "394009",
    "4.2.0": "396113",
    "4.2.2": "408037",
    "4.6.2": "420118",
}

MODEL_NAMES = {
    "studio_x30": "Studio X30",
    "studio_x50": "Studio X50",
    "studio_x70": "Studio X70",
    "g7500": "G7500",
}


def default_port(well_known: int) -> int:
    """The well-known port when running as root, else 0 (the OS picks one)."""
    return well_known if os.geteuid() == 0 else 0


@dataclass(frozen=True, kw_only=True)
class PeripheralSpec:
    """A touch controller, an extra microphone or a Studio E70 camera attached to a host."""

    kind: str
    serial: str
    firmware: str = ""
    name: str = ""

    @property
    def product_name(self) -> str:
        if self.name:
            return self.name
        return {"touch_controller": "Poly TC8", "microphone": "Poly Expansion Microphone"}.get(
            self.kind, "Poly Studio E70"
        )


@dataclass(frozen=True, kw_only=True)
class FaultWindow:
    """A fault active from ``at`` until ``until`` seconds after lab start (None: for good)."""

    name: str
    at: float = 0.0
    until: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CallWindow:
    """A call that starts at ``at`` and ends at ``until`` seconds after lab start."""

    at: float = 0.0
    until: float | None = None
    remote: str = "sip:meeting@127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class MeetingSpec:
    """A meeting booked in the unit's room calendar (real instants, not lab seconds: a
    rollout's windows are on the calendar)."""

    start: datetime
    end: datetime
    subject: str = "Meeting"


@dataclass(frozen=True, kw_only=True)
class UpdateBehaviour:
    """How the device handles an ordered firmware update."""

    install_seconds: float = DEFAULT_INSTALL_SECONDS
    outcome: str = "ok"


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """One simulated VideoOS device (bar or G7500 codec) and its peripherals."""

    serial: str
    model: str
    address: str
    firmware: str = DEFAULT_FIRMWARE
    build: str = DEFAULT_BUILD
    #: The provider mode the unit is set up for; ``device_mode`` = Poly Video in device mode.
    provider: str = "poly"
    #: USB device mode on at start (a laptop uses the unit as its camera and speakerphone).
    device_mode: bool = False
    admin_password: str = DEFAULT_PASSWORD
    rest_port: int | None = None
    ssh_port: int | None = None
    system_name: str = ""
    peripherals: list[PeripheralSpec] = field(default_factory=list)
    in_call: bool = False
    sip: bool = True
    faults: list[FaultWindow] = field(default_factory=list)
    calls: list[CallWindow] = field(default_factory=list)
    #: The room calendar's meetings (answered while the unit's calendar is on).
    meetings: list[MeetingSpec] = field(default_factory=list)
    update: UpdateBehaviour = field(default_factory=UpdateBehaviour)
    regenerate_cert_on_reboot: bool = False
    ssh_host_key_type: str = "ed25519"
    lockout_failures: int = DEFAULT_LOCKOUT_FAILURES
    lockout_seconds: float = DEFAULT_LOCKOUT_SECONDS
    session_limit: int = DEFAULT_SESSION_LIMIT
    session_idle_seconds: float = DEFAULT_SESSION_IDLE_SECONDS
    boot_seconds: float = DEFAULT_BOOT_SECONDS
    uptime_seconds: float = DEFAULT_UPTIME_SECONDS
    #: Status of a refused login; None = by firmware (400 on 3.x, 403 on 4.x). Some builds use 200.
    login_failure_status: int | None = None
    #: SSH line ending: ``crlf`` or ``crcrlf`` (``\r\r\n``, seen on some units).
    ssh_line_ending: str = "crlf"
    #: Delay before the SSH shell banner, in milliseconds.
    ssh_banner_delay_ms: float = 0.0
    #: SSH identification after ``SSH-2.0-`` (software version, optional comment).
    ssh_server_version: str = DEFAULT_SSH_SERVER_VERSION
    #: How the device is silent when it does not answer: ``refuse`` or ``drop`` (SILENT_MODES).
    silent_mode: str = "refuse"

    def __post_init__(self) -> None:
        problems = _device_problems(self)
        if problems:
            raise ValueError(f"device {self.serial!r}: " + "; ".join(problems))

    @property
    def version(self) -> FirmwareVersion:
        return FirmwareVersion.parse(self.firmware, self.build)

    @property
    def provider_mode(self) -> str:
        """The provider the unit is set up for: ``teams``, ``zoom`` or ``poly``."""
        return "poly" if self.provider == "device_mode" else self.provider

    @property
    def starts_in_device_mode(self) -> bool:
        return self.device_mode or self.provider == "device_mode"

    @property
    def model_name(self) -> str:
        """The name a person reads, e.g. ``Studio X50``."""
        return MODEL_NAMES[self.model]

    @property
    def rest_model(self) -> str:
        """``model`` as ``GET /rest/system`` prints it: no space (``StudioX30``)."""
        return MODEL_NAMES[self.model].replace(" ", "")

    @property
    def display_name(self) -> str:
        return self.system_name or f"{self.model_name} {self.serial[-4:]}"


@dataclass(frozen=True, kw_only=True)
class OtherHostSpec:
    """A host in a room that answers HTTPS (and maybe SSH) but is not a Poly VideoOS device.

    ``web_server``: a web UI (printer, NAS): ``/`` is an HTML page titled ``title``,
    everything else 404. ``json_api``: another vendor's JSON API: every request 401
    JSON. ``poly_phone``: a Poly desk phone's web UI: the landing page says "Poly",
    but there is no VideoOS REST API (404). With ``ssh_port`` set it also runs an SSH
    server of a plain Linux box (password login, shell commands it does not know).
    """

    name: str
    address: str
    kind: str = "web_server"
    title: str = ""
    rest_port: int | None = None
    ssh_port: int | None = None
    admin_password: str = DEFAULT_PASSWORD

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in OTHER_HOST_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(OTHER_HOST_KINDS)}")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            problems.append("name must be letters, digits, - and _")
        problems += _address_problems(self.address)
        if problems:
            raise ValueError(f"other host {self.name!r}: " + "; ".join(problems))

    @property
    def page_title(self) -> str:
        if self.title:
            return self.title
        return {
            "web_server": "Web Management",
            "json_api": "API",
            "poly_phone": "Poly CCX 500 Business Media Phone",
        }[self.kind]


@dataclass(frozen=True, kw_only=True)
class RoomSpec:
    id: str
    name: str
    devices: list[DeviceSpec] = field(default_factory=list)
    #: Hosts that are not Poly VideoOS devices (never polled; for discovery and probe tests).
    other_hosts: list[OtherHostSpec] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class SiteSpec:
    id: str
    name: str
    timezone: str = "Europe/Warsaw"
    rooms: list[RoomSpec] = field(default_factory=list)


@dataclass(frozen=True)
class FleetSpec:
    sites: list[SiteSpec]

    def placed_devices(self) -> list[tuple[SiteSpec, RoomSpec, DeviceSpec]]:
        """Every device with the site and room it sits in, in file order."""
        return [(s, r, d) for s in self.sites for r in s.rooms for d in r.devices]

    def placed_other_hosts(self) -> list[tuple[SiteSpec, RoomSpec, OtherHostSpec]]:
        """Every non-Poly host with its site and room, in file order."""
        return [(s, r, o) for s in self.sites for r in s.rooms for o in r.other_hosts]


class FaultParamError(ValueError):
    """A fault parameter that is unknown or has a bad value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def fault_params(
    name: str, params: dict[str, Any], peripherals: list[PeripheralSpec] | None
) -> dict[str, Any]:
    """The checked parameters of fault ``name`` on a device with ``peripherals``.

    FaultParamError names the bad parameter (``name`` when the device cannot have
    the fault at all: ``e70_down`` without an E70, ``peripheral_disconnected``
    without peripherals). ``peripherals`` None skips what depends on the device.
    """
    if peripherals is not None:
        if name == "e70_down" and not any(p.kind == "e70" for p in peripherals):
            raise FaultParamError("name", "e70_down needs a Studio E70 on this device")
        if name == "peripheral_disconnected" and not peripherals:
            raise FaultParamError(
                "name", "peripheral_disconnected needs a peripheral on this device"
            )
    allowed = FAULT_PARAMS.get(name, frozenset())
    for key in params:
        if key not in allowed:
            known = f" (it takes {', '.join(sorted(allowed))})" if allowed else ""
            raise FaultParamError(key, f"{name} takes no parameter {key!r}{known}")
    checked = dict(params)
    if name == "slow":
        latency = params.get("latency_ms", DEFAULT_SLOW_LATENCY_MS)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise FaultParamError(
                "latency_ms", "slow needs latency_ms, a number of milliseconds >= 0"
            )
        checked["latency_ms"] = float(latency)
    if name == "admin_session":
        for key, default in (("address", DEFAULT_INTRUDER_ADDRESS), ("user", "admin")):
            value = params.get(key, default)
            if not isinstance(value, str) or not value or len(value) > 64:
                raise FaultParamError(key, f"admin_session {key} must be a short non-empty text")
            checked[key] = value
        if params.get("type", "web") not in ("web", "ssh"):
            raise FaultParamError("type", "admin_session type must be web or ssh")
        checked["type"] = params.get("type", "web")
    if name == "lan_down" and "mode" in params and params["mode"] not in SILENT_MODES:
        raise FaultParamError("mode", f"lan_down mode must be one of {', '.join(SILENT_MODES)}")
    if name == "peripheral_disconnected" and "serial" in params:
        target = params["serial"]
        if not isinstance(target, str) or (
            peripherals is not None and target not in {p.serial for p in peripherals}
        ):
            raise FaultParamError("serial", f"no peripheral {target!r} on this device")
    return checked


def split_firmware(text: str, build: str = "") -> tuple[str, str]:
    """``("4.2.2", "408037")`` from ``4.2.2-408037``, or ``4.2.2`` plus a given or known build."""
    version = FirmwareVersion.parse(text, build or None)
    release = version.release
    if version.build:
        return release, str(version.build)
    return release, KNOWN_BUILDS.get(release, "100000")


def _address_problems(text: str) -> list[str]:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return [f"address {text!r} is not an IPv4 address"]
    if not address.is_loopback or address.version != 4:
        return [f"address {text} is not in 127.0.0.0/8"]
    return []


def _device_problems(spec: DeviceSpec) -> list[str]:
    problems: list[str] = []
    if not spec.serial or not spec.serial.replace("-", "").replace("_", "").isalnum():
        problems.append("serial must be letters and digits")
    if spec.model not in MODELS:
        problems.append(f"model {spec.model!r} is not one of {', '.join(MODELS)}")
    if spec.provider not in PROVIDERS:
        problems.append(f"provider {spec.provider!r} is not one of {', '.join(PROVIDERS)}")
    problems += _address_problems(spec.address)
    try:
        FirmwareVersion.parse(spec.firmware, spec.build)
    except VersionError as exc:
        problems.append(str(exc))
    for name, port in (("rest_port", spec.rest_port), ("ssh_port", spec.ssh_port)):
        if port is not None and not 0 <= port <= 65535:
            problems.append(f"{name} {port} is not a TCP port")
    if spec.ssh_host_key_type not in SSH_HOST_KEY_TYPES:
        problems.append(f"ssh_host_key_type must be one of {', '.join(SSH_HOST_KEY_TYPES)}")
    if spec.login_failure_status not in LOGIN_FAILURE_STATUSES:
        problems.append("login_failure_status must be 200, 400 or 403")
    if spec.ssh_line_ending not in SSH_LINE_ENDINGS:
        problems.append(f"ssh_line_ending must be one of {', '.join(SSH_LINE_ENDINGS)}")
    if not _SSH_VERSION.fullmatch(spec.ssh_server_version):
        problems.append(
            "ssh_server_version must be printable ASCII without '-' or spaces in the version"
            " (e.g. OpenSSH_8.4)"
        )
    if spec.silent_mode not in SILENT_MODES:
        problems.append(f"silent_mode must be one of {', '.join(SILENT_MODES)}")
    if spec.update.outcome not in UPDATE_OUTCOMES:
        problems.append(f"update.outcome must be one of {', '.join(UPDATE_OUTCOMES)}")
    for window in spec.faults:
        if window.name not in FAULTS:
            problems.append(f"fault {window.name!r} is not one of {', '.join(FAULTS)}")
    for p in spec.peripherals:
        if p.kind not in PERIPHERAL_KINDS:
            problems.append(
                f"peripheral kind {p.kind!r} is not one of {', '.join(PERIPHERAL_KINDS)}"
            )
    return problems


# --- the fleet file --------------------------------------------------------------------------


def _loopback(text: str) -> str:
    problems = _address_problems(text)
    if problems:
        raise ValueError(problems[0].removeprefix("address ") + " (the lab is loopback only)")
    return text


def _login_failure_status(value: int) -> int:
    if value not in LOGIN_FAILURE_STATUSES:
        raise ValueError("must be 200, 400 or 403")
    return value


Seconds = Annotated[float, at_least(0)]
TcpPort = Annotated[int, between(0, 65535)]
Loopback = Annotated[str, AfterValidator(_loopback)]


PeripheralKind = Annotated[str, one_of(PERIPHERAL_KINDS)]
FaultName = Annotated[str, one_of(FAULTS)]
UpdateOutcome = Annotated[str, one_of(UPDATE_OUTCOMES)]
Model = Annotated[str, one_of(MODELS)]
Provider = Annotated[str, one_of(PROVIDERS)]
HostKeyType = Annotated[str, one_of(SSH_HOST_KEY_TYPES)]
LineEnding = Annotated[str, one_of(SSH_LINE_ENDINGS)]
SilentMode = Annotated[str, one_of(SILENT_MODES)]
OtherHostKind = Annotated[str, one_of(OTHER_HOST_KINDS)]


class PeripheralTable(ConfigModel):
    kind: PeripheralKind
    serial: str
    firmware: str = ""
    name: str = ""


class FaultTable(ConfigModel):
    """A fault window; keys other than name, at and until are the fault's parameters."""

    model_config = ConfigDict(extra="allow")

    name: FaultName
    at: Seconds = 0.0
    until: Seconds | None = None

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.until is not None and self.until <= self.at:
            raise KeyProblem("until", f"must be after at ({self.at:g})")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CallTable(ConfigModel):
    at: Seconds = 0.0
    until: Seconds | None = None
    remote: str = "sip:meeting@127.0.0.1"

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.until is not None and self.until <= self.at:
            raise KeyProblem("until", f"must be after at ({self.at:g})")
        return self


class MeetingTable(ConfigModel):
    start: AwareDatetime
    end: AwareDatetime
    subject: str = "Meeting"

    @model_validator(mode="after")
    def _span(self) -> Self:
        if self.end <= self.start:
            raise KeyProblem("end", f"must be after start ({self.start.isoformat()})")
        return self


class UpdateTable(ConfigModel):
    install_seconds: Seconds = DEFAULT_INSTALL_SECONDS
    outcome: UpdateOutcome = "ok"


class DeviceTable(ConfigModel):
    """One ``[[sites.rooms.devices]]`` entry, ``[defaults]`` merged in (see DeviceSpec)."""

    serial: str
    model: Model
    address: Loopback
    firmware: str = DEFAULT_FIRMWARE
    build: str = ""
    provider: Provider = "poly"
    device_mode: bool = False
    admin_password: str = DEFAULT_PASSWORD
    rest_port: TcpPort | None = None
    ssh_port: TcpPort | None = None
    system_name: str = ""
    peripherals: list[PeripheralTable] = []
    in_call: bool = False
    sip: bool = True
    faults: list[FaultTable] = []
    calls: list[CallTable] = []
    meetings: list[MeetingTable] = []
    update: UpdateTable = UpdateTable()
    regenerate_cert_on_reboot: bool = False
    ssh_host_key_type: HostKeyType = "ed25519"
    lockout_failures: Annotated[int, at_least(1)] = DEFAULT_LOCKOUT_FAILURES
    lockout_seconds: Seconds = DEFAULT_LOCKOUT_SECONDS
    session_limit: Annotated[int, at_least(1)] = DEFAULT_SESSION_LIMIT
    session_idle_seconds: Seconds = DEFAULT_SESSION_IDLE_SECONDS
    boot_seconds: Seconds = DEFAULT_BOOT_SECONDS
    uptime_seconds: Seconds = DEFAULT_UPTIME_SECONDS
    login_failure_status: Annotated[int, AfterValidator(_login_failure_status)] | None = None
    ssh_line_ending: LineEnding = "crlf"
    ssh_banner_delay_ms: Seconds = 0.0
    ssh_server_version: str = DEFAULT_SSH_SERVER_VERSION
    silent_mode: SilentMode = "refuse"

    @model_validator(mode="after")
    def _firmware(self) -> Self:
        try:
            split_firmware(self.firmware, self.build)
        except VersionError as exc:
            raise KeyProblem("firmware", str(exc)) from exc
        return self


#: Keys ``[defaults]`` may give every device: all but what makes each one itself.
DEFAULT_KEYS = tuple(
    name for name in DeviceTable.model_fields if name not in {"serial", "address", "system_name"}
)


def _defaults(table: dict[str, Any]) -> dict[str, Any]:
    for key in table:
        if key not in DEFAULT_KEYS:
            raise KeyProblem(key, f"unknown key; known keys: {', '.join(DEFAULT_KEYS)}")
    return table


class OtherHostTable(ConfigModel):
    name: str
    address: Loopback
    kind: OtherHostKind = "web_server"
    title: str = ""
    rest_port: TcpPort | None = None
    ssh_port: TcpPort | None = None
    admin_password: str = DEFAULT_PASSWORD


class RoomTable(ConfigModel):
    id: str
    name: str | None = None
    devices: list[DeviceTable] = []
    other_hosts: list[OtherHostTable] = []


class SiteTable(ConfigModel):
    id: str
    name: str | None = None
    timezone: str = "Europe/Warsaw"
    rooms: list[RoomTable] = []
    #: Fault windows every device of the site gets (a site outage, say).
    faults: list[FaultTable] = []


class FleetFile(ConfigModel):
    """A whole fleet file (docs/lab.md, "Fleet files")."""

    defaults: Annotated[dict[str, Any], AfterValidator(_defaults)] = {}
    sites: list[SiteTable] = []

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Each device as if it spelt out ``[defaults]`` itself (its own keys win)."""
        if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
            return data
        defaults = data.get("defaults", {})
        if not defaults:
            return data
        sites = data.get("sites")
        if not isinstance(sites, list):
            return data
        merged_sites = []
        for site in sites:
            if isinstance(site, dict) and isinstance(site.get("rooms"), list):
                site = {**site, "rooms": [_with_defaults(room, defaults) for room in site["rooms"]]}
            merged_sites.append(site)
        return {**data, "sites": merged_sites}


def _with_defaults(room: Any, defaults: dict[str, Any]) -> Any:
    if not isinstance(room, dict) or not isinstance(room.get("devices"), list):
        return room
    devices = [
        {**defaults, **device} if isinstance(device, dict) else device for device in room["devices"]
    ]
    return {**room, "devices": devices}


Loc = tuple[str | int, ...]


def _windows(
    path: Path, loc: Loc, faults: list[FaultTable], peripherals: list[PeripheralSpec] | None
) -> list[FaultWindow]:
    """The fault windows at ``loc``, their parameters checked (see fault_params)."""
    windows = []
    for index, fault in enumerate(faults):
        try:
            params = fault_params(fault.name, fault.params, peripherals)
        except FaultParamError as exc:
            raise config_error(path, (*loc, "faults", index, exc.key), str(exc)) from exc
        windows.append(FaultWindow(name=fault.name, at=fault.at, until=fault.until, params=params))
    return windows


def _device(path: Path, loc: Loc, table: DeviceTable) -> DeviceSpec:
    firmware, build = split_firmware(table.firmware, table.build)
    peripherals = [
        PeripheralSpec(kind=p.kind, serial=p.serial, firmware=p.firmware, name=p.name)
        for p in table.peripherals
    ]
    # The table has the spec's fields; those of a plain value pass as the TOML gives them.
    plain = table.model_dump(
        exclude={"firmware", "build", "peripherals", "faults", "calls", "meetings", "update"}
    )
    try:
        return DeviceSpec(
            **plain,
            firmware=firmware,
            build=build,
            peripherals=peripherals,
            faults=_windows(path, loc, table.faults, peripherals),
            calls=[CallWindow(at=c.at, until=c.until, remote=c.remote) for c in table.calls],
            meetings=[
                MeetingSpec(start=m.start, end=m.end, subject=m.subject) for m in table.meetings
            ],
            update=UpdateBehaviour(
                install_seconds=table.update.install_seconds, outcome=table.update.outcome
            ),
        )
    except ValueError as exc:
        raise config_error(path, loc, str(exc)) from exc


def _other_host(path: Path, loc: Loc, table: OtherHostTable) -> OtherHostSpec:
    try:
        # The table has the spec's fields, as the TOML spells them.
        return OtherHostSpec(**table.model_dump())
    except ValueError as exc:
        raise config_error(path, loc, str(exc)) from exc


def _with_site_faults(
    path: Path, loc: Loc, site: SiteTable, rooms: list[RoomSpec]
) -> list[RoomSpec]:
    """Rooms whose devices also carry the site's fault windows (a site outage, say)."""
    windows = _windows(path, loc, site.faults, None)
    if not windows:
        return rooms
    placed = []
    for room in rooms:
        devices = []
        for device in room.devices:
            for index, window in enumerate(windows):
                try:
                    fault_params(window.name, window.params, device.peripherals)
                except FaultParamError as exc:
                    where = (*loc, "faults", index, exc.key)
                    raise config_error(path, where, f"device {device.serial}: {exc}") from exc
            devices.append(replace(device, faults=[*device.faults, *windows]))
        placed.append(replace(room, devices=devices))
    return placed


def parse_fleet(data: dict[str, Any], path: Path) -> FleetSpec:
    """Validate an already-read TOML document; errors name ``path`` and the key."""
    fleet = check(FleetFile, data, source=path, base=path.parent)
    sites: list[SiteSpec] = []
    serials: dict[str, str] = {}
    others: dict[str, str] = {}
    endpoints: dict[tuple[str, int], str] = {}

    def claim_ports(loc: Loc, address: str, rest: int | None, ssh: int | None) -> None:
        # REST and SSH share the TCP port space of an address: a clash either way fails.
        for kind, port in (("rest", rest), ("ssh", ssh)):
            if port:
                key = (address, port)
                if key in endpoints:
                    problem = f"{address}:{port} is already used at {endpoints[key]}"
                    raise config_error(path, (*loc, f"{kind}_port"), problem)
                endpoints[key] = key_path(loc)

    for s, site in enumerate(fleet.sites):
        rooms: list[RoomSpec] = []
        for r, room in enumerate(site.rooms):
            room_loc: Loc = ("sites", s, "rooms", r)
            devices: list[DeviceSpec] = []
            for d, table in enumerate(room.devices):
                loc: Loc = (*room_loc, "devices", d)
                device = _device(path, loc, table)
                if device.serial in serials:
                    problem = f"{device.serial} is already used at {serials[device.serial]}"
                    raise config_error(path, (*loc, "serial"), problem)
                serials[device.serial] = key_path(loc)
                claim_ports(loc, device.address, device.rest_port, device.ssh_port)
                devices.append(device)
            other_hosts: list[OtherHostSpec] = []
            for o, table_o in enumerate(room.other_hosts):
                loc = (*room_loc, "other_hosts", o)
                other = _other_host(path, loc, table_o)
                if other.name in others:
                    problem = f"{other.name} is already used at {others[other.name]}"
                    raise config_error(path, (*loc, "name"), problem)
                others[other.name] = key_path(loc)
                claim_ports(loc, other.address, other.rest_port, other.ssh_port)
                other_hosts.append(other)
            rooms.append(
                RoomSpec(
                    id=room.id,
                    name=room.id if room.name is None else room.name,
                    devices=devices,
                    other_hosts=other_hosts,
                )
            )
        sites.append(
            SiteSpec(
                id=site.id,
                name=site.id if site.name is None else site.name,
                timezone=site.timezone,
                rooms=_with_site_faults(path, ("sites", s), site, rooms),
            )
        )
    if not serials:
        raise config_error(path, ("sites",), "the fleet has no devices")
    return FleetSpec(sites=sites)


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a fleet TOML file; a ConfigError names the file and the key."""
    fleet_path = Path(path)
    return parse_fleet(read_toml(fleet_path, what="the fleet file"), fleet_path)
