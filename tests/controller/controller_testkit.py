"""Builders for controller tests: snapshots, reports, batches and a settable clock."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]


async def start_server(data_dir: Path, config: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start `polyfleet controller serve` on port 0; returns the process and its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "controller",
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert b"listening on" in line, line
        url = line.decode().strip().rsplit(" ", 1)[-1]
        await wait_active(url)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, url


async def wait_active(url: str, *, timeout: float = 60) -> None:
    """Return once the controller at ``url`` answers as the active one (``/healthz/active``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/healthz/active") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{url} never became active"
            await asyncio.sleep(0.05)  # waits-for: the controller to take the store


async def cli(*args: str) -> str:
    """Run `polyfleet controller ARGS...`; its standard output (exit status must be 0)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "controller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, out
    return out.decode()
