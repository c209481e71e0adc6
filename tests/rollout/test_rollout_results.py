"""What a job's result does to its rollout: each failure code's outcome, and results without one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rollout_kit import package_bytes, registry_row
from testkit.clocks import SettableClock

from polyfleet.controller.services.rollout import ROLLOUT_DEVICES, device_key
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    FailureCode,
    Firmware,
    Health,
    HealthState,
    Model,
    Provider,
    Report,
    ReportBatch,
    Snapshot,
    Via,
)

#: 13:00 in Warsaw: inside the window every plan here asks for.
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WINDOW = "12:30-14:30"
TARGET = "4.2.2-408037"


@dataclass(frozen=True)
class Unit:
    """One unit alone in its site and its rollout (so it is that rollout's canary)."""

    serial: str
    site: str
    token: str
    rollout_id: str
    job_id: str


@dataclass(frozen=True)
class Outcome:
    """What the rollout shows after a result: the entry, the rollout, the penalty box."""

    status: str
    halted: bool
    penalty_box: bool
    window_moved: bool
    failures: int


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture
async def controller(tmp_path: Path, clock: SettableClock) -> AsyncIterator[RunningController]:
    # The runner's own loop waits an hour between ticks: each test ticks when it means to.
    async with running_controller(
        tmp_path / "data", clock=clock, sections={"rollouts": {"tick_s": 3600}}
    ) as running:
        async with (
            aiohttp.ClientSession(headers=running.admin_headers) as http,
            http.put(
                f"{running.url}/api/v1/releases/{TARGET}/package", data=package_bytes(TARGET)
            ) as response,
        ):
            assert response.status == 201, await response.text()
        yield running


async def call(
    controller: RunningController, method: str, path: str, *, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else controller.admin_headers
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, controller.url + path, **kw) as response,
    ):
        return response.status, await response.json()


async def ordered_units(controller: RunningController, names: list[str]) -> dict[str, Unit]:
    """One reported unit per name, each in its own site and its own started rollout, with
    its firmware job ordered and handed to the site's agent (played by the test)."""
    rows = [
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,"
        "host_serial"
    ]
    sites = {name: f"site-{n}" for n, name in enumerate(names)}
    rows += [registry_row(name, "studio_x50", site) for name, site in sites.items()]
    status, body = await call(
        controller, "POST", "/api/v1/assets/import",
        data="\n".join(rows) + "\n", headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert status == 200, body
    tokens: dict[str, str] = {}
    rollouts: dict[str, str] = {}
    for name, site in sites.items():
        await controller.ensure_site(site)
        tokens[name] = (await controller.enroll(site)).token
        snapshot = Snapshot(
            serial=name,
            model=Model.STUDIO_X50,
            firmware=Firmware(version="4.1.0_00", build="180034"),
            provider=Provider.POLY,
            health=Health(state=HealthState.OK),
            collected_at=NOW,
            via=Via.REST,
        )
        batch = ReportBatch(
            protocol_version=PROTOCOL_VERSION,
            reports=[Report(id=f"report-{name}", snapshot=snapshot)],
        )
        status, body = await call(
            controller, "POST", "/api/v1/agent/reports",
            token=tokens[name], json=batch.model_dump(mode="json"),
        )  # fmt: skip
        assert status == 200, body
        plan = {"target": TARGET, "sites": [site], "window": WINDOW, "start": "2026-11-25"}
        status, body = await call(controller, "POST", "/api/v1/rollouts", json=plan)
        assert status == 201, body
        assert body["waves"][0]["devices"] == [name]
        rollouts[name] = body["id"]
        status, body = await call(controller, "POST", f"/api/v1/rollouts/{body['id']}/start")
        assert status == 200, body
    await controller.core.rollouts.tick()
    units: dict[str, Unit] = {}
    for name in names:
        status, body = await call(controller, "GET", "/api/v1/agent/jobs", token=tokens[name])
        assert status == 200, body
        (job,) = body["jobs"]
        assert job["kind"] == "firmware_update" and job["serial"] == name
        units[name] = Unit(name, sites[name], tokens[name], rollouts[name], job["id"])
    return units


async def post_result(controller: RunningController, unit: Unit, result: dict[str, Any]) -> None:
    status, body = await call(
        controller, "POST", f"/api/v1/agent/jobs/{unit.job_id}/result",
        token=unit.token, json=result,
    )  # fmt: skip
    assert status == 200, body


async def outcome(controller: RunningController, unit: Unit) -> Outcome:
    status, rollout = await call(controller, "GET", f"/api/v1/rollouts/{unit.rollout_id}")
    assert status == 200, rollout
    (entry,) = rollout["devices"]
    _, box = await call(controller, "GET", "/api/v1/rollouts/penalty-box")
    planned = datetime.fromisoformat(rollout["waves"][0]["opens_at"])
    return Outcome(
        status=entry["status"],
        halted=rollout["status"] == "halted",
        penalty_box=unit.serial in {d["serial"] for d in box["devices"]},
        window_moved=datetime.fromisoformat(entry["window"]["start"]) > planned,
        failures=len(entry["failures"]),
    )


async def tickets_for(controller: RunningController, serial: str) -> list[dict[str, Any]]:
    _, body = await call(controller, "GET", "/api/v1/tickets")
    return [
        t
        for t in body["tickets"]
        if t["serial"] == serial and t["fault"] == "firmware_update_failed"
    ]


#: A failed job's code -> what it must lead to: (status, halted, penalty box, window moved).
FAILED_OUTCOMES: dict[FailureCode, tuple[str, bool, bool, bool]] = {
    # The unit may be bricked: out of the rollout, boxed, and ticketed (checked below).
    FailureCode.DID_NOT_RETURN: ("failed", True, True, False),
    # The update failed on the unit: tried again at once, boxed on the second failure.
    FailureCode.INSTALL_FAILED: ("waiting_window", True, False, False),
    FailureCode.VERIFICATION_FAILED: ("waiting_window", True, False, False),
    # Untrusted until re-pinned: no point trying again.
    FailureCode.CERTIFICATE_CHANGED: ("failed", True, True, False),
    # The package, not the unit: the breaker counts it, the unit is not punished.
    FailureCode.CHECKSUM_MISMATCH: ("waiting_window", True, False, True),
    # Nothing was done to the unit: its next window, nothing counted.
    FailureCode.DOWNLOAD_FAILED: ("waiting_window", False, False, True),
    FailureCode.DEVICE_UNREACHABLE: ("waiting_window", False, False, True),
    FailureCode.DEVICE_ERROR: ("waiting_window", False, False, True),
    FailureCode.IN_CALL: ("waiting_window", False, False, True),
    FailureCode.UPLOAD_FAILED: ("waiting_window", False, False, True),
    # Its room was booked all the time its window had left: the next window, waiting as
    # postponed_booked (the status says why), nothing counted.
    FailureCode.ROOM_BOOKED: ("postponed_booked", False, False, True),
    # Nothing this agent can do for it: its part is over, nothing counted.
    FailureCode.NOT_AT_SITE: ("failed", False, False, False),
    FailureCode.NOT_SUPPORTED: ("failed", False, False, False),
}


async def test_each_failure_code_leads_to_its_outcome(controller: RunningController) -> None:
    """Every failure code of a failed job: retry, next window or out; counted, boxed, ticketed."""
    assert set(FAILED_OUTCOMES) == set(FailureCode)
    codes = list(FailureCode)
    units = await ordered_units(controller, [f"CODE{n:02d}" for n in range(len(codes))])
    for unit, code in zip(units.values(), codes, strict=True):
        await post_result(
            controller, unit, {"status": "failed", "detail": f"words: {code}", "code": code}
        )
    await controller.core.rollouts.tick()
    for unit, code in zip(units.values(), codes, strict=True):
        status, halted, boxed, moved = FAILED_OUTCOMES[code]
        assert await outcome(controller, unit) == Outcome(status, halted, boxed, moved, 1), code
        entry = controller.core.store.get(ROLLOUT_DEVICES, device_key(unit.rollout_id, unit.serial))
        assert entry is not None and entry["failures"][0]["code"] == code.value
        # Shown as before codes: the detail's first word.
        assert entry["failures"][0]["check"] == "words"
        ticketed = await tickets_for(controller, unit.serial)
        assert len(ticketed) == (1 if code is FailureCode.DID_NOT_RETURN else 0), code


async def test_a_second_failure_of_the_update_puts_the_unit_in_the_penalty_box(
    controller: RunningController, clock: SettableClock
) -> None:
    """A failure that does not punish comes first; the two install failures after it box it,
    until an admin releases it (audited)."""
    unit = (await ordered_units(controller, ["TWICE"]))["TWICE"]
    service = controller.core.rollouts

    async def fail(code: str) -> Outcome:
        await post_result(controller, unit, {"status": "failed", "detail": "x: y", "code": code})
        await service.tick()
        return await outcome(controller, unit)

    async def ordered_again() -> Unit:
        await service.tick()
        _, body = await call(controller, "GET", "/api/v1/agent/jobs", token=unit.token)
        (job,) = body["jobs"]
        assert job["id"] != unit.job_id
        return Unit(unit.serial, unit.site, unit.token, unit.rollout_id, job["id"])

    shown = await fail("download_failed")
    assert (shown.status, shown.window_moved, shown.halted, shown.penalty_box) == (
        "waiting_window", True, False, False,
    )  # fmt: skip
    clock.now = NOW + timedelta(days=1)  # its next window
    unit = await ordered_again()
    shown = await fail("install_failed")
    assert (shown.status, shown.halted, shown.penalty_box) == ("waiting_window", True, False)
    status, body = await call(controller, "POST", f"/api/v1/rollouts/{unit.rollout_id}/resume")
    assert status == 200, body
    unit = await ordered_again()  # at once: the same window
    shown = await fail("install_failed")
    assert (shown.status, shown.penalty_box, shown.failures) == ("failed", True, 3)
    path = f"/api/v1/rollouts/penalty-box/{unit.serial}"
    assert await call(controller, "DELETE", path) == (200, {"released": unit.serial})
    assert (await outcome(controller, unit)).penalty_box is False
    status, body = await call(controller, "DELETE", path)
    assert (status, body["error"]["code"]) == (404, "not_found")
    _, logged = await call(controller, "GET", "/api/v1/audit?action=rollout.penalty_release")
    assert [e["target"] for e in logged["entries"]] == [f"device:{unit.serial}"]


async def test_a_result_without_a_code_is_judged_as_before(controller: RunningController) -> None:
    """An agent from before codes: failures count, are tried again, and did_not_return tickets."""
    units = await ordered_units(controller, ["OLD01", "OLD02", "OLD03", "OLD04"])
    # Exactly what such an agent posts: no code key at all.
    await post_result(
        controller,
        units["OLD01"],
        {"status": "failed", "detail": "version: 4.1.0_00 build 180034, expected 4.2.2"},
    )
    await post_result(
        controller,
        units["OLD02"],
        {"status": "failed", "detail": "did_not_return: no answer 600s after the order"},
    )
    await post_result(
        controller, units["OLD03"], {"status": "refused", "detail": "unreachable: unreachable"}
    )
    await post_result(controller, units["OLD04"], {"status": "done", "detail": "on 4.2.2"})
    await controller.core.rollouts.tick()
    assert await outcome(controller, units["OLD01"]) == Outcome(
        "waiting_window", True, False, False, 1
    )
    assert await outcome(controller, units["OLD02"]) == Outcome("failed", True, True, False, 1)
    assert await outcome(controller, units["OLD03"]) == Outcome(
        "waiting_window", False, False, True, 0
    )
    assert await outcome(controller, units["OLD04"]) == Outcome("done", False, False, False, 0)
    _, job = await call(controller, "GET", f"/api/v1/jobs/{units['OLD01'].job_id}")
    # Stored as such results always were.
    assert job["result"] == {
        "status": "failed",
        "detail": "version: 4.1.0_00 build 180034, expected 4.2.2",
    }
    store = controller.core.store
    entry = store.get(ROLLOUT_DEVICES, device_key(units["OLD01"].rollout_id, "OLD01"))
    assert entry is not None and "code" not in entry["failures"][0]
    assert entry["failures"][0]["check"] == "version"
    _, rollout = await call(controller, "GET", f"/api/v1/rollouts/{units['OLD01'].rollout_id}")
    assert rollout["halt"]["reason"] == "a canary failed: OLD01 (not on the target version)"
    assert len(await tickets_for(controller, "OLD02")) == 1


async def test_a_refused_job_moves_to_the_next_window_whatever_its_code(
    controller: RunningController,
) -> None:
    """Refused (in a call, unreachable): never a failure, whatever the code says."""
    units = await ordered_units(controller, ["REF01"])
    await post_result(
        controller,
        units["REF01"],
        {"status": "refused", "detail": "in_call: a call started", "code": "in_call"},
    )
    await controller.core.rollouts.tick()
    assert await outcome(controller, units["REF01"]) == Outcome(
        "waiting_window", False, False, True, 0
    )


async def test_an_unknown_failure_code_is_refused_naming_the_field(
    controller: RunningController,
) -> None:
    """A code this controller does not know: 422 naming ``code`` (a newer agent resends)."""
    units = await ordered_units(controller, ["NEW01"])
    unit = units["NEW01"]
    status, body = await call(
        controller, "POST", f"/api/v1/agent/jobs/{unit.job_id}/result", token=unit.token,
        json={"status": "failed", "detail": "x", "code": "quantum_flux"},
    )  # fmt: skip
    assert status == 422 and body["error"]["field"] == "code", body


async def test_a_progress_report_for_a_finished_entry_is_refused_and_logged(
    controller: RunningController, caplog: pytest.LogCaptureFixture
) -> None:
    """A move the table forbids (done back to installing) is refused, logged, not stored."""
    units = await ordered_units(controller, ["BUG01"])
    unit = units["BUG01"]
    store = controller.core.store
    key = device_key(unit.rollout_id, unit.serial)
    entry = store.get(ROLLOUT_DEVICES, key)
    assert entry is not None
    # A bug's leftovers: an entry done while still naming its job.
    await store.put_many(ROLLOUT_DEVICES, {key: {**entry, "status": "done"}})
    with caplog.at_level(logging.ERROR, logger="polyfleet.controller.services.rollout"):
        status, body = await call(
            controller, "POST", f"/api/v1/agent/jobs/{unit.job_id}/progress",
            token=unit.token, json={"status": "installing", "detail": "to 4.2.2"},
        )  # fmt: skip
    assert status == 409, body
    assert "done cannot move to installing" in body["error"]["message"]
    assert "done cannot move to installing" in caplog.text
    stored = store.get(ROLLOUT_DEVICES, key)
    assert stored is not None and stored["status"] == "done"


async def test_abort_criteria_are_stored_with_the_plan_and_checked(
    controller: RunningController,
) -> None:
    """Given criteria are stored as given; defaults follow max_failures; bad ones name the key."""
    units = await ordered_units(controller, ["CRIT1"])
    _, rollout = await call(controller, "GET", f"/api/v1/rollouts/{units['CRIT1'].rollout_id}")
    assert rollout["abort_criteria"] == [
        {"waves": "canary", "failure_type": "any", "threshold_percent": 0.0, "min_executed": 1},
        {"waves": "later", "failure_type": "any", "threshold_percent": 10.0, "min_executed": 1},
    ]
    criteria = [
        {"waves": "later", "failure_type": "checksum_mismatch", "threshold_percent": 0},
        {"waves": "later", "threshold_percent": 25, "min_executed": 4},
    ]
    body = {"target": TARGET, "window": WINDOW, "abort_criteria": criteria}
    status, plan = await call(controller, "POST", "/api/v1/rollouts", json=body)
    assert status == 201, plan
    assert plan["abort_criteria"] == [
        {
            "waves": "later",
            "failure_type": "checksum_mismatch",
            "threshold_percent": 0.0,
            "min_executed": 1,
        },
        {"waves": "later", "failure_type": "any", "threshold_percent": 25.0, "min_executed": 4},
    ]
    bad = {"target": TARGET, "abort_criteria": [{"waves": "later", "threshold_percent": 101}]}
    status, error = await call(controller, "POST", "/api/v1/rollouts", json=bad)
    assert status == 422
    assert error["error"]["field"] == "abort_criteria.0.threshold_percent"
    bad = {"target": TARGET, "abort_criteria": [{"waves": "all", "threshold_percent": 5}]}
    status, error = await call(controller, "POST", "/api/v1/rollouts", json=bad)
    assert status == 422 and error["error"]["field"] == "abort_criteria.0.waves"


async def test_a_job_whose_agent_is_silent_is_handed_out_again_once_the_unit_answers(
    controller: RunningController, clock: SettableClock
) -> None:
    """The unit reports the new version while the agent its job went to never says how the
    job went: after [rollouts] reassign_after_s (not the job lease) the job is queued again,
    with the reason on the job and a note on the entry, and the site's agent gets it back."""
    unit = (await ordered_units(controller, ["SILENT"]))["SILENT"]
    service = controller.core.rollouts
    clock.now = NOW + timedelta(minutes=5)
    snapshot = Snapshot(
        serial=unit.serial,
        model=Model.STUDIO_X50,
        firmware=Firmware(version="4.2.2", build="408037"),
        provider=Provider.POLY,
        health=Health(state=HealthState.OK),
        collected_at=clock.now,
        via=Via.REST,
    )
    batch = ReportBatch(
        protocol_version=PROTOCOL_VERSION,
        reports=[Report(id="report-silent-after", snapshot=snapshot)],
    )
    status, body = await call(
        controller, "POST", "/api/v1/agent/reports",
        token=unit.token, json=batch.model_dump(mode="json"),
    )  # fmt: skip
    assert status == 200, body
    await service.tick()  # the unit is seen answering on the new version
    _, body = await call(controller, "GET", "/api/v1/agent/jobs", token=unit.token)
    assert body["jobs"] == []  # not yet: its agent may still report
    clock.now += timedelta(seconds=61)
    await service.tick()
    job = controller.core.jobs.get(unit.job_id)
    assert job is not None and job["status"] == "queued"
    assert "said nothing" in job["reassigned"][0]["why"]
    _, rollout = await call(controller, "GET", f"/api/v1/rollouts/{unit.rollout_id}")
    (entry,) = rollout["devices"]
    assert [n["code"] for n in entry["notes"]][-1] == "reassigned"
    _, body = await call(controller, "GET", "/api/v1/agent/jobs", token=unit.token)
    assert [j["id"] for j in body["jobs"]] == [unit.job_id]
    # The agent that gets it back reports it: the rollout takes the result once.
    await post_result(controller, unit, {"status": "done", "detail": "already on 4.2.2-408037"})
    await service.tick()
    assert (await outcome(controller, unit)).status == "done"
