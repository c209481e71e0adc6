"""Controller tests' own tools: a controller process that is active, the admin CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

from testkit.processes import in_process, polyfleet, start_controller, wait_active


async def start_server(data_dir: Path, config: Path) -> tuple[asyncio.subprocess.Process, str]:
    """``polyfleet controller serve`` on port 0, once it is the active controller; the
    process and its URL."""
    process, url = await start_controller(data_dir, "--config", str(config))
    try:
        await wait_active(url)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, url


async def cli(*args: str) -> str:
    """``polyfleet controller ARGS...``: its standard output (its exit status must be 0)."""
    return (await polyfleet("controller", *args)).out


async def cli_in_process(*args: str) -> str:
    """``polyfleet controller ARGS...`` run by this process's entry point, for set-up steps
    (the commands' printing is checked where they run as processes): its standard output."""
    return (await in_process("controller", *args)).out
