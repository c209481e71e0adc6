"""The poller against the lab: problem codes, pins, lockout back-off, hung devices."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_testkit import PolledUnit, make_poller
from testkit.site_agents import agent_config, device_config

from polyfleet.agent.drivers.videoos import problems_from_status
from polyfleet.agent.outbox import Outbox
from polyfleet.agent.pins import PinStore
from polyfleet.agent.poller import Poller
from polyfleet.cli import main
from polyfleet.shared.fingerprint import short_fingerprint
from polyfleet.shared.schema import HealthState, ProblemCode, Snapshot
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.testing import make_device


def codes(snapshot: Snapshot) -> set[str]:
    return {p.code.value for p in snapshot.health.problems}


@pytest.mark.parametrize(
    ("fault", "params", "code", "state"),
    [
        ("camera_down", {}, "camera_down", "fault"),
        ("microphone_down", {}, "microphone_down", "fault"),
        ("sip_unregistered", {}, "sip_unregistered", "degraded"),
        ("log_storage_full", {}, "log_storage_full", "degraded"),
        ("reboot_needed", {}, "reboot_needed", "degraded"),
        ("peripheral_disconnected", {}, "peripheral_disconnected", "degraded"),
        ("lan_down", {}, "unreachable", "unreachable"),
        ("lan_degraded", {}, "lan_down", "fault"),
        ("locked_out", {}, "locked_out", "degraded"),
        ("wedged", {}, "api_error", "fault"),
    ],
)
async def test_fault_maps_to_problem_code(
    polled_unit: Callable[..., Awaitable[PolledUnit]],
    fault: str,
    params: dict[str, Any],
    code: str,
    state: str,
) -> None:
    """Each lab fault shows up as its problem code and health state."""
    device, poller, key = await polled_unit("PC1", model="g7500")
    first = await poller.poll_device(key)
    assert first and first[0].health.state is HealthState.OK
    await device.set_fault(fault, True, **params)
    snapshots = await poller.poll_device(key)
    host = snapshots[0]
    assert code in codes(host)
    assert host.health.state.value == state
    assert not device.sessions, "every cycle logs out"


async def test_wedged_rest_is_read_over_ssh(
    polled_unit: Callable[..., Awaitable[PolledUnit]],
) -> None:
    """A wedged REST API falls back to SSH: via ssh, api_error, provider kept from REST."""
    device, poller, key = await polled_unit("WEDGE1", provider="zoom")
    await poller.poll_device(key)
    await device.set_fault("wedged", True)
    await device.set_fault("camera_down", True)
    [snap] = await poller.poll_device(key)
    assert snap.via.value == "ssh"
    assert {"api_error", "camera_down"} <= codes(snap)
    assert snap.provider.value == "zoom"


async def test_e70_behind_g7500_has_own_entry(
    polled_unit: Callable[..., Awaitable[PolledUnit]],
) -> None:
    """The E70 is reported as its own device with host_serial; its loss is a fault for it."""
    device, poller, key = await polled_unit("G7HOST", model="g7500")
    e70 = next(p for p in device.peripherals if p.kind == "e70")
    host, camera = await poller.poll_device(key)
    assert (camera.serial, camera.model.value, camera.host_serial) == (
        e70.serial,
        "studio_e70",
        "G7HOST",
    )
    assert camera.firmware.version == "1.3.0"
    await device.set_fault("e70_down", True)
    host, camera = await poller.poll_device(key)
    assert camera.health.state is HealthState.FAULT
    assert codes(camera) == {"peripheral_disconnected"}
    assert {"camera_down", "peripheral_disconnected"} <= codes(host)


async def test_e70_state_unknown_while_host_answers_only_over_ssh(
    polled_unit: Callable[..., Awaitable[PolledUnit]],
) -> None:
    """Host REST wedged (read over SSH): the E70 is still reported, as state unknown, never ok."""
    device, poller, key = await polled_unit("G7SSH", model="g7500")
    e70 = next(p for p in device.peripherals if p.kind == "e70")
    await poller.poll_device(key)
    await device.set_fault("wedged", True)
    host, camera = await poller.poll_device(key)
    assert host.via.value == "ssh" and camera.via.value == "ssh"
    assert (camera.serial, camera.host_serial, camera.model.value) == (
        e70.serial,
        "G7SSH",
        "studio_e70",
    )
    assert camera.health.state is HealthState.FAULT
    [problem] = camera.health.problems
    assert problem.code is ProblemCode.API_ERROR and "state unknown" in problem.detail
    assert camera.firmware.version == "1.3.0"
    assert {p.state for p in host.peripherals} == {"UNKNOWN"}
    # Still unknown on the next SSH-only cycle, and fine again once REST answers.
    host, camera = await poller.poll_device(key)
    assert camera.health.state is HealthState.FAULT
    await device.set_fault("wedged", False)
    host, camera = await poller.poll_device(key)
    assert camera.health.state is HealthState.OK and host.via.value == "rest"


def test_lan_status_and_neutral_states() -> None:
    """lanStatus not LAN_UP is lan_down; off/unknown states are never problems."""
    problems = problems_from_status(
        {"ipnetwork": "up", "gatekeeper": "off", "calendar": "unknown", "sipserver": "off"},
        lan_state="LAN_DOWN",
    )
    assert [p.code for p in problems] == [ProblemCode.LAN_DOWN]
    assert (
        problems_from_status({"mr.camera": "all_up", "mr.audio": "all_up", "sipserver": "up"}) == []
    )


async def test_auth_failure_is_reported(
    lab_factory: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Bad credentials give auth_failed (the device is known from an earlier poll)."""
    lab = await lab_factory([make_device("AUTH1")])
    device = lab.devices["AUTH1"]
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    os.chmod(wrong, 0o600)
    config = agent_config(tmp_path, [device_config(device, wrong, serial="AUTH1")])
    poller = make_poller(config, http)
    [snap] = await poller.poll_device(next(iter(poller.states)))
    assert codes(snap) == {"auth_failed"} and snap.serial == "AUTH1"


async def test_lockout_backoff_stops_login_attempts(
    lab_factory: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """After a refused login the agent waits out its back-off instead of adding failures."""
    lab = await lab_factory([make_device("LOCK1", lockout_failures=3)])
    device = lab.devices["LOCK1"]
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    os.chmod(wrong, 0o600)
    now = [1000.0]
    config = agent_config(
        tmp_path, [device_config(device, wrong, serial="LOCK1")], lockout_backoff_s=60.0
    )
    poller = make_poller(config, http, clock=lambda: now[0])
    key = next(iter(poller.states))
    for _ in range(5):
        [snap] = await poller.poll_device(key)
        assert codes(snap) == {"auth_failed"}
    assert device.failed_logins == 1, "polls inside the back-off must not try to log in"
    assert not device.locked_out()
    now[0] += 61
    await poller.poll_device(key)
    assert device.failed_logins == 2
    now[0] += 61  # the back-off doubled: still waiting
    await poller.poll_device(key)
    assert device.failed_logins == 2
    now[0] += 60
    [snap] = await poller.poll_device(key)
    # The third failure locks the unit; the agent says so and backs off further.
    assert device.locked_out() and codes(snap) == {"locked_out"}
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"locked_out"}


async def test_locked_out_device_reports_locked_out(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A locked unit gives locked_out and is not asked again until the back-off ends."""
    lab = await lab_factory([make_device("LOCK2", firmware="3.12.0")])
    device = lab.devices["LOCK2"]
    now = [0.0]
    config = agent_config(tmp_path, [device_config(device, password_file)], lockout_backoff_s=30.0)
    poller = make_poller(config, http, clock=lambda: now[0])
    key = next(iter(poller.states))
    await poller.poll_device(key)
    await device.set_fault("locked_out", True)
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"locked_out"}
    await device.set_fault("locked_out", False)
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"locked_out"}, "still backing off: the device was not asked"
    now[0] += 31
    [snap] = await poller.poll_device(key)
    assert snap.health.state is HealthState.OK


async def test_pin_change_waits_for_admin_accept(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession, capsys: Any
) -> None:
    """A new certificate is certificate_changed, told upstream once, untrusted until accepted."""
    lab = await lab_factory([make_device("PIN1", regenerate_cert_on_reboot=True)])
    device = lab.devices["PIN1"]
    config = agent_config(tmp_path, [device_config(device, password_file)])
    outbox = Outbox(config.data_dir / "outbox")
    await outbox.open()
    poller = Poller(config, session=http, outbox=outbox, pins=PinStore(config.data_dir))
    key = next(iter(poller.states))
    await poller.poll_device(key)
    old = device.tls_fingerprint
    assert PinStore(config.data_dir).get(key).tls == old
    await device.reboot()
    await device.wait_power("on")
    assert device.tls_fingerprint != old
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"certificate_changed"}
    record = PinStore(config.data_dir).get(key)
    assert (record.tls, record.pending_tls) == (old, device.tls_fingerprint)
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"certificate_changed"}, "never trusted by itself"
    notices = [e.notice() for e in outbox.peek(100) if e.kind == "notice"]
    assert [n.kind for n in notices] == ["certificate_changed"]
    assert short_fingerprint(device.tls_fingerprint) in notices[0].detail
    assert "pins accept PIN1" in notices[0].detail

    toml = tmp_path / "agent.toml"
    toml.write_text(f'[agent]\ndata_dir = "{config.data_dir}"\n')
    code = await asyncio.to_thread(main, ["agent", "pins", "accept", "PIN1", "--config", str(toml)])
    assert code == 0, capsys.readouterr().err
    [snap] = await poller.poll_device(key)
    assert snap.health.state is HealthState.OK
    assert PinStore(config.data_dir).get(key).tls == device.tls_fingerprint
    await outbox.close()


async def pinned_to_another(
    lab_factory: Any,
    password_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    prefix: str,
    pin: str,
) -> tuple[SimDevice, SimDevice, Poller, str]:
    """Units ``<prefix>1`` and ``<prefix>2``; a poller for the first whose config pins
    (``pin``: tls_fingerprint or ssh_fingerprint) the second's key, pins applied; both
    units, the poller and the first's key."""
    lab = await lab_factory([make_device(f"{prefix}1"), make_device(f"{prefix}2")])
    a, b = lab.devices[f"{prefix}1"], lab.devices[f"{prefix}2"]
    cfg = device_config(a, password_file, serial=a.serial, **{pin: getattr(b, pin)})
    poller = make_poller(agent_config(tmp_path, [cfg]), http)
    await poller.apply_config_pins()
    return a, b, poller, cfg.key


async def test_configured_pin_mismatch(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A pin given in the config that the device does not match is never trusted."""
    a, _, poller, key = await pinned_to_another(
        lab_factory, password_file, tmp_path, http, "CPIN", "tls_fingerprint"
    )
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"certificate_changed"}
    assert not a.sessions and a.failed_logins == 0


async def test_hung_device_does_not_delay_others(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A device answering in 30 s times out alone; the others finish in their own time."""
    lab = await lab_factory([make_device(f"HUNG{i}") for i in range(4)])
    await lab.devices["HUNG0"].set_fault("slow", True, latency_ms=30000)
    configs = [device_config(lab.devices[f"HUNG{i}"], password_file) for i in range(4)]
    poller = make_poller(agent_config(tmp_path, configs, device_timeout_s=1.0, concurrency=2), http)
    durations: dict[str, float] = {}

    async def timed(key: str) -> list[Snapshot]:
        start = time.monotonic()
        result = await poller.poll_device(key)
        durations[key] = time.monotonic() - start
        return result

    results = await asyncio.gather(*(timed(c.key) for c in configs))
    assert results[0] == [] or codes(results[0][0]) == {"unreachable"}
    for cfg, result in zip(configs[1:], results[1:], strict=True):
        assert result[0].health.state is HealthState.OK
        assert durations[cfg.key] < 1.5
    assert durations[configs[0].key] < 2.5


async def test_changed_ssh_host_key_is_certificate_changed(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """When REST is wedged and the SSH host key is not the pinned one, nothing is trusted."""
    a, b, poller, key = await pinned_to_another(
        lab_factory, password_file, tmp_path, http, "SSHPIN", "ssh_fingerprint"
    )
    await poller.poll_device(key)
    await a.set_fault("wedged", True)
    [snap] = await poller.poll_device(key)
    assert codes(snap) == {"certificate_changed"}
    record = PinStore(poller.config.data_dir).get(key)
    assert (record.ssh, record.pending_ssh) == (b.ssh_fingerprint, a.ssh_fingerprint)
    assert record.pending_tls is None


async def test_passwords_never_logged_or_reported(
    lab_factory: Any,
    password_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither good nor bad passwords appear in logs (at DEBUG) or in snapshots."""
    caplog.set_level(logging.DEBUG)
    lab = await lab_factory([make_device("SEC1"), make_device("SEC2"), make_device("SEC3")])
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-Secret-42")
    os.chmod(wrong, 0o600)
    await lab.devices["SEC3"].set_fault("wedged", True)
    configs = [
        device_config(lab.devices["SEC1"], password_file),
        device_config(lab.devices["SEC2"], wrong, serial="SEC2"),
        device_config(lab.devices["SEC3"], password_file),
    ]
    poller = make_poller(agent_config(tmp_path, configs), http)
    reported = await poller.sweep()
    assert {s.serial for s in reported} == {"SEC1", "SEC2", "SEC3"}
    text = caplog.text + "".join(s.model_dump_json() for s in reported)
    assert "lab-admin-pw" not in text and "wrong-Secret-42" not in text
