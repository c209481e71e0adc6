"""What every report changes (last seen, uptime, retained reports) is derived from the reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller_testkit import AGENT, inventory
from testkit.clocks import SettableClock
from testkit.reports import batch, report, snapshot

from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.base import DEVICES, REPORTS
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.shared.schema import ReportBatch, ReportBatchAck

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def post(inv: Inventory, *reports: dict[str, Any]) -> ReportBatchAck:
    """One batch from the site's agent, validated as the API would."""
    return await inv.ingest(AGENT, ReportBatch.model_validate(batch(*reports)))


def at(minutes: int, uptime: float, report_id: str, serial: str = "X1") -> dict[str, Any]:
    snap = snapshot(serial, collected_at=T0 + timedelta(minutes=minutes))
    snap["uptime_s"] = uptime
    return report(snap, report_id)


def journal_text(data_dir: Path) -> list[str]:
    lines = []
    for path in sorted((data_dir / "store" / "journal").glob("*.log")):
        lines += path.read_text(encoding="utf-8").splitlines()
    return lines


async def test_steady_reports_write_only_themselves_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    """A steady report rewrites no device; a late one changes no latest; a restart agrees."""
    clock = SettableClock(T0)
    async with inventory(tmp_path, clock) as (inv, _):
        await inv.add_site("krk", name="Kraków", timezone="Europe/Warsaw")
        await post(inv, at(0, 100.0, "report-0"))
        clock.advance(60)
        before = len(journal_text(tmp_path))
        await post(inv, at(1, 160.0, "report-1"))
        steady = journal_text(tmp_path)[before:]
        assert len(steady) == 1 and '"report-1"' in steady[0] and '"devices"' not in steady[0]
        clock.advance(60)
        # Collected between the two: kept in the history, but not the device's state.
        await post(inv, at(0, 130.0, "report-late"))
        detail = inv.device_detail("X1")
        expected = {
            "last_seen": (T0 + timedelta(seconds=60)).isoformat(),
            "collected_at": "2026-03-02T09:01:00Z",
            "uptime_s": 160.0,
            "reports": ["report-0", "report-late", "report-1"],
        }
        assert {name: detail[name] for name in expected} == expected
        assert inv.devices()[0]["last_seen"] == expected["last_seen"]
        assert [r["id"] for r in inv.recent_reports("X1")] == expected["reports"]
    clock.advance(3600)
    async with inventory(tmp_path, clock) as (again, _):
        detail = again.device_detail("X1")
        assert {name: detail[name] for name in expected} == expected


async def test_device_documents_of_an_earlier_version_lose_per_report_fields(
    tmp_path: Path,
) -> None:
    """Device documents that carried last seen and report ids are rewritten without them."""
    store = TinyDBStore(tmp_path / "store")
    await store.open()
    snap = snapshot("X1", collected_at=T0)
    device = {
        key: snap[key]
        for key in ("serial", "model", "model_raw", "system_name", "firmware", "provider")
    } | {
        "site_id": "krk",
        "room": None,
        "first_seen": "2026-03-02T08:00:00+00:00",
        "health": snap["health"],
        "last_seen": "2026-03-02T08:30:00+00:00",
        "collected_at": "2026-03-02T08:30:00Z",
        "uptime_s": 1.0,
        "reports": [["gone", "2026-03-02T08:30:00Z"]],
    }
    stored = {
        "id": "r-9",
        "serial": "X1",
        "site_id": "krk",
        "agent_id": "a1",
        "received_at": "2026-03-02T09:00:05+00:00",
        "snapshot": ReportBatch.model_validate(batch(report(snap)))
        .reports[0]
        .snapshot.model_dump(mode="json"),
    }
    await store.put_many(DEVICES, {"X1": device})
    await store.put_many(REPORTS, {"r-9": stored})
    await store.close()
    async with inventory(tmp_path, SettableClock(T0)) as (inv, _):
        kept = inv._store.get(DEVICES, "X1")
        assert kept is not None
        assert not {"last_seen", "collected_at", "uptime_s", "reports"} & kept.keys()
        detail = inv.device_detail("X1")
        assert detail["last_seen"] == "2026-03-02T09:00:05+00:00"
        assert detail["reports"] == ["r-9"]
        assert detail["uptime_s"] == 3600.0


async def test_reports_out_of_order_keep_the_newest_five_and_the_newest_state(
    tmp_path: Path,
) -> None:
    """Late reports (any offset) are sorted in; one older than a full history is not kept."""
    # Received after all were collected (a report from the future is another matter).
    clock = SettableClock(T0 + timedelta(minutes=20))
    async with inventory(tmp_path, clock) as (inv, _):
        await inv.add_site("krk", name="Kraków", timezone="Europe/Warsaw")
        for minute in (10, 11, 12, 14, 15):
            await post(inv, at(minute, minute, f"report-{minute}"))
        # 09:13 written as 10:13+01:00: newer than three retained reports, older than two.
        late = at(13, 13.0, "report-13")
        late["snapshot"]["collected_at"] = "2026-03-02T10:13:00+01:00"
        too_old = at(5, 5.0, "report-05")
        ack = await post(inv, late, too_old)
        # The one too old to keep is neither accepted nor a duplicate.
        assert (ack.accepted, ack.duplicates) == (1, 0)
        detail = inv.device_detail("X1")
        assert detail["reports"] == [f"report-{m}" for m in (11, 12, 13, 14, 15)]
        assert (detail["collected_at"], detail["uptime_s"]) == ("2026-03-02T09:15:00Z", 15.0)
