"""Fixtures for the device lab tests: labs on loopback and pinned REST clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from lab_client import RestClient

from polyfleet.simulator.device import SimDevice


@pytest.fixture
async def rest_factory() -> AsyncIterator[Callable[[SimDevice], RestClient]]:
    """REST clients with their own cookie jars (unsafe=True: devices are addressed by IP)."""
    sessions: list[aiohttp.ClientSession] = []

    def factory(device: SimDevice) -> RestClient:
        http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
        )
        sessions.append(http)
        return RestClient(device, http)

    yield factory
    for http in sessions:
        await http.close()
