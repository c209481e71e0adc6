"""Fixtures for the device lab tests: labs on loopback and pinned REST clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lab_client import LabFactory, RestClient

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import start_lab


@pytest.fixture
async def lab_factory(tmp_path: Path) -> AsyncIterator[LabFactory]:
    """Start labs of given DeviceSpecs under tmp_path; all are stopped after the test."""
    labs: list[Lab] = []

    async def factory(devices: list[DeviceSpec], **options: Any) -> Lab:
        lab = await start_lab(tmp_path / f"lab{len(labs)}", devices, **options)
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        await lab.stop()


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
