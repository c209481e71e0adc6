"""SLA deadlines on the Polish business calendar, across weekends, holidays and DST."""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from polyfleet.cli import main
from polyfleet.controller.domain.sla import SlaTerms, delivery_due, reaction_due, return_due
from polyfleet.controller.services.entitlement import load_plans

CATALOGUE = load_plans()


def terms(plan: str) -> SlaTerms:
    return SlaTerms.from_plan(CATALOGUE.get(plan))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("plan", "promised"),
    [
        ("standard", False),
        ("extended", False),
        ("hezo_plus", True),
        ("partner_poly_plus", True),
        ("poly_plus", False),
    ],
)
def test_W2_reaction_only_where_promised(plan: str, promised: bool) -> None:
    """Only HEZO+ and Partner POLY+ promise a reaction time; the others show none."""
    due = reaction_due(terms(plan), at("2025-11-24T10:00:00+01:00"))
    assert (due is not None) is promised
    if promised:
        assert due == at("2025-11-24T11:00:00+01:00")


@pytest.mark.parametrize(
    ("sent", "due"),
    [
        # inside the window
        ("2025-11-24T10:00:00+01:00", "2025-11-24T11:00:00+01:00"),
        # E8's own example: Friday 16:30 + 1 h is Monday 09:30
        ("2025-11-28T16:30:00+01:00", "2025-12-01T09:30:00+01:00"),
        # weekend: the clock starts at Monday's opening
        ("2025-11-29T12:00:00+01:00", "2025-12-01T10:00:00+01:00"),
        # before opening and after closing
        ("2025-11-26T07:00:00+01:00", "2025-11-26T10:00:00+01:00"),
        ("2025-11-26T18:00:00+01:00", "2025-11-27T10:00:00+01:00"),
        # 11 November (Independence Day) is skipped
        ("2025-11-10T16:30:00+01:00", "2025-11-12T09:30:00+01:00"),
        # 24 December is a holiday from 2025 (C1), then 25, 26 and the weekend
        ("2025-12-23T16:30:00+01:00", "2025-12-29T09:30:00+01:00"),
        ("2025-12-24T10:00:00+01:00", "2025-12-29T10:00:00+01:00"),
        # spring DST change over the weekend: offsets move from +01 to +02
        ("2026-03-27T16:30:00+01:00", "2026-03-30T09:30:00+02:00"),
        # autumn DST change over the weekend: +02 to +01
        ("2025-10-24T16:30:00+02:00", "2025-10-27T09:30:00+01:00"),
        # a UTC input is judged in Warsaw time and shown with Warsaw's offset (C2)
        ("2025-11-28T15:30:00+00:00", "2025-12-01T09:30:00+01:00"),
    ],
)
def test_E8_reaction_counts_only_8x5_window_time(sent: str, due: str) -> None:
    """HEZO+ (8x5): one hour of window time; outside the window the clock waits for the opening."""
    result = reaction_due(terms("hezo_plus"), at(sent))
    assert result is not None
    assert result.isoformat() == due


@pytest.mark.parametrize(
    ("sent", "due"),
    [
        ("2025-12-27T03:00:00+01:00", "2025-12-27T04:00:00+01:00"),
        ("2025-12-24T23:30:00+01:00", "2025-12-25T00:30:00+01:00"),
        # one elapsed hour across the spring gap (02:00 -> 03:00)
        ("2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"),
        # one elapsed hour across the autumn repeat (03:00 -> 02:00)
        ("2025-10-26T02:30:00+02:00", "2025-10-26T02:30:00+01:00"),
    ],
)
def test_E8_reaction_24x7_runs_always(sent: str, due: str) -> None:
    """Partner POLY+ (24x7): one clock hour, weekends, holidays and nights included."""
    result = reaction_due(terms("partner_poly_plus"), at(sent))
    assert result is not None
    assert result.isoformat() == due


@pytest.mark.parametrize(
    ("accepted", "due"),
    [
        ("2025-11-24T10:00:00+01:00", "2025-11-25T17:00:00+01:00"),
        ("2025-11-28T10:00:00+01:00", "2025-12-01T17:00:00+01:00"),
        ("2025-11-29T11:00:00+01:00", "2025-12-01T17:00:00+01:00"),
        ("2025-11-10T23:00:00+01:00", "2025-11-12T17:00:00+01:00"),
        ("2025-12-23T09:00:00+01:00", "2025-12-29T17:00:00+01:00"),
        ("2026-03-27T23:00:00+01:00", "2026-03-30T17:00:00+02:00"),
        ("2025-10-24T12:00:00+02:00", "2025-10-27T17:00:00+01:00"),
        # late evening UTC is already the next Warsaw day (E1: Warsaw dates)
        ("2025-11-27T23:30:00+00:00", "2025-12-01T17:00:00+01:00"),
    ],
)
def test_E9_nbd_due_by_17_next_business_day(accepted: str, due: str) -> None:
    """NBD (HEZO+, Partner POLY+, POLY+): by 17:00 of the next business day after acceptance."""
    for plan in ("hezo_plus", "partner_poly_plus", "poly_plus"):
        assert delivery_due(terms(plan), at(accepted)).isoformat() == due


def test_E9_8h_is_eight_clock_hours_across_dst() -> None:
    """The catalogue's 8h option is eight elapsed hours, even across both DST changes."""
    option = CATALOGUE.deliveries["8h"]
    eight = SlaTerms(
        window="24x7",
        reaction_hours=None,
        delivery_kind=option.kind,
        delivery_amount=option.amount,
        return_days=7,
    )
    assert delivery_due(eight, at("2025-11-24T10:00:00+01:00")).isoformat() == (
        "2025-11-24T18:00:00+01:00"
    )
    assert delivery_due(eight, at("2026-03-28T22:00:00+01:00")).isoformat() == (
        "2026-03-29T07:00:00+02:00"
    )
    assert delivery_due(eight, at("2025-10-25T22:00:00+02:00")).isoformat() == (
        "2025-10-26T05:00:00+01:00"
    )


def test_W8_E9_extended_7_days_and_standard_30_days_are_calendar_days() -> None:
    """Extended warranty: 7 calendar days; standard: 30; same local time across DST."""
    assert delivery_due(terms("extended"), at("2026-03-25T10:00:00+01:00")).isoformat() == (
        "2026-04-01T10:00:00+02:00"
    )
    assert delivery_due(terms("standard"), at("2025-10-10T12:00:00+02:00")).isoformat() == (
        "2025-11-09T12:00:00+01:00"
    )


@pytest.mark.parametrize(
    ("plan", "received", "due"),
    [
        ("hezo_plus", "2025-10-20T15:00:00+02:00", "2025-10-27T15:00:00+01:00"),
        ("poly_plus", "2025-12-22T10:00:00+01:00", "2025-12-29T10:00:00+01:00"),
        ("standard", "2026-03-25T08:15:00+01:00", "2026-04-01T08:15:00+02:00"),
    ],
)
def test_W6_E10_return_in_7_calendar_days_same_time(plan: str, received: str, due: str) -> None:
    """The failed unit goes back 7 calendar days after the replacement arrives, same time of day."""
    assert return_due(terms(plan), at(received)).isoformat() == due


def test_P4_partner_poly_plus_returns_in_5_days() -> None:
    """Partner POLY+ advance replacement: the faulty unit goes back within 5 days."""
    assert return_due(terms("partner_poly_plus"), at("2026-03-26T09:00:00+01:00")).isoformat() == (
        "2026-03-31T09:00:00+02:00"
    )


def test_E10_wall_time_in_the_spring_gap_moves_forward() -> None:
    """A received time whose wall clock does not exist on the due day lands just after the gap."""
    assert return_due(terms("hezo_plus"), at("2026-03-22T02:30:00+01:00")).isoformat() == (
        "2026-03-29T03:30:00+02:00"
    )


def test_C2_sla_cli_prints_offsets_and_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    """`controller sla --json` prints the deadlines (ISO 8601 with offsets, or null) and terms."""
    code = main(
        [
            "controller",
            "sla",
            "--plan",
            "hezo_plus",
            "--submitted",
            "2025-12-23T16:30:00+01:00",
            "--accepted",
            "2025-12-23T16:45:00+01:00",
            "--json",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "window": "8x5",
        "reaction_due": "2025-12-29T09:30:00+01:00",
        "delivery_due": "2025-12-29T17:00:00+01:00",
        "delivery_means": "arrival",
        "return_due": None,
        "reaction_hours": 1,
        "escalates": True,
    }


def test_W2_sla_cli_poly_plus_has_no_reaction(capsys: pytest.CaptureFixture[str]) -> None:
    """POLY+ (24x7) shows no reaction time and a P4-free 7-day return."""
    code = main(
        [
            "controller",
            "sla",
            "--plan",
            "poly_plus",
            "--submitted",
            "2026-03-29T01:00:00Z",
            "--received",
            "2026-03-29T01:00:00Z",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["window"] == "24x7"
    assert out["reaction_due"] is None
    assert out["delivery_due"] is None
    assert out["return_due"] == "2026-04-05T03:00:00+02:00"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--plan", "gold", "--submitted", "2025-11-24T10:00:00+01:00"], "--plan"),
        (["--plan", "hezo_plus", "--submitted", "2025-11-24T10:00:00"], "--submitted"),
        (["--plan", "hezo_plus", "--submitted", "yesterday"], "--submitted"),
        (
            ["--plan", "hezo_plus", "--submitted", "2025-11-24T10:00:00Z", "--accepted", "x"],
            "--accepted",
        ),
    ],
)
def test_C2_sla_cli_refuses_bad_input_naming_the_flag(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown plans, naive or unparsable times exit 2 with an error naming the flag."""
    assert main(["controller", "sla", *argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert needle in json.loads(captured.out)["error"]["message"]
    assert needle in captured.err


def test_C2_zoned_inputs_count_elapsed_hours_across_dst() -> None:
    """Times given in Europe/Warsaw (not fixed offsets) still count real hours across DST."""
    warsaw = ZoneInfo("Europe/Warsaw")
    spring = datetime(2026, 3, 29, 1, 30, tzinfo=warsaw)
    due = reaction_due(terms("partner_poly_plus"), spring)
    assert due is not None and due.isoformat() == "2026-03-29T03:30:00+02:00"
    autumn = datetime(2025, 10, 25, 22, 0, tzinfo=warsaw)
    option = CATALOGUE.deliveries["8h"]
    eight = SlaTerms(
        window="24x7",
        reaction_hours=None,
        delivery_kind=option.kind,
        delivery_amount=option.amount,
        return_days=7,
    )
    assert delivery_due(eight, autumn).isoformat() == "2025-10-26T05:00:00+01:00"


def test_C2_sla_cli_24x7_reaction_across_spring_gap(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI shows 01:30+01:00 plus one hour as 03:30+02:00 (02:00-03:00 does not exist)."""
    argv = ["--plan", "partner_poly_plus", "--submitted", "2026-03-29T01:30:00+01:00"]
    assert main(["controller", "sla", *argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reaction_due"] == "2026-03-29T03:30:00+02:00"


@pytest.mark.parametrize(
    ("sent", "reaction", "delivery"),
    [
        # 2024: 24 December was still a working day.
        ("2024-12-23T16:30:00+01:00", "2024-12-24T09:30:00+01:00", "2024-12-24T17:00:00+01:00"),
        # From 2025 it is a public holiday (C1), as every year after.
        ("2025-12-23T16:30:00+01:00", "2025-12-29T09:30:00+01:00", "2025-12-29T17:00:00+01:00"),
        ("2026-12-23T16:30:00+01:00", "2026-12-28T09:30:00+01:00", "2026-12-28T17:00:00+01:00"),
    ],
)
def test_C1_24_december_is_a_holiday_from_2025(sent: str, reaction: str, delivery: str) -> None:
    """The holiday library's calendar, not a fixed list: 24 December counts from 2025 on."""
    hezo = terms("hezo_plus")
    due = reaction_due(hezo, at(sent))
    assert due is not None and due.isoformat() == reaction
    assert delivery_due(hezo, at(sent)).isoformat() == delivery


#: The first release of ``holidays`` whose Polish calendar has 24 December from 2025 on,
#: found by installing each release in turn (0.63 lacks it, 0.64 has it).
FIRST_HOLIDAYS_WITH_24_DECEMBER = Version("0.64")


def test_C1_declared_holidays_floor_has_24_december() -> None:
    """The lowest `holidays` the package allows knows 24 December as a Polish holiday."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text("utf-8"))
    (declared,) = [
        Requirement(text)
        for text in project["project"]["dependencies"]
        if Requirement(text).name == "holidays"
    ]
    floors = [Version(spec.version) for spec in declared.specifier if spec.operator == ">="]
    assert floors and min(floors) >= FIRST_HOLIDAYS_WITH_24_DECEMBER, str(declared)
    assert Version(holidays.__version__) in declared.specifier
