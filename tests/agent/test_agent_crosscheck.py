"""SSH cross-checks while REST is healthy: agreement is silent, a mismatch is a problem."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_testkit import SwitchableLink, make_poller
from testkit.site_agents import agent_config, device_config

from polyfleet.agent.pins import PinStore
from polyfleet.agent.poller import Poller
from polyfleet.shared.schema import HealthState, ProblemCode
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.testing import make_device


@pytest.mark.parametrize(
    ("model", "firmware"),
    [
        ("g7500", "4.1.0"),
        ("studio_x30", "3.12.0"),
        ("studio_x70", "4.1.0_00"),
        ("studio_x50", "4.6.2"),
    ],
)
async def test_cross_check_every_nth_read_agrees_and_pins_the_host_key(
    lab_factory: Any,
    password_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    model: str,
    firmware: str,
) -> None:
    """A healthy unit cross-checked over SSH stays ok; its host key gets pinned; no session left."""
    lab = await lab_factory([make_device("XCHK1", model=model, firmware=firmware)])
    device = lab.devices["XCHK1"]
    config = agent_config(tmp_path, [device_config(device, password_file)], ssh_cross_check_every=1)
    poller = make_poller(config, http)
    key = next(iter(poller.states))
    assert PinStore(config.data_dir).get(key).ssh is None
    for _ in range(2):
        host = (await poller.poll_device(key))[0]
        assert host.via.value == "rest"
        assert host.health.state is HealthState.OK, host.health
    assert PinStore(config.data_dir).get(key).ssh == device.ssh_fingerprint
    assert not device.sessions


async def test_cross_check_mismatch_is_reported_with_detail(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """REST and SSH at one address naming different units: api_error naming both serials."""
    lab = await lab_factory([make_device("RESTUNIT"), make_device("SSHUNIT", firmware="4.1.0")])
    rest_dev, ssh_dev = lab.devices["RESTUNIT"], lab.devices["SSHUNIT"]
    # One address whose HTTPS is one unit and whose SSH is another (e.g. a wrong port forward).
    rest_link = SwitchableLink(rest_dev.address, rest_dev.rest_port)
    ssh_link = SwitchableLink(ssh_dev.address, ssh_dev.ssh_port)
    for link in (rest_link, ssh_link):
        await link.start()
        link.up = True
    try:
        config = agent_config(
            tmp_path,
            [
                device_config(
                    rest_dev,
                    password_file,
                    host="127.0.0.1",
                    rest_port=rest_link.port,
                    ssh_port=ssh_link.port,
                )
            ],
            ssh_cross_check_every=1,
        )
        poller = make_poller(config, http)
        [snap] = await poller.poll_device(next(iter(poller.states)))
    finally:
        await rest_link.stop()
        await ssh_link.stop()
    assert snap.serial == "RESTUNIT" and snap.via.value == "rest"
    details = [p.detail for p in snap.health.problems if p.code is ProblemCode.API_ERROR]
    assert "SSH cross-check: serial SSHUNIT over SSH, RESTUNIT over REST" in details
    assert any(d.startswith("SSH cross-check: firmware 4.1.0 over SSH, 4.2.2") for d in details)
    assert snap.health.state is HealthState.FAULT


async def test_cross_check_when_rest_names_another_unit(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With periodic checks off, a REST answer naming an unexpected serial is checked over SSH."""
    lab = await lab_factory([make_device("SWAPPED1"), make_device("STEADY1")])
    swapped, steady = lab.devices["SWAPPED1"], lab.devices["STEADY1"]
    config = agent_config(
        tmp_path,
        [
            device_config(swapped, password_file, serial="OLDUNIT"),
            device_config(steady, password_file, serial="STEADY1"),
        ],
        ssh_cross_check_every=0,
    )
    poller = make_poller(config, http)
    for key in poller.states:
        [snap] = await poller.poll_device(key)
        assert snap.health.state is HealthState.OK
    pins = PinStore(config.data_dir)
    by_serial = {s.serial: pins.get(k) for k, s in poller.states.items()}
    assert by_serial["SWAPPED1"].ssh == swapped.ssh_fingerprint
    assert by_serial["STEADY1"].ssh is None, "no SSH visit when REST says nothing odd"


@contextlib.asynccontextmanager
async def relayed_poller(
    device: SimDevice,
    password_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    *,
    ssh_port: int,
    **device_options: Any,
) -> AsyncIterator[tuple[Poller, str]]:
    """A poller reaching ``device`` at 127.0.0.1, REST through a relay to it and SSH on
    ``ssh_port``, cross-checking over SSH on every poll; and the device's key."""
    rest_relay = SwitchableLink(device.address, device.rest_port)
    await rest_relay.start()
    rest_relay.up = True
    try:
        entry = device_config(
            device,
            password_file,
            host="127.0.0.1",
            rest_port=rest_relay.port,
            ssh_port=ssh_port,
            **device_options,
        )
        poller = make_poller(agent_config(tmp_path, [entry], ssh_cross_check_every=1), http)
        yield poller, next(iter(poller.states))
    finally:
        await rest_relay.stop()


async def poll_healthy_over_rest(poller: Poller, key: str, polls: int) -> None:
    """Poll ``key`` ``polls`` times; each time it is healthy, read over REST."""
    for _ in range(polls):
        [snap] = await poller.poll_device(key)
        assert snap.health.state is HealthState.OK and snap.via.value == "rest"


async def test_ssh_login_refused_stops_ssh_attempts(
    lab_factory: Any,
    password_file: Path,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SSH refusing the login is said once and not retried each poll (failures feed a lockout)."""
    import paramiko

    lab = await lab_factory([make_device("SSHNO1")])
    device = lab.devices["SSHNO1"]
    key_file = tmp_path / "agent-key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(key_file))
    connections = [0]

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        up_reader, up_writer = await asyncio.open_connection(device.address, device.ssh_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    ssh_port = server.sockets[0].getsockname()[1]
    try:
        # REST and SSH of one address (127.0.0.1), with a count of SSH connections.
        async with relayed_poller(
            device, password_file, tmp_path, http, ssh_port=ssh_port, ssh_key_file=key_file
        ) as (poller, key):
            await poll_healthy_over_rest(poller, key, 3)
    finally:
        server.close()
        await server.wait_closed()
    assert connections[0] == 1
    refused = [r for r in caplog.records if "SSH refused the login" in r.getMessage()]
    assert len(refused) == 1


async def test_silent_ssh_is_cross_checked_ever_less_often(
    lab_factory: Any, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SSH that does not answer is no problem for a healthy REST unit; it is tried ever less."""
    lab = await lab_factory([make_device("NOSSH1")])
    device = lab.devices["NOSSH1"]
    connections = [0]

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    ssh_port = server.sockets[0].getsockname()[1]
    try:
        async with relayed_poller(device, password_file, tmp_path, http, ssh_port=ssh_port) as (
            poller,
            key,
        ):
            await poll_healthy_over_rest(poller, key, 8)
    finally:
        server.close()
        await server.wait_closed()
    assert connections[0] == 3  # reads 1, 3 and 7: the pause doubles after each miss
