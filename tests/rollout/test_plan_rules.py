"""The pure rollout planner: waves, canary, hops, entitlement per hop, windows, reasons, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from polyfleet.controller.domain.assets import Asset, Contract
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue, make_release
from polyfleet.controller.domain.rollout import (
    CSV_COLUMNS,
    DEVICE_MOVES,
    FAILURE_RULES,
    FINAL_STATUSES,
    REASON_CODES,
    AbortCriterion,
    DeviceStatus,
    IllegalMove,
    PlanDevice,
    PlanError,
    PlanRequest,
    RolloutPlan,
    RoomCalendar,
    Window,
    breaker,
    default_abort_criteria,
    device_move,
    parse_abort_criteria,
    parse_abort_text,
    parse_gap,
    parse_waves,
    path_to,
    penalty_due,
    plan_rollout,
    render_csv,
    rollout_move,
    stored_abort_criteria,
)
from polyfleet.shared.schema import FailureCode
from polyfleet.shared.version import FirmwareVersion

WARSAW = ZoneInfo("Europe/Warsaw")
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=WARSAW)
TARGET = "4.2.2-408037"
ZONES = {"krakow": "Europe/Warsaw", "nyc": "America/New_York"}


def device(serial: str, **fields: object) -> PlanDevice:
    """An X50 in Poly Video mode at krakow on 4.1.0_00.180034, healthy, unless overridden."""
    base: dict[str, object] = {
        "serial": serial,
        "site": "krakow",
        "model": "studio_x50",
        "provider": "poly",
        "room": f"room {serial}",
        "version": "4.1.0_00",
        "build": "180034",
    }
    base.update(fields)
    return PlanDevice(**base)  # type: ignore[arg-type]


def poly_plus(serial: str, end: date = date(2029, 12, 31), plan: str = "poly_plus") -> Asset:
    """An asset with a contract granting patches and upgrades until ``end``."""
    return Asset(
        serial=serial,
        model="studio_x50",
        purchase_date=date(2025, 1, 10),
        site="krakow",
        contracts=(Contract(plan=plan, number=f"C-{serial}", start=date(2025, 1, 10), end=end),),
    )


def make_plan(
    devices: Sequence[PlanDevice],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    *,
    assets: dict[str, Asset] | None = None,
    now: datetime = NOW,
    calendars: dict[str, RoomCalendar] | None = None,
    **request: object,
) -> RolloutPlan:
    if assets is None:
        assets = {d.serial: poly_plus(d.serial) for d in devices}
    return plan_rollout(
        PlanRequest(target=request.pop("target", TARGET), **request),  # type: ignore[arg-type]
        devices,
        site_zones=ZONES,
        assets=assets,
        plans=plans,
        releases=releases,
        now=now,
        calendars=calendars,
    )


def entries(plan: RolloutPlan) -> dict[str, dict[str, object]]:
    return {entry["serial"]: entry for entry in plan.to_json()["devices"]}


def codes(entry: dict[str, object]) -> list[str]:
    return [reason["code"] for reason in entry["reasons"]]  # type: ignore[attr-defined]


def test_waves_take_cumulative_shares_after_one_canary_per_site(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """20 devices at a site: 1 canary, then 10%, 50%, 100% of the other 19 (2, 8, 9)."""
    devices = [device(f"K{n:02d}") for n in range(20)]
    plan = make_plan(devices, plans, releases).to_json()
    sizes = [len(wave["devices"]) for wave in plan["waves"]]
    assert [wave["name"] for wave in plan["waves"]] == ["canary", "10%", "50%", "100%"]
    assert sizes == [1, 2, 8, 9]
    assert plan["summary"]["by_status"] == {"planned": 20}
    assert plan["target"] == TARGET


def test_each_wave_opens_a_night_later_in_site_time(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Default start is tomorrow, 01:00-05:00 site time, one wave per night."""
    plan = make_plan([device("K1"), device("K2")], plans, releases).to_json()
    assert plan["start"] == "2026-11-03"
    opens = [wave["opens_at"] for wave in plan["waves"]]
    assert opens == [
        "2026-11-03T01:00:00+01:00",
        "2026-11-04T01:00:00+01:00",
        "2026-11-05T01:00:00+01:00",
        "2026-11-06T01:00:00+01:00",
    ]
    entry = entries(make_plan([device("K1")], plans, releases))["K1"]
    assert entry["window"] == {
        "start": "2026-11-03T01:00:00+01:00",
        "end": "2026-11-03T05:00:00+01:00",
    }


def test_canary_is_the_healthiest_of_the_most_common_model_and_mode(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Per site: X50/poly is most common; the ok one is chosen over degraded ones; never Teams."""
    devices = [
        device("A1", health="degraded", problems=("sip_unregistered",)),
        device("A2", health="degraded", problems=("reboot_needed", "sip_unregistered")),
        device("A3"),
        device("B1", model="studio_x30"),
        device("B2", model="studio_x30", provider="teams"),
        device("B3", model="studio_x30", provider="teams"),
        device("B4", model="studio_x30", provider="teams"),
        device("N1", site="nyc", model="g7500", provider="zoom"),
        device("N2", site="nyc", model="studio_x70", provider="zoom"),
        device("N3", site="nyc", model="studio_x70", provider="zoom", health="degraded"),
    ]
    plan = make_plan(devices, plans, releases, canary=1).to_json()
    assert sorted(plan["waves"][0]["devices"]) == ["A3", "N2"]
    by_serial = entries(make_plan(devices, plans, releases))
    assert by_serial["B2"]["channel"] == "teams_admin_center"
    assert by_serial["B2"]["wave"] == 3 and by_serial["B2"]["status"] == "planned"
    assert codes(by_serial["B2"]) == ["teams_managed"]
    two = make_plan(devices, plans, releases, canary=2).to_json()
    assert sorted(two["waves"][0]["devices"]) == ["A1", "A3", "N2", "N3"]


def test_hops_follow_the_catalogue_needs_at_least_steps(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """3.14.1 reaches 4.2.2 through 4.1.0 and its hotfix; each hop has its kind (S3)."""
    plan = make_plan([device("K1", version="3.14.1", build="374010")], plans, releases)
    hops = entries(plan)["K1"]["hops"]
    assert [(h["version"], h["kind"]) for h in hops] == [  # type: ignore[attr-defined]
        ("4.1.0.382263", "upgrade"),
        ("4.1.0_00.180034", "patch"),
        ("4.2.2-408037", "upgrade"),
    ]
    installs = [datetime.fromisoformat(h["install_at"]) for h in hops]  # type: ignore[attr-defined]
    assert installs == sorted(installs) and installs[-1] < datetime(2026, 11, 3, 5, tzinfo=WARSAW)
    assert all(h["entitled"] and h["entitled_until"] == "2029-12-31" for h in hops)  # type: ignore[attr-defined]


def test_path_stops_at_the_target_not_the_newest(releases: ReleaseCatalogue) -> None:
    """A target older than the newest release is the last hop."""
    target = releases.find(FirmwareVersion.parse("4.1.3.394009"))
    assert target is not None
    path = path_to(releases, FirmwareVersion.parse("4.1.0.382263"), target, date(2026, 1, 1))
    assert path is not None
    assert [r.text for r in path] == ["4.1.0_00.180034", "4.1.3.394009"]


def test_entitlement_is_judged_per_hop(plans: PlanCatalogue, releases: ReleaseCatalogue) -> None:
    """HEZO+ covers the patch hops but not the upgrade: not_entitled names hop, window and plans."""
    hezo = poly_plus("K1", plan="hezo_plus", end=date(2027, 1, 9))
    plan = make_plan(
        [device("K1", version="4.1.0", build="382263")], plans, releases, assets={"K1": hezo}
    )
    entry = entries(plan)["K1"]
    hops = entry["hops"]
    assert [(h["kind"], h["entitled"]) for h in hops] == [  # type: ignore[attr-defined]
        ("patch", True),
        ("upgrade", False),
    ]
    assert hops[0]["entitled_until"] == "2027-01-09"  # type: ignore[index]
    assert entry["status"] == "held" and entry["wave"] is None and entry["window"] is None
    (reason,) = entry["reasons"]  # type: ignore[misc]
    assert reason["code"] == "not_entitled"
    assert "4.2.2-408037 (upgrade)" in reason["text"]
    assert "none of its contracts grants upgrades" in reason["text"]
    assert "a Partner POLY+ or POLY+ contract would cover it" in reason["text"]


def test_a_closed_window_is_named_with_its_date(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """An upgrade window that closed before the canary night is named with its last day."""
    expired = poly_plus("K1", end=date(2026, 10, 31))
    plan = make_plan([device("K1")], plans, releases, assets={"K1": expired})
    (reason,) = entries(plan)["K1"]["reasons"]  # type: ignore[misc]
    assert reason["code"] == "not_entitled"
    assert "its upgrades window closed on 2026-10-31" in reason["text"]


def test_a_device_whose_window_closes_before_its_wave_moves_earlier(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """S4: entitlement ending the day after wave 1 moves a wave-3 device to wave 1, and says so."""
    devices = [device(f"K{n:02d}") for n in range(11)]
    assets = {d.serial: poly_plus(d.serial) for d in devices}
    before = entries(make_plan(devices, plans, releases, assets=assets))
    last = max(before, key=lambda s: before[s]["wave"] or 0)
    assert before[last]["wave"] == 3
    # Wave 1 is the night of 2026-11-04, wave 2 of 2026-11-05: entitled up to 2026-11-04.
    assets[last] = poly_plus(last, end=date(2026, 11, 4))
    after = entries(make_plan(devices, plans, releases, assets=assets))[last]
    assert after["wave"] == 1 and after["status"] == "planned"
    assert after["window"]["start"] == "2026-11-04T01:00:00+01:00"  # type: ignore[index]
    (note,) = after["notes"]  # type: ignore[misc]
    assert note["code"] == "moved_earlier"
    assert "from wave 3 to wave 1" in note["text"] and "2026-11-04" in note["text"]


def test_windows_stay_in_site_time_across_dst_in_two_zones(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Waves over the spring-forward nights of New York (14 Mar) and Warsaw (28 Mar) stay local."""
    devices = [device(f"K{n}") for n in range(4)] + [
        device(f"N{n}", site="nyc", provider="zoom") for n in range(4)
    ]
    now = datetime(2027, 3, 1, 12, tzinfo=WARSAW)
    ny = make_plan(
        devices,
        plans,
        releases,
        now=now,
        start=date(2027, 3, 13),
        window=Window.parse("01:00-05:00"),
        sites=("nyc",),
    ).to_json()
    starts = [w["opens_at"] for w in ny["waves"]]
    assert starts == [
        "2027-03-13T01:00:00-05:00",
        "2027-03-14T01:00:00-05:00",
        "2027-03-15T01:00:00-04:00",
        "2027-03-16T01:00:00-04:00",
    ]
    warsaw = make_plan(
        devices,
        plans,
        releases,
        now=now,
        start=date(2027, 3, 28),
        sites=("krakow",),
    ).to_json()
    canary = entries_of(warsaw)[warsaw["waves"][0]["devices"][0]]["window"]
    assert canary == {"start": "2027-03-28T01:00:00+01:00", "end": "2027-03-28T05:00:00+02:00"}
    length = datetime.fromisoformat(canary["end"]) - datetime.fromisoformat(canary["start"])
    assert length == timedelta(hours=3)
    # A start inside the missing hour moves to the next moment that exists: the jump.
    gap = Window.parse("02:30-04:00").on(date(2027, 3, 14), ZoneInfo("America/New_York"))
    assert gap[0].isoformat() == "2027-03-14T03:00:00-04:00"
    # Falling back in Warsaw: the same wall-clock window is five real hours long.
    autumn = Window.parse("01:00-05:00").on(date(2027, 10, 31), WARSAW)
    assert autumn[1].astimezone(UTC) - autumn[0].astimezone(UTC) == timedelta(hours=5)
    assert autumn[0].isoformat() == "2027-10-31T01:00:00+02:00"


def entries_of(plan: dict[str, object]) -> dict[str, dict[str, object]]:
    return {e["serial"]: e for e in plan["devices"]}  # type: ignore[attr-defined,index]


def test_windows_crossing_midnight_end_the_next_day() -> None:
    """22:00-02:00 opens in the evening and ends after midnight, site time."""
    start, end = Window.parse("22:00-02:00").on(date(2026, 11, 3), WARSAW)
    assert (start.isoformat(), end.isoformat()) == (
        "2026-11-03T22:00:00+01:00",
        "2026-11-04T02:00:00+01:00",
    )


def test_every_reason_code(plans: PlanCatalogue, releases: ReleaseCatalogue) -> None:
    """Each reason code with the status it gives."""
    devices = [
        device("CUR", version="4.2.2", build="408037"),
        device("NEWER", version="4.6.2", build="420118"),
        device("NOENT"),
        device("NOPATH", model="unknown"),
        device("NOFW", version="", build=""),
        device("TICKET", open_tickets=("T-2026-0001",)),
        device("SICK", health="fault", problems=("camera_down",)),
        device("LOCK", health="degraded", problems=("locked_out",)),
        device("GONE", health="unreachable", problems=("unreachable",)),
        device("PENAL", penalty="failed twice in rollout r_1: version_mismatch"),
        device("CAM", model="studio_e70", host_serial="HOST", version="1.2.0", build="100"),
        device("TEAMS", provider="teams"),
        device("ADMIN"),
        device("OK"),
    ]
    assets = {d.serial: poly_plus(d.serial) for d in devices if d.serial != "NOENT"}
    plan = make_plan(devices, plans, releases, assets=assets, exclude=("ADMIN",)).to_json()
    by = entries_of(plan)
    expected = {
        "CUR": (["already_current"], "excluded"),
        "NEWER": (["already_current"], "excluded"),
        "NOENT": (["not_entitled"], "held"),
        "NOPATH": (["no_path"], "excluded"),
        "NOFW": (["no_path"], "excluded"),
        "TICKET": (["open_ticket"], "held"),
        "SICK": (["unhealthy"], "held"),
        "LOCK": (["unhealthy"], "held"),
        "GONE": (["unreachable"], "held"),
        "PENAL": (["in_penalty_box"], "held"),
        "CAM": (["follows_host"], "excluded"),
        "TEAMS": (["teams_managed"], "planned"),
        "ADMIN": (["excluded_by_admin"], "excluded"),
        "OK": ([], "planned"),
    }
    for serial, (want, status) in expected.items():
        assert (codes(by[serial]), by[serial]["status"]) == (want, status), serial
    assert set(plan["summary"]["by_reason"]) == set(REASON_CODES)
    assert "no contract in the asset registry" in by["NOENT"]["reasons"][0]["text"]
    assert by["CAM"]["channel"] == "none" and by["CAM"]["wave"] is None
    assert "HOST" in by["CAM"]["reasons"][0]["text"]
    assert by["TICKET"]["reasons"][0]["text"] == "open fault ticket T-2026-0001"
    assert all(by[s]["wave"] is None for s, (_, st) in expected.items() if st != "planned")


def test_scope_by_site_and_model(plans: PlanCatalogue, releases: ReleaseCatalogue) -> None:
    """--site and --model keep only matching devices in the plan."""
    devices = [device("K1"), device("K2", model="studio_x30"), device("N1", site="nyc")]
    plan = make_plan(devices, plans, releases, sites=("krakow",), models=("studio_x30",))
    assert list(entries(plan)) == ["K2"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"target": "9.9.9"}, "target"),
        ({"target": "banana"}, "target"),
        ({"sites": ("mars",)}, "site"),
        ({"canary": -1}, "canary"),
        ({"max_failures": 101}, "max_failures"),
        ({"per_site": 0}, "per_site"),
        ({"start": date(2026, 1, 1)}, "start"),
    ],
)
def test_bad_requests_name_the_field(
    plans: PlanCatalogue, releases: ReleaseCatalogue, request_fields: dict[str, object], field: str
) -> None:
    """A request that cannot be planned raises PlanError naming its field."""
    with pytest.raises(PlanError) as caught:
        make_plan([device("K1")], plans, releases, **request_fields)
    assert caught.value.field == field


@pytest.mark.parametrize("text", ["10%,5%,100%", "10%,50%", "0%,100%", "ten%", ""])
def test_bad_wave_shares_are_refused(text: str) -> None:
    """Shares must rise and end at 100%."""
    with pytest.raises(PlanError, match="waves"):
        parse_waves(text)


@pytest.mark.parametrize("text", ["25:00-01:00", "01:00", "01:00-01:00", "1-5"])
def test_bad_windows_are_refused(text: str) -> None:
    """A window is two different HH:MM times."""
    with pytest.raises(PlanError, match="window"):
        Window.parse(text)


def test_shares_gap_and_window_parse() -> None:
    """The flag forms read as expected."""
    assert parse_waves("5%, 25%,100") == (5, 25, 100)
    assert parse_gap("30m") == timedelta(minutes=30) and parse_gap("2d") == timedelta(days=2)
    assert Window.parse(" 01:00-05:00 ") == Window(time(1), time(5))


def test_csv_reads_back_one_row_per_hop(plans: PlanCatalogue, releases: ReleaseCatalogue) -> None:
    """csv.DictReader reads the same devices back: hops one per row, a hopless device once."""
    devices = [
        device("K1", version="3.14.1", build="374010", room='Sala "Wisła", 2nd floor'),
        device("K2", version="4.2.2", build="408037"),
    ]
    plan = make_plan(devices, plans, releases).to_json()
    rows = list(csv.DictReader(io.StringIO(render_csv(plan["devices"]))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["serial"], r["hop"], r["hop_version"]) for r in rows] == [
        ("K1", "1", "4.1.0.382263"),
        ("K1", "2", "4.1.0_00.180034"),
        ("K1", "3", "4.2.2-408037"),
        ("K2", "", ""),
    ]
    assert rows[0]["room"] == 'Sala "Wisła", 2nd floor'
    assert rows[3]["reasons"] == "already_current" and rows[3]["status"] == "excluded"
    assert rows[0]["entitled"] == "true" and rows[0]["wave"] == "0"


def test_no_path_when_the_catalogue_has_no_step(plans: PlanCatalogue) -> None:
    """A catalogue without the intermediate release leaves an old unit with no path."""
    catalogue = ReleaseCatalogue(
        (make_release("4.2.2-408037", date(2024, 6, 21), "4.1.0_00.180034"),)
    )
    plan = make_plan([device("K1", version="3.14.1", build="374010")], plans, catalogue)
    (reason,) = entries(plan)["K1"]["reasons"]  # type: ignore[misc]
    assert reason["code"] == "no_path"
    assert reason["text"] == "no catalogue steps lead from 3.14.1.374010 to 4.2.2-408037"


def _entry(serial: str, wave: int, status: str, failures: int = 0) -> dict[str, object]:
    failed = [{"check": "version", "detail": "still on 4.1.0"}] * failures
    return {
        "serial": serial,
        "wave": wave,
        "channel": "agent",
        "status": status,
        "failures": failed,
    }


def test_breaker_halts_on_any_canary_failure_and_on_a_wave_over_its_share() -> None:
    """Canary: one failure halts; later waves: only past --max-failures; acknowledged ones skip."""
    criteria = default_abort_criteria(10)
    canary = [_entry("C1", 0, "waiting_window", failures=1), _entry("C2", 0, "done")]
    verdict = breaker(0, canary, criteria)
    assert verdict is not None and verdict["devices"][0] == {
        "serial": "C1",
        "check": "version",
        "detail": "still on 4.1.0",
    }
    assert breaker(0, canary, criteria, frozenset({"C1"})) is None
    wave = [_entry(f"W{n}", 1, "done") for n in range(9)] + [_entry("W9", 1, "failed", 2)]
    assert breaker(1, wave, criteria) is None  # 10% is not past 10%
    wave[0] = _entry("W0", 1, "failed", 2)
    halted = breaker(1, wave, criteria)
    assert halted is not None and halted["reason"].startswith("wave 1: 2 of 10 devices failed")
    assert "(20% > 10%)" in halted["reason"]


def test_every_device_status_has_its_moves_and_final_ones_have_none() -> None:
    """The table covers every status; a final status leads nowhere; stored strings stay."""
    assert set(DEVICE_MOVES) == set(DeviceStatus)
    assert {s for s, moves in DEVICE_MOVES.items() if not moves} == FINAL_STATUSES
    assert {"done", "failed", "skipped", "held", "excluded"} == FINAL_STATUSES
    assert device_move("K1", "planned", DeviceStatus.WAITING_WINDOW) == "waiting_window"
    assert device_move("K1", "installing", DeviceStatus.VERIFYING) == "verifying"
    with pytest.raises(IllegalMove, match="K1: done cannot move to downloading \\(it is final\\)"):
        device_move("K1", "done", DeviceStatus.DOWNLOADING)
    with pytest.raises(IllegalMove, match="planned cannot move to done"):
        device_move("K1", "planned", DeviceStatus.DONE)
    with pytest.raises(IllegalMove, match="ordered cannot move to done"):
        device_move("K1", "ordered", DeviceStatus.DONE)  # no such status


def test_a_rollout_moves_only_as_its_table_says() -> None:
    """Admin actions and the runner's halt and finish each go from given statuses only."""
    assert rollout_move("r", "running", "halt") == "halted"
    assert rollout_move("r", "halted", "resume") == "running"
    with pytest.raises(IllegalMove, match="r: paused cannot finish \\(finish needs it running\\)"):
        rollout_move("r", "paused", "finish")
    with pytest.raises(IllegalMove):
        rollout_move("r", "done", "abort")


def test_failures_that_do_not_punish_the_unit_never_fill_its_penalty_box() -> None:
    """Only failures of the update itself count toward the box; uncoded ones always did."""
    download = {"check": "package_unavailable", "code": "download_failed"}
    install = {"check": "install", "code": "install_failed"}
    assert not penalty_due([download, download, download, install])
    assert penalty_due([install, download, install])
    assert penalty_due([{"check": "version"}, {"check": "camera_up"}])
    # A rule that tries again must count toward the box, or a unit could be retried forever.
    assert all(rule.penalises for rule in FAILURE_RULES.values() if rule.then == "retry")


def _failed(serial: str, wave: int, code: str | None) -> dict[str, object]:
    failure: dict[str, object] = {"check": "x", "detail": "y"}
    if code is not None:
        failure["code"] = code
    return {"serial": serial, "wave": wave, "channel": "agent", "status": "failed",
            "failures": [failure]}  # fmt: skip


def test_abort_criteria_count_the_failures_of_their_type() -> None:
    """``any`` skips failures that do not count; a named type counts its own; min_executed."""
    wave = [_failed("W0", 1, "download_failed")] + [
        {"serial": f"W{n}", "wave": 1, "channel": "agent", "status": "done"} for n in range(1, 4)
    ]
    assert breaker(1, wave, default_abort_criteria(0)) is None
    strict = (AbortCriterion(waves="later", failure_type="download_failed", threshold_percent=20),)
    halted = breaker(1, wave, strict)
    assert halted is not None
    assert halted["reason"] == (
        "wave 1: 1 of 4 devices failed (the package could not be downloaded) (25% > 20%): W0 (x)"
    )
    patient = (AbortCriterion(waves="later", threshold_percent=0, min_executed=5),)
    wave[1] = _failed("W1", 1, None)  # an agent without codes: counts for ``any``
    assert breaker(1, wave, patient) is None  # four of the five it waits for have run
    assert breaker(1, wave, (AbortCriterion(waves="later", threshold_percent=0),)) is not None
    assert breaker(0, wave, strict) is None  # it watches the later waves only


def test_abort_criteria_read_from_a_rollout_stored_before_them_are_the_defaults() -> None:
    """No ``abort_criteria`` stored: the defaults, with the rollout's own max_failures."""
    assert stored_abort_criteria({"max_failures": 25}) == default_abort_criteria(25)
    stored = {
        "max_failures": 25,
        "abort_criteria": [c.to_json() for c in default_abort_criteria(3)],
    }
    assert stored_abort_criteria(stored) == default_abort_criteria(3)
    bad_lists = {
        "abort_criteria.0.failure_type": [
            {"waves": "later", "failure_type": "oops", "threshold_percent": 1}
        ],
        "abort_criteria.1.min_executed": [
            {"waves": "canary", "threshold_percent": 0},
            {"waves": "later", "threshold_percent": 1, "min_executed": 0},
        ],
        "abort_criteria.0.threshold": [{"waves": "later", "threshold": 1}],
        "abort_criteria": {"waves": "later"},
    }
    for field, bad in bad_lists.items():
        with pytest.raises(PlanError) as refused:
            parse_abort_criteria(bad)
        assert refused.value.field == field
    assert {FailureCode(code) for code in FAILURE_RULES} == set(FailureCode)


@pytest.mark.parametrize(
    ("text", "criterion"),
    [
        ("canary:0%", AbortCriterion(waves="canary", threshold_percent=0)),
        ("later:10%", AbortCriterion(waves="later", threshold_percent=10)),
        (
            "later:2.5%:min=20",
            AbortCriterion(waves="later", threshold_percent=2.5, min_executed=20),
        ),
        (
            "later:5%:min=3:type=checksum_mismatch",
            AbortCriterion(
                waves="later", threshold_percent=5, min_executed=3, failure_type="checksum_mismatch"
            ),
        ),
    ],
)
def test_an_abort_criterion_is_written_as_the_cli_takes_it(
    text: str, criterion: AbortCriterion
) -> None:
    """WAVES:PERCENT%[:min=N][:type=FAILURE] reads as the criterion and is written back so."""
    assert parse_abort_text(text) == criterion
    assert criterion.text() == text
    assert parse_abort_text(f" {text.replace(':', ' : ')} ") == criterion
    assert parse_abort_text(text.removesuffix("%") if text.endswith("%") else text) == criterion


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("later", "is not WAVES:PERCENT%"),
        ("soon:10%", "'soon': canary or later"),
        ("later:ten%", "'ten%' is not a percentage"),
        ("later:150%", "PERCENT 150.0: a number 0 to 100"),
        ("later:nan%", "PERCENT nan: a number 0 to 100"),
        ("later:5%:min=0", "min 0: a whole number, 1 or more"),
        ("later:5%:min=x", "min 'x': a whole number, 1 or more"),
        ("later:5%:type=oops", "type 'oops': one of any,"),
        ("later:5%:min=2:min=3", "'min=3' is not min=N or type=FAILURE"),
        ("later:5%:after=3", "'after=3' is not min=N or type=FAILURE"),
    ],
)
def test_a_bad_abort_criterion_text_says_what_to_fix(text: str, why: str) -> None:
    """A criterion that cannot be read is refused with the text and the part at fault."""
    with pytest.raises(PlanError) as refused:
        parse_abort_text(text)
    assert refused.value.field == "abort_criteria"
    assert refused.value.reason.startswith(repr(text)) and why in refused.value.reason


def test_an_abort_criterion_in_words() -> None:
    """The defaults and a narrow criterion read as sentences."""
    assert [c.describe() for c in default_abort_criteria(10)] == [
        "the canary wave halts when more than 0% of its devices fail",
        "each later wave halts when more than 10% of its devices fail",
    ]
    narrow = AbortCriterion(
        waves="later", threshold_percent=5, min_executed=20, failure_type="did_not_return"
    )
    assert narrow.describe() == (
        "each later wave halts when more than 5% of its devices fail with did_not_return, "
        "once 20 of them have run"
    )
