"""Planning and running a rollout of 10,000 devices, against listing the same devices.

All run on one controller in this process, over HTTP on loopback, with the same fleet:
devices reported by agents of several sites and a registry with a contract each. Prints
the median seconds of each and their ratio to the listing: planning through the API (and
the pure planner alone), then, with ``--history`` earlier rollouts of the whole fleet
stored (aborted) and one started, a runner tick and the started rollout's status page.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from polyfleet.controller.app import _GC_NO_AUTOMATIC_FULL_PASS, GC_YOUNG_THRESHOLDS
from polyfleet.controller.services.rollout import request_from_json
from polyfleet.controller.testing import running_controller
from polyfleet.shared.schema import PROTOCOL_VERSION

MODELS = ("studio_x30", "studio_x50", "studio_x70", "g7500")
VERSIONS = (("4.1.0_00", "180034"), ("4.1.3", "394009"), ("3.14.1", "374010"), ("4.2.2", "408037"))
PROVIDERS = ("poly", "zoom", "teams", "poly")


def snapshot(serial: str, n: int, now: str) -> dict[str, Any]:
    version, build = VERSIONS[n % len(VERSIONS)]
    return {
        "serial": serial,
        "model": MODELS[n % len(MODELS)],
        "model_raw": "",
        "system_name": f"Room {serial}",
        "firmware": {"version": version, "build": build},
        "provider": PROVIDERS[(n // 7) % len(PROVIDERS)],
        "health": {"state": "ok" if n % 23 else "fault", "problems": []},
        "in_call": False,
        "uptime_s": 3600.0,
        "peripherals": [],
        "collected_at": now,
        "via": "rest",
    }


async def timed(repeat: int, action: Any) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await action()
        times.append(time.perf_counter() - started)
    return times


async def paired(repeat: int, first: Any, second: Any) -> tuple[list[float], ...]:
    """Wall and CPU seconds of ``first`` and ``second``, run in turns: on a machine other
    work shares, each pair sees the same load, so their ratio holds where their times do
    not. Client and controller run in this process, so its CPU time is the work of both."""
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for index, action in enumerate((first, second)):
            wall, cpu = time.perf_counter(), time.process_time()
            await action()
            walls[index].append(time.perf_counter() - wall)
            cpus[index].append(time.process_time() - cpu)
    return walls[0], walls[1], cpus[0], cpus[1]


async def main(devices: int, sites: int, repeat: int, history: int) -> None:
    with tempfile.TemporaryDirectory(prefix="polyfleet-bench-rollout-") as tmp:
        async with running_controller(Path(tmp) / "ctl", report_history=2) as controller:
            headers = controller.admin_headers
            now = datetime.now(UTC).isoformat()
            rows = [
                "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
                "site,room,host_serial"
            ]
            async with aiohttp.ClientSession(headers=headers) as http:
                for site_index in range(sites):
                    site = f"site{site_index:02d}"
                    await controller.ensure_site(site)
                    agent = await controller.enroll(site)
                    mine = [n for n in range(devices) if n % sites == site_index]
                    for start in range(0, len(mine), 500):
                        chunk = mine[start : start + 500]
                        batch = {
                            "protocol_version": PROTOCOL_VERSION,
                            "reports": [
                                {
                                    "id": f"bench-{n:06d}",
                                    "snapshot": snapshot(f"SN{n:06d}", n, now),
                                }
                                for n in chunk
                            ],
                        }
                        async with http.post(
                            controller.url + "/api/v1/agent/reports",
                            json=batch,
                            headers={"Authorization": f"Bearer {agent.token}"},
                        ) as response:
                            assert response.status == 200, await response.text()
                    # HEZO+ runs exactly two years; the POLY+ plans up to five.
                    plan = (
                        ("poly_plus", "2028-01-09"),
                        ("hezo_plus", "2027-01-09"),
                        ("partner_poly_plus", "2028-01-09"),
                    )
                    rows += [
                        f"SN{n:06d},{MODELS[n % 4]},2025-01-10,{plan[n % 3][0]},C{n},2025-01-10,"
                        f"{plan[n % 3][1]},{site},Room {n},"
                        for n in mine
                    ]
                async with http.post(
                    controller.url + "/api/v1/assets/import",
                    data="\n".join(rows) + "\n",
                    headers={"Content-Type": "text/csv"},
                ) as response:
                    assert response.status == 200, (await response.text())[:500]

                async def listing() -> None:
                    async with http.get(controller.url + "/api/v1/devices") as response:
                        body = await response.json()
                        assert len(body["devices"]) == devices

                async def planning() -> None:
                    async with http.post(
                        controller.url + "/api/v1/rollouts?dry_run=1",
                        json={"target": "4.2.2-408037"},
                    ) as response:
                        body = await response.json()
                        assert len(body["devices"]) == devices, body

                await listing()
                await planning()
                list_times, plan_times, list_cpu, plan_cpu = await paired(repeat, listing, planning)
            catalogues = controller.core.catalogues
            releases = await catalogues.releases()
            rollouts = controller.core.rollouts
            request = request_from_json({"target": "4.2.2-408037"})
            pure: list[float] = []
            for _ in range(repeat):
                started = time.perf_counter()
                rollouts.preview(request, plans=catalogues.plans, releases=releases)
                pure.append(time.perf_counter() - started)
            # Earlier rollouts of the whole fleet stay stored: a tick and a page must not
            # pay for them. The started one's windows open tomorrow night: a tick orders
            # nothing, it only looks at every entry of every rollout it runs.
            async with aiohttp.ClientSession(headers=headers) as http:
                for _ in range(history):
                    old = await rollouts.plan(request, plans=catalogues.plans, releases=releases)
                    await rollouts.act(old["id"], "abort")
                live = await rollouts.plan(request, plans=catalogues.plans, releases=releases)
                hops = {hop["version"] for d in live["devices"] for hop in d["hops"] or ()}
                for version in sorted(hops):
                    async with http.put(
                        f"{controller.url}/api/v1/releases/{version}/package",
                        data=f"VideoOS {version}".encode() * 64,
                    ) as response:
                        assert response.status == 201, await response.text()
                await rollouts.act(live["id"], "start")

                async def status_page() -> None:
                    url = f"{controller.url}/api/v1/rollouts/{live['id']}/status"
                    async with http.get(url) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                await rollouts.tick()
                await status_page()
                tick_times = await timed(repeat, rollouts.tick)
                page_times = await timed(repeat, status_page)
    listed, planned, direct, ticked, paged = (
        statistics.median(t) for t in (list_times, plan_times, pure, tick_times, page_times)
    )
    print(f"devices: {devices} in {sites} sites, {repeat} runs each (median)")
    print(f"list devices through the API:   {listed:.3f} s")
    print(f"plan a rollout through the API: {planned:.3f} s")
    print(f"plan in the service alone:      {direct:.3f} s")
    print(f"ratio plan / list:              {planned / listed:.2f}")
    cpu_ratio = statistics.median(plan_cpu) / statistics.median(list_cpu)
    print(f"ratio plan / list, CPU time:    {cpu_ratio:.2f}")
    print(f"with {history} earlier rollouts stored and one started:")
    print(f"a runner tick:                  {ticked:.3f} s")
    print(f"the rollout's status page:      {paged:.3f} s")
    print(f"ratio tick / list:              {ticked / listed:.2f}")
    print(f"ratio status page / list:       {paged / listed:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--history", type=int, default=4, help="earlier rollouts stored")
    args = parser.parse_args()
    # As `polyfleet controller serve` runs: full collections on a schedule only.
    gc.set_threshold(*GC_YOUNG_THRESHOLDS, _GC_NO_AUTOMATIC_FULL_PASS)
    asyncio.run(main(args.devices, args.sites, args.repeat, args.history))
    sys.exit(0)
