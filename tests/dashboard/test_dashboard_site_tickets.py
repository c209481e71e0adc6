"""The ticket pages with a site-wide ticket open: every page answers in words, for every role."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dashboard.dashboard_testkit import SESSION_COOKIE, http_sign_in
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "data") as running:
        await running.ensure_site("krk")
        yield running


async def test_a_site_wide_ticket_is_shown_on_every_ticket_page_for_admins_and_viewers(
    controller: RunningController,
) -> None:
    """A ticket on a whole site (a switch down) lists and opens as a page, in English and
    Polish, for an admin and a viewer: never a 500 or a JSON error, never None."""
    async with aiohttp.ClientSession(headers=controller.admin_headers) as http:
        body = {"site": "krk", "category": "fault", "summary": "The rooms' switch is down"}
        async with http.post(controller.url + "/api/v1/tickets", json=body) as response:
            assert response.status == 201, await response.text()
            ticket = (await response.json())["id"]
    viewer, _ = await controller.core.access.create_token(Role.VIEWER, "wall")
    for token in (controller.admin_token, viewer):
        async with aiohttp.ClientSession() as http:
            cookie = await http_sign_in(http, controller.url, token)
            for path in ("/tickets", f"/tickets/{ticket}", "/"):
                for language in ("en", "pl"):
                    async with http.get(
                        controller.url + path,
                        headers={"Accept-Language": language},
                        cookies={SESSION_COOKIE: cookie},
                    ) as response:
                        page = await response.text()
                        assert response.status == 200, (path, language, page[:2000])
                        assert response.content_type == "text/html", (path, language)
                    # A Python None rendered as a value (the sentence "None." is English).
                    assert not re.search(r"\bNone\b(?!\.)", page), (path, language)
                    if path == "/tickets":
                        assert f'data-ticket="{ticket}"' in page, (path, language)
                    if path.startswith("/tickets/"):
                        assert "switch is down" in page, (path, language)
