"""Rollouts run on the lab: agents as site update servers, verification, breaker, tickets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rollout_kit import rollout_world
from testkit.waiting import wait_until

from polyfleet.controller.keys import CORE
from polyfleet.simulator.fleet import MeetingSpec
from polyfleet.simulator.testing import make_device, with_update


def poly(serial: str, firmware: str = "4.1.0_00.180034", **extra: object) -> object:
    return make_device(serial, firmware=firmware, provider="poly", **extra)


async def test_a_rollout_runs_to_completion_with_one_download_per_site(tmp_path: Path) -> None:
    """Two sites, every unit updated and verified; each site's agent fetched the package once."""
    sites = {
        "krakow": [poly("KRA01"), poly("KRA02"), poly("KRA03", firmware="4.1.0.382263")],
        "gdansk": [poly("GDA01"), poly("GDA02")],
    }
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        plan = await world.plan(waves="50%,100%", per_site=2)
        by = {d["serial"]: d for d in plan["devices"]}
        assert [h["version"] for h in by["KRA03"]["hops"]] == ["4.1.0_00.180034", "4.2.2-408037"]
        await world.act(plan["id"], "start")
        done = await world.wait_status(plan["id"], "done", "halted", timeout=120)
        assert done["status"] == "done", done.get("halt")
        assert {d["status"] for d in done["devices"]} == {"done"}
        for serial, device in world.devices.items():
            assert (device.firmware_version, device.build) == ("4.2.2", "408037"), serial
            assert device.config["upgrade.auto.enable"] == "false"  # settings restored
            assert device.config["upgrade.auto.server.address"] == ""
        # Two hops on KRA03: its downloads name both versions, each once.
        assert [d.version for d in world.devices["KRA03"].downloads] == [
            "4.1.0_00.180034",
            "4.2.2-408037",
        ]
        downloads = world.controller.core.packages.downloads
        assert downloads[("krakow", "4.2.2-408037")] == 1
        assert downloads[("gdansk", "4.2.2-408037")] == 1
        await world.crawl("pl")  # done
        evidence = {d["serial"]: d["evidence"] for d in done["devices"]}
        checks = {c["check"]: c["ok"] for c in evidence["KRA01"][-1]["checks"]}
        assert checks == {
            "version": True,
            "provider": True,
            "camera_up": True,
            "microphone_up": True,
            "no_new_problems": True,
        }
        assert evidence["KRA01"][-1]["before"]["firmware"]["version"] == "4.1.0_00"
        _, metrics = await world.call("GET", "/metrics")
        assert 'polyfleet_rollouts{status="done"} 1.0' in metrics
        # Each hop put its unit into maintenance until verified: its reboot opened no ticket.
        _, windows = await world.call("GET", "/api/v1/maintenance")
        updates = [w for w in windows["maintenance"] if w["rollout"] == plan["id"]]
        assert {w["target"] for w in updates} == set(world.devices)
        assert len([w for w in updates if w["target"] == "KRA03"]) == 2
        assert {w["state"] for w in updates} == {"over"}
        assert all(w["reason"].startswith("firmware update to ") for w in updates)
        _, tickets = await world.call("GET", "/api/v1/tickets")
        assert tickets["tickets"] == []
        _, events = await world.call("GET", "/api/v1/events?kind=rollout_changed")
        assert [e["data"]["action"] for e in events["events"]][-2:] in (
            ["start", "finish"],
            ["finish", "start"],
        )


async def test_a_failing_canary_halts_the_rollout(tmp_path: Path) -> None:
    """A failed canary halts the rollout (naming it and the check); resume goes on past it."""
    sites = {
        "krakow": [
            with_update(poly("CAN01"), "fail"),  # type: ignore[arg-type]
            poly("CAN02"),
            poly("CAN03"),
        ]
    }
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        plan = await world.plan()
        assert plan["waves"][0]["devices"] == ["CAN01"]
        await world.act(plan["id"], "start")
        halted = await world.wait_status(plan["id"], "halted", timeout=90)
        assert halted["halt"]["wave"] == 0
        assert halted["halt"]["devices"][0]["serial"] == "CAN01"
        assert halted["halt"]["devices"][0]["check"] == "install"
        assert "a canary failed: CAN01 (the install failed)" in halted["halt"]["reason"]
        assert {d["serial"]: d["status"] for d in halted["devices"]}["CAN02"] == "waiting_window"
        assert world.devices["CAN02"].downloads == []
        _, events = await world.call("GET", "/api/v1/events?kind=rollout_changed")
        assert "halt" in [e["data"]["action"] for e in events["events"]]
        _, logged = await world.call("GET", "/api/v1/audit?action=rollout.halt")
        (entry,) = logged["entries"]
        assert entry["target"] == f"rollout:{plan['id']}"
        assert entry["actor"]["name"] == "circuit breaker"
        await world.crawl()  # halted by the breaker
        # The admin has looked and resumes: the canary's failure no longer halts the rollout;
        # it fails once more and goes to the penalty box, the others are updated.
        await world.act(plan["id"], "resume")
        done = await world.wait_status(plan["id"], "done", "halted", timeout=120)
        assert done["status"] == "done", done.get("halt")
        by = {d["serial"]: d for d in done["devices"]}
        assert by["CAN01"]["status"] == "failed" and len(by["CAN01"]["failures"]) == 2
        # The agent said why in a code; the controller judged the failures by it.
        assert {f["code"] for f in by["CAN01"]["failures"]} == {"install_failed"}
        assert by["CAN02"]["status"] == by["CAN03"]["status"] == "done"
        _, box = await world.call("GET", "/api/v1/rollouts/penalty-box")
        assert [d["serial"] for d in box["devices"]] == ["CAN01"]


async def test_a_bricked_unit_gets_a_ticket_and_the_penalty_box(tmp_path: Path) -> None:
    """A unit that never comes back: failed, penalty box, and a ticket naming rollout and hop."""
    sites = {"krakow": [with_update(poly("BRK01"), "brick"), poly("BRK02")]}  # type: ignore[arg-type]
    async with rollout_world(tmp_path, sites, return_timeout_s=3) as world:  # type: ignore[arg-type]
        plan = await world.start_rollout()
        halted = await world.wait_status(plan["id"], "halted", timeout=90)
        entry = next(d for d in halted["devices"] if d["serial"] == "BRK01")
        assert entry["status"] == "failed"
        assert entry["failures"][0]["check"] == "did_not_return"
        assert entry["failures"][0]["code"] == "did_not_return"
        _, box = await world.call("GET", "/api/v1/rollouts/penalty-box")
        assert [d["serial"] for d in box["devices"]] == ["BRK01"]

        async def ticket() -> dict[str, object] | None:
            _, body = await world.call("GET", "/api/v1/tickets")
            found = [t for t in body["tickets"] if t["fault"] == "firmware_update_failed"]
            return found[0] if found else None

        found = await wait_until(ticket, what="the bricked unit's ticket", timeout=30)
        assert found["serial"] == "BRK01"
        _, shown = await world.call("GET", f"/api/v1/tickets/{found['id']}")
        assert plan["id"] in shown["fault_detail"] and "4.2.2-408037" in shown["fault_detail"]
        assert any(e.get("rollout") == plan["id"] for e in shown["evidence"])
        # Its update maintenance ended with the failure; the update's ticket is its only one.
        _, windows = await world.call("GET", "/api/v1/maintenance")
        (window,) = [w for w in windows["maintenance"] if w["target"] == "BRK01"]
        assert window["state"] == "over" and window["rollout"] == plan["id"]
        await world.controller.core.tickets.get().tick()
        _, body = await world.call("GET", "/api/v1/tickets")
        assert [t["serial"] for t in body["tickets"] if t["serial"] == "BRK01"] == ["BRK01"]
        await world.crawl("pl")  # halted, a unit failed, its ticket open


async def test_pause_lets_the_update_finish_and_resume_goes_on(tmp_path: Path) -> None:
    """Paused during the canary: it finishes and is verified, nothing new starts until resume."""
    sites = {"krakow": [with_update(poly("PAU01"), "ok", install_seconds=1.5), poly("PAU02")]}  # type: ignore[arg-type]
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        plan = await world.start_rollout()
        await wait_until(lambda: world.devices["PAU01"].power == "installing", what="install")
        await world.act(plan["id"], "pause")

        async def canary_done() -> bool:
            rollout = await world.rollout(plan["id"])
            return {d["serial"]: d["status"] for d in rollout["devices"]}["PAU01"] == "done"

        await wait_until(canary_done, what="the canary verified while paused", timeout=60)
        paused = await world.rollout(plan["id"])
        assert paused["status"] == "paused"
        assert {d["serial"]: d["status"] for d in paused["devices"]}["PAU02"] == "waiting_window"
        assert world.devices["PAU02"].downloads == []
        await world.crawl()  # paused
        await world.act(plan["id"], "resume")
        done = await world.wait_status(plan["id"], "done", timeout=90)
        assert world.devices["PAU02"].firmware_version == "4.2.2" and done["status"] == "done"


async def test_a_unit_in_a_call_is_postponed_then_updated(tmp_path: Path) -> None:
    """In a call: postponed_in_call while it lasts, updated once the call ends."""
    sites = {"krakow": [poly("CALL1")]}
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        device = world.devices["CALL1"]
        await device.start_call()
        plan = await world.start_rollout()

        async def postponed() -> bool:
            rollout = await world.rollout(plan["id"])
            return rollout["devices"][0]["status"] == "postponed_in_call"

        await wait_until(postponed, what="postponed_in_call", timeout=60)
        assert device.firmware_version == "4.1.0_00" and device.downloads == []
        await device.end_call()
        done = await world.wait_status(plan["id"], "done", timeout=90)
        assert done["devices"][0]["status"] == "done"
        assert device.firmware_version == "4.2.2"


async def test_a_teams_unit_is_never_ordered_and_done_once_a_report_shows_the_target(
    tmp_path: Path,
) -> None:
    """Teams mode: no job is ordered; the Teams admin center's update, once reported, is done."""
    sites = {"krakow": [make_device("TMS01", firmware="4.1.0_00.180034", provider="teams")]}
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        plan = await world.plan()
        (entry,) = plan["devices"]
        assert entry["channel"] == "teams_admin_center" and entry["status"] == "planned"
        await world.act(plan["id"], "start")
        device = world.devices["TMS01"]
        # What the Teams admin center does, played by the lab's control API.
        await device.deliver_update("4.2.2-408037")
        done = await world.wait_status(plan["id"], "done", timeout=90)
        (entry,) = done["devices"]
        assert entry["status"] == "done"
        assert entry["evidence"][-1]["kind"] == "teams_report"
        assert entry["evidence"][-1]["after"]["firmware"] == {"version": "4.2.2", "build": "408037"}
        _, jobs = await world.call("GET", "/api/v1/devices/TMS01/jobs")
        assert [j for j in jobs["jobs"] if j["kind"] == "firmware_update"] == []
        assert device.downloads == []


async def test_a_unit_off_in_its_window_moves_to_its_next_window(tmp_path: Path) -> None:
    """Off when its update should start: not ordered; the plan moves it to tomorrow's window."""
    sites = {"krakow": [poly("OFF01")]}
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        plan = await world.plan()
        first = plan["devices"][0]["window"]
        await world.devices["OFF01"].power_off()
        await world.act(plan["id"], "start")

        async def moved() -> dict[str, object] | None:
            entry = (await world.rollout(plan["id"]))["devices"][0]
            return entry if entry["notes"] else None

        entry = await wait_until(moved, what="the window moved", timeout=60)
        assert entry["status"] == "waiting_window"
        assert entry["notes"][-1]["code"] == "moved_to_next_window"
        assert "unreachable" in entry["notes"][-1]["text"]
        start = datetime.fromisoformat(entry["window"]["start"])
        assert start - datetime.fromisoformat(first["start"]) == timedelta(days=1)
        assert world.devices["OFF01"].downloads == []


async def test_an_agent_stopped_mid_update_resumes_it_without_ordering_again(
    tmp_path: Path,
) -> None:
    """The agent dies while its unit installs; restarted, it verifies the same order, once."""
    sites = {"krakow": [with_update(poly("AGR01"), "ok", install_seconds=2.0)]}  # type: ignore[arg-type]
    async with rollout_world(tmp_path, sites, job_lease_s=2) as world:  # type: ignore[arg-type]
        plan, device = await world.start_installing("AGR01")
        old = world.agents["krakow"]
        await old.stop()  # the job in flight is cut off, as a kill would
        journal = next((old.config.data_dir / "updates").glob("job_*.json"))
        assert '"phase": "ordered"' in journal.read_text()
        await world.restart_agent("krakow")
        done = await world.wait_status(plan["id"], "done", "halted", timeout=90)
        assert done["status"] == "done", done.get("halt")
        assert [d.version for d in device.downloads] == ["4.2.2-408037"]
        _, jobs = await world.call("GET", "/api/v1/devices/AGR01/jobs")
        assert len([j for j in jobs["jobs"] if j["kind"] == "firmware_update"]) == 1
        assert done["devices"][0]["evidence"][-1]["checks"][0] == {
            "check": "version",
            "ok": True,
            "detail": "4.2.2 build 408037, expected 4.2.2-408037",
        }


async def test_an_order_cut_short_restores_the_settings_the_unit_had_before_it(
    tmp_path: Path,
) -> None:
    """Stopped between saving the unit's settings and its reboot: those settings come back."""
    sites = {"krakow": [poly("CUT01")]}
    async with rollout_world(tmp_path, sites) as world:  # type: ignore[arg-type]
        agent = world.agents["krakow"]
        await agent.stop()
        plan = await world.start_rollout()

        async def ordered() -> str | None:
            _, jobs = await world.call("GET", "/api/v1/devices/CUT01/jobs")
            found = [j["id"] for j in jobs["jobs"] if j["kind"] == "firmware_update"]
            return found[0] if found else None

        job_id = await wait_until(ordered, what="the job", timeout=30)
        device = world.devices["CUT01"]
        # What the unit held before, as the first attempt saved it, and the order it wrote.
        journal = agent.config.data_dir / "updates" / f"{job_id}.json"
        journal.parent.mkdir(parents=True, exist_ok=True)
        before = {
            "upgrade.auto.enable": "false",
            "upgrade.auto.server.address": "https://lens.example.invalid/fw",
            "upgrade.auto.version": "",
        }
        journal.write_text(json.dumps({"phase": "ordering", "saved": before}))
        device.config.update(
            {
                "upgrade.auto.enable": "true",
                "upgrade.auto.server.address": "https://127.0.0.1:9/fw",
                "upgrade.auto.version": "4.2.2-408037",
            }
        )
        await world.restart_agent("krakow")
        done = await world.wait_status(plan["id"], "done", "halted", timeout=90)
        assert done["status"] == "done", done.get("halt")
        assert {k: device.config[k] for k in before} == before


async def test_an_agent_restarted_mid_install_reports_it_without_waiting_for_the_lease(
    tmp_path: Path,
) -> None:
    """The agent restarts while its unit installs and the job's lease is an hour: the new
    agent follows the unit from its journal and reports the outcome once it answers."""
    sites = {"krakow": [with_update(poly("AGL01"), "ok", install_seconds=2.0)]}  # type: ignore[arg-type]
    async with rollout_world(tmp_path, sites, job_lease_s=3600) as world:  # type: ignore[arg-type]
        plan, device = await world.start_installing("AGL01")
        await world.agents["krakow"].stop()
        await world.restart_agent("krakow")
        # Far less than the lease, and than the controller's wait before handing it out again.
        done = await world.wait_status(plan["id"], "done", "halted", timeout=30)
        assert done["status"] == "done", done.get("halt")
        (entry,) = done["devices"]
        assert not [n for n in entry["notes"] if n["code"] == "reassigned"]
        _, jobs = await world.call("GET", "/api/v1/devices/AGL01/jobs")
        (job,) = [j for j in jobs["jobs"] if j["kind"] == "firmware_update"]
        assert job["status"] == "done"
        assert [d.version for d in device.downloads] == ["4.2.2-408037"]


@pytest.mark.expected_seconds(12)
async def test_a_booked_room_is_waited_out_and_shown_without_its_subject(tmp_path: Path) -> None:
    """A Zoom room booked now: the plan shows the meeting (start and end, no subject), the
    unit is postponed_booked until it ends, then updated; a Poly Video room has no calendar
    and counts as free, which its entry says."""
    sites = {
        "krakow": [
            make_device("BKD01", firmware="4.1.0_00.180034", provider="zoom"),
            poly("BKD02"),
        ]
    }
    async with rollout_world(tmp_path, sites, calendar_interval_s=0.3) as world:  # type: ignore[arg-type]
        now = datetime.now(UTC).replace(microsecond=0)
        meeting = MeetingSpec(
            start=now - timedelta(minutes=10), end=now + timedelta(seconds=6), subject="Board: pay"
        )
        world.devices["BKD01"].add_meeting(meeting)
        calendars = world.controller.app[CORE].calendars

        def read_since_booked(serial: str) -> bool:
            found = calendars.of(serial)
            return found is not None and found.read_at is not None and found.read_at > now

        await wait_until(
            lambda: read_since_booked("BKD01") and read_since_booked("BKD02"), what="calendars"
        )
        plan = await world.plan(canary=0, waves="100%", hop_length="1m")
        by = {d["serial"]: d for d in plan["devices"]}
        shown = by["BKD01"]["calendar"]
        assert shown["state"] == "read"
        assert [
            (datetime.fromisoformat(m["start"]), datetime.fromisoformat(m["end"]))
            for m in shown["meetings"]
        ] == [(meeting.start, meeting.end)]
        assert "Board" not in json.dumps(plan)
        assert by["BKD02"]["calendar"]["state"] == "off"
        assert "counts as free" in by["BKD02"]["calendar"]["text"]

        await world.act(plan["id"], "start")

        async def booked() -> dict[str, object] | None:
            rollout = await world.rollout(plan["id"])
            entry = next(d for d in rollout["devices"] if d["serial"] == "BKD01")
            return entry if entry["status"] == "postponed_booked" else None

        entry = await wait_until(booked, what="BKD01 postponed_booked", timeout=20)
        assert isinstance(entry["booked"], dict)
        assert datetime.fromisoformat(str(entry["booked"]["end"])) == meeting.end
        assert world.devices["BKD01"].downloads == []
        done = await world.wait_status(plan["id"], "done", "halted", timeout=60)
        assert done["status"] == "done", done.get("halt")
        assert {d["serial"]: d["status"] for d in done["devices"]} == {
            "BKD01": "done",
            "BKD02": "done",
        }
        assert datetime.now(UTC) >= meeting.end
