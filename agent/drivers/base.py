"""The one contract every device driver fulfils (its docstrings are the specification)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from polyfleet.agent.config import DeviceConfig
from polyfleet.agent.transport.ledger import SessionLedger
from polyfleet.shared.errors import DeviceProtocolError
from polyfleet.shared.schema import Meeting, Problem, Snapshot


@dataclass
class Pins:
    """The fingerprints a driver must hold the device to; ``None`` means "learn it" (first use)."""

    tls: str | None = None
    ssh: str | None = None
    #: Filled in by the driver with what it saw, so the caller can pin on first use.
    seen_tls: str | None = None
    seen_ssh: str | None = None


@dataclass
class DriverContext:
    """What a driver gets besides the device: shared HTTP session, timeouts, pins."""

    session: aiohttp.ClientSession
    pins: Pins = field(default_factory=Pins)
    request_timeout_s: float = 10.0
    #: Where REST sessions are written down while open (None: nowhere, e.g. ``probe``).
    ledger: SessionLedger | None = None


class DeviceDriver(ABC):
    """A device family behind one interface; drivers return ``shared`` models, never vendor dicts.

    Failures raise the ``shared.errors`` tree: ``DeviceUnreachable``,
    ``CertificateMismatch`` (before any credential is sent), ``AuthenticationFailed``,
    ``LockedOut``, ``NotAPolyDevice``, ``DeviceWedged``, ``DeviceProtocolError``.
    Each carries a one-line ``reason`` and the ``host``; none carries a password.

    Every call logs in, works, and logs out again: no session outlives a call. A session
    an earlier run of the agent left open (it was killed mid-call) is logged out by the
    next ``poll`` of that unit, before it logs in.
    """

    #: Registry key (``[[devices]] driver = ...`` in the agent config).
    platform: str = ""

    def __init__(self, device: DeviceConfig, password: str, context: DriverContext) -> None:
        self.device = device
        self._password = password
        self.context = context

    @abstractmethod
    async def poll(self) -> list[Snapshot]:
        """Read the device once and return its snapshot, then one per camera with its own entry.

        The first item is the device itself; cameras that carry their own serial
        (Studio E70) follow with ``host_serial`` set. Example (``model_dump(mode="json")``)::

            [
              {"serial": "8L200353429AFC", "model": "g7500", "model_raw": "G7500",
               "system_name": "Krakow Boardroom", "firmware": {"version": "4.1.0",
               "build": "382263"}, "provider": "teams",
               "health": {"state": "degraded", "problems": [
                   {"code": "peripheral_disconnected",
                    "detail": "Poly Studio E70 E70A1 DISCONNECTED"}]},
               "in_call": false, "uptime_s": 693845.31,
               "peripherals": [{"kind": "camera", "model_raw": "Poly Studio E70",
                                "serial": "E70A1", "firmware": "1.2.0", "state": "DISCONNECTED"}],
               "host_serial": null, "collected_at": "2026-11-25T21:00:00Z", "via": "rest",
               "sessions": [
                   {"key": "5f0c...", "user": "admin", "role": "ADMIN", "address": "10.0.0.5",
                    "kind": "web", "since": "2026-11-25T21:00:00Z", "agent": true},
                   {"key": "9a41...", "user": "admin", "role": "ADMIN",
                    "address": "192.0.2.44", "kind": "ssh", "since": "2026-11-25T08:12:00Z",
                    "agent": false}]},
              {"serial": "E70A1", "model": "studio_e70", "model_raw": "Poly Studio E70",
               "system_name": "Krakow Boardroom", "firmware": {"version": "1.2.0", "build": ""},
               "provider": "teams", "health": {"state": "fault", "problems": [
                   {"code": "peripheral_disconnected", "detail": "DISCONNECTED"}]},
               "in_call": false, "uptime_s": null, "peripherals": [],
               "host_serial": "8L200353429AFC", "collected_at": "2026-11-25T21:00:00Z",
               "via": "rest", "sessions": null}
            ]

        ``sessions``: the unit's open admin sessions (``agent``: opened by this agent), None
        where the unit does not list them. Problems found on a device that answered are in
        ``health.problems``; a
        device that could not be read raises instead (the poller turns that into
        ``unreachable``, ``auth_failed``, ``locked_out``, ``certificate_changed``).
        """

    @abstractmethod
    async def poll_fallback(self, cause: Exception) -> list[Snapshot]:
        """Read the device another way after ``poll`` failed with ``cause`` (REST wedged/down).

        Example: a wedged VideoOS unit read over SSH gives the same shape as
        ``poll`` with ``"via": "ssh"`` and an ``api_error`` problem naming the
        cause. Raises like ``poll`` when the other way fails too.
        """

    async def cross_check(self, snapshot: Snapshot) -> list[Problem]:
        """Read the device's identity another way and compare it with ``snapshot`` (from ``poll``).

        Returns a problem per disagreement, ``[]`` when all agrees. Example (a VideoOS
        unit whose SSH command line names another serial than its REST API)::

            [{"code": "api_error",
              "detail": "SSH cross-check: serial 8L200353429AFC over SSH, 8L2003534299 over REST"}]

        Logs in, reads, logs out, like every call. Raises like ``poll`` when the other
        way cannot be read. The default has no other way, so it finds nothing.
        """
        del snapshot
        return []

    @abstractmethod
    async def in_call(self) -> bool:
        """True while the device is in a call (or ringing); reading only. Example: ``False``."""

    @abstractmethod
    async def reboot(self) -> None:
        """Restart the device. Callers must check :meth:`in_call` first (never disturb a call)."""

    @abstractmethod
    async def diagnostics(self, network_targets: Sequence[str] = ()) -> dict[str, bytes]:
        """Files for a diagnostics bundle, name -> content. Example::

            {"system-logs.tar": b"...", "ssh-status.txt": b"camera up\\n...status end\\n",
             "ssh-whoami.txt": b"Hi, my name is : Krakow Boardroom\\n...",
             "network-tests.json": b'[{"target": "10.0.0.5", "ping": {...}, ...}]'}

        ``network_targets``: hosts the unit tests its reach to, with its own ping and
        traceroute (remote diagnostics, H4); the answers go to ``network-tests.json``.

        A part that cannot be read is replaced by ``<name>.error.txt`` saying why.
        """

    async def read_config(self, names: list[str]) -> dict[str, str]:
        """The values of configuration variables, name -> value. Example::

            {"upgrade.auto.enable": "false", "upgrade.auto.server.address": ""}

        Variables the device does not know are left out. The default: no configuration API.
        """
        del names
        raise DeviceProtocolError(
            f"{self.device.host}: {self.platform} has no configuration API", host=self.device.host
        )

    async def meetings(self, start: datetime, end: datetime) -> list[Meeting] | None:
        """The room calendar's meetings overlapping ``[start, end)``, start and end only (a
        subject never leaves the agent). Example::

            [Meeting(start=datetime(2027, 3, 28, 1, 30, tzinfo=UTC),
                     end=datetime(2027, 3, 28, 2, 0, tzinfo=UTC))]

        None: the unit has no room calendar (not set up, or no such API). The default: None.
        """
        del start, end
        return None

    async def write_config(self, values: dict[str, str]) -> None:
        """Set configuration variables; DeviceProtocolError names one the device refused."""
        del values
        raise DeviceProtocolError(
            f"{self.device.host}: {self.platform} has no configuration API", host=self.device.host
        )

    async def update_status(self) -> dict[str, str]:
        """The device's own word on its last ordered update. Example::

            {"state": "FAILED", "version": "4.2.2-408037",
             "reason": "checksum mismatch: sha256 ab12..., 9f00... announced"}

        ``state`` is one of IDLE, DOWNLOADING, INSTALLING, INSTALLED, FAILED.
        """
        return {"state": "IDLE", "version": "", "reason": ""}
