"""`polyfleet agent discover`: only the given ranges, progress on a terminal, JSON otherwise."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pty
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit.processes import polyfleet

from polyfleet.agent.discovery import discover, expand_ranges
from polyfleet.shared.errors import ConfigError
from polyfleet.simulator.testing import make_device


def test_ranges_are_bounded() -> None:
    """Only given addresses are scanned; oversized ranges are refused with the fix."""
    assert expand_ranges(["127.0.0.8/30"]) == ["127.0.0.9", "127.0.0.10"]
    assert expand_ranges(["127.0.0.5"]) == ["127.0.0.5"]
    with pytest.raises(ConfigError, match="split it"):
        expand_ranges(["10.0.0.0/8"])
    with pytest.raises(ConfigError, match="not an address range"):
        expand_ranges(["nonsense"])


async def test_discover_finds_lab_devices(lab_factory: Any) -> None:
    """Lab devices in the range are found as Poly with their certificate and SSH banner."""
    lab = await lab_factory([make_device("DISC1"), make_device("DISC2", firmware="3.12.0")])
    d1, d2 = lab.devices["DISC1"], lab.devices["DISC2"]
    found = await discover(
        [f"{d1.address}/32", f"{d2.address}/32"],
        rest_ports=(d1.rest_port, d2.rest_port),
        ssh_ports=(d1.ssh_port, d2.ssh_port),
        timeout=2.0,
    )
    by_address = {f.address: f for f in found}
    assert (
        by_address[d1.address].poly and by_address[d1.address].tls_fingerprint == d1.tls_fingerprint
    )
    assert by_address[d1.address].os == "PolyOS"
    assert by_address[d2.address].os == "Poly VideoOS"
    assert by_address[d2.address].ssh_banner.startswith("SSH-2.0")


async def test_discover_shows_progress_on_a_terminal(lab_factory: Any) -> None:
    """On a terminal (pty) discover writes progress to stderr; stdout stays JSON."""
    lab = await lab_factory([make_device("DISC3")])
    d = lab.devices["DISC3"]
    # The /28 around the device (14 hosts), wherever the address counter has got to.
    network = str(ipaddress.ip_network(f"{d.address}/28", strict=False))
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "agent",
        "discover",
        network,
        "--rest-port",
        str(d.rest_port),
        "--ssh-port",
        str(d.ssh_port),
        "--json",
        # Unused loopback addresses refuse at once; the device itself may be slow to answer
        # on a busy machine.
        "--timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    out, _ = await proc.communicate()
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"scanned 14/14 addresses" in terminal
    found = json.loads(out)
    # The evidence says why, should the unit not be taken for a Poly device.
    assert d.address in {f["address"] for f in found if f["poly"]}, found
    assert all(ipaddress.ip_address(f["address"]) in ipaddress.ip_network(network) for f in found)


async def test_discover_without_terminal_prints_no_progress(
    tmp_path: Path, lab_factory: Any
) -> None:
    """Without a terminal there is no progress noise on stderr."""
    lab = await lab_factory([make_device("DISC4")])
    d = lab.devices["DISC4"]
    _, out, err = await polyfleet(
        "agent", "discover", f"{d.address}/32",
        "--rest-port", str(d.rest_port), "--ssh-port", str(d.ssh_port),
        expect=None,
    )  # fmt: skip
    assert "scanned" not in err
    assert "1 Poly devices" in out


async def test_discover_tells_videoos_from_other_hosts(tmp_path: Path) -> None:
    """A Poly desk phone, a web UI and another vendor's API answer; only VideoOS counts as Poly."""
    from polyfleet.simulator.fleet import OtherHostSpec
    from polyfleet.simulator.testing import next_address, start_lab

    others = [
        OtherHostSpec(name="phone-1", address=next_address(), kind="poly_phone", rest_port=0),
        OtherHostSpec(
            name="printer", address=next_address(), kind="web_server", title="Printer", rest_port=0
        ),
        OtherHostSpec(name="nas", address=next_address(), kind="json_api", rest_port=0),
    ]
    lab = await start_lab(tmp_path, [make_device("DISCV1")], other_hosts=others)
    try:
        device = lab.devices["DISCV1"]
        hosts = lab.other_hosts
        addresses = [device.address, *(h.address for h in hosts.values())]
        ports = tuple(sorted({device.rest_port, *(h.rest_port for h in hosts.values())}))
        found = await discover(
            [f"{a}/32" for a in addresses],
            rest_ports=ports,
            ssh_ports=(device.ssh_port,),
            timeout=2.0,
        )
    finally:
        await lab.stop()
    by_address = {f.address: f for f in found}
    assert by_address[device.address].poly and by_address[device.address].videoos_api
    phone = by_address[hosts["phone-1"].address]
    assert not phone.poly and phone.videoos_api is False
    assert any("no VideoOS REST API" in e for e in phone.evidence)
    assert not by_address[hosts["printer"].address].poly
    assert not by_address[hosts["nas"].address].poly
    assert [f.address for f in found if f.poly] == [device.address]


async def test_a_busy_unit_is_not_called_something_else(lab_factory: Any) -> None:
    """A unit slower than --timeout is marked too slow to tell, never 'not a Poly'; with a
    longer timeout it is found."""
    lab = await lab_factory([make_device("BUSY1")])
    d = lab.devices["BUSY1"]
    await d.set_fault("slow", True, latency_ms=1500)
    argv = [
        *("agent", "discover", f"{d.address}/32"),
        *("--rest-port", str(d.rest_port), "--ssh-port", str(d.ssh_port)),
    ]

    async def run(*extra: str) -> str:
        return (await polyfleet(*argv, *extra)).out

    out = await run("--timeout", "0.5")
    assert f"{d.address}  NO ANSWER IN TIME  https:{d.rest_port}: TLS, but no HTTP answer" in out
    assert "within 0.5 s (a busy unit may need a longer --timeout)" in out
    assert "NOT A POLY" not in out
    assert out.rstrip().endswith(
        "0 Poly devices, 1 too slow to tell (scan them again with a longer --timeout)"
    )
    (found,) = json.loads(await run("--timeout", "0.5", "--json"))
    assert found["undecided"] is True and found["poly"] is False
    (found,) = json.loads(await run("--timeout", "10", "--json"))
    assert found["poly"] is True and found["undecided"] is False
