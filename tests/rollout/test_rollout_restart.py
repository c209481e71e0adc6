"""A controller killed with SIGKILL mid-rollout resumes it; no unit is ordered twice."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rollout_kit import PACKAGE_VERSIONS, WARSAW, open_window, package_bytes, registry_row
from testkit.processes import polyfleet, start_controller
from testkit.site_agents import lab_agent_config, lab_password_file
from testkit.waiting import wait_until

from polyfleet.agent.config import Secret
from polyfleet.agent.service import AgentService
from polyfleet.simulator.testing import make_device, start_lab, with_update

REPO = Path(__file__).resolve().parents[2]
#: Longer than the default: a server started twice, an agent and a lab rollout.
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def serve(config: Path, data: Path, port: int) -> asyncio.subprocess.Process:
    """The controller on ``port``, each time it starts (agents keep its URL)."""
    process, _ = await start_controller(data, "--config", str(config), listen=f"127.0.0.1:{port}")
    return process


@pytest.mark.expected_seconds(15)
async def test_controller_kill_9_mid_rollout_orders_no_unit_twice(tmp_path: Path) -> None:
    """SIGKILL while units install; after a restart the rollout completes, one job per hop."""
    specs = [
        with_update(make_device(f"KIL0{n}", firmware="4.1.0_00.180034"), "ok", install_seconds=1.0)
        for n in range(1, 5)
    ]
    lab = await start_lab(tmp_path / "lab", specs)
    data, port = tmp_path / "ctl", free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "controller.toml"
    config.write_text("[rollouts]\ntick_s = 0.2\n")
    made = await polyfleet(
        "controller", "token", "create", "--role", "admin", "--json", "--data-dir", str(data)
    )
    token = made.json()["token"]
    await polyfleet(
        "controller", "site", "add", "krakow", "--name", "Kraków",
        "--timezone", "Europe/Warsaw", "--data-dir", str(data),
    )  # fmt: skip
    invite = await polyfleet(
        "controller", "agent", "invite", "--site", "krakow", "--data-dir", str(data)
    )
    code = invite.out.strip()
    server = await serve(config, data, port)
    password = lab_password_file(tmp_path)
    code_file = tmp_path / "code"
    code_file.write_text(code)
    os.chmod(code_file, 0o600)
    agent = AgentService(
        lab_agent_config(
            tmp_path,
            lab,
            password,
            url,
            enrollment_code=Secret(file=code_file, origin="test"),
            poll_interval_s=0.3,
            jobs_interval_s=0.1,
            backoff_max_s=0.3,
            updates_return_timeout_s=30,
            updates_call_recheck_s=0.2,
        )
    )
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def call(method: str, path: str, **kwargs: Any) -> Any:
                async with http.request(method, url + path, **kwargs) as response:
                    assert response.status < 300, await response.text()
                    return await response.json()

            registry = "serial,model,purchase_date,plan,contract_number,contract_start," \
                "contract_end,site,room,host_serial\n" + "\n".join(
                    registry_row(s.serial, s.model, "krakow") for s in specs
                ) + "\n"  # fmt: skip
            await call("POST", "/api/v1/assets/import", data=registry,
                       headers={"Content-Type": "text/csv"})  # fmt: skip
            for version in PACKAGE_VERSIONS:
                await call("PUT", f"/api/v1/releases/{version}/package",
                           data=package_bytes(version))  # fmt: skip
            await agent.start()

            async def reported() -> bool:
                body = await call("GET", "/api/v1/devices")
                return len(body["devices"]) == len(specs)

            await wait_until(reported, what="every unit reported", timeout=60)
            plan = await call(
                "POST", "/api/v1/rollouts",
                json={"target": "4.2.2-408037", "window": open_window(), "wave_gap": "1m",
                      "start": (datetime.now(WARSAW) - timedelta(minutes=5)).date().isoformat(),
                      "waves": "100%", "per_site": 3},
            )  # fmt: skip
            await call("POST", f"/api/v1/rollouts/{plan['id']}/start")
            await wait_until(
                lambda: any(d.power == "installing" for d in lab.devices.values()),
                what="a unit installing",
                timeout=60,
                interval=0.02,
            )
            server.send_signal(signal.SIGKILL)
            await server.wait()
            server = await serve(config, data, port)

            async def finished() -> dict[str, Any] | None:
                try:
                    rollout = await call("GET", f"/api/v1/rollouts/{plan['id']}")
                except aiohttp.ClientError:
                    return None
                return rollout if rollout["status"] in ("done", "halted") else None

            done = await wait_until(finished, what="the rollout finishing", timeout=120)
            assert done["status"] == "done", done.get("halt")
            for serial, device in lab.devices.items():
                jobs = (await call("GET", f"/api/v1/devices/{serial}/jobs"))["jobs"]
                updates = [j for j in jobs if j["kind"] == "firmware_update"]
                assert len(updates) == 1, (serial, updates)
                assert [d.version for d in device.downloads] == ["4.2.2-408037"], serial
                assert device.firmware_version == "4.2.2"
    finally:
        await agent.stop()
        server.send_signal(signal.SIGTERM)
        await server.wait()
        await lab.stop()
