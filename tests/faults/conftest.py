"""Fixtures of the fault-injection suite: real controllers, agents, lab devices and disks.

Every fixture starts real things on loopback and stops them at the end of the test:

- ``controllers``: ``await controllers.start(config="...", sites=("krk",))`` starts
  ``polyfleet controller serve`` in its own process with a fresh data directory (sites, an
  admin token and enrollment codes prepared first); the ``ControllerProcess`` it returns
  has ``url``, ``admin_token``, ``codes[site]``, ``kill()`` (SIGKILL), ``stop()``
  (SIGTERM), ``start()`` (again, same data), ``log()``, ``wait_log(regex)`` and
  ``metric(http, token, name)``. ``data_dir=`` puts the data somewhere given (a small disk);
  the process's config and log stay in the test's own folder, off that disk.
- ``controller``: one such controller with the site ``krk``, started with default config.
- ``agent_token``: an agent of ``krk`` enrolled with ``controller``.
- ``small_disk``: ``small_disk("8m")`` mounts a tmpfs of that size (``fill()``, ``free()``,
  ``remount(read_only=...)``); the test is skipped, saying why, where mounting is refused.
- ``lab_factory`` and ``password_file``: lab devices on their own 127.x.y.z addresses.
- ``agents``: ``await agents.start(controller, site, devices, clock_offset="+5y")`` writes an
  agent config for those lab devices, enrolls on first start and runs ``polyfleet agent run``
  in its own process (under faketime when ``clock_offset`` is given).
- ``http``: an aiohttp client session.

Helpers without fixtures (report builders, ``post_batch``, ``wait_for``...) are in
``faultkit.py``; import them from there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from faultkit import (
    AgentProcess,
    ControllerProcess,
    DiskRefused,
    SmallDisk,
    enroll,
    prepare_data_dir,
)

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import TEST_PASSWORD, start_lab


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


@pytest.fixture
async def controllers(tmp_path: Path) -> AsyncIterator[Controllers]:
    """Start real controller processes; each is killed at the end of the test."""
    started = Controllers(tmp_path)
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def controller(controllers: Controllers) -> ControllerProcess:
    """One real controller process with the site ``krk`` and the default configuration."""
    return await controllers.start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def agent_token(controller: ControllerProcess, http: aiohttp.ClientSession) -> str:
    """The credential of an agent of ``krk``, enrolled with ``controller``."""
    answer = await enroll(http, controller.url, controller.codes["krk"][0])
    return str(answer["token"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], SmallDisk]]:
    """Mount tmpfs filesystems of a given size for this test; skip where mounting is refused."""
    disks: list[SmallDisk] = []

    def make(size: str = "8m") -> SmallDisk:
        disk = SmallDisk(tmp_path / f"disk{len(disks)}", size)
        try:
            disk.mount()
        except DiskRefused as exc:
            pytest.skip(f"needs a small filesystem of its own: {exc}")
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.remount(read_only=False)
        disk.unmount()


LabFactory = Callable[[list[DeviceSpec]], Awaitable[Lab]]


@pytest.fixture
async def lab_factory(tmp_path: Path) -> AsyncIterator[LabFactory]:
    """Start labs of given devices; all are stopped at the end of the test."""
    labs: list[Lab] = []

    async def make(devices: list[DeviceSpec]) -> Lab:
        lab = await start_lab(tmp_path / f"lab{len(labs)}", devices)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        await lab.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """The lab admin password in an owner-only file."""
    path = tmp_path / "device-password"
    path.write_text(TEST_PASSWORD + "\n")
    os.chmod(path, 0o600)
    return path


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


@pytest.fixture
async def agents(tmp_path: Path, password_file: Path) -> AsyncIterator[Agents]:
    """Start real agent processes; each is stopped at the end of the test."""
    started = Agents(tmp_path, password_file)
    try:
        yield started
    finally:
        await started.close()
