"""Jobs against the lab: a wedged unit rebooted over SSH, never in a call, no camera alone;
results say why a job was not done, in a code older controllers may not take."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import pytest
from agent_testkit import PolledUnit
from aiohttp import web
from pydantic import BaseModel, ConfigDict
from testkit.servers import serving
from testkit.waiting import wait_until

from polyfleet.agent.jobs import JobRunner
from polyfleet.agent.uplink import ControllerRefused, Uplink
from polyfleet.controller.http.errors import ApiError, error_response, parse_json, validate
from polyfleet.shared.schema import FailureCode, HealthState, Job, JobKind, JobResult


def job(serial: str, kind: JobKind) -> Job:
    return Job(
        id=f"job-{serial}-{kind.value}", kind=kind, serial=serial, created_at=datetime.now(UTC)
    )


async def test_wedged_unit_is_rebooted_over_ssh_but_not_in_a_call(
    polled_unit: Callable[..., Awaitable[PolledUnit]], http: aiohttp.ClientSession
) -> None:
    """REST wedged: the call check and the reboot go over SSH; in a call it is refused."""
    device, poller, key = await polled_unit("WREBOOT", model="g7500")
    await poller.poll_device(key)
    # Results are posted by _run, not execute: this uplink is never called.
    runner = JobRunner(poller, Uplink("http://127.0.0.1:9", session=http))
    await device.set_fault("wedged", True)
    await device.start_call()
    refused = await runner.execute(job("WREBOOT", JobKind.REBOOT))
    assert (refused.status, refused.detail) == ("refused", "device is in a call")
    assert refused.code is FailureCode.IN_CALL
    assert device.power == "on" and device.has_fault("wedged")
    await device.end_call()
    done = await runner.execute(job("WREBOOT", JobKind.REBOOT))
    assert done.status == "done", done.detail
    await wait_until(
        lambda: device.power == "on" and not device.has_fault("wedged"), what="unit back up"
    )
    host, _camera = await poller.poll_device(key)
    assert host.via.value == "rest" and host.health.state is HealthState.OK


async def test_camera_reboot_is_refused_naming_its_host(
    polled_unit: Callable[..., Awaitable[PolledUnit]], http: aiohttp.ClientSession
) -> None:
    """A reboot ordered for an E70 is refused, naming the host to reboot; the host keeps running."""
    device, poller, key = await polled_unit("CAMHOST", model="g7500")
    e70 = next(p.serial for p in device.peripherals if p.kind == "e70")
    await poller.poll_device(key)
    runner = JobRunner(poller, Uplink("http://127.0.0.1:9", session=http))
    result = await runner.execute(job(e70, JobKind.REBOOT))
    assert result.status == "refused" and "reboot CAMHOST" in result.detail
    assert result.code is FailureCode.NOT_SUPPORTED
    assert device.power == "on"
    elsewhere = await runner.execute(job("NOTHERE", JobKind.REBOOT))
    assert (elsewhere.status, elsewhere.code) == ("failed", FailureCode.NOT_AT_SITE)


class ResultBeforeCodes(BaseModel):
    """A job result as controllers from before failure codes validate it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["done", "failed", "refused"]
    detail: str = ""
    artifact_sha256: str | None = None


@pytest.fixture
async def older_controller() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The result endpoint of a controller from before codes (its own validation and error
    answer), on loopback; yields its URL and the bodies it received."""
    received: list[dict[str, Any]] = []

    async def post_result(request: web.Request) -> web.Response:
        body = parse_json(await request.read())
        received.append(body)
        job_id = request.match_info["job_id"]
        if job_id == "job_finished":
            return error_response(409, "conflict", f"job {job_id} is finished already with done")
        try:
            validate(ResultBeforeCodes, body)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.field)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/api/v1/agent/jobs/{job_id}/result", post_result)
    async with serving(app) as url:
        yield url, received


async def test_a_coded_result_reaches_a_controller_from_before_codes_without_its_code(
    older_controller: tuple[str, list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    """Refused by name, the code is dropped and the same result is sent again once."""
    url, received = older_controller
    uplink = Uplink(url, session=http, token="t")
    failed = JobResult(status="failed", detail="install: FAILED", code=FailureCode.INSTALL_FAILED)
    await uplink.post_result("job_1", failed)
    assert received == [
        {
            "status": "failed",
            "detail": "install: FAILED",
            "artifact_sha256": None,
            "code": "install_failed",
        },
        {"status": "failed", "detail": "install: FAILED", "artifact_sha256": None},
    ]


async def test_a_result_without_a_code_is_sent_as_before_codes(
    older_controller: tuple[str, list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    """No code: no ``code`` key at all, taken at once; other refusals still reach the caller."""
    url, received = older_controller
    uplink = Uplink(url, session=http, token="t")
    await uplink.post_result("job_2", JobResult(status="done", detail="reboot requested"))
    assert received == [{"status": "done", "detail": "reboot requested", "artifact_sha256": None}]
    # Refused for something else than the code: sent once, and the caller hears of it.
    in_call = JobResult(status="refused", detail="device is in a call", code=FailureCode.IN_CALL)
    with pytest.raises(ControllerRefused) as refused:
        await uplink.post_result("job_finished", in_call)
    assert refused.value.status == 409
    assert len(received) == 2 and received[-1]["code"] == "in_call"
