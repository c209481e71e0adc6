"""Site agents in tests: configured for lab devices, enrolled at a running test controller."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polyfleet.agent.config import AgentConfig, DeviceConfig, Secret
from polyfleet.agent.service import AgentService
from polyfleet.agent.uplink import Credential
from polyfleet.controller.testing import RunningController
from polyfleet.shared.schema import EnrollResponse
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import TEST_PASSWORD


def lab_password_file(folder: Path) -> Path:
    """The lab devices' admin password in an owner-only file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "device-password"
    path.write_text(TEST_PASSWORD + "\n")
    os.chmod(path, 0o600)
    return path


def device_config(device: SimDevice, password_file: Path, **overrides: Any) -> DeviceConfig:
    """How an agent reaches ``device`` of a lab, as admin with the password in the file."""
    fields: dict[str, Any] = {
        "host": device.address,
        "rest_port": device.rest_port,
        "ssh_port": device.ssh_port,
        "user": "admin",
        "password": Secret(file=password_file, origin="test"),
    }
    fields.update(overrides)
    return DeviceConfig(**fields)


def agent_config(folder: Path, devices: list[DeviceConfig], **overrides: Any) -> AgentConfig:
    """An agent with its data in ``folder/agent`` that polls ``devices`` every minute unless
    told otherwise, without jitter, its status on a port of its own."""
    fields: dict[str, Any] = {
        "data_dir": folder / "agent",
        "devices": tuple(devices),
        "poll_interval_s": 60.0,
        "jitter_s": 0.0,
        "device_timeout_s": 5.0,
        # Many agents run at once in tests: each takes a free port for its status.
        "status_listen": "127.0.0.1:0",
    }
    fields.update(overrides)
    return AgentConfig(**fields)


def write_credential(path: Path, url: str) -> None:
    """A credential for an agent that never enrolled, naming ``url`` as its controller."""
    Credential(
        controller_url=url,
        agent_id="agent-1",
        site_id="test-site",
        token="t" * 32,
        poll_interval_s=60,
    ).save(path)


def lab_agent_config(
    folder: Path, lab: Lab, password_file: Path, controller_url: str, **overrides: Any
) -> AgentConfig:
    """An agent (``agent_config``) for every device of ``lab``, reporting to
    ``controller_url`` at a pace a test can watch: polls every 0.2 s, sends every 0.05 s,
    backs off at most 0.2 s, unless ``overrides`` say otherwise."""
    fields: dict[str, Any] = {
        "controller_url": controller_url,
        "poll_interval_s": 0.2,
        "send_interval_s": 0.05,
        "backoff_max_s": 0.2,
    }
    fields.update(overrides)
    devices = [device_config(device, password_file) for device in lab.devices.values()]
    return agent_config(folder, devices, **fields)


async def enroll_agent(
    controller: RunningController,
    site: str,
    config: AgentConfig,
    *,
    agent_name: str = "test-agent",
) -> EnrollResponse:
    """Enroll an agent of ``site`` (created if missing) and save its credential where the
    agent of ``config`` looks for it, naming ``config.controller_url`` as its controller."""
    enrolled = await controller.enroll(site, agent_name=agent_name)
    Credential(
        controller_url=config.controller_url,
        agent_id=enrolled.agent_id,
        site_id=enrolled.site_id,
        token=enrolled.token,
        poll_interval_s=enrolled.poll_interval_s,
    ).save(config.credential_path)
    return enrolled


async def start_enrolled_agent(
    controller: RunningController,
    site: str,
    config: AgentConfig,
    *,
    agent_name: str = "test-agent",
) -> AgentService:
    """An agent of ``site`` enrolled at ``controller`` and started; the caller stops it."""
    await enroll_agent(controller, site, config, agent_name=agent_name)
    service = AgentService(config)
    await service.start()
    return service
