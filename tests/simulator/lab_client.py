"""A pinned REST client, SSH helpers and a settable monotonic clock for the device lab tests."""

from __future__ import annotations

import base64
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import paramiko

from polyfleet.shared.fingerprint import sha256_fingerprint
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import DeviceSpec

LabFactory = Callable[..., Awaitable[Lab]]


def pin(fingerprint: str) -> aiohttp.Fingerprint:
    """An aiohttp pin for a ``SHA256:<b64>`` certificate fingerprint."""
    body = fingerprint.removeprefix("SHA256:")
    return aiohttp.Fingerprint(base64.b64decode(body + "=" * (-len(body) % 4)))


class RestClient:
    """A client of one device's REST API that pins its certificate and handles XSRF."""

    def __init__(self, device: SimDevice, http: aiohttp.ClientSession) -> None:
        self.device = device
        self.http = http
        self.xsrf = ""

    @property
    def base(self) -> str:
        return f"https://{self.device.address}:{self.device.rest_port}"

    async def request(
        self, method: str, path: str, *, xsrf: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if xsrf and self.xsrf:
            headers["x-xsrf-token"] = self.xsrf
        response = await self.http.request(
            method,
            self.base + path,
            ssl=pin(self.device.tls_fingerprint),
            headers=headers,
            **kwargs,
        )
        await response.read()
        return response

    async def login(self, password: str | None = None) -> aiohttp.ClientResponse:
        secret = self.device.admin_password if password is None else password
        response = await self.request(
            "POST", "/rest/session", json={"user": "admin", "password": secret}
        )
        token = response.cookies.get("XSRF-TOKEN")
        if token is not None:
            self.xsrf = token.value
        return response

    async def json_post(self, path: str, payload: Any) -> Any:
        response = await self.request("POST", path, json=payload)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json(content_type=None)

    async def json(self, method: str, path: str) -> Any:
        response = await self.request(method, path)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json(content_type=None)


#: The ``rest_factory`` fixture: a REST client of its own for a device.
Rest = Callable[[SimDevice], RestClient]


async def one_device(
    lab_factory: LabFactory, rest_factory: Rest, spec: DeviceSpec, *, login: bool = True
) -> tuple[Lab, SimDevice, RestClient]:
    """A lab of the one device ``spec`` and a REST client of it, signed in unless ``login``
    is False."""
    lab = await lab_factory([spec])
    device = lab.devices[spec.serial]
    client = rest_factory(device)
    if login:
        await client.login()
    return lab, device, client


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SshTarget(Protocol):
    """A simulated device or other host with an SSH server."""

    @property
    def address(self) -> str: ...
    @property
    def admin_password(self) -> str: ...

    ssh_port: Any
    ssh_fingerprint: str


def connect(device: SshTarget, password: str | None = None) -> paramiko.SSHClient:
    """A paramiko client that accepts only the target's advertised host key fingerprint."""

    class PinnedPolicy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> None:
            if sha256_fingerprint(key.asbytes()) != device.ssh_fingerprint:
                raise paramiko.SSHException("host key does not match the pin")

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinnedPolicy())
    client.connect(
        device.address,
        port=device.ssh_port,
        username="admin",
        password=device.admin_password if password is None else password,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )
    return client


def exec_command(device: SshTarget, command: str) -> tuple[str, int]:
    """Output (stdout, then stderr) and exit status of one command over a pinned connection."""
    client = connect(device)
    try:
        _stdin, stdout, stderr = client.exec_command(command, timeout=10)
        output = stdout.read().decode() + stderr.read().decode()
        return output, stdout.channel.recv_exit_status()
    finally:
        client.close()


def read_identification(address: str, port: int) -> bytes:
    """The first line an SSH server sends (its identification string)."""
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.settimeout(10)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0]
