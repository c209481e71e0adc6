"""A changed SSH host key marks every report of its device until an admin accepts the new key."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from faultkit import ControllerProcess, get_json
from testkit.processes import polyfleet
from testkit.waiting import wait_until

from polyfleet.simulator.testing import make_device

SERIAL = "HOSTKEY1"
#: More than one cross-check period (every 10th REST poll by default) of reports.
ENOUGH = 13


def changed(report: dict[str, Any]) -> list[str]:
    problems = report["snapshot"]["health"]["problems"]
    return [p["detail"] for p in problems if p["code"] == "certificate_changed"]


@pytest.mark.expected_seconds(20)
async def test_changed_ssh_host_key_marks_every_report_until_accepted(
    controllers: Any, agents: Any, lab_factory: Any, http: aiohttp.ClientSession
) -> None:
    """After the host key changes, each report says certificate_changed; after accept, none."""
    lab = await lab_factory([make_device(SERIAL)])
    device = lab.devices[SERIAL]
    controller: ControllerProcess = await controllers.start(
        config="[store]\nreport_history = 1000\n"
    )
    agent = await agents.start(controller, "krk", [device])
    pins_file = agent.config_path.parent / "data" / "pins.json"

    def pinned_ssh() -> str | None:
        try:
            records = json.loads(pins_file.read_text())["devices"]
        except (OSError, ValueError, KeyError):
            return None
        return next((r.get("ssh") for r in records.values() if r.get("serial") == SERIAL), None)

    await wait_until(
        lambda: pinned_ssh() == device.ssh_fingerprint, timeout=90, what="the SSH key pinned"
    )
    old_key = device.ssh_fingerprint
    await device.renew_identity(host_key=True)

    async def reports() -> list[dict[str, Any]]:
        answer = await get_json(
            http, controller.url, f"/api/v1/devices/{SERIAL}/reports", controller.admin_token
        )
        found: list[dict[str, Any]] = answer.body["reports"]
        return sorted(found, key=lambda r: r["snapshot"]["collected_at"])

    async def marked_run() -> list[dict[str, Any]] | None:
        stored = await reports()
        first = next((i for i, r in enumerate(stored) if changed(r)), None)
        if first is None or len(stored) - first < ENOUGH:
            return None
        return stored[first:]

    since_change = await wait_until(marked_run, timeout=120, what="reports after the key changed")
    unmarked = [r["snapshot"]["collected_at"] for r in since_change if not changed(r)]
    assert not unmarked, f"{len(unmarked)} of {len(since_change)} reports not marked: {unmarked}"
    detail = changed(since_change[-1])[0]
    assert "the device's SSH host key" in detail and "changed" in detail
    assert old_key not in detail, "fingerprints are shortened in messages"
    assert f"polyfleet agent pins accept {SERIAL}" in detail
    assert since_change[-1]["snapshot"]["health"]["state"] == "degraded"

    accepted_pin = await polyfleet(
        "agent", "pins", "accept", SERIAL, "--config", str(agent.config_path)
    )
    assert device.ssh_fingerprint in accepted_pin.out
    accepted = {r["id"] for r in await reports()}

    async def clean_run() -> list[dict[str, Any]] | None:
        after = [r for r in await reports() if r["id"] not in accepted]
        # A report taken before the accept may still arrive first; count from the first clean.
        first = next((i for i, r in enumerate(after) if not changed(r)), None)
        if first is None or len(after) - first < ENOUGH:
            return None
        return after[first:]

    after_accept = await wait_until(clean_run, timeout=120, what="reports after the accept")
    assert not [r for r in after_accept if changed(r)], "marked after the admin accepted"
    assert all(r["snapshot"]["health"]["state"] == "ok" for r in after_accept)
    assert pinned_ssh() == device.ssh_fingerprint
    log = agent.log()
    assert log.count("SSH host key changed") == 1, "logged once, not on every report"
    assert "Task exception was never retrieved" not in log
