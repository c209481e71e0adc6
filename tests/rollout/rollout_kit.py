"""A rollout world for tests: lab devices, a controller, one agent per site, packages."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from testkit.crawl import crawl
from testkit.site_agents import agent_config, device_config, lab_password_file, start_enrolled_agent
from testkit.waiting import wait_until

from polyfleet.agent.service import AgentService
from polyfleet.controller.clock import Clock, system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import start_lab

#: Every release a test fleet may step through, with a stand-in package each.
PACKAGE_VERSIONS = ("4.1.0.382263", "4.1.0_00.180034", "4.1.3.394009", "4.2.2-408037")
WARSAW = ZoneInfo("Europe/Warsaw")


def package_bytes(version: str) -> bytes:
    return (f"VideoOS {version} ".encode()) * 4000


def open_window(minutes: int = 40) -> str:
    """A window around now, Warsaw time, HH:MM-HH:MM (it opened five minutes ago)."""
    now = datetime.now(WARSAW)
    start = now - timedelta(minutes=5)
    end = now + timedelta(minutes=minutes)
    return f"{start:%H:%M}-{end:%H:%M}"


@dataclass
class World:
    lab: Lab
    controller: RunningController
    agents: dict[str, AgentService]
    http: aiohttp.ClientSession
    registry: str
    devices: dict[str, SimDevice] = field(default_factory=dict)

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.controller.url + path, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def plan(self, **body: Any) -> dict[str, Any]:
        body.setdefault("target", "4.2.2-408037")
        body.setdefault("window", open_window())
        # The day the open window started on: just after midnight, that is yesterday.
        opened = datetime.now(WARSAW) - timedelta(minutes=5)
        body.setdefault("start", opened.date().isoformat())
        body.setdefault("wave_gap", "1m")
        status, plan = await self.call("POST", "/api/v1/rollouts", json=body)
        assert status == 201, plan
        return dict(plan)

    async def act(self, rollout_id: str, action: str) -> dict[str, Any]:
        status, body = await self.call("POST", f"/api/v1/rollouts/{rollout_id}/{action}")
        assert status == 200, body
        return dict(body)

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/rollouts/{rollout_id}")
        assert status == 200, body
        return dict(body)

    async def crawl(self, language: str = "en") -> None:
        """Every dashboard page and form in this state answers in words (testkit.crawl)."""
        report = await crawl(self.controller.url, self.controller.admin_token, language=language)
        assert any("/rollouts/" in address for address in report.visited), report.visited
        report.check()

    async def wait_status(
        self, rollout_id: str, *statuses: str, timeout: float = 90
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            rollout = await self.rollout(rollout_id)
            return rollout if rollout["status"] in statuses else None

        result: dict[str, Any] = await wait_until(
            check, what=f"rollout {rollout_id} {statuses}", timeout=timeout, interval=0.3
        )
        return result

    async def start_rollout(self, **body: Any) -> dict[str, Any]:
        """Plan a rollout (``plan`` defaults) and start it; its plan."""
        plan = await self.plan(**body)
        await self.act(plan["id"], "start")
        return plan

    async def start_installing(self, serial: str) -> tuple[dict[str, Any], SimDevice]:
        """Plan and start a rollout; its plan and the unit once ``serial`` is installing."""
        plan = await self.start_rollout()
        device = self.devices[serial]
        await wait_until(lambda: device.power == "installing", what="install", interval=0.02)
        return plan, device

    async def restart_agent(self, site: str) -> None:
        """A new agent of ``site`` on the (stopped) old one's config, started in its place."""
        again = AgentService(self.agents[site].config)
        await again.start()
        self.agents[site] = again

    async def wait_reported(self, serials: set[str]) -> None:
        async def check() -> bool:
            _, body = await self.call("GET", "/api/v1/devices")
            return serials <= {d["serial"] for d in body["devices"]}

        await wait_until(check, what=f"reports of {sorted(serials)}")


async def _stop_agent(agents: dict[str, AgentService], site: str) -> None:
    await agents[site].stop()


def registry_row(serial: str, model: str, site: str, plan: str = "poly_plus") -> str:
    return (
        f"{serial},{model},2025-01-10,{plan},C-{serial},2025-01-10,2028-01-09,{site},Room {serial},"
    )


@asynccontextmanager
async def rollout_world(
    tmp_path: Path,
    sites: dict[str, list[DeviceSpec]],
    *,
    return_timeout_s: float = 20.0,
    job_lease_s: int = 3600,
    clock: Clock = system_clock,
    calendar_interval_s: float = 900.0,
) -> AsyncIterator[World]:
    """Lab, controller (runner every 0.2 s), agents per site enrolled, packages registered."""
    specs = [spec for specs in sites.values() for spec in specs]
    async with AsyncExitStack() as stack:
        lab = await start_lab(tmp_path / "lab", specs)
        stack.push_async_callback(lab.stop)
        config = dataclasses.replace(
            ControllerConfig(), sections={"rollouts": {"tick_s": 0.2}}, job_lease_s=job_lease_s
        )
        controller = await stack.enter_async_context(
            running_controller(tmp_path / "ctl", config=config, clock=clock)
        )
        http = await stack.enter_async_context(
            aiohttp.ClientSession(headers=controller.admin_headers)
        )
        rows = [
            "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial"
        ]
        password = lab_password_file(tmp_path)
        agents: dict[str, AgentService] = {}
        for site, site_specs in sites.items():
            await controller.ensure_site(site, timezone="Europe/Warsaw")
            for spec in site_specs:
                rows.append(registry_row(spec.serial, spec.model, site))
        world = World(lab, controller, agents, http, "\n".join(rows) + "\n", dict(lab.devices))
        status, body = await world.call(
            "POST", "/api/v1/assets/import", data=world.registry,
            headers={"Content-Type": "text/csv"},
        )  # fmt: skip
        assert status == 200, body
        for version in PACKAGE_VERSIONS:
            status, body = await world.call(
                "PUT", f"/api/v1/releases/{version}/package", data=package_bytes(version)
            )
            assert status == 201, body
        for site, site_specs in sites.items():
            config = agent_config(
                tmp_path,
                [device_config(lab.devices[spec.serial], password) for spec in site_specs],
                data_dir=tmp_path / f"agent-{site}",
                controller_url=controller.url,
                poll_interval_s=0.3,
                send_interval_s=0.05,
                jobs_interval_s=0.1,
                updates_return_timeout_s=return_timeout_s,
                updates_call_recheck_s=0.2,
                updates_calendar_interval_s=calendar_interval_s,
            )
            agents[site] = await start_enrolled_agent(controller, site, config)
            # Whichever agent serves the site at the end is stopped (a test may replace it).
            stack.push_async_callback(_stop_agent, agents, site)
        await world.wait_reported({spec.serial for spec in specs})
        yield world
