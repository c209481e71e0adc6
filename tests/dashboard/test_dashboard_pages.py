"""The dashboard in a real browser against a controller fed by the lab and two agents."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.async_api import Page, expect
from testkit.crawl import crawl

from dashboard.dashboard_testkit import (
    E70,
    G7500,
    SESSION_COOKIE,
    X30,
    X50_FAULT,
    X70,
    World,
    http_sign_in,
    metric,
    png_size,
    screenshot,
    sign_in,
)
from polyfleet.cli import installed_version
from polyfleet.shared.schema import PROTOCOL_VERSION

# One world (lab, agents, controller, browser) for the whole module, on one test worker.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("dashboard")]


async def test_signing_in_with_an_api_token_opens_the_overview(world: World) -> None:
    """A browser sent to / signs in with an admin token and lands on the overview."""
    page = await world.new_page()
    await page.goto(world.url + "/")
    assert urlsplit(page.url).path == "/signin"
    await screenshot(page, "signin")
    await sign_in(page, world.url, world.controller.admin_token)
    assert urlsplit(page.url).path == "/"
    assert await page.locator("h1").inner_text() == "Overview"
    await screenshot(page, "overview")
    await page.context.close()


async def test_overview_numbers_equal_the_apis(world: World) -> None:
    """Every count on the overview is the one the devices, tickets and forecast APIs give, and
    "up to date" names the release it is measured against."""
    page = await world.new_page(token=world.controller.admin_token)
    devices = (await world.api("/api/v1/devices"))["devices"]
    health = Counter(device["health"]["state"] for device in devices)
    assert await metric(page, "devices") == len(devices)
    for state in ("fault", "degraded", "unreachable", "ok"):
        assert await metric(page, f"health-{state}") == health[state], state
    for site in ("krk", "waw"):
        at_site = [d for d in devices if d["site"] == site]
        assert await metric(page, f"site-{site}-devices") == len(at_site)
        site_health = Counter(d["health"]["state"] for d in at_site)
        for state in ("fault", "degraded", "unreachable", "ok"):
            assert await metric(page, f"site-{site}-{state}") == site_health[state], (site, state)
    tickets = (await world.api("/api/v1/tickets"))["tickets"]
    active = [t for t in tickets if t["status"] != "closed"]
    assert await metric(page, "tickets-active") == len(active) >= 1
    for days in (30, 60, 90, 180):
        forecast = await world.api("/api/v1/entitlement/forecast", days=str(days))
        events = sum(len(site["events"]) for site in forecast["sites"])
        assert await metric(page, f"expiring-{days}-total") == events, days
    overview = await world.api("/api/v1/overview")
    assert overview["health"] == {state: health[state] for state in overview["health"]}
    assert await metric(page, "firmware-current") == overview["firmware"]["totals"]["current"]
    newest = overview["firmware"]["newest"]
    assert newest, "the catalogue of the world has releases"
    pill = page.locator("[data-metric='firmware-current']").locator("..")
    assert f"up to date (on {newest} or newer)" in await pill.inner_text()
    await page.context.close()


async def test_devices_filtered_by_site_and_health_keep_the_view_in_the_address(
    world: World,
) -> None:
    """Filtering by site and health puts both in the URL; opening that URL shows the same."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/devices")
    await page.select_option("select[name=site]", "krk")
    await page.select_option("select[name=health]", "fault")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_load_state()
    query = parse_qs(urlsplit(page.url).query)
    assert query["site"] == ["krk"] and query["health"] == ["fault"]
    expected = (await world.api("/api/v1/devices", site="krk", health="fault"))["devices"]
    shown = await page.locator("#devices tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.serial)"
    )
    assert shown == [device["serial"] for device in expected]
    assert X50_FAULT in shown
    await screenshot(page, "devices-filtered")
    bookmarked = page.url
    again = await world.new_page(token=world.controller.admin_token)
    await again.goto(bookmarked)
    assert await again.locator("select[name=site]").input_value() == "krk"
    assert await again.locator("select[name=health]").input_value() == "fault"
    assert (
        await again.locator("#devices tbody tr").evaluate_all(
            "rows => rows.map(row => row.dataset.serial)"
        )
        == shown
    )
    await again.context.close()
    await page.goto(world.url + "/devices")
    await page.click("#devices thead >> text=Firmware")
    assert parse_qs(urlsplit(page.url).query)["sort"] == ["firmware"]
    await page.click("#devices thead >> text=Firmware")
    assert parse_qs(urlsplit(page.url).query)["sort"] == ["-firmware"]
    await screenshot(page, "devices")
    await page.context.close()


async def test_device_page_links_an_e70_and_its_host_both_ways(world: World) -> None:
    """The G7500's page links its E70 camera; the camera's page links back to the G7500."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(f"{world.url}/devices/{G7500}")
    await screenshot(page, "device-g7500")
    await page.click(f"#cameras a:has-text('{E70}')")
    await page.wait_for_load_state()
    assert urlsplit(page.url).path == f"/devices/{E70}"
    assert G7500 in await page.locator("#host-link").inner_text()
    await screenshot(page, "device-e70")
    await page.click(f"#host-link a:has-text('{G7500}')")
    assert urlsplit(page.url).path == f"/devices/{G7500}"
    verdict = await page.locator("#verdict").inner_text()
    assert "Partner POLY+" in verdict and "PPP-WEB-1" in verdict
    await page.context.close()


async def test_csv_export_holds_the_filtered_rows_in_their_order(world: World) -> None:
    """The CSV export of a view has exactly the API's devices for the same filters and sort."""
    async with aiohttp.ClientSession() as http:
        cookie = await http_sign_in(http, world.url, world.controller.admin_token)
        async with http.get(
            world.url + "/devices.csv",
            params={"site": "krk", "sort": "-serial", "page": "1", "per_page": "1"},
            cookies={SESSION_COOKIE: cookie},
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in response.headers["Content-Disposition"]
            rows = list(csv.DictReader(io.StringIO(await response.text())))
    expected = (await world.api("/api/v1/devices", site="krk", sort="-serial"))["devices"]
    assert [row["serial"] for row in rows] == [device["serial"] for device in expected]
    assert len(rows) > 1  # every page of the view, not only the first
    g7500 = next(row for row in rows if row["serial"] == G7500)
    assert g7500["room"] == "Wawel" and "contract_expiring_180" in g7500["entitlement_flags"]


async def _x50_ticket(world: World) -> dict[str, Any]:
    tickets = (await world.api("/api/v1/tickets"))["tickets"]
    found: dict[str, Any] = next(t for t in tickets if t["serial"] == X50_FAULT)
    return found


async def test_an_admin_acts_on_a_ticket_and_sees_its_sla_clock_change(world: World) -> None:
    """Acknowledging stops the reaction clock; accepting starts the delivery clock, due when
    the API says."""
    ticket = await _x50_ticket(world)
    assert ticket["status"] == "sent"
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/tickets")
    await screenshot(page, "tickets")
    await page.click(f"tr[data-ticket='{ticket['id']}'] a:has-text('{ticket['id']}')")
    await page.wait_for_load_state()
    assert "reaction" in await page.locator("#running-clock").inner_text()
    facts = await page.locator("section[aria-labelledby='h-facts']").inner_text()
    contacts = ticket["contacts"]
    assert contacts is not None and contacts["escalation_email"] in facts, "as the API says"
    await screenshot(page, "ticket-sent")
    await page.click("button[data-action='ack']")
    await page.wait_for_load_state()
    assert await page.locator("#ticket-status").inner_text() == "acknowledged"
    assert await page.locator("#running-clock").count() == 0
    await page.click("button[data-action='accept']")
    await page.wait_for_load_state()
    assert await page.locator("#ticket-status").inner_text() == "accepted"
    assert "delivery" in await page.locator("#running-clock").inner_text()
    ticket = await _x50_ticket(world)
    assert ticket["status"] == "accepted"
    shown = await page.locator("tr[data-clock='delivery'] time").first.get_attribute("datetime")
    assert shown is not None and ticket["sla"]["delivery_due"] is not None
    assert datetime.fromisoformat(shown) == datetime.fromisoformat(ticket["sla"]["delivery_due"])
    await screenshot(page, "ticket-accepted")
    entries = (await world.api("/api/v1/audit", target=f"ticket:{ticket['id']}"))["entries"]
    done = {entry["action"]: entry for entry in entries}
    assert {"ticket.ack", "ticket.accept"} <= set(done)
    assert done["ticket.accept"]["actor"]["name"] == "test admin"
    assert done["ticket.accept"]["details"]["via"] == "dashboard"
    signins = (await world.api("/api/v1/audit", action="session.signin"))["entries"]
    assert signins and all(world.controller.admin_token not in str(e) for e in signins)
    await page.context.close()


async def test_a_viewer_sees_no_action_and_a_forged_one_is_refused(world: World) -> None:
    """A viewer's ticket page has no buttons; a POST forged with its own CSRF token gets 403."""
    ticket = await _x50_ticket(world)
    page = await world.new_page(token=world.viewer_token)
    await page.goto(f"{world.url}/tickets/{ticket['id']}")
    assert await page.locator("#ticket-actions").count() == 0
    assert await page.locator("#ticket-fill").count() == 0
    csrf = await page.locator("form[action='/signout'] input[name=csrf]").input_value()
    answer = await page.request.post(
        f"{world.url}/tickets/{ticket['id']}/action",
        form={"csrf": csrf, "action": "close", "confirmed": "1"},
        max_redirects=0,
    )
    assert answer.status == 403
    assert "Viewers can look but not change anything." in await answer.text()
    assert (await _x50_ticket(world))["status"] == ticket["status"]
    await screenshot(page, "ticket-viewer")
    await page.context.close()


async def test_the_tickets_page_keeps_its_search_and_filters_and_sorts_by_age(
    world: World,
) -> None:
    """Searching a serial and choosing a kind puts both in the address and keeps them in the
    form across a live update; the Age heading then sorts, keeping them."""
    tickets = (await world.api("/api/v1/tickets"))["tickets"]
    expected = {
        t["id"]
        for t in tickets
        if t["serial"] == X50_FAULT and t["kind"] == "device" and t["status"] != "closed"
    }
    assert expected
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/tickets")
    await page.fill("#ticket-filters input[name=q]", X50_FAULT)
    await page.select_option("#ticket-filters select[name=kind]", "device")
    await page.click("#ticket-filters button[type=submit]")
    await page.wait_for_load_state()
    query = parse_qs(urlsplit(page.url).query)
    assert query["q"] == [X50_FAULT] and query["kind"] == ["device"]
    rows = page.locator("#tickets tbody tr")
    assert set(await rows.evaluate_all("rows => rows.map(row => row.dataset.ticket)")) == expected
    await page.evaluate("document.getElementById('live').dataset.old = 'yes'")
    await expect(page.locator("#live[data-old]")).to_have_count(0, timeout=20_000)
    assert await page.locator("#ticket-filters input[name=q]").input_value() == X50_FAULT
    assert await page.locator("#ticket-filters select[name=kind]").input_value() == "device"
    await page.click("#tickets thead >> text=Age")
    await page.wait_for_load_state()
    query = parse_qs(urlsplit(page.url).query)
    assert query["sort"] == ["age"] and query["kind"] == ["device"] and query["q"] == [X50_FAULT]
    assert await page.locator("#tickets tbody tr [data-age]").count() == len(expected)
    # An id is never broken at its hyphens: one line box each.
    lines = await page.locator("#tickets a.ticket-id").evaluate_all(
        "links => links.map(link => link.getClientRects().length)"
    )
    assert lines == [1] * len(expected)
    await screenshot(page, "tickets-filtered")
    await page.context.close()


async def test_an_admin_plans_starts_and_pauses_a_rollout(world: World) -> None:
    """Plan from the form (previewed, confirmed), start it, then pause it without JavaScript:
    the server asks for the confirmation itself."""
    page = await world.new_page(token=world.controller.admin_token)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(world.url + "/rollouts")
    await page.select_option("select[name=target]", "4.2.2-408037")
    await page.fill("input[name=name]", "Spring 4.2.2")
    await page.click("#plan-form button[value=preview]")
    await page.wait_for_load_state()
    assert await page.locator("#plan-preview").count() == 1
    await screenshot(page, "rollout-preview")
    await page.click("#plan-form button[value=create]")
    await page.wait_for_load_state()
    rollout_id = urlsplit(page.url).path.rsplit("/", 1)[-1]
    assert rollout_id.startswith("r_")
    stored = await world.api(f"/api/v1/rollouts/{rollout_id}")
    assert stored["status"] == "planned" and stored["name"] == "Spring 4.2.2"
    criteria = page.locator("#abort-criteria li")
    shown = await criteria.evaluate_all("items => items.map(item => item.dataset.criterion)")
    assert shown == ["canary:0%", "later:10%"], "the defaults, with the form's max failures"
    await page.click("button[data-action='start']")
    await page.wait_for_load_state()
    refusal = await page.locator("#rollout-error").inner_text()
    assert "no firmware package for 4.2.2-408037" in refusal, "refused in words, as the API"
    assert (await world.api(f"/api/v1/rollouts/{rollout_id}"))["status"] == "planned"
    async with (
        aiohttp.ClientSession(headers=world.controller.admin_headers) as http,
        http.put(
            world.url + "/api/v1/releases/4.2.2-408037/package",
            data=b"firmware" * 4096,
            headers={"Content-Type": "application/octet-stream"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
    await page.click("button[data-action='start']")
    await page.wait_for_load_state()
    assert "running" in await page.locator("#rollout-status").inner_text()
    assert (await world.api(f"/api/v1/rollouts/{rollout_id}"))["status"] == "running"
    await screenshot(page, "rollout-running")
    plain = await world.new_page(token=world.controller.admin_token, javascript=False)
    await plain.goto(f"{world.url}/rollouts/{rollout_id}")
    await plain.click("button[data-action='pause']")
    await plain.wait_for_load_state()
    assert await plain.locator("#confirm-action").count() == 1
    assert (await world.api(f"/api/v1/rollouts/{rollout_id}"))["status"] == "running"
    await plain.click("#confirm-action button[type=submit]")
    await plain.wait_for_load_state()
    assert "paused" in await plain.locator("#rollout-status").inner_text()
    assert (await world.api(f"/api/v1/rollouts/{rollout_id}"))["status"] == "paused"
    await screenshot(plain, "rollout-paused")
    await plain.goto(f"{world.url}/devices/{G7500}")
    history = await plain.locator(f"#device-rollouts tr[data-rollout='{rollout_id}']").inner_text()
    assert "Spring 4.2.2" in history and "4.2.2-408037" in history
    await plain.context.close()
    await page.context.close()


async def test_a_rollout_name_with_a_control_character_is_refused_on_the_form(
    world: World,
) -> None:
    """The plan form sent with an escape sequence in the name comes back 422, the character
    described in words beside the form that keeps what was typed; nothing is stored."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/rollouts")
    csrf = await page.locator("#plan-form input[name=csrf]").input_value()
    before = (await world.api("/api/v1/rollouts"))["rollouts"]
    answer = await page.request.post(
        f"{world.url}/rollouts",
        form={
            "csrf": csrf,
            "target": "4.2.2-408037",
            "name": "Night\x1b[31m",
            "step": "create",
            "confirmed": "1",
        },
        max_redirects=0,
    )
    assert answer.status == 422
    await page.set_content(await answer.text())
    refusal = await page.locator("#plan-error").inner_text()
    assert refusal == (
        "name: contains the invisible character U+001B at character 6; use printable text"
    )
    assert await page.locator("#plan-form input[name=name]").input_value() == "Night\x1b[31m"
    assert (await world.api("/api/v1/rollouts"))["rollouts"] == before
    await page.context.close()


async def test_a_rollout_page_shows_its_abort_criteria(world: World) -> None:
    """The criteria a plan was stored with are listed on its page in words."""
    criteria = [
        {"waves": "canary", "threshold_percent": 0},
        {"waves": "later", "failure_type": "checksum_mismatch", "threshold_percent": 5,
         "min_executed": 20},
    ]  # fmt: skip
    body = {"target": "4.2.2-408037", "name": "Careful", "abort_criteria": criteria}
    async with (
        aiohttp.ClientSession(headers=world.controller.admin_headers) as http,
        http.post(world.url + "/api/v1/rollouts", json=body) as response,
    ):
        assert response.status == 201, await response.text()
        rollout_id = (await response.json())["id"]
    page = await world.new_page(token=world.viewer_token)
    await page.goto(f"{world.url}/rollouts/{rollout_id}")
    items = page.locator("#abort-criteria li")
    assert await items.evaluate_all("items => items.map(item => item.dataset.criterion)") == [
        "canary:0%",
        "later:5%:min=20:type=checksum_mismatch",
    ]
    assert await items.all_inner_texts() == [
        "the canary wave: more than 0% of its devices fail",
        "each later wave: more than 5% of its devices fail because the package's checksum did "
        "not match, "
        "once 20 of them have run",
    ]
    await page.context.close()


async def submit_registry(page: Page, text: str, *, dry_run: bool) -> None:
    """Send ``text`` as registry.csv through the entitlement page's import form."""
    await page.set_input_files(
        "input[name=registry]",
        files=[{"name": "registry.csv", "mimeType": "text/csv", "buffer": text.encode()}],
    )
    await page.set_checked("input[name=dry_run]", dry_run)
    await page.click("#import-form button[type=submit]")
    await page.wait_for_load_state()


async def test_entitlement_shows_flagged_contracts_and_import_problems_by_line(
    world: World,
) -> None:
    """The H5-flagged contract is explained in words; a bad registry file changes nothing
    and each problem stands next to its line."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/entitlement")
    flagged = await page.locator(f"#flagged tr[data-serial='{X70}']").inner_text()
    assert "HZ-WEB-2" in flagged and "within 30 days of its purchase" in flagged
    await screenshot(page, "entitlement")
    before = await world.api("/api/v1/assets")
    header = (
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
        "site,room,host_serial"
    )
    bad = "\n".join(
        [
            header,
            f"{X30},studio_x30,2025-01-10,,,,,krk,Wawel,",
            "NEWX50,studio_x50,2027-02-30,,,,,krk,Wawel,",
            "NEWX70,studio_x70,2025-01-10,no_such_plan,N-1,2025-01-10,2026-01-09,krk,Wawel,",
        ]
    )
    await submit_registry(page, bad, dry_run=False)
    line3 = await page.locator("#import-problems tr[data-line='3']").inner_text()
    assert "NEWX50" in line3 and "2027-02-30" in line3
    line4 = await page.locator("#import-problems tr[data-line='4']").inner_text()
    assert "no_such_plan" in line4
    assert await page.locator("#import-problems tr[data-line='2']").count() == 0
    assert await world.api("/api/v1/assets") == before, "nothing imported"
    await screenshot(page, "entitlement-import-problems")
    good = "\n".join([header, f"{X30},studio_x30,2025-01-10,,,,,krk,Wawel,"])
    await submit_registry(page, good, dry_run=True)
    assert "nothing was changed" in await page.locator("#import-result").inner_text()
    assert await world.api("/api/v1/assets") == before
    await page.context.close()


async def test_agents_page_shows_each_agent_and_an_enrollment_code_once(world: World) -> None:
    """Each agent's last call, version and outbox come from what it sent; a new enrollment
    code is shown once and enrolls an agent once."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(world.url + "/agents")
    for agent_id in world.agent_ids.values():
        row = page.locator(f"#agents tr[data-agent='{agent_id}']")
        assert await row.locator("[data-field=version]").inner_text() == installed_version()
        assert (await row.locator("[data-field=outbox]").inner_text()).isdigit()
        assert await row.locator("[data-field=held]").inner_text() == "0"
    await screenshot(page, "agents")
    await page.select_option("#invite-form select[name=site]", "waw")
    await page.click("#invite-form button[type=submit]")
    await page.wait_for_load_state()
    code = await page.locator("#invite-code").inner_text()
    await screenshot(page, "agents-invite")
    await page.goto(world.url + "/agents")
    assert await page.locator("#invite-code").count() == 0
    assert code not in await page.content()
    body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "waw-spare"}
    async with aiohttp.ClientSession() as http:
        for expected in (200, 403):
            async with http.post(world.url + "/api/v1/agent/enroll", json=body) as response:
                assert response.status == expected
    await page.context.close()


async def test_live_updates_keep_filters_and_scroll_and_a_banner_says_when_unreachable(
    world: World,
) -> None:
    """The device table refreshes in place (same address, filters and scroll position); when
    the controller cannot be reached a banner says so, and goes when it answers again."""
    page = await world.new_page(token=world.controller.admin_token, height=360)
    address = f"{world.url}/devices?site=krk&sort=-serial"
    await page.goto(address)
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 0
    await page.evaluate("document.getElementById('live').dataset.old = 'yes'")
    await expect(page.locator("#live[data-old]")).to_have_count(0, timeout=20_000)
    assert page.url == address
    assert await page.locator("select[name=site]").input_value() == "krk"
    assert abs(await page.evaluate("window.scrollY") - scrolled) <= 2
    banner = page.locator("#banner")
    assert await banner.is_hidden()
    await page.route("**/devices?*", lambda route: route.abort())
    await expect(banner).to_be_visible(timeout=20_000)
    assert "cannot be reached" in await banner.inner_text()
    await screenshot(page, "devices-unreachable")
    await page.unroute("**/devices?*")
    await expect(banner).to_be_hidden(timeout=20_000)
    await page.context.close()


async def test_pages_read_on_a_phone_in_dark_mode_and_work_by_keyboard(world: World) -> None:
    """On a phone nothing scrolls sideways, the dark system setting gives dark pages, and the
    keyboard reaches the content first through the skip link and keeps its place there
    when the content refreshes itself."""
    page = await world.new_page(
        token=world.controller.admin_token, width=390, height=844, color_scheme="dark"
    )
    for path in ("/", "/devices", f"/devices/{G7500}", "/tickets", "/entitlement", "/agents"):
        await page.goto(world.url + path)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 20, 26)"
    await page.goto(world.url + "/")
    await screenshot(page, "overview-phone-dark")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.keyboard.press("Enter")
    assert urlsplit(page.url).fragment == "live"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.getElementById('live').contains(document.activeElement)")
    focused = await page.evaluate("document.activeElement.getAttribute('href')")
    # The next live refresh replaces the region: the keyboard user keeps their place.
    await page.evaluate(
        "new Promise(done => document.addEventListener("
        "'htmx:afterSettle', () => setTimeout(done, 50), {once: true}))"
    )
    assert await page.evaluate("document.getElementById('live').contains(document.activeElement)")
    assert await page.evaluate("document.activeElement.getAttribute('href')") == focused
    await page.context.close()


async def test_main_pages_fit_a_375_pixel_phone_and_keep_serials_and_versions_whole(
    world: World,
) -> None:
    """At 375x800 no main page scrolls sideways, and a serial or firmware version is never
    broken over two lines."""
    page = await world.new_page(token=world.controller.admin_token, width=375, height=800)
    paths = ("/", "/devices", f"/devices/{G7500}", "/tickets", "/entitlement", "/agents")
    for path in (*paths, "/rollouts", "/kiosk"):
        await page.goto(world.url + path)
        width = await page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 375, (path, width)
    await page.goto(world.url + "/devices")
    idents = page.locator("main .ident")
    assert await idents.count() > 0
    spaces = await idents.evaluate_all("els => els.map(e => getComputedStyle(e).whiteSpace)")
    assert set(spaces) == {"nowrap"}, spaces
    await page.context.close()


async def test_the_kiosk_refreshes_by_itself(world: World) -> None:
    """A wall screen signed in with a viewer token shows a new fault without a reload; the
    tickets it lists plus "and N more" are the open tickets it counts."""
    page = await world.new_page(width=1920, height=1080)
    await sign_in(page, world.url, world.viewer_token, kiosk=True)
    assert urlsplit(page.url).path == "/kiosk"
    before = await metric(page, "health-degraded")
    await page.evaluate("window.stillTheSamePage = true")
    await world.lab.devices[X30].set_fault("sip_unregistered", True)
    try:
        degraded = page.locator("[data-metric='health-degraded']")
        await expect(degraded).to_have_text(str(before + 1), timeout=30_000)
        assert await page.evaluate("window.stillTheSamePage === true"), "updated in place"
        assert await page.locator("form").count() == 0, "no action on a wall screen"
        await screenshot(page, "kiosk")
    finally:
        await world.lab.devices[X30].set_fault("sip_unregistered", False)
    await page.context.close()


async def test_an_admin_opens_a_ticket_by_hand_on_a_device_page_after_a_refusal(
    world: World,
) -> None:
    """In the browser: configuration help for the Partner POLY+ G7500 comes back refused,
    naming the plan and HEZO+, with the text kept; asking for support instead on the same
    form lands on the new ticket's page (late in the module: it adds a ticket)."""
    page = await world.new_page(token=world.controller.admin_token)
    await page.goto(f"{world.url}/devices/{G7500}")
    await page.click("details.ticket-open summary")
    await page.select_option("#ticket-open-form select[name=category]", "configuration")
    await page.fill("#ticket-open-form input[name=summary]", "Zoom Rooms layout")
    await page.fill("#ticket-open-form textarea[name=description]", "Two screens\nswapped")
    await page.click("#ticket-open-form button[type=submit]")
    await page.wait_for_load_state()
    refusal = await page.locator("#ticket-refusal").inner_text()
    assert "covered by Partner POLY+, which does not include help with configuration" in refusal
    assert "Plans that include help with configuration: HEZO+." in refusal
    assert await page.input_value("#ticket-open-form input[name=summary]") == "Zoom Rooms layout"
    await screenshot(page, "ticket-open-refused")
    await page.select_option("#ticket-open-form select[name=category]", "support")
    await page.click("#ticket-open-form button[type=submit]")
    await page.wait_for_load_state()
    assert urlsplit(page.url).path.startswith("/tickets/PF-")
    assert "Zoom Rooms layout" in await page.locator("main").inner_text()
    await page.context.close()


async def test_the_kiosk_fits_one_full_hd_screen_and_its_lists_add_up(world: World) -> None:
    """At 1920x1080 the whole kiosk is one screen (its full-page screenshot is no taller),
    and each list's lines plus its "and N more" equal what the counters say."""
    page = await world.new_page(width=1920, height=1080)
    await sign_in(page, world.url, world.viewer_token, kiosk=True)
    path = await screenshot(page, "kiosk-full-hd")
    width, height = png_size(path.read_bytes())
    assert (width, height) == (1920, 1080), (width, height)
    open_tickets = await metric(page, "tickets-active")
    listed = await page.locator("#kiosk-tickets li[data-ticket]").count()
    more = page.locator("[data-more='tickets']")
    hidden = int("".join(filter(str.isdigit, await more.inner_text()))) if await more.count() else 0
    assert listed + hidden == open_tickets
    sites = len((await world.api("/api/v1/overview"))["sites"])
    assert await page.locator("#kiosk-sites li[data-site]").count() == sites
    await page.context.close()


async def test_every_page_and_form_answers_in_words_after_all_of_the_above(world: World) -> None:
    """Last, once the tests above left a ticket acted on and a rollout paused: every page
    reachable from the overview and every form, as an admin in English and as a viewer in
    Polish, answers without 5xx or JSON and shows no identifier, None or repr."""
    if not (await world.api("/api/v1/rollouts"))["rollouts"]:
        # Run alone (or before the rollout test): a planned rollout is one of the states.
        async with (
            aiohttp.ClientSession(headers=world.controller.admin_headers) as http,
            http.post(world.url + "/api/v1/rollouts", json={"target": "4.2.2"}) as response,
        ):
            assert response.status == 201, await response.text()
    for token, language in ((world.controller.admin_token, "en"), (world.viewer_token, "pl")):
        report = await crawl(world.url, token, language=language)
        assert any("/rollouts/" in address for address in report.visited), report.visited
        report.check()
