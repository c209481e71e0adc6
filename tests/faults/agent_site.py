"""One site's agent for agent fault tests: its own config, status port and a cuttable uplink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from faultkit import AgentProcess, ControllerProcess, get_json
from testkit.waiting import wait_until

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.lab import Lab


def free_port() -> int:
    """A loopback port free right now (for a status listener a test must know in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UplinkRelay:
    """A TCP relay between an agent and its controller that the test can cut and restore."""

    def __init__(self, controller_url: str) -> None:
        host, _, port = controller_url.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        """The line goes down: open connections drop, new ones are refused at once."""
        self.up = False
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def write_agent_config(
    folder: Path,
    *,
    controller_url: str,
    code: str,
    devices: Sequence[SimDevice],
    password_file: Path,
    data_dir: Path | None = None,
    status_port: int,
    extra_agent: str = "",
    extra_outbox: str = "",
) -> Path:
    """An agent.toml for ``devices``: enrolls with ``code``, status on ``status_port``."""
    folder.mkdir(parents=True, exist_ok=True)
    code_file = folder / "enrollment-code"
    code_file.write_text(code)
    os.chmod(code_file, 0o600)
    entries = "".join(
        f'\n[[devices]]\nhost = "{d.address}"\nrest_port = {d.rest_port}\nssh_port = {d.ssh_port}\n'
        for d in devices
    )
    path = folder / "agent.toml"
    path.write_text(
        f'[agent]\ndata_dir = "{data_dir or folder / "data"}"\nname = "{folder.name}"\n'
        f"poll_interval_s = 0.3\njitter_s = 0\ndevice_timeout_s = 5\n"
        f'status_listen = "127.0.0.1:{status_port}"\n{extra_agent}'
        f'[controller]\nurl = "{controller_url}"\nenrollment_code_file = "{code_file}"\n'
        f'credential_file = "{folder / "credential.json"}"\n'
        "send_interval_s = 0.1\njobs_interval_s = 0.5\nbackoff_max_s = 0.5\n"
        f"[outbox]\n{extra_outbox}"
        f'[defaults]\npassword_file = "{password_file}"\n{entries}',
        encoding="utf-8",
    )
    return path


async def agent_status(http: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    """The running agent's ``/status`` document, or None while it does not answer."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/status") as resp:
            if resp.status != 200:
                return None
            doc: dict[str, Any] = await resp.json()
            return doc
    except (aiohttp.ClientError, OSError):
        return None


async def agent_metrics(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The running agent's unlabelled ``/metrics`` samples by name."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            samples[name] = float(value)
    return samples


async def wait_status(
    http: aiohttp.ClientSession, port: int, check: Any, timeout: float = 60.0, what: str = ""
) -> dict[str, Any]:
    """The first status document for which ``check(doc)`` holds."""

    async def probe() -> dict[str, Any] | None:
        doc = await agent_status(http, port)
        return doc if doc is not None and check(doc) else None

    result: dict[str, Any] = await wait_until(
        probe, timeout=timeout, what=what or "the agent's status"
    )
    return result


async def controller_events(
    http: aiohttp.ClientSession, controller: ControllerProcess, kind: str
) -> list[dict[str, Any]]:
    answer = await get_json(
        http, controller.url, f"/api/v1/events?kind={kind}&limit=1000", controller.admin_token
    )
    events: list[dict[str, Any]] = answer.body["events"]
    return events


async def stored_reports(
    http: aiohttp.ClientSession, controller: ControllerProcess, serial: str
) -> list[dict[str, Any]]:
    """A device's reports as the controller keeps them, oldest first."""
    answer = await get_json(
        http, controller.url, f"/api/v1/devices/{serial}/reports", controller.admin_token
    )
    if answer.status == 404:
        return []
    reports: list[dict[str, Any]] = answer.body["reports"]
    return sorted(reports, key=lambda r: r["snapshot"]["collected_at"])


def start_agent(config: Path) -> AgentProcess:
    """An ``AgentProcess`` for a config written here (start it with ``await .start()``)."""
    return AgentProcess(config)


async def start_reporting_agent(
    http: aiohttp.ClientSession,
    controller: ControllerProcess,
    lab: Lab,
    password_file: Path,
    folder: Path,
    *,
    controller_url: str | None = None,
    **config: Any,
) -> tuple[AgentProcess, Path, int]:
    """An agent process for every device of ``lab``, enrolling at site krk of ``controller``
    (through ``controller_url``, a relay, when given), its status on a free port: returned
    (with its config and that port) once it sends and every device answers. The caller
    stops it."""
    port = free_port()
    path = write_agent_config(
        folder,
        controller_url=controller_url or controller.url,
        code=controller.codes["krk"][0],
        devices=list(lab.devices.values()),
        password_file=password_file,
        status_port=port,
        **config,
    )
    agent = start_agent(path)
    await agent.start()
    try:
        await wait_status(
            http,
            port,
            lambda d: d["uplink"]["ok"] and d["devices"]["answering"] == len(lab.devices),
            90,
            "the agent enrolled, polling and sending",
        )
    except BaseException:
        await agent.stop()
        raise
    return agent, path, port
