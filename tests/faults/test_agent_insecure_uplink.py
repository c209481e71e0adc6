"""A plain http:// controller URL: refused off this machine unless allowed, warned about on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faultkit import AgentProcess, ControllerProcess, get_json
from testkit.processes import polyfleet
from testkit.site_agents import agent_config, device_config, write_credential
from testkit.waiting import wait_until

from polyfleet.agent.service import AgentService
from polyfleet.simulator.testing import make_device

#: Never contacted: every refusal happens before anything is sent (tests stay on loopback).
REMOTE = "http://10.20.30.40:8080"


def agent_toml(folder: Path, url: str, *, extra: str = "", devices: str = "") -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f'[agent]\ndata_dir = "{folder / "data"}"\npoll_interval_s = 0.3\njitter_s = 0\n'
        f'[controller]\nurl = "{url}"\nsend_interval_s = 0.1\n{extra}{devices}',
        encoding="utf-8",
    )
    return path


async def test_agent_run_refuses_plain_http_to_another_machine(tmp_path: Path) -> None:
    """`agent run` with http:// off loopback exits 2 naming key and way out; nothing runs."""
    config = agent_toml(tmp_path, REMOTE)
    code, out, err = await polyfleet("agent", "run", "--config", str(config), expect=None)
    assert code == 2, err
    assert out == ""
    assert f"{config}: controller.url: {REMOTE} is plain http:// to 10.20.30.40" in err
    assert "unencrypted" in err and "--allow-insecure-uplink" in err
    assert "controller.allow_insecure_uplink = true" in err
    assert not (tmp_path / "data").exists(), "no outbox, no polls for a refused config"


async def test_agent_enroll_refuses_plain_http_before_the_code_is_sent(tmp_path: Path) -> None:
    """`agent enroll --controller http://10...` exits 2 before any traffic; the flag lets it try."""
    target = tmp_path / "credential.json"
    argv = ["agent", "enroll", "--controller", REMOTE, "--code", "ABCD-EFGH-1234"]
    code, _out, err = await polyfleet(*argv, "--credential-file", str(target), expect=None)
    assert code == 2 and "is plain http:// to 10.20.30.40" in err, err
    assert "--allow-insecure-uplink" in err and not target.exists()
    # Allowed, it gets as far as the next check (a folder it cannot write): still no traffic.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    allowed = [*argv, "--allow-insecure-uplink", "--credential-file", str(blocker / "c.json")]
    code, _out, err = await polyfleet(*allowed, expect=None)
    assert code == 2 and "cannot store the agent credential" in err, err
    assert "plain http://" not in err


@pytest.mark.parametrize("how", ["flag", "config key"])
async def test_allowed_insecure_uplink_runs_and_says_so(
    tmp_path: Path, lab_factory: Any, password_file: Path, how: str
) -> None:
    """With --allow-insecure-uplink (or the config key) the agent runs, warning in its log."""
    extra = "allow_insecure_uplink = true\n" if how == "config key" else ""
    config = agent_toml(
        tmp_path,
        REMOTE,
        extra=extra,
        devices=f'[defaults]\npassword_file = "{password_file}"\n',
    )
    agent = AgentProcess(config, flags=["--allow-insecure-uplink"] if how == "flag" else [])
    # Not enrolled (no credential, no code): it polls but never contacts the controller.
    await agent.start()
    try:
        await wait_until(
            lambda: "not enrolled" in agent.log(),
            timeout=60,
            what="the agent running, not enrolled",
        )
    finally:
        await agent.stop()
    text = agent.log()
    assert agent.process is not None and agent.process.returncode == 0, text
    assert f"the controller URL {REMOTE} is plain http:// to 10.20.30.40, allowed by " in text
    assert "cross the network unencrypted" in text


async def test_loopback_http_works_with_a_warning(
    controller: ControllerProcess,
    lab_factory: Any,
    password_file: Path,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """An agent on http://127.0.0.1 enrolls and reports; enroll and run both warn once."""
    lab = await lab_factory([make_device("UPLINK1")])
    device = lab.devices["UPLINK1"]
    credential = tmp_path / "credential.json"
    code, out, err = await polyfleet(
        "agent",
        "enroll",
        "--controller",
        controller.url,
        "--code",
        controller.codes["krk"][0],
        "--credential-file",
        str(credential),
        expect=None,
    )
    assert code == 0, err
    assert "enrolled as agent" in out
    assert err.count("warning:") == 1 and "plain http://" in err and "this machine" in err
    config = agent_toml(
        tmp_path,
        controller.url,
        extra=f'credential_file = "{credential}"\n',
        devices=(
            f'[defaults]\npassword_file = "{password_file}"\n'
            f'[[devices]]\nhost = "{device.address}"\nrest_port = {device.rest_port}\n'
            f"ssh_port = {device.ssh_port}\n"
        ),
    )
    agent = AgentProcess(config)
    await agent.start()
    try:

        async def reported() -> bool:
            answer = await get_json(http, controller.url, "/api/v1/devices", controller.admin_token)
            return any(d["serial"] == "UPLINK1" for d in answer.body.get("devices", []))

        await wait_until(reported, timeout=60, what="the device at the controller")
    finally:
        await agent.stop()
    text = agent.log()
    assert text.count(f"the controller URL {controller.url} is plain http://") == 1, text
    assert "acceptable only because the controller is on this machine" in text


async def test_stored_credential_url_off_loopback_is_refused_and_reports_stay(
    tmp_path: Path, lab_factory: Any, password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A credential whose URL is http:// off loopback (config without url) sends nothing."""
    caplog.set_level(logging.INFO, logger="polyfleet")
    lab = await lab_factory([make_device("UPLINK2")])
    device = lab.devices["UPLINK2"]
    config = agent_config(
        tmp_path, [device_config(device, password_file)], poll_interval_s=0.2, send_interval_s=0.05
    )
    write_credential(config.credential_path, REMOTE)
    service = AgentService(config)
    await service.start()
    try:
        await wait_until(
            lambda: any("not sending reports" in r.getMessage() for r in caplog.records),
            what="the refusal logged",
        )
        await wait_until(lambda: len(service.outbox) >= 3, what="reports kept in the outbox")
    finally:
        await service.stop()
    refusals = [r for r in caplog.records if "not sending reports" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    message = refusals[0].getMessage()
    assert f"{config.credential_path}: controller_url: {REMOTE} is plain http://" in message
    assert service.batches_sent == 0
