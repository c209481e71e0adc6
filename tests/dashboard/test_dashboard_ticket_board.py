"""The tickets page as an admin uses it: search, filters, sorting and age; a ticket's page
offers only the next steps its state and kind allow, and the API refuses the others."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.waiting import wait_until
from tickets.conftest import WebhookPeer, ticket_sections
from tickets.conftest import webhook_peer as webhook_peer  # the desk's real receiver

from dashboard.dashboard_testkit import SESSION_COOKIE, http_sign_in
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller

REGISTRY = (
    "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,"
    "host_serial\n"
    "K1,studio_x50,2025-01-10,hezo_plus,HZ-1,2025-01-10,2027-01-09,krk,Sala Wawel,\n"
)


@dataclass
class Desk:
    """A controller sending tickets to a real webhook, with four tickets of every kind."""

    controller: RunningController
    #: Ticket ids by what they are about.
    ids: dict[str, str]

    async def page(self, path: str, *, language: str = "en", token: str | None = None) -> str:
        """The page's HTML as a signed-in browser gets it (200, text/html)."""
        async with aiohttp.ClientSession() as http:
            cookie = await http_sign_in(http, self.controller.url, token or self.admin)
            async with http.get(
                self.controller.url + path,
                headers={"Accept-Language": language},
                cookies={SESSION_COOKIE: cookie},
            ) as response:
                text = await response.text()
                assert response.status == 200, (path, text[:2000])
                assert response.content_type == "text/html"
                return text

    @property
    def admin(self) -> str:
        return self.controller.admin_token

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.controller.admin_headers) as http,
            http.request(method, self.controller.url + path, **kwargs) as response,
        ):
            return response.status, await response.json()

    async def status(self, key: str) -> str:
        return str((await self.api("GET", f"/api/v1/tickets/{key}"))[1]["status"])


async def _open(desk: Desk, name: str, body: dict[str, str]) -> None:
    status, answer = await desk.api("POST", "/api/v1/tickets", json=body)
    assert status == 201, answer
    desk.ids[name] = answer["id"]


@pytest.fixture
async def desk(tmp_path: Path, webhook_peer: WebhookPeer) -> AsyncIterator[Desk]:
    sections = ticket_sections(
        None, webhook_peer, diagnostics_timeout_s=0, check_interval_s=0.2, language="en"
    )
    async with running_controller(tmp_path / "data", sections=sections) as controller:
        inventory = controller.core.inventory
        await controller.ensure_site("krk")
        await inventory.update_site("krk", name="Kraków")
        # Gdańsk names no reporter: its tickets are held for one.
        await controller.ensure_site("gdn", contact=False)
        await inventory.update_site("gdn", name="Gdańsk")
        desk = Desk(controller=controller, ids={})
        status, answer = await desk.api(
            "POST",
            "/api/v1/assets/import",
            data=REGISTRY,
            headers={"Content-Type": "text/csv"},
        )
        assert status == 200, answer
        await _open(desk, "camera", {"serial": "K1", "category": "fault", "summary": "No picture"})
        await _open(desk, "help", {"serial": "K1", "category": "support", "summary": "Pairing"})
        await _open(desk, "outage", {"site": "krk", "category": "fault", "summary": "Switch down"})
        await _open(desk, "held", {"site": "gdn", "category": "fault", "summary": "Power cut"})
        sent = [desk.ids[name] for name in ("camera", "help", "outage")]

        async def all_sent() -> bool:
            return all([await desk.status(key) == "sent" for key in sent])

        await wait_until(all_sent, timeout=30)
        yield desk


ROW = re.compile(r'<tr[^>]*data-ticket="([^"]+)"')


def rows(page: str, table: str = "tickets") -> list[str]:
    """The ticket ids a table of the page lists, in its order."""
    found = re.search(rf'<table[^>]*id="{table}".*?</table>', page, re.S)
    return ROW.findall(found.group(0)) if found else []


def actions(page: str) -> list[str]:
    return re.findall(r'data-action="([a-z]+)"', page)


async def test_the_tickets_page_searches_filters_and_sorts_in_names(desk: Desk) -> None:
    """Text search over id, summary, device, room and site; filters by status, site, kind and
    urgency, each shown in the form and kept in the live-update address; sorting by site,
    opening and age; every row with its site's and room's names and its age."""
    ids = desk.ids
    page = await desk.page("/tickets")
    assert sorted(rows(page)) == sorted(ids.values())
    assert "Kraków" in page and "Gdańsk" in page and "Sala Wawel" in page
    assert len(re.findall(r'data-age="\d+"', page)) == 4
    # What a held ticket lacks, in words.
    assert "missing: reporter's name, reporter's phone" in unescape(page)
    assert "contact_name" not in page
    # Names, not ids, in the site column.
    assert not re.search(r'data-label="Site">(krk|gdn)<', page)
    searches = {
        "switch": {ids["outage"]},
        "WAWEL": {ids["camera"], ids["help"]},
        "gdańsk": {ids["held"]},
        ids["camera"].lower(): {ids["camera"]},
        "k1 pairing": {ids["help"]},
        "nothing-like-this": set(),
    }
    for text, wanted in searches.items():
        found = await desk.page("/tickets?" + f"q={aiohttp.helpers.quote(text)}")
        assert set(rows(found)) == wanted, text
        assert f'value="{text}"' in found, "the search stays in its field"
    filters = {
        "status=needs_data": {ids["held"]},
        "kind=site": {ids["outage"], ids["held"]},
        "site=krk": {ids["camera"], ids["help"], ids["outage"]},
        "urgency=held": {ids["held"]},
        "urgency=waiting&kind=site": {ids["outage"]},
        "site=krk&kind=device&q=no+picture": {ids["camera"]},
    }
    for query, wanted in filters.items():
        found = await desk.page(f"/tickets?{query}&sort=-age")
        assert set(rows(found)) == wanted, query
        for pair in query.split("&"):
            name, value = pair.split("=")
            if name == "q":
                continue
            # Shown as chosen in the form, and kept by the page's live update.
            assert re.search(rf'<option value="{value}" selected>', found), pair
        hx = unescape(re.search(r'hx-get="([^"]+)"', found).group(1))  # type: ignore[union-attr]
        assert hx == f"/tickets?{query}&sort=-age", "live updates keep every filter"
        assert '<input type="hidden" name="sort" value="-age">' in found
    counted = await desk.page("/tickets?kind=site")
    link = re.search(r'<a href="([^"]+)"><span class="urgency urgency-held">', counted)
    assert link is not None and unescape(link.group(1)) == "/tickets?kind=site&urgency=held"
    assert '<b data-metric="urgency-held">1</b>' in counted
    assert '<b data-metric="urgency-waiting">1</b>' in counted
    by_site = rows(await desk.page("/tickets?sort=site"))
    assert by_site[0] == ids["held"], "Gdańsk before Kraków"
    assert rows(await desk.page("/tickets?sort=-site"))[-1] == ids["held"]
    opened = rows(await desk.page("/tickets?sort=opened"))
    assert opened[0] == ids["held"] and opened[-1] == ids["camera"], "newest first"
    assert rows(await desk.page("/tickets?sort=age")) == opened[::-1], "oldest first"
    refused = await desk.page("/tickets?status=lost&sort=size")
    assert "status: status must be one of" in refused and len(rows(refused)) == 4
    polish = await desk.page("/tickets?kind=site", language="pl")
    assert "Otwarte zgłoszenia" in polish and "Wiek" in polish and "cała lokalizacja" in polish


async def test_a_ticket_offers_only_its_next_steps_and_the_api_refuses_the_rest(
    desk: Desk,
) -> None:
    """A sent ticket offers acknowledge, accept and close, never a send or a replacement
    step; once accepted, only a unit's fault offers the replacement; the API refuses what
    the page does not offer; a held ticket offers only closing; a viewer sees none."""
    ids = desk.ids
    for name in ("camera", "help", "outage"):
        page = await desk.page(f"/tickets/{ids[name]}")
        assert actions(page) == ["ack", "accept", "close"], name
        # The site by its name; the id stays in the heading, for typing in commands.
        assert "<dt>Site</dt><dd>Kraków" in page and f"<h1>{ids[name]}:" in page
        # What went to the desk, in words.
        assert "the ticket · webhook · <b>sent</b>" in page
        status, answer = await desk.api("POST", f"/api/v1/tickets/{ids[name]}/send")
        assert status == 409 and "already sent" in answer["error"]["message"]
        status, answer = await desk.api("POST", f"/api/v1/tickets/{ids[name]}/shipped")
        assert status == 409, answer
        status, answer = await desk.api("POST", f"/api/v1/tickets/{ids[name]}/accept")
        assert status == 200 and answer["status"] == "accepted"
    camera = await desk.page(f"/tickets/{ids['camera']}")
    assert actions(camera) == ["shipped", "received", "close"]
    for name, what in (("help", "a support request"), ("outage", "a site-wide fault")):
        page = await desk.page(f"/tickets/{ids[name]}")
        assert actions(page) == ["close"], name
        status, answer = await desk.api("POST", f"/api/v1/tickets/{ids[name]}/shipped")
        assert (
            status == 409
            and f"is {what}: there is no unit to replace" in (answer["error"]["message"])
        )
    status, answer = await desk.api("POST", f"/api/v1/tickets/{ids['camera']}/returned")
    assert status == 409 and "only once replacement_received" in answer["error"]["message"]
    held = await desk.page(f"/tickets/{ids['held']}")
    assert actions(held) == ["close"]
    viewer, _ = await desk.controller.core.access.create_token(Role.VIEWER, "wall")
    assert actions(await desk.page(f"/tickets/{ids['camera']}", token=viewer)) == []
