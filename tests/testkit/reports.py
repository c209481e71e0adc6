"""Device snapshots and agent reports: in the agent's JSON form, typed, or sent by a new agent.

The JSON builders (``snapshot``, ``report``, ``batch``) give a ``POST /api/v1/agent/reports``
body with every field, as an agent writes it; tests change a field by setting it in the dict.
``typed_snapshot`` gives the shared model; ``report_as_new_agent`` enrolls an agent of a site
at a running test controller and sends snapshots as its first batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp

from polyfleet.controller.testing import RunningController
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    Firmware,
    Health,
    Model,
    Problem,
    ProblemCode,
    Provider,
    Report,
    ReportBatch,
    Snapshot,
    Via,
)

_ids = itertools.count(1)


def utc_text(moment: datetime) -> str:
    """A time as the agent writes it (UTC, ``Z``)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def snapshot(
    serial: str,
    *,
    model: str = "studio_x50",
    version: str = "4.1.0",
    problems: list[dict[str, str]] | None = None,
    state: str | None = None,
    collected_at: datetime | str | None = None,
    uptime_s: float = 3600.0,
    host_serial: str | None = None,
    peripherals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One device snapshot with every field, as an agent sends it (collected now unless told).

    Its health is ``fault`` when it has problems, else ``ok``, unless ``state`` says otherwise.
    """
    problems = problems or []
    when = collected_at if collected_at is not None else datetime.now(UTC)
    return {
        "serial": serial,
        "model": model,
        "model_raw": "Poly Studio X50",
        "system_name": f"Room {serial}",
        "firmware": {"version": version, "build": "180034"},
        "provider": "teams",
        "health": {"state": state or ("fault" if problems else "ok"), "problems": problems},
        "in_call": False,
        "uptime_s": uptime_s,
        "peripherals": peripherals or [],
        "host_serial": host_serial,
        "collected_at": when if isinstance(when, str) else utc_text(when),
        "via": "rest",
    }


def report(snap: dict[str, Any], report_id: str | None = None) -> dict[str, Any]:
    """A report (id and snapshot); ids are unique within the test process unless given."""
    return {"id": report_id or f"report-{next(_ids):08d}", "snapshot": snap}


def batch(
    *reports: dict[str, Any],
    notices: Sequence[dict[str, Any]] = (),
    version: int = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """A ``POST /api/v1/agent/reports`` body."""
    body: dict[str, Any] = {"protocol_version": version, "reports": list(reports)}
    if notices:
        body["notices"] = list(notices)
    return body


def bearer(token: str) -> dict[str, str]:
    """The header that carries an agent's or an admin's token."""
    return {"Authorization": f"Bearer {token}"}


def typed_snapshot(
    serial: str,
    *codes: ProblemCode,
    at: datetime | None = None,
    model: Model = Model.STUDIO_X50,
    version: str = "4.1.0",
    build: str = "",
    provider: Provider = Provider.TEAMS,
    detailed: bool = False,
    **fields: Any,
) -> Snapshot:
    """A snapshot of ``serial`` collected ``at`` (default now), with a problem of each code.

    ``detailed`` gives each problem the detail ``<code> seen``; ``fields`` sets any other
    field (``host_serial``, ``system_name``, ``uptime_s``...).
    """
    problems = [
        Problem(code=code, detail=f"{code.value} seen" if detailed else "") for code in codes
    ]
    return Snapshot(
        serial=serial,
        model=model,
        firmware=Firmware(version=version, build=build),
        provider=provider,
        health=Health.from_problems(problems),
        collected_at=at or datetime.now(UTC),
        via=Via.REST,
        **fields,
    )


async def report_as_new_agent(
    controller: RunningController,
    site: str,
    *snapshots: Snapshot,
    agent_name: str = "test-agent",
) -> None:
    """Enroll an agent of ``site`` (created if missing) and send ``snapshots`` as its first
    batch, each as report ``report-<serial>``."""
    agent = await controller.enroll(site, agent_name=agent_name)
    body = ReportBatch(
        protocol_version=PROTOCOL_VERSION,
        reports=[Report(id=f"report-{s.serial}", snapshot=s) for s in snapshots],
    )
    async with (
        aiohttp.ClientSession(headers=bearer(agent.token)) as http,
        http.post(
            controller.url + "/api/v1/agent/reports", json=body.model_dump(mode="json")
        ) as response,
    ):
        assert response.status == 200, await response.text()
