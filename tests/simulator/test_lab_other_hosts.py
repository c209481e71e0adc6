"""Hosts that are not Poly devices: HTTPS web UIs, other APIs and Linux SSH, on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import paramiko
import pytest
from lab_client import LabFactory, connect, exec_command, pin, read_identification

from polyfleet.simulator.fleet import OtherHostSpec
from polyfleet.simulator.other_host import OtherHost
from polyfleet.simulator.testing import make_device, next_address


async def started_other_host(lab_factory: LabFactory, **spec: Any) -> OtherHost:
    """A lab of one device and the other host ``spec`` describes (HTTPS on a free port),
    stopped after the test; that host."""
    other = OtherHostSpec(address=next_address(), rest_port=0, **spec)
    lab = await lab_factory([make_device()], other_hosts=[other])
    return lab.other_hosts[other.name]


async def fetch(host: OtherHost, method: str, path: str) -> tuple[int, str, str, str]:
    """Status, content type, Server header and body of one pinned HTTPS request."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"https://{host.address}:{host.rest_port}{path}",
            ssl=pin(host.tls_fingerprint),
            json={"user": "admin", "password": "x"} if method == "POST" else None,
        ) as response,
    ):
        return (
            response.status,
            response.content_type,
            response.headers.get("Server", ""),
            await response.text(),
        )


def read_prompt(channel: paramiko.Channel) -> bytes:
    """Everything up to and including the next ``$ `` prompt."""
    data = b""
    while not data.endswith(b"$ "):
        chunk = channel.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def shell_session(host: OtherHost) -> tuple[bytes, bytes]:
    """An interactive shell (with a pty): its greeting, then what ``whoami`` prints."""
    client = connect(host)
    try:
        channel = client.invoke_shell()
        channel.settimeout(10)
        greeting = read_prompt(channel)
        channel.sendall(b"whoami\r")
        return greeting, read_prompt(channel)
    finally:
        client.close()


async def test_web_server_has_a_page_but_no_videoos_api(lab_factory: LabFactory) -> None:
    """A web_server answers / with its titled page and /rest/session with 404 HTML."""
    host = await started_other_host(lab_factory, name="printer-1", title="HP LaserJet M507")
    status, kind, server, body = await fetch(host, "GET", "/")
    assert (status, kind) == (200, "text/html") and "<title>HP LaserJet M507</title>" in body
    assert "Poly" not in body and server == "lighttpd/1.4.59"
    status, kind, _, _ = await fetch(host, "POST", "/rest/session")
    assert (status, kind) == (404, "text/html")
    assert host.ssh_port is None


async def test_json_api_refuses_everything_with_401_json(lab_factory: LabFactory) -> None:
    """A json_api answers every path, /rest/session included, with 401 and a JSON error."""
    host = await started_other_host(lab_factory, name="nas", kind="json_api")
    for method, path in (("GET", "/"), ("POST", "/rest/session"), ("GET", "/rest/system")):
        status, kind, _, body = await fetch(host, method, path)
        assert (status, kind) == (401, "application/json") and '"unauthorized"' in body


async def test_poly_phone_says_poly_but_has_no_rest_session(lab_factory: LabFactory) -> None:
    """A poly_phone's landing page is titled "Poly ..." yet /rest/session is 404."""
    host = await started_other_host(lab_factory, name="phone-1", kind="poly_phone")
    status, _, _, body = await fetch(host, "GET", "/")
    assert status == 200 and "<title>Poly CCX 500 Business Media Phone</title>" in body
    assert (await fetch(host, "POST", "/rest/session"))[0] == 404


async def test_linux_ssh_logs_in_but_knows_no_legacy_commands(lab_factory: LabFactory) -> None:
    """With ssh_port an other host runs a Linux SSH: login works, ``status`` is not found."""
    host = await started_other_host(lab_factory, name="linux-1", ssh_port=0, admin_password="pw-1")
    line = await asyncio.to_thread(read_identification, host.address, host.ssh_port)
    assert line.startswith(b"SSH-2.0-OpenSSH_9.2p1 Debian")
    assert await asyncio.to_thread(exec_command, host, "whoami") == ("admin\n", 0)
    output, code = await asyncio.to_thread(exec_command, host, "status")
    assert (output, code) == ("sh: 1: status: not found\n", 127)
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(connect, host, "wrong")
    greeting, answer = await asyncio.to_thread(shell_session, host)
    assert greeting.endswith(b"admin@linux-1:~$ ") and b"Hi, my name is" not in greeting
    assert answer == b"whoami\r\nadmin\r\nadmin@linux-1:~$ "


async def test_other_hosts_are_listed_but_never_devices(lab_factory: LabFactory) -> None:
    """Other hosts appear in the ready info and GET /other_hosts, not among the devices."""
    spec = OtherHostSpec(name="web-2", address=next_address(), rest_port=0)
    lab = await lab_factory([make_device()], other_hosts=[spec])
    info = lab.ready_info()
    assert [o["name"] for o in info["other_hosts"]] == ["web-2"]
    assert "web-2" not in {d["serial"] for d in info["devices"]}
    async with (
        aiohttp.ClientSession() as http,
        http.get(lab.control_url + "/other_hosts") as response,
    ):
        [view] = (await response.json())["other_hosts"]
    host = lab.other_hosts["web-2"]
    assert (view["kind"], view["rest_port"], view["tls_fingerprint"]) == (
        "web_server",
        host.rest_port,
        host.tls_fingerprint,
    )
    assert "admin_password" not in view
