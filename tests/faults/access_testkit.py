"""A controller run as its own process and the admin CLI run as a process, for access tests."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from testkit.processes import COMMAND_TIMEOUT_S, REPO, Finished, polyfleet, start_controller
from testkit.reports import bearer

from polyfleet.shared.process import polyfleet_argv
from polyfleet.shared.schema import PROTOCOL_VERSION

#: How long a controller may take to stop.
STOP_TIMEOUT_S = 30.0


async def run_cli_on_terminal(*args: str, answer: str) -> Finished:
    """Run the CLI with a terminal as its standard input, typing ``answer`` at its prompt."""
    main_fd, terminal_fd = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *polyfleet_argv("controller", *args),
            stdin=terminal_fd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        os.close(terminal_fd)
        terminal_fd = -1
        # Typed ahead: the terminal keeps the line until the prompt reads it.
        os.write(main_fd, answer.encode() + b"\n")
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    finally:
        os.close(main_fd)
        if terminal_fd >= 0:
            os.close(terminal_fd)
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


@dataclass
class ControllerProcess:
    """``polyfleet controller serve`` running as a child process on 127.0.0.1, port 0."""

    process: asyncio.subprocess.Process
    url: str
    data_dir: Path
    config: Path

    async def cli(self, *args: str, stdin: bytes | None = None) -> Finished:
        """``polyfleet controller ARGS... --data-dir DATA`` (through the control socket)."""
        return await polyfleet(
            "controller", *args, "--data-dir", str(self.data_dir), stdin=stdin, expect=None
        )

    async def admin_token(self, name: str = "ops") -> str:
        done = await self.cli("token", "create", "--role", "admin", "--name", name, "--json")
        assert done.status == 0, done.err
        token = done.json()["token"]
        assert isinstance(token, str)
        return token

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def controller_process(
    data_dir: Path, config_text: str = ""
) -> AsyncIterator[ControllerProcess]:
    """A controller process for the block (its config file beside ``data_dir``), once it
    listens; stopped (or killed) at the block's end."""
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text(config_text, encoding="utf-8")
    process, url = await start_controller(data_dir, "--config", str(config))
    running = ControllerProcess(process=process, url=url, data_dir=data_dir, config=config)
    try:
        yield running
    finally:
        try:
            await running.stop()
        except TimeoutError:
            await running.kill()


async def enroll_agent(
    http: aiohttp.ClientSession, url: str, code: str, name: str = "agent"
) -> dict[str, Any]:
    """Enroll as an agent does; the controller's answer (agent id, site, token)."""
    body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": name}
    async with http.post(f"{url}/api/v1/agent/enroll", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
        assert isinstance(answer, dict)
        return answer


async def post_report(
    http: aiohttp.ClientSession, url: str, agent_token: str, snap: dict[str, Any], report_id: str
) -> None:
    body = {
        "protocol_version": PROTOCOL_VERSION,
        "reports": [{"id": report_id, "snapshot": snap}],
    }
    async with http.post(
        f"{url}/api/v1/agent/reports", json=body, headers=bearer(agent_token)
    ) as response:
        assert response.status == 200, await response.text()


@asynccontextmanager
async def admin_at_controller(
    data_dir: Path,
) -> AsyncIterator[tuple[ControllerProcess, aiohttp.ClientSession, str, str]]:
    """A controller process for the block (``controller_process``), a client session, the
    base URL of its API and an admin token named ops."""
    async with controller_process(data_dir) as controller, aiohttp.ClientSession() as http:
        yield controller, http, f"{controller.url}/api/v1", await controller.admin_token("ops")
