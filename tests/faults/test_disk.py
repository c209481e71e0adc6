"""The controller's disk fills up or turns read-only, then recovers: a real small filesystem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from faultkit import (
    Answer,
    ControllerProcess,
    Controllers,
    SmallDisk,
    enroll,
    get_json,
    post_batch,
)
from testkit.processes import polyfleet
from testkit.reports import batch, report, snapshot
from testkit.waiting import wait_until

#: Snapshots only when asked (the journal is what fills), and quick retries for the test.
CONFIG = "[store]\nsnapshot_interval_s = 3600\nwrite_retry_max_s = 0.5\n"


async def failing(controller: ControllerProcess, http: aiohttp.ClientSession) -> float | None:
    return await controller.metric(http, controller.admin_token, "polyfleet_store_failing")


async def serials(controller: ControllerProcess, http: aiohttp.ClientSession) -> set[str]:
    answer = await get_json(http, controller.url, "/api/v1/devices", controller.admin_token)
    return {device["serial"] for device in answer.body["devices"]}


async def post_until_refused(
    controller: ControllerProcess, http: aiohttp.ClientSession, token: str, acked: dict[str, str]
) -> Any:
    """Post batches until the store refuses one (503); acknowledged reports go in ``acked``."""
    for number in range(200):
        reports = [report(snapshot(f"FULL-{number}-{i}")) for i in range(20)]
        answer = await post_batch(http, controller.url, token, batch(*reports))
        if answer.status != 200:
            return answer, reports
        for item in reports:
            acked[item["id"]] = item["snapshot"]["serial"]
    raise AssertionError("the full disk never refused a write")


@dataclass
class FullDisk:
    """A controller on a small disk filled until the store refused a batch."""

    disk: SmallDisk
    controller: ControllerProcess
    token: str
    #: Report id -> serial of every acknowledged report.
    acked: dict[str, str]
    refused: Answer
    #: The refused batch's reports.
    reports: list[dict[str, Any]]


async def filled_until_refused(
    controllers: Controllers, small_disk: Any, http: aiohttp.ClientSession
) -> FullDisk:
    """A controller with its data on an 8 MB disk, an agent's token, and the disk filled
    (but for 64 KiB) until a batch was refused."""
    disk: SmallDisk = small_disk("8m")
    controller = await controllers.start(CONFIG, data_dir=disk.path / "data")
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    acked: dict[str, str] = {}
    disk.fill(leave_bytes=64 * 1024)
    refused, reports = await post_until_refused(controller, http, token, acked)
    return FullDisk(disk, controller, token, acked, refused, reports)


async def resent_and_acked(
    controller: ControllerProcess,
    http: aiohttp.ClientSession,
    token: str,
    reports: list[dict[str, Any]],
    acked: dict[str, str],
) -> None:
    """``reports`` sent again, now taken: noted in ``acked`` (report id -> serial)."""
    again = await post_batch(http, controller.url, token, batch(*reports))
    assert again.status == 200, again
    for item in reports:
        acked[item["id"]] = item["snapshot"]["serial"]


async def all_acked_survive_kill(
    controller: ControllerProcess, http: aiohttp.ClientSession, acked: dict[str, str]
) -> None:
    """After kill -9 and a start, every device of an acknowledged report is known."""
    await controller.kill()
    await controller.start()
    assert set(acked.values()) <= await serials(controller, http)


async def test_store_writes_again_by_itself_after_the_disk_was_full(
    controllers: Controllers, small_disk: Any, http: aiohttp.ClientSession
) -> None:
    """Disk full: changes get 503 with the cause, reads carry a warning, a metric, /healthz and
    a log line say so; once space is freed writes resume without a restart, and after kill -9
    every acknowledged report (and the refused batch, sent again) is there."""
    full = await filled_until_refused(controllers, small_disk, http)
    disk, controller, token, acked = full.disk, full.controller, full.token, full.acked
    refused, reports = full.refused, full.reports
    assert refused.status == 503, refused
    assert refused.body["error"]["code"] == "store_unavailable"
    assert "No space left on device" in refused.body["error"]["message"]
    assert refused.headers.get("Retry-After")
    await controller.wait_log(r"the disk refuses writes \(No space left on device: .*journal")
    assert await failing(controller, http) == 1
    # The health check tells the truth, beside the role it always gave.
    health = (await get_json(http, controller.url, "/healthz", "")).body
    assert (health["role"], health["store_state"]) == ("active", "unavailable"), health
    assert "No space left on device" in health["store_problem"]
    # Reads go on, and say plainly that what they show may not be saved.
    devices = await get_json(http, controller.url, "/api/v1/devices", controller.admin_token)
    assert devices.status == 200
    assert "not saved yet" in devices.headers.get("Warning", "")
    listed = await polyfleet("controller", "devices", "--data-dir", str(controller.data_dir))
    assert "warning: storage is failing (No space left on device" in listed.err, listed.err

    disk.free()
    await wait_until(
        lambda: _is(failing(controller, http), 0.0), what="writes to resume by themselves"
    )
    await controller.wait_log("the disk takes writes again")
    await resent_and_acked(controller, http, token, reports, acked)
    answer = await get_json(http, controller.url, "/api/v1/devices", controller.admin_token)
    assert "Warning" not in answer.headers
    health = (await get_json(http, controller.url, "/healthz", "")).body
    assert (health["store_state"], health["store_problem"]) == ("available", None)

    await all_acked_survive_kill(controller, http, acked)


async def test_store_writes_again_after_the_disk_turned_read_only_and_back(
    controllers: Controllers, small_disk: Any, http: aiohttp.ClientSession
) -> None:
    """A full disk remounted read-only, then read-write and freed: the cause is named each
    time, and writes resume by themselves; nothing acknowledged is lost across kill -9."""
    full = await filled_until_refused(controllers, small_disk, http)
    disk, controller, token, acked = full.disk, full.controller, full.token, full.acked
    reports = full.reports
    # The store let go of its journal after the failed write: the remount is not refused
    # for a file open to write (it may be, for an instant, while a retry reopens it).
    await wait_until(
        lambda: disk.remount(read_only=True).returncode == 0,
        what="the filesystem to be remounted read-only",
    )
    await controller.wait_log(r"Read-only file system", timeout=30)
    disk.remount(read_only=False)
    disk.free()
    await wait_until(
        lambda: _is(failing(controller, http), 0.0), what="writes to resume by themselves"
    )
    await resent_and_acked(controller, http, token, reports, acked)
    await all_acked_survive_kill(controller, http, acked)


async def test_starting_on_a_full_disk_names_the_path_and_the_cause(
    controllers: Controllers, small_disk: Any, http: aiohttp.ClientSession
) -> None:
    """A controller that must write to start (a journal to fold in) on a full disk exits
    with the data path and "No space left on device", not an error about its listener."""
    disk: SmallDisk = small_disk("8m")
    controller = await controllers.start(CONFIG, data_dir=disk.path / "data")
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    await post_batch(http, controller.url, token, batch(report(snapshot("START-1"))))
    await controller.kill()
    disk.fill()
    await controller.start(expect_ready=False)
    assert controller.returncode == 1
    log = controller.log()
    assert f"cannot open the store in {disk.path / 'data'}" in log
    assert "No space left on device" in log
    assert "cannot serve on" not in log
    disk.free()
    await controller.start()
    assert "START-1" in await serials(controller, http)


async def _is(value: Any, expected: float) -> bool:
    return bool(await value == expected)
