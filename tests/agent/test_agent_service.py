"""The running agent: controller outage then recovery, and kill -9 with nothing lost."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_testkit import RecordingController
from testkit.site_agents import agent_config, device_config, lab_agent_config, write_credential
from testkit.waiting import wait_until

from polyfleet.agent.service import AgentService
from polyfleet.simulator.testing import make_device


async def test_controller_outage_every_report_delivered_once(
    lab_factory: Any, password_file: Path, tmp_path: Path
) -> None:
    """Reports taken while the controller is down all arrive once it is back, once, in order."""
    lab = await lab_factory([make_device(f"OUT{i}") for i in range(3)])
    controller = RecordingController()
    await controller.start()
    config = lab_agent_config(tmp_path, lab, password_file, controller.url)
    write_credential(config.credential_path, controller.url)
    service = AgentService(config)
    await service.start()
    try:
        await wait_until(lambda: len(service.outbox) >= 12, what="reports spooled while down")
        taken_while_down = {e.report_id for e in service.outbox.peek(500) if e.kind == "report"}
        controller.up = True
        await wait_until(lambda: taken_while_down <= set(controller.received), what="delivery")
    finally:
        await service.stop()
        await controller.stop()
    assert all(count == 1 for count in controller.received.values())
    seqs = [int(i.rsplit("-", 1)[1]) for i in controller.received]
    assert seqs == sorted(seqs), "sent in order"
    assert {n["kind"] for n in controller.notices} >= {"agent_started"}


def agent_toml(
    path: Path, data_dir: Path, url: str, devices: list[Any], password_file: Path
) -> None:
    lines = [
        "[agent]",
        f'data_dir = "{data_dir}"',
        "poll_interval_s = 0.2",
        "jitter_s = 0.05",
        "device_timeout_s = 5",
        "[controller]",
        f'url = "{url}"',
        "send_interval_s = 0.05",
        "backoff_max_s = 0.2",
        "[defaults]",
        f'password_file = "{password_file}"',
    ]
    for d in devices:
        lines += [
            "[[devices]]",
            f'host = "{d.address}"',
            f"rest_port = {d.rest_port}",
            f"ssh_port = {d.ssh_port}",
        ]
    path.write_text("\n".join(lines) + "\n")


def spooled_ids(outbox_dir: Path) -> set[str]:
    ids = set()
    for segment in outbox_dir.glob("seg-*.jsonl"):
        for line in segment.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a torn last line never counted as taken
            if doc["kind"] == "report":
                ids.add(doc["data"]["id"])
    return ids


async def test_kill_9_and_restart_loses_nothing(
    lab_factory: Any, password_file: Path, tmp_path: Path
) -> None:
    """An agent process killed with SIGKILL restarts and delivers every report it had taken."""
    lab = await lab_factory([make_device(f"KILL{i}") for i in range(3)])
    controller = RecordingController()
    await controller.start()
    data_dir = tmp_path / "agent"
    toml = tmp_path / "agent.toml"
    agent_toml(toml, data_dir, controller.url, list(lab.devices.values()), password_file)
    write_credential(data_dir / "credential.json", controller.url)
    argv = [sys.executable, "-P", "-m", "polyfleet", "agent", "run", "--config", str(toml)]
    first = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(
            lambda: len(spooled_ids(data_dir / "outbox")) >= 10, what="spooled reports"
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
    taken = spooled_ids(data_dir / "outbox")
    controller.up = True
    second = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(lambda: taken <= set(controller.received), what="delivery after restart")
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
        await controller.stop()
    assert all(count == 1 for count in controller.received.values())
    assert second.returncode == 0


async def test_enroll_command_stores_credential_0600(tmp_path: Path) -> None:
    """`agent enroll` against the real controller stores the credential with mode 0600."""
    from polyfleet.cli import main
    from polyfleet.controller.testing import running_controller

    async with running_controller(tmp_path / "ctl") as controller:
        code = await controller.enrollment_code("krk")
        target = tmp_path / "cred.json"
        rc = await asyncio.to_thread(
            main,
            [
                "agent",
                "enroll",
                "--controller",
                controller.url,
                "--code",
                code,
                "--credential-file",
                str(target),
            ],
        )
        assert rc == 0
        assert target.stat().st_mode & 0o777 == 0o600
        stored = json.loads(target.read_text())
        assert stored["site_id"] == "krk" and stored["token"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                controller.url + "/api/v1/agent/jobs",
                headers={"Authorization": f"Bearer {stored['token']}"},
            ) as resp,
        ):
            assert resp.status == 200


async def test_stop_mid_poll_is_quiet_and_logs_out(
    lab_factory: Any, password_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping while polls are in flight logs no error and leaves no device session open."""
    caplog.set_level(logging.INFO)
    lab = await lab_factory([make_device("STOP1"), make_device("STOP2", model="g7500")])
    for device in lab.devices.values():
        await device.set_fault("slow", True, latency_ms=150)
    config = agent_config(
        tmp_path,
        [device_config(d, password_file) for d in lab.devices.values()],
        poll_interval_s=0.05,
    )
    service = AgentService(config)
    await service.start()
    try:
        await wait_until(
            lambda: all(d.sessions for d in lab.devices.values()), what="polls logged in"
        )
    finally:
        await service.stop()
    # The lab may grumble about hung-up clients; the agent and its scheduler must not.
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("polyfleet.agent", "apscheduler"))
    ]
    assert not errors, [r.getMessage() for r in errors]
    assert not any(d.sessions for d in lab.devices.values()), "a cancelled poll still logs out"


async def test_enroll_refuses_before_spending_the_code_when_it_cannot_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`agent enroll` with nowhere to store the credential fails first; the code still works."""
    from polyfleet.cli import main
    from polyfleet.controller.testing import running_controller

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    async with running_controller(tmp_path / "ctl") as controller:
        code = await controller.enrollment_code("krk")

        def enroll(target: Path) -> int:
            argv = ["agent", "enroll", "--controller", controller.url, "--code", code]
            return main([*argv, "--credential-file", str(target)])

        rc = await asyncio.to_thread(enroll, blocker / "cred.json")
        err = capsys.readouterr().err
        assert rc == 2 and "cannot store the agent credential" in err
        assert "was not used" in err and len(err.strip().splitlines()) == 1
        good = tmp_path / "good" / "cred.json"
        assert await asyncio.to_thread(enroll, good) == 0
        assert good.stat().st_mode & 0o777 == 0o600
