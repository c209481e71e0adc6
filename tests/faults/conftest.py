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
- ``lab_factory`` and ``password_file`` (from tests/conftest.py): lab devices on their own
  127.x.y.z addresses.
- ``agents``: ``await agents.start(controller, site, devices, clock_offset="+5y")`` writes an
  agent config for those lab devices, enrolls on first start and runs ``polyfleet agent run``
  in its own process (under faketime when ``clock_offset`` is given).
- ``http``: an aiohttp client session.

Helpers without fixtures (``post_batch``, ``get_json``...) and the types the fixtures hand
out (``Controllers``, ``Agents``, ``LabFactory``) are in ``faultkit.py``, report builders and
``wait_until`` in ``testkit``; import them from there (never from ``conftest``, a name every
test folder has).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from faultkit import (
    Agents,
    ControllerProcess,
    Controllers,
    DiskRefused,
    SmallDisk,
    enroll,
)


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


@pytest.fixture
async def agents(tmp_path: Path, password_file: Path) -> AsyncIterator[Agents]:
    """Start real agent processes; each is stopped at the end of the test."""
    started = Agents(tmp_path, password_file)
    try:
        yield started
    finally:
        await started.close()
