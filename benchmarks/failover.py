"""Failover benchmark: kill -9 of the active controller at 10,000 devices; time to reports again.

Runs on loopback only. Two controllers (``polyfleet controller serve``, each its own
process) share one PostgreSQL database: its own server, started as the tests start theirs
(``initdb`` in a temporary directory, fsync on), unless ``--store-url`` names an empty
database. Agents (the agent's own uplink, given both URLs, each batch resent until
acknowledged) report for 10,000 devices; then the active controller gets ``kill -9`` and
the time until the standby acknowledges a report is measured.

The baseline, in the same run: the controller left gets ``kill -9`` in turn and a new one
is started on the same address and database, as systemd would restart it; the same time
is measured. At the end every acknowledged report is looked for in the database.

    python benchmarks/failover.py [--devices 10000] [--agents 20] [--store-url URL] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polyfleet.agent.uplink import ControllerUnavailable, Uplink  # noqa: E402
from polyfleet.controller.clock import system_clock  # noqa: E402
from polyfleet.controller.config import ControllerConfig  # noqa: E402
from polyfleet.controller.core import build_controller  # noqa: E402
from polyfleet.controller.store.local_postgres import LocalPostgres  # noqa: E402
from polyfleet.controller.store.postgres import PostgresStore, read_all  # noqa: E402
from polyfleet.controller.testing import batch, enroll_codes, invite_sites, report, snapshot  # noqa: E402
from polyfleet.shared.process import polyfleet_argv  # noqa: E402
from polyfleet.shared.schema import (  # noqa: E402
    MAX_BATCH_SNAPSHOTS,
    ReportBatch,
)

#: Hard cap on the whole run, so the benchmark always ends.
TIME_LIMIT_S = 600.0
#: The goal for the time from kill -9 to the standby acknowledging reports.
GOAL_S = 15.0
#: Reports per batch while the agents keep reporting (the fleet's steady state).
STEADY_BATCH = 25
#: How long the agents report before each kill, and after it once reports go in again.
STEADY_S = 3.0
_numbers = itertools.count()


def batch_of(serials: list[str]) -> tuple[ReportBatch, list[str]]:
    collected = datetime.now(UTC).isoformat()
    ids = [f"fo-{next(_numbers):09d}" for _ in serials]
    body = batch(
        *(
            report(snapshot(serial, collected_at=collected), report_id)
            for report_id, serial in zip(ids, serials, strict=True)
        )
    )
    return ReportBatch.model_validate(body), ids


async def prepare(url: str, agents: int) -> list[str]:
    """Sites and an enrollment code per agent, written before any controller runs."""
    config = ControllerConfig()
    store = PostgresStore(url)
    await store.open()
    try:
        if any(store.count(name) for name in store.collections()):
            raise SystemExit(f"{store.shown_url} is not empty: give an empty database")
        return await invite_sites(build_controller(config, system_clock, store=store), agents)
    finally:
        await store.close()


async def start_controller(url: str, data_dir: Path, listen: str) -> tuple[Any, str]:
    process = await asyncio.create_subprocess_exec(
        *polyfleet_argv(
            "--log-level",
            "WARNING",
            "controller",
            "serve",
            "--store-url",
            url,
            "--data-dir",
            str(data_dir),
            "--listen",
            listen,
        ),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        raise RuntimeError("the controller did not start")
    return process, line.decode().split()[-1]


async def role(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
            return str((await response.json())["role"])
    except (aiohttp.ClientError, OSError, ValueError):
        return None


async def wait_role(url: str, wanted: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await role(url) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never became {wanted}")
        await asyncio.sleep(0.05)  # waits-for: the controller's role to change


class Fleet:
    """Agents reporting through the agent's own uplink; records every acknowledgement."""

    def __init__(self, urls: list[str], tokens: list[str], devices: int) -> None:
        self.urls = urls
        self.tokens = tokens
        self.devices = devices
        self.acked: set[str] = set()
        #: (monotonic time of the acknowledgement, URL that gave it)
        self.acks: list[tuple[float, str]] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fleet:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        assert self.http is not None
        await self.http.close()

    def uplink(self, agent: int) -> Uplink:
        assert self.http is not None
        return Uplink(self.urls, session=self.http, token=self.tokens[agent], timeout=30)

    async def post(self, uplink: Uplink, serials: list[str]) -> None:
        """One batch, resent until acknowledged, as the agent's outbox does."""
        body, ids = batch_of(serials)
        while True:
            try:
                await uplink.post_batch(body)
                break
            except ControllerUnavailable:
                await asyncio.sleep(0.05)  # waits-for: a controller to answer as active
        self.acked.update(ids)
        self.acks.append((time.monotonic(), uplink.base_url))

    async def full_round(self) -> None:
        """Every device reports once: the state the controllers load is 10,000 devices."""
        per_agent = self.devices // len(self.tokens)

        async def agent_round(agent: int) -> None:
            uplink = self.uplink(agent)
            serials = [f"A{agent:03d}D{index:05d}" for index in range(per_agent)]
            for start in range(0, len(serials), MAX_BATCH_SNAPSHOTS):
                await self.post(uplink, serials[start : start + MAX_BATCH_SNAPSHOTS])

        await asyncio.gather(*(agent_round(agent) for agent in range(len(self.tokens))))

    def keep_reporting(self) -> None:
        async def agent_loop(agent: int) -> None:
            uplink = self.uplink(agent)
            number = 0
            while not self.stop.is_set():
                serials = [f"S{agent:03d}N{number:06d}I{i:02d}" for i in range(STEADY_BATCH)]
                number += 1
                await self.post(uplink, serials)
                await asyncio.sleep(0.1)  # waits-for: the next batch, as a polling agent

        self.tasks = [asyncio.create_task(agent_loop(agent)) for agent in range(len(self.tokens))]

    def first_ack_after(self, moment: float, url: str) -> float:
        return min(at for at, by in self.acks if at > moment and by == url)


async def kill_and_wait(process: Any, fleet: Fleet, url: str) -> float:
    """kill -9 now; seconds until ``url`` acknowledged a report."""
    await asyncio.sleep(STEADY_S)  # waits-for: the agents' steady reporting before the kill
    killed = time.monotonic()
    process.send_signal(signal.SIGKILL)
    await process.wait()
    return await _first_ack(fleet, killed, url)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server: LocalPostgres | None = None
    processes: list[Any] = []
    try:
        url = args.store_url
        if url is None:
            server = await asyncio.to_thread(LocalPostgres.start, fsync=True)
            url = await asyncio.to_thread(server.create_database, "failover")
        with tempfile.TemporaryDirectory(prefix="polyfleet-failover-") as tmp:
            codes = await prepare(url, args.agents)
            first, first_url = await start_controller(url, Path(tmp) / "a", "127.0.0.1:0")
            processes.append(first)
            await wait_role(first_url, "active")
            second, second_url = await start_controller(url, Path(tmp) / "b", "127.0.0.1:0")
            processes.append(second)
            await wait_role(second_url, "standby")
            tokens = await enroll_codes(first_url, codes, agent_name="bench")
            async with Fleet([first_url, second_url], tokens, args.devices) as fleet:
                await fleet.full_round()
                loaded = len(fleet.acked)
                fleet.keep_reporting()
                failover_s = await kill_and_wait(first, fleet, second_url)
                await asyncio.sleep(STEADY_S)  # waits-for: steady reporting on the new one
                # The baseline: no standby; the killed controller is started again in place.
                second.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await second.wait()
                host_port = second_url.split("://", 1)[1]
                third, third_url = await start_controller(url, Path(tmp) / "b", host_port)
                processes.append(third)
                restart_s = await _first_ack(fleet, killed, third_url)
                await asyncio.sleep(STEADY_S)  # waits-for: steady reporting after the restart
            stored = await read_all(url)
            acked = fleet.acked
            # Stored under the agent's id and theirs; their own id is in the document.
            stored_ids = {report["id"] for report in stored.get("reports", {}).values()}
            lost = len(acked - stored_ids)
            devices = len(stored.get("devices", {}))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if server is not None:
            await asyncio.to_thread(server.stop)
    return {
        "devices": devices,
        "devices_loaded": loaded,
        "agents": args.agents,
        "failover_s": failover_s,
        "restart_s": restart_s,
        "ratio": failover_s / restart_s,
        "acknowledged": len(acked),
        "lost": lost,
        "goal_s": GOAL_S,
    }


async def _first_ack(fleet: Fleet, killed: float, url: str) -> float:
    deadline = killed + 300
    while not any(at > killed and by == url for at, by in fleet.acks):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} acknowledged nothing within 300 s")
        await asyncio.sleep(0.01)  # waits-for: the first acknowledgement after the kill
    return fleet.first_ack_after(killed, url) - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument(
        "--store-url", help="an empty PostgreSQL database (default: a server of its own)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.isatty(2) and not args.json:
        print("running (about a minute)...", file=sys.stderr)
    result = asyncio.run(asyncio.wait_for(run(args), TIME_LIMIT_S))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"failover   {result['failover_s']:6.2f} s from kill -9 of the active controller to the "
        f"standby acknowledging reports ({result['devices']} devices; goal < {GOAL_S:.0f} s)"
    )
    print(
        f"restart    {result['restart_s']:6.2f} s from kill -9 to a restarted controller "
        "acknowledging reports (baseline: no standby)"
    )
    print(f"ratio      {result['ratio']:.2f} (failover / restart)")
    print(f"lost       {result['lost']} of {result['acknowledged']} acknowledged reports")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
