"""Builders for controller tests: snapshots, reports, batches and a settable clock."""

from __future__ import annotations

import asyncio
import itertools
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from polyfleet.shared.schema import PROTOCOL_VERSION

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


class SettableClock:
    """Time that tests move forward explicitly."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def snapshot(
    serial: str,
    *,
    model: str = "studio_x50",
    problems: list[dict[str, str]] | None = None,
    state: str | None = None,
    collected_at: datetime | None = None,
    host_serial: str | None = None,
    peripherals: list[dict[str, Any]] | None = None,
    version: str = "4.1.0",
) -> dict[str, Any]:
    problems = problems or []
    if state is None:
        state = "fault" if problems else "ok"
    snap: dict[str, Any] = {
        "serial": serial,
        "model": model,
        "model_raw": "Poly Studio X50",
        "system_name": f"Room {serial}",
        "firmware": {"version": version, "build": "180034"},
        "provider": "teams",
        "health": {"state": state, "problems": problems},
        "in_call": False,
        "uptime_s": 3600.0,
        "peripherals": peripherals or [],
        "collected_at": (collected_at or datetime.now(UTC)).isoformat(),
        "via": "rest",
    }
    if host_serial is not None:
        snap["host_serial"] = host_serial
    return snap


def report(snap: dict[str, Any], report_id: str | None = None) -> dict[str, Any]:
    return {"id": report_id or f"report-{next(_ids):08d}", "snapshot": snap}


def batch(*reports: dict[str, Any], version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    return {"protocol_version": version, "reports": list(reports)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
