"""The pure planner judges every install moment: real nights (DST, zones), waves moved for
entitlement both ways, the canary among units it will update, eligibility and meetings."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_plan_rules import device, entries, make_plan, poly_plus

from polyfleet.controller.domain.assets import Asset, Contract, ContractFlag
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.domain.rollout import PlanDevice, PlanError, RoomCalendar, Window

WARSAW = ZoneInfo("Europe/Warsaw")
NEW_YORK = ZoneInfo("America/New_York")
#: 3.12.0 reaches 4.2.2 in four hops: 4.0.0, 4.1.0, 4.1.0_00, 4.2.2.
FOUR_HOPS = {"version": "3.12.0", "build": "366027"}


def instants(entry: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(h["install_at"]) for h in entry["hops"]]


def plan_four_hops(
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    *,
    now: datetime,
    start: date,
    unit: PlanDevice | None = None,
    **options: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan (as JSON) for one unit four hops behind, K1 at krakow unless ``unit`` is
    given, and that unit's entry."""
    unit = unit or device("K1", **FOUR_HOPS)
    plan = make_plan([unit], plans, releases, now=now, start=start, **options).to_json()
    return plan, entries_of(plan)[unit.serial]


def window_of(entry: dict[str, Any]) -> tuple[datetime, datetime]:
    return (
        datetime.fromisoformat(entry["window"]["start"]),
        datetime.fromisoformat(entry["window"]["end"]),
    )


def test_four_hops_on_the_spring_forward_night_stay_in_order_and_exist(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Warsaw 2027-03-28: 45 minutes apart in elapsed time, none at 02:xx, all in the window;
    the wave says its window is shortened to three hours."""
    plan, entry = plan_four_hops(
        plans, releases, now=datetime(2027, 3, 20, 12, tzinfo=WARSAW), start=date(2027, 3, 28)
    )
    moments = instants(entry)
    assert [h["install_at"] for h in entry["hops"]] == [
        "2027-03-28T01:00:00+01:00",
        "2027-03-28T01:45:00+01:00",
        "2027-03-28T03:30:00+02:00",
        "2027-03-28T04:15:00+02:00",
    ]
    assert all(b - a == timedelta(minutes=45) for a, b in itertools.pairwise(moments))
    start, end = window_of(entry)
    assert end - start == timedelta(hours=3)
    assert moments[-1] + timedelta(minutes=45) <= end
    (note,) = [n for n in plan["waves"][0]["notes"] if n["site"] == "krakow"]
    assert note["code"] == "window_shortened"
    assert "lasts 3h instead of 4h" in note["text"]


def test_hops_that_do_not_fit_resume_the_next_night_and_say_so(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Hours-long hops on the three-hour night: the fourth goes to the next night's window."""
    _, entry = plan_four_hops(
        plans,
        releases,
        now=datetime(2027, 3, 20, 12, tzinfo=WARSAW),
        start=date(2027, 3, 28),
        hop_length=timedelta(hours=1),
    )
    assert [h["install_at"] for h in entry["hops"]][-2:] == [
        "2027-03-28T04:00:00+02:00",
        "2027-03-29T01:00:00+02:00",
    ]
    (note,) = entry["notes"]
    assert note["code"] == "resumes_next_window"
    assert "hop 4 of 4 (4.2.2-408037)" in note["text"] and "2027-03-29 01:00 +02:00" in note["text"]


def test_the_fall_back_night_is_longer_and_hops_stay_in_order_in_time(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Warsaw 2027-10-31: the window lasts five hours; hops in order as instants although
    the wall clock shows 02:45 before 02:30."""
    plan, entry = plan_four_hops(
        plans, releases, now=datetime(2027, 10, 20, 12, tzinfo=WARSAW), start=date(2027, 10, 31)
    )
    moments = instants(entry)
    assert moments == sorted(moments)
    assert [m.astimezone(UTC).strftime("%H:%M") for m in moments] == [
        "23:00",
        "23:45",
        "00:30",
        "01:15",
    ]
    start, end = window_of(entry)
    assert end - start == timedelta(hours=5)
    assert plan["waves"][0]["notes"][0]["code"] == "window_lengthened"


def test_a_window_missing_on_the_spring_night_moves_to_the_next_that_exists(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """02:00-03:00 does not exist in Warsaw on 2027-03-28: the canary wave says so and
    opens the next night; nothing is planned in a zero-length window."""
    plan = make_plan(
        [device("K1"), device("K2")],
        plans,
        releases,
        now=datetime(2027, 3, 20, 12, tzinfo=WARSAW),
        start=date(2027, 3, 28),
        window=Window.parse("02:00-03:00"),
        hop_length=timedelta(minutes=30),
    ).to_json()
    canary = plan["waves"][0]
    assert canary["opens_at"] == "2027-03-29T02:00:00+02:00"
    (note,) = canary["notes"]
    assert note["code"] == "window_missing"
    assert "does not exist" in note["text"] and "2027-03-29 02:00 +02:00" in note["text"]
    for entry in plan["devices"]:
        start, end = window_of(entry)
        assert end - start == timedelta(hours=1)


def test_a_us_zone_keeps_hops_in_elapsed_time_across_its_own_change(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """New York springs forward on 2027-03-14: a 01:00-05:00 window there lasts three hours
    and its hops are 45 minutes apart with none at 02:xx local time."""
    _, entry = plan_four_hops(
        plans,
        releases,
        now=datetime(2027, 3, 1, 12, tzinfo=NEW_YORK),
        start=date(2027, 3, 14),
        unit=device("N1", site="nyc", provider="zoom", **FOUR_HOPS),
    )
    moments = instants(entry)
    assert all(b - a == timedelta(minutes=45) for a, b in itertools.pairwise(moments))
    assert all(m.astimezone(NEW_YORK).hour != 2 for m in moments)
    start, end = window_of(entry)
    assert end - start == timedelta(hours=3) and moments[-1] + timedelta(minutes=45) <= end


def test_a_plan_whose_windows_are_all_over_is_refused_naming_the_first(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Every wave's window ended before now: refused, the first window named; one wave
    still ahead is planned, its passed windows moved and said."""
    now = datetime(2026, 11, 10, 12, tzinfo=WARSAW)
    with pytest.raises(PlanError) as refused:
        make_plan([device("K1")], plans, releases, now=now, start=date(2026, 11, 5))
    assert refused.value.field == "start"
    assert "every window of this plan is over" in refused.value.reason
    assert "wave canary at krakow, ran 2026-11-05 01:00 +01:00" in refused.value.reason
    plan = make_plan([device("K1")], plans, releases, now=now, start=date(2026, 11, 8)).to_json()
    passed = [n for w in plan["waves"] for n in w["notes"] if n["code"] == "window_passed"]
    assert len(passed) == 3  # canary, 10% and 50%: 8, 9 and 10 November
    assert plan["waves"][0]["opens_at"] == "2026-11-11T01:00:00+01:00"


def test_a_contract_that_starts_later_goes_to_the_first_wave_inside_it(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Partner POLY+ from the night of wave 2 on: planned in wave 2, not held, and told why."""
    devices = [device(f"K{n:02d}") for n in range(11)]
    assets = {d.serial: poly_plus(d.serial) for d in devices}
    first = sorted(s for s in entries(make_plan(devices, plans, releases, assets=assets)))[1]
    assets[first] = Asset(
        serial=first,
        model="studio_x50",
        purchase_date=date(2025, 1, 10),
        site="krakow",
        contracts=(
            Contract(
                plan="partner_poly_plus",
                number="C-late",
                start=date(2026, 11, 5),
                end=date(2027, 11, 4),
            ),
        ),
    )
    planned = entries(make_plan(devices, plans, releases, assets=assets))
    entry = planned[first]
    assert entry["status"] == "planned" and entry["wave"] == 2
    assert entry["window"]["start"] == "2026-11-05T01:00:00+01:00"  # type: ignore[index]
    (note,) = entry["notes"]  # type: ignore[misc]
    assert note["code"] == "moved_later"
    assert "its contract starts on 2026-11-05" in note["text"]


def test_the_canary_is_chosen_among_units_entitled_on_its_night(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """The healthiest X50 is not entitled that night: another X50 is the canary; a unit whose
    entitlement ends on the canary night joins the canary wave; a site with nobody entitled
    then says it has no canary."""
    devices = [device(f"K{n}") for n in range(5)] + [device(f"N{n}", site="nyc") for n in range(2)]
    assets = {d.serial: poly_plus(d.serial) for d in devices}
    starts_later = Contract(
        plan="poly_plus", number="C-x", start=date(2026, 11, 4), end=date(2029, 1, 1)
    )
    assets["K0"] = Asset(
        serial="K0", model="studio_x50", purchase_date=date(2025, 1, 10), site="krakow",
        contracts=(starts_later,),
    )  # fmt: skip
    assets["K4"] = poly_plus("K4", end=date(2026, 11, 3))  # ends on the canary night
    for serial in ("N0", "N1"):
        assets[serial] = Asset(
            serial=serial, model="studio_x50", purchase_date=date(2025, 1, 10), site="nyc",
            contracts=(starts_later,),
        )  # fmt: skip
    plan = make_plan(devices, plans, releases, assets=assets).to_json()
    by = entries_of(plan)
    assert sorted(plan["waves"][0]["devices"]) == ["K1", "K4"]
    assert by["K4"]["notes"][0]["code"] == "moved_earlier"
    assert "to wave 0" in by["K4"]["notes"][0]["text"]
    assert by["K0"]["wave"] != 0 and by["K0"]["status"] == "planned"
    (note,) = [n for n in plan["waves"][0]["notes"] if n["code"] == "no_canary"]
    assert note["site"] == "nyc" and "no unit at nyc" in note["text"]
    assert {by["N0"]["status"], by["N1"]["status"]} == {"planned"}


def test_a_teams_unit_without_entitlement_is_held_like_any_other(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Teams changes who installs, not who is entitled: held not_entitled, with no wave."""
    devices = [device("T1", provider="teams"), device("T2", provider="teams")]
    assets = {"T2": poly_plus("T2")}
    by = entries(make_plan(devices, plans, releases, assets=assets))
    assert by["T1"]["status"] == "held" and by["T1"]["wave"] is None
    assert [r["code"] for r in by["T1"]["reasons"]] == ["teams_managed", "not_entitled"]  # type: ignore[attr-defined]
    assert by["T2"]["status"] == "planned" and by["T2"]["channel"] == "teams_admin_center"


def test_entries_carry_the_eligibility_flags_of_their_contract(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """A HEZO+ on a G7500 breaks H1: the entry names the flag, its text and whether the
    product honours it; an unflagged contract carries none."""
    hezo = Contract(
        plan="hezo_plus", number="H-1", start=date(2025, 1, 10), end=date(2027, 1, 9)
    ).flagged(ContractFlag("H1", "model"))
    devices = [
        device("G1", model="g7500", version="4.1.0_00", build="180034"),
        device("K1"),
    ]
    assets = {
        "G1": Asset(
            serial="G1", model="g7500", purchase_date=date(2025, 1, 10), site="krakow",
            contracts=(hezo,),
        ),
        "K1": poly_plus("K1"),
    }  # fmt: skip
    by = entries(make_plan(devices, plans, releases, assets=assets, target="4.1.3.394009"))
    eligibility = by["G1"]["eligibility"]
    assert eligibility is not None
    assert eligibility["contract_number"] == "H-1" and eligibility["grants"] is True  # type: ignore[index]
    (flag,) = eligibility["flags"]  # type: ignore[index]
    assert (flag["rule"], flag["code"]) == ("H1", "model")
    assert "covers single systems only" in flag["text"]
    assert by["K1"]["eligibility"] is None


def test_suggestions_name_only_plans_the_unit_can_still_get(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """A patch not covered: HEZO+ is offered to an X50 bought days ago (for a night past its
    90 days of patches), never to a G7500 (H1) nor to an X50 bought a year ago (H5)."""
    now = datetime(2026, 11, 2, 10, tzinfo=WARSAW)

    def bare(serial: str, model: str, purchase: date) -> Asset:
        return Asset(serial=serial, model=model, purchase_date=purchase, site="krakow")

    devices = [
        device("NEW", version="4.1.0_00", build="180034"),
        device("OLD", version="4.1.0_00", build="180034"),
        device("G", model="g7500", version="4.1.0_00", build="180034"),
    ]
    assets = {
        "NEW": bare("NEW", "studio_x50", date(2026, 1, 1)),
        "OLD": bare("OLD", "studio_x50", date(2025, 1, 1)),
        "G": bare("G", "g7500", date(2025, 1, 1)),
    }
    by = entries(make_plan(devices, plans, releases, assets=assets, now=now, target="4.1.3.394009"))
    texts = {s: by[s]["reasons"][0]["text"] for s in by}  # type: ignore[index]
    assert "HEZO+" not in texts["OLD"] and "a Partner POLY+ or POLY+ contract" in texts["OLD"]
    assert "HEZO+" not in texts["G"]
    # Bought 13 days ago; its 90 days of patches are over by the night planned.
    new = make_plan(
        devices[:1],
        plans,
        releases,
        assets={"NEW": bare("NEW", "studio_x50", date(2026, 10, 20))},
        now=now,
        target="4.1.3.394009",
        start=date(2027, 2, 1),
    ).to_json()
    assert "HEZO+ or" in new["devices"][0]["reasons"][0]["text"]


def test_known_meetings_are_shown_and_hops_planned_around_them(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """A meeting 01:00-02:00 in the canary's window: its hop at 02:00, the meeting listed
    (start and end only); a unit without a calendar says its room counts as free."""
    meeting = (
        datetime(2026, 11, 3, 1, tzinfo=WARSAW),
        datetime(2026, 11, 3, 2, tzinfo=WARSAW),
    )
    calendars = {
        "K1": RoomCalendar(
            state="read", meetings=(meeting,), read_at=datetime(2026, 11, 2, tzinfo=UTC)
        ),
        "K2": RoomCalendar(state="off"),
    }
    plan = make_plan(
        [device("K1"), device("K2")], plans, releases, calendars=calendars, canary=2
    ).to_json()
    by = entries_of(plan)
    assert by["K1"]["hops"][0]["install_at"] == "2026-11-03T02:00:00+01:00"
    assert by["K1"]["calendar"]["meetings"] == [
        {"start": "2026-11-03T01:00:00+01:00", "end": "2026-11-03T02:00:00+01:00"}
    ]
    assert by["K2"]["calendar"]["state"] == "off"
    assert "counts as free" in by["K2"]["calendar"]["text"]
    assert by["K2"]["hops"][0]["install_at"] == "2026-11-03T01:00:00+01:00"


def entries_of(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["serial"]: e for e in plan["devices"]}


def test_a_mixed_fleet_lists_each_unit_once_and_its_counts_add_up(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Contracts ending or starting around the waves, multi-hop units, two zones, the DST
    night: each unit is listed once, in at most one wave, and the summary counts the entries."""
    devices = []
    assets: dict[str, Asset] = {}
    for n in range(90):
        serial = f"MIX{n:03d}"
        fields: dict[str, Any] = {"site": "nyc" if n % 3 == 0 else "krakow"}
        if n % 4 == 0:
            fields.update(FOUR_HOPS)
        if n % 11 == 0:
            fields["provider"] = "teams"
        devices.append(device(serial, **fields))
        shift = timedelta(days=n % 9 - 3)
        if n % 5 == 0:  # a contract that starts around the waves
            start = date(2027, 3, 28) + shift
            contract = Contract(
                plan="poly_plus", number=f"C-{serial}", start=start, end=date(2029, 12, 31)
            )
        else:  # one that ends around them
            contract = Contract(
                plan="poly_plus",
                number=f"C-{serial}",
                start=date(2025, 1, 10),
                end=date(2027, 3, 28) + shift,
            )
        assets[serial] = Asset(
            serial=serial,
            model="studio_x50",
            purchase_date=date(2025, 1, 10),
            site=fields["site"],
            contracts=(contract,),
        )
    plan = make_plan(
        devices,
        plans,
        releases,
        assets=assets,
        now=datetime(2027, 3, 20, 12, tzinfo=WARSAW),
        start=date(2027, 3, 28),
    ).to_json()
    serials = [entry["serial"] for entry in plan["devices"]]
    assert sorted(serials) == sorted(d.serial for d in devices)
    in_waves = [serial for wave in plan["waves"] for serial in wave["devices"]]
    assert len(in_waves) == len(set(in_waves))
    with_wave = {e["serial"] for e in plan["devices"] if e["wave"] is not None}
    assert set(in_waves) == with_wave
    counted: dict[str, int] = {}
    for entry in plan["devices"]:
        counted[entry["status"]] = counted.get(entry["status"], 0) + 1
    assert plan["summary"]["by_status"] == counted
    # The fleet exercises what it means to: moves both ways and units held.
    notes = {n["code"] for e in plan["devices"] for n in e["notes"]}
    assert {"moved_earlier", "moved_later"} <= notes
    assert counted.get("held", 0) > 0 and counted.get("planned", 0) > 0
