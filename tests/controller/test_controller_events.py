"""Ingest events on the bus: one per batch, per-report ones only when asked, batch delivery."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.events import (
    AgentNoticeReceived,
    AgentOnline,
    DeviceAdded,
    Event,
    EventBus,
    SnapshotIngested,
    SnapshotsIngested,
)
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.testing import RunningController


async def _post(
    http: aiohttp.ClientSession, controller: RunningController, token: str, body: object
) -> dict[str, object]:
    async with http.post(
        f"{controller.url}/api/v1/agent/reports", json=body, headers=bearer(token)
    ) as response:
        assert response.status == 200
        ack: dict[str, object] = await response.json()
        return ack


async def test_accepted_reports_come_as_one_event_per_batch(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A batch gives one SnapshotsIngested with its accepted reports in order, resends left out."""
    bus = controller.core.bus
    seen: list[Event] = []
    bus.subscribe(seen.append, kinds={SnapshotsIngested})
    agent = await controller.enroll("krk")
    first = [report(snapshot(f"X50-{n}"), f"rep-evnt-000{n}") for n in (3, 1, 2)]
    assert await _post(http, controller, agent.token, batch(*first)) == {
        "accepted": 3,
        "duplicates": 0,
    }
    resend = [first[1], report(snapshot("X50-4"), "rep-evnt-0004")]
    assert await _post(http, controller, agent.token, batch(*resend)) == {
        "accepted": 1,
        "duplicates": 1,
    }
    await bus.drain()
    assert [type(event) for event in seen] == [SnapshotsIngested, SnapshotsIngested]
    one, two = seen
    assert isinstance(one, SnapshotsIngested) and isinstance(two, SnapshotsIngested)
    assert [r.id for r in one.reports] == ["rep-evnt-0003", "rep-evnt-0001", "rep-evnt-0002"]
    assert [r.snapshot.serial for r in one.reports] == ["X50-3", "X50-1", "X50-2"]
    assert [r.id for r in two.reports] == ["rep-evnt-0004"]
    assert {(e.site_id, e.agent_id) for e in (one, two)} == {("krk", agent.agent_id)}


async def test_per_report_events_only_while_someone_subscribes(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """SnapshotIngested (one per report) is made only when a subscriber asks for that kind."""
    bus = controller.core.bus
    assert not bus.wants(SnapshotIngested)
    per_report: list[Event] = []
    subscription = bus.subscribe(per_report.append, kinds={SnapshotIngested})
    assert bus.wants(SnapshotIngested)
    agent = await controller.enroll("krk")
    await _post(http, controller, agent.token, batch(*(report(snapshot(f"S-{n}")) for n in "ab")))
    await bus.drain()
    assert [(e.serial, type(e)) for e in per_report] == [
        ("S-a", SnapshotIngested),
        ("S-b", SnapshotIngested),
    ]
    subscription.cancel()
    assert not bus.wants(SnapshotIngested)


async def test_batch_subscriber_gets_every_waiting_event_in_one_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """subscribe_batches hands over all waiting events in order; a failure is logged, not fatal."""
    store = TinyDBStore(tmp_path)
    await store.open()
    bus = EventBus(store, keep=100)
    calls: list[list[Event]] = []

    async def on_events(events: list[Event]) -> None:
        calls.append(events)
        if len(calls) == 1:
            raise RuntimeError("broken subscriber")

    try:
        bus.subscribe_batches(on_events, kinds={DeviceAdded, AgentOnline})
        at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        first = [
            DeviceAdded(at=at, site_id="krk", serial="A", model="studio_x50"),
            AgentOnline(at=at, site_id="krk", agent_id="a1"),
            DeviceAdded(at=at, site_id="krk", serial="B", model="studio_x30"),
        ]
        with caplog.at_level(logging.ERROR, logger="polyfleet.controller.events"):
            bus.dispatch(first)
            await bus.drain()
        assert calls == [first]
        assert "broken subscriber" in caplog.text
        later = DeviceAdded(at=at, site_id="krk", serial="C", model="g7500")
        await bus.publish(later)
        await asyncio.wait_for(bus.drain(), 5)
        assert calls == [first, [later]]
    finally:
        await bus.close()
        await store.close()


async def test_batch_of_notices_only_is_acknowledged_and_recorded(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A batch without reports (only a notice) is acknowledged; no ingest event, one notice."""
    bus = controller.core.bus
    ingested: list[Event] = []
    bus.subscribe(ingested.append, kinds={SnapshotsIngested})
    agent = await controller.enroll("krk")
    notice = {"kind": "agent_started", "detail": "v1", "at": datetime.now(UTC).isoformat()}
    body = {**batch(), "notices": [notice]}
    assert await _post(http, controller, agent.token, body) == {"accepted": 0, "duplicates": 0}
    await bus.drain()
    assert ingested == []
    async with http.get(
        f"{controller.url}/api/v1/events", headers=controller.admin_headers
    ) as response:
        events = (await response.json())["events"]
    assert [e["data"]["notice"] for e in events if e["kind"] == "agent_notice"] == ["agent_started"]


async def test_a_rare_kind_and_an_agents_notices_are_found_without_reading_the_rest(
    tmp_path: Path,
) -> None:
    """Notices among many other events are found by kind, by agent and after an id; expired
    ones are gone; recent() walks back from the newest; a restart gives the same answers."""
    store = TinyDBStore(tmp_path)
    await store.open()
    try:
        bus = EventBus(store, keep=50)
        bus.load()
        at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        notices = {5: "a1", 25: "a0", 45: "a1", 55: "a1"}
        for n in range(60):
            moment = at + timedelta(minutes=n)
            events: list[Event] = [
                DeviceAdded(at=moment, site_id="krk", serial=f"D{n}", model="g7500")
            ]
            if n in notices:
                events.append(
                    AgentNoticeReceived(
                        at=moment, site_id="krk", agent_id=notices[n], notice="outbox_full",
                        detail=f"minute {n}",
                    )
                )  # fmt: skip
            await bus.publish(*events)

        def answers(found: EventBus) -> dict[str, list[str]]:
            first = found.query(kind="agent_notice", limit=1000)[0]["id"]
            return {
                "kind": [e["data"]["detail"] for e in found.query(kind="agent_notice")],
                "agent": [
                    e["data"]["detail"] for e in found.query(kind="agent_notice", agent="a1")
                ],
                "newest": [e["data"]["detail"] for e in found.query(kind="agent_notice", limit=1)],
                "since": [
                    e["data"]["detail"]
                    for e in found.query(kind="agent_notice", since=first, limit=1)
                ],
                "recent": [e["serial"] for e in found.recent(at + timedelta(minutes=57))],
            }

        # 64 events, the newest 50 kept: the notice of minute 5 is gone.
        expected = {
            "kind": ["minute 25", "minute 45", "minute 55"],
            "agent": ["minute 45", "minute 55"],
            "newest": ["minute 55"],
            "since": ["minute 45"],
            "recent": ["D59", "D58", "D57"],
        }
        assert answers(bus) == expected
        again = EventBus(store, keep=50)
        again.load()
        assert answers(again) == expected
    finally:
        await store.close()
