"""A full outbox during an uplink outage keeps every fault episode and counts each drop once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from agent_site import (
    UplinkRelay,
    agent_status,
    controller_events,
    start_reporting_agent,
    stored_reports,
    wait_status,
)
from faultkit import ControllerProcess
from testkit.waiting import wait_until

from polyfleet.agent.outbox import Outbox
from polyfleet.simulator.testing import make_device

#: The smallest outbox the config takes: a few dozen reports.
OUTBOX_BYTES = 16 * 1024


def problem_codes(report: dict[str, Any]) -> set[str]:
    return {p["code"] for p in report["snapshot"]["health"]["problems"]}


async def test_fault_episode_during_outage_survives_a_full_outbox(
    controllers: Any,
    lab_factory: Any,
    password_file: Path,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """An episode during an outage with a full outbox arrives whole; each drop is counted once."""
    lab = await lab_factory(
        [make_device("EPISODE1"), make_device("REPEAT1"), make_device("REPEAT2")]
    )
    episode = lab.devices["EPISODE1"]
    controller: ControllerProcess = await controllers.start(
        config="[store]\nreport_history = 100000\n"
    )
    relay = UplinkRelay(controller.url)
    await relay.start()
    try:
        agent, _, port = await start_reporting_agent(
            http,
            controller,
            lab,
            password_file,
            tmp_path / "agent",
            controller_url=relay.url,
            extra_outbox=f"max_bytes = {OUTBOX_BYTES}\nsegment_bytes = 4096\n",
        )
    except BaseException:
        await relay.stop()
        raise
    try:
        relay.cut()
        full = await wait_status(
            http, port, lambda d: d["outbox"]["dropped_total"] > 0, 60, "the outbox full"
        )
        # The episode: camera down for a few polls, then up again, all during the outage.
        logins = episode.logins
        await episode.set_fault("camera_down", True)
        await wait_until(
            lambda: episode.logins >= logins + 3, timeout=30, what="three polls with the fault"
        )
        logins = episode.logins
        await episode.set_fault("camera_down", False)
        await wait_until(
            lambda: episode.logins >= logins + 3, timeout=30, what="three polls after it"
        )
        # Keep the outbox busy dropping well after the episode ended.
        after = full["outbox"]["dropped_total"]
        await wait_status(
            http,
            port,
            lambda d: d["outbox"]["dropped_total"] >= after + 30,
            60,
            "more drops after the episode",
        )
        relay.restore()

        async def episode_arrived() -> bool:
            reports = await stored_reports(http, controller, "EPISODE1")
            down = [i for i, r in enumerate(reports) if "camera_down" in problem_codes(r)]
            return bool(down) and any(
                "camera_down" not in problem_codes(r) for r in reports[down[0] :]
            )

        await wait_until(episode_arrived, timeout=90, what="the episode at the controller")

        async def all_told() -> bool:
            # Drained, nothing more is dropped: the notices at the controller add up exactly.
            doc = await agent_status(http, port)
            return (
                doc is not None and await told(http, controller) == doc["outbox"]["dropped_total"]
            )

        await wait_until(all_told, timeout=60, what="every drop told to the controller")
    finally:
        await agent.stop()
        await relay.stop()
    log = agent.log()
    stopped = re.search(r"this run the outbox took (\d+) reports, dropped (\d+) when full", log)
    assert stopped is not None, log[-3000:]
    taken, dropped = int(stopped.group(1)), int(stopped.group(2))
    assert dropped > 0
    assert await told(http, controller) == dropped, "every drop counted once, in a notice"
    stored: set[str] = set()
    for serial in ("EPISODE1", "REPEAT1", "REPEAT2"):
        stored |= {r["id"] for r in await stored_reports(http, controller, serial)}
    box = Outbox(tmp_path / "agent" / "data" / "outbox", max_bytes=OUTBOX_BYTES)
    await box.open()
    waiting = box.peek(100_000)
    await box.close()
    # A batch on its way at the stop may be stored but not yet acknowledged: it is both.
    unsent = [e for e in waiting if e.kind == "report" and e.report_id not in stored]
    assert taken == len(stored) + dropped + len(unsent), (taken, len(stored), dropped, unsent)
    reports = await stored_reports(http, controller, "EPISODE1")
    start = next(i for i, r in enumerate(reports) if "camera_down" in problem_codes(r))
    end = next(r for r in reports[start:] if "camera_down" not in problem_codes(r))
    assert reports[start]["snapshot"]["health"]["state"] == "fault"
    assert end["snapshot"]["health"]["state"] == "ok"
    assert "Task exception was never retrieved" not in log


async def told(http: aiohttp.ClientSession, controller: ControllerProcess) -> int:
    """How many drops the agent's outbox_dropped notices told the controller, in all."""
    events = await controller_events(http, controller, "agent_notice")
    return sum(e["data"]["count"] for e in events if e["data"]["notice"] == "outbox_dropped")
