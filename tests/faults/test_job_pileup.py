"""Jobs pile up no more: one pending job of a kind per device; a second gets 409 naming it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from access_testkit import controller_process, enroll_agent, post_report
from testkit.clients import call_with_token
from testkit.reports import snapshot

REBOOT = {"kind": "reboot"}


async def _site_with_devices(
    http: aiohttp.ClientSession, url: str, admin: str, *serials: str
) -> dict[str, Any]:
    """Site krk with an enrolled agent that has reported ``serials``; the agent's answer."""
    api = f"{url}/api/v1"
    await call_with_token(http, "POST", f"{api}/sites", admin, {"id": "krk"})
    _, invite = await call_with_token(http, "POST", f"{api}/invites", admin, {"site": "krk"})
    agent = await enroll_agent(http, url, invite["code"])
    now = datetime.now(UTC).isoformat()
    for number, serial in enumerate(serials):
        await post_report(
            http, url, agent["token"], snapshot(serial, collected_at=now), f"report-{number:05d}"
        )
    return agent


async def report_reboot_done(
    http: aiohttp.ClientSession, url: str, agent_token: str, job_id: str
) -> None:
    """The agent's result for reboot job ``job_id``: done; the controller takes it."""
    status, answer = await call_with_token(
        http,
        "POST",
        f"{url}/api/v1/agent/jobs/{job_id}/result",
        agent_token,
        {"status": "done", "detail": "reboot requested"},
    )
    assert status == 200, answer


async def test_twenty_reboots_within_a_second_are_one_job(tmp_path: Path) -> None:
    """Of twenty concurrent reboots one is queued; the rest get 409 naming it, restarts too."""
    data = tmp_path / "data"
    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        api = f"{controller.url}/api/v1"
        admin = await controller.admin_token("ops")
        agent = await _site_with_devices(http, controller.url, admin, "X50-1", "X50-2")
        answers = await asyncio.gather(
            *(
                call_with_token(http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT)
                for _ in range(20)
            )
        )
        created = [body for status, body in answers if status == 201]
        refused = [body for status, body in answers if status != 201]
        assert len(created) == 1, answers
        first = created[0]["id"]
        assert sorted(status for status, _ in answers) == [201] + [409] * 19
        for body in refused:
            assert body["error"]["code"] == "job_pending" and body["error"]["field"] == "kind"
            assert first in body["error"]["message"]
            assert "X50-1" in body["error"]["message"] and "reboot" in body["error"]["message"]
        _, jobs = await call_with_token(http, "GET", f"{api}/devices/X50-1/jobs", admin)
        assert [job["id"] for job in jobs["jobs"]] == [first]

        # Per kind and per device: diagnostics of the same device and a reboot of another go.
        status, diagnostics = await call_with_token(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, {"kind": "collect_diagnostics"}
        )
        assert status == 201, diagnostics
        assert (await call_with_token(http, "POST", f"{api}/devices/X50-2/jobs", admin, REBOOT))[
            0
        ] == 201
        # Handed to the agent, the reboot is still pending.
        _, handed = await call_with_token(
            http, "GET", f"{controller.url}/api/v1/agent/jobs", agent["token"]
        )
        assert first in {job["id"] for job in handed["jobs"]}
        status, answer = await call_with_token(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT
        )
        assert status == 409 and first in answer["error"]["message"]
        await controller.kill()

    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        api = f"{controller.url}/api/v1"
        status, answer = await call_with_token(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT
        )
        assert status == 409 and first in answer["error"]["message"]
        # Once the agent reports the result, the next reboot may be ordered.
        await report_reboot_done(http, controller.url, agent["token"], first)
        status, again = await call_with_token(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT
        )
        assert status == 201 and again["id"] != first


async def test_a_cancelled_job_frees_its_kind_and_keeps_a_late_result(tmp_path: Path) -> None:
    """Cancel takes a pending job off the agent's list; a result arriving later is kept."""
    async with controller_process(tmp_path / "data") as controller, aiohttp.ClientSession() as http:
        api = f"{controller.url}/api/v1"
        admin = await controller.admin_token("ops")
        agent = await _site_with_devices(http, controller.url, admin, "X50-1")
        _, queued = await call_with_token(http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT)
        _, handed = await call_with_token(http, "GET", f"{api}/agent/jobs", agent["token"])
        assert [job["id"] for job in handed["jobs"]] == [queued["id"]]

        status, cancelled = await call_with_token(
            http, "POST", f"{api}/jobs/{queued['id']}/cancel", admin
        )
        assert status == 200, cancelled
        assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] == "ops"
        assert (await call_with_token(http, "POST", f"{api}/jobs/{queued['id']}/cancel", admin))[
            0
        ] == 409
        assert (await call_with_token(http, "POST", f"{api}/jobs/job_none/cancel", admin))[0] == 404
        _, handed = await call_with_token(http, "GET", f"{api}/agent/jobs", agent["token"])
        assert handed["jobs"] == []
        status, next_one = await call_with_token(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, REBOOT
        )
        assert status == 201

        # The agent had run the cancelled one already: what it did is kept, still cancelled.
        await report_reboot_done(http, controller.url, agent["token"], queued["id"])
        _, late = await call_with_token(http, "GET", f"{api}/jobs/{queued['id']}", admin)
        assert late["status"] == "cancelled" and late["result"]["status"] == "done"
        _, pending = await call_with_token(http, "GET", f"{api}/jobs/{next_one['id']}", admin)
        assert pending["status"] == "queued"

        _, log = await call_with_token(http, "GET", f"{api}/audit", admin)
        jobs = [(e["action"], e["target"]) for e in log["entries"] if e["action"].startswith("job")]
        assert jobs == [
            ("job.create", f"job:{next_one['id']}"),
            ("job.cancel", f"job:{queued['id']}"),
            ("job.create", f"job:{queued['id']}"),
        ]
