"""The dashboard's test world: lab devices, two site agents, a controller, a desk, a browser."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright
from testkit.servers import serving
from testkit.site_agents import agent_config, device_config, lab_password_file, start_enrolled_agent
from testkit.waiting import wait_until
from tickets.conftest import WebhookPeer, ticket_sections

from polyfleet.agent.service import AgentService
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import (
    SITE_ADDRESS,
    SITE_CONTACT,
    RunningController,
    running_controller,
)
from polyfleet.simulator.fleet import DeviceSpec, PeripheralSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import make_device, start_lab

REPO = Path(__file__).resolve().parents[2]
#: Screenshots of every page go here (ignored by git), or under $POLYFLEET_TEST_ARTIFACTS.
ARTIFACTS = Path(os.environ.get("POLYFLEET_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SESSION_COOKIE = "polyfleet_session"
SIGNIN_COOKIE = "polyfleet_signin"

#: Serials of the world's devices.
G7500 = "WEBG75001"
E70 = "WEBE70001"
X50_FAULT = "WEBX50001"
X30 = "WEBX30001"
X70 = "WEBX70001"
X50_DEGRADED = "WEBX50002"


def registry_csv(today: date) -> str:
    """The world's asset registry: contracts that expire, one that is flagged, one unknown."""

    def day(offset: int) -> str:
        return (today + timedelta(days=offset)).isoformat()

    def years_later(start: str, years: int) -> str:
        first = date.fromisoformat(start)
        return (first.replace(year=first.year + years) - timedelta(days=1)).isoformat()

    ppp_start = day(-190)
    hezo_start = day(-100)
    rows = [
        # Partner POLY+ for one year, ending within 180 days.
        f"{G7500},g7500,{day(-200)},partner_poly_plus,PPP-WEB-1,{ppp_start},"
        f"{years_later(ppp_start, 1)},krk,Wawel,",
        f"{E70},studio_e70,{day(-200)},,,,,krk,Wawel,{G7500}",
        # HEZO+ bought with the device: a ticket has a 1-hour reaction time (W2).
        f"{X50_FAULT},studio_x50,{hezo_start},hezo_plus,HZ-WEB-1,{hezo_start},"
        f"{years_later(hezo_start, 2)},krk,Sukiennice,",
        # The manufacturer's warranty only, long over.
        f"{X30},studio_x30,{day(-800)},,,,,krk,Wawel,",
        # HEZO+ bought a year after the device: flagged (H5).
        f"{X70},studio_x70,{day(-400)},hezo_plus,HZ-WEB-2,{day(-35)},"
        f"{years_later(day(-35), 2)},waw,Vistula,",
    ]
    header = (
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
        "site,room,host_serial\n"
    )
    return header + "".join(row + "\n" for row in rows)


def world_devices() -> dict[str, list[DeviceSpec]]:
    """Lab devices per site: a G7500 with its E70, a faulty X50, an X30; an X70, a slow X50."""
    return {
        "krk": [
            make_device(
                G7500,
                model="g7500",
                firmware="4.1.0_00.180034",
                provider="zoom",
                system_name="Wawel codec",
                peripherals=[
                    PeripheralSpec(kind="e70", serial=E70, firmware="1.3.0-001234"),
                    PeripheralSpec(kind="touch_controller", serial="WEBTC001", firmware="3.12.0"),
                ],
            ),
            make_device(X50_FAULT, firmware="4.2.2", provider="teams", system_name="Sukiennice"),
            make_device(X30, model="studio_x30", firmware="4.1.3", system_name="Wawel bar"),
        ],
        "waw": [
            make_device(X70, model="studio_x70", firmware="4.2.2", system_name="Vistula"),
            make_device(X50_DEGRADED, firmware="4.0.2", system_name="Vistula side"),
        ],
    }


@dataclass
class World:
    """Everything a dashboard test needs; one per test module."""

    controller: RunningController
    lab: Lab
    webhook: WebhookPeer
    browser: Browser
    viewer_token: str
    agents: dict[str, AgentService] = field(default_factory=dict)

    @property
    def agent_ids(self) -> dict[str, str]:
        """Site -> the id its agent got at enrollment (from the credential it reports with)."""
        ids = {}
        for site, agent in self.agents.items():
            assert agent.credential is not None, f"the agent of {site} has not reported yet"
            ids[site] = agent.credential.agent_id
        return ids

    @property
    def url(self) -> str:
        return self.controller.url

    async def api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession(headers=self.controller.admin_headers) as http,
            http.get(self.url + path, params=params) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()

    async def new_page(
        self,
        *,
        token: str | None = None,
        locale: str = "en-GB",
        color_scheme: str = "light",
        width: int = 1280,
        height: int = 900,
        javascript: bool = True,
    ) -> Page:
        """A fresh browser context (own cookies); signed in with ``token`` when given."""
        context = await self.browser.new_context(
            locale=locale,
            color_scheme=color_scheme,  # type: ignore[arg-type]
            viewport={"width": width, "height": height},
            java_script_enabled=javascript,
        )
        page = await context.new_page()
        if token is not None:
            await sign_in(page, self.url, token)
        return page


async def sign_in(page: Page, url: str, token: str, *, kiosk: bool = False) -> None:
    await page.goto(url + "/signin")
    await page.fill("#token", token)
    if kiosk:
        await page.check("input[name=kiosk]")
    await page.click("form[action='/signin'] button[type=submit]")
    await page.wait_for_load_state()


async def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``<artifacts>/dashboard/NAME.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG image, from its header (IHDR)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def metric(page: Page, name: str) -> int:
    """The number a page shows in its ``data-metric="NAME"`` element."""
    text = await page.locator(f"[data-metric='{name}']").first.inner_text()
    return int(re.sub(r"\D", "", text))


async def _start_webhook(stack: AsyncExitStack) -> WebhookPeer:
    peer = WebhookPeer()
    app = web.Application()
    app.router.add_post("/hook", peer.handle)
    peer.url = await stack.enter_async_context(serving(app)) + "/hook"
    return peer


async def _start_agent(
    controller: RunningController, lab: Lab, site: str, serials: list[str], folder: Path
) -> AgentService:
    password = lab_password_file(folder)
    config = agent_config(
        folder,
        [device_config(lab.devices[serial], password) for serial in serials],
        controller_url=controller.url,
        poll_interval_s=0.3,
        send_interval_s=0.05,
        jobs_interval_s=0.1,
        backoff_max_s=0.3,
    )
    return await start_enrolled_agent(controller, site, config, agent_name=f"{site}-agent")


@asynccontextmanager
async def running_world(
    folder: Path, *, web_section: Mapping[str, Any] | None = None
) -> AsyncIterator[World]:
    """Lab, controller (tickets to a webhook desk), registry, two agents, Chromium; then the
    first reports in and the faulty X50's ticket at the desk."""
    per_site = world_devices()
    async with AsyncExitStack() as stack:
        webhook = await _start_webhook(stack)
        lab = await start_lab(folder, [spec for specs in per_site.values() for spec in specs])
        stack.push_async_callback(lab.stop)
        sections: dict[str, Any] = ticket_sections(
            None,
            webhook,
            min_duration_s=1,
            check_interval_s=0.2,
            language="en",
            diagnostics_timeout_s=15,
        )
        if web_section is not None:
            sections["web"] = dict(web_section)
        controller = await stack.enter_async_context(
            running_controller(folder / "controller", sections=sections, poll_interval_s=5)
        )
        for site, name in (("krk", "Kraków"), ("waw", "Warszawa")):
            async with (
                aiohttp.ClientSession(headers=controller.admin_headers) as http,
                http.post(
                    controller.url + "/api/v1/sites",
                    json={"id": site, "name": name, "timezone": "Europe/Warsaw"},
                ) as response,
            ):
                assert response.status < 300, await response.text()
            # Its authorised reporter and RMA address, so that its tickets go out.
            async with (
                aiohttp.ClientSession(headers=controller.admin_headers) as http,
                http.patch(
                    f"{controller.url}/api/v1/sites/{site}",
                    json={"contact": SITE_CONTACT, "delivery_address": SITE_ADDRESS},
                ) as response,
            ):
                assert response.status == 200, await response.text()
        async with (
            aiohttp.ClientSession(headers=controller.admin_headers) as http,
            http.post(
                controller.url + "/api/v1/assets/import",
                data=registry_csv(date.today()).encode(),
                headers={"Content-Type": "text/csv"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        viewer_token, _ = await controller.core.access.create_token(Role.VIEWER, "wall")
        playwright = await stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.push_async_callback(browser.close)
        world = World(
            controller=controller,
            lab=lab,
            webhook=webhook,
            browser=browser,
            viewer_token=viewer_token,
        )
        await lab.devices[X50_FAULT].set_fault("camera_down", True)
        await lab.devices[X50_DEGRADED].set_fault("log_storage_full", True)
        for site, specs in per_site.items():
            agent = await _start_agent(
                controller, lab, site, [spec.serial for spec in specs], folder / f"agent-{site}"
            )
            world.agents[site] = agent
            stack.push_async_callback(agent.stop)
        desk = controller.core.tickets
        expected = {spec.serial for specs in per_site.values() for spec in specs} | {E70}

        def ready() -> bool:
            reported = {d["serial"] for d in controller.core.inventory.devices()}
            service = desk.service
            sent = service is not None and any(
                t.serial == X50_FAULT and t.status.value == "sent" for t in service.tickets()
            )
            return expected <= reported and sent

        await wait_until(ready, what="devices reported and the X50's ticket sent")
        yield world


def cookie_value(response: aiohttp.ClientResponse, name: str) -> str:
    """A cookie the server set (aiohttp keeps no Secure cookie from a plain-HTTP answer)."""
    morsel = response.cookies.get(name)
    assert morsel is not None, f"no {name} cookie in {dict(response.headers)}"
    return morsel.value


async def http_sign_in(http: aiohttp.ClientSession, url: str, token: str) -> str:
    """Sign in over plain HTTP as a form post would; the session cookie's value."""
    async with http.get(url + "/signin") as response:
        nonce = cookie_value(response, SIGNIN_COOKIE)
    async with http.post(
        url + "/signin",
        data={"token": token, "nonce": nonce, "next": "/"},
        cookies={SIGNIN_COOKIE: nonce},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return cookie_value(response, SESSION_COOKIE)


def form_field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, f"no {name} field"
    return found.group(1)


def pretty(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
