"""Start-up time and peak memory of a 1,000-device lab, against bare TLS servers of that count."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def address(n: int) -> str:
    """The n-th loopback address of the benchmark (127.60.0.1 upwards)."""
    return f"127.60.{n // 250}.{n % 250 + 1}"


async def run_lab(count: int, data_dir: Path, probe: int) -> dict[str, Any]:
    import aiohttp

    from polyfleet.simulator.fleet import DeviceSpec
    from polyfleet.simulator.lab import Lab
    from polyfleet.simulator.testing import fleet_of

    started = time.perf_counter()
    specs = [
        DeviceSpec(
            serial=f"BENCH{n:05d}",
            model=("studio_x30", "studio_x50", "studio_x70", "g7500")[n % 4],
            address=address(n),
            rest_port=0,
            ssh_port=0,
        )
        for n in range(count)
    ]
    lab = Lab(fleet_of(specs), data_dir=data_dir)
    await lab.start()
    start_s = time.perf_counter() - started
    # Prove the devices serve: log in and read /rest/system on a sample of them.
    sample = list(lab.devices.values())[:: max(1, count // max(1, probe))][:probe]
    latencies = []
    connector = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        for device in sample:
            t0 = time.perf_counter()
            base = f"https://{device.address}:{device.rest_port}"
            body = {"user": "admin", "password": device.admin_password}
            async with http.post(base + "/rest/session", json=body) as response:
                assert response.status == 200, response.status
            async with http.get(base + "/rest/system") as response:
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - t0)
            http.cookie_jar.clear()
    # And the SSH side of a few: log in and run `status` (paramiko, in threads).
    ssh_sample = sample[:3]
    answers = await asyncio.gather(*(asyncio.to_thread(ssh_status, d) for d in ssh_sample))
    assert all(answer.endswith("status end\r\n") for answer in answers), answers
    await lab.stop()
    return {
        "start_s": round(start_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "probed": len(latencies),
        "probe_max_ms": round(max(latencies, default=0) * 1000, 1),
        "ssh_probed": len(answers),
    }


def ssh_status(device: Any) -> str:
    """``status`` over SSH, trusting the host key the lab advertises (and no other)."""
    import paramiko

    from polyfleet.shared.fingerprint import sha256_fingerprint

    client = paramiko.SSHClient()

    class Pin(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, _c: paramiko.SSHClient, _h: str, key: paramiko.PKey) -> None:
            if sha256_fingerprint(key.asbytes()) != device.ssh_fingerprint:
                raise paramiko.SSHException("host key does not match the lab's")

    client.set_missing_host_key_policy(Pin())
    client.connect(
        device.address,
        port=device.ssh_port,
        username="admin",
        password=device.admin_password,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _stdin, stdout, _stderr = client.exec_command("status", timeout=10)
        return str(stdout.read().decode())
    finally:
        client.close()


async def run_bare(count: int, data_dir: Path) -> dict[str, Any]:
    """Baseline: per address a bare aiohttp TLS server and a plain TCP listener, nothing else."""
    from aiohttp import web

    from polyfleet.simulator.identity import make_tls_identity

    identity = make_tls_identity(data_dir, "bench", "127.0.0.1")
    started = time.perf_counter()

    async def handler(_request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    servers = []
    for n in range(count):
        server = web.Server(handler)
        servers.append(await loop.create_server(server, address(n), 0, ssl=context))
        servers.append(await asyncio.start_server(lambda r, w: w.close(), address(n), 0))
    start_s = time.perf_counter() - started
    for s in servers:
        s.close()
    return {
        "start_s": round(start_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def worker(args: argparse.Namespace) -> int:
    from polyfleet.simulator.lab import raise_open_file_limit

    raise_open_file_limit()
    data_dir = Path(args.data_dir)
    if args.worker == "lab":
        result = asyncio.run(run_lab(args.devices, data_dir, args.probe))
    else:
        result = asyncio.run(run_bare(args.devices, data_dir))
    print(json.dumps(result))
    return 0


def measure(kind: str, devices: int, data_dir: Path, probe: int, timeout: float) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--devices",
        str(devices),
        "--data-dir",
        str(data_dir),
        "--probe",
        str(probe),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run with {devices} devices failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000, help="lab size (default 1000)")
    parser.add_argument("--probe", type=int, default=20, help="devices to log in to after start")
    parser.add_argument("--timeout", type=float, default=300, help="limit per run in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=["lab", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not 1 <= args.devices <= 5000:
        parser.error("--devices must be 1..5000 (the benchmark stays bounded)")
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        data = Path(tmp)
        cold = measure("lab", args.devices, data / "lab", args.probe, args.timeout)
        warm = measure("lab", args.devices, data / "lab", args.probe, args.timeout)
        small = measure("lab", 10, data / "small", min(args.probe, 10), args.timeout)
        bare = measure("bare", args.devices, data / "bare", 0, args.timeout)
    report = {
        "devices": args.devices,
        "lab_cold": cold,
        "lab_warm": warm,
        "lab_10_devices": small,
        "baseline_bare_tls_servers": bare,
        "ratio_warm_start_vs_bare": round(warm["start_s"] / max(bare["start_s"], 1e-6), 2),
        "ratio_rss_vs_bare": round(warm["peak_rss_mb"] / max(bare["peak_rss_mb"], 1e-6), 2),
        "rss_per_device_kb": round(
            (warm["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 / max(1, args.devices - 10), 1
        ),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"lab of {args.devices} devices")
        print(f"  cold start (makes certificates and keys): {cold['start_s']:.2f} s")
        print(f"  warm start (reuses them):                 {warm['start_s']:.2f} s")
        per_device = report["rss_per_device_kb"]
        print(f"  peak RSS: {warm['peak_rss_mb']:.0f} MB ({per_device} KB per device)")
        print(
            f"  probe: {warm['probed']} devices logged in over REST "
            f"(slowest {warm['probe_max_ms']} ms), {warm['ssh_probed']} ran status over SSH"
        )
        print(
            f"10-device lab: start {small['start_s']:.2f} s, peak RSS {small['peak_rss_mb']:.0f} MB"
        )
        print(
            f"baseline, bare aiohttp TLS + TCP listeners x{args.devices}: "
            f"start {bare['start_s']:.2f} s, peak RSS {bare['peak_rss_mb']:.0f} MB"
        )
        print(
            f"ratio lab/baseline: start x{report['ratio_warm_start_vs_bare']}, "
            f"memory x{report['ratio_rss_vs_bare']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
