"""The demo as an admin runs it: lab, controller and agents, stopping by itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cli_testkit import TIME_SCALE

from polyfleet.controller.domain.tickets import CATEGORY_FAULT
from polyfleet.simulator.fleet import load_fleet

ROOT = Path(__file__).resolve().parents[2]
DEMO_FLEET = ROOT / "deploy" / "examples" / "fleet-demo.toml"
#: Start-up (a few seconds), then the first minutes of the demo's timeline: long enough
#: for its first scripted faults to persist into tickets (about 12 s here).
DEMO_SECONDS = 30


#: The security events of admin sessions from outside a site's admin networks.
UNEXPECTED_SESSIONS = "/api/v1/audit?action=admin_session.unexpected"


def demo_serials() -> dict[str, str]:
    """Serial -> expected model for every demo device, E70 cameras included."""
    expected: dict[str, str] = {}
    for site in load_fleet(DEMO_FLEET).sites:
        for room in site.rooms:
            for device in room.devices:
                expected[device.serial] = device.model
                for peripheral in device.peripherals:
                    if peripheral.kind == "e70":
                        expected[peripheral.serial] = "studio_e70"
    return expected


async def wait_for_file(path: Path, process: asyncio.subprocess.Process, deadline: float) -> Any:
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        if process.returncode is not None:
            raise AssertionError(f"demo exited early with {process.returncode}")
        await asyncio.sleep(0.2)  # waits-for: the demo to write demo.json
    raise AssertionError(f"{path} never appeared")


async def signs_in_once(demo: dict[str, Any]) -> None:
    """The demo's one-time link opens a dashboard session once, and holds no token."""
    link = demo["signin_link"]
    assert link.startswith(demo["url"] + "/signin/link?code=")
    assert demo["admin_token"] not in link
    async with aiohttp.ClientSession() as http:
        async with http.get(link) as response:
            assert response.status == 200
            page = await response.text()
            nonce = response.cookies["polyfleet_signin"].value
        code = re.search(r'name="code" value="([^"]+)"', page)
        assert code is not None
        form = {"code": code.group(1), "nonce": nonce}
        for expected in (303, 401):
            async with http.post(
                demo["url"] + "/signin/link",
                data=form,
                cookies={"polyfleet_signin": nonce},
                allow_redirects=False,
            ) as response:
                assert response.status == expected
                if expected == 303:
                    cookie = response.cookies["polyfleet_session"].value
        async with http.get(
            demo["dashboard"], cookies={"polyfleet_session": cookie}, allow_redirects=False
        ) as response:
            assert response.status == 200
            assert "Overview" in await response.text()


def automatic(tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tickets the controller opened by itself (the demo also opens one by hand)."""
    return [t for t in tickets if t["fault"] not in CATEGORY_FAULT.values()]


@pytest.mark.expected_seconds(35)
async def test_demo_lists_every_device_opens_tickets_and_stops_by_itself(tmp_path: Path) -> None:
    """`polyfleet demo --duration` serves every demo device, files tickets, tells the scripted
    foreign admin session as a security event, and exits 0."""
    expected = demo_serials()
    assert any(model == "studio_e70" for model in expected.values())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "demo",
        "--time-scale",
        TIME_SCALE,
        "--duration",
        str(DEMO_SECONDS),
        "--data-dir",
        str(tmp_path / "demo"),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = asyncio.create_task(process.stdout.read())  # type: ignore[union-attr]
    try:
        demo = await wait_for_file(tmp_path / "demo" / "demo.json", process, time.monotonic() + 60)
        headers = {"Authorization": f"Bearer {demo['admin_token']}"}
        listed: dict[str, dict[str, Any]] = {}
        tickets: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(headers=headers) as http:
            deadline = time.monotonic() + DEMO_SECONDS - 5
            while time.monotonic() < deadline:
                async with http.get(demo["url"] + "/api/v1/devices") as response:
                    assert response.status == 200
                    listed = {d["serial"]: d for d in (await response.json())["devices"]}
                async with http.get(demo["url"] + "/api/v1/tickets") as response:
                    tickets = (await response.json())["tickets"]
                async with http.get(demo["url"] + UNEXPECTED_SESSIONS) as response:
                    events = (await response.json())["entries"]
                if set(expected) <= set(listed) and automatic(tickets) and events:
                    break
                await asyncio.sleep(1)  # waits-for: agents' first polls and a fault to persist
        missing = set(expected) - set(listed)
        assert not missing, f"devices never listed: {sorted(missing)}"
        for serial, model in expected.items():
            device = listed[serial]
            assert device["model"] == model
            assert device["provider"] in {"teams", "zoom", "poly", "device_mode", "unknown"}
            assert device["firmware"]["version"]
            assert device["health"]["state"] in {"ok", "degraded", "fault", "unreachable"}
        assert automatic(tickets), f"no ticket was opened for the demo's faults: {tickets}"
        # The fleet file's foreign admin signs in from outside Kraków's admin networks.
        assert [e["details"]["address"] for e in events] == ["198.51.100.23"], events
        assert events[0]["site"] == "krakow"
        await signs_in_once(demo)
        assert all(t["serial"] in expected or t["kind"] == "site" for t in tickets)
        code = await asyncio.wait_for(process.wait(), timeout=DEMO_SECONDS + 60)
        text = (await output).decode()
        assert code == 0, text[-3000:]
        assert "demo stopped cleanly" in text
        assert "security event: admin session on 8L2101D1371C1 (krakow)" in text
        # The scripted outages are told in words: no library's traceback reaches the output.
        assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]
        assert demo["admin_token"] not in text.replace(f"admin token: {demo['admin_token']}", "")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
