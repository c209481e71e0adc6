"""The units' admin sessions: read and reported each poll, and none of the agent's left open."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from agent_testkit import RecordingController, make_poller
from test_agent_service import agent_toml
from testkit.site_agents import agent_config, device_config, write_credential
from testkit.waiting import wait_until

from polyfleet.agent.drivers.videoos import admin_sessions
from polyfleet.agent.transport.ledger import LEDGER_FILE, SessionLedger
from polyfleet.simulator.testing import make_device


async def test_poll_reports_every_session_and_marks_its_own(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A poll reports the unit's sessions: its own marked, another admin's with who, from
    where, how and since when, and no session id (a credential) in the report."""
    lab = await lab_factory([make_device("SESS1", firmware="4.6.2")])
    device = lab.devices["SESS1"]
    other = device.open_session(user="jan", address="192.0.2.44", kind="ssh")
    config = agent_config(tmp_path, [device_config(device, password_file)])
    poller = make_poller(config, http, ledger=SessionLedger(config.data_dir))
    [snapshot] = await poller.sweep()
    assert snapshot.sessions is not None
    shown = [(s.agent, s.user, s.address, s.kind) for s in snapshot.sessions]
    assert shown == [(True, "admin", "127.0.0.1", "web"), (False, "jan", "192.0.2.44", "ssh")]
    assert snapshot.sessions[1].since is not None
    assert int(snapshot.sessions[1].since.timestamp()) == int(other.started_at)
    assert other.session_id not in snapshot.model_dump_json()
    assert list(device.sessions) == [other.session_id], "the poll logged out"
    ledger = json.loads((config.data_dir / LEDGER_FILE).read_text())
    assert ledger == {"sessions": []}


def test_hostile_session_lists_are_bounded() -> None:
    """Odd or hostile session lists give what can be read, bounded, or None for no list."""
    hostile: list[Any] = [
        None,
        42,
        {"sessionId": 7, "userId": "x" * 5000, "location": {"ip": "10.0.0.1"}},
        {"userId": "eve", "clientType": "TELNET", "startTime": "soon", "location": "203.0.113.9"},
        {"userId": "eve", "clientType": "SSH", "startTime": 1e30},
        *({"sessionId": f"PS{n}", "location": "203.0.113.9"} for n in range(500)),
    ]
    found = admin_sessions(hostile, is_ours=lambda sid: sid == "PS100", user="admin", location="")
    assert found is not None and len(found) == 64
    assert found[0].agent and not any(s.agent for s in found[1:])
    assert len(found[1].user) == 128 and found[1].address == ""
    assert (found[2].kind, found[2].since) == ("other", None)
    assert (found[3].kind, found[3].since) == ("ssh", None)
    assert admin_sessions("CONTENT_IDLE", is_ours=bool, user="admin", location="") is None
    no_ids = [{"userId": "admin", "location": "10.0.0.9"}, {"userId": "admin", "location": "x"}]
    mine = admin_sessions(no_ids, is_ours=bool, user="admin", location="10.0.0.9")
    assert mine is not None and [s.agent for s in mine] == [True, False]


async def test_killed_mid_poll_the_next_run_logs_its_session_out(
    lab_factory: Any, password_file: Path, tmp_path: Path
) -> None:
    """An agent killed with SIGKILL while a poll holds a session: the next run logs that
    session out, and the unit holds no session of the agent's afterwards."""
    lab = await lab_factory([make_device("SESS2", firmware="4.6.2")])
    device = lab.devices["SESS2"]
    # Each answer takes a while: the poll holds its session long enough to be killed in it.
    await device.set_fault("slow", True, latency_ms=300)
    admin = device.open_session(user="jan", address="192.0.2.44")
    controller = RecordingController()
    await controller.start()
    data_dir = tmp_path / "agent"
    toml = tmp_path / "agent.toml"
    agent_toml(toml, data_dir, controller.url, [device], password_file)
    write_credential(data_dir / "credential.json", controller.url)
    ledger = data_dir / LEDGER_FILE
    argv = [sys.executable, "-P", "-m", "polyfleet", "agent", "run", "--config", str(toml)]

    def agent_sessions() -> set[str]:
        return {sid for sid, s in device.sessions.items() if not s.held}

    def written() -> set[str]:
        try:
            return {e["session_id"] for e in json.loads(ledger.read_text())["sessions"]}
        except (OSError, ValueError):
            return set()

    first = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(
            lambda: bool(agent_sessions()) and agent_sessions() <= written(),
            what="a poll holding a session it wrote down",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
    left = agent_sessions()
    assert left, "the killed agent left its session open"
    await device.set_fault("slow", False)
    controller.up = True
    second = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(lambda: not left & set(device.sessions), what="the left session ended")
        await wait_until(lambda: bool(controller.snapshots), what="a report")
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
        await controller.stop()
    assert second.returncode == 0
    assert agent_sessions() == set(), "no session of the agent's on the unit"
    assert list(device.sessions) == [admin.session_id], "another admin's session is not touched"
    assert written() == set()
    reported = [s for s in controller.snapshots[-1]["sessions"] if not s["agent"]]
    assert [(s["user"], s["address"]) for s in reported] == [("jan", "192.0.2.44")]
