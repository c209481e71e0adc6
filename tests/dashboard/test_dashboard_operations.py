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
        await lab.admin("PATCH", "/api/v1/sites/krk", json={"name": "Kraków"})
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


async def test_a_unit_put_into_maintenance_on_its_page_says_so_there_and_on_its_tile(
    lab: Lab, admin: Browser
) -> None:
    """X2 into maintenance from its page until 18:00 Warsaw time: its page lists the window
    with its reason, its room tile on the overview says until when (site time, both
    languages), the API's overview marks it; ended from the page, it is gone from both."""
    form = {"from": "", "until": "2025-11-24T18:00", "reason": "New ceiling microphones"}
    status, location, page = await admin.post("/devices/X2/maintenance", form)
    assert (status, location) == (303, "/devices/X2#maintenance"), text_of(page)
    _, page = await admin.get("/devices/X2")
    words = text_of(page)
    assert "New ceiling microphones" in words and "2025-11-24 18:00 +01:00" in words
    assert "this unit" in words and "in force" in words
    window = re.search(r'data-maintenance="(MW-[0-9A-F]+)"', page)
    assert window is not None
    for language, said in (("en", "under maintenance until"), ("pl", "w konserwacji do")):
        _, page = await admin.get("/", language=language)
        assert f"X2: {said} 2025-11-24 18:00 +01:00" in text_of(page), language
    overview = await lab.admin("GET", "/api/v1/overview")
    marks = [w for site in overview["sites"] for room in site["rooms"] for w in room["maintenance"]]
    assert [(w["target"], w["reason"]) for w in marks] == [("X2", "New ceiling microphones")]
    status, location, _ = await admin.post(f"/maintenance/{window.group(1)}/end", {"serial": "X2"})
    assert (status, location) == (303, "/devices/X2#maintenance")
    _, page = await admin.get("/devices/X2")
    assert "No maintenance in force or planned." in text_of(page)
    _, page = await admin.get("/")
    assert "under maintenance" not in text_of(page)


async def test_a_site_in_maintenance_says_so_on_its_tiles_and_on_its_units_pages(
    lab: Lab, admin: Browser
) -> None:
    """A window on all of krk (made through the API): the site's heading on the overview
    and the kiosk, and X1's page, which names the site, say until when; then it is ended."""
    body = {
        "site": "krk",
        "from": "2025-11-24T09:00:00+00:00",
        "until": "2025-11-25T16:00:00+00:00",
        "reason": "Network change",
    }
    window = await lab.admin("POST", "/api/v1/maintenance", json=body)
    try:
        for path in ("/", "/kiosk"):
            _, page = await admin.get(path)
            assert "under maintenance until 2025-11-25 17:00 +01:00" in text_of(page), path
        _, page = await admin.get("/devices/X1")
        words = text_of(page)
        assert "the whole site Kraków" in words and "Network change" in words
        assert 'action="/maintenance/' not in page  # a site's window is not ended from a unit
    finally:
        await lab.admin("DELETE", f"/api/v1/maintenance/{window['id']}")


async def test_a_room_in_maintenance_says_so_on_its_tile(lab: Lab, admin: Browser) -> None:
    """A window on X1's room, named SITE/ROOM: that room's tile says until when, and X1's
    page lists it as the room's."""
    await lab.admin("PATCH", "/api/v1/devices/X1", json={"room": "Sala Wawel"})
    body = {
        "room": "krk/Sala Wawel",
        "from": "2025-11-24T09:00:00+00:00",
        "until": "2025-11-24T12:30:00+00:00",
        "reason": "Refurbished",
    }
    window = await lab.admin("POST", "/api/v1/maintenance", json=body)
    try:
        _, page = await admin.get("/")
        tile = re.search(r'<li class="tile[^"]*">(?:(?!</li>).)*Sala Wawel.*?</li>', page, re.S)
        assert tile is not None
        assert "under maintenance until 2025-11-24 13:30 +01:00" in text_of(tile.group(0))
        _, page = await admin.get("/devices/X1")
        assert "room Sala Wawel" in text_of(page) and "Refurbished" in text_of(page)
    finally:
        await lab.admin("DELETE", f"/api/v1/maintenance/{window['id']}")


async def test_maintenance_the_contract_refuses_is_said_on_the_form_in_site_time(
    lab: Lab, admin: Browser
) -> None:
    """An end before the start, and a window overlapping one of the unit's, come back on
    the form with the times typed kept and the other window's bounds in site time."""
    form = {"from": "2025-11-24T15:00", "until": "2025-11-24T12:00", "reason": "Cabling"}
    for language, said in (
        ("en", "The end must come after the start."),
        ("pl", "Koniec musi być później niż początek."),
    ):
        status, _, page = await admin.post("/devices/X2/maintenance", form, language=language)
        assert status == 422 and said in text_of(page), text_of(page)
        assert 'value="2025-11-24T15:00"' in page
    first = {"from": "2025-11-24T12:00", "until": "2025-11-24T14:00", "reason": "Cabling"}
    status, _, _ = await admin.post("/devices/X2/maintenance", first)
    assert status == 303
    second = {"from": "2025-11-24T13:00", "until": "2025-11-24T15:00", "reason": "Paint"}
    status, _, page = await admin.post("/devices/X2/maintenance", second)
    words = text_of(page)
    assert status == 409, words
    assert (
        "It is already in maintenance from 2025-11-24 12:00 +01:00 until "
        "2025-11-24 14:00 +01:00 (Cabling)" in words
    )
    listed = await lab.admin("GET", "/api/v1/maintenance")
    for window in listed["maintenance"]:
        if window["state"] != "over":
            await lab.admin("DELETE", f"/api/v1/maintenance/{window['id']}")


async def test_an_unpolled_poly_product_is_listed_not_monitored_by_the_api_and_the_cli(
    lab: Lab,
) -> None:
    """The Trio from the registry is a row of GET /api/v1/devices (monitoring and health
    not_monitored, its model as printed) that site, room and search filters keep and the
    polled-only filters drop; a monitoring value it does not know is refused by name."""
    listed = await lab.admin("GET", "/api/v1/devices")
    rows = {row["serial"]: row for row in listed["devices"]}
    assert rows["TRIO1"]["monitoring"] == "not_monitored"
    assert rows["TRIO1"]["health"] == {"state": "not_monitored", "problems": []}
    assert rows["TRIO1"]["model"] == "Poly Trio C60" and rows["TRIO1"]["site"] == "krk"
    assert rows["X1"]["monitoring"] == "polled" and "E1" not in rows
    for params, holds in (
        ({"monitoring": "not_monitored"}, ["TRIO1"]),
        ({"site": "krk", "room": "Sala Wawel", "q": "trio"}, ["TRIO1"]),
        ({"monitoring": "polled"}, ["X1", "X2"]),
        ({"health": "ok"}, ["X1", "X2"]),
        ({"model": "studio_x50", "monitoring": "not_monitored"}, []),
    ):
        found = await lab.admin("GET", "/api/v1/devices", params=params)
        assert [row["serial"] for row in found["devices"]] == holds, params
    async with lab.http.get(
        lab.controller.url + "/api/v1/devices",
        params={"monitoring": "unpolled"},
        headers=lab.controller.admin_headers,
    ) as response:
        refused = await response.json()
    assert response.status == 400 and refused["error"]["field"] == "monitoring"


async def test_an_unpolled_poly_product_has_its_page_with_entitlement_expiry_and_tickets(
    admin: Browser, viewer: Browser
) -> None:
    """The device table shows the Trio as not monitored (its filter in both languages); its
    page gives its plan, contract and when it ends, and a support ticket opened there
    lands on the ticket and is then listed on the page."""
    status, page = await admin.get("/devices?monitoring=not_monitored")
    assert status == 200 and 'data-serial="TRIO1"' in page and 'data-serial="X1"' not in page
    assert "not monitored" in text_of(page)
    _, page = await admin.get("/devices?monitoring=not_monitored", language="pl")
    assert "niemonitorowane" in text_of(page)
    status, page = await admin.get("/devices/TRIO1")
    words = text_of(page)
    assert status == 200, words
    assert "Poly Trio C60 TRIO1 not monitored" in words
    assert "Partner POLY+" in words and "PPP-T1" in words
    assert "2026-01-09 (in 46 days): contract ends, Partner POLY+ PPP-T1" in words
    assert 'action="/tickets/new"' in page
    _, page = await viewer.get("/devices/TRIO1")
    assert 'action="/tickets/new"' not in page and "Partner POLY+" in page
    form = {"serial": "TRIO1", "category": "support", "summary": "Echo on calls"}
    status, location, _ = await admin.post("/tickets/new", form)
    assert status == 303 and location.startswith("/tickets/PF-")
    _, page = await admin.get("/devices/TRIO1")
    assert f'href="{location}"' in page and "Echo on calls" in text_of(page)
    _, page = await admin.get("/devices/TRIO1", language="pl")
    assert "niemonitorowane" in text_of(page) and "Agenci nie odpytują" in text_of(page)


async def test_viewers_see_maintenance_but_cannot_add_or_end_it(
    lab: Lab, admin: Browser, viewer: Browser
) -> None:
    """A viewer reads X2's window on its page, with no form and no end button; the posts
    an admin would make are refused in words and change nothing."""
    body = {
        "serial": "X2",
        "from": "2025-11-24T09:00:00+00:00",
        "until": "2025-11-24T20:00:00+00:00",
        "reason": "Firmware tests",
    }
    window = await lab.admin("POST", "/api/v1/maintenance", json=body)
    try:
        _, page = await viewer.get("/devices/X2")
        assert "Firmware tests" in text_of(page)
        assert 'id="maintenance-form"' not in page and "/end" not in page
        _, page = await admin.get("/devices/X2")
        assert 'id="maintenance-form"' in page and f"/maintenance/{window['id']}/end" in page
        form = {"until": "2025-11-24T21:00", "reason": "More tests"}
        for path, sent in (
            ("/devices/X2/maintenance", form),
            (f"/maintenance/{window['id']}/end", {"serial": "X2"}),
        ):
            status, _, page = await viewer.post(path, sent)
            assert status == 403 and "Viewers can look" in text_of(page), path
        listed = await lab.admin("GET", "/api/v1/maintenance")
        mine = [w for w in listed["maintenance"] if w["target"] == "X2" and w["state"] != "over"]
        assert [w["id"] for w in mine] == [window["id"]]
    finally:
        await lab.admin("DELETE", f"/api/v1/maintenance/{window['id']}")


async def test_refusals_of_the_ticket_and_maintenance_forms_are_polish_on_polish_pages(
    lab: Lab, admin: Browser
) -> None:
    """The text checks' refusals, an unknown serial or site and ending a window already
    over are said in Polish on a Polish page, with no English sentence left."""
    ticket = {"category": "support", "summary": "Echo", "description": "", "contact": ""}
    cases = [
        (
            "/tickets/new",
            {**ticket, "serial": "X1", "summary": "Echo\x1b[2J"},
            "temat: zawiera niewidoczny znak U+001B",
            "use printable text",
        ),
        ("/tickets/new", {**ticket, "serial": "X1", "summary": " "}, "temat: jest puste", "empty"),
        (
            "/tickets/new",
            {**ticket, "serial": "X1", "description": "ok\nzły\u202e"},
            "opis: wiersz 2 zawiera niewidoczny znak U+202E",
            "line 2 contains",
        ),
        ("/tickets/new", {**ticket, "serial": "NOPE1"}, "nie ma urządzenia 'NOPE1'", "no unit"),
        ("/tickets/new", {**ticket, "site": "nowhere"}, "nie ma lokalizacji 'nowhere'", "no site"),
        (
            "/devices/X2/maintenance",
            {"from": "", "until": "2099-01-01T10:00", "reason": "x" * 2001},
            "powód: ma 2001 znaków; najwyżej 200",
            "characters long",
        ),
    ]
    for path, form, polish, english in cases:
        status, _, page = await admin.post(path, form, language="pl")
        words = text_of(page)
        assert status >= 400 and polish in words, (path, form, words[300:1500])
        assert english not in words, (path, form, words[:2000])
    added = await lab.admin(
        "POST",
        "/api/v1/maintenance",
        json={
            "serial": "X2",
            "from": "2099-01-01T10:00:00+01:00",
            "until": "2099-01-01T12:00:00+01:00",
            "reason": "Cabling",
        },
    )
    await lab.admin("DELETE", f"/api/v1/maintenance/{added['id']}")
    status, _, page = await admin.post(
        f"/maintenance/{added['id']}/end", {"serial": "X2"}, language="pl"
    )
    words = text_of(page)
    assert status == 409 and f"konserwacja {added['id']} już się zakończyła" in words, words
    assert "already over" not in words
