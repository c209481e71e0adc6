"""Fault benchmark: kill -9 mid-ingest, an outage, a full disk; acknowledged vs stored, recovery.

Runs on loopback only, against the real controller (``polyfleet controller serve`` in its
own process). Simulated agents speak the wire protocol directly, as ``benchmarks/ingest.py``
does, each with an outbox: every round adds one report per device, and a report leaves the
outbox only when the controller acknowledged it (a resend after a lost answer is expected).

- crash: agents post continuously while the controller is killed with SIGKILL ``--kills``
  times at random moments and restarted at once. Time to recover (start to listening, and
  to the first acknowledged batch) is compared with a restart after a clean stop of the same
  data, measured in the same run.
- outage: the controller is stopped for ``--outage-rounds`` rounds while agents keep
  collecting; after the restart the backlog drains. Drain time is compared with a steady
  round measured just before.
- disk: the data directory is on a small tmpfs (needs root); it is filled while agents post,
  then freed. Time until writes resume and until the backlog drains, compared with a steady
  round. Skipped (and said so) where a tmpfs cannot be mounted.

Afterwards each scenario stops the controller and reads its store: every acknowledged report
must be kept, or be older than a full retained history of its device (``lost`` counts the
others), and no report may be kept twice. Duplicates are the resends the controller
answered as such.

    python benchmarks/faults.py [--devices 10000] [--agents 50] [--kills 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polyfleet.controller.clock import system_clock  # noqa: E402
from polyfleet.controller.config import ControllerConfig  # noqa: E402
from polyfleet.controller.core import build_controller  # noqa: E402
from polyfleet.controller.store.base import REPORTS  # noqa: E402
from polyfleet.controller.store.tinydb import TinyDBStore  # noqa: E402
from polyfleet.controller.testing import enroll_codes, invite_sites, report, snapshot  # noqa: E402
from polyfleet.shared.process import polyfleet_argv  # noqa: E402
from polyfleet.shared.schema import MAX_BATCH_SNAPSHOTS, PROTOCOL_VERSION  # noqa: E402

#: Hard cap on the whole run, so the benchmark always ends.
TIME_LIMIT_S = 1200.0
REPORT_HISTORY = 5
#: Short retries: the point is how fast things recover, not how patient agents are.
AGENT_RETRY_S = 0.05
CONFIG = f"[store]\nreport_history = {REPORT_HISTORY}\nwrite_retry_max_s = 0.5\n"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)


# -- the controller process -----------------------------------------------------------------


class Controller:
    """One controller process over one data directory, restartable; its log in a file."""

    def __init__(self, data_dir: Path, work: Path) -> None:
        self.data_dir = data_dir
        self.config = work / f"{data_dir.name}.toml"
        self.config.write_text(CONFIG, encoding="utf-8")
        self.log = work / f"{data_dir.name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> float:
        """Start and wait until it listens; seconds that took."""
        started = time.perf_counter()
        log = await asyncio.to_thread(open, self.log, "ab")
        with log:
            self.process = await asyncio.create_subprocess_exec(
                *polyfleet_argv(
                    "controller",
                    "serve",
                    "--config",
                    str(self.config),
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    "127.0.0.1:0",
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
            )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 120)
        if b"listening on" not in line:
            raise RuntimeError(f"controller did not start; see {self.log}")
        self.url = line.decode().strip().rsplit(" ", 1)[-1]
        return time.perf_counter() - started

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        self.url = ""

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 120)
            except TimeoutError:
                await self.kill()
        self.url = ""


async def prepare(data_dir: Path, agents: int) -> list[str]:
    """Sites and one enrollment code per agent, written directly to a fresh store."""
    config = ControllerConfig(data_dir=data_dir)
    store = TinyDBStore(data_dir / "store")
    await store.open()
    try:
        return await invite_sites(build_controller(config, system_clock, store=store), agents)
    finally:
        await store.close()


async def stored_reports(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Per device, the (report id, collected at) the stopped controller's store kept."""
    store = TinyDBStore(data_dir / "store")
    await store.open()
    try:
        kept: dict[str, list[tuple[str, str]]] = {}
        for report in store.scan(REPORTS).values():
            kept.setdefault(report["serial"], []).append(
                (report["id"], report["snapshot"]["collected_at"])
            )
        return kept
    finally:
        await store.close()


# -- simulated agents -----------------------------------------------------------------------


@dataclass
class Agent:
    """An agent with an outbox: reports stay until the controller acknowledges them."""

    number: int
    devices: list[str]
    token: str = ""
    outbox: list[dict[str, Any]] = field(default_factory=list)
    sequence: int = 0
    #: Report id -> (serial, collected at), for every acknowledged report.
    acked: dict[str, tuple[str, str]] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0
    failed_posts: int = 0
    #: Set whenever a batch is acknowledged.
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)

    def collect(self, round_no: int) -> None:
        collected = (START + timedelta(seconds=60 * round_no)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for index, serial in enumerate(self.devices):
            self.sequence += 1
            problems = [{"code": "camera_down", "detail": "no video"}] if index % 17 == 0 else []
            snap = snapshot(
                serial, problems=problems, collected_at=collected, uptime_s=3600.0 + round_no
            )
            self.outbox.append(report(snap, f"bench{self.number:03d}-{self.sequence:09d}"))

    async def flush(self, http: aiohttp.ClientSession, ctl: Controller) -> bool:
        """Post the outbox in batches; False at the first failure (the rest waits)."""
        while self.outbox:
            if not ctl.url:
                return False
            chunk = self.outbox[:MAX_BATCH_SNAPSHOTS]
            body = orjson.dumps({"protocol_version": PROTOCOL_VERSION, "reports": chunk})
            try:
                async with http.post(
                    f"{ctl.url}/api/v1/agent/reports",
                    data=body,
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Content-Type": "application/json",
                    },
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as response:
                    if response.status != 200:
                        self.failed_posts += 1
                        return False
                    ack = await response.json()
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.failed_posts += 1
                return False
            self.acked_event.set()
            self.accepted += ack["accepted"]
            self.duplicates += ack["duplicates"]
            for item in chunk:
                snap = item["snapshot"]
                self.acked[item["id"]] = (snap["serial"], snap["collected_at"])
            del self.outbox[: len(chunk)]
        return True


def make_agents(count: int, devices: int) -> list[Agent]:
    per_agent = devices // count
    acked = asyncio.Event()
    return [
        Agent(
            number, [f"F{number:03d}D{index:05d}" for index in range(per_agent)], acked_event=acked
        )
        for number in range(count)
    ]


async def steady_round(
    http: aiohttp.ClientSession, ctl: Controller, agents: list[Agent], round_no: int
) -> float:
    """Every agent collects and flushes once; seconds the round took."""
    for agent in agents:
        agent.collect(round_no)
    started = time.perf_counter()
    await asyncio.gather(*(agent.flush(http, ctl) for agent in agents))
    return time.perf_counter() - started


async def drain(
    http: aiohttp.ClientSession, ctl: Controller, agents: list[Agent], limit_s: float
) -> float:
    """Flush until every outbox is empty (retrying quickly); seconds that took."""
    started = time.perf_counter()
    while any(agent.outbox for agent in agents):
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"outboxes not drained within {limit_s} s")
        done = await asyncio.gather(*(agent.flush(http, ctl) for agent in agents))
        if not all(done):
            await asyncio.sleep(AGENT_RETRY_S)  # waits-for: an agent's retry backoff
    return time.perf_counter() - started


def verdict(agents: list[Agent], kept: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """Acknowledged vs stored: lost are acked reports neither kept nor older than a full
    history of their device; kept twice counts ids stored more than once per device."""
    acked = 0
    lost = 0
    kept_ids = {serial: {rid for rid, _ in items} for serial, items in kept.items()}
    twice = sum(len(items) - len(kept_ids[serial]) for serial, items in kept.items())
    for agent in agents:
        for report_id, (serial, collected) in agent.acked.items():
            acked += 1
            if report_id in kept_ids.get(serial, ()):
                continue
            newer = [at for _, at in kept.get(serial, ()) if at > collected]
            if len(newer) < REPORT_HISTORY:
                lost += 1
    return {
        "acknowledged": acked,
        "stored_devices": len(kept),
        "stored_reports": sum(len(items) for items in kept.values()),
        "lost": lost,
        "kept_twice": twice,
        "accepted": sum(agent.accepted for agent in agents),
        "duplicates": sum(agent.duplicates for agent in agents),
        "failed_posts": sum(agent.failed_posts for agent in agents),
    }


# -- scenarios ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def enrolled_fleet(
    args: argparse.Namespace, data_dir: Path, base: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, Controller, list[Agent], float]]:
    """A running controller on ``data_dir`` with every agent enrolled and every device known
    (a first round), and how long a steady round then took."""
    codes = await prepare(data_dir, args.agents)
    ctl = Controller(data_dir, base)
    agents = make_agents(args.agents, args.devices)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.agents + 10)
    ) as http:
        await ctl.start()
        for agent, token in zip(
            agents, await enroll_codes(ctl.url, codes, agent_name="bench"), strict=True
        ):
            agent.token = token
        await steady_round(http, ctl, agents, 0)
        steady = await steady_round(http, ctl, agents, 1)
        yield http, ctl, agents, steady


async def crash(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    data_dir = base / "crash"
    async with enrolled_fleet(args, data_dir, base) as (http, ctl, agents, _):
        round_no = 2
        # Baseline: a restart after a clean stop, same data, same moment of the run.
        await ctl.stop()
        clean_restart = await ctl.start()
        stop = asyncio.Event()

        async def keep_posting() -> None:
            nonlocal round_no
            while not stop.is_set():
                # A new round once the last one is delivered; until then, retries.
                if not any(agent.outbox for agent in agents):
                    for agent in agents:
                        agent.collect(round_no)
                    round_no += 1
                done = await asyncio.gather(*(agent.flush(http, ctl) for agent in agents))
                if not all(done):
                    await asyncio.sleep(AGENT_RETRY_S)  # waits-for: an agent's retry backoff

        poster = asyncio.create_task(keep_posting())
        rng = random.Random(7)
        restarts: list[float] = []
        first_acks: list[float] = []
        for kill in range(args.kills):
            progress(f"crash: kill -9 {kill + 1}/{args.kills}")
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # waits-for: a random moment mid-ingest
            await ctl.kill()
            acked = agents[0].acked_event
            acked.clear()
            started = time.perf_counter()
            restarts.append(await ctl.start())
            await asyncio.wait_for(acked.wait(), 300)
            first_acks.append(time.perf_counter() - started)
        stop.set()
        await poster
        await drain(http, ctl, agents, 300)
        await ctl.stop()
    result = verdict(agents, await stored_reports(data_dir))
    mean_restart = sum(restarts) / len(restarts)
    return {
        **result,
        "kills": args.kills,
        "clean_restart_s": clean_restart,
        "restart_after_kill_s": mean_restart,
        "restart_after_kill_max_s": max(restarts),
        "first_ack_after_kill_s": sum(first_acks) / len(first_acks),
        "restart_ratio": mean_restart / clean_restart,
    }


async def outage(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    data_dir = base / "outage"
    async with enrolled_fleet(args, data_dir, base) as (http, ctl, agents, steady):
        await ctl.stop()
        progress(f"outage: controller stopped for {args.outage_rounds} rounds")
        for round_no in range(2, 2 + args.outage_rounds):
            for agent in agents:
                agent.collect(round_no)
            # Agents keep trying while it is down (and fail).
            await asyncio.gather(*(agent.flush(http, ctl) for agent in agents))
        backlog = sum(len(agent.outbox) for agent in agents)
        restart = await ctl.start()
        drained = await drain(http, ctl, agents, 600)
        await ctl.stop()
    result = verdict(agents, await stored_reports(data_dir))
    return {
        **result,
        "outage_rounds": args.outage_rounds,
        "backlog_reports": backlog,
        "steady_round_s": steady,
        "restart_s": restart,
        "backlog_drained_s": drained,
        "drain_ratio": drained / (steady * args.outage_rounds),
    }


async def disk_full(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    mount = base / "disk"
    mount.mkdir()
    refused = _mount_tmpfs(mount, args.disk_size)
    if refused:
        return {"skipped": refused}
    try:
        data_dir = mount / "data"
        async with enrolled_fleet(args, data_dir, base) as (http, ctl, agents, steady):
            progress("disk: filling the controller's disk")
            _fill(mount / "filler")
            refused_rounds = 0
            for round_no in range(2, 5):
                for agent in agents:
                    agent.collect(round_no)
                done = await asyncio.gather(*(agent.flush(http, ctl) for agent in agents))
                refused_rounds += not all(done)
            (mount / "filler").unlink()
            freed = time.perf_counter()
            resumed = None
            while resumed is None:
                if await _takes_changes(http, ctl.url, agents[0].token):
                    resumed = time.perf_counter() - freed
                else:
                    await asyncio.sleep(0.01)  # waits-for: the store's next retry
            drained = await drain(http, ctl, agents, 600)
            await ctl.stop()
        result = verdict(agents, await stored_reports(data_dir))
    finally:
        await asyncio.to_thread(
            subprocess.run, ["umount", "-l", str(mount)], check=False, capture_output=True
        )
    return {
        **result,
        "disk_size": args.disk_size,
        "rounds_refused": refused_rounds,
        "steady_round_s": steady,
        "writes_resumed_s": resumed,
        "backlog_drained_s": drained,
        "drain_ratio": drained / steady,
    }


async def _takes_changes(http: aiohttp.ClientSession, url: str, token: str) -> bool:
    """Whether the controller takes changes again: an empty batch is acknowledged."""
    body = orjson.dumps({"protocol_version": PROTOCOL_VERSION, "reports": []})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        async with http.post(f"{url}/api/v1/agent/reports", data=body, headers=headers) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """None once mounted, else why not."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) for a tmpfs of its own"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if result.returncode == 0 else f"mount refused: {result.stderr.strip()}"


def _fill(path: Path) -> None:
    with open(path, "ab", buffering=0) as handle, contextlib.suppress(OSError):
        while handle.write(b"\0" * 1_048_576):
            pass


SCENARIOS = {"crash": crash, "outage": outage, "disk": disk_full}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "devices": args.devices,
        "agents": args.agents,
        "report_history": REPORT_HISTORY,
    }
    with tempfile.TemporaryDirectory(prefix="polyfleet-faults-") as tmp:
        for name in args.scenarios:
            progress(f"{name}...")
            started = time.perf_counter()
            results[name] = await SCENARIOS[name](args, Path(tmp))
            results[name]["scenario_s"] = time.perf_counter() - started
    progress("")
    return results


def show(results: dict[str, Any]) -> None:
    print(f"{results['devices']} devices, {results['agents']} agents")
    for name in SCENARIOS:
        if name not in results:
            continue
        r = results[name]
        if "skipped" in r:
            print(f"{name:<7} skipped: {r['skipped']}")
            continue
        print(
            f"{name:<7} acknowledged {r['acknowledged']:>8}  lost {r['lost']}  "
            f"kept twice {r['kept_twice']}  duplicates answered {r['duplicates']}  "
            f"({r['stored_devices']} devices stored, {r['scenario_s']:.0f} s)"
        )
        if name == "crash":
            print(
                f"        {r['kills']} kill -9: restart {r['restart_after_kill_s']:.2f} s "
                f"(max {r['restart_after_kill_max_s']:.2f}), first ack "
                f"{r['first_ack_after_kill_s']:.2f} s; ratio to a clean restart "
                f"({r['clean_restart_s']:.2f} s): {r['restart_ratio']:.2f}"
            )
        elif name == "outage":
            print(
                f"        backlog {r['backlog_reports']} reports drained in "
                f"{r['backlog_drained_s']:.2f} s; ratio to {r['outage_rounds']} steady rounds "
                f"({r['steady_round_s']:.2f} s each): {r['drain_ratio']:.2f}"
            )
        elif name == "disk":
            print(
                f"        writes resumed {r['writes_resumed_s']:.2f} s after space was freed; "
                f"backlog drained in {r['backlog_drained_s']:.2f} s, ratio to a steady round "
                f"({r['steady_round_s']:.2f} s): {r['drain_ratio']:.2f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--kills", type=int, default=10, help="kill -9 in the crash scenario")
    parser.add_argument("--outage-rounds", type=int, default=3)
    parser.add_argument("--disk-size", default="192m", help="tmpfs size for the disk scenario")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        help="which to run (default: all)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.kills < 1 or args.agents < 1 or args.devices < args.agents:
        parser.error("--kills and --agents must be at least 1, --devices at least --agents")
    if sys.stderr.isatty() and not args.json:
        print("running (a few minutes)...", file=sys.stderr)
    results = asyncio.run(asyncio.wait_for(run(args), TIME_LIMIT_S))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    failed = [
        name
        for name in SCENARIOS
        if name in results and (results[name].get("lost") or results[name].get("kept_twice"))
    ]
    if failed:
        print(f"acknowledged reports lost or kept twice in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
