"""Helpers for agent tests: agent configs and pollers pointed at lab devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from agent.config import AgentConfig, DeviceConfig, Secret
from agent.pins import PinStore
from agent.poller import Poller
from simulator.device import SimDevice


def device_config(device: SimDevice, password_file: Path, **overrides: Any) -> DeviceConfig:
    fields: dict[str, Any] = {
        "host": device.address,
        "rest_port": device.rest_port,
        "ssh_port": device.ssh_port,
        "user": "admin",
        "password": Secret(file=password_file, origin="test"),
    }
    fields.update(overrides)
    return DeviceConfig(**fields)


def agent_config(tmp_path: Path, devices: list[DeviceConfig], **overrides: Any) -> AgentConfig:
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "agent",
        "devices": tuple(devices),
        "poll_interval_s": 60.0,
        "jitter_s": 0.0,
        "device_timeout_s": 5.0,
    }
    fields.update(overrides)
    return AgentConfig(**fields)


def make_poller(config: AgentConfig, http: aiohttp.ClientSession, **kwargs: Any) -> Poller:
    return Poller(config, session=http, outbox=None, pins=PinStore(config.data_dir), **kwargs)
