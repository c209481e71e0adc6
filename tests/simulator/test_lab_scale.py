"""A thousand devices in one lab process, each answering REST and SSH on its own address."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from lab_client import LabFactory, RestClient, exec_command

from polyfleet.simulator.testing import make_device

DEVICES = 1000


async def test_one_process_serves_a_thousand_devices(lab_factory: LabFactory) -> None:
    """1,000 devices listen in this process; a spread sample logs in over REST and SSH."""
    models = ("studio_x30", "studio_x50", "studio_x70", "g7500")
    threads_before = threading.active_count()
    lab = await lab_factory([make_device(model=models[n % 4]) for n in range(DEVICES)])
    devices = list(lab.devices.values())
    assert len(devices) == DEVICES and all(d.listening for d in devices)
    assert len({(d.address, d.rest_port) for d in devices}) == DEVICES
    assert len({d.tls_fingerprint for d in devices}) == DEVICES
    # Listening costs no thread per device: SSH is accepted on the event loop.
    assert threading.active_count() - threads_before < 10
    sample = devices[:: DEVICES // 10]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for device in sample:
            client = RestClient(device, http)
            assert (await client.login()).status == 200
            assert (await client.json("GET", "/rest/system"))["serialNumber"] == device.serial
            http.cookie_jar.clear()
        async with http.get(lab.control_url + "/devices") as response:
            assert len((await response.json())["devices"]) == DEVICES
    outputs = await asyncio.gather(
        *(asyncio.to_thread(exec_command, d, "systemsetting get model") for d in sample[:3])
    )
    assert all(code == 0 and out.startswith("systemsetting model ") for out, code in outputs)
