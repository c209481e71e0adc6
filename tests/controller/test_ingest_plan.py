"""Planning a batch: duplicates, clock correction, retention and device diffs, without a store."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from testkit.reports import batch, report, snapshot

from polyfleet.controller.domain.ingest import (
    ClockChange,
    DeviceFound,
    HealthChange,
    IngestPlan,
    IngestRules,
    KnownState,
    plan_batch,
)
from polyfleet.shared.schema import ReportBatch

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=30)
RULES = IngestRules(report_history=3, max_clock_skew=timedelta(seconds=300))
NOTHING = KnownState(devices={}, report_keys=set(), left_ids=set(), retained={}, agent_clock="ok")
#: Nothing known but an agent whose clock was found ahead.
AHEAD = KnownState(devices={}, report_keys=set(), left_ids=set(), retained={}, agent_clock="ahead")
FAULT = [{"code": "camera_down", "detail": "no video"}]


def at(minutes: float, report_id: str, serial: str = "X1", **kwargs: Any) -> dict[str, Any]:
    """A report of ``serial`` collected ``minutes`` after T0."""
    collected = T0 + timedelta(minutes=minutes)
    return report(snapshot(serial, collected_at=collected, **kwargs), report_id)


def plan(
    *reports: dict[str, Any],
    known: KnownState = NOTHING,
    agent_id: str = "a1",
    now: datetime = NOW,
) -> IngestPlan:
    """Plan a batch from site krk, its reports in the JSON form an agent sends."""
    sent = ReportBatch.model_validate(batch(*reports)).model_dump(mode="json")["reports"]
    return plan_batch(sent, site_id="krk", agent_id=agent_id, known=known, rules=RULES, now=now)


def after(known: KnownState, done: IngestPlan) -> KnownState:
    """What the controller knows once ``done`` is applied."""
    devices = {**known.devices, **done.new_devices}
    for serial, patch in done.patches.items():
        devices[serial] = {**devices[serial], **patch}
    return KnownState(
        devices=devices,
        report_keys=(set(known.report_keys) | set(done.reports)) - set(done.dropped),
        left_ids={*known.left_ids, *done.gone},
        retained={**known.retained, **done.retained},
        agent_clock=known.agent_clock if done.clock is None else done.clock.state,
    )


def ids(documents: list[dict[str, Any]]) -> list[str]:
    return [document["id"] for document in documents]


def test_a_report_sent_twice_in_one_batch_is_accepted_once() -> None:
    """The second copy of a report in the same batch is a duplicate."""
    done = plan(at(1, "report-a"), at(1, "report-a"))
    assert (ids(done.accepted), done.duplicates) == (["report-a"], 1)


def test_a_report_repeated_after_its_batch_pushed_it_out_is_a_duplicate() -> None:
    """A report the batch itself outdated is still known when the batch repeats it."""
    reports = [at(minute, f"report-{minute}") for minute in range(1, 5)]
    done = plan(*reports, reports[0])
    assert (len(done.accepted), done.duplicates, done.gone) == (4, 1, ["report-1"])


def test_a_report_stored_by_an_earlier_batch_is_a_duplicate() -> None:
    """A resend of a stored report is a duplicate; the new report beside it is accepted."""
    known = after(NOTHING, plan(at(1, "report-a")))
    done = plan(at(1, "report-a"), at(2, "report-b"), known=known)
    assert (ids(done.accepted), done.duplicates) == (["report-b"], 1)
    assert list(done.reports) == ["a1/report-b"]


def test_report_ids_are_told_apart_per_agent() -> None:
    """Another agent's report with the same id is a different report."""
    known = after(NOTHING, plan(at(1, "report-a")))
    done = plan(at(2, "report-a"), known=known, agent_id="a2")
    assert (ids(done.accepted), done.duplicates) == (["report-a"], 0)


def test_a_resend_of_reports_that_left_with_their_batch_is_all_duplicates() -> None:
    """Reports a batch pushed out of the history are remembered, so resending it adds nothing."""
    reports = [at(minute, f"report-{minute}") for minute in range(1, 6)]
    first = plan(*reports)
    assert len(first.accepted) == 5
    assert first.gone == ["report-1", "report-2"]
    assert list(first.reports) == ["a1/report-3", "a1/report-4", "a1/report-5"]
    again = plan(*reports, known=after(NOTHING, first))
    assert (again.accepted, again.duplicates) == ([], 5)


def test_a_report_from_the_future_takes_its_receive_time() -> None:
    """Collected beyond the allowed skew: stored at its receive time, the agent's time beside it."""
    done = plan(at(90, "report-a", problems=FAULT))
    document = done.accepted[0]
    assert document["snapshot"]["collected_at"] == "2026-03-02T09:30:00.000000Z"
    assert document["agent_collected_at"] == "2026-03-02T10:30:00Z"
    assert done.retained["X1"] == [("a1/report-a", "2026-03-02T09:30:00.000000Z")]
    assert done.clock == ClockChange(state="ahead", skew_s=3600.0)
    health = [news for news in done.news if isinstance(news, HealthChange)]
    assert [change.at for change in health] == ["2026-03-02T09:30:00.000000Z"]


def test_a_report_within_the_allowed_skew_keeps_its_time() -> None:
    """Four minutes ahead is within five minutes of skew: nothing is corrected."""
    done = plan(at(34, "report-a"))
    document = done.accepted[0]
    assert document["snapshot"]["collected_at"] == "2026-03-02T09:34:00Z"
    assert "agent_collected_at" not in document
    assert done.clock is None


def test_an_agent_clock_that_is_known_ahead_stays_unchanged_while_ahead() -> None:
    """Another report from the future changes nothing of what is known of the clock."""
    assert plan(at(90, "report-a"), known=AHEAD).clock is None


def test_an_agent_clock_ahead_is_on_time_again_with_a_current_last_report() -> None:
    """A batch whose last report is within the skew of now shows the clock on time again."""
    done = plan(at(29, "report-a"), known=AHEAD)
    assert done.clock == ClockChange(state="ok", skew_s=None)


def test_a_backlog_says_nothing_of_the_agent_clock() -> None:
    """A batch ending in an hour-old report (an outbox catching up) leaves the clock as known."""
    assert plan(at(-30, "report-a"), known=AHEAD).clock is None


def test_the_newest_reports_are_retained_and_the_oldest_stored_one_dropped() -> None:
    """With a full history, a newer report drops the oldest stored one."""
    known = after(NOTHING, plan(at(1, "report-1"), at(2, "report-2"), at(3, "report-3")))
    done = plan(at(4, "report-4"), known=known)
    assert done.dropped == ["a1/report-1"]
    assert [key for key, _ in done.retained["X1"]] == [
        "a1/report-2",
        "a1/report-3",
        "a1/report-4",
    ]
    assert done.gone == []


def test_a_report_older_than_a_full_history_is_superseded() -> None:
    """Older than every retained report of a full history: not kept, not accepted, remembered."""
    known = after(NOTHING, plan(at(1, "report-1"), at(2, "report-2"), at(3, "report-3")))
    done = plan(at(0, "report-0"), known=known)
    assert (done.accepted, done.superseded, done.gone) == ([], 1, ["report-0"])
    assert (done.reports, done.dropped) == ({}, [])


def test_a_late_report_joins_the_history_without_changing_the_device() -> None:
    """A report older than the device's newest is history: kept in order, no device change."""
    known = after(NOTHING, plan(at(1, "report-1"), at(3, "report-3")))
    done = plan(at(2, "report-2", problems=FAULT), known=known)
    assert [key for key, _ in done.retained["X1"]] == [
        "a1/report-1",
        "a1/report-2",
        "a1/report-3",
    ]
    assert ids(done.accepted) == ["report-2"]
    assert (done.patches, done.news, done.latest) == ({}, [], {})


def test_a_device_reported_first_is_found_with_its_first_health() -> None:
    """A new device is a whole document, found and with a health change from nothing."""
    done = plan(at(1, "report-1", model="studio_x70"))
    device = done.new_devices["X1"]
    assert (device["site_id"], device["first_seen"], device["model"]) == (
        "krk",
        NOW.isoformat(),
        "studio_x70",
    )
    assert done.news == [
        DeviceFound(serial="X1", model="studio_x70"),
        HealthChange(
            serial="X1", old=None, new={"state": "ok", "problems": []}, at="2026-03-02T09:01:00Z"
        ),
    ]
    assert done.latest == {"X1": (NOW.isoformat(), 3600.0)}


def test_a_fault_changes_the_device_health_and_is_news() -> None:
    """A device that was fine reports a fault: its health is patched and the change is news."""
    known = after(NOTHING, plan(at(1, "report-1")))
    done = plan(at(2, "report-2", problems=FAULT), known=known)
    new = {"state": "fault", "problems": FAULT}
    assert done.patches == {"X1": {"health": new}}
    assert done.news == [
        HealthChange(
            serial="X1", old={"state": "ok", "problems": []}, new=new, at="2026-03-02T09:02:00Z"
        )
    ]


def test_new_words_for_the_same_problem_are_stored_but_no_news() -> None:
    """Only the detail text differs: the device takes it, and no health change is reported."""
    known = after(NOTHING, plan(at(1, "report-1", problems=FAULT)))
    reworded = [{"code": "camera_down", "detail": "camera lost"}]
    done = plan(at(2, "report-2", problems=reworded), known=known)
    assert done.patches == {"X1": {"health": {"state": "fault", "problems": reworded}}}
    assert done.news == []


def test_an_unchanged_report_writes_no_device_and_shares_its_values() -> None:
    """A steady report changes no field; its snapshot holds the device's own values."""
    known = after(NOTHING, plan(at(1, "report-1")))
    done = plan(at(2, "report-2"), known=known)
    assert (done.patches, done.new_devices, done.news) == ({}, {}, [])
    stored, device = done.accepted[0]["snapshot"], known.devices["X1"]
    assert stored["firmware"] is device["firmware"]
    assert stored["health"] is device["health"]


def test_a_device_heard_again_is_no_longer_unreachable() -> None:
    """A device marked unreachable that reports again loses the mark."""
    known = after(NOTHING, plan(at(1, "report-1")))
    silent = {**known.devices["X1"], "unreachable_since": "2026-03-02T09:20:00+00:00"}
    known = KnownState(
        devices={"X1": silent},
        report_keys=known.report_keys,
        left_ids=known.left_ids,
        retained=known.retained,
        agent_clock="ok",
    )
    assert plan(at(2, "report-2"), known=known).patches == {"X1": {"unreachable_since": None}}


def test_a_device_of_another_site_refuses_the_whole_batch() -> None:
    """The plan names the foreign device and changes nothing."""
    known = after(NOTHING, plan(at(1, "report-1")))
    elsewhere = {"X1": {**known.devices["X1"], "site_id": "waw"}}
    known = KnownState(
        devices=elsewhere, report_keys=set(), left_ids=set(), retained={}, agent_clock="ok"
    )
    done = plan(at(2, "report-2", serial="X2"), at(2, "report-3"), known=known)
    assert done == IngestPlan(foreign={"X1": "waw"})


def test_planning_leaves_what_is_known_as_it_was() -> None:
    """The known state is only read: a plan the store refuses leaves nothing half-changed."""
    known = after(NOTHING, plan(at(1, "report-1"), at(2, "report-2"), at(3, "report-3")))
    before = copy.deepcopy(known)
    plan(at(4, "report-4", problems=FAULT), at(0, "report-0"), known=known)
    assert known == before
