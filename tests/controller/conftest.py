"""Fixtures of the controller tests: a settable clock, a running controller, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_backends import StoreBackend
from testkit.clocks import SettableClock

from polyfleet.controller.testing import RunningController, running_controller


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "data") as running:
        yield running


@pytest.fixture(params=["embedded", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Each store in turn: the embedded one in a directory, PostgreSQL in a database of its own."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return StoreBackend("postgresql", tmp_path / "data", url)
    return StoreBackend("embedded", tmp_path / "store")
