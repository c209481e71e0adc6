"""The durable outbox: survives restarts and torn writes; bounded, it keeps every episode."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.reports import typed_snapshot

from polyfleet.agent.outbox import Entry, Outbox, OutboxFullError
from polyfleet.shared.schema import (
    Model,
    ProblemCode,
    Provider,
    Snapshot,
)


def snap(serial: str, problem: ProblemCode | None = None, uptime: float = 1.0) -> Snapshot:
    return typed_snapshot(
        serial,
        *([problem] if problem else []),
        model=Model.STUDIO_X30,
        version="4.2.2",
        build="408037",
        provider=Provider.POLY,
        uptime_s=uptime,
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


def codes_of(entry: Entry) -> set[str]:
    return {p.code.value for p in entry.report().snapshot.health.problems}


def drop_counts(entries: list[Entry]) -> int:
    return sum(
        e.notice().count
        for e in entries
        if e.kind == "notice" and e.data["kind"] == "outbox_dropped"
    )


async def test_refused_change_is_not_recorded_as_sent_state(tmp_path: Path) -> None:
    """A state change refused by a full outbox is offered again as a change, not a repeat."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    for i in range(200):
        try:
            await box.put(snap(f"FILL{i}"))
        except OutboxFullError:
            break
    with pytest.raises(OutboxFullError):
        await box.put(snap("X", ProblemCode.CAMERA_DOWN))
    await box.ack(box.peek(5)[-1].seq)  # the controller took a few: room again
    entry = await box.put(snap("X", ProblemCode.CAMERA_DOWN))
    assert entry is not None and not entry.repeat, "the refused state was never recorded"
    await box.close()


async def test_full_outbox_keeps_a_fault_episode_with_start_and_end(tmp_path: Path) -> None:
    """A fault that begins and ends while the outbox is full arrives with its start and end."""
    box = Outbox(tmp_path / "ob", max_bytes=24 * 1024, segment_bytes=4096)
    await box.open()
    taken = 0

    async def poll(serial: str, problem: ProblemCode | None = None) -> None:
        nonlocal taken
        await box.put(snap(serial, problem, uptime=taken))
        taken += 1

    for _ in range(60):
        await poll("EP1")
        await poll("OTHER")
    for _ in range(5):
        await poll("EP1", ProblemCode.CAMERA_DOWN)
        await poll("OTHER")
    for _ in range(100):
        await poll("EP1")
        await poll("OTHER", ProblemCode.SIP_UNREGISTERED if taken % 40 == 0 else None)
    pending = box.peek(10_000)
    ep1 = [e for e in pending if e.serial == "EP1"]
    starts = [i for i, e in enumerate(ep1) if "camera_down" in codes_of(e)]
    assert starts, "the episode's start was dropped"
    assert any("camera_down" not in codes_of(e) for e in ep1[starts[0] :]), "its end was dropped"
    assert box.dropped_total > 0 and box.size_bytes <= 24 * 1024
    assert drop_counts(pending) == box.dropped_total, "every drop counted once"
    reports = [e for e in pending if e.kind == "report"]
    assert box.taken_total == taken == len(reports) + box.dropped_total
    await box.close()


async def test_flapping_fault_folds_into_its_first_start_and_last_end(tmp_path: Path) -> None:
    """A fault flapping while the outbox is full folds, but keeps its first start and last end."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    await box.put(snap("FLAP", uptime=0))
    for i in range(1, 61):  # on at odd steps, off at even ones: off at the end
        await box.put(snap("FLAP", ProblemCode.MICROPHONE_DOWN if i % 2 else None, uptime=i))
    pending = [e for e in box.peek(10_000) if e.serial == "FLAP"]
    states = ["microphone_down" in codes_of(e) for e in pending]
    assert states[-1] is False, "the newest state is kept"
    assert True in states, "no episode may vanish"
    first = states.index(True)
    assert pending[first].report().snapshot.uptime_s == 1.0, "the first start is kept"
    last_on = len(states) - 1 - states[::-1].index(True)
    assert pending[last_on + 1].report().snapshot.uptime_s == 60, "the last end is kept"
    assert drop_counts(box.peek(10_000)) == box.dropped_total
    await box.close()


async def test_entries_being_sent_are_never_dropped(tmp_path: Path) -> None:
    """While a batch is on its way, making room drops nothing of it (it is not 'dropped')."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    for i in range(12):
        await box.put(snap("SEND", uptime=i))  # repeats: the first to go when full
    batch = box.peek(12)
    with box.sending(batch[-1].seq):
        for i in range(40):
            await box.put(snap("MORE", uptime=i))
        ids = {e.report_id for e in box.peek(10_000)}
        assert {e.report_id for e in batch} <= ids
    await box.close()


async def test_drops_and_their_count_survive_a_restart_together(tmp_path: Path) -> None:
    """The drop notice is written with the drop: after a restart the counts still add up."""
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    for i in range(100):
        await box.put(snap("R", uptime=i))
    dropped = box.dropped_total
    assert dropped > 0
    before = box.peek(10_000)
    await box.close()
    again = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await again.open()
    after = again.peek(10_000)
    assert [e.report_id for e in after] == [e.report_id for e in before]
    assert drop_counts(after) + box.unreported_drops == dropped
    fresh = await again.put(snap("R2"))
    assert fresh is not None and fresh.report_id.split("-")[1] != after[-1].report_id.split("-")[1]
    await again.close()


async def test_report_that_made_room_is_not_covered_by_an_ack_of_its_drop_notice(
    tmp_path: Path,
) -> None:
    """A put that makes room comes after the drop notice it queued, in seq and on disk.

    A sender that peeked between the drop and the append sends a batch ending at the notice;
    its ack must not cover the new report, neither now nor after a restart.
    """
    box = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await box.open()
    for i in range(100):
        before = box.dropped_total
        entry = await box.put(snap("R", uptime=i))
        if box.dropped_total > before:
            break
    else:
        pytest.fail("the outbox never made room")
    assert entry is not None
    waiting = box.peek(10_000)
    notices = [e for e in waiting if e.kind == "notice"]
    assert notices and waiting[-1].report_id == entry.report_id
    assert all(n.seq < entry.seq for n in notices)
    await box.ack(notices[-1].seq)
    assert [e.report_id for e in box.peek(10_000)] == [entry.report_id]
    await box.close()
    again = Outbox(tmp_path / "ob", max_bytes=16 * 1024)
    await again.open()
    assert [e.report_id for e in again.peek(10_000)] == [entry.report_id]
    await again.close()
