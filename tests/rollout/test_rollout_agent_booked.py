"""The agent's own look at the room before an install: a meeting the controller did not know
is waited out, or, when it covers the rest of the window, the unit moves to its next window,
and each entry's status says why it waits."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from dashboard.dashboard_testkit import SESSION_COOKIE, http_sign_in
from rollout_kit import WARSAW, World, rollout_world
from testkit.waiting import wait_until

from polyfleet.simulator.fleet import MeetingSpec
from polyfleet.simulator.testing import make_device


async def entry_of(world: World, rollout_id: str, serial: str) -> dict[str, Any]:
    rollout = await world.rollout(rollout_id)
    entry: dict[str, Any] = next(d for d in rollout["devices"] if d["serial"] == serial)
    return entry


async def updating_notice(world: World, serial: str, language: str) -> str | None:
    """The device page's "updating" notice as text (tags dropped), None when it has none."""
    async with aiohttp.ClientSession() as http:
        cookie = await http_sign_in(http, world.controller.url, world.controller.admin_token)
        async with http.get(
            f"{world.controller.url}/devices/{serial}",
            cookies={SESSION_COOKIE: cookie},
            headers={"Accept-Language": language},
        ) as response:
            assert response.status == 200, await response.text()
            html = await response.text()
    found = re.search(r'<p [^>]*id="device-updating"[^>]*>(.*?)</p>', html, re.S)
    return re.sub(r"<[^>]+>", "", found.group(1)) if found else None


async def test_the_agent_waits_out_or_refuses_a_meeting_the_controller_did_not_know(
    tmp_path: Path,
) -> None:
    """With no calendar read by the controller (a meeting booked since), every unit is
    ordered; the agent waits out a meeting that ends inside the window (postponed_booked
    with its job and the meeting, shown on the unit's page) and goes on once the room is
    free; it refuses one that lasts past the window (postponed_booked in tomorrow's window,
    the meeting's start and end kept, the unit untouched); a room without a calendar counts
    as free, which its entry says."""
    sites = {
        "krakow": [
            make_device("WAIT1", firmware="4.1.0_00.180034", provider="zoom"),
            make_device("BOOK1", firmware="4.1.0_00.180034", provider="zoom"),
            make_device("FREE1", firmware="4.1.0_00.180034", provider="poly"),
        ]
    }
    # The agents read calendars every 15 minutes: the controller knows none in this test.
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        now = datetime.now(UTC).replace(microsecond=0)
        # Ends well inside the window; cancelled below once its wait has been looked at.
        short = MeetingSpec(
            start=now - timedelta(minutes=1), end=now + timedelta(minutes=3), subject="Stand-up"
        )
        long = MeetingSpec(
            start=now - timedelta(minutes=10), end=now + timedelta(hours=3), subject="Board: pay"
        )
        short_id = world.devices["WAIT1"].add_meeting(short)
        world.devices["BOOK1"].add_meeting(long)
        plan = await world.plan(canary=0, waves="100%", hop_length="1m", per_site=3)
        first_window = next(d["window"] for d in plan["devices"] if d["serial"] == "BOOK1")
        await world.act(plan["id"], "start")

        async def waiting_with_its_job() -> dict[str, Any] | None:
            entry = await entry_of(world, plan["id"], "WAIT1")
            if entry["status"] == "postponed_booked" and entry.get("booked"):
                return entry
            return None

        waiting = await wait_until(
            waiting_with_its_job, what="WAIT1 waits", timeout=30, interval=0.1
        )
        assert datetime.fromisoformat(waiting["booked"]["end"]) == short.end
        assert world.devices["WAIT1"].downloads == []
        _, jobs = await world.call("GET", "/api/v1/devices/WAIT1/jobs")
        (job,) = [j for j in jobs["jobs"] if j["kind"] == "firmware_update"]
        assert job["status"] == "sent"  # the agent holds it while it waits
        # Its page says it is being updated, by which rollout, to what, and where it stands.
        name = plan["name"]
        english = await updating_notice(world, "WAIT1", "en")
        assert english == f"Updating to 4.2.2-408037 in rollout {name}: postponed: room booked"
        polish = await updating_notice(world, "WAIT1", "pl")
        assert polish == (
            f"Aktualizowane do 4.2.2-408037 w ramach aktualizacji {name}: "
            "odłożone: sala zarezerwowana"
        )

        # Cancelled, as the lab's control API does: the agent sees the room free and goes on.
        del world.devices["WAIT1"].meetings[short_id]

        async def moved() -> dict[str, Any] | None:
            entry = await entry_of(world, plan["id"], "BOOK1")
            return entry if entry["status"] == "postponed_booked" and entry["notes"] else None

        entry = await wait_until(moved, what="BOOK1 moved", timeout=20)
        booked = entry["booked"]
        assert (
            datetime.fromisoformat(booked["start"]),
            datetime.fromisoformat(booked["end"]),
        ) == (long.start, long.end)
        start = datetime.fromisoformat(entry["window"]["start"])
        assert start - datetime.fromisoformat(first_window["start"]) == timedelta(days=1)
        assert entry["notes"][-1]["code"] == "postponed_booked"
        assert "no free" in entry["notes"][-1]["text"]
        assert entry["failures"] == []
        _, jobs = await world.call("GET", "/api/v1/devices/BOOK1/jobs")
        (job,) = [j for j in jobs["jobs"] if j["kind"] == "firmware_update"]
        assert (job["status"], job["result"]["code"]) == ("refused", "room_booked")
        unit = world.devices["BOOK1"]
        assert (unit.downloads, unit.firmware_version) == ([], "4.1.0_00")
        assert unit.config["upgrade.auto.server.address"] == ""

        async def both_done() -> bool:
            rollout = await world.rollout(plan["id"])
            statuses = {d["serial"]: d["status"] for d in rollout["devices"]}
            return statuses["WAIT1"] == statuses["FREE1"] == "done"

        await wait_until(both_done, what="WAIT1 and FREE1 done", timeout=40)
        assert world.devices["WAIT1"].firmware_version == "4.2.2"
        assert await updating_notice(world, "WAIT1", "en") is None  # its update is over
        assert await updating_notice(world, "BOOK1", "en") is None  # nothing ordered now
        free = await entry_of(world, plan["id"], "FREE1")
        assert free["calendar"]["state"] == "off"
        assert "counts as free" in free["calendar"]["text"]
        rollout = await world.rollout(plan["id"])
        assert rollout["status"] == "running"  # BOOK1 is updated tomorrow
        assert "Board" not in str(rollout) and "Stand-up" not in str(rollout)


class BehindClock:
    """The controller's clock a day behind the agents' (which keep real time)."""

    def __call__(self) -> datetime:
        return datetime.now(UTC) - timedelta(days=1)


async def test_a_call_lasting_past_the_window_moves_the_unit_to_its_next_window(
    tmp_path: Path,
) -> None:
    """In a call when its window closes: the agent refuses (in_call) without disturbing the
    call, and the entry waits for its next window, saying why. The controller runs a day
    behind the agent, so the window it orders in is already over when the agent looks."""
    sites = {"krakow": [make_device("CALL2", firmware="4.1.0_00.180034", provider="poly")]}
    async with rollout_world(tmp_path, sites, clock=BehindClock()) as world:  # type: ignore[arg-type]
        device = world.devices["CALL2"]
        await device.start_call()
        opened = datetime.now(WARSAW) - timedelta(minutes=5) - timedelta(days=1)
        plan = await world.plan(canary=0, waves="100%", start=opened.date().isoformat())
        first_window = plan["devices"][0]["window"]
        await world.act(plan["id"], "start")

        async def moved() -> dict[str, Any] | None:
            entry = await entry_of(world, plan["id"], "CALL2")
            return entry if entry["notes"] else None

        entry = await wait_until(moved, what="CALL2 moved", timeout=30)
        assert entry["status"] == "waiting_window"
        assert entry["notes"][-1]["code"] == "moved_to_next_window"
        assert "still in a call when its window closed; next window " in entry["notes"][-1]["text"]
        start = datetime.fromisoformat(entry["window"]["start"])
        assert start - datetime.fromisoformat(first_window["start"]) == timedelta(days=1)
        assert entry["failures"] == []
        _, jobs = await world.call("GET", "/api/v1/devices/CALL2/jobs")
        (job,) = [j for j in jobs["jobs"] if j["kind"] == "firmware_update"]
        assert (job["status"], job["result"]["code"]) == ("refused", "in_call")
        assert device.call is not None and device.downloads == []
        assert device.firmware_version == "4.1.0_00"
