"""Reports the controller refuses are held aside while the rest of the site keeps reporting."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.reports import report_as_new_agent, typed_snapshot
from testkit.servers import serving
from testkit.site_agents import lab_agent_config, start_enrolled_agent
from testkit.waiting import wait_until

from polyfleet.agent.held import HeldReports
from polyfleet.agent.service import AgentService
from polyfleet.agent.uplink import Uplink
from polyfleet.cli import main
from polyfleet.controller.keys import CORE
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import (
    Model,
    Provider,
    Snapshot,
)
from polyfleet.simulator.testing import make_device


async def start_agent(
    controller: RunningController, site: str, lab: Any, password_file: Path, tmp_path: Path
) -> AgentService:
    config = lab_agent_config(tmp_path, lab, password_file, controller.url, held_retry_s=0.3)
    return await start_enrolled_agent(controller, site, config)


async def stored_ids(controller: RunningController, serial: str) -> list[str]:
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.get(f"{controller.url}/api/v1/devices/{serial}/reports") as resp,
    ):
        if resp.status == 404:
            return []  # not known to the controller yet
        return [r["id"] for r in (await resp.json())["reports"]]


async def test_device_at_other_site_is_held_until_moved(
    lab_factory: Any,
    password_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A device of site A is held at B while B's others arrive; once moved, it arrives once."""
    caplog.set_level(logging.INFO, logger="agent")
    lab = await lab_factory(
        [make_device("HELDX1"), make_device("OWNB1"), make_device("OWNB2", model="g7500")]
    )
    async with running_controller(tmp_path / "ctl", report_history=10_000) as controller:
        # Site A's own agent reported HELDX1 first: the controller knows it there.
        seed = typed_snapshot("HELDX1", version="4.2.2", build="408037")
        await report_as_new_agent(controller, "site-a", seed, agent_name="site-a-agent")
        service = await start_agent(controller, "site-b", lab, password_file, tmp_path)
        try:

            async def others_arrived() -> bool:
                ids = [await stored_ids(controller, s) for s in ("OWNB1", "OWNB2")]
                return all(len(i) >= 3 for i in ids) and len(service.held) >= 3

            await wait_until(others_arrived, what="site B's other devices reporting")
            assert service.held.serials == {"HELDX1"}
            assert await stored_ids(controller, "HELDX1") == ["report-HELDX1"]
            lines = [r.getMessage() for r in caplog.records if "HELDX1" in r.getMessage()]
            refused = [line for line in lines if "refused" in line]
            assert len(refused) == 1, lines  # one clear line, not one per batch
            assert "device_at_other_site" in refused[0]
            assert "polyfleet controller devices move HELDX1" in refused[0]

            toml = tmp_path / "agent.toml"
            toml.write_text(f'[agent]\ndata_dir = "{service.config.data_dir}"\n')
            argv = ["agent", "held", "--config", str(toml), "--json"]
            assert await asyncio.to_thread(main, argv) == 0
            [listed] = json.loads(capsys.readouterr().out)
            assert (listed["serial"], listed["code"]) == ("HELDX1", "device_at_other_site")
            assert listed["count"] >= 3 and "devices move HELDX1" in listed["reason"]

            async with aiohttp.ClientSession(headers=controller.admin_headers) as http:
                async with http.get(
                    f"{controller.url}/api/v1/events", params={"kind": "agent_notice"}
                ) as resp:
                    notices = [e["data"] for e in (await resp.json())["events"]]
                assert any(
                    n["notice"] == "reports_held" and "HELDX1" in n["detail"] for n in notices
                ), notices
                held_ids = {h.entry.report_id for h in service.held.reports()}
                async with http.post(
                    f"{controller.url}/api/v1/devices/HELDX1/move", json={"site": "site-b"}
                ) as resp:
                    assert resp.status == 200, await resp.text()
            await wait_until(lambda: len(service.held) == 0, what="held reports delivered")
            await wait_until(
                lambda: _has_more(controller, "HELDX1", len(held_ids) + 2),
                what="HELDX1 reporting normally after the move",
            )
        finally:
            await service.stop()
        ids = await stored_ids(controller, "HELDX1")
        assert len(ids) == len(set(ids)), "a report stored twice"
        assert held_ids <= set(ids)
        # Nothing the controller stored was ever sent to it again.
        assert controller.core.inventory.stats.duplicates == 0


async def _has_more(controller: RunningController, serial: str, count: int) -> bool:
    return len(await stored_ids(controller, serial)) >= count


async def test_held_reports_survive_a_restart(tmp_path: Path) -> None:
    """Held reports are on disk: a new HeldReports over the same folder has them, in order."""
    from polyfleet.agent.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    await outbox.open()
    held = HeldReports(tmp_path / "held")
    await held.open()
    try:
        snapshot = snapshot_of("KEEP1")
        first = await outbox.put(snapshot)
        second = await outbox.put(snapshot.model_copy(update={"in_call": True}))
        assert first is not None and second is not None
        await held.hold([(second, "device_at_other_site", "x"), (first, "invalid", "y")])
    finally:
        await held.close()
        await outbox.close()
    again = HeldReports(tmp_path / "held")
    await again.open()
    try:
        assert [h.seq for h in again.reports()] == [first.seq, second.seq]
        assert again.device_serials == {"KEEP1"}
        assert again.reports()[0].entry.report().snapshot.serial == "KEEP1"
        await again.release([first.seq])
    finally:
        await again.close()
    third = HeldReports(tmp_path / "held")
    await third.open()
    assert [h.seq for h in third.reports()] == [second.seq]
    await third.close()


def snapshot_of(serial: str, name: str = "") -> Snapshot:
    """A healthy X30 as the agent saw it just now."""
    return typed_snapshot(
        serial, model=Model.STUDIO_X30, version="4.2.2", provider=Provider.POLY, system_name=name
    )


async def test_refusal_naming_nobody_is_bisected_and_agent_refusals_block(
    tmp_path: Path,
) -> None:
    """A 422 naming no report: halves go until the bad one stands alone; a 401 holds nothing."""
    from aiohttp import web

    from polyfleet.agent.delivery import ReportSender
    from polyfleet.agent.outbox import Outbox
    from polyfleet.agent.uplink import ControllerRefused

    received: list[str] = []
    notices: list[dict[str, Any]] = []
    posts = [0]
    token_ok = [False]

    async def reports(request: web.Request) -> web.Response:
        posts[0] += 1
        if not token_ok[0]:
            error = {"code": "unauthorized", "message": "token revoked", "field": None}
            return web.json_response({"error": error}, status=401)
        body = await request.json()
        if any(r["snapshot"]["system_name"] == "broken" for r in body["reports"]):
            error = {"code": "invalid", "message": "a snapshot is invalid", "field": None}
            return web.json_response({"error": error}, status=422)
        received.extend(r["id"] for r in body["reports"])
        notices.extend(body["notices"])
        return web.json_response({"accepted": len(body["reports"]), "duplicates": 0})

    app = web.Application()
    app.router.add_post("/api/v1/agent/reports", reports)
    async with serving(app) as url:
        outbox = Outbox(tmp_path / "outbox")
        await outbox.open()
        held = HeldReports(tmp_path / "held")
        await held.open()
        try:
            entries = []
            for i in range(8):
                name = "broken" if i == 5 else ""
                entry = await outbox.put(snapshot_of(f"GOOD{i}" if i != 5 else "ODD5", name))
                assert entry is not None
                entries.append(entry)
            async with aiohttp.ClientSession() as http:
                uplink = Uplink(url, session=http, token="t" * 32)
                sender = ReportSender(outbox, held, batch_size=200, held_retry_s=60.0)
                with pytest.raises(ControllerRefused):
                    await sender.send_once(uplink)
                assert len(outbox) == 8 and len(held) == 0, "a refusal of the agent holds nothing"
                token_ok[0] = True
                posts[0] = 0
                assert await sender.send_once(uplink)
                assert [h.serial for h in held.reports()] == ["ODD5"]
                assert received == [e.report_id for e in entries if e.serial != "ODD5"]
                assert posts[0] <= 7, "bisection, not one request per report"
                # Refused for what it said, not for being ODD5: its next report goes straight up.
                later = await outbox.put(snapshot_of("ODD5", "fixed"))
                assert later is not None
                await sender.send_once(uplink)
                assert received[-1] == later.report_id and len(held) == 1
                assert [n["kind"] for n in notices] == ["reports_held"]
                assert "ODD5" in notices[0]["detail"] and notices[0]["count"] == 1
        finally:
            await held.close()
            await outbox.close()


async def test_held_over_its_bound_drops_repeats_first_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its size bound the held spool drops unchanged repeats before any change, and says so."""
    from polyfleet.agent.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    await outbox.open()
    entries = []
    for i in range(6):
        # Even puts repeat the state before them; odd ones change it.
        entry = await outbox.put(snapshot_of("FULL1", f"room {i // 2}"))
        assert entry is not None
        entries.append(entry)
    await outbox.close()
    assert [e.repeat for e in entries] == [False, True, False, True, False, True]
    one = len(json.dumps({"data": entries[0].data}))
    held = HeldReports(tmp_path / "held", max_bytes=one * 4 + 600)
    await held.open()
    try:
        await held.hold((e, "device_at_other_site", "moved away") for e in entries)
        kept = [h.seq for h in held.reports()]
    finally:
        await held.close()
    changes = [e.seq for e in entries if not e.repeat]
    assert set(changes) <= set(kept), "a state change was dropped while repeats remained"
    assert len(kept) < len(entries) and held.unreported_drops == len(entries) - len(kept)
    assert any("dropped report" in r.getMessage() for r in caplog.records)


async def test_a_report_refused_in_the_answer_is_held_and_the_rest_acknowledged(
    tmp_path: Path,
) -> None:
    """The controller stores a batch but one report it refuses by name (collected before any
    device existed): the agent holds that one with the reason and lets the others go."""
    from polyfleet.agent.delivery import ReportSender
    from polyfleet.agent.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    await outbox.open()
    held = HeldReports(tmp_path / "held")
    await held.open()
    try:
        async with running_controller(tmp_path / "controller") as controller:
            enrolled = await controller.enroll("krk")
            early = snapshot_of("OLDCLOCK1").model_copy(
                update={"collected_at": datetime(2001, 5, 5, tzinfo=UTC)}
            )
            for snap in (snapshot_of("FINE1"), early, snapshot_of("FINE2")):
                assert await outbox.put(snap) is not None
            async with aiohttp.ClientSession() as http:
                uplink = Uplink(controller.url, session=http, token=enrolled.token)
                sender = ReportSender(outbox, held, batch_size=200, held_retry_s=60.0)
                assert await sender.send_once(uplink)
            (kept,) = held.reports()
            assert (kept.serial, kept.code) == ("OLDCLOCK1", "collected_too_early")
            assert "before 2015-01-01" in kept.reason
            assert controller.app[CORE].inventory.serials() == {"FINE1", "FINE2"}
            assert [e.kind for e in outbox.peek(10)] == ["notice"]  # reports_held, to say so
    finally:
        await held.close()
        await outbox.close()
