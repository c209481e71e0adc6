"""Real processes and real faults for the fault-injection suite (fixtures in conftest.py).

What is here, each usable on its own:

- ``ControllerProcess``: ``polyfleet controller serve`` in its own process on 127.0.0.1:0,
  with its log in a file; ``kill()`` is SIGKILL, ``stop()`` SIGTERM, ``start()`` again
  after either (same data directory).
- ``prepare_data_dir``: sites, an admin token and enrollment codes written into a fresh data
  directory before the controller starts (through the real store, no server needed).
- ``enroll``, ``post_batch``, ``get_json``: the wire protocol as an agent or admin speaks it.
- ``SmallDisk``: a tmpfs of a few MiB mounted for one test, to fill up and make read-only.
- ``AgentProcess``: ``polyfleet agent run`` in its own process (optionally under faketime).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.waiting import wait_until

from polyfleet.controller.clock import system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.core import build_controller
from polyfleet.controller.services.access import Role
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.testing import SITE_ADDRESS, SITE_CONTACT
from polyfleet.shared.process import polyfleet_argv
from polyfleet.shared.schema import PROTOCOL_VERSION
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab

REPO = Path(__file__).resolve().parents[2]
#: How long a controller may take to start listening (a large journal replays first).
START_TIMEOUT_S = 60.0
# -- talking to a controller ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, parsed JSON body (None when not JSON) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


async def _answer(response: aiohttp.ClientResponse) -> Answer:
    raw = await response.read()
    try:
        body = await response.json(content_type=None) if raw else None
    except ValueError:
        body = None
    return Answer(response.status, body, dict(response.headers))


async def post_batch(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any] | bytes
) -> Answer:
    """POST one report batch as an agent; never raises on an HTTP error status."""
    data = body if isinstance(body, bytes) else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(
        f"{url}/api/v1/agent/reports",
        data=data,
        json=None if data is not None else body,
        headers=headers,
    ) as response:
        return await _answer(response)


async def get_json(http: aiohttp.ClientSession, url: str, path: str, token: str) -> Answer:
    """GET an admin endpoint with a bearer token."""
    async with http.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}) as response:
        return await _answer(response)


async def enroll(http: aiohttp.ClientSession, url: str, code: str) -> dict[str, Any]:
    """Exchange an enrollment code for an agent credential (``token``, ``agent_id``...)."""
    body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "fault-test"}
    async with http.post(f"{url}/api/v1/agent/enroll", json=body) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


@dataclass
class Prepared:
    """What ``prepare_data_dir`` wrote: an admin token and per site its enrollment codes."""

    admin_token: str
    codes: dict[str, list[str]]


async def prepare_data_dir(
    data_dir: Path, sites: Sequence[str] = ("krk",), *, codes_per_site: int = 1
) -> Prepared:
    """Sites, an admin token and enrollment codes, written through the real store."""
    config = ControllerConfig(data_dir=data_dir)
    store = TinyDBStore(data_dir / "store")
    await store.open()
    try:
        # The services as the server builds them, over the store opened here.
        core = build_controller(config, system_clock, store=store)
        inventory, access = core.inventory, core.access
        codes: dict[str, list[str]] = {}
        for site in sites:
            await inventory.add_site(site, name=site.title(), timezone="Europe/Warsaw")
            await inventory.update_site(site, contact=SITE_CONTACT, delivery_address=SITE_ADDRESS)
            codes[site] = [(await access.create_invite(site))[0] for _ in range(codes_per_site)]
        admin, _ = await access.create_token(Role.ADMIN, "fault tests")
        return Prepared(admin_token=admin, codes=codes)
    finally:
        await store.close()


class ControllerProcess:
    """``polyfleet controller serve`` as its own process; stdout's first line gives its URL.

    ``config`` is the text of its ``controller.toml``. The process's log (stderr) goes to
    ``log_path`` in ``work_dir`` (default: beside the data directory), kept across restarts,
    so a test can look for what it said.
    """

    def __init__(
        self,
        data_dir: Path,
        config: str = "",
        *,
        env: Mapping[str, str] | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        # Config and log beside the data directory unless told (a small disk holds only data).
        work = work_dir or data_dir.parent
        self.config_path = work / f"{data_dir.name}-controller.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.log_path = work / f"{data_dir.name}-controller.log"
        self.env = dict(env or {})
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.exit_output = ""
        #: Set by the ``controllers`` fixture from the prepared data directory.
        self.admin_token = ""
        self.codes: dict[str, list[str]] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, *, expect_ready: bool = True) -> None:
        """Start and wait for it to listen; with ``expect_ready=False``, wait for it to exit."""
        assert not self.running, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = await asyncio.create_subprocess_exec(
                *polyfleet_argv(
                    "controller",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    "127.0.0.1:0",
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env={**os.environ, **self.env},
            )
        finally:
            log.close()
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT_S)
        if not expect_ready:
            rest = await asyncio.wait_for(self.process.stdout.read(), START_TIMEOUT_S)
            await asyncio.wait_for(self.process.wait(), START_TIMEOUT_S)
            self.exit_output = (line + rest).decode(errors="replace")
            return
        if b"listening on" not in line:
            await asyncio.wait_for(self.process.wait(), START_TIMEOUT_S)
            raise AssertionError(f"controller did not start: {line!r}\n{self.log()[-3000:]}")
        self.url = line.decode().strip().rsplit(" ", 1)[-1]

    async def kill(self) -> None:
        """SIGKILL (as a crash or power loss would stop it) and reap it."""
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit status (-9 if it had to be killed after ``timeout``)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                await self.kill()
        assert self.process.returncode is not None
        return self.process.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def log(self) -> str:
        """Everything the process (and earlier runs in this data directory) logged."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` (a regular expression) in the log, once it appears."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log())
            if match:
                found.append(match)
            return match is not None

        await wait_until(seen, timeout=timeout, what=f"log line matching {pattern!r}")
        return found[0]

    async def metric(self, http: aiohttp.ClientSession, token: str, name: str) -> float | None:
        """The value of one unlabelled (or first labelled) sample of ``/metrics``."""
        async with http.get(
            f"{self.url}/metrics", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                return float(line.rsplit(" ", 1)[-1])
        return None


# -- a small disk ----------------------------------------------------------------------------


class DiskRefused(Exception):
    """The kernel (or the lack of privileges) refused to mount a test filesystem."""


class SmallDisk:
    """A tmpfs of ``size`` mounted on ``path`` for one test: fill it, free it, remount it."""

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = path
        self.size = size
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise DiskRefused("mounting a tmpfs needs root (CI runs as root)")
        if shutil.which("mount") is None:
            raise DiskRefused("no mount command")
        result = _run_mount("-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", self.path)
        if result.returncode != 0:
            raise DiskRefused(f"mount -t tmpfs refused: {result.stderr.strip()}")
        self.mounted = True

    def fill(self, leave_bytes: int = 0) -> None:
        """Write a filler file until the filesystem is full (less ``leave_bytes``)."""
        stat = os.statvfs(self.path)
        free = stat.f_bavail * stat.f_frsize - leave_bytes
        # Unbuffered: each write reaches the filesystem, and closing has nothing to flush.
        with open(self.path / "filler", "ab", buffering=0) as handle:
            with contextlib.suppress(OSError):
                while free > 0:
                    free -= handle.write(b"\0" * min(65536, free))
            if leave_bytes == 0:
                with contextlib.suppress(OSError):
                    while handle.write(b"\0" * 512):
                        pass

    def free(self) -> None:
        """Remove the filler: the disk takes writes again."""
        (self.path / "filler").unlink(missing_ok=True)

    def remount(self, *, read_only: bool) -> subprocess.CompletedProcess[str]:
        """Remount read-only or read-write; the result (ro fails while a file is open to write)."""
        mode = "ro" if read_only else "rw"
        return _run_mount("-o", f"remount,{mode}", self.path)

    def unmount(self) -> None:
        if self.mounted:
            result = subprocess.run(
                ["umount", "-l", str(self.path)], capture_output=True, text=True, check=False
            )
            self.mounted = result.returncode != 0


def _run_mount(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", *(str(a) for a in args)], capture_output=True, text=True, check=False
    )


# -- an agent process ------------------------------------------------------------------------


class AgentProcess:
    """``polyfleet agent run --config PATH`` as its own process, its log in a file.

    ``clock_offset`` (such as ``"+5y"`` or ``"-2d"``) runs it under faketime, as an agent on a
    machine whose clock is wrong; the test is skipped where faketime is not installed.
    """

    def __init__(
        self, config_path: Path, *, clock_offset: str | None = None, flags: Sequence[str] = ()
    ) -> None:
        self.config_path = config_path
        self.clock_offset = clock_offset
        #: More ``agent run`` flags (``--allow-insecure-uplink``).
        self.flags = list(flags)
        self.log_path = config_path.with_suffix(".log")
        self.process: asyncio.subprocess.Process | None = None

    def argv(self) -> list[str]:
        argv = polyfleet_argv("agent", "run", "--config", str(self.config_path), *self.flags)
        if self.clock_offset is None:
            return argv
        faketime = shutil.which("faketime")
        if faketime is None:
            raise FileNotFoundError("faketime (Debian package faketime) is not installed")
        return [faketime, "-f", self.clock_offset, *argv]

    async def start(self) -> None:
        env = {**os.environ}
        # Only the wall clock lies: timers and timeouts run on the real monotonic clock.
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        with open(self.log_path, "ab") as log:
            # A group of its own: faketime runs the agent as its child and does not pass
            # signals on, so stop() signals the whole group.
            self.process = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=log, stderr=log, cwd=REPO, env=env, start_new_session=True
            )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


# -- what the fixtures hand out (conftest.py) ----------------------------------------------


class Controllers:
    """Starts controller processes for one test and kills whatever still runs at its end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ControllerProcess] = []

    async def start(
        self,
        config: str = "",
        *,
        sites: Sequence[str] = ("krk",),
        codes_per_site: int = 1,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ControllerProcess:
        """A prepared data directory and a controller serving it (``admin_token``, ``codes``)."""
        target = data_dir or self.base / f"controller{len(self.started)}"
        prepared = await prepare_data_dir(target, sites, codes_per_site=codes_per_site)
        work = self.base / f"controller{len(self.started)}-run"
        work.mkdir(exist_ok=True)
        process = ControllerProcess(target, config, env=env or {}, work_dir=work)
        process.admin_token = prepared.admin_token
        process.codes = prepared.codes
        self.started.append(process)
        await process.start()
        return process

    async def close(self) -> None:
        for process in self.started:
            await process.kill()


LabFactory = Callable[[list[DeviceSpec]], Awaitable[Lab]]


class Agents:
    """Starts ``polyfleet agent run`` processes for one test and stops them at its end."""

    def __init__(self, base: Path, password_file: Path) -> None:
        self.base = base
        self.password_file = password_file
        self.started: list[AgentProcess] = []

    async def start(
        self,
        controller: ControllerProcess,
        site: str,
        devices: Sequence[SimDevice],
        *,
        clock_offset: str | None = None,
        poll_interval_s: float = 0.5,
    ) -> AgentProcess:
        """An agent of ``site`` polling ``devices``, enrolled with one of the site's codes."""
        if clock_offset is not None and shutil.which("faketime") is None:
            pytest.skip(
                "needs faketime (Debian package faketime) to run an agent with a wrong clock"
            )
        number = len(self.started)
        folder = self.base / f"agent{number}"
        folder.mkdir(parents=True)
        code_file = folder / "enrollment-code"
        code_file.write_text(controller.codes[site][number % len(controller.codes[site])])
        os.chmod(code_file, 0o600)
        entries = "".join(
            f'\n[[devices]]\nhost = "{d.address}"\nrest_port = {d.rest_port}\n'
            f"ssh_port = {d.ssh_port}\n"
            for d in devices
        )
        config = folder / "agent.toml"
        config.write_text(
            f'[agent]\ndata_dir = "{folder / "data"}"\nname = "agent{number}"\n'
            f"poll_interval_s = {poll_interval_s}\njitter_s = 0\ndevice_timeout_s = 5\n"
            f'[controller]\nurl = "{controller.url}"\nenrollment_code_file = "{code_file}"\n'
            "send_interval_s = 0.2\njobs_interval_s = 0.5\nbackoff_max_s = 1\n"
            f'[defaults]\npassword_file = "{self.password_file}"\n{entries}',
            encoding="utf-8",
        )
        agent = AgentProcess(config, clock_offset=clock_offset)
        self.started.append(agent)
        await agent.start()
        return agent

    async def close(self) -> None:
        for agent in self.started:
            await agent.stop()
