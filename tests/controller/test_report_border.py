"""What agents report is checked where it enters: implausible reports refused one by one,
cameras kept to their own site, and unprintable text marked and counted."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.domain.reported import MARK
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import PROTOCOL_VERSION


@dataclass
class Border:
    controller: RunningController
    http: aiohttp.ClientSession

    async def post(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            f"{self.controller.url}/api/v1/agent/reports", json=body, headers=bearer(token)
        ) as response:
            return response.status, await response.json()

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.controller.url + path, json=body, headers=self.controller.admin_headers
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def metric(self, name: str) -> float:
        _, text = await self.admin("GET", "/metrics")
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0


@pytest.fixture
async def border(tmp_path: Path) -> AsyncIterator[Border]:
    async with (
        running_controller(tmp_path / "data") as controller,
        aiohttp.ClientSession() as http,
    ):
        yield Border(controller, http)


async def test_a_report_from_before_2015_is_refused_alone_with_its_reason(border: Border) -> None:
    """A report dated year 1 is refused by name in the answer, saying why; the rest of the
    batch is stored, a resend refuses it again, and a metric counts it."""
    agent = await border.controller.enroll("krk")
    early = report(snapshot("EARLY-1", problems=[{"code": "camera_down"}]), "early-0001")
    early["snapshot"]["collected_at"] = "0001-01-01T00:00:00Z"
    good = report(snapshot("GOOD-1"), "good-0001")
    status, answer = await border.post(agent.token, batch(early, good))
    assert status == 200, answer
    assert (answer["accepted"], answer["duplicates"]) == (1, 0)
    (refused,) = answer["refused"]
    assert (refused["id"], refused["serial"], refused["code"], refused["field"]) == (
        "early-0001",
        "EARLY-1",
        "collected_too_early",
        "reports.0.snapshot.collected_at",
    )
    assert "before 2015-01-01" in refused["message"] and "clock" in refused["message"]
    assert (await border.admin("GET", "/api/v1/devices/GOOD-1"))[0] == 200
    assert (await border.admin("GET", "/api/v1/devices/EARLY-1"))[0] == 404
    status, again = await border.post(agent.token, batch(early, good))
    assert (again["accepted"], again["duplicates"], len(again["refused"])) == (0, 1, 1)
    assert await border.metric('polyfleet_reports_refused_total{code="collected_too_early"}') == 2
    # A batch with nothing refused answers as it always did.
    status, plain = await border.post(agent.token, batch(report(snapshot("GOOD-1"))))
    assert plain == {"accepted": 1, "duplicates": 0}


async def test_a_camera_whose_host_is_at_another_site_is_refused_alone(border: Border) -> None:
    """A site's agent reporting a camera hanging off another site's device gets that report
    refused with the reason, its own devices stored; the other site's device does not list
    the camera, and once the host is moved to the agent's site the camera is taken."""
    krk = await border.controller.enroll("krk")
    waw = await border.controller.enroll("waw")
    assert (await border.post(waw.token, batch(report(snapshot("WAW-HOST", model="g7500")))))[
        0
    ] == 200
    camera = report(snapshot("KRK-CAM", model="studio_e70", host_serial="WAW-HOST"), "cam-0001")
    status, answer = await border.post(krk.token, batch(camera, report(snapshot("KRK-1"))))
    assert status == 200, answer
    assert answer["accepted"] == 1
    (refused,) = answer["refused"]
    assert (refused["serial"], refused["code"], refused["field"]) == (
        "KRK-CAM",
        "host_at_other_site",
        "reports.0.snapshot.host_serial",
    )
    assert "belongs to site 'waw'" in refused["message"]
    assert "devices move WAW-HOST --site krk" in refused["message"]
    assert (await border.admin("GET", "/api/v1/devices/KRK-1"))[0] == 200
    assert (await border.admin("GET", "/api/v1/devices/KRK-CAM"))[0] == 404
    assert (await border.admin("GET", "/api/v1/devices/WAW-HOST"))[1]["cameras"] == []

    status, _ = await border.admin("POST", "/api/v1/devices/WAW-HOST/move", {"site": "krk"})
    assert status == 200
    status, answer = await border.post(krk.token, batch(camera))
    assert answer == {"accepted": 1, "duplicates": 0}
    assert (await border.admin("GET", "/api/v1/devices/WAW-HOST"))[1]["cameras"] == ["KRK-CAM"]


async def test_moving_a_device_never_moves_another_sites_camera(border: Border) -> None:
    """A camera reported at one site before its host was reported at another stays where its
    agent is when an admin moves that host, and the host's page does not list it."""
    krk = await border.controller.enroll("krk")
    waw = await border.controller.enroll("waw")
    await border.controller.ensure_site("gda")
    early_camera = snapshot("KRK-CAM2", model="studio_e70", host_serial="LATE-HOST")
    assert (await border.post(krk.token, batch(report(early_camera))))[1]["accepted"] == 1
    assert (await border.post(waw.token, batch(report(snapshot("LATE-HOST")))))[0] == 200
    assert (await border.admin("GET", "/api/v1/devices/LATE-HOST"))[1]["cameras"] == []
    status, moved = await border.admin("POST", "/api/v1/devices/LATE-HOST/move", {"site": "gda"})
    assert status == 200 and moved["site"] == "gda"
    assert (await border.admin("GET", "/api/v1/devices/KRK-CAM2"))[1]["site"] == "krk"


async def test_reported_text_is_marked_where_it_enters_and_counted(border: Border) -> None:
    """Line breaks, ESC, NUL and bidirectional overrides in a system name, firmware string,
    problem detail, peripheral, notice, agent status and agent name become a visible mark
    before anything is stored, and the metric counts each one."""
    code = await border.controller.enrollment_code("krk")
    body = {
        "protocol_version": PROTOCOL_VERSION,
        "code": code,
        "agent_name": "site\x1b[2Jagent",
        "hostname": "host\u202egnp.exe",
    }
    async with border.http.post(f"{border.controller.url}/api/v1/agent/enroll", json=body) as r:
        assert r.status == 200
        token = (await r.json())["token"]
    snap = snapshot(
        "TEXT-1",
        problems=[{"code": "camera_down", "detail": "no video\r\nBcc: evil@example.com"}],
        peripherals=[{"kind": "camera", "model_raw": "EagleEye\u202e", "state": "ok\x00"}],
        version="4.1.0\x1b[31m",
    )
    snap["system_name"] = "Sala Kraków\nBcc: evil@example.com"
    sent = batch(report(snap))
    sent["notices"] = [
        {"kind": "agent_started", "detail": "started\x1b]0;owned\x07", "at": snap["collected_at"]}
    ]
    sent["agent"] = {"version": "1.0\x1b", "outbox_problem": "disk\rfull"}
    status, answer = await border.post(token, sent)
    assert status == 200, answer
    _, device = await border.admin("GET", "/api/v1/devices/TEXT-1")
    assert device["system_name"] == f"Sala Kraków{MARK}Bcc: evil@example.com"
    assert device["firmware"]["version"] == f"4.1.0{MARK}[31m"
    assert device["health"]["problems"][0]["detail"] == f"no video{MARK}{MARK}Bcc: evil@example.com"
    assert device["peripherals"][0]["model_raw"] == f"EagleEye{MARK}"
    assert device["peripherals"][0]["state"] == f"ok{MARK}"
    _, agents = await border.admin("GET", "/api/v1/agents")
    (agent,) = agents["agents"]
    assert (agent["name"], agent["hostname"]) == (f"site{MARK}[2Jagent", f"host{MARK}gnp.exe")
    _, events = await border.admin("GET", "/api/v1/events?kind=agent_notice")
    details = [e["data"]["detail"] for e in events["events"]]
    assert details == [f"started{MARK}]0;owned{MARK}"]
    everything = repr(device) + repr(agents) + repr(events)
    for raw in ("\x1b", "\n", "\r", "\x00", "\u202e", "\x07"):
        assert raw not in everything
    # Device text 6, agent name and host 2, notice 2, agent status 2.
    assert await border.metric("polyfleet_reported_characters_marked_total") == 12
