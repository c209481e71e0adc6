"""Fixtures of the controller tests: a settable clock, a running controller, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from controller_testkit import SettableClock

from polyfleet.controller.testing import RunningController, running_controller


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "data") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
