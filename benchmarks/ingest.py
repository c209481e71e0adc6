"""Ingest benchmark: 50 agents posting batches for 10,000 devices, controller vs bare aiohttp.

Runs on loopback only. In the same run it measures the real controller (``polyfleet
controller serve`` in its own process, with a fresh data directory) and a bare aiohttp
endpoint that only parses and validates the same batches, then prints snapshots per second,
p99 request latency, the ratio, and the controller's peak RSS. The controller runs twice:
on the embedded store, and on PostgreSQL (``--store-url`` naming an empty database, else a
server of its own started as the tests start theirs, with fsync on; ``--no-postgres``
leaves that run out).

Both sides get one warm-up round, then the same measured rounds (in each, every agent posts
one batch for all its devices at once); the rate is the median of the per-round rates. The
bare endpoint's rounds are split before and after the controller's, so a change in other
load on the machine affects both alike.

    python benchmarks/ingest.py [--agents 50] [--devices 10000] [--rounds 20]
                                [--store-url URL | --no-postgres] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polyfleet.controller.clock import system_clock  # noqa: E402
from polyfleet.controller.config import ControllerConfig  # noqa: E402
from polyfleet.controller.core import build_controller  # noqa: E402
from polyfleet.controller.services.access import Role  # noqa: E402
from polyfleet.controller.store.base import Store  # noqa: E402
from polyfleet.controller.store.local_postgres import LocalPostgres, LocalPostgresError  # noqa: E402
from polyfleet.controller.store.postgres import PostgresStore  # noqa: E402
from polyfleet.controller.store.tinydb import TinyDBStore  # noqa: E402
from polyfleet.controller.testing import enroll_codes, invite_sites  # noqa: E402
from polyfleet.shared.schema import PROTOCOL_VERSION, ReportBatch, ReportBatchAck  # noqa: E402

#: Hard cap on the whole run, so the benchmark always ends.
TIME_LIMIT_S = 480.0


def build_payloads(agents: int, devices: int, rounds: int) -> list[list[bytes]]:
    """Per agent, one encoded batch per round covering all of that agent's devices.

    Encoded the way the agent encodes what it sends (the shared schema's JSON).
    """
    per_agent = devices // agents
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    payloads: list[list[bytes]] = []
    models = ["studio_x30", "studio_x50", "studio_x70", "g7500"]
    for agent in range(agents):
        batches = []
        for round_no in range(rounds):
            collected = (start + timedelta(seconds=60 * round_no)).isoformat()
            reports = []
            for index in range(per_agent):
                serial = f"B{agent:03d}D{index:05d}"
                problems = (
                    [{"code": "camera_down", "detail": "no video"}]
                    if (index + round_no) % 17 == 0
                    else []
                )
                reports.append(
                    {
                        "id": f"bench-{agent}-{round_no}-{index}",
                        "snapshot": {
                            "serial": serial,
                            "model": models[index % len(models)],
                            "model_raw": "Poly Studio",
                            "system_name": f"Room {serial}",
                            "firmware": {"version": "4.1.0", "build": "180034"},
                            "provider": "teams",
                            "health": {
                                "state": "fault" if problems else "ok",
                                "problems": problems,
                            },
                            "in_call": False,
                            "uptime_s": 3600.0 + round_no,
                            "peripherals": [
                                {
                                    "kind": "touch_controller",
                                    "model_raw": "TC8",
                                    "serial": f"TC{serial}",
                                    "firmware": "4.1.0",
                                    "state": "connected",
                                }
                            ],
                            "collected_at": collected,
                            "via": "rest",
                        },
                    }
                )
            body = {"protocol_version": PROTOCOL_VERSION, "reports": reports}
            # Encoded as an agent's uplink encodes a batch: every field, times in UTC ("Z").
            batches.append(ReportBatch.model_validate(body).model_dump_json().encode())
        payloads.append(batches)
    return payloads


async def prepare_controller(
    data_dir: Path, agents: int, store_url: str | None = None
) -> tuple[list[str], str]:
    """Sites and enrollment codes for every agent, written directly to a fresh store."""
    config = ControllerConfig(data_dir=data_dir)
    store: Store = (
        TinyDBStore(data_dir / "store") if store_url is None else PostgresStore(store_url)
    )
    await store.open()
    try:
        if isinstance(store, PostgresStore) and any(
            store.count(name) for name in store.collections()
        ):
            raise SystemExit(f"{store.shown_url} is not empty: give an empty database")
        # The services as the server builds them, over the store opened here.
        core = build_controller(config, system_clock, store=store)
        codes = await invite_sites(core, agents)
        admin, _ = await core.access.create_token(Role.ADMIN, "bench")
        return codes, admin
    finally:
        await store.close()


async def start_process(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if not line:
        raise RuntimeError(f"{args} did not start")
    return process, line.decode().strip().rsplit(" ", 1)[-1]


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive_rounds(
    url: str, tokens: list[str], rounds: list[list[bytes]]
) -> tuple[list[float], list[float], int]:
    """Each round, every agent posts one batch at once; per-round rates, latencies, snapshots."""
    rates: list[float] = []
    latencies: list[float] = []
    total = 0
    connector = aiohttp.TCPConnector(limit=len(tokens) + 10)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(token: str, body: bytes) -> int:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            started = time.perf_counter()
            async with http.post(
                f"{url}/api/v1/agent/reports", data=body, headers=headers
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {await response.text()}")
                ack = await response.json()
            latencies.append(time.perf_counter() - started)
            return int(ack["accepted"] + ack["duplicates"])

        for bodies in rounds:
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(post(t, b) for t, b in zip(tokens, bodies, strict=True))
            )
            rates.append(sum(counts) / (time.perf_counter() - started))
            total += sum(counts)
    return rates, latencies, total


def summary(
    rates: list[float], latencies: list[float], snapshots: int, cpu_s: float
) -> dict[str, Any]:
    """Median of the per-round rates (robust to a round disturbed by other load), p99, CPU.

    CPU per snapshot is the server process's own time, so it hardly moves with other load on
    the machine; it is the steadier number to compare two versions of the controller with.
    """
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "snapshots": snapshots,
        "rounds": len(rates),
        "rate": statistics.median(rates),
        "round_rates": [round(rate) for rate in rates],
        "p99_s": p99,
        "cpu_us_per_snapshot": cpu_s / snapshots * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server: LocalPostgres | None = None
    postgres_url: str | None = args.store_url
    if postgres_url is None and not args.no_postgres:
        try:
            server = await asyncio.to_thread(LocalPostgres.start, fsync=True)
        except LocalPostgresError as exc:
            print(f"PostgreSQL part skipped: {exc}", file=sys.stderr)
        else:
            postgres_url = await asyncio.to_thread(server.create_database, "ingest")
    try:
        return await run_with(args, postgres_url)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)


async def run_with(args: argparse.Namespace, postgres_url: str | None) -> dict[str, Any]:
    # Round 0 is the warm-up (for the controller: first contact with every device).
    payloads = build_payloads(args.agents, args.devices, args.rounds + 1)
    rounds = [[batches[n] for batches in payloads] for n in range(args.rounds + 1)]
    warm_up, measured = rounds[0], rounds[1:]
    half = len(measured) // 2
    with tempfile.TemporaryDirectory(prefix="polyfleet-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        codes, _ = await prepare_controller(data_dir, args.agents)
        bare_tokens = ["bare"] * args.agents
        bare, bare_url = await start_process(__file__, "--bare-server")
        try:
            # The bare rounds are split around the controller's so both see the same machine.
            await drive_rounds(bare_url, bare_tokens, [warm_up])
            bare_cpu = cpu_seconds(bare.pid)
            bare_rates, bare_latencies, bare_total = await drive_rounds(
                bare_url, bare_tokens, measured[:half]
            )
            bare_cpu = cpu_seconds(bare.pid) - bare_cpu
            embedded = await measure_controller(args, data_dir, codes, warm_up, measured)
            postgres: dict[str, Any] | None = None
            if postgres_url is not None:
                pg_dir = Path(tmp) / "pg-data"
                pg_codes, _ = await prepare_controller(pg_dir, args.agents, postgres_url)
                postgres = await measure_controller(
                    args, pg_dir, pg_codes, warm_up, measured, store_url=postgres_url
                )
            more_cpu = cpu_seconds(bare.pid)
            more = await drive_rounds(bare_url, bare_tokens, measured[half:])
            bare_cpu += cpu_seconds(bare.pid) - more_cpu
        finally:
            await stop_process(bare)
    bare_result = summary(
        bare_rates + more[0], bare_latencies + more[1], bare_total + more[2], bare_cpu
    )
    result: dict[str, Any] = {
        "agents": args.agents,
        "devices": args.devices,
        "rounds": args.rounds,
        "controller": embedded["summary"],
        "bare": bare_result,
        "core_only": args.core_only,
        "ratio": embedded["summary"]["rate"] / bare_result["rate"],
        "controller_peak_rss_mb": embedded["rss"],
    }
    if postgres is not None:
        result["postgresql"] = postgres["summary"]
        result["postgresql_ratio"] = postgres["summary"]["rate"] / bare_result["rate"]
        result["postgresql_peak_rss_mb"] = postgres["rss"]
    return result


async def measure_controller(
    args: argparse.Namespace,
    data_dir: Path,
    codes: list[str],
    warm_up: list[bytes],
    measured: list[list[bytes]],
    *,
    store_url: str | None = None,
) -> dict[str, Any]:
    """One controller process: enrolled agents, a warm-up round, the measured rounds."""
    controller, url = await start_process(
        __file__,
        "--serve-controller",
        str(data_dir),
        *(["--core-only"] if args.core_only else []),
        *(["--store-url", store_url] if store_url is not None else []),
    )
    try:
        await wait_active(url)
        tokens = await enroll_codes(url, codes, agent_name="bench")
        await drive_rounds(url, tokens, [warm_up])
        cpu = cpu_seconds(controller.pid)
        rates, latencies, total = await drive_rounds(url, tokens, measured)
        cpu = cpu_seconds(controller.pid) - cpu
        rss = peak_rss_mb(controller.pid)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/api/v1/openapi.json") as response,
        ):
            assert response.status == 200
    finally:
        await stop_process(controller)
    return {"summary": summary(rates, latencies, total, cpu), "rss": rss}


async def wait_active(url: str) -> None:
    """A controller on PostgreSQL answers first as a standby, until it holds the database."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/healthz/active") as response:
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become active")
            await asyncio.sleep(0.05)  # waits-for: the controller to take the database


def serve_bare() -> None:
    """The baseline: parse and validate the batch, answer an ack, nothing else."""

    async def reports(request: web.Request) -> web.Response:
        # The same one-pass parse and validation the controller uses on a good batch.
        batch = ReportBatch.model_validate_json(await request.read())
        ack = ReportBatchAck(accepted=len(batch.reports), duplicates=0)
        return web.json_response(ack.model_dump())

    async def main() -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/api/v1/agent/reports", reports)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        print(f"bare endpoint listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def serve_controller(data_dir: Path, *, core_only: bool, store_url: str | None = None) -> None:
    """The real controller (``controller.app.serve``, as ``polyfleet controller serve`` runs it)."""
    import logging

    from polyfleet.controller import app as controller_app

    logging.basicConfig(level=logging.WARNING)
    if core_only:
        controller_app.ROUTE_MODULES[:] = [
            module
            for module in controller_app.ROUTE_MODULES
            if module not in (controller_app.entitlement_api, controller_app.tickets_api)
        ]
    config = ControllerConfig(data_dir=data_dir, listen_port=0, store_url=store_url)

    def ready(url: str) -> None:
        print(f"controller listening on {url}", flush=True)

    asyncio.run(controller_app.serve(config, on_ready=ready))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=20, help="measured rounds (one batch per agent each)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--core-only",
        action="store_true",
        help="the controller without the entitlement and tickets modules (the core's own cost)",
    )
    parser.add_argument(
        "--store-url",
        help="an empty PostgreSQL database for the PostgreSQL run (default: a server of its own)",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="measure the embedded store only"
    )
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-controller", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare()
        return 0
    if args.serve_controller:
        serve_controller(
            Path(args.serve_controller), core_only=args.core_only, store_url=args.store_url
        )
        return 0
    if os.isatty(2) and not args.json:
        print("running (a few minutes)...", file=sys.stderr)
    result = asyncio.run(asyncio.wait_for(run(args), TIME_LIMIT_S))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name in ("controller", "postgresql", "bare"):
        if name not in result:
            continue
        side = result[name]
        print(
            f"{name:<10} {side['rate']:>9.0f} snapshots/s   p99 {side['p99_s'] * 1000:7.1f} ms"
            f"   CPU {side['cpu_us_per_snapshot']:5.1f} us/snapshot"
            f"   (median of {side['rounds']} rounds, {side['snapshots']} snapshots)"
        )
    scope = "core only" if result["core_only"] else "with all features"
    print(f"ratio      {result['ratio']:.2f} (target >= 0.25; controller {scope})")
    if "postgresql" in result:
        print(f"ratio      {result['postgresql_ratio']:.2f} (the same, on PostgreSQL)")
    else:
        print("ratio      -    (PostgreSQL part skipped: --no-postgres, or no server binaries)")
    print(f"controller peak RSS {result['controller_peak_rss_mb']:.0f} MB (target < 500 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
