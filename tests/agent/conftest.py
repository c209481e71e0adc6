"""Fixtures for agent tests (labs and their password file come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_testkit import PolledUnit, make_poller
from testkit.site_agents import agent_config, device_config

from polyfleet.simulator.testing import make_device


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared client session a poller uses."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def polled_unit(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> Callable[..., Awaitable[PolledUnit]]:
    """Start a lab of one unit (``make_device`` options) and a poller for it, not yet run."""

    async def start(serial: str, **spec: Any) -> PolledUnit:
        lab = await lab_factory([make_device(serial, **spec)])
        device = lab.devices[serial]
        poller = make_poller(agent_config(tmp_path, [device_config(device, password_file)]), http)
        return PolledUnit(device, poller, next(iter(poller.states)))

    return start
