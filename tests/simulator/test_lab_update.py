"""Firmware updates ordered through upgrade.auto.* and a reboot: ok, fail and brick."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import paramiko
import pytest
from lab_client import LabFactory, Rest, RestClient, exec_command, one_device, pin
from package_server import PackageServer
from testkit.waiting import wait_until

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import make_device, with_update

#: Every package the tests order, as the update server offers it.
PACKAGES = ("4.2.2-408037", "4.0.2.384012", "4.6.2", "4.1.3.394009")
#: Where the module's update server listens; set by the ``server`` fixture.
SERVER: dict[str, str] = {}


@pytest.fixture(autouse=True)
async def server(tmp_path: Path) -> AsyncIterator[PackageServer]:
    """An HTTPS update server offering every package the tests order."""
    package_server = PackageServer(tmp_path / "update-server")
    for version in PACKAGES:
        package_server.add(version, version.encode() * 5000)
    SERVER["url"] = await package_server.start()
    yield package_server
    await package_server.stop()


async def updatable_device(
    lab_factory: LabFactory, rest_factory: Rest
) -> tuple[Lab, SimDevice, RestClient]:
    """One device on 4.1.0_00.180034 whose updates succeed, and a signed-in REST client."""
    spec = with_update(make_device(firmware="4.1.0_00.180034"), "ok")
    return await one_device(lab_factory, rest_factory, spec)


async def point_at_update(client: RestClient, version: str, address: str | None = None) -> None:
    """Point the device at the update server and version, as a rollout does."""
    answer = await client.json_post(
        "/rest/config",
        {
            "vars": [
                {"name": "upgrade.auto.enable", "value": "true"},
                {"name": "upgrade.auto.server.address", "value": address or SERVER["url"]},
                {"name": "upgrade.auto.version", "value": version},
            ]
        },
    )
    assert {v["result"] for v in answer["vars"]} == {"NOERROR"}


async def order_update(client: RestClient, version: str, address: str | None = None) -> None:
    """Point the device at the update server and version, as a rollout does, then reboot it."""
    await point_at_update(client, version, address)
    response = await client.request("POST", "/rest/system/reboot", json={"action": "reboot"})
    assert response.status == 200


async def installed(device: SimDevice) -> None:
    """Return once the device has gone through an install and is on again."""
    await wait_until(lambda: device.power == "installing")
    await device.wait_power("on")


async def running_version(client: RestClient) -> tuple[str, str]:
    """The software version and build the device says it runs, signed in afresh."""
    await client.login()
    system = await client.json("GET", "/rest/system")
    return system["softwareVersion"], system["build"]


async def test_update_ok_comes_back_on_the_new_version(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """The device installs, reboots, drops sessions and reports the ordered version and build."""
    lab, device, client = await updatable_device(lab_factory, rest_factory)
    await order_update(client, "4.2.2-408037")
    url = f"{lab.control_url}/devices/{device.serial}/config"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        config = (await response.json())["vars"]
    assert config["upgrade.auto.version"] == "4.2.2-408037"
    await wait_until(lambda: device.power == "installing")
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.request("GET", "/")
    await device.wait_power("on")
    assert (await client.request("GET", "/rest/system")).status == 403
    assert await running_version(client) == ("4.2.2", "408037")
    assert device.last_update["outcome"] == "ok"


async def test_update_fail_returns_on_the_old_version(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """A failing update installs for install_seconds, then boots back onto the old version."""
    spec = with_update(make_device(firmware="3.14.1"), "fail", install_seconds=0.5)
    _, device, client = await one_device(lab_factory, rest_factory, spec)
    started = time.monotonic()
    await order_update(client, "4.0.2.384012")
    await installed(device)
    # The install takes install_seconds (boot_seconds follow).
    assert time.monotonic() - started >= 0.5
    assert await running_version(client) == ("3.14.1", "374010")
    assert device.last_update["outcome"] == "fail"


async def test_update_brick_never_returns(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A bricking update leaves the device silent, even after a power cycle."""
    spec = with_update(make_device(firmware="4.2.2"), "brick")
    _, device, client = await one_device(lab_factory, rest_factory, spec)
    await order_update(client, "4.6.2")
    await device.wait_power("bricked")
    await device.power_on()
    assert device.power == "bricked"
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.request("GET", "/")


async def test_reboot_without_order_keeps_the_version(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Without upgrade.auto.enable a reboot installs nothing."""
    lab = await lab_factory([make_device(firmware="4.0.2")])
    device = next(iter(lab.devices.values()))
    device.config["upgrade.auto.version"] = "4.2.2"
    await device.reboot()
    assert device.power == "booting"
    await device.wait_power("on")
    assert (device.firmware_version, device.build) == ("4.0.2", "384012")


async def test_device_in_a_call_stays_readable(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A device in a call answers the whole poll cycle; the call shows until it ends."""
    lab = await lab_factory([make_device(in_call=True, firmware="4.6.2")])
    device = next(iter(lab.devices.values()))
    client = rest_factory(device)
    assert (await client.login()).status == 200
    for path in ("/rest/system", "/rest/system/status", "/rest/audio"):
        await client.json("GET", path)
    assert len(await client.json("GET", "/rest/conferences")) == 1


async def test_update_can_bring_a_new_certificate(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """With regenerate_cert_on_reboot the updated device serves a new certificate."""
    spec = with_update(make_device(firmware="4.2.2", regenerate_cert_on_reboot=True), "ok")
    _, device, client = await one_device(lab_factory, rest_factory, spec)
    before = device.tls_fingerprint
    await order_update(client, "4.6.2")
    await installed(device)
    assert device.tls_fingerprint != before
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await http.get(f"https://{device.address}:{device.rest_port}/", ssl=pin(before))
    assert await running_version(client) == ("4.6.2", "420118")


async def test_ssh_reboot_now_installs_an_ordered_update(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """An update ordered over REST is installed by an SSH ``reboot now`` as well."""
    _, device, client = await updatable_device(lab_factory, rest_factory)
    await point_at_update(client, "4.1.3.394009")
    with contextlib.suppress(EOFError, OSError, paramiko.SSHException):
        await asyncio.to_thread(exec_command, device, "reboot now")
    await installed(device)
    output, _ = await asyncio.to_thread(exec_command, device, "whoami")
    assert "Software Version: 4.1.3\r\n" in output and "Build Information: 394009" in output


async def test_the_unit_downloads_and_checks_the_package_before_installing(
    lab_factory: LabFactory, rest_factory: Rest, server: PackageServer
) -> None:
    """The package comes from the configured server; the control API shows bytes and source."""
    lab, device, client = await updatable_device(lab_factory, rest_factory)
    await order_update(client, "4.2.2-408037")
    await wait_until(lambda: device.power == "installing")
    assert server.fetched == ["4.2.2-408037"]
    await device.wait_power("on")
    async with aiohttp.ClientSession() as http, http.get(f"{lab.control_url}/downloads") as r:
        (download,) = (await r.json())["downloads"]
    assert download["serial"] == device.serial and download["source"] == server.url
    assert download["bytes"] == download["size"] == len(b"4.2.2-408037") * 5000
    assert download["status"] == "verified"
    await client.login()
    assert (await client.json("GET", "/rest/system/softwareupdate"))["state"] == "INSTALLED"


async def test_a_wrong_checksum_means_no_install(
    lab_factory: LabFactory, rest_factory: Rest, server: PackageServer
) -> None:
    """A package whose SHA-256 differs from the announced one is not installed; status says why."""
    server.lie_about.add("4.2.2-408037")
    _, device, client = await updatable_device(lab_factory, rest_factory)
    await order_update(client, "4.2.2-408037")
    await wait_until(lambda: device.update_status["state"] == "FAILED")
    assert device.power == "on" and device.firmware_version == "4.1.0_00"
    status = await client.json("GET", "/rest/system/softwareupdate")
    assert status["state"] == "FAILED" and status["reason"].startswith("checksum mismatch")
    assert device.view()["downloads"][0]["status"] == "failed"
    assert device.last_update["outcome"] == "download_failed"


async def test_an_unreachable_update_server_means_no_install(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Nothing listens at the configured address: no install, and the status names the server."""
    _, device, client = await updatable_device(lab_factory, rest_factory)
    nowhere = "https://127.0.0.1:9/fw"
    await order_update(client, "4.2.2-408037", address=nowhere)
    await wait_until(lambda: device.update_status["state"] == "FAILED")
    status = await client.json("GET", "/rest/system/softwareupdate")
    assert status["reason"].startswith(f"update server unreachable: {nowhere}")
    assert (device.firmware_version, device.build) == ("4.1.0_00", "180034")
