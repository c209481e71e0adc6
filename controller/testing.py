"""A real controller on loopback port 0 for tests of any area (agent, tickets, e2e).

Usage::

    async with running_controller(tmp_path) as controller:
        code = await controller.enrollment_code("krk")        # site created if missing
        agent = await controller.enroll("krk")                 # EnrollResponse with token
        async with aiohttp.ClientSession(headers=controller.admin_headers) as http:
            await http.get(controller.url + "/api/v1/devices")
        controller.core.inventory, controller.core.jobs...      # the live services

Give ``clock=`` to set time, and config overrides as keyword arguments
(``poll_interval_s=5``, ``sections={"tickets": {...}}``, ``store_url="postgresql://..."``...).
On PostgreSQL it waits until the controller is active (``wait_active=False``: a standby may
be wanted).

Also what tests and benchmarks send and prepare: agent reports in their JSON form
(``snapshot``, ``report``, ``batch``), a fleet of invited sites and its enrolled agents
(``invite_sites``, ``enroll_codes``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from polyfleet.controller.active import LEADERSHIP, announce
from polyfleet.controller.app import create_app
from polyfleet.controller.clock import Clock, system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.core import Controller
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import Role
from polyfleet.shared.schema import PROTOCOL_VERSION, EnrollResponse

#: How long a controller may take to become active.
ACTIVE_WAIT_S = 60.0
#: The authorised reporter and RMA address a test site gets, so its tickets go out.
SITE_CONTACT = {"name": "Anna Nowak", "phone": "+48 12 345 67 89", "email": "anna@example.pl"}
SITE_ADDRESS = {
    "street": "ul. Florianska 1",
    "postal_code": "31-019",
    "city": "Krakow",
    "country": "Polska",
}


# -- agent reports in their JSON form ---------------------------------------------------------

_ids = itertools.count(1)


def utc_text(moment: datetime) -> str:
    """A time as the agent writes it (UTC, ``Z``)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def snapshot(
    serial: str,
    *,
    model: str = "studio_x50",
    version: str = "4.1.0",
    problems: list[dict[str, str]] | None = None,
    state: str | None = None,
    collected_at: datetime | str | None = None,
    uptime_s: float = 3600.0,
    host_serial: str | None = None,
    peripherals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One device snapshot with every field, as an agent sends it (collected now unless told).

    Its health is ``fault`` when it has problems, else ``ok``, unless ``state`` says otherwise.
    """
    problems = problems or []
    when = collected_at if collected_at is not None else datetime.now(UTC)
    return {
        "serial": serial,
        "model": model,
        "model_raw": "Poly Studio X50",
        "system_name": f"Room {serial}",
        "firmware": {"version": version, "build": "180034"},
        "provider": "teams",
        "health": {"state": state or ("fault" if problems else "ok"), "problems": problems},
        "in_call": False,
        "uptime_s": uptime_s,
        "peripherals": peripherals or [],
        "host_serial": host_serial,
        "collected_at": when if isinstance(when, str) else utc_text(when),
        "via": "rest",
    }


def report(snap: dict[str, Any], report_id: str | None = None) -> dict[str, Any]:
    """A report (id and snapshot); ids are unique within the test process unless given."""
    return {"id": report_id or f"report-{next(_ids):08d}", "snapshot": snap}


def batch(
    *reports: dict[str, Any],
    notices: Sequence[dict[str, Any]] = (),
    version: int = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """A ``POST /api/v1/agent/reports`` body."""
    body: dict[str, Any] = {"protocol_version": version, "reports": list(reports)}
    if notices:
        body["notices"] = list(notices)
    return body


@dataclass
class RunningController:
    url: str
    admin_token: str
    app: web.Application
    data_dir: Path

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def core(self) -> Controller:
        """The controller's services (``build_controller``), live."""
        return self.app[CORE]

    async def ensure_site(
        self, site_id: str, *, timezone: str = "Europe/Warsaw", contact: bool = True
    ) -> None:
        """The site, made if missing: with ``SITE_CONTACT`` and ``SITE_ADDRESS`` unless
        ``contact`` is False (its tickets are then held for them)."""
        if not self.core.inventory.has_site(site_id):
            inventory = self.core.inventory
            await inventory.add_site(site_id, name=site_id, timezone=timezone)
            if contact:
                await inventory.update_site(
                    site_id, contact=SITE_CONTACT, delivery_address=SITE_ADDRESS
                )

    async def enrollment_code(self, site_id: str) -> str:
        """A fresh one-time code for ``site_id`` (the site is created if missing, with a
        contact and an address: ``ensure_site``)."""
        await self.ensure_site(site_id)
        code, _ = await self.core.access.create_invite(site_id)
        return code

    async def enroll(self, site_id: str, *, agent_name: str = "test-agent") -> EnrollResponse:
        """Enroll an agent over HTTP, as a real agent would; returns its credential."""
        code = await self.enrollment_code(site_id)
        body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": agent_name}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/api/v1/agent/enroll", json=body) as response,
        ):
            response.raise_for_status()
            return EnrollResponse.model_validate(await response.json())


@asynccontextmanager
async def running_controller(
    data_dir: Path,
    *,
    clock: Clock = system_clock,
    config: ControllerConfig | None = None,
    wait_active: bool = True,
    **overrides: Any,
) -> AsyncIterator[RunningController]:
    """Start ``create_app`` on 127.0.0.1:0 with its data in ``data_dir``; stop it on exit."""
    base = config or ControllerConfig()
    final = dataclasses.replace(
        base, data_dir=data_dir, listen_host="127.0.0.1", listen_port=0, **overrides
    )
    app = create_app(final, clock=clock)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        announce(app, url)
        token = ""
        if wait_active:
            await asyncio.wait_for(app[LEADERSHIP].became_active.wait(), ACTIVE_WAIT_S)
            token, _ = await app[CORE].access.create_token(Role.ADMIN, "test admin")
        yield RunningController(url=url, admin_token=token, app=app, data_dir=data_dir)
    finally:
        await runner.cleanup()


async def invite_sites(core: Controller, count: int) -> list[str]:
    """Sites ``site-000``... and an enrollment code for each, written through ``core`` (over
    an open store, no server running): how benchmarks prepare a fleet."""
    codes = []
    for n in range(count):
        site = f"site-{n:03d}"
        await core.inventory.add_site(site, name=site, timezone="Europe/Warsaw")
        codes.append((await core.access.create_invite(site))[0])
    return codes


async def enroll_codes(url: str, codes: list[str], *, agent_name: str = "test-agent") -> list[str]:
    """Enroll an agent with each code at the controller at ``url``; their tokens, in order."""
    tokens = []
    async with aiohttp.ClientSession() as http:
        for code in codes:
            body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": agent_name}
            async with http.post(f"{url}/api/v1/agent/enroll", json=body) as response:
                tokens.append((await response.json())["token"])
    return tokens
