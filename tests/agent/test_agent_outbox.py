"""The durable outbox: survives restarts and torn writes, bounded, drops only repeats."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from polyfleet.agent.outbox import Outbox, OutboxFullError
from polyfleet.shared.schema import (
    Firmware,
    Health,
    HealthState,
    Model,
    Problem,
    ProblemCode,
    Provider,
    Snapshot,
    Via,
)


def snap(serial: str, problem: ProblemCode | None = None, uptime: float = 1.0) -> Snapshot:
    problems = [Problem(code=problem)] if problem else []
    return Snapshot(
        serial=serial,
        model=Model.STUDIO_X30,
        firmware=Firmware(version="4.2.2", build="408037"),
        provider=Provider.POLY,
        health=Health.from_problems(problems) if problems else Health(state=HealthState.OK),
        uptime_s=uptime,
        collected_at=datetime.now(UTC),
        via=Via.REST,
    )


async def test_reports_survive_restart_in_order(tmp_path: Path) -> None:
    """Taken reports come back after a restart, in order, with the same ids; acked ones do not."""
    box = Outbox(tmp_path / "ob")
    await box.open()
    entries = [await box.put(snap(f"S{i}")) for i in range(10)]
    await box.ack(entries[3].seq)  # type: ignore[union-attr]
    await box.close()

    again = Outbox(tmp_path / "ob")
    await again.open()
    pending = again.peek(100)
    assert [e.report_id for e in pending] == [e.report_id for e in entries[4:]]  # type: ignore[union-attr]
    assert [e.report().snapshot.serial for e in pending] == [f"S{i}" for i in range(4, 10)]
    newer = await again.put(snap("S10"))
    assert newer is not None and newer.seq > pending[-1].seq
    await again.close()


async def test_torn_last_line_is_discarded(tmp_path: Path) -> None:
    """A crash mid-write leaves a torn line that is dropped on open, keeping every whole report."""
    box = Outbox(tmp_path / "ob")
    await box.open()
    for i in range(3):
        await box.put(snap(f"T{i}"))
    await box.close()
    segment = sorted((tmp_path / "ob").glob("seg-*.jsonl"))[-1]
    with open(segment, "ab") as handle:
        handle.write(b'{"seq": 99, "kind": "rep')
    again = Outbox(tmp_path / "ob")
    await again.open()
    assert [e.report().snapshot.serial for e in again.peek(10)] == ["T0", "T1", "T2"]
    await again.put(snap("T3"))
    await again.close()
    third = Outbox(tmp_path / "ob")
    await third.open()
    assert [e.report().snapshot.serial for e in third.peek(10)] == ["T0", "T1", "T2", "T3"]
    await third.close()


async def test_full_outbox_drops_repeats_never_changes(tmp_path: Path) -> None:
    """When full, repeats of unchanged state go first, state changes stay, a notice says so."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024, segment_bytes=4096)
    await box.open()
    changes = []
    changes.append(await box.put(snap("A", uptime=0)))
    for i in range(200):
        await box.put(snap("A", uptime=i + 1))  # same state: repeats
        if i % 50 == 0:
            changes.append(
                await box.put(snap("B", ProblemCode.CAMERA_DOWN if i % 100 else None, uptime=i))
            )
    assert box.size_bytes <= 16 * 1024
    assert box.dropped_total > 0
    pending = box.peek(1000)
    ids = {e.report_id for e in pending if e.kind == "report"}
    for change in changes:
        assert change is not None and change.report_id in ids
    notices = [e.notice() for e in pending if e.kind == "notice"]
    assert notices and sum(n.count for n in notices) == box.dropped_total
    assert all(n.kind == "outbox_dropped" for n in notices)
    await box.close()
    on_disk = sum(p.stat().st_size for p in (tmp_path / "ob").glob("seg-*"))
    assert on_disk <= 16 * 1024 + 4096


async def test_full_of_changes_refuses_new_change(tmp_path: Path) -> None:
    """With only state changes spooled, a new change is refused (kept by the caller), none lost."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    kept = 0
    refused = 0
    for i in range(200):
        try:
            await box.put(snap(f"D{i}"))
            kept += 1
        except OutboxFullError:
            refused += 1
    assert refused > 0 and len(box.peek(1000)) == kept
    await box.close()
