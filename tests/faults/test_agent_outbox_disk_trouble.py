"""An agent whose outbox disk fills up or turns read-only says so, keeps reporting, recovers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from agent_site import (
    agent_metrics,
    controller_events,
    start_reporting_agent,
    stored_reports,
    wait_status,
)
from faultkit import ControllerProcess, SmallDisk
from testkit.processes import polyfleet
from testkit.waiting import wait_until

from polyfleet.simulator.testing import make_device


def notices(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [e["data"]["detail"] for e in events if e["data"]["notice"] == kind]


async def keep_full(disk: SmallDisk, stop: asyncio.Event) -> None:
    """Another program keeps the disk full: whatever the agent frees is taken again."""
    while not stop.is_set():
        with contextlib.suppress(OSError):  # full already: nothing to take
            await asyncio.to_thread(disk.fill)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)  # waits-for: the next refill (or the end)


async def test_full_then_read_only_outbox_disk_is_reported_and_survived(
    controllers: Any,
    lab_factory: Any,
    password_file: Path,
    http: aiohttp.ClientSession,
    small_disk: Callable[[str], SmallDisk],
    tmp_path: Path,
) -> None:
    """Full, then read-only: notice, status, metric and log say so; reports flow; it recovers."""
    disk = small_disk("8m")
    lab = await lab_factory([make_device("DISK1"), make_device("DISK2")])
    device = lab.devices["DISK1"]
    controller: ControllerProcess = await controllers.start(
        config="[store]\nreport_history = 100000\n"
    )
    agent, config, port = await start_reporting_agent(
        http,
        controller,
        lab,
        password_file,
        tmp_path / "agent",
        data_dir=disk.path / "agent-data",
    )
    stop_filling = asyncio.Event()
    filler: asyncio.Task[None] | None = None
    try:
        # -- the disk fills up ------------------------------------------------------------
        filler = asyncio.create_task(keep_full(disk, stop_filling))
        failing = await wait_status(
            http, port, lambda d: not d["outbox"]["disk_ok"], 60, "the outbox failing"
        )
        assert not failing["healthy"]
        assert "no space left on the disk" in failing["outbox"]["problem"]
        assert str(disk.path / "agent-data" / "outbox") in failing["outbox"]["problem"]
        assert "keeping new reports in memory" in failing["outbox"]["action"]
        assert any(p.startswith("outbox: cannot write to") for p in failing["problems"])
        metrics = await agent_metrics(http, port)
        assert metrics["polyfleet_agent_outbox_disk_ok"] == 0
        assert metrics["polyfleet_agent_outbox_write_failures_total"] >= 1
        assert metrics["polyfleet_agent_healthy"] == 0
        code, out, err = await polyfleet("agent", "status", "--config", str(config), expect=None)
        assert code == 0, err
        assert "PROBLEM outbox: cannot write to" in out and "no space left" in out

        async def told(kind: str, words: str) -> list[str]:
            found = notices(await controller_events(http, controller, "agent_notice"), kind)
            return [n for n in found if words in n]

        [failing_notice] = await wait_until(
            lambda: told("outbox_failing", "no space left on the disk"),
            timeout=60,
            what="the notice",
        )
        assert "keeping new reports in memory" in failing_notice
        # Reports still flow, from memory: a fault raised now reaches the controller.
        await device.set_fault("camera_down", True)

        async def fault_arrived() -> bool:
            reports = await stored_reports(http, controller, "DISK1")
            return any(
                p["code"] == "camera_down"
                for r in reports[-5:]
                for p in r["snapshot"]["health"]["problems"]
            )

        await wait_until(fault_arrived, timeout=60, what="a report taken on the full disk")
        # -- the disk has room again ----------------------------------------------------
        stop_filling.set()
        await filler
        disk.free()
        recovered = await wait_status(
            http, port, lambda d: d["outbox"]["disk_ok"] and d["healthy"], 60, "recovery"
        )
        assert recovered["outbox"]["memory_entries"] == 0 and recovered["problems"] == []
        await wait_until(
            lambda: told("outbox_recovered", "takes writes again"),
            timeout=60,
            what="the recovery notice",
        )
        assert (await agent_metrics(http, port))["polyfleet_agent_outbox_disk_ok"] == 1

        # -- the disk turns read-only -----------------------------------------------------
        async def remounted_read_only() -> bool:
            return disk.remount(read_only=True).returncode == 0

        # A remount fails while a file is open for writing: the outbox holds none between
        # writes, so it soon succeeds.
        await wait_until(remounted_read_only, timeout=30, what="a read-only remount")
        read_only = await wait_status(
            http, port, lambda d: not d["outbox"]["disk_ok"], 60, "the read-only disk seen"
        )
        assert "the file system is read-only" in read_only["outbox"]["problem"]
        await wait_until(
            lambda: told("outbox_failing", "read-only"), timeout=60, what="the read-only notice"
        )
        await device.set_fault("camera_down", False)

        async def cleared_arrived() -> bool:
            reports = await stored_reports(http, controller, "DISK1")
            return not reports[-1]["snapshot"]["health"]["problems"]

        await wait_until(cleared_arrived, timeout=60, what="a report taken on the read-only disk")
        assert disk.remount(read_only=False).returncode == 0
        await wait_status(http, port, lambda d: d["healthy"], 60, "recovery from read-only")
    finally:
        stop_filling.set()
        if filler is not None:
            await filler
        await agent.stop()
    log = agent.log()
    assert "Task exception was never retrieved" not in log
    assert "Traceback" not in log, log[-4000:]
    assert log.count("(no space left on the disk); keeping new reports in memory") == 1
    assert "the file system is read-only" in log
