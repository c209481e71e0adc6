"""``polyfleet agent status`` and the agent's /status and /metrics on its loopback listener."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.site_agents import agent_config, device_config, start_enrolled_agent
from testkit.waiting import wait_until

from polyfleet.agent.config import load_config
from polyfleet.cli import main
from polyfleet.controller.testing import running_controller
from polyfleet.shared.errors import ConfigError
from polyfleet.simulator.testing import make_device


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_running_agent_answers_status_metrics_and_the_cli(
    lab_factory: Any, password_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A healthy agent: /status says so, /metrics has its gauges, `agent status` prints them."""
    lab = await lab_factory([make_device("STATUS1")])
    device = lab.devices["STATUS1"]
    async with running_controller(tmp_path / "ctl") as controller:
        config = agent_config(
            tmp_path,
            [device_config(device, password_file)],
            controller_url=controller.url,
            poll_interval_s=0.2,
            send_interval_s=0.05,
            agent_name="krk-agent",
        )
        service = await start_enrolled_agent(controller, "krk", config)
        try:
            url = service.status_server.url
            assert url.startswith("http://127.0.0.1:")
            async with aiohttp.ClientSession() as http:

                async def healthy() -> dict[str, Any] | None:
                    async with http.get(url + "/status") as resp:
                        doc: dict[str, Any] = await resp.json()
                    ok = doc["uplink"]["ok"] and doc["devices"]["answering"] == 1
                    return doc if ok else None

                doc = await wait_until(healthy, what="a healthy status")
                async with http.get(url + "/metrics") as resp:
                    metrics = await resp.text()
            assert doc["healthy"] is True and doc["problems"] == []
            assert doc["agent"]["name"] == "krk-agent" and doc["outbox"]["disk_ok"] is True
            assert doc["uplink"]["controller_url"] == controller.url
            assert "polyfleet_agent_outbox_disk_ok 1.0" in metrics
            assert 'polyfleet_agent_devices{state="answering"} 1.0' in metrics
            assert "polyfleet_agent_uplink_up 1.0" in metrics
            toml = tmp_path / "agent.toml"
            toml.write_text(
                f'[agent]\ndata_dir = "{config.data_dir}"\n'
                f'status_listen = "{url.removeprefix("http://")}"\n'
            )
            code = await asyncio.to_thread(main, ["agent", "status", "--config", str(toml)])
            out = capsys.readouterr().out
            assert code == 0
            assert "agent krk-agent: healthy" in out and "devices  1 configured, 1 answering" in out
            code = await asyncio.to_thread(
                main, ["agent", "status", "--config", str(toml), "--json"]
            )
            assert code == 0 and json.loads(capsys.readouterr().out)["healthy"] is True
        finally:
            await service.stop()


async def test_status_without_a_running_agent_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening: exit 1, 'cannot reach the agent's status at URL', code unreachable."""
    port = closed_port()
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\ndata_dir = "{tmp_path}"\nstatus_listen = "127.0.0.1:{port}"\n')
    code = await asyncio.to_thread(main, ["agent", "status", "--config", str(toml), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    expected = f"cannot reach the agent's status at http://127.0.0.1:{port}/status"
    assert expected in captured.err and "connection refused" in captured.err
    assert json.loads(captured.out)["error"]["code"] == "unreachable"


def test_status_listen_off_or_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status_listen "off" turns the listener off (status says so); a bad value names the key."""
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\ndata_dir = "{tmp_path}"\nstatus_listen = "off"\n')
    assert load_config(toml).status_listen == ""
    assert main(["agent", "status", "--config", str(toml)]) == 2
    assert "agent.status_listen is off" in capsys.readouterr().err
    toml.write_text(f'[agent]\ndata_dir = "{tmp_path}"\nstatus_listen = "9180"\n')
    with pytest.raises(ConfigError, match=r"agent\.status_listen: '9180' is not HOST:PORT"):
        load_config(toml)
