"""Maintenance windows: faults during planned work are recorded but open no ticket until it ends."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from testkit.clocks import SettableClock
from testkit.waiting import wait_until

from polyfleet.cli import main
from polyfleet.shared.schema import ProblemCode
from tickets.conftest import SmtpPeer
from tickets.test_live import MINUTE, T0, Lab, snapshot, start_lab


async def post_window(lab: Lab, body: dict[str, Any]) -> tuple[int, Any]:
    """``POST /api/v1/maintenance``: (status, JSON answer)."""
    async with lab.http.post(
        f"{lab.controller.url}/api/v1/maintenance",
        json=body,
        headers=lab.controller.admin_headers,
    ) as response:
        return response.status, await response.json()


async def minute(
    lab: Lab, number: int, *, faulty: tuple[str, ...], healthy: tuple[str, ...]
) -> None:
    """The agent's reports of minute ``number``: cameras down on ``faulty``, fine on ``healthy``."""
    lab.clock.now = T0 + number * MINUTE
    await lab.post(
        *(snapshot(s, lab.clock.now, ProblemCode.CAMERA_DOWN) for s in faulty),
        *(snapshot(s, lab.clock.now) for s in healthy),
    )


async def test_faults_during_maintenance_wait_for_its_end_and_only_lasting_ones_are_ticketed(
    tmp_path: Path, smtp_peer: SmtpPeer
) -> None:
    """A site in maintenance for an hour: two camera faults open no ticket and are listed with
    the window; an overlapping or open-ended window is refused with its reason; when the
    window ends, the fault still present is ticketed at once from its real start, saying it
    began during the maintenance, and the one that cleared never is."""
    async with start_lab(tmp_path / "controller", SettableClock(T0), smtp_peer, None) as lab:
        until = T0 + 60 * MINUTE
        status, window = await post_window(
            lab,
            {
                "site": "krk",
                "from": T0.isoformat(),
                "until": until.isoformat(),
                "reason": "network change",
            },
        )
        assert status == 201, window
        assert window["state"] == "active" and window["target"] == "krk"
        status, refused = await post_window(
            lab,
            {
                "site": "krk",
                "from": (T0 + 30 * MINUTE).isoformat(),
                "until": (T0 + 90 * MINUTE).isoformat(),
                "reason": "again",
            },
        )
        assert status == 409 and refused["error"]["code"] == "maintenance_overlap"
        assert f"already in maintenance {window['id']}" in refused["error"]["message"]
        status, refused = await post_window(
            lab, {"serial": "X1", "from": T0.isoformat(), "reason": "forever"}
        )
        assert status == 422 and refused["error"]["field"] == "until"
        for number in range(0, 12):
            await minute(lab, number, faulty=("X1", "X2"), healthy=())
        for number in range(12, 40):
            await minute(lab, number, faulty=("X1",), healthy=("X2",))
        await lab.service.tick(lab.clock.now)
        assert (await lab.admin("GET", "/api/v1/tickets"))["tickets"] == []
        (listed,) = (await lab.admin("GET", "/api/v1/maintenance"))["maintenance"]
        assert [(f["serial"], f["fault"]) for f in listed["silenced_faults"]] == [
            ("X1", "camera_down")
        ]
        for number in range(40, 62):
            await minute(lab, number, faulty=("X1",), healthy=("X2",))
        await lab.service.tick(lab.clock.now)
        (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
        assert ticket["serial"] == "X1" and ticket["fault"] == "camera_down"
        assert datetime.fromisoformat(ticket["first_seen"]) == T0
        await wait_until(lambda: bool(lab.controller.core.jobs.find(serial="X1")), timeout=60)
        await lab.agent_does_jobs()
        await wait_until(lambda: len(smtp_peer.received) == 1, timeout=60)
        body = smtp_peer.received[0].message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert "Pierwsze wystąpienie: 2025-11-24T10:00:00+01:00" in text.splitlines()
        assert (
            f"usterka wystąpiła podczas prac serwisowych {window['id']} (network change) "
            "i trwa po ich zakończeniu" in text
        )
        (listed,) = (await lab.admin("GET", "/api/v1/maintenance"))["maintenance"]
        assert listed["state"] == "over" and listed["silenced_faults"] == []


def polyfleet(data_dir: Path, *argv: str) -> tuple[int, str, str]:
    """``polyfleet controller ARGV --data-dir DATA_DIR`` with no server running."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["controller", *argv, "--data-dir", str(data_dir)])
    return code, stdout.getvalue(), stderr.getvalue()


def test_maintenance_commands_add_list_end_and_refuse_with_reasons(tmp_path: Path) -> None:
    """``maintenance add`` prints the window and how to end it; without --until it is refused
    (exit 2), overlapping it is refused naming the other (exit 1); ``list`` shows it planned,
    ``end`` cancels it and ``list --json`` says it is over."""
    data_dir = tmp_path / "d"
    site = ("site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw")
    assert polyfleet(data_dir, *site)[0] == 0
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    window = (
        "maintenance", "add", "--site", "krk", "--from", start.isoformat(),
        "--until", (start + timedelta(hours=3)).isoformat(), "--reason", "room refurbished",
    )  # fmt: skip
    code, out, err = polyfleet(data_dir, *window)
    assert code == 0, err
    first, second = out.splitlines()
    assert first.startswith("maintenance MW-") and "(planned): site krk from " in first
    assert first.endswith(": room refurbished")
    window_id = first.split()[1]
    assert second == f"end it early with: polyfleet controller maintenance end {window_id}"
    code, _, err = polyfleet(data_dir, *window[:-4], "--reason", "x")
    assert code == 2 and "--until is required" in err
    code, _, err = polyfleet(data_dir, *window)
    assert code == 1 and f"already in maintenance {window_id}" in err
    code, out, _ = polyfleet(data_dir, "maintenance", "list")
    header, line = out.splitlines()
    assert header.startswith("ID") and line.startswith(f"{window_id}  planned  site   krk")
    code, out, err = polyfleet(data_dir, "maintenance", "end", window_id)
    assert code == 0 and out.startswith(f"maintenance {window_id} ended at "), err
    code, out, _ = polyfleet(data_dir, "maintenance", "list", "--json")
    (listed,) = json.loads(out)["maintenance"]
    assert listed["state"] == "over" and listed["ended_at"] is not None
