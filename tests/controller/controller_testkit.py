"""Controller tests' own tools: a controller process that is active, the admin CLI, and an
inventory over a store of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from testkit.clocks import SettableClock
from testkit.processes import in_process, polyfleet, start_controller, wait_active

from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.events import EventBus
from polyfleet.controller.services.access import Principal, Role
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.tinydb import TinyDBStore

#: The agent of site krk, as in-process ingestion sees it.
AGENT = Principal(role=Role.AGENT, name="agent", token_id="t", agent_id="a1", site_id="krk")


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


@asynccontextmanager
async def inventory(
    data_dir: Path, clock: SettableClock
) -> AsyncIterator[tuple[Inventory, TinyDBStore]]:
    """An inventory loaded from an embedded store in ``data_dir``, and that store; closed at
    the block's end."""
    store = TinyDBStore(data_dir / "store")
    await store.open()
    try:
        config = ControllerConfig(data_dir=data_dir)
        bus = EventBus(store, keep=config.events_keep)
        bus.load()
        found = Inventory(store, bus, clock, config)
        found.load()
        yield found, store
    finally:
        await store.close()
