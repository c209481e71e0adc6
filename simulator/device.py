"""One simulated VideoOS device: its state, its faults, and its REST and SSH listeners."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko
from aiohttp import web

from polyfleet.shared.durable import write_atomically
from polyfleet.shared.version import FirmwareVersion, VersionError
from polyfleet.simulator import identity
from polyfleet.simulator.download import Download, DownloadFailed, fetch_package
from polyfleet.simulator.fleet import (
    FAULTS,
    DeviceSpec,
    FaultParamError,
    MeetingSpec,
    PeripheralSpec,
    fault_params,
    split_firmware,
)
from polyfleet.simulator.listeners import Listeners, accept_ssh, bind_listener

log = logging.getLogger(__name__)

#: Power states: ``on`` serves, every other state answers nothing at all.
POWER_STATES = ("on", "off", "booting", "installing", "bricked")

#: Config variables a fresh device holds (``POST /rest/config`` reads and sets these).
DEFAULT_CONFIG = {
    "upgrade.auto.enable": "false",
    "upgrade.auto.polling.interval": "3600",
    "upgrade.auto.server.type": "prov_server",
    "upgrade.auto.server.address": "",
    "upgrade.auto.version": "",
    "upgrade.auto.timeFrame.enable": "false",
    "upgrade.auto.timeFrame.startTime": "01:00",
    "upgrade.auto.timeFrame.stopTime": "05:00",
    "device.local.contact.adminname": "",
    "device.local.roomName": "",
}

LISTEN_BACKLOG = 64
#: OS-chosen ports are remembered here, so a restarted lab keeps its devices' ports.
PORTS_FILE = "ports.json"


class FaultError(ValueError):
    """A fault name the lab does not know, or bad parameters for it; ``field`` names which."""

    def __init__(self, message: str, field: str = "fault") -> None:
        super().__init__(message)
        self.field = field


#: How an admin session reached the unit, as ``GET /rest/current/session/sessions`` names it.
SESSION_KINDS = ("web", "ssh")


@dataclass
class Session:
    """One open admin session: a REST login, or one the lab opened for a scenario.

    ``held`` sessions stand for other admins (a browser on the web UI, an SSH console): their
    clients keep them alive, so they never expire idle and do not count against the REST
    login limit (a scenario never locks the agent out by accident); they end when the control
    API closes them, or with the unit's power.
    """

    session_id: str
    xsrf_token: str
    created: float
    last_used: float
    user: str = "admin"
    role: str = "ADMIN"
    #: The client's address as the unit sees it.
    address: str = ""
    #: ``web`` (REST and the web UI) or ``ssh``.
    kind: str = "web"
    #: Wall-clock start (seconds since the epoch), what the unit reports.
    started_at: float = 0.0
    held: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "id": self.session_id,
            "user": self.user,
            "role": self.role,
            "address": self.address,
            "type": self.kind,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "held": self.held,
        }


@dataclass
class Call:
    remote: str
    started: float


@dataclass
class LoginVerdict:
    """A login outcome: ``ok``, ``bad_credentials``, ``locked_out`` or ``session_limit``."""

    outcome: str
    session: Session | None = None
    failures: int = 0


RestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class DeviceApis:
    """What a device answers on its ports, given by the lab (those modules import this one).

    ``rest(device)`` makes the HTTPS request handler; ``ssh(device, conn)`` serves one
    accepted SSH connection to its end, in a thread of its own (paramiko blocks).
    """

    rest: Callable[[SimDevice], RestHandler]
    ssh: Callable[[SimDevice, socket.socket], None]


class SimDevice:
    """A simulated bar or codec on its own loopback address.

    State changes (``set_fault``, ``start_call``, ``power_off``...) are coroutines:
    they return once the network reflects them (for ``reboot``: once the device is
    down; it comes back by itself after ``boot_seconds``).
    """

    def __init__(
        self,
        spec: DeviceSpec,
        *,
        site: str,
        room: str,
        data_dir: Path,
        timezone: str = "Europe/Warsaw",
        clock: Callable[[], float] = time.monotonic,
        apis: DeviceApis,
    ) -> None:
        self.spec = spec
        self.site = site
        self.room = room
        self.timezone = timezone
        self.data_dir = data_dir
        self.clock = clock
        self.firmware_version = spec.firmware
        self.build = spec.build
        self.power = "off"
        #: USB device mode: the unit serves a laptop as camera and speakerphone.
        self.device_mode = spec.starts_in_device_mode
        self.faults: dict[str, dict[str, Any]] = {}
        self.call: Call | None = None
        #: The room calendar, by meeting id (the control API adds and removes meetings).
        self.meetings: dict[str, MeetingSpec] = {
            f"m{n}": meeting for n, meeting in enumerate(spec.meetings, start=1)
        }
        self.sessions: dict[str, Session] = {}
        #: The session of the ``admin_session`` fault's admin, while it is open.
        self._fault_session: str | None = None
        self.config: dict[str, str] = dict(DEFAULT_CONFIG)
        self.config["device.local.roomName"] = room
        self._admin_password = spec.admin_password
        self.failed_logins = 0
        #: Successful REST logins since the lab started (a client's polls, counted).
        self.logins = 0
        self.locked_until = 0.0
        self.boot_time = clock()
        self.booted_once = False
        self.rest_port = spec.rest_port if spec.rest_port is not None else 0
        self.ssh_port = spec.ssh_port if spec.ssh_port is not None else 0
        self.tls: identity.TlsIdentity | None = None
        self.host_key: paramiko.PKey | None = None
        self.ssh_fingerprint = ""
        self.last_update: dict[str, str] = {}
        #: Package downloads from update servers, oldest first (the last few are kept).
        self.downloads: list[Download] = []
        #: What ``GET /rest/system/softwareupdate`` answers: state, version and why.
        self.update_status: dict[str, str] = {"state": "IDLE", "version": "", "reason": ""}
        self._ssl_context: ssl.SSLContext | None = None
        self._saved_ports: dict[str, int] = {}
        self._auth_lock = threading.Lock()
        self._listeners = Listeners()
        self._transition: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._power_changed = asyncio.Event()
        self._apis = apis
        self._web = web.Server(apis.rest(self), handler_cancellation=True)

    # --- room calendar --------------------------------------------------------------------

    @property
    def calendar_on(self) -> bool:
        """Teams and Zoom rooms have a calendar; a Poly Video room has none."""
        return self.provider_mode in ("teams", "zoom")

    def add_meeting(self, meeting: MeetingSpec) -> str:
        """Book a meeting; its id."""
        meeting_id = f"m{max((int(k[1:]) for k in self.meetings), default=0) + 1}"
        self.meetings[meeting_id] = meeting
        return meeting_id

    def meetings_between(self, start: datetime, end: datetime) -> list[tuple[str, MeetingSpec]]:
        """Meetings overlapping ``[start, end)``, earliest first."""
        found = [(k, m) for k, m in self.meetings.items() if m.start < end and m.end > start]
        return sorted(found, key=lambda item: item[1].start)

    # --- identity -------------------------------------------------------------------------

    @property
    def serial(self) -> str:
        return self.spec.serial

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def admin_password(self) -> str:
        """The password logins are checked against (the fleet's, until changed)."""
        return self._admin_password

    def set_admin_password(self, password: str) -> None:
        """Change the admin password, as an admin on the device's web UI would."""
        if not password:
            raise ValueError("the admin password must not be empty")
        with self._auth_lock:
            self._admin_password = password

    @property
    def provider_mode(self) -> str:
        """The provider the unit is set up for (``teams``, ``zoom``, ``poly``)."""
        return self.spec.provider_mode

    @property
    def provider(self) -> str:
        """What the unit runs as now: ``device_mode`` while in device mode, else its provider."""
        return "device_mode" if self.device_mode else self.provider_mode

    @property
    def tls_fingerprint(self) -> str:
        return self.tls.fingerprint if self.tls else ""

    @property
    def version(self) -> FirmwareVersion:
        return FirmwareVersion.parse(self.firmware_version, self.build)

    @property
    def peripherals(self) -> list[PeripheralSpec]:
        return self.spec.peripherals

    @property
    def listening(self) -> bool:
        return self.power == "on" and "lan_down" not in self.faults

    def uptime(self) -> float:
        base = 0.0 if self.booted_once else self.spec.uptime_seconds
        return base + max(0.0, self.clock() - self.boot_time)

    def has_fault(self, name: str) -> bool:
        return name in self.faults

    def load_identity(self) -> None:
        """Load or create the certificate and host key (blocking: call from a thread)."""
        self.tls = identity.load_or_make_tls_identity(
            self.data_dir, self.spec.display_name, self.address
        )
        self._ssl_context = self.tls.server_context()
        self.host_key = identity.load_or_make_host_key(self.data_dir, self.spec.ssh_host_key_type)
        self.ssh_fingerprint = identity.host_key_fingerprint(self.host_key)
        self._saved_ports = self._load_ports()

    def _regenerate_certificate(self) -> None:
        self.tls = identity.make_tls_identity(self.data_dir, self.spec.display_name, self.address)
        if self._ssl_context is None:
            self._ssl_context = self.tls.server_context()
        else:
            # A listening server holds this context: its next handshakes show the new one.
            self._ssl_context.load_cert_chain(self.tls.cert_path, self.tls.key_path)

    def _regenerate_host_key(self) -> None:
        key = identity.make_host_key(self.data_dir, self.spec.ssh_host_key_type)
        # SSH connections read the key as they start: the next one shows the new key.
        self.host_key = key
        self.ssh_fingerprint = identity.host_key_fingerprint(key)

    async def renew_identity(self, *, certificate: bool = False, host_key: bool = False) -> None:
        """A new certificate and/or SSH host key from the next connection on, as after a
        factory reset or a main board swap; kept in the data dir like the first ones."""
        if certificate:
            await asyncio.to_thread(self._regenerate_certificate)
        if host_key:
            await asyncio.to_thread(self._regenerate_host_key)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (identity must be loaded) and apply the initial call."""
        self._loop = asyncio.get_running_loop()
        if self.tls is None:
            await asyncio.to_thread(self.load_identity)
        if self.spec.in_call and self.call is None:
            self.call = Call(remote="sip:meeting@127.0.0.1", started=self.clock())
        self._set_power("on")
        self.boot_time = self.clock()
        await self._open_network()

    async def stop(self) -> None:
        """Stop serving for good (lab shutdown)."""
        if self._transition is not None:
            self._transition.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._transition
            self._transition = None
        self._set_power("off")
        await self._close_network(silent=False)

    def _set_power(self, state: str) -> None:
        self.power = state
        self._power_changed.set()
        self._power_changed = asyncio.Event()

    async def wait_power(self, state: str, timeout: float = 10.0) -> None:
        """Wait until the device reaches power state ``state`` (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.power != state:
                await self._power_changed.wait()

    # --- network --------------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        return bind_listener(self.address, port, LISTEN_BACKLOG)

    def _bind_preferring(self, port: int, saved: int) -> socket.socket:
        """Bind ``port``; for an OS-chosen port (0) try the one used last time first."""
        if port == 0 and saved:
            try:
                return self._bind(saved)
            except OSError:
                pass  # taken meanwhile: take any
        return self._bind(port)

    def _load_ports(self) -> dict[str, int]:
        try:
            data = json.loads((self.data_dir / PORTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: v for k, v in data.items() if k in ("rest_port", "ssh_port") and isinstance(v, int)
        }

    def _save_ports(self, ports: dict[str, int]) -> None:
        write_atomically(self.data_dir / PORTS_FILE, json.dumps(ports), sync=False)

    def silent_mode(self) -> str:
        """How this device is silent now: the lan_down fault's ``mode``, else the spec's."""
        mode = self.faults.get("lan_down", {}).get("mode")
        return mode if isinstance(mode, str) else self.spec.silent_mode

    async def _open_tarpit(self) -> None:
        """Hold the ports without answering: connection attempts time out (Linux backlog 0)."""
        loop = asyncio.get_running_loop()
        for port in (self.rest_port, self.ssh_port):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.address, port))
                # Backlog 0 queues one connection; ours fills it and the kernel drops the rest.
                listener.listen(0)
                filler.setblocking(False)
                await loop.sock_connect(filler, (self.address, port))
            except OSError as exc:
                listener.close()
                filler.close()
                log.warning("device %s: cannot hold port %d silently: %s", self.serial, port, exc)
                continue
            self._listeners.tarpit += [listener, filler]

    def _close_tarpit(self) -> None:
        for sock in self._listeners.tarpit:
            sock.close()
        self._listeners.tarpit.clear()

    async def _open_network(self) -> None:
        if not self.listening or self._listeners.rest_server is not None:
            return
        self._close_tarpit()
        assert self._ssl_context is not None and self.host_key is not None
        loop = asyncio.get_running_loop()
        rest_sock = self._bind_preferring(self.rest_port, self._saved_ports.get("rest_port", 0))
        try:
            ssh_sock = self._bind_preferring(self.ssh_port, self._saved_ports.get("ssh_port", 0))
        except OSError:
            rest_sock.close()
            raise
        self.rest_port = rest_sock.getsockname()[1]
        self.ssh_port = ssh_sock.getsockname()[1]
        chosen = {"rest_port": self.rest_port, "ssh_port": self.ssh_port}
        if chosen != self._saved_ports:
            self._saved_ports = chosen
            await asyncio.to_thread(self._save_ports, chosen)
        self._listeners.rest_server = await loop.create_server(
            self._web, sock=rest_sock, ssl=self._ssl_context, ssl_handshake_timeout=10
        )
        self._listeners.ssh_socket = ssh_sock
        self._listeners.ssh_task = loop.create_task(self._accept_ssh(ssh_sock))

    async def _close_network(self, *, silent: bool = True) -> None:
        """Stop answering; ``silent`` (not a lab shutdown) in ``drop`` mode holds the ports."""
        self._close_tarpit()
        await self._listeners.close(self._web, self._auth_lock)
        if silent and self.silent_mode() == "drop" and self.rest_port and self.ssh_port:
            await self._open_tarpit()

    async def _accept_ssh(self, sock: socket.socket) -> None:
        await accept_ssh(sock, functools.partial(self._apis.ssh, self), f"ssh-{self.serial}")

    def track_ssh_transport(self, transport: paramiko.Transport, active: bool) -> bool:
        """Register (or forget) a live SSH transport; False when the device is no longer serving."""
        with self._auth_lock:
            return self._listeners.track_ssh(transport, active, serving=self.listening)

    # --- authentication (REST and SSH share the lockout, as real units do) -------------------

    def locked_out(self) -> bool:
        return "locked_out" in self.faults or self.clock() < self.locked_until

    def check_password(self, user: str, password: str) -> str:
        """``ok``, ``bad_credentials`` or ``locked_out``; counts failures (thread-safe)."""
        with self._auth_lock:
            if self.locked_out():
                return "locked_out"
            good = user == "admin" and secrets.compare_digest(
                password.encode(), self.admin_password.encode()
            )
            if good:
                self.failed_logins = 0
                return "ok"
            self.failed_logins += 1
            if self.failed_logins >= self.spec.lockout_failures:
                self.locked_until = self.clock() + self.spec.lockout_seconds
                self.failed_logins = 0
                log.info("device %s locked out after repeated failed logins", self.serial)
            return "bad_credentials"

    def login(self, user: str, password: str, *, address: str = "") -> LoginVerdict:
        """Check credentials and open a REST session (from client ``address``) when allowed."""
        self.expire_sessions()
        outcome = self.check_password(user, password)
        if outcome != "ok":
            return LoginVerdict(outcome, failures=self.failed_logins)
        if sum(1 for s in self.sessions.values() if not s.held) >= self.spec.session_limit:
            return LoginVerdict("session_limit")
        session = self._new_session(user=user, address=address, kind="web", held=False)
        self.logins += 1
        return LoginVerdict("ok", session=session)

    def open_session(
        self, *, user: str, address: str, kind: str = "web", role: str = "ADMIN"
    ) -> Session:
        """Open a session for another admin (a scenario: someone signed in from elsewhere)."""
        if kind not in SESSION_KINDS:
            raise FaultError(f"type must be one of {', '.join(SESSION_KINDS)}", "type")
        if self.power != "on":
            raise FaultError(f"device {self.serial} is {self.power}, not on", "power")
        return self._new_session(user=user, address=address, kind=kind, role=role, held=True)

    def _new_session(
        self, *, user: str, address: str, kind: str, held: bool, role: str = "ADMIN"
    ) -> Session:
        now = self.clock()
        session = Session(
            session_id="PS" + secrets.token_hex(12),
            xsrf_token=secrets.token_urlsafe(24),
            created=now,
            last_used=now,
            user=user,
            role=role,
            address=address,
            kind=kind,
            started_at=time.time(),
            held=held,
        )
        self.sessions[session.session_id] = session
        return session

    def expire_sessions(self) -> None:
        limit = self.clock() - self.spec.session_idle_seconds
        idle = [sid for sid, s in self.sessions.items() if s.last_used < limit and not s.held]
        for sid in idle:
            del self.sessions[sid]

    def find_session(self, session_id: str | None) -> Session | None:
        self.expire_sessions()
        session = self.sessions.get(session_id or "")
        if session is not None:
            session.last_used = self.clock()
        return session

    # --- state changes --------------------------------------------------------------------

    async def set_fault(self, name: str, active: bool, **params: Any) -> None:
        """Raise or clear fault ``name`` (one of ``fleet.FAULTS``) with its parameters."""
        if name not in FAULTS:
            raise FaultError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        if active:
            try:
                params = fault_params(name, params, self.peripherals)
            except FaultParamError as exc:
                raise FaultError(f"device {self.serial}: {exc}", exc.key) from exc
        if active:
            self.faults[name] = dict(params)
        else:
            self.faults.pop(name, None)
            if name == "locked_out":
                with self._auth_lock:
                    self.locked_until = 0.0
                    self.failed_logins = 0
        if name == "admin_session":
            self._admin_signs_in(self.faults.get(name))
        if name == "lan_down":
            if active:
                self.sessions.clear()
                await self._close_network()
            elif self.power == "on":
                await self._open_network()
            else:
                # Still off or booting: silent in the device's own mode from now on.
                await self._close_network()

    def _admin_signs_in(self, params: dict[str, Any] | None) -> None:
        """The ``admin_session`` fault: another admin signs in (``params``) or out (None)."""
        if self._fault_session is not None:
            self.sessions.pop(self._fault_session, None)
            self._fault_session = None
        if params is None or self.power != "on":
            return
        session = self.open_session(
            user=params["user"], address=params["address"], kind=params["type"]
        )
        self._fault_session = session.session_id

    async def set_device_mode(self, on: bool) -> None:
        """Switch USB device mode on or off, as a person at the unit (or its laptop) would."""
        self.device_mode = on

    async def start_call(self, remote: str = "sip:meeting@127.0.0.1") -> None:
        if self.call is None:
            self.call = Call(remote=remote, started=self.clock())

    async def end_call(self) -> None:
        self.call = None

    async def power_off(self) -> None:
        """Cut the power: nothing answers until ``power_on``."""
        if self.power == "bricked":
            return
        self._cancel_transition()
        self._set_power("off")
        self._drop_volatile_state()
        await self._close_network()

    async def power_on(self) -> None:
        """Switch on: the device boots for ``boot_seconds`` and then serves again."""
        if self.power != "off":
            return
        self._set_power("booting")
        self._transition = asyncio.get_running_loop().create_task(
            self._boot(self.spec.boot_seconds)
        )

    async def reboot(self) -> None:
        """Reboot; returns once the device is down.

        With an update ordered through ``upgrade.auto.*`` the unit first downloads and checks
        the package while it still serves, and only then goes down to install it; a failed
        download leaves it up, on its old version, with the reason in its update status.
        """
        if self.power != "on" or self.update_status["state"] == "DOWNLOADING":
            return
        pending = self.pending_update()
        if pending is not None:
            self._cancel_transition()
            self._transition = asyncio.get_running_loop().create_task(
                self._fetch_then_install(pending)
            )
            return
        self._cancel_transition()
        self._drop_volatile_state()
        # Leave "on" before closing (which awaits): nobody may see an "on" unit going down.
        self._set_power("booting")
        await self._close_network()
        self._transition = asyncio.get_running_loop().create_task(
            self._boot(self.spec.boot_seconds)
        )

    async def _fetch_then_install(self, target: tuple[str, str]) -> None:
        wanted = self.config.get("upgrade.auto.version", "").strip()
        download = Download(version=wanted, source=self.config["upgrade.auto.server.address"])
        self.downloads = [*self.downloads[-19:], download]
        self.update_status = {"state": "DOWNLOADING", "version": wanted, "reason": ""}
        try:
            await fetch_package(download)
        except DownloadFailed as exc:
            download.status, download.detail = "failed", str(exc)
            log.info("device %s: no install of %s: %s", self.serial, wanted, exc)
            self.update_status = {"state": "FAILED", "version": wanted, "reason": str(exc)}
            self.last_update = {
                "version": target[0],
                "build": target[1],
                "outcome": "download_failed",
                "detail": str(exc),
            }
            self._transition = None
            return
        download.status = "verified"
        if self.power != "on":
            return
        self.update_status = {"state": "INSTALLING", "version": wanted, "reason": ""}
        self._drop_volatile_state()
        self._set_power("installing")
        await self._close_network()
        await self._install(target)

    async def deliver_update(self, version: str) -> None:
        """Install ``version`` now, as a provider's own channel (Teams admin center) would.

        Returns once the device is down; it comes back as ``update.outcome`` says.
        """
        try:
            target = split_firmware(version)
        except VersionError as exc:
            raise FaultError(f"version {version!r}: {exc}", "version") from exc
        if self.power != "on":
            raise FaultError(f"device {self.serial} is {self.power}, not on", "power")
        self._cancel_transition()
        self._drop_volatile_state()
        self._set_power("installing")
        await self._close_network()
        self._transition = asyncio.get_running_loop().create_task(self._install(target))

    def request_reboot_threadsafe(self) -> None:
        """Reboot from an SSH thread (``reboot now``)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.reboot(), self._loop)

    def _cancel_transition(self) -> None:
        if self._transition is not None and self._transition is not asyncio.current_task():
            self._transition.cancel()
        self._transition = None

    def _drop_volatile_state(self) -> None:
        self.sessions.clear()
        self.call = None
        # A reboot cures the software faults; hardware faults stay.
        self.faults.pop("wedged", None)
        self.faults.pop("reboot_needed", None)
        # The other admin's session went with the power: they are no longer signed in.
        self.faults.pop("admin_session", None)
        self._fault_session = None

    def pending_update(self) -> tuple[str, str] | None:
        """(version, build) ordered through ``upgrade.auto.*`` and not yet installed."""
        if self.config.get("upgrade.auto.enable", "").lower() not in ("true", "1", "yes"):
            return None
        if not self.config.get("upgrade.auto.server.address"):
            return None
        wanted = self.config.get("upgrade.auto.version", "").strip()
        if not wanted:
            return None
        try:
            target = FirmwareVersion.parse(wanted)
        except VersionError:
            return None
        if target.same_release(self.version):
            return None
        # A version named without its build installs the release's known build.
        return split_firmware(wanted)

    async def _install(self, target: tuple[str, str]) -> None:
        await asyncio.sleep(self.spec.update.install_seconds)  # waits-for: the simulated install
        outcome = self.spec.update.outcome
        self.last_update = {"version": target[0], "build": target[1], "outcome": outcome}
        version = self.update_status.get("version") or f"{target[0]}-{target[1]}"
        self.update_status = {
            "state": "INSTALLED" if outcome == "ok" else "FAILED",
            "version": version,
            "reason": "" if outcome == "ok" else "the install failed; the old version runs",
        }
        if outcome == "brick":
            log.info("device %s did not come back from its update", self.serial)
            self._set_power("bricked")
            self._transition = None
            return
        if outcome == "ok":
            self.firmware_version, self.build = target
        await self._boot(self.spec.boot_seconds)

    async def _boot(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # waits-for: the simulated boot
        if self.spec.regenerate_cert_on_reboot:
            await asyncio.to_thread(self._regenerate_certificate)
        self.boot_time = self.clock()
        self.booted_once = True
        self._transition = None
        # listening needs power "on"; waiters hear of it once the listeners are up.
        self.power = "on"
        await self._open_network()
        self._set_power("on")

    # --- what the control API shows ---------------------------------------------------------

    def view(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "model": self.model,
            "site": self.site,
            "room": self.room,
            "system_name": self.spec.display_name,
            "provider": self.provider,
            "provider_mode": self.provider_mode,
            "device_mode": self.device_mode,
            "address": self.address,
            "rest_port": self.rest_port,
            "ssh_port": self.ssh_port,
            "tls_fingerprint": self.tls_fingerprint,
            "ssh_fingerprint": self.ssh_fingerprint,
            "firmware": {"version": self.firmware_version, "build": self.build},
            "power": self.power,
            "listening": self.listening,
            "silent_mode": self.silent_mode(),
            "in_call": self.call is not None,
            "faults": {name: dict(params) for name, params in sorted(self.faults.items())},
            "locked_out": self.locked_out(),
            "sessions": len(self.sessions),
            "admin_sessions": [session.view() for session in self.sessions.values()],
            "logins": self.logins,
            "peripherals": [
                {"kind": p.kind, "serial": p.serial, "firmware": p.firmware}
                for p in self.peripherals
            ],
            "last_update": dict(self.last_update),
            "update_status": dict(self.update_status),
            "downloads": [download.view() for download in self.downloads],
        }
