"""Fault detection: debounce, clearing, flapping, site correlation, E70 faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from testkit.reports import typed_snapshot

from polyfleet.controller.domain.faults import (
    AGENT_OFFLINE,
    SITE_UNREACHABLE,
    FaultDetector,
    FaultEvent,
    FaultEventKind,
    FaultPolicy,
)
from polyfleet.shared.schema import (
    Health,
    Model,
    Problem,
    ProblemCode,
    Snapshot,
)

T0 = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def snap(
    serial: str,
    at: datetime,
    *codes: ProblemCode,
    model: Model = Model.STUDIO_X50,
    host: str | None = None,
) -> Snapshot:
    return typed_snapshot(serial, *codes, at=at, model=model, host_serial=host, detailed=True)


def feed(
    detector: FaultDetector,
    serial: str,
    minutes: range,
    *codes: ProblemCode,
    site: str = "krk",
    host: str | None = None,
    model: Model = Model.STUDIO_X50,
) -> list[FaultEvent]:
    events: list[FaultEvent] = []
    for minute in minutes:
        moment = T0 + minute * MINUTE
        events += detector.observe(
            snap(serial, moment, *codes, host=host, model=model), site=site, at=moment
        )
    return events


def kinds(events: list[FaultEvent]) -> list[tuple[str, str, str]]:
    return [(e.kind.value, e.subject, e.fault) for e in events]


def test_fault_held_long_enough_opens_once() -> None:
    """A camera fault held past the minimum time over several reports opens exactly one fault."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE))
    events = feed(detector, "X1", range(0, 12), ProblemCode.CAMERA_DOWN)
    assert kinds(events) == [("opened", "X1", "camera_down")]
    opened = events[0]
    assert opened.at == T0 + 5 * MINUTE
    assert opened.first_seen == T0
    assert opened.site == "krk"
    assert opened.evidence and opened.evidence[0]["serial"] == "X1"
    assert opened.detail == "camera_down seen"


def test_short_blip_opens_nothing() -> None:
    """A problem gone before the minimum time opens no fault, however many reports showed it."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE))
    events = feed(detector, "X1", range(0, 4), ProblemCode.CAMERA_DOWN)
    events += feed(detector, "X1", range(4, 20))
    assert events == []


def test_one_report_is_never_enough() -> None:
    """A single report does not open a fault even when the minimum time is zero."""
    detector = FaultDetector(FaultPolicy(min_duration=timedelta(0)))
    assert feed(detector, "X1", range(0, 1), ProblemCode.CAMERA_DOWN) == []
    assert kinds(feed(detector, "X1", range(1, 2), ProblemCode.CAMERA_DOWN)) == [
        ("opened", "X1", "camera_down")
    ]


def test_unreachable_needs_longer_hold() -> None:
    """Unreachable reports open a fault only after the longer unreachable hold time."""
    policy = FaultPolicy(min_duration=5 * MINUTE, unreachable_min_duration=15 * MINUTE)
    detector = FaultDetector(policy)
    assert feed(detector, "X1", range(0, 15), ProblemCode.UNREACHABLE) == []
    assert kinds(feed(detector, "X1", range(15, 16), ProblemCode.UNREACHABLE)) == [
        ("opened", "X1", "unreachable")
    ]


def test_clears_after_gone_long_enough_and_recurs() -> None:
    """An open fault clears only after being gone a while; coming back later is a recurrence."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE, clear_after=10 * MINUTE))
    assert kinds(feed(detector, "X1", range(0, 3), ProblemCode.CAMERA_DOWN)) == [
        ("opened", "X1", "camera_down")
    ]
    # Gone for 5 minutes then back: the same fault, nothing new.
    assert feed(detector, "X1", range(3, 8)) == []
    assert feed(detector, "X1", range(8, 9), ProblemCode.CAMERA_DOWN) == []
    # Gone for 10 minutes: cleared once.
    cleared = feed(detector, "X1", range(9, 25))
    assert kinds(cleared) == [("cleared", "X1", "camera_down")]
    assert cleared[0].at == T0 + 19 * MINUTE
    # Back after the clear and held: a recurrence of the same fault.
    assert kinds(feed(detector, "X1", range(90, 93), ProblemCode.CAMERA_DOWN)) == [
        ("recurred", "X1", "camera_down")
    ]


def test_flapping_short_episodes_open_one_flapping_fault() -> None:
    """A problem appearing and vanishing repeatedly within an hour opens one flapping fault."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE, flap_count=3))
    events: list[FaultEvent] = []
    for start in (0, 6, 12, 18, 24, 30):
        events += feed(detector, "X1", range(start, start + 2), ProblemCode.CAMERA_DOWN)
        events += feed(detector, "X1", range(start + 2, start + 6))
    assert kinds(events) == [("opened", "X1", "camera_down")]
    assert events[0].flapping


def flap(detector: FaultDetector, minutes: int) -> list[FaultEvent]:
    """X1's camera down three minutes, fine three, over and over for ``minutes``."""
    events: list[FaultEvent] = []
    for start in range(0, minutes, 6):
        events += feed(detector, "X1", range(start, start + 3), ProblemCode.CAMERA_DOWN)
        events += feed(detector, "X1", range(start + 3, start + 6))
    return events


def test_flapping_open_fault_is_marked_once() -> None:
    """A fault that keeps clearing and coming back is flagged flapping exactly once."""
    policy = FaultPolicy(min_duration=MINUTE, clear_after=2 * MINUTE, flap_count=3)
    events = flap(FaultDetector(policy), 60)
    opened = [e for e in events if e.kind in (FaultEventKind.OPENED, FaultEventKind.RECURRED)]
    assert opened[0].kind is FaultEventKind.OPENED
    assert [e.kind for e in events].count(FaultEventKind.FLAPPING) == 1


def test_e70_fault_is_the_cameras_own_linked_to_host() -> None:
    """A fault on an E70's own entry is keyed by the E70's serial and names its host."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE))
    events = feed(
        detector,
        "E70-1",
        range(0, 4),
        ProblemCode.PERIPHERAL_DISCONNECTED,
        host="X1",
        model=Model.STUDIO_E70,
    )
    assert kinds(events) == [("opened", "E70-1", "peripheral_disconnected")]
    assert events[0].host_serial == "X1"
    assert events[0].model == "studio_e70"


def test_one_fault_per_device_and_problem() -> None:
    """Two problems on one device are two faults; repeating reports add none."""
    detector = FaultDetector(FaultPolicy(min_duration=MINUTE))
    events = feed(
        detector, "X1", range(0, 10), ProblemCode.CAMERA_DOWN, ProblemCode.MICROPHONE_DOWN
    )
    assert sorted(kinds(events)) == [
        ("opened", "X1", "camera_down"),
        ("opened", "X1", "microphone_down"),
    ]


def test_non_ticket_problems_are_ignored() -> None:
    """Configuration problems (SIP, credentials) never become service faults."""
    detector = FaultDetector(FaultPolicy(min_duration=MINUTE))
    events = feed(
        detector, "X1", range(0, 10), ProblemCode.SIP_UNREGISTERED, ProblemCode.AUTH_FAILED
    )
    assert events == []


def test_agent_offline_is_one_site_fault() -> None:
    """An agent going offline opens one site fault, listing its devices, and closes on return."""
    detector = FaultDetector(FaultPolicy(min_duration=MINUTE))
    for serial in ("X1", "X2", "X3"):
        feed(detector, serial, range(0, 2))
    events = detector.agent_offline("krk", at=T0 + 5 * MINUTE)
    assert kinds(events) == [("opened", "site:krk", AGENT_OFFLINE)]
    assert events[0].affected == ("X1", "X2", "X3")
    assert events[0].is_site
    # The controller then finds each device silent: no per-device fault.
    later: list[FaultEvent] = []
    for serial in ("X1", "X2", "X3"):
        later += detector.device_unreachable(serial, site="krk", at=T0 + 6 * MINUTE)
    later += detector.tick(T0 + 120 * MINUTE)
    assert detector.agent_offline("krk", at=T0 + 121 * MINUTE) == []
    assert later == []
    assert kinds(detector.agent_online("krk", at=T0 + 130 * MINUTE)) == [
        ("cleared", "site:krk", AGENT_OFFLINE)
    ]
    assert detector.tick(T0 + 300 * MINUTE) == []


def test_most_devices_unreachable_is_one_site_fault() -> None:
    """Most of a site's devices going unreachable together is one site fault, not one each."""
    policy = FaultPolicy(unreachable_min_duration=15 * MINUTE)
    detector = FaultDetector(policy)
    for serial in ("X1", "X2", "X3", "X4"):
        feed(detector, serial, range(0, 2))
    events: list[FaultEvent] = []
    for serial in ("X1", "X2", "X3"):
        events += detector.device_unreachable(serial, site="krk", at=T0 + 10 * MINUTE)
    events += detector.tick(T0 + 24 * MINUTE)
    assert events == []
    events += detector.tick(T0 + 26 * MINUTE)
    events += detector.tick(T0 + 90 * MINUTE)
    assert kinds(events) == [("opened", "site:krk", SITE_UNREACHABLE)]
    assert events[0].affected == ("X1", "X2", "X3")
    # The devices come back: the site fault clears; no device fault ever opened.
    back: list[FaultEvent] = []
    for serial in ("X1", "X2", "X3"):
        back += feed(detector, serial, range(95, 96))
    assert kinds(back) == [("cleared", "site:krk", SITE_UNREACHABLE)]


def test_one_unreachable_device_is_its_own_fault() -> None:
    """A single silent device among healthy ones is a device fault after the unreachable hold."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X1", "X2", "X3"):
        feed(detector, serial, range(0, 2))
    events = detector.device_unreachable("X1", site="krk", at=T0 + 10 * MINUTE)
    events += detector.tick(T0 + 20 * MINUTE)
    assert events == []
    events += detector.tick(T0 + 25 * MINUTE)
    assert kinds(events) == [("opened", "X1", "unreachable")]


def test_site_recovery_gives_stragglers_a_fresh_hold() -> None:
    """After a site outage clears, a device still silent gets a full hold before its own fault."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X1", "X2", "X3"):
        feed(detector, serial, range(0, 2))
    for serial in ("X1", "X2", "X3"):
        detector.device_unreachable(serial, site="krk", at=T0 + 10 * MINUTE)
    assert kinds(detector.tick(T0 + 30 * MINUTE)) == [("opened", "site:krk", SITE_UNREACHABLE)]
    events = feed(detector, "X1", range(40, 41)) + feed(detector, "X2", range(40, 41))
    assert kinds(events) == [("cleared", "site:krk", SITE_UNREACHABLE)]
    assert detector.tick(T0 + 54 * MINUTE) == []
    assert kinds(detector.tick(T0 + 56 * MINUTE)) == [("opened", "X3", "unreachable")]


def test_late_replayed_report_is_ignored() -> None:
    """A report older than the latest one (replayed from an agent's outbox) changes nothing."""
    detector = FaultDetector(FaultPolicy(min_duration=MINUTE))
    feed(detector, "X1", range(10, 11))
    assert feed(detector, "X1", range(0, 5), ProblemCode.CAMERA_DOWN) == []


def test_host_peripheral_problem_about_its_e70_is_left_to_the_e70() -> None:
    """A host reporting its E70 down opens no host fault; the E70's own entry does."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE))
    events: list[FaultEvent] = []
    for minute in range(0, 5):
        moment = T0 + minute * MINUTE
        camera = snap(
            "E70-1", moment, ProblemCode.PERIPHERAL_DISCONNECTED, model=Model.STUDIO_E70, host="X1"
        )
        host = Snapshot.model_validate(
            {
                **snap("X1", moment).model_dump(),
                "health": Health.from_problems(
                    [
                        Problem(code=ProblemCode.CAMERA_DOWN, detail="camera not all_up"),
                        Problem(
                            code=ProblemCode.PERIPHERAL_DISCONNECTED,
                            detail="Poly Studio E70 E70-1 DISCONNECTED",
                        ),
                    ]
                ),
            }
        )
        events += detector.observe(camera, site="krk", at=moment)
        events += detector.observe(host, site="krk", at=moment)
    assert kinds(events) == [("opened", "E70-1", "peripheral_disconnected")]
    assert events[0].host_serial == "X1"


def test_e70_unreadable_through_a_failing_host_is_left_to_the_host() -> None:
    """An E70 unreadable because its host's API fails opens no ticket of its own."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE))
    events: list[FaultEvent] = []
    for minute in range(0, 5):
        moment = T0 + minute * MINUTE
        events += detector.observe(snap("X1", moment, ProblemCode.API_ERROR), site="krk", at=moment)
        camera = snap("E70-1", moment, ProblemCode.API_ERROR, model=Model.STUDIO_E70, host="X1")
        events += detector.observe(camera, site="krk", at=moment)
    assert kinds(events) == [("opened", "X1", "api_error")]


def test_e70_api_error_with_a_healthy_host_is_the_cameras_own() -> None:
    """An E70 whose own reading fails while its host answers well gets its own ticket."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE))
    events: list[FaultEvent] = []
    for minute in range(0, 5):
        moment = T0 + minute * MINUTE
        events += detector.observe(snap("X1", moment), site="krk", at=moment)
        camera = snap("E70-1", moment, ProblemCode.API_ERROR, model=Model.STUDIO_E70, host="X1")
        events += detector.observe(camera, site="krk", at=moment)
    assert kinds(events) == [("opened", "E70-1", "api_error")]


def test_e70_silent_with_its_host_is_left_to_the_host() -> None:
    """Host and E70 falling silent together give the host's unreachable ticket only."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X2", "X3", "X4", "X5"):
        feed(detector, serial, range(0, 2))
    feed(detector, "X1", range(0, 2))
    feed(detector, "E70-1", range(0, 2), host="X1", model=Model.STUDIO_E70)
    events = detector.device_unreachable("X1", site="krk", at=T0 + 10 * MINUTE)
    events += detector.device_unreachable("E70-1", site="krk", at=T0 + 10 * MINUTE)
    events += detector.tick(T0 + 26 * MINUTE)
    assert kinds(events) == [("opened", "X1", "unreachable")]


def test_e70_silent_while_its_host_reports_is_the_cameras_own() -> None:
    """An E70 gone silent while its host still reports gets its own unreachable ticket."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X2", "X3", "X4", "X5"):
        feed(detector, serial, range(0, 2))
    feed(detector, "E70-1", range(0, 2), host="X1", model=Model.STUDIO_E70)
    feed(detector, "X1", range(0, 10))
    events = detector.device_unreachable("E70-1", site="krk", at=T0 + 10 * MINUTE)
    events += feed(detector, "X1", range(10, 27))
    events += detector.tick(T0 + 26 * MINUTE)
    assert kinds(events) == [("opened", "E70-1", "unreachable")]


def test_reported_problem_must_be_seen_for_the_whole_hold() -> None:
    """Two reports of a problem, then silence: time passing alone does not open a fault."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE))
    assert feed(detector, "X1", range(0, 2), ProblemCode.CAMERA_DOWN) == []
    assert detector.tick(T0 + 30 * MINUTE) == []
    # The next report still showing it (held since minute 0) opens it.
    assert kinds(feed(detector, "X1", range(31, 32), ProblemCode.CAMERA_DOWN)) == [
        ("opened", "X1", "camera_down")
    ]


def saved(detector: FaultDetector, docs: dict[str, dict[str, object]]) -> bool:
    """Apply the detector's pending changes to ``docs``; True when there were any."""
    puts, deletes = detector.changes()
    docs.update(puts)
    for key in deletes:
        docs.pop(key, None)
    return bool(puts or deletes)


def test_state_is_saved_on_transitions_not_on_every_report() -> None:
    """A pending, then open, then clearing fault is saved at each step; repeats save nothing."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE, clear_after=10 * MINUTE))
    docs: dict[str, dict[str, object]] = {}
    feed(detector, "X1", range(0, 1), ProblemCode.CAMERA_DOWN)
    assert saved(detector, docs) and docs["X1"]["site"] == "krk"
    feed(detector, "X1", range(1, 4), ProblemCode.CAMERA_DOWN)
    assert not saved(detector, docs)
    assert kinds(feed(detector, "X1", range(4, 6), ProblemCode.CAMERA_DOWN)) == [
        ("opened", "X1", "camera_down")
    ]
    assert saved(detector, docs)
    feed(detector, "X1", range(6, 30), ProblemCode.CAMERA_DOWN)
    assert not saved(detector, docs)
    detector.tick(T0 + 31 * MINUTE)
    assert not saved(detector, docs)
    feed(detector, "X1", range(31, 32))
    assert saved(detector, docs)
    tracks = docs["X1"]["tracks"]
    assert isinstance(tracks, dict) and tracks["camera_down"]["state"] == "clearing"


def restarted(detector: FaultDetector, docs: dict[str, dict[str, object]]) -> FaultDetector:
    """A new detector from what ``detector`` saved, as after a controller restart."""
    saved(detector, docs)
    fresh = FaultDetector(detector.policy)
    assert fresh.restore(docs) == {}
    assert not saved(fresh, dict(docs))
    return fresh


def test_restart_keeps_the_hold_time_of_a_pending_fault() -> None:
    """Debounce resumes after a restart: the fault opens 5 minutes after it was first seen."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE))
    docs: dict[str, dict[str, object]] = {}
    feed(detector, "X1", range(0, 3), ProblemCode.CAMERA_DOWN)
    detector = restarted(detector, docs)
    assert feed(detector, "X1", range(3, 5), ProblemCode.CAMERA_DOWN) == []
    opened = feed(detector, "X1", range(5, 6), ProblemCode.CAMERA_DOWN)
    assert kinds(opened) == [("opened", "X1", "camera_down")]
    assert opened[0].first_seen == T0 and opened[0].evidence


def test_restart_then_recovery_clears_the_open_fault() -> None:
    """A fault open before a restart clears after it once the device reports healthy."""
    detector = FaultDetector(FaultPolicy(min_duration=2 * MINUTE, clear_after=10 * MINUTE))
    docs: dict[str, dict[str, object]] = {}
    assert kinds(feed(detector, "X1", range(0, 4), ProblemCode.CAMERA_DOWN)) == [
        ("opened", "X1", "camera_down")
    ]
    detector = restarted(detector, docs)
    cleared = feed(detector, "X1", range(40, 60))
    assert kinds(cleared) == [("cleared", "X1", "camera_down")]
    assert cleared[0].first_seen == T0
    # Over and saved as such: a later restart has nothing open to clear.
    detector = restarted(detector, docs)
    assert feed(detector, "X1", range(60, 90)) == []


def test_restart_remembers_flapping_and_site_outages() -> None:
    """Flapping history and an offline site survive a restart."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE, flap_count=3))
    docs: dict[str, dict[str, object]] = {}
    for start in (0, 6):
        feed(detector, "X1", range(start, start + 2), ProblemCode.CAMERA_DOWN)
        feed(detector, "X1", range(start + 2, start + 6))
    feed(detector, "X2", range(0, 1), site="waw")
    offline = detector.agent_offline("waw", at=T0)
    assert kinds(offline) == [("opened", "site:waw", AGENT_OFFLINE)]
    assert offline[0].affected == ("X2",)
    detector = restarted(detector, docs)
    # The third short episode within the hour is flapping, as it would have been without a restart.
    events = feed(detector, "X1", range(12, 14), ProblemCode.CAMERA_DOWN)
    assert kinds(events) == [("opened", "X1", "camera_down")] and events[0].flapping
    assert detector.agent_offline("waw", at=T0 + 20 * MINUTE) == []
    assert kinds(detector.agent_online("waw", at=T0 + 30 * MINUTE)) == [
        ("cleared", "site:waw", AGENT_OFFLINE)
    ]
    saved(detector, docs)
    assert "site:waw" not in docs


def test_restore_skips_unreadable_documents() -> None:
    """A saved document of another layout or with bad fields is skipped, named, not fatal."""
    detector = FaultDetector()
    skipped = detector.restore(
        {
            "X1": {"v": 99},
            "X2": {"v": 1, "site": "krk", "host_serial": None, "last_report": None,
                   "tracks": {"camera_down": {"state": "exploded"}}},
        }
    )  # fmt: skip
    assert sorted(skipped) == ["X1", "X2"] and "version" in skipped["X1"]
    assert feed(detector, "X2", range(0, 1)) == []


def test_flapping_ends_after_a_calm_hour() -> None:
    """A fault that flapped, then stayed away over an hour, comes back as a plain fault."""
    policy = FaultPolicy(min_duration=MINUTE, clear_after=2 * MINUTE, flap_count=3)
    detector = FaultDetector(policy)
    assert any(e.kind is FaultEventKind.FLAPPING for e in flap(detector, 30))
    feed(detector, "X1", range(30, 120))
    later = feed(detector, "X1", range(120, 123), ProblemCode.CAMERA_DOWN)
    assert kinds(later) == [("recurred", "X1", "camera_down")]
    assert not later[0].flapping


def test_healthy_report_of_a_quiet_device_saves_nothing() -> None:
    """A healthy report of a device with nothing pending or open leaves nothing to save."""
    detector = FaultDetector(FaultPolicy(min_duration=5 * MINUTE))
    docs: dict[str, dict[str, object]] = {}
    feed(detector, "X1", range(0, 1))
    feed(detector, "X2", range(0, 2), ProblemCode.CAMERA_DOWN)
    assert saved(detector, docs)
    before = {key: dict(doc) for key, doc in docs.items()}
    assert feed(detector, "X1", range(1, 60)) == []
    assert not saved(detector, docs) and docs == before


def stored(serial: str, minute: int, *codes: ProblemCode) -> dict[str, Any]:
    """A report's snapshot in its stored JSON form, as ingestion hands it to the detector."""
    return snap(serial, T0 + minute * MINUTE, *codes).model_dump(mode="json")


def test_reports_are_kept_as_stored_and_repeats_save_nothing() -> None:
    """Repeats of a pending fault save nothing; the opened fault shows the stored reports."""
    detector = FaultDetector(FaultPolicy(min_duration=30 * MINUTE))
    docs: dict[str, dict[str, object]] = {}
    shown_docs = []
    for minute in range(0, 30):
        faulty = stored("X2", minute, ProblemCode.CAMERA_DOWN)
        if minute < 2:
            shown_docs.append(faulty)
        for report in (stored("X1", minute), faulty):
            assert detector.observe_document(report, site="krk") == []
        if minute == 0:
            # The fault became pending: that transition is saved, with what shows it.
            assert saved(detector, docs)
            assert docs["X2"]["tracks"]["camera_down"]["evidence"] == [faulty]  # type: ignore[index]
        assert not saved(detector, docs)
    latest = stored("X2", 30, ProblemCode.CAMERA_DOWN)
    opened = detector.observe_document(latest, site="krk")
    assert kinds(opened) == [("opened", "X2", "camera_down")]
    # The first reports and the latest one: the very documents given, not copies.
    assert [id(item) for item in opened[0].evidence] == [id(d) for d in [*shown_docs, latest]]
    shown = [item["collected_at"] for item in opened[0].evidence]
    assert shown == [(T0 + m * MINUTE).isoformat().replace("+00:00", "Z") for m in (0, 1, 30)]


def test_device_joining_a_site_counts_towards_its_majority() -> None:
    """Two silent devices of three are a site outage; once a fourth joins, they are not most."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X1", "X2", "X3"):
        feed(detector, serial, range(0, 2))
    for serial in ("X1", "X2"):
        detector.device_unreachable(serial, site="krk", at=T0 + 10 * MINUTE)
    feed(detector, "X4", range(11, 12))
    events = detector.tick(T0 + 30 * MINUTE)
    assert kinds(events) == [("opened", "X1", "unreachable"), ("opened", "X2", "unreachable")]


def test_device_leaving_a_site_is_no_longer_counted() -> None:
    """A device moved to another site no longer counts among the first site's devices."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X1", "X2", "X3", "X4"):
        feed(detector, serial, range(0, 2))
    for serial in ("X1", "X2"):
        detector.device_unreachable(serial, site="krk", at=T0 + 10 * MINUTE)
    # Two of four is not most; X4 moving to Warsaw leaves two of three.
    feed(detector, "X4", range(11, 12), site="waw")
    events = detector.tick(T0 + 26 * MINUTE)
    assert kinds(events) == [("opened", "site:krk", SITE_UNREACHABLE)]
    assert events[0].affected == ("X1", "X2")


def test_site_outage_opens_on_a_report_once_its_hold_ran_out() -> None:
    """A site outage that has waited out its hold opens on the next report from the site."""
    detector = FaultDetector(FaultPolicy(unreachable_min_duration=15 * MINUTE))
    for serial in ("X1", "X2", "X3", "X4"):
        feed(detector, serial, range(0, 2))
    for serial in ("X1", "X2", "X3"):
        detector.device_unreachable(serial, site="krk", at=T0 + 10 * MINUTE)
    assert feed(detector, "X4", range(20, 25)) == []
    events = feed(detector, "X4", range(25, 27))
    assert kinds(events) == [("opened", "site:krk", SITE_UNREACHABLE)]
    assert events[0].at == T0 + 25 * MINUTE


def test_late_stored_report_is_recognised_whatever_its_offset() -> None:
    """Collection times compare as moments, not as text: a stored report written with another
    offset than the device's latest is late when it is earlier, in a batch or alone."""
    detector = FaultDetector(FaultPolicy(min_duration=MINUTE))
    latest = stored("X1", 10)
    assert latest["collected_at"].endswith("Z")
    detector.observe_documents([latest], site="krk")
    docs: dict[str, dict[str, object]] = {}
    saved(detector, docs)
    # 10:05 in Warsaw is 09:05 UTC: five minutes before the latest report, however it is written.
    late_healthy = {**stored("X1", 5), "collected_at": "2025-11-24T10:05:00+01:00"}
    late_faulty = {
        **stored("X1", 6, ProblemCode.CAMERA_DOWN),
        "collected_at": "2025-11-24T10:06:00+01:00",
    }
    assert detector.observe_documents([late_healthy], site="krk") == []
    assert detector.observe_documents([late_faulty], site="krk") == []
    assert detector.observe_document(late_faulty, site="krk") == []
    assert not saved(detector, docs)
    # Later than the latest, in the offset form: it counts (the fault is pending, and saved).
    newer_faulty = {**late_faulty, "collected_at": "2025-11-24T10:12:00+01:00"}
    detector.observe_documents([newer_faulty], site="krk")
    assert saved(detector, docs)
    assert docs["X1"]["last_report"] == "2025-11-24T10:12:00+01:00"
    assert docs["X1"]["tracks"]["camera_down"]["state"] == "pending"  # type: ignore[index]


def test_a_batch_of_reports_decides_as_one_report_at_a_time() -> None:
    """Batches give the events and saved state that the same reports one by one give."""
    policy = FaultPolicy(min_duration=3 * MINUTE, unreachable_min_duration=3 * MINUTE)
    one_by_one, batched = FaultDetector(policy), FaultDetector(policy)
    singles: list[FaultEvent] = []
    batches: list[FaultEvent] = []
    saved_singles: dict[str, dict[str, object]] = {}
    saved_batches: dict[str, dict[str, object]] = {}
    for minute in range(0, 40):
        site = "krk" if minute < 25 else "waw"  # everything moves site once
        reports = [
            stored(f"X{n}", minute, *([ProblemCode.CAMERA_DOWN] if (n + minute) % 7 == 0 else []))
            for n in range(6)
        ]
        # A camera on X0, a device that falls silent for a while, and a late report.
        reports.append(snap("E1", T0 + minute * MINUTE, host="X0").model_dump(mode="json"))
        if not 10 <= minute < 20:
            reports.append(stored("S1", minute))
        if minute % 9 == 4:
            reports.append(stored("X1", minute - 3, ProblemCode.CAMERA_DOWN))
        for report in reports:
            singles += one_by_one.observe_document(report, site=site)
        batches += batched.observe_documents(reports, site=site)
        if minute == 16:
            for detector, into in ((one_by_one, singles), (batched, batches)):
                into += detector.device_unreachable("S1", site=site, at=T0 + minute * MINUTE)
        singles += one_by_one.tick(T0 + minute * MINUTE)
        batches += batched.tick(T0 + minute * MINUTE)
        assert saved(one_by_one, saved_singles) == saved(batched, saved_batches)
    assert kinds(batches) == kinds(singles) and len(kinds(singles)) > 4
    assert saved_batches == saved_singles
