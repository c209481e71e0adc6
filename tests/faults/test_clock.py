"""Agents whose clocks are wrong, against a real controller: reports from the future."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from faultkit import Agents, Controllers, LabFactory, enroll, get_json, post_batch
from testkit.processes import polyfleet
from testkit.reports import batch, report, snapshot
from testkit.waiting import wait_until

from polyfleet.simulator.testing import make_device

FAR_FUTURE = "9999-12-31T23:59:59Z"
CAMERA_DOWN = [{"code": "camera_down", "detail": "no video"}]


def near_now(text: str | None, within_s: float = 120) -> bool:
    if text is None:
        return False
    return abs(datetime.fromisoformat(text) - datetime.now(UTC)) < timedelta(seconds=within_s)


async def test_report_from_the_future_does_not_freeze_the_device(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """A report dated 9999-12-31 is kept with its receive time: later reports still change the
    device, and the agent is shown with its clock ahead until it is on time again."""
    controller = await controllers.start()
    enrolled = await enroll(http, controller.url, controller.codes["krk"][0])
    token, admin = enrolled["token"], controller.admin_token
    future = await post_batch(
        http, controller.url, token, batch(report(snapshot("CLK-1", collected_at=FAR_FUTURE)))
    )
    assert future.body == {"accepted": 1, "duplicates": 0}
    device = (await get_json(http, controller.url, "/api/v1/devices/CLK-1", admin)).body
    assert near_now(device["collected_at"]), device["collected_at"]
    stored = (await get_json(http, controller.url, "/api/v1/devices/CLK-1/reports", admin)).body
    assert stored["reports"][0]["agent_collected_at"] == FAR_FUTURE
    agents = (await get_json(http, controller.url, "/api/v1/agents", admin)).body["agents"]
    assert [(a["id"], a["clock"]["state"]) for a in agents] == [(enrolled["agent_id"], "ahead")]
    assert agents[0]["clock"]["skew_s"] > 365 * 24 * 3600
    listed = await polyfleet("controller", "agent", "list", "--data-dir", str(controller.data_dir))
    assert "CLOCK AHEAD" in listed.out, listed.out

    # A later report (on time) with a fault: the device shows it, it is not "history".
    fault = snapshot("CLK-1", problems=CAMERA_DOWN)
    assert (await post_batch(http, controller.url, token, batch(report(fault)))).status == 200
    device = (await get_json(http, controller.url, "/api/v1/devices/CLK-1", admin)).body
    assert device["health"]["state"] == "fault"
    agents = (await get_json(http, controller.url, "/api/v1/agents", admin)).body["agents"]
    assert agents[0]["clock"]["state"] == "ok"
    events = (await get_json(http, controller.url, "/api/v1/events?kind=agent_clock", admin)).body
    assert [e["data"]["state"] for e in events["events"] if e["kind"] == "agent_clock"] == [
        "ahead",
        "ok",
    ]


async def test_agent_with_clock_a_day_ahead_is_shown_and_noted_on_its_sites_tickets(
    controllers: Controllers,
    agents: Agents,
    lab_factory: LabFactory,
    http: aiohttp.ClientSession,
) -> None:
    """A real agent whose clock is a day ahead: its device's fault is still filed, the agent
    shows its clock ahead, and the site's ticket carries a note saying so."""
    controller = await controllers.start(
        "[agents]\nmax_clock_skew_s = 60\n"
        "[tickets]\nmin_reports = 1\nmin_duration_s = 0\ncheck_interval_s = 1\n"
    )
    lab = await lab_factory([make_device("CLKAGENT1")])
    await lab.devices["CLKAGENT1"].set_fault("camera_down", True)
    await agents.start(controller, "krk", list(lab.devices.values()), clock_offset="+1d")
    admin = controller.admin_token

    async def clock_ahead() -> dict[str, Any] | None:
        listed = (await get_json(http, controller.url, "/api/v1/agents", admin)).body["agents"]
        ahead = [a for a in listed if a["clock"]["state"] == "ahead"]
        return ahead[0] if ahead else None

    agent = await wait_until(clock_ahead, timeout=60, what="the agent's clock shown ahead")
    assert 86_000 < agent["clock"]["skew_s"] < 87_000

    async def noted_ticket() -> dict[str, Any] | None:
        answer = await get_json(http, controller.url, "/api/v1/tickets", admin)
        for ticket in answer.body["tickets"]:
            shown = await get_json(http, controller.url, f"/api/v1/tickets/{ticket['id']}", admin)
            if any("clock" in note["text"] for note in shown.body.get("notes", [])):
                return dict(shown.body)
        return None

    ticket = await wait_until(noted_ticket, timeout=60, what="a ticket note on the clock")
    assert ticket["site"] == "krk"
    note = next(n["text"] for n in ticket["notes"] if "clock" in n["text"])
    assert "ahead" in note
    device = (await get_json(http, controller.url, "/api/v1/devices/CLKAGENT1", admin)).body
    assert device["health"]["state"] == "fault"
    assert near_now(device["collected_at"])
