"""Fleet files: which simulated devices a lab runs, where, and what happens to them."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polyfleet.shared.errors import ConfigError
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
)

#: The parameters a fault takes; any other parameter is an error.
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "slow": frozenset({"latency_ms"}),
    "lan_down": frozenset({"mode"}),
    "peripheral_disconnected": frozenset({"serial"}),
}
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


# --- reading TOML -------------------------------------------------------------------------


class _Table:
    """A TOML table that remembers its key path, so errors name file and key."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: {where or 'top level'} must be a table")
        self.path = path
        self.where = where
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(name)}: {problem}")

    def _get(self, name: str, kinds: tuple[type, ...], label: str, default: Any) -> Any:
        if name not in self.data:
            if default is _REQUIRED:
                raise self.fail(name, "is required")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"must be {label}, not {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(name, f"must be {label}, not {value!r}")
        return value

    def text(self, name: str, default: Any = None) -> str:
        return str(self._get(name, (str,), "a string", _REQUIRED if default is None else default))

    def number(self, name: str, default: float) -> float:
        value = self._get(name, (int, float), "a number", default)
        if value < 0:
            raise self.fail(name, "must not be negative")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        value = self._get(name, (int, float), "a number", None)
        if value is not None and value < 0:
            raise self.fail(name, "must not be negative")
        return None if value is None else float(value)

    def integer(self, name: str, default: int | None) -> int | None:
        value = self._get(name, (int,), "a whole number", default)
        return None if value is None else int(value)

    def flag(self, name: str, default: bool) -> bool:
        return bool(self._get(name, (bool,), "true or false", default))

    def tables(self, name: str) -> list[_Table]:
        items = self._get(name, (list,), "an array of tables", [])
        return [_Table(self.path, f"{self.key(name)}[{i}]", item) for i, item in enumerate(items)]

    def table(self, name: str) -> _Table:
        return _Table(self.path, self.key(name), self._get(name, (dict,), "a table", {}))

    def reject_unknown(self, allowed: set[str]) -> None:
        for name in self.data:
            if name not in allowed:
                raise self.fail(name, f"unknown key (known: {', '.join(sorted(allowed))})")


_REQUIRED = object()

_DEVICE_KEYS = {
    "serial",
    "model",
    "address",
    "firmware",
    "build",
    "provider",
    "device_mode",
    "admin_password",
    "rest_port",
    "ssh_port",
    "system_name",
    "peripherals",
    "in_call",
    "sip",
    "faults",
    "calls",
    "update",
    "regenerate_cert_on_reboot",
    "ssh_host_key_type",
    "lockout_failures",
    "lockout_seconds",
    "session_limit",
    "session_idle_seconds",
    "boot_seconds",
    "uptime_seconds",
    "login_failure_status",
    "ssh_line_ending",
    "ssh_banner_delay_ms",
    "ssh_server_version",
    "silent_mode",
}


def _choice(table: _Table, name: str, choices: tuple[str, ...], default: str | None) -> str:
    value = table.text(name, default)
    if value not in choices:
        raise table.fail(name, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _fault_windows(
    table: _Table, peripherals: list[PeripheralSpec] | None
) -> list[tuple[_Table, FaultWindow]]:
    """The ``faults`` windows of a device (or of a site: ``peripherals`` None, see fault_params)."""
    windows = []
    for f in table.tables("faults"):
        name = _choice(f, "name", FAULTS, None)
        at = f.number("at", 0.0)
        until = f.optional_number("until")
        if until is not None and until <= at:
            raise f.fail("until", f"must be after at ({at:g})")
        params = {k: v for k, v in f.data.items() if k not in {"name", "at", "until"}}
        try:
            params = fault_params(name, params, peripherals)
        except FaultParamError as exc:
            raise f.fail(exc.key, str(exc)) from exc
        windows.append((f, FaultWindow(name=name, at=at, until=until, params=params)))
    return windows


def _with_site_faults(site: _Table, rooms: list[RoomSpec]) -> list[RoomSpec]:
    """Rooms whose devices also carry the site's fault windows (a site outage, say)."""
    windows = _fault_windows(site, None)
    if not windows:
        return rooms
    placed = []
    for room in rooms:
        devices = []
        for device in room.devices:
            for f, window in windows:
                try:
                    fault_params(window.name, window.params, device.peripherals)
                except FaultParamError as exc:
                    raise f.fail(exc.key, f"device {device.serial}: {exc}") from exc
            devices.append(replace(device, faults=[*device.faults, *(w for _f, w in windows)]))
        placed.append(replace(room, devices=devices))
    return placed


def _device(table: _Table, defaults: _Table) -> DeviceSpec:
    merged = _Table(table.path, table.where, {**defaults.data, **table.data})
    merged.reject_unknown(_DEVICE_KEYS)
    serial = merged.text("serial")
    try:
        firmware, build = split_firmware(
            merged.text("firmware", DEFAULT_FIRMWARE), merged.text("build", "")
        )
    except VersionError as exc:
        raise merged.fail("firmware", str(exc)) from exc
    peripherals = []
    for p in merged.tables("peripherals"):
        p.reject_unknown({"kind", "serial", "firmware", "name"})
        peripherals.append(
            PeripheralSpec(
                kind=_choice(p, "kind", PERIPHERAL_KINDS, None),
                serial=p.text("serial"),
                firmware=p.text("firmware", ""),
                name=p.text("name", ""),
            )
        )
    faults = [window for _table, window in _fault_windows(merged, peripherals)]
    calls = []
    for c in merged.tables("calls"):
        c.reject_unknown({"at", "until", "remote"})
        at = c.number("at", 0.0)
        until = c.optional_number("until")
        if until is not None and until <= at:
            raise c.fail("until", f"must be after at ({at:g})")
        calls.append(
            CallWindow(at=at, until=until, remote=c.text("remote", "sip:meeting@127.0.0.1"))
        )
    update_table = merged.table("update")
    update_table.reject_unknown({"install_seconds", "outcome"})
    update = UpdateBehaviour(
        install_seconds=update_table.number("install_seconds", DEFAULT_INSTALL_SECONDS),
        outcome=_choice(update_table, "outcome", UPDATE_OUTCOMES, "ok"),
    )
    address = merged.text("address")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise merged.fail("address", f"{address!r} is not an IPv4 address") from exc
    if parsed.version != 4 or not parsed.is_loopback:
        raise merged.fail("address", f"{address} is not in 127.0.0.0/8 (the lab is loopback only)")
    ports: dict[str, int] = {}
    for name in ("rest_port", "ssh_port"):
        port = merged.integer(name, None)
        if port is not None and not 0 <= port <= 65535:
            raise merged.fail(name, f"{port} is not a TCP port (0 = any)")
        if port is not None:
            ports[name] = port
    login_failure_status = merged.integer("login_failure_status", None)
    if login_failure_status not in LOGIN_FAILURE_STATUSES:
        raise merged.fail("login_failure_status", "must be 200, 400 or 403")
    lockout_failures = merged.integer("lockout_failures", DEFAULT_LOCKOUT_FAILURES) or 0
    session_limit = merged.integer("session_limit", DEFAULT_SESSION_LIMIT) or 0
    if lockout_failures < 1:
        raise merged.fail("lockout_failures", "must be at least 1")
    if session_limit < 1:
        raise merged.fail("session_limit", "must be at least 1")
    try:
        return DeviceSpec(
            serial=serial,
            model=_choice(merged, "model", MODELS, None),
            address=address,
            firmware=firmware,
            build=build,
            provider=_choice(merged, "provider", PROVIDERS, "poly"),
            device_mode=merged.flag("device_mode", False),
            admin_password=merged.text("admin_password", DEFAULT_PASSWORD),
            rest_port=ports.get("rest_port"),
            ssh_port=ports.get("ssh_port"),
            system_name=merged.text("system_name", ""),
            peripherals=peripherals,
            in_call=merged.flag("in_call", False),
            sip=merged.flag("sip", True),
            faults=faults,
            calls=calls,
            update=update,
            regenerate_cert_on_reboot=merged.flag("regenerate_cert_on_reboot", False),
            ssh_host_key_type=_choice(merged, "ssh_host_key_type", SSH_HOST_KEY_TYPES, "ed25519"),
            lockout_failures=lockout_failures,
            lockout_seconds=merged.number("lockout_seconds", DEFAULT_LOCKOUT_SECONDS),
            session_limit=session_limit,
            session_idle_seconds=merged.number(
                "session_idle_seconds", DEFAULT_SESSION_IDLE_SECONDS
            ),
            boot_seconds=merged.number("boot_seconds", DEFAULT_BOOT_SECONDS),
            uptime_seconds=merged.number("uptime_seconds", DEFAULT_UPTIME_SECONDS),
            login_failure_status=login_failure_status,
            ssh_line_ending=_choice(merged, "ssh_line_ending", SSH_LINE_ENDINGS, "crlf"),
            ssh_banner_delay_ms=merged.number("ssh_banner_delay_ms", 0.0),
            ssh_server_version=merged.text("ssh_server_version", DEFAULT_SSH_SERVER_VERSION),
            silent_mode=_choice(merged, "silent_mode", SILENT_MODES, "refuse"),
        )
    except ValueError as exc:
        raise ConfigError(f"{table.path}: {table.where}: {exc}") from exc


def _other_host(table: _Table) -> OtherHostSpec:
    table.reject_unknown(
        {"name", "address", "kind", "title", "rest_port", "ssh_port", "admin_password"}
    )
    ports: dict[str, int | None] = {}
    for name in ("rest_port", "ssh_port"):
        port = table.integer(name, None)
        if port is not None and not 0 <= port <= 65535:
            raise table.fail(name, f"{port} is not a TCP port (0 = any)")
        ports[name] = port
    address = table.text("address")
    problems = _address_problems(address)
    if problems:
        raise table.fail("address", problems[0].removeprefix("address "))
    try:
        return OtherHostSpec(
            name=table.text("name"),
            address=address,
            kind=_choice(table, "kind", OTHER_HOST_KINDS, "web_server"),
            title=table.text("title", ""),
            rest_port=ports["rest_port"],
            ssh_port=ports["ssh_port"],
            admin_password=table.text("admin_password", DEFAULT_PASSWORD),
        )
    except ValueError as exc:
        raise ConfigError(f"{table.path}: {table.where}: {exc}") from exc


def parse_fleet(data: dict[str, Any], path: Path) -> FleetSpec:
    """Validate an already-read TOML document; errors name ``path`` and the key."""
    root = _Table(path, "", data)
    root.reject_unknown({"defaults", "sites"})
    defaults = root.table("defaults")
    defaults.reject_unknown(_DEVICE_KEYS - {"serial", "address", "system_name"})
    sites: list[SiteSpec] = []
    serials: dict[str, str] = {}
    others: dict[str, str] = {}
    endpoints: dict[tuple[str, int], str] = {}

    def claim_ports(table: _Table, address: str, rest: int | None, ssh: int | None) -> None:
        # REST and SSH share the TCP port space of an address: a clash either way fails.
        for kind, port in (("rest", rest), ("ssh", ssh)):
            if port:
                key = (address, port)
                if key in endpoints:
                    raise table.fail(
                        f"{kind}_port", f"{address}:{port} is already used at {endpoints[key]}"
                    )
                endpoints[key] = table.where

    for s in root.tables("sites"):
        s.reject_unknown({"id", "name", "timezone", "rooms", "faults"})
        rooms: list[RoomSpec] = []
        for r in s.tables("rooms"):
            r.reject_unknown({"id", "name", "devices", "other_hosts"})
            devices: list[DeviceSpec] = []
            for d in r.tables("devices"):
                device = _device(d, defaults)
                if device.serial in serials:
                    raise d.fail(
                        "serial", f"{device.serial} is already used at {serials[device.serial]}"
                    )
                serials[device.serial] = d.where
                claim_ports(d, device.address, device.rest_port, device.ssh_port)
                devices.append(device)
            other_hosts: list[OtherHostSpec] = []
            for o in r.tables("other_hosts"):
                other = _other_host(o)
                if other.name in others:
                    raise o.fail("name", f"{other.name} is already used at {others[other.name]}")
                others[other.name] = o.where
                claim_ports(o, other.address, other.rest_port, other.ssh_port)
                other_hosts.append(other)
            rooms.append(
                RoomSpec(
                    id=r.text("id"),
                    name=r.text("name", r.text("id")),
                    devices=devices,
                    other_hosts=other_hosts,
                )
            )
        site_id = s.text("id")
        sites.append(
            SiteSpec(
                id=site_id,
                name=s.text("name", site_id),
                timezone=s.text("timezone", "Europe/Warsaw"),
                rooms=_with_site_faults(s, rooms),
            )
        )
    if not serials:
        raise ConfigError(f"{path}: sites: the fleet has no devices")
    return FleetSpec(sites=sites)


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a fleet TOML file; a ConfigError names the file and the key."""
    fleet_path = Path(path)
    try:
        with fleet_path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{fleet_path}: cannot read the fleet file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{fleet_path}: not valid TOML: {exc}") from exc
    return parse_fleet(data, fleet_path)
