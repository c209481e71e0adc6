"""The agent with several controllers on one database: it follows the one that is active."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.site_agents import agent_config, device_config
from testkit.waiting import wait_until

from polyfleet.agent.config import load_config
from polyfleet.agent.service import AgentService, enroll
from polyfleet.agent.uplink import ControllerUnavailable, Credential, Uplink
from polyfleet.controller.active import LEADERSHIP
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import PROTOCOL_VERSION, ReportBatch
from polyfleet.simulator.testing import make_device


def one_report(serial: str, report_id: str) -> ReportBatch:
    return ReportBatch.model_validate(
        {
            "protocol_version": PROTOCOL_VERSION,
            "reports": [
                {
                    "id": report_id,
                    "snapshot": {
                        "serial": serial,
                        "model": "studio_x50",
                        "model_raw": "Poly Studio X50",
                        "system_name": serial,
                        "firmware": {"version": "4.2.2", "build": "408037"},
                        "provider": "teams",
                        "health": {"state": "ok", "problems": []},
                        "in_call": False,
                        "uptime_s": 60.0,
                        "peripherals": [],
                        "collected_at": "2026-03-02T09:00:00Z",
                        "via": "rest",
                    },
                }
            ],
        }
    )


async def devices_at(controller: RunningController) -> set[str]:
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.get(controller.url + "/api/v1/devices") as response,
    ):
        return {device["serial"] for device in (await response.json())["devices"]}


async def test_uplink_moves_to_the_url_a_standby_names(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent to a standby first, a batch lands at the active one the standby names; a URL the
    agent was not given is never followed."""
    async with (
        running_controller(tmp_path / "a", store_url=postgres_url) as active,
        running_controller(tmp_path / "b", store_url=postgres_url, wait_active=False) as standby,
        aiohttp.ClientSession() as http,
    ):
        code = await active.enrollment_code("krk")
        credential = await enroll(
            [standby.url, active.url], code, credential_path=tmp_path / "credential.json"
        )
        assert credential.controller_url == active.url
        assert Credential.load(tmp_path / "credential.json").urls == (standby.url, active.url)

        uplink = Uplink([standby.url, active.url], session=http, token=credential.token)
        ack = await uplink.post_batch(one_report("X50-FOLLOW", "follow-0001"))
        assert ack.accepted == 1 and uplink.base_url == active.url
        assert "X50-FOLLOW" in await devices_at(active)

        # The standby learns who is active by watching the database, about once a second.
        async def standby_names_the_active_one() -> bool:
            return standby.app[LEADERSHIP].active_url == active.url

        await wait_until(standby_names_the_active_one, what="the standby to name the active")
        stranger = Uplink([standby.url, "http://127.0.0.1:9"], session=http, token=credential.token)
        with caplog.at_level(logging.WARNING), pytest.raises(ControllerUnavailable):
            await stranger.post_batch(one_report("X50-NEVER", "never-0001"))
        assert f"names {active.url} as the active controller" in caplog.text
        assert "X50-NEVER" not in await devices_at(active)


async def test_agent_follows_the_takeover_and_loses_no_report(
    lab_factory: Any, password_file: Path, tmp_path: Path, postgres_url: str
) -> None:
    """An agent given both controllers reports to the active one, then to the other once it
    took over; its outbox empties and no report is stored twice."""
    lab = await lab_factory([make_device("FOX50"), make_device("FOX30", model="studio_x30")])
    devices = [device_config(device, password_file) for device in lab.devices.values()]
    serials = {"FOX50", "FOX30"}
    first = contextlib.AsyncExitStack()
    active = await first.enter_async_context(
        running_controller(tmp_path / "a", store_url=postgres_url)
    )
    async with (
        first,
        running_controller(tmp_path / "b", store_url=postgres_url, wait_active=False) as standby,
    ):
        try:
            code = await active.enrollment_code("krk")
            toml = tmp_path / "agent.toml"
            toml.write_text(
                f'[agent]\ndata_dir = "{tmp_path / "agent"}"\n'
                f'[controller]\nurl = "{standby.url}"\nurls = ["{active.url}"]\n',
                encoding="utf-8",
            )
            urls = load_config(toml).controller_urls
            assert urls == (standby.url, active.url)
            await enroll(urls, code, credential_path=tmp_path / "agent" / "credential.json")
            service = AgentService(
                agent_config(
                    tmp_path,
                    devices,
                    controller_url=standby.url,
                    controller_urls=urls,
                    poll_interval_s=0.3,
                    send_interval_s=0.05,
                )
            )
            await service.start()

            async def at_first() -> bool:
                return serials <= await devices_at(active)

            await wait_until(at_first, what="devices at the active controller")
        finally:
            # The active controller goes away; the standby takes the database over.
            await first.aclose()
        try:
            await wait_until(
                lambda: _became_active(standby), timeout=60, what="the standby taking over"
            )
            standby.admin_token = await _admin_token(standby)
            taken_over = {serial: await _newest(standby, serial) for serial in serials}

            async def newer_at_second() -> bool:
                newest = {serial: await _newest(standby, serial) for serial in serials}
                return all(newest[serial] > taken_over[serial] for serial in serials)

            await wait_until(newer_at_second, timeout=60, what="reports at the new one")
            await wait_until(
                lambda: _empty(service), timeout=60, what="the agent's outbox to empty"
            )
        finally:
            await service.stop()
        async with (
            aiohttp.ClientSession(headers=standby.admin_headers) as http,
            http.get(f"{standby.url}/api/v1/events", params={"limit": "1000"}) as response,
        ):
            events = (await response.json())["events"]
        added = sorted(event["serial"] for event in events if event["kind"] == "device_added")
        assert added == sorted(serials | _cameras(lab))


async def _became_active(controller: RunningController) -> bool:
    return controller.app[LEADERSHIP].became_active.is_set()


async def _empty(service: AgentService) -> bool:
    return service.outbox is not None and len(service.outbox) == 0


def _cameras(lab: Any) -> set[str]:
    return {p.serial for d in lab.devices.values() for p in d.peripherals if p.kind == "e70"}


async def _admin_token(controller: RunningController) -> str:
    token, _ = await controller.core.access.create_token(Role.ADMIN, "after the takeover")
    return token


async def _newest(controller: RunningController, serial: str) -> str:
    """When the newest stored report of ``serial`` was collected ("" before any)."""
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.get(f"{controller.url}/api/v1/devices/{serial}/reports") as response,
    ):
        if response.status != 200:
            return ""
        reports = (await response.json())["reports"]
    return max((report["snapshot"]["collected_at"] for report in reports), default="")
