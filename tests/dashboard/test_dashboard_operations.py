"""Operating the rooms from the dashboard: tickets opened by hand, maintenance, unpolled assets."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from testkit.clocks import SettableClock
from tickets.test_live import REGISTRY, T0, Lab, start_lab

from dashboard.dashboard_testkit import SESSION_COOKIE, form_field, http_sign_in
from polyfleet.controller.services.access import Role

#: The lab's registry and a Trio conference phone: a Poly product the agents do not poll.
OPERATIONS_REGISTRY = (
    REGISTRY
    + "TRIO1,Poly Trio C60,2025-01-05,partner_poly_plus,PPP-T1,2025-01-10,2026-01-09,"
    + "krk,Sala Wawel,\n"
)


pytestmark = pytest.mark.asyncio(loop_scope="module")


class Browser:
    """A signed-in browser as plain HTTP: pages by path, forms posted with the page's token."""

    def __init__(self, http: aiohttp.ClientSession, url: str, cookie: str) -> None:
        self.http, self.url, self.cookie = http, url, cookie

    async def get(self, path: str, language: str = "en") -> tuple[int, str]:
        async with self.http.get(
            self.url + path,
            headers={"Accept-Language": language},
            cookies={SESSION_COOKIE: self.cookie},
        ) as response:
            return response.status, await response.text()

    async def post(
        self, path: str, form: dict[str, str], *, language: str = "en", csrf: str | None = None
    ) -> tuple[int, str, str]:
        """(status, where it redirects, page); the form's CSRF token read from the overview."""
        if csrf is None:
            _, page = await self.get("/")
            csrf = form_field(page, "csrf")
        async with self.http.post(
            self.url + path,
            data={**form, "csrf": csrf},
            headers={"Accept-Language": language, "Origin": self.url},
            cookies={SESSION_COOKIE: self.cookie},
            allow_redirects=False,
        ) as response:
            return response.status, response.headers.get("Location", ""), await response.text()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """A controller whose site krk has X1 (HEZO+) and X2 (POLY+) reporting, and a Trio."""
    folder = tmp_path_factory.mktemp("operations")
    clock = SettableClock(T0)
    async with start_lab(folder, clock, None, None, registry=OPERATIONS_REGISTRY) as lab:
        await lab.controller.ensure_site("krk")
        await lab.report_minutes(("X1", "X2"), range(0, 1))
        yield lab


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(lab: Lab) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession() as http:
        cookie = await http_sign_in(http, lab.controller.url, lab.controller.admin_token)
        yield Browser(http, lab.controller.url, cookie)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def viewer(lab: Lab) -> AsyncIterator[Browser]:
    token, _ = await lab.controller.core.access.create_token(Role.VIEWER, "wall")
    async with aiohttp.ClientSession() as http:
        cookie = await http_sign_in(http, lab.controller.url, token)
        yield Browser(http, lab.controller.url, cookie)


def text_of(page: str) -> str:
    """A page's words, tags dropped and spaces folded."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


async def test_admins_see_the_ticket_form_on_device_and_site_pages_viewers_do_not(
    admin: Browser, viewer: Browser
) -> None:
    """The device page and Agents and sites carry the ticket form for an admin only; a
    viewer's post is refused in words and opens nothing."""
    for path in ("/devices/X1", "/agents"):
        status, page = await admin.get(path)
        assert status == 200 and 'action="/tickets/new"' in page, path
        status, page = await viewer.get(path)
        assert status == 200 and 'action="/tickets/new"' not in page, path
    form = {"serial": "X1", "category": "fault", "summary": "Cracked screen"}
    status, _, page = await viewer.post("/tickets/new", form)
    assert status == 403 and "Viewers can look but not change anything." in text_of(page)


async def test_a_service_the_plan_lacks_is_refused_on_the_page_naming_plan_and_need(
    lab: Lab, admin: Browser
) -> None:
    """Configuration help for the POLY+ unit comes back on the form, in English and in
    Polish, naming POLY+ and the plan that includes it; the text typed stays; no ticket."""
    form = {
        "serial": "X2",
        "category": "configuration",
        "summary": "Zoom Rooms settings",
        "description": "Two lines\nof detail",
    }
    before = len(lab.service.tickets())
    status, _, page = await admin.post("/tickets/new", form)
    words = text_of(page)
    assert status == 422, words
    assert "This unit is covered by POLY+, which does not include help with configuration." in words
    assert "Plans that include help with configuration: HEZO+." in words
    assert 'value="Zoom Rooms settings"' in page and "Two lines\nof detail</textarea>" in page
    status, _, page = await admin.post("/tickets/new", form, language="pl")
    words = text_of(page)
    assert status == 422
    assert (
        "To urządzenie jest objęte planem POLY+, który nie obejmuje usługi "
        "„pomoc w konfiguracji”." in words
    )
    assert "Plany obejmujące usługę „pomoc w konfiguracji”: HEZO+." in words
    assert len(lab.service.tickets()) == before


async def test_a_ticket_opened_on_the_device_page_leads_to_its_page_and_is_audited(
    lab: Lab, admin: Browser
) -> None:
    """Support for the HEZO+ unit from its page: the browser lands on the new ticket, which
    the device page then lists; the audit log says it came through the dashboard."""
    form = {
        "serial": "X1",
        "category": "support",
        "summary": "Teams sign-in loops",
        "description": "",
        "contact": "Jan Kowalski",
    }
    status, location, _ = await admin.post("/tickets/new", form)
    assert status == 303 and location.startswith("/tickets/PF-"), (status, location)
    ticket_id = location.rsplit("/", 1)[1]
    status, page = await admin.get(location)
    assert status == 200 and "Teams sign-in loops" in page
    _, page = await admin.get("/devices/X1")
    assert f'href="/tickets/{ticket_id}"' in page
    audit = await lab.admin("GET", "/api/v1/audit", params={"action": "ticket.open"})
    entry = next(e for e in audit["entries"] if e["target"] == f"ticket:{ticket_id}")
    assert entry["details"]["via"] == "dashboard" and entry["details"]["category"] == "support"


async def test_a_site_wide_fault_is_opened_from_agents_and_sites(admin: Browser) -> None:
    """A switch down at krk, from the Agents and sites form: the new ticket's page names
    the site by its name; a post without the page's token opens nothing."""
    form = {"site": "krk", "category": "fault", "summary": "Switch in the rack is down"}
    status, _, page = await admin.post("/tickets/new", form, csrf="forged")
    assert status == 403, page
    status, location, _ = await admin.post("/tickets/new", form)
    assert status == 303 and location.startswith("/tickets/PF-")
    status, page = await admin.get(location)
    assert status == 200 and "Switch in the rack is down" in page
