"""Device snapshots and agent reports: in the agent's JSON form, typed, or sent by a new agent.

The JSON builders (``snapshot``, ``report``, ``batch``, from ``polyfleet.controller.testing``,
which benchmarks share) give a ``POST /api/v1/agent/reports`` body with every field, as an
agent writes it; tests change a field by setting it in the dict.
``typed_snapshot`` gives the shared model; ``report_as_new_agent`` enrolls an agent of a site
at a running test controller and sends snapshots as its first batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from polyfleet.controller.testing import RunningController, batch, report, snapshot, utc_text
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

__all__ = [
    "batch",
    "bearer",
    "report",
    "report_as_new_agent",
    "snapshot",
    "typed_snapshot",
    "utc_text",
]


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
