"""The agent protocol against a real controller: enrollment, batches, refusals, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from testkit.clocks import SettableClock
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.agent.delivery import _NAMED_SERIAL
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import MAX_BATCH_SNAPSHOTS, MAX_BODY_BYTES, PROTOCOL_VERSION


async def _post(
    http: aiohttp.ClientSession, controller: RunningController, token: str, body: object
) -> tuple[int, dict[str, object]]:
    async with http.post(
        f"{controller.url}/api/v1/agent/reports", json=body, headers=bearer(token)
    ) as response:
        return response.status, await response.json()


async def _devices(http: aiohttp.ClientSession, controller: RunningController) -> list[dict]:
    async with http.get(
        f"{controller.url}/api/v1/devices", headers=controller.admin_headers
    ) as response:
        assert response.status == 200
        return (await response.json())["devices"]


async def test_enrollment_code_is_single_use(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A code gives one credential; using it again is refused with 403."""
    code = await controller.enrollment_code("krk")
    body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "krk-1"}
    async with http.post(f"{controller.url}/api/v1/agent/enroll", json=body) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["site_id"] == "krk"
    assert answer["token"].startswith("pfa_")
    assert answer["poll_interval_s"] == 60
    async with http.post(f"{controller.url}/api/v1/agent/enroll", json=body) as response:
        assert response.status == 403
        assert (await response.json())["error"]["field"] == "code"


async def test_enrollment_code_expires(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A code older than its time to live is refused and says how to get a new one."""
    clock = SettableClock()
    async with running_controller(tmp_path, clock=clock, enroll_code_ttl_s=600) as controller:
        code = await controller.enrollment_code("krk")
        clock.advance(601)
        body = {"protocol_version": PROTOCOL_VERSION, "code": code}
        async with http.post(f"{controller.url}/api/v1/agent/enroll", json=body) as response:
            assert response.status == 403
            assert "expired" in (await response.json())["error"]["message"]


async def test_batch_is_stored_and_listed(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Accepted snapshots appear in the device list with the documented keys."""
    agent = await controller.enroll("krk")
    status, ack = await _post(
        http,
        controller,
        agent.token,
        batch(report(snapshot("X50-1")), report(snapshot("X30-1", model="studio_x30"))),
    )
    assert (status, ack) == (200, {"accepted": 2, "duplicates": 0})
    devices = {device["serial"]: device for device in await _devices(http, controller)}
    assert set(devices) == {"X50-1", "X30-1"}
    device = devices["X30-1"]
    assert device["model"] == "studio_x30"
    assert device["provider"] == "teams"
    assert device["firmware"] == {"version": "4.1.0", "build": "180034"}
    assert device["health"] == {"state": "ok", "problems": []}
    assert device["site"] == "krk"
    assert device["room"] is None
    assert device["last_seen"]


async def test_resent_batch_is_stored_once(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Sending the same report ids again stores nothing new and says they were duplicates."""
    agent = await controller.enroll("krk")
    body = batch(
        report(snapshot("X50-1"), "rep-aaaa-0001"), report(snapshot("X50-2"), "rep-aaaa-0002")
    )
    assert await _post(http, controller, agent.token, body) == (
        200,
        {"accepted": 2, "duplicates": 0},
    )
    assert await _post(http, controller, agent.token, body) == (
        200,
        {"accepted": 0, "duplicates": 2},
    )
    async with http.get(
        f"{controller.url}/api/v1/devices/X50-1/reports", headers=controller.admin_headers
    ) as response:
        reports = (await response.json())["reports"]
    assert [r["id"] for r in reports] == ["rep-aaaa-0001"]


async def test_device_of_other_site_refuses_whole_batch(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A batch naming another site's device gets 403 naming the move action; nothing is stored."""
    krk = await controller.enroll("krk")
    waw = await controller.enroll("waw")
    assert (await _post(http, controller, krk.token, batch(report(snapshot("X50-1")))))[0] == 200
    status, body = await _post(
        http, controller, waw.token, batch(report(snapshot("NEW-1")), report(snapshot("X50-1")))
    )
    assert status == 403
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "device_at_other_site"
    assert "devices move X50-1" in error["message"]
    assert {d["serial"] for d in await _devices(http, controller)} == {"X50-1"}
    # After the admin moves it, the new site's agent may report it.
    async with http.post(
        f"{controller.url}/api/v1/devices/X50-1/move",
        json={"site": "waw"},
        headers=controller.admin_headers,
    ) as response:
        assert response.status == 200
    status, _ = await _post(http, controller, waw.token, batch(report(snapshot("X50-1"))))
    assert status == 200


async def test_refusal_names_every_foreign_device_of_the_batch(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Several foreign devices are all named, so an agent can hold them in one round trip."""
    krk = await controller.enroll("krk")
    gda = await controller.enroll("gda")
    waw = await controller.enroll("waw")
    assert (await _post(http, controller, krk.token, batch(report(snapshot("X50-1")))))[0] == 200
    assert (await _post(http, controller, gda.token, batch(report(snapshot("X30-7")))))[0] == 200
    body = batch(report(snapshot("X50-1")), report(snapshot("OWN-1")), report(snapshot("X30-7")))
    status, answer = await _post(http, controller, waw.token, body)
    assert status == 403
    error = answer["error"]
    assert isinstance(error, dict)
    message = str(error["message"])
    assert "device X50-1 belongs to site 'krk'" in message
    assert "device X30-7 belongs to site 'gda'" in message
    assert set(_NAMED_SERIAL.findall(message)) == {"X50-1", "X30-7"}  # what the agent reads
    assert "OWN-1" not in message
    assert {d["serial"] for d in await _devices(http, controller)} == {"X50-1", "X30-7"}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{not json", 400, "malformed_json", None),
        (b"[1, 2]", 422, "invalid", None),
        (
            json.dumps({"protocol_version": 99, "reports": []}).encode(),
            400,
            "unsupported_protocol_version",
            "protocol_version",
        ),
        (
            json.dumps({"protocol_version": "one", "reports": []}).encode(),
            422,
            "invalid",
            "protocol_version",
        ),
        (
            json.dumps(batch(report({**snapshot("X50-9"), "uptime_s": "long"}))).encode(),
            422,
            "invalid",
            "reports.0.snapshot.uptime_s",
        ),
        (
            json.dumps(batch(report({**snapshot("X50-9"), "model": "studio_x99"}))).encode(),
            422,
            "invalid",
            "reports.0.snapshot.model",
        ),
        (
            json.dumps(batch(report({**snapshot("X50-9"), "colour": "red"}))).encode(),
            422,
            "invalid",
            "reports.0.snapshot.colour",
        ),
        (
            json.dumps(
                batch(*(report(snapshot(f"S-{i}")) for i in range(MAX_BATCH_SNAPSHOTS + 1)))
            ).encode(),
            413,
            "too_many_snapshots",
            "reports",
        ),
        (b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", 413, "body_too_large", None),
        (
            json.dumps(batch(report(snapshot("X50-9")))).replace("3600.0", "1e400").encode(),
            422,
            "invalid",
            "reports.0.snapshot.uptime_s",
        ),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "unknown-protocol-version",
        "version-wrong-type",
        "wrong-type",
        "unknown-model",
        "unknown-key",
        "too-many-snapshots",
        "oversized-body",
        "infinite-uptime",
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    controller: RunningController,
    http: aiohttp.ClientSession,
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    """Bad input gets a JSON error naming the field; the server serves on, stored data unchanged."""
    agent = await controller.enroll("krk")
    assert (await _post(http, controller, agent.token, batch(report(snapshot("KEEP-1")))))[0] == 200
    before = await _devices(http, controller)
    async with http.post(
        f"{controller.url}/api/v1/agent/reports",
        data=body,
        headers={**bearer(agent.token), "Content-Type": "application/json"},
    ) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    assert await _devices(http, controller) == before


async def test_unknown_or_wrong_credentials_are_refused(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Reports need an agent token: none or an admin token is refused; the token is not echoed."""
    secret = "pfa_not-a-real-token-at-all"
    status, body = await _post(http, controller, secret, batch())
    assert status == 401
    assert secret not in json.dumps(body)
    status, body = await _post(http, controller, controller.admin_token, batch())
    assert status == 403


async def test_e70_keeps_link_to_its_host(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """An E70 reported as its own entry with host_serial shows up on both sides of the link."""
    agent = await controller.enroll("krk")
    camera = {
        "kind": "camera",
        "model_raw": "Poly Studio E70",
        "serial": "E70-1",
        "firmware": "4.1.0",
        "state": "connected",
    }
    host = snapshot("G75-1", model="g7500", peripherals=[camera])
    e70 = snapshot("E70-1", model="studio_e70", host_serial="G75-1")
    assert (await _post(http, controller, agent.token, batch(report(host), report(e70))))[0] == 200
    async with http.get(
        f"{controller.url}/api/v1/devices/G75-1", headers=controller.admin_headers
    ) as response:
        detail = await response.json()
    assert detail["cameras"] == ["E70-1"]
    assert detail["peripherals"][0]["serial"] == "E70-1"
    async with http.get(
        f"{controller.url}/api/v1/devices/E70-1", headers=controller.admin_headers
    ) as response:
        assert (await response.json())["host_serial"] == "G75-1"


async def test_health_history_records_changes_only(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Five reports with two health changes give three history entries and matching events."""
    agent = await controller.enroll("krk")
    camera_down = [{"code": "camera_down", "detail": "no video"}]
    for problems in ([], [], camera_down, camera_down, []):
        status, _ = await _post(
            http, controller, agent.token, batch(report(snapshot("X50-1", problems=problems)))
        )
        assert status == 200
    async with http.get(
        f"{controller.url}/api/v1/devices/X50-1", headers=controller.admin_headers
    ) as response:
        history = (await response.json())["health_history"]
    assert [entry["state"] for entry in history] == ["ok", "fault", "ok"]
    async with http.get(
        f"{controller.url}/api/v1/events?kind=health_changed&serial=X50-1",
        headers=controller.admin_headers,
    ) as response:
        events = (await response.json())["events"]
    assert [(e["data"]["old"], e["data"]["new"]) for e in events] == [
        (None, "ok"),
        ("ok", "fault"),
        ("fault", "ok"),
    ]


async def test_silent_device_becomes_unreachable_and_silent_agent_one_site_event(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Three poll intervals without a mention: device unreachable; agent silent: one site event."""
    clock = SettableClock()
    async with running_controller(tmp_path, clock=clock, poll_interval_s=60) as controller:
        inventory = controller.core.inventory
        agent = await controller.enroll("krk")
        body = batch(report(snapshot("X50-1")), report(snapshot("X50-2")))
        assert (await _post(http, controller, agent.token, body))[0] == 200
        clock.advance(120)
        # Only X50-2 is mentioned again; the agent is alive.
        assert (await _post(http, controller, agent.token, batch(report(snapshot("X50-2")))))[
            0
        ] == 200
        clock.advance(61)
        events = await inventory.check_liveness()
        assert [(e.kind, e.serial) for e in events] == [
            ("device_unreachable", "X50-1"),
            ("health_changed", "X50-1"),
        ]
        devices = {d["serial"]: d for d in await _devices(http, controller)}
        assert devices["X50-1"]["health"]["state"] == "unreachable"
        assert devices["X50-2"]["health"]["state"] == "ok"
        # Now the agent goes silent: one site event, no per-device storm.
        clock.advance(200)
        events = await inventory.check_liveness()
        assert [(e.kind, e.site_id) for e in events] == [("agent_offline", "krk")]
        clock.advance(200)
        assert await inventory.check_liveness() == []
        async with http.get(
            f"{controller.url}/api/v1/agent/jobs", headers=bearer(agent.token)
        ) as response:
            assert response.status == 200
        # Back online: its devices get a fresh silence period before being judged again.
        assert await inventory.check_liveness() == []
        for step in (120, 61):  # the agent keeps calling in but never mentions X50-2
            clock.advance(step)
            async with http.get(
                f"{controller.url}/api/v1/agent/jobs", headers=bearer(agent.token)
            ) as response:
                assert response.status == 200
        events = await inventory.check_liveness()
        assert [(e.kind, e.serial) for e in events] == [
            ("device_unreachable", "X50-2"),
            ("health_changed", "X50-2"),
        ]
        async with http.get(
            f"{controller.url}/api/v1/events?site=krk&kind=agent_online",
            headers=controller.admin_headers,
        ) as response:
            assert len((await response.json())["events"]) == 1
