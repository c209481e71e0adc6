"""Stored rollout plans and firmware packages through a running controller's API."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.crawl import crawl
from testkit.reports import report_as_new_agent, typed_snapshot

from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import (
    Model,
    ProblemCode,
    Provider,
    Snapshot,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REGISTRY = (
    "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,"
    "host_serial\n"
    """K1,studio_x50,2025-01-10,poly_plus,PP-1,2025-01-10,2028-01-09,krakow,Sala A,
K2,studio_x50,2025-01-10,poly_plus,PP-2,2025-01-10,2028-01-09,krakow,Sala B,
K3,studio_x30,2025-01-10,hezo_plus,HZ-3,2025-01-10,2027-01-09,krakow,Sala C,
K4,studio_x50,2025-01-10,poly_plus,PP-4,2025-01-10,2028-01-09,krakow,Sala D,
"""
)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "data", clock=lambda: NOW) as running:
        yield running


def snapshot(
    serial: str,
    model: Model,
    version: str,
    build: str,
    *codes: ProblemCode,
    provider: Provider = Provider.POLY,
) -> Snapshot:
    """A unit as its agent reported it at NOW."""
    return typed_snapshot(
        serial, *codes, at=NOW, model=model, version=version, build=build, provider=provider
    )


async def call(
    controller: RunningController, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.request(method, controller.url + path, **kwargs) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def import_registry(controller: RunningController) -> None:
    """The asset registry (REGISTRY) imported through the API."""
    status, _ = await call(
        controller, "POST", "/api/v1/assets/import", data=REGISTRY,
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert status == 200


async def fleet(controller: RunningController) -> None:
    await import_registry(controller)
    await report_as_new_agent(
        controller,
        "krakow",
        snapshot("K1", Model.STUDIO_X50, "4.1.0_00", "180034"),
        snapshot("K2", Model.STUDIO_X50, "4.1.3", "394009"),
        snapshot("K3", Model.STUDIO_X30, "4.1.0_00", "180034"),
        snapshot(
            "K4",
            Model.STUDIO_X50,
            "4.1.0_00",
            "180034",
            ProblemCode.CAMERA_DOWN,
        ),
        snapshot("K5", Model.STUDIO_X50, "4.2.2", "408037", provider=Provider.TEAMS),
    )


async def test_a_planned_rollout_is_stored_listed_and_shown(controller: RunningController) -> None:
    """POST plans and stores; list and show return it with devices, reasons and waves."""
    await fleet(controller)
    body = {"target": "4.2.2-408037", "name": "Kraków to 4.2.2", "waves": "50%,100%"}
    status, plan = await call(controller, "POST", "/api/v1/rollouts", json=body)
    assert status == 201, plan
    assert plan["status"] == "planned" and plan["target"] == "4.2.2-408037"
    assert plan["name"] == "Kraków to 4.2.2" and plan["created_by"] == "test admin"
    assert [w["name"] for w in plan["waves"]] == ["canary", "50%", "100%"]
    by = {d["serial"]: d for d in plan["devices"]}
    assert by["K1"]["status"] == "planned" and by["K1"]["room"] == "Sala A"
    assert [r["code"] for r in by["K3"]["reasons"]] == ["not_entitled"]
    assert [r["code"] for r in by["K4"]["reasons"]] == ["unhealthy"]
    assert [r["code"] for r in by["K5"]["reasons"]] == ["teams_managed", "already_current"]
    assert by["K5"]["status"] == "excluded"
    assert by["K1"]["window"]["start"] == "2026-11-26T01:00:00+01:00"
    status, listed = await call(controller, "GET", "/api/v1/rollouts")
    assert status == 200 and [r["id"] for r in listed["rollouts"]] == [plan["id"]]
    status, shown = await call(controller, "GET", f"/api/v1/rollouts/{plan['id']}")
    assert status == 200 and shown["devices"] == plan["devices"]
    status, text = await call(controller, "GET", f"/api/v1/rollouts/{plan['id']}?format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {row["serial"] for row in rows} == {"K1", "K2", "K3", "K4", "K5"}
    assert (await call(controller, "GET", "/api/v1/rollouts/r_nope"))[0] == 404


async def test_dry_run_stores_nothing_and_a_bad_plan_names_its_field(
    controller: RunningController,
) -> None:
    """?dry_run=1 computes only; an unknown target is 422 with field target."""
    await fleet(controller)
    status, preview = await call(
        controller, "POST", "/api/v1/rollouts?dry_run=1", json={"target": "4.2.2-408037"}
    )
    assert status == 200 and preview["status"] == "preview" and preview["devices"]
    assert (await call(controller, "GET", "/api/v1/rollouts"))[1]["rollouts"] == []
    status, error = await call(controller, "POST", "/api/v1/rollouts", json={"target": "9.9.9"})
    assert status == 422 and error["error"]["field"] == "target"
    status, error = await call(
        controller, "POST", "/api/v1/rollouts", json={"target": "4.2.2", "waves": "50%,20%"}
    )
    assert status == 422 and error["error"]["field"] == "waves"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "night\x1b[31m"}, "name"),
        ({"name": "night\nshift"}, "name"),
        ({"name": "night \u202eshift"}, "name"),
        ({"target": "4.2.2\r"}, "target"),
        ({"sites": ["krakow\x1b"]}, "sites"),
        ({"models": ["studio_x50\n"]}, "models"),
        ({"exclude": ["K1\tK2"]}, "exclude"),
    ],
)
async def test_a_plan_text_with_a_control_character_is_refused_by_field(
    controller: RunningController, body: dict[str, Any], field: str
) -> None:
    """An escape, line break or bidi override in a plan's texts is 422 invalid_plan naming
    the field, planned or previewed; the message shows no raw control character."""
    await fleet(controller)
    for query in ("", "?dry_run=1"):
        request = {"target": "4.2.2", **body}
        status, error = await call(controller, "POST", "/api/v1/rollouts" + query, json=request)
        assert status == 422, error
        assert (error["error"]["code"], error["error"]["field"]) == ("invalid_plan", field)
        message = error["error"]["message"]
        assert message.startswith(f"{field}: contains ")
        assert message.isprintable(), message
    assert (await call(controller, "GET", "/api/v1/rollouts"))[1]["rollouts"] == []
    _, logged = await call(controller, "GET", "/api/v1/audit?action=rollout")
    assert logged["entries"] == []


async def test_a_planned_name_is_kept_with_printable_text_beyond_latin(
    controller: RunningController,
) -> None:
    """Polish letters and a 200-character name pass the text check; 201 characters do not."""
    await fleet(controller)
    name = "Żółć: noc " + "x" * 190
    status, plan = await call(
        controller, "POST", "/api/v1/rollouts", json={"target": "4.2.2", "name": name}
    )
    assert status == 201 and plan["name"] == name
    status, error = await call(
        controller, "POST", "/api/v1/rollouts", json={"target": "4.2.2", "name": name + "y"}
    )
    assert (status, error["error"]["field"]) == (422, "name")


async def test_a_plan_keeps_its_abort_criteria_and_refuses_a_bad_one(
    controller: RunningController,
) -> None:
    """abort_criteria given in the body are stored as given; a bad key is named."""
    await fleet(controller)
    criteria = [
        {"waves": "canary", "failure_type": "any", "threshold_percent": 0.0, "min_executed": 1},
        {
            "waves": "later",
            "failure_type": "checksum_mismatch",
            "threshold_percent": 5.0,
            "min_executed": 20,
        },
    ]
    body = {"target": "4.2.2", "abort_criteria": criteria}
    status, plan = await call(controller, "POST", "/api/v1/rollouts", json=body)
    assert status == 201 and plan["abort_criteria"] == criteria
    shown = (await call(controller, "GET", f"/api/v1/rollouts/{plan['id']}"))[1]
    assert shown["abort_criteria"] == criteria
    bad = {"target": "4.2.2", "abort_criteria": [{"waves": "later", "threshold_percent": 101}]}
    status, error = await call(controller, "POST", "/api/v1/rollouts", json=bad)
    assert status == 422 and error["error"]["field"] == "abort_criteria.0.threshold_percent"


async def test_controls_follow_the_status_and_are_events(controller: RunningController) -> None:
    """start (only with packages), pause, resume, abort; 409 when wrong; each an event, audited."""
    await fleet(controller)
    _, plan = await call(controller, "POST", "/api/v1/rollouts", json={"target": "4.2.2"})
    rid = plan["id"]
    assert (await call(controller, "POST", f"/api/v1/rollouts/{rid}/resume"))[0] == 409
    code, refused = await call(controller, "POST", f"/api/v1/rollouts/{rid}/start")
    assert code == 409 and "no firmware package for 4.2.2-408037" in refused["error"]["message"]
    await call(controller, "PUT", "/api/v1/releases/4.2.2-408037/package", data=b"fw" * 100)
    for action, status in (("start", "running"), ("pause", "paused"), ("resume", "running")):
        code, body = await call(controller, "POST", f"/api/v1/rollouts/{rid}/{action}")
        assert (code, body["status"]) == (200, status)
    code, body = await call(controller, "POST", f"/api/v1/rollouts/{rid}/abort")
    assert body["status"] == "aborted" and body["finished_at"]
    report = await crawl(controller.url, controller.admin_token)  # aborted
    assert f"{controller.url}/rollouts/{rid}" in report.visited
    report.check()
    assert (await call(controller, "POST", f"/api/v1/rollouts/{rid}/start"))[0] == 409
    _, events = await call(controller, "GET", "/api/v1/events?kind=rollout_changed")
    actions = [e["data"]["action"] for e in events["events"]]
    assert sorted(actions) == ["abort", "pause", "resume", "start"]
    _, logged = await call(controller, "GET", "/api/v1/audit?action=rollout")
    audited = sorted(e["action"] for e in logged["entries"])
    assert audited == [
        "rollout.abort",
        "rollout.pause",
        "rollout.plan",
        "rollout.resume",
        "rollout.start",
    ]
    assert {e["actor"]["name"] for e in logged["entries"]} == {"test admin"}


async def test_viewers_read_but_cannot_plan(controller: RunningController) -> None:
    """A viewer token lists rollouts, packages and the penalty box, and gets 403 on planning,
    adding a package and releasing a device."""
    viewer, _ = await controller.core.access.create_token(Role.VIEWER, "viewer")
    headers = {"Authorization": f"Bearer {viewer}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for path in ("rollouts", "releases/packages", "rollouts/penalty-box"):
            async with http.get(f"{controller.url}/api/v1/{path}") as response:
                assert response.status == 200, path
        async with http.post(controller.url + "/api/v1/rollouts", json={"target": "4.2.2"}) as r:
            assert r.status == 403
        url = controller.url + "/api/v1/releases/4.2.2-408037/package"
        async with http.put(url, data=b"firmware") as r:
            assert r.status == 403
        async with http.delete(controller.url + "/api/v1/rollouts/penalty-box/K1") as r:
            assert r.status == 403
    assert (await call(controller, "GET", "/api/v1/releases/packages"))[1]["packages"] == []


async def test_refusals_keep_their_status_code_and_field(controller: RunningController) -> None:
    """Unknown rollouts, actions, packages and penalty-box entries are 404 not_found; a
    status filter that is none is 400."""
    for method, path in (
        ("GET", "/api/v1/rollouts/r_nope"),
        ("GET", "/api/v1/rollouts/r_nope/status"),
        ("POST", "/api/v1/rollouts/r_nope/start"),
        ("POST", "/api/v1/rollouts/r_nope/explode"),
        ("DELETE", "/api/v1/rollouts/penalty-box/K1"),
        ("GET", "/api/v1/releases/4.2.2-408037/package"),
    ):
        status, error = await call(controller, method, path)
        assert (status, error["error"]["code"]) == (404, "not_found"), (method, path)
    status, error = await call(controller, "POST", "/api/v1/rollouts/r_nope/explode")
    assert "no action 'explode'" in error["error"]["message"]
    status, error = await call(controller, "DELETE", "/api/v1/rollouts/penalty-box/K1")
    assert error["error"]["message"] == "K1 is not in the penalty box"
    status, error = await call(controller, "GET", "/api/v1/rollouts?status=sleeping")
    assert (status, error["error"]["code"]) == (400, "invalid")


async def test_a_package_is_kept_with_its_checksum_and_served_in_ranges(
    controller: RunningController,
) -> None:
    """PUT keeps the file with SHA-256 and size; GET serves it, also from an offset."""
    content = bytes(range(256)) * 4096
    digest = hashlib.sha256(content).hexdigest()
    status, body = await call(
        controller,
        "PUT",
        f"/api/v1/releases/4.2.2-408037/package?sha256={digest.upper()}",
        data=content,
    )
    assert status == 201, body
    assert (body["version"], body["sha256"], body["size"]) == ("4.2.2-408037", digest, len(content))
    _, listed = await call(controller, "GET", "/api/v1/releases/packages")
    assert [p["version"] for p in listed["packages"]] == ["4.2.2-408037"]
    async with aiohttp.ClientSession(headers=controller.admin_headers) as http:
        url = controller.url + "/api/v1/releases/4.2.2/package"
        async with http.get(url) as response:
            assert response.status == 200 and await response.read() == content
            assert response.headers["X-Checksum-Sha256"] == digest
        async with http.get(url, headers={"Range": "bytes=1000-"}) as response:
            assert response.status == 206 and await response.read() == content[1000:]


async def test_a_package_with_a_wrong_checksum_or_release_is_refused(
    controller: RunningController,
) -> None:
    """A mismatching --sha256 or an uncatalogued release keeps nothing."""
    status, body = await call(
        controller,
        "PUT",
        "/api/v1/releases/4.2.2-408037/package?sha256=" + "0" * 64,
        data=b"firmware",
    )
    assert status == 422 and body["error"]["field"] == "sha256"
    assert "not the 0000" in body["error"]["message"]
    status, body = await call(controller, "PUT", "/api/v1/releases/9.9.9/package", data=b"x")
    assert status == 422 and body["error"]["field"] == "version"
    assert (await call(controller, "GET", "/api/v1/releases/packages"))[1]["packages"] == []
    leftovers = list((controller.data_dir / "packages").glob("*"))
    assert leftovers == []


async def test_entries_are_found_by_rollout_and_serial_across_plans_and_restarts(
    tmp_path: Path,
) -> None:
    """Each rollout shows its own devices and a device its rollouts, newest first, as plans
    are added and after the controller starts again on the same data."""
    times = (NOW + timedelta(minutes=n) for n in itertools.count())
    # Each reading of the clock a minute later: every plan is newer than the one before.
    async with running_controller(tmp_path / "data", clock=lambda: next(times)) as first:
        await fleet(first)
        ids = []
        for name in ("one", "two"):
            _, plan = await call(
                first, "POST", "/api/v1/rollouts", json={"target": "4.2.2", "name": name}
            )
            ids.append(plan["id"])
        _, history = await call(first, "GET", "/api/v1/devices/K1/rollouts")
        assert [r["id"] for r in history["rollouts"]] == ids[::-1]
        # Planned after the service has read where entries are: found all the same.
        _, plan = await call(
            first, "POST", "/api/v1/rollouts", json={"target": "4.2.2", "sites": ["krakow"]}
        )
        ids.append(plan["id"])
        _, history = await call(first, "GET", "/api/v1/devices/K1/rollouts")
        assert [r["id"] for r in history["rollouts"]] == ids[::-1]
        assert history["rollouts"][0]["device"]["serial"] == "K1"
        await call(first, "PUT", "/api/v1/releases/4.2.2-408037/package", data=b"fw" * 100)
        assert (await call(first, "POST", f"/api/v1/rollouts/{ids[1]}/start"))[0] == 200
        shown = {rid: (await call(first, "GET", f"/api/v1/rollouts/{rid}"))[1] for rid in ids}
    async with running_controller(tmp_path / "data", clock=lambda: next(times)) as again:
        for rid in ids:
            status, rollout = await call(again, "GET", f"/api/v1/rollouts/{rid}")
            assert status == 200 and rollout["devices"] == shown[rid]["devices"]
        assert [d["serial"] for d in shown[ids[0]]["devices"]] == ["K1", "K2", "K3", "K4", "K5"]
        _, history = await call(again, "GET", "/api/v1/devices/K3/rollouts")
        assert [r["id"] for r in history["rollouts"]] == ids[::-1]
        _, status_page = await call(again, "GET", f"/api/v1/rollouts/{ids[1]}/status")
        assert status_page["status"] == "running"
        assert status_page["progress"]["by_status"] == shown[ids[1]]["progress"]["by_status"]
