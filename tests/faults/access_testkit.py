"""A controller run as its own process and the admin CLI run as a process, for access tests."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from testkit.reports import bearer

from polyfleet.shared.process import polyfleet_argv
from polyfleet.shared.schema import PROTOCOL_VERSION

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0


@dataclass
class CliResult:
    """What a finished CLI process printed and how it exited."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_cli(*args: str, stdin: bytes | None = None) -> CliResult:
    """Run ``polyfleet controller ARGS...`` to its end; stdin (if given) is piped in."""
    process = await asyncio.create_subprocess_exec(
        *polyfleet_argv("controller", *args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())


async def run_cli_on_terminal(*args: str, answer: str) -> CliResult:
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
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        os.close(main_fd)
        if terminal_fd >= 0:
            os.close(terminal_fd)
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())


@dataclass
class ControllerProcess:
    """``polyfleet controller serve`` running as a child process on 127.0.0.1, port 0."""

    process: asyncio.subprocess.Process
    url: str
    data_dir: Path
    config: Path

    async def cli(self, *args: str, stdin: bytes | None = None) -> CliResult:
        """``polyfleet controller ARGS... --data-dir DATA`` (through the control socket)."""
        return await run_cli(*args, "--data-dir", str(self.data_dir), stdin=stdin)

    async def admin_token(self, name: str = "ops") -> str:
        done = await self.cli("token", "create", "--role", "admin", "--name", name, "--json")
        assert done.status == 0, done.err
        token = done.json()["token"]
        assert isinstance(token, str)
        return token

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), START_TIMEOUT_S)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_controller(data_dir: Path, config_text: str = "") -> ControllerProcess:
    """Start a controller process; returns once it listens."""
    config = data_dir.parent / f"{data_dir.name}.toml"
    config.write_text(config_text, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        *polyfleet_argv(
            "controller",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
        ),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
    if b"listening on" not in line:
        process.kill()
        await process.wait()
        raise AssertionError(f"controller did not start: {line!r}")
    url = line.decode().strip().rsplit(" ", 1)[-1]
    return ControllerProcess(process=process, url=url, data_dir=data_dir, config=config)


@asynccontextmanager
async def controller_process(
    data_dir: Path, config_text: str = ""
) -> AsyncIterator[ControllerProcess]:
    """A controller process for the block; stopped (or killed) at its end."""
    running = await start_controller(data_dir, config_text)
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
