"""Fixtures for agent tests: a device lab on loopback and agent configs pointing at it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import TEST_PASSWORD, start_lab

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


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared client session a poller uses."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
