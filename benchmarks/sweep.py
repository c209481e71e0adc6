"""One agent sweep of 1,000 slow lab devices against a bare aiohttp loop making the same calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from polyfleet.agent.config import AgentConfig, DeviceConfig, Secret
from polyfleet.agent.outbox import Outbox
from polyfleet.agent.pins import PinStore
from polyfleet.agent.poller import Poller
from polyfleet.agent.transport.rest import fingerprint_digest

PASSWORD = "bench-admin-pw"

#: The calls one poll cycle makes, in order (the bare loop repeats exactly these).
CYCLE = [
    ("POST", "/rest/session"),
    ("GET", "/rest/system"),
    ("GET", "/rest/system/status"),
    ("GET", "/rest/system/mode"),
    ("POST", "/rest/current/devicemanagement/devices"),
    ("GET", "/rest/audio/microphones"),
    ("GET", "/rest/conferences"),
    ("DELETE", "/rest/session"),
]


# --- the lab, in its own process so its CPU is not counted as the agent's -------------------


def serve_lab(count: int, latency_ms: float, data_dir: Path, info_path: Path) -> None:
    from polyfleet.simulator.fleet import FaultWindow
    from polyfleet.simulator.lab import raise_open_file_limit
    from polyfleet.simulator.testing import make_device, start_lab

    raise_open_file_limit()

    async def main() -> None:
        slow = [FaultWindow(name="slow", params={"latency_ms": latency_ms})]
        specs = [
            make_device(f"BENCH{i:05d}", admin_password=PASSWORD, faults=slow) for i in range(count)
        ]
        lab = await start_lab(data_dir, specs)
        await lab.jump_timeline(0.0)
        devices = [
            {
                "host": d.address,
                "rest_port": d.rest_port,
                "ssh_port": d.ssh_port,
                "tls": d.tls_fingerprint,
            }
            for d in lab.devices.values()
        ]
        tmp = info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(devices))
        os.replace(tmp, info_path)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await lab.stop()

    asyncio.run(main())


def start_lab_process(
    count: int, latency_ms: float, work: Path
) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]]]:
    info = work / "lab.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-lab",
            str(work),
            "--devices",
            str(count),
            "--latency-ms",
            str(latency_ms),
        ],
    )
    deadline = time.monotonic() + 600
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the lab did not start")
        time.sleep(0.1)  # waits-for: the lab process to write its device list
    return proc, json.loads(info.read_text())


# --- the two contestants --------------------------------------------------------------------


async def agent_sweep(
    devices: list[dict[str, Any]], work: Path, concurrency: int
) -> dict[str, float]:
    password_file = work / "password"
    password_file.write_text(PASSWORD)
    os.chmod(password_file, 0o600)
    config = AgentConfig(
        data_dir=work / "agent",
        devices=tuple(
            DeviceConfig(
                host=d["host"],
                rest_port=d["rest_port"],
                ssh_port=d["ssh_port"],
                password=Secret(file=password_file),
                tls_fingerprint=d["tls"],
            )
            for d in devices
        ),
        concurrency=concurrency,
        device_timeout_s=60.0,
        # The bare loop makes the REST cycle only; SSH cross-checks (one poll in
        # ssh_cross_check_every) are another kind of work, left out of both sides.
        ssh_cross_check_every=0,
    )
    outbox = Outbox(config.data_dir / "outbox")
    await outbox.open()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        poller = Poller(config, session=session, outbox=outbox, pins=PinStore(config.data_dir))
        await poller.apply_config_pins()
        cpu0, wall0 = time.process_time(), time.monotonic()
        snapshots = await poller.sweep()
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    await outbox.close()
    ok = sum(1 for s in snapshots if s.health.state.value == "ok" and s.host_serial is None)
    return {"wall_s": wall, "cpu_s": cpu, "devices_ok": ok, "spooled": len(outbox)}


async def bare_sweep(devices: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    semaphore = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(session: aiohttp.ClientSession, d: dict[str, Any]) -> None:
        nonlocal ok
        fingerprint = aiohttp.Fingerprint(fingerprint_digest(d["tls"]))
        base = f"https://{d['host']}:{d['rest_port']}"
        headers: dict[str, str] = {}
        async with semaphore:
            for method, path in CYCLE:
                body = (
                    {"user": "admin", "password": PASSWORD}
                    if path == "/rest/session" and method == "POST"
                    else None
                )
                # The agent closes its connection with the logout; so does the bare loop.
                last = {"Connection": "close"} if method == "DELETE" else {}
                async with session.request(
                    method, base + path, json=body, headers={**headers, **last}, ssl=fingerprint
                ) as resp:
                    await resp.read()
                    cookies = {k: m.value for k, m in resp.cookies.items()}
                    if cookies:
                        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
                        if "XSRF-TOKEN" in cookies:
                            headers["x-xsrf-token"] = cookies["XSRF-TOKEN"]
            ok += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.gather(*(one(session, d) for d in devices))
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "devices_ok": ok}


def run_side(side: str, work: Path, concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--run-side",
            side,
            str(work),
            "--concurrency",
            str(concurrency),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-lab", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-side", nargs=2, metavar=("SIDE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_lab is not None:
        serve_lab(
            args.devices, args.latency_ms, args.serve_lab / "lab", args.serve_lab / "lab.json"
        )
        return 0

    from polyfleet.simulator.lab import raise_open_file_limit

    raise_open_file_limit()
    if args.run_side is not None:
        # A child: one contestant in a fresh process, so its RSS is its own.
        side, work = args.run_side
        devices = json.loads((Path(work) / "lab.json").read_text())
        if side == "bare":
            asyncio.run(bare_sweep(devices, args.concurrency))  # warm-up of the lab
            measured = asyncio.run(bare_sweep(devices, args.concurrency))
        else:
            measured = asyncio.run(agent_sweep(devices, Path(work), args.concurrency))
        measured["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(measured))
        return 0
    with tempfile.TemporaryDirectory(prefix="polyfleet-sweep-") as tmp:
        work = Path(tmp)
        lab, _devices = start_lab_process(args.devices, args.latency_ms, work)
        try:
            bare = run_side("bare", work, args.concurrency)
            agent = run_side("agent", work, args.concurrency)
        finally:
            lab.send_signal(signal.SIGTERM)
            lab.wait(timeout=120)
    rss_mb = agent["rss_mb"]
    result = {
        "devices": args.devices,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "agent": agent,
        "bare": bare,
        "wall_ratio": agent["wall_s"] / bare["wall_s"],
        "cpu_ratio": agent["cpu_s"] / bare["cpu_s"] if bare["cpu_s"] else None,
        "agent_rss_mb": rss_mb,
        "targets": {"wall_ratio_max": 1.5, "rss_mb_max": 300},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.devices} devices, {args.latency_ms:g} ms added latency")
    print(f"concurrency {args.concurrency}")
    print(
        f"agent  sweep: {agent['wall_s']:.2f} s wall, {agent['cpu_s']:.2f} s CPU, "
        f"{agent['devices_ok']} ok, {agent['spooled']} spooled"
    )
    print(
        f"bare   loop : {bare['wall_s']:.2f} s wall, {bare['cpu_s']:.2f} s CPU, "
        f"{bare['devices_ok']} ok"
    )
    print(
        f"ratio       : {result['wall_ratio']:.2f}x wall (target <= 1.5), "
        f"{result['cpu_ratio'] or 0:.2f}x CPU"
    )
    print(f"agent RSS   : {rss_mb:.0f} MB (target < 300; bare loop {bare['rss_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
