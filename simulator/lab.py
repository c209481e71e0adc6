"""The device lab: a fleet's devices, their fault timeline and the control API, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from polyfleet.simulator.control import create_control_app
from polyfleet.simulator.device import DeviceApis, SimDevice
from polyfleet.simulator.fleet import CallWindow, FaultWindow, FleetSpec, default_port
from polyfleet.simulator.other_host import OtherHost
from polyfleet.simulator.rest import RestApi
from polyfleet.simulator.ssh import serve_connection

log = logging.getLogger(__name__)

#: File descriptors one device needs at rest (REST and SSH listeners) plus head room for clients.
FDS_PER_DEVICE = 4
#: How every lab device answers: the VideoOS REST API and the legacy SSH command line.
VIDEOOS_APIS = DeviceApis(rest=RestApi, ssh=serve_connection)


@dataclass(frozen=True)
class _Window:
    """One timeline entry: a fault or a call on one device, active on [at, until)."""

    serial: str
    at: float
    until: float
    fault: FaultWindow | None = None
    call: CallWindow | None = None

    def active_at(self, t: float) -> bool:
        return self.at <= t < self.until


def _thread_of(window: _Window) -> tuple[str, str]:
    """Windows of one fault (or the calls) of one device overlap into one on/off thread."""
    return window.serial, window.fault.name if window.fault is not None else "call"


def _load_identities(devices: list[SimDevice], others: list[OtherHost]) -> None:
    for device in devices:
        device.load_identity()
    for other in others:
        other.load_identity()


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (1,000 devices need a few thousand fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Lab:
    """Every device of a fleet on loopback, a fault timeline, and the control API.

    ``await lab.start()`` returns once every device and the control API listen;
    ``lab.devices`` maps serial -> :class:`SimDevice`; ``lab.other_hosts`` maps name ->
    :class:`OtherHost` (hosts that are not Poly devices); ``lab.control_url`` is the
    control API's base URL.
    """

    def __init__(
        self,
        fleet: FleetSpec,
        *,
        data_dir: Path,
        control_host: str = "127.0.0.1",
        control_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.data_dir = Path(data_dir)
        self.control_host = control_host
        self.control_port = control_port
        self.clock = clock
        self.devices: dict[str, SimDevice] = {}
        self._windows: list[_Window] = []
        for site, room, spec in fleet.placed_devices():
            if spec.serial in self.devices:
                raise ValueError(f"serial {spec.serial} appears twice in the fleet")
            device = SimDevice(
                spec,
                site=site.id,
                room=room.id,
                timezone=site.timezone,
                data_dir=self.data_dir / "devices" / spec.serial,
                clock=clock,
                apis=VIDEOOS_APIS,
            )
            if spec.rest_port is None:
                device.rest_port = default_port(443)
            if spec.ssh_port is None:
                device.ssh_port = default_port(22)
            self.devices[spec.serial] = device
            for f in spec.faults:
                until = math.inf if f.until is None else f.until
                self._windows.append(_Window(spec.serial, f.at, until, fault=f))
            for c in spec.calls:
                until = math.inf if c.until is None else c.until
                self._windows.append(_Window(spec.serial, c.at, until, call=c))
        self.other_hosts: dict[str, OtherHost] = {}
        for site, room, other in fleet.placed_other_hosts():
            if other.name in self.other_hosts:
                raise ValueError(f"other host {other.name} appears twice in the fleet")
            self.other_hosts[other.name] = OtherHost(
                other, site=site.id, room=room.id, data_dir=self.data_dir / "others" / other.name
            )
        # The timeline stood at _base seconds when the clock read _t0, and runs _rate times
        # as fast as the clock since.
        self._t0 = clock()
        self._base = 0.0
        self._rate = 1.0
        self._cursor = -math.inf
        self._timeline_task: asyncio.Task[None] | None = None
        self._timeline_moved = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Make identities, listen on every device and the control API, start the timeline."""
        limit = raise_open_file_limit()
        needed = FDS_PER_DEVICE * len(self.devices) + 64
        if limit < needed:
            log.warning(
                "open file limit %d is low for %d devices (want %d)",
                limit,
                len(self.devices),
                needed,
            )
        devices = list(self.devices.values())
        others = list(self.other_hosts.values())
        await asyncio.to_thread(_load_identities, devices, others)
        try:
            for device in devices:
                await device.start()
            for other in others:
                await other.start()
            self._runner = web.AppRunner(create_control_app(self), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.control_host, self.control_port)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.control_port = server.sockets[0].getsockname()[1]
            self._t0, self._base = self.clock(), 0.0
            self._cursor = -math.inf
            await self._apply_until(0.0)
            self._timeline_task = asyncio.get_running_loop().create_task(self._run_timeline())
        except BaseException:
            await self.stop()
            raise
        self._started = True
        log.info("lab up: %d devices, control API %s", len(self.devices), self.control_url)

    async def stop(self) -> None:
        """Stop the timeline, every device and the control API."""
        if self._timeline_task is not None:
            self._timeline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timeline_task
            self._timeline_task = None
        for device in self.devices.values():
            await device.stop()
        for other in self.other_hosts.values():
            await other.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._started = False

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def control_url(self) -> str:
        return f"http://{self.control_host}:{self.control_port}"

    def device(self, serial: str) -> SimDevice:
        """The device with ``serial`` (KeyError names it when unknown)."""
        try:
            return self.devices[serial]
        except KeyError:
            raise KeyError(f"no device {serial!r} in this lab") from None

    # --- timeline -------------------------------------------------------------------------

    def timeline_seconds(self) -> float:
        """Seconds on the fault timeline (since start, or since the last jump)."""
        return self._base + (self.clock() - self._t0) * self._rate

    def set_timeline_rate(self, rate: float) -> None:
        """From now on the timeline runs ``rate`` times as fast as the clock (1: real time).

        Only the fault and call windows move faster; devices keep their own clock.
        """
        if not rate > 0:
            raise ValueError(f"timeline rate must be above 0, not {rate}")
        self._t0, self._base = self.clock(), self.timeline_seconds()
        self._rate = rate
        self._timeline_moved.set()

    async def jump_timeline(self, seconds: float) -> None:
        """Move the timeline to ``seconds``: every timeline fault and call takes its state there."""
        self._t0, self._base = self.clock(), seconds
        for key in dict.fromkeys(_thread_of(w) for w in self._windows):
            await self._set_thread(key, seconds)
        self._cursor = seconds
        self._timeline_moved.set()

    async def _set_thread(self, key: tuple[str, str], t: float) -> None:
        """Set one device's fault (or call) as its windows say at ``t``: on while any is."""
        serial, what = key
        device = self.devices[serial]
        active = next((w for w in self._windows if _thread_of(w) == key and w.active_at(t)), None)
        if what == "call":
            if active is not None and active.call is not None:
                await device.start_call(active.call.remote)
            else:
                await device.end_call()
        elif active is not None and active.fault is not None:
            await device.set_fault(what, True, **active.fault.params)
        else:
            await device.set_fault(what, False)

    async def _apply_until(self, t: float) -> None:
        """Apply every timeline edge in (cursor, t]."""
        crossed = [
            w for w in self._windows if any(self._cursor < edge <= t for edge in (w.at, w.until))
        ]
        for key in dict.fromkeys(_thread_of(w) for w in crossed):
            await self._set_thread(key, t)
        self._cursor = t

    async def _run_timeline(self) -> None:
        edges = sorted(
            {w.at for w in self._windows} | {w.until for w in self._windows if w.until != math.inf}
        )
        while True:
            upcoming = next((e for e in edges if e > self._cursor), None)
            self._timeline_moved.clear()
            if upcoming is None:
                await self._timeline_moved.wait()
                continue
            delay = (upcoming - self.timeline_seconds()) / self._rate
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._timeline_moved.wait(), timeout=delay)
                continue
            try:
                await self._apply_until(upcoming)
            except Exception:
                # The timeline must outlive one device's failure to change state.
                log.exception("timeline step at %.1fs failed", upcoming)
                self._cursor = upcoming

    # --- what the ready file and the control API show -------------------------------------

    def ready_info(self) -> dict[str, Any]:
        """What ``--ready-file`` holds (no passwords: those come from the fleet file)."""
        return {
            "control_url": self.control_url,
            "devices": [
                {
                    "serial": d.serial,
                    "model": d.model,
                    "site": d.site,
                    "room": d.room,
                    "address": d.address,
                    "rest_port": d.rest_port,
                    "ssh_port": d.ssh_port,
                    "tls_fingerprint": d.tls_fingerprint,
                    "ssh_fingerprint": d.ssh_fingerprint,
                    "firmware": {"version": d.firmware_version, "build": d.build},
                    "provider": d.provider,
                    "system_name": d.spec.display_name,
                    "peripherals": [
                        {"kind": p.kind, "serial": p.serial, "firmware": p.firmware}
                        for p in d.peripherals
                    ],
                }
                for d in self.devices.values()
            ],
            "other_hosts": [o.view() for o in self.other_hosts.values()],
        }
