"""Dashboard benchmark: pages rendered on the server vs the API listing every device as JSON.

Runs on loopback only. A controller (in this process) is fed 10,000 devices by agents
posting batches over HTTP, and an asset registry with a contract for most of them; then, in
the same run, it times:

- the baseline: ``GET /api/v1/devices`` (every device as JSON), with an admin token;
- ``GET /`` (the overview: rooms, tickets, firmware compliance, expiries, changes);
- ``GET /devices?site=...&health=fault`` (a filtered device table, one page);
- ``GET /devices?flag=contract_expiring_90`` (filtered by an entitlement verdict flag).

Each page's first answer (verdicts judged from scratch) is reported on its own; then in
each round every page and the API answer once, in turn, and each page's median is compared
with the API's median as a ratio (below 1: the page renders faster than the API lists the
devices).

    python benchmarks/dashboard.py [--devices 10000] [--agents 20] [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polyfleet.controller.domain.plans import add_years  # noqa: E402
from polyfleet.controller.testing import RunningController, running_controller  # noqa: E402
from polyfleet.shared.schema import PROTOCOL_VERSION, ReportBatch  # noqa: E402

#: Hard cap on the whole run, so the benchmark always ends.
TIME_LIMIT_S = 600.0
MODELS = ("studio_x30", "studio_x50", "studio_x70", "g7500")
PROVIDERS = ("teams", "zoom", "poly")
VERSIONS = (("4.1.0", "382263"), ("4.1.3", "394009"), ("4.2.0", "396113"), ("4.2.2", "408037"))
SESSION_COOKIE = "polyfleet_session"


def serial_of(agent: int, index: int) -> str:
    return f"B{agent:03d}D{index:05d}"


def batch(agent: int, per_agent: int, now: datetime) -> bytes:
    """One agent's report of all its devices: a mix of models, modes, versions and faults."""
    reports = []
    for index in range(per_agent):
        serial = serial_of(agent, index)
        problems = [{"code": "camera_down", "detail": "no video"}] if index % 23 == 0 else []
        if not problems and index % 31 == 0:
            problems = [{"code": "log_storage_full", "detail": "98%"}]
        version, build = VERSIONS[index % len(VERSIONS)]
        reports.append(
            {
                "id": f"bench-{agent}-{index}",
                "snapshot": {
                    "serial": serial,
                    "model": MODELS[index % len(MODELS)],
                    "model_raw": "Poly Studio",
                    "system_name": f"Room {index // 4}",
                    "firmware": {"version": version, "build": build},
                    "provider": PROVIDERS[index % len(PROVIDERS)],
                    "health": {
                        "state": ("fault" if problems[0]["code"] == "camera_down" else "degraded")
                        if problems
                        else "ok",
                        "problems": problems,
                    },
                    "in_call": False,
                    "uptime_s": 3600.0,
                    "peripherals": [],
                    "collected_at": now.isoformat(),
                    "via": "rest",
                },
            }
        )
    body = {"protocol_version": PROTOCOL_VERSION, "reports": reports}
    return ReportBatch.model_validate(body).model_dump_json().encode()


def registry(agents: int, per_agent: int, today: date) -> str:
    """A registry row per device: rooms, purchases spread over three years, most under a
    Partner POLY+ or POLY+ contract, some ending within the next months."""
    lines = [
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
        "site,room,host_serial"
    ]
    for agent in range(agents):
        for index in range(per_agent):
            serial = serial_of(agent, index)
            purchase = today - timedelta(days=30 + (index * 7) % 1000)
            plan, number, start, end = "", "", "", ""
            if index % 5:
                start_day = purchase + timedelta(days=10)
                plan = "poly_plus" if index % 2 else "partner_poly_plus"
                years = 3 if plan == "partner_poly_plus" else 2
                end_day = add_years(start_day, years) - timedelta(days=1)
                number, start, end = f"C-{serial}", start_day.isoformat(), end_day.isoformat()
            lines.append(
                f"{serial},{MODELS[index % len(MODELS)]},{purchase.isoformat()},{plan},{number},"
                f"{start},{end},site-{agent:03d},Room {index // 4},"
            )
    return "\n".join(lines) + "\n"


async def feed(controller: RunningController, agents: int, per_agent: int) -> None:
    """Sites, agents and their reports; the registry; all over the API, as in production."""
    now = datetime.now(UTC)
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.post(
            controller.url + "/api/v1/assets/import",
            data=registry(agents, per_agent, now.date()).encode(),
            headers={"Content-Type": "text/csv"},
        ) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"registry import: {response.status} {await response.text()}")
    tokens = [(await controller.enroll(f"site-{agent:03d}")).token for agent in range(agents)]
    async with aiohttp.ClientSession() as http:
        for agent, token in enumerate(tokens):
            async with http.post(
                controller.url + "/api/v1/agent/reports",
                data=batch(agent, per_agent, now),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"reports: {response.status} {await response.text()}")


async def session_cookie(controller: RunningController, http: aiohttp.ClientSession) -> str:
    async with http.get(controller.url + "/signin") as response:
        nonce = response.cookies["polyfleet_signin"].value
    async with http.post(
        controller.url + "/signin",
        data={"token": controller.admin_token, "nonce": nonce, "next": "/"},
        cookies={"polyfleet_signin": nonce},
        allow_redirects=False,
    ) as response:
        return response.cookies[SESSION_COOKIE].value


async def timed(fetches: dict[str, Callable[[], Awaitable[int]]], rounds: int) -> dict[str, Any]:
    """Each one's first answer, then ``rounds`` rounds in which every one answers once, in
    turn (so a change in other load on the machine touches all alike); medians in seconds."""
    results: dict[str, Any] = {}
    for name, fetch in fetches.items():
        started = time.perf_counter()
        size = await fetch()
        results[name] = {"first_s": time.perf_counter() - started, "bytes": size, "times": []}
    for _ in range(rounds):
        for name, fetch in fetches.items():
            started = time.perf_counter()
            await fetch()
            results[name]["times"].append(time.perf_counter() - started)
    for result in results.values():
        result["median_s"] = statistics.median(result.pop("times"))
    return results


async def measure(devices: int, agents: int, rounds: int) -> dict[str, Any]:
    per_agent = devices // agents
    with tempfile.TemporaryDirectory(prefix="polyfleet-bench-") as folder:
        async with running_controller(Path(folder) / "data") as controller:
            started = time.perf_counter()
            await feed(controller, agents, per_agent)
            fed_s = time.perf_counter() - started
            async with aiohttp.ClientSession() as http:
                cookie = await session_cookie(controller, http)

                def getter(path: str, *, api: bool = False) -> Callable[[], Awaitable[int]]:
                    async def fetch() -> int:
                        headers = controller.admin_headers if api else {}
                        cookies = {} if api else {SESSION_COOKIE: cookie}
                        async with http.get(
                            controller.url + path, headers=headers, cookies=cookies
                        ) as response:
                            body = await response.read()
                            if response.status != 200:
                                raise RuntimeError(f"{path}: {response.status}")
                            return len(body)

                    return fetch

                site = f"site-{agents // 2:03d}"
                pages = {
                    "overview": "/",
                    "devices_site_fault": f"/devices?site={site}&health=fault",
                    "devices_flag": "/devices?flag=contract_expiring_90",
                }
                # The pages first: their first answer judges every verdict from scratch.
                fetches = {name: getter(path) for name, path in pages.items()}
                fetches["api"] = getter("/api/v1/devices", api=True)
                results = await timed(fetches, rounds)
                api = results.pop("api")
    baseline = api["median_s"]
    return {
        "devices": per_agent * agents,
        "fed_in_s": round(fed_s, 2),
        "api_devices_json": api,
        "pages": results,
        "ratios": {name: r["median_s"] / baseline for name, r in results.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(
        asyncio.wait_for(measure(args.devices, args.agents, args.rounds), TIME_LIMIT_S)
    )
    if args.json:
        print(json.dumps(result))
        return 0
    api = result["api_devices_json"]
    print(f"{result['devices']} devices (fed in {result['fed_in_s']} s)")
    print(
        f"  baseline  GET /api/v1/devices        median {api['median_s'] * 1000:7.1f} ms"
        f"  ({api['bytes'] / 1e6:.1f} MB)"
    )
    for name, page in result["pages"].items():
        print(
            f"  {name:<20} median {page['median_s'] * 1000:7.1f} ms  first "
            f"{page['first_s'] * 1000:7.1f} ms  ratio to the API {result['ratios'][name]:.2f}"
        )
    slower = [name for name, ratio in result["ratios"].items() if ratio >= 1]
    print(
        "every page renders faster than the API lists the devices"
        if not slower
        else f"slower than the API: {', '.join(slower)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
