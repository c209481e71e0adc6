"""Fixtures of the dashboard tests: one world (lab, agents, controller, browser) per module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from dashboard.dashboard_testkit import World, running_world


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    # Short refresh periods: live updates and the kiosk's own refresh happen within a test.
    web_section = {"refresh_s": 2, "kiosk_refresh_s": 1}
    async with running_world(
        tmp_path_factory.mktemp("dashboard"), web_section=web_section
    ) as running:
        yield running
