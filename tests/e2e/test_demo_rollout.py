"""`polyfleet demo --rollout`: the planned rollout over the demo fleet, then run on the lab."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cli_testkit import TIME_SCALE
from test_demo import wait_for_file
from testkit.crawl import crawl

from polyfleet.controller.domain.rollout import REASON_CODES

#: At most this long: the test stops the demo (Ctrl-C) as soon as its rollout is done.
DEMO_SECONDS = 300


@pytest.mark.timeout(DEMO_SECONDS + 150)
@pytest.mark.expected_seconds(60)
async def test_demo_plans_a_rollout_with_its_exclusions_and_runs_it(tmp_path: Path) -> None:
    """The demo plans over its fleet (reason codes shown), starts it, and all its waves run
    to the end: every unit it ordered is updated and verified."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "polyfleet", "demo", "--rollout", "--time-scale", TIME_SCALE,
        "--duration", str(DEMO_SECONDS), "--data-dir", str(tmp_path / "demo"),
        "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = asyncio.create_task(process.stdout.read())  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 120
        demo: dict[str, Any] = {}
        while not demo.get("rollout_id"):
            demo = await wait_for_file(tmp_path / "demo" / "demo.json", process, deadline)
            if not demo.get("rollout_id"):
                await asyncio.sleep(0.5)  # waits-for: the demo to plan its rollout
            if time.monotonic() > deadline:
                raise AssertionError("the demo planned no rollout")
        headers = {"Authorization": f"Bearer {demo['admin_token']}"}
        url = f"{demo['url']}/api/v1/rollouts/{demo['rollout_id']}"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(url) as response:
                plan = await response.json()
            codes = {r["code"] for d in plan["devices"] for r in d["reasons"]}
            # Those the demo fleet has at any moment; faults may add open_ticket and others.
            assert {
                "already_current",
                "teams_managed",
                "follows_host",
                "not_entitled",
                "excluded_by_admin",
            } <= codes
            assert codes <= set(REASON_CODES)
            async with http.post(
                f"{demo['url']}/api/v1/tokens", json={"role": "viewer", "name": "wall"}
            ) as response:
                viewer = (await response.json())["token"]
            # The demo's timeline at its start: faults coming, a ticket opened by hand, a
            # maintenance window, the rollout started.
            (await crawl(demo["url"], demo["admin_token"])).check()
            ordered = {
                d["serial"]
                for d in plan["devices"]
                if d["status"] not in ("excluded", "held") and d["channel"] == "agent"
            }
            assert ordered, "the demo's rollout orders no unit"
            end = time.monotonic() + DEMO_SECONDS - 30
            rollout = plan
            while time.monotonic() < end and process.returncode is None:
                async with http.get(url) as response:
                    rollout = await response.json()
                if rollout["status"] in ("done", "halted", "aborted"):
                    break
                await asyncio.sleep(2)  # waits-for: every wave updated and verified
            # Every wave ran to its end: each unit the plan ordered was updated by its agent.
            assert rollout["status"] == "done", [
                (d["serial"], d["status"], d.get("notes"), d.get("failures"))
                for d in rollout["devices"]
                if d["serial"] in ordered
            ]
            done = {
                d["serial"]
                for d in rollout["devices"]
                if d["status"] == "done" and d["channel"] == "agent"
            }
            assert done == ordered, rollout["devices"]
            # Later: units updated, the scripted faults and outages under way.
            (await crawl(demo["url"], viewer, language="pl")).check()
        process.send_signal(signal.SIGINT)  # Ctrl-C, as an admin who has seen enough
        code = await asyncio.wait_for(process.wait(), timeout=120)
        text = (await output).decode()
        assert code == 0 and "demo stopped cleanly" in text, text[-3000:]
        assert f"rollout {demo['rollout_id']} planned to" in text
        assert "excluded_by_admin" in text and "follows_host" in text
        assert f"rollout {demo['rollout_id']} started" in text
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
