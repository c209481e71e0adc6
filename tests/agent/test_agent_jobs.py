"""Jobs against the lab: a wedged unit rebooted over SSH, never in a call, no camera alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from agent_testkit import agent_config, device_config, make_poller, wait_for

from polyfleet.agent.jobs import JobRunner
from polyfleet.agent.uplink import Uplink
from polyfleet.shared.schema import HealthState, Job, JobKind
from polyfleet.simulator.testing import make_device


def job(serial: str, kind: JobKind) -> Job:
    return Job(
        id=f"job-{serial}-{kind.value}", kind=kind, serial=serial, created_at=datetime.now(UTC)
    )


async def test_wedged_unit_is_rebooted_over_ssh_but_not_in_a_call(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """REST wedged: the call check and the reboot go over SSH; in a call it is refused."""
    lab = await lab_factory([make_device("WREBOOT", model="g7500")])
    device = lab.devices["WREBOOT"]
    poller = make_poller(agent_config(tmp_path, [device_config(device, password_file)]), http)
    key = next(iter(poller.states))
    await poller.poll_device(key)
    # Results are posted by _run, not execute: this uplink is never called.
    runner = JobRunner(poller, Uplink("http://127.0.0.1:9", session=http))
    await device.set_fault("wedged", True)
    await device.start_call()
    refused = await runner.execute(job("WREBOOT", JobKind.REBOOT))
    assert (refused.status, refused.detail) == ("refused", "device is in a call")
    assert device.power == "on" and device.has_fault("wedged")
    await device.end_call()
    done = await runner.execute(job("WREBOOT", JobKind.REBOOT))
    assert done.status == "done", done.detail
    await wait_for(
        lambda: device.power == "on" and not device.has_fault("wedged"), what="unit back up"
    )
    host, _camera = await poller.poll_device(key)
    assert host.via.value == "rest" and host.health.state is HealthState.OK


async def test_camera_reboot_is_refused_naming_its_host(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A reboot ordered for an E70 is refused, naming the host to reboot; the host keeps running."""
    lab = await lab_factory([make_device("CAMHOST", model="g7500")])
    device = lab.devices["CAMHOST"]
    e70 = next(p.serial for p in device.peripherals if p.kind == "e70")
    poller = make_poller(agent_config(tmp_path, [device_config(device, password_file)]), http)
    await poller.poll_device(next(iter(poller.states)))
    runner = JobRunner(poller, Uplink("http://127.0.0.1:9", session=http))
    result = await runner.execute(job(e70, JobKind.REBOOT))
    assert result.status == "refused" and "reboot CAMHOST" in result.detail
    assert device.power == "on"
