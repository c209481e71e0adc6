"""Registry CSV: the file is checked whole, every problem named by line and column (E2, E5, E6)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date

import pytest

from polyfleet.controller.domain.assets import (
    COLUMNS,
    Asset,
    Contract,
    ContractFlag,
    RegistryImportError,
    parse_installed_firmware,
    parse_registry,
    plan_import,
    render_registry,
    whole_years,
)
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.errors import Refused

from .conftest import BASELINE, REJECTED, TODAY, csv_of, row

HEZO = {"plan": "hezo_plus", "contract_number": "HZ-1"}


def problems(plans: PlanCatalogue, text: str) -> list[tuple[int, str]]:
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans)
    return [(p.line, p.column) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("cells", "column"),
    [
        ({"plan": "gold"}, "plan"),
        ({"model": "studio_x90"}, "model"),
        ({"model": ""}, "model"),
        ({"serial": "bad serial!"}, "serial"),
        ({"purchase_date": "2025-02-30"}, "purchase_date"),
        ({"purchase_date": "10/01/2025"}, "purchase_date"),  # day or month first? refused
        ({"purchase_date": "31.04.2025"}, "purchase_date"),
        ({"purchase_date": ""}, "purchase_date"),
        ({"site": ""}, "site"),
        ({"host_serial": "HOST1"}, "host_serial"),  # an X50 does not hang off a host
        ({"contract_number": "C-1"}, "contract_number"),  # contract cells without a plan
        ({"plan": "standard", "contract_start": "2025-01-10"}, "contract_start"),
        (
            {"plan": "extended", "contract_start": "2025-01-10", "contract_end": "2026-01-09"},
            "contract_number",
        ),  # W5: no contract number, no ticket
        (
            {**HEZO, "contract_start": "2025-01-10", "contract_end": "2024-01-09"},
            "contract_end",
        ),
        (
            {**HEZO, "contract_start": "2025-01-10", "contract_end": "2025-13-01"},
            "contract_end",
        ),
        (
            {**HEZO, "contract_start": "2025-01-01", "contract_end": "2026-12-31"},
            "contract_start",
        ),  # starts before the device was bought
        (
            {**HEZO, "contract_start": "2025-01-10", "contract_end": "2028-01-09"},
            "contract_end",
        ),  # 3 years: longer than HEZO+ allows
        (
            {
                "plan": "extended",
                "contract_number": "EX-1",
                "contract_start": "2025-01-10",
                "contract_end": "2027-01-11",
            },
            "contract_end",
        ),  # extended: up to 2 years, this is 2 years and a day either way (E2)
        (
            {
                "plan": "poly_plus",
                "contract_number": "PP-1",
                "contract_start": "2025-01-10",
                "contract_end": "2030-01-11",
            },
            "contract_end",
        ),  # POLY+: up to 5 years
    ],
)
def test_bad_row_rejects_the_file_naming_line_and_column(
    plans: PlanCatalogue, cells: dict[str, str], column: str
) -> None:
    """One bad cell rejects the whole file and the problem names its line and column."""
    text = csv_of(row("GOOD1"), row(**{"serial": "BAD1", **cells}))
    assert (3, column) in problems(plans, text)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_each_rejection_case_of_the_issue_names_its_line_and_column(
    plans: PlanCatalogue, case: str
) -> None:
    """Every kind of bad row the issue lists rejects the file, naming only that cell."""
    text, where = REJECTED[case]
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans, today=TODAY)
    assert [(p.line, p.column) for p in caught.value.problems] == [where]
    assert parse_registry(BASELINE, plans, today=TODAY)


def test_a_bad_file_is_a_refusal_every_face_renders_with_its_problems(
    plans: PlanCatalogue,
) -> None:
    """A bad file is a 422 refusal (invalid_registry, field body) whose problems read as the
    mappings the API answers and the CLI prints: line, column, message, rule."""
    text = csv_of(row("A", model="x99"), row("B", purchase_date="2025-02-30"))
    with pytest.raises(Refused) as caught:
        parse_registry(text, plans)
    refused = caught.value
    assert isinstance(refused, RegistryImportError)
    assert (refused.status, refused.code, refused.field) == (422, "invalid_registry", "body")
    assert refused.message.startswith("nothing imported: 2 problem(s), first: line 2, column model")
    assert [dict(problem) for problem in refused.problems] == [
        problem.to_json() for problem in refused.problems
    ]
    assert [(p["line"], p["column"]) for p in refused.problems] == [
        (2, "model"),
        (3, "purchase_date"),
    ]


def test_P5_partner_term_other_than_1_or_3_years_is_refused(plans: PlanCatalogue) -> None:
    """Partner POLY+ is sold for 1 or 3 years: a 2-year row rejects the file (P5)."""
    bad = row(
        plan="partner_poly_plus",
        contract_number="PP-1",
        contract_start="2025-01-10",
        contract_end="2027-01-09",
    )
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(csv_of(bad), plans)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (2, "contract_end")
    assert problem.rule == "P5" and "2026-01-09" in problem.message
    assert "P5" not in problem.message


@pytest.mark.parametrize("years,end", [(1, "2026-01-09"), (3, "2028-01-09")])
def test_P5_partner_one_and_three_year_variants_are_accepted(
    one_asset: Callable[..., Asset], years: int, end: str
) -> None:
    """Both Partner POLY+ variants import and end on their last covered day (P5, E2)."""
    asset = one_asset(
        row(
            plan="partner_poly_plus",
            contract_number="PP-1",
            contract_start="2025-01-10",
            contract_end=end,
        )
    )
    assert asset.contracts[0].end == date.fromisoformat(end)
    assert asset.ineligible_rules == ()


def test_every_problem_of_the_file_is_listed(plans: PlanCatalogue) -> None:
    """Problems on several lines are all reported at once, in line order."""
    text = csv_of(
        row("A", model="nope"),
        row("B"),
        row("C", purchase_date="2025-02-29", plan="silver"),
    )
    assert problems(plans, text) == [(2, "model"), (4, "plan"), (4, "purchase_date")]


def test_header_must_name_the_columns(plans: PlanCatalogue) -> None:
    """A missing or unknown column is reported on line 1 before any row is read."""
    text = "serial,model,purchase_date,plan,colour\nA,studio_x30,2025-01-01,,red\n"
    found = problems(plans, text)
    assert (1, "colour") in found and (1, "site") in found and (1, "host_serial") in found


def test_rows_of_one_serial_must_agree_on_the_device(plans: PlanCatalogue) -> None:
    """Two rows of one serial with different model or purchase date reject the file."""
    first = row(
        plan="partner_poly_plus",
        contract_number="PP-1",
        contract_start="2025-01-10",
        contract_end="2026-01-09",
    )
    second = dict(first, contract_start="2026-01-10", contract_end="2027-01-09")
    second.update(model="studio_x70", purchase_date="2025-01-11")
    assert problems(plans, csv_of(first, second)) == [(3, "model"), (3, "purchase_date")]


def test_E2_contract_end_conventions(one_asset: Callable[..., Asset]) -> None:
    """End given as start+2y-1d or start+2y both mean 2 years; the end as written is kept."""
    inclusive = one_asset(row(**HEZO, contract_start="2025-01-10", contract_end="2027-01-09"))
    exclusive = one_asset(row(**HEZO, contract_start="2025-01-10", contract_end="2027-01-10"))
    assert inclusive.contracts[0].end == date(2027, 1, 9)
    assert exclusive.contracts[0].end == date(2027, 1, 10)
    assert inclusive.ineligible_rules == exclusive.ineligible_rules == ()


def test_E2_whole_years_across_29_february() -> None:
    """A term from 29 February is a whole year to 28 February (or 1 March, or the 27th)."""
    assert whole_years(date(2024, 2, 29), date(2025, 2, 28)) == 1
    assert whole_years(date(2024, 2, 29), date(2025, 3, 1)) == 1
    assert whole_years(date(2024, 2, 29), date(2025, 2, 27)) == 1
    assert whole_years(date(2024, 2, 29), date(2026, 2, 28)) == 2
    assert whole_years(date(2025, 3, 1), date(2028, 2, 29)) == 3
    assert whole_years(date(2024, 3, 1), date(2025, 3, 15)) is None


def test_term_from_29_february_keeps_its_last_day(one_asset: Callable[..., Asset]) -> None:
    """HEZO+ 2024-02-29 .. 2026-02-28 is two whole years covering 28 February (E2)."""
    asset = one_asset(
        row(
            **HEZO,
            purchase_date="2024-02-29",
            contract_start="2024-02-29",
            contract_end="2026-02-28",
        )
    )
    assert asset.contracts[0].end == date(2026, 2, 28)
    assert asset.ineligible_rules == ()


def test_partner_chain_from_29_february_is_accepted(one_asset: Callable[..., Asset]) -> None:
    """Partner POLY+ 2024-02-29 .. 2025-02-28, renewed 2025-03-01 .. 2028-02-29, chains (P5)."""
    asset = one_asset(
        row(purchase_date="2024-02-29", **_contract_cells("PP-1", "2024-02-29", "2025-02-28")),
        row(purchase_date="2024-02-29", **_contract_cells("PP-2", "2025-03-01", "2028-02-29")),
    )
    assert [(c.start, c.end) for c in asset.contracts] == [
        (date(2024, 2, 29), date(2025, 2, 28)),
        (date(2025, 3, 1), date(2028, 2, 29)),
    ]
    assert asset.ineligible_rules == ()


def _contract_cells(number: str, start: str, end: str) -> dict[str, str]:
    return {
        "plan": "partner_poly_plus",
        "contract_number": number,
        "contract_start": start,
        "contract_end": end,
    }


@pytest.mark.parametrize(
    ("start", "rules"),
    [
        ("2025-01-10", ()),  # bought with the device
        ("2025-02-09", ()),  # day 30: still eligible (E6)
        ("2025-02-10", ("H5",)),  # day 31: not eligible
    ],
)
def test_E6_H5_thirty_day_edge(
    one_asset: Callable[..., Asset], start: str, rules: tuple[str, ...]
) -> None:
    """HEZO+ started 30 days after purchase is eligible, 31 days is flagged H5 (E6)."""
    end = f"{int(start[:4]) + 2}{start[4:]}"
    asset = one_asset(row(**HEZO, contract_start=start, contract_end=end))
    assert asset.ineligible_rules == rules


def test_H5_hezo_not_for_exactly_two_years_is_imported_and_flagged(
    one_asset: Callable[..., Asset],
) -> None:
    """A one-year HEZO+ is well-formed but breaks H5: kept with the rule id."""
    asset = one_asset(row(**HEZO, contract_start="2025-01-10", contract_end="2026-01-09"))
    assert asset.contracts[0].ineligible_rules == ("H5",)


def test_H1_hezo_on_a_model_it_does_not_cover_is_imported_and_flagged(
    one_asset: Callable[..., Asset],
) -> None:
    """HEZO+ on a G7500 (not a D1 model) imports and is flagged H1."""
    asset = one_asset(
        row(model="g7500", **HEZO, contract_start="2025-01-10", contract_end="2027-01-09")
    )
    assert asset.ineligible_rules == ("H1",)


def test_H1_H5_both_broken_lists_both(one_asset: Callable[..., Asset]) -> None:
    """A late HEZO+ on a G7500 carries both rule ids, sorted."""
    asset = one_asset(
        row(model="g7500", **HEZO, contract_start="2025-03-10", contract_end="2027-03-09")
    )
    assert asset.ineligible_rules == ("H1", "H5")


def test_D1_hezo_covers_the_E70_camera(one_asset: Callable[..., Asset]) -> None:
    """HEZO+ on a Studio E70 (a D1 model) is eligible."""
    asset = one_asset(
        row(model="Studio E70", **HEZO, contract_start="2025-01-10", contract_end="2027-01-09")
    )
    assert asset.model == "studio_e70" and asset.ineligible_rules == ()


def test_E70_asset_keeps_its_host(plans: PlanCatalogue) -> None:
    """An E70 row names the system it hangs off; the host may be in the same file."""
    assets = parse_registry(
        csv_of(row("BAR1"), row("CAM1", model="studio_e70", host_serial="BAR1")), plans
    )
    camera = next(a for a in assets if a.serial == "CAM1")
    assert camera.host_serial == "BAR1"


def test_E70_cannot_be_its_own_host(plans: PlanCatalogue) -> None:
    """host_serial equal to the camera's own serial is refused."""
    text = csv_of(row("CAM1", model="studio_e70", host_serial="CAM1"))
    assert problems(plans, text) == [(2, "host_serial")]


def _partner(start: str, end: str, number: str = "PP") -> dict[str, str]:
    return row(
        plan="partner_poly_plus", contract_number=number, contract_start=start, contract_end=end
    )


def test_E5_renewals_chain_into_one_history(one_asset: Callable[..., Asset]) -> None:
    """Rows of one serial, each starting the day after the previous ends, form one chain."""
    asset = one_asset(
        _partner("2026-01-10", "2029-01-09", "PP-2"),  # listed out of order on purpose
        _partner("2025-01-10", "2026-01-09", "PP-1"),
    )
    assert [c.number for c in asset.contracts] == ["PP-1", "PP-2"]


def test_E5_chain_mixes_entry_conventions(one_asset: Callable[..., Asset]) -> None:
    """A renewal starting on the end of a term given as start+1y chains: the rows meet."""
    asset = one_asset(
        _partner("2025-01-10", "2026-01-10", "PP-1"),
        _partner("2026-01-10", "2027-01-09", "PP-2"),
    )
    assert [c.end for c in asset.contracts] == [date(2026, 1, 10), date(2027, 1, 9)]


def test_E5_gap_in_a_chain_is_an_error(plans: PlanCatalogue) -> None:
    """A renewal starting later than the day after the previous end is refused (gap)."""
    text = csv_of(_partner("2025-01-10", "2026-01-09"), _partner("2026-01-12", "2027-01-11"))
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (3, "contract_start")
    assert "gap" in problem.message and "2026-01-10" in problem.message


def test_E5_overlap_in_a_chain_is_an_error(plans: PlanCatalogue) -> None:
    """A renewal starting before the previous term ends is refused (overlap)."""
    text = csv_of(_partner("2025-01-10", "2028-01-09"), _partner("2026-01-10", "2027-01-09"))
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (3, "contract_start")
    assert "overlaps" in problem.message


def test_E5_chain_checked_even_when_a_term_is_wrong(plans: PlanCatalogue) -> None:
    """A wrong-length renewal and a gap are both listed, not just the first."""
    text = csv_of(_partner("2025-01-10", "2026-01-09"), _partner("2026-01-15", "2028-01-14"))
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans)
    found = [(p.rule, p.message) for p in caught.value.problems]
    assert any(rule == "P5" for rule, _ in found)
    assert any(rule == "E5" and "gap" in message for rule, message in found)


def test_a_bare_row_must_be_the_serials_only_row(plans: PlanCatalogue) -> None:
    """A serial listed twice with no contract is a duplicate, not a history."""
    assert problems(plans, csv_of(row("A"), row("A"))) == [(2, "plan"), (3, "plan")]


def test_model_spellings_are_understood(plans: PlanCatalogue) -> None:
    """ "Poly Studio X30", "Studio X30", "X30" and studio_x30 name one model."""
    spellings = ["Poly Studio X30", "Studio X30", "X30", "studio_x30"]
    text = csv_of(*(row(f"S{i}", model=m) for i, m in enumerate(spellings)))
    assert {a.model for a in parse_registry(text, plans)} == {"studio_x30"}


def test_purchase_in_the_future_is_refused_on_import(plans: PlanCatalogue) -> None:
    """With today given, a purchase date after it is an impossible date."""
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(csv_of(row(purchase_date="2027-01-01")), plans, today=date(2026, 11, 25))
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, "purchase_date")]


def test_quoted_cells_bom_and_blank_lines(plans: PlanCatalogue) -> None:
    """A spreadsheet export with a BOM, quotes and a trailing blank line imports."""
    text = "\ufeff" + csv_of(row("A", room='"Room, big"')) + "\n\n"
    (asset,) = parse_registry(text, plans)
    assert asset.room == "Room, big"


def test_registry_round_trips_through_csv_and_store_documents(plans: PlanCatalogue) -> None:
    """Rendering the registry and reading it back, or storing and loading it, changes nothing."""
    text = csv_of(
        _partner("2025-01-10", "2026-01-09", "PP-1"),
        _partner("2026-01-10", "2029-01-09", "PP-2"),
        row("CAM1", model="studio_e70", host_serial="SN1", room="Board room"),
        row("OLD", model="g7500", **HEZO, contract_start="2025-01-10", contract_end="2027-01-09"),
    )
    assets = parse_registry(text, plans)
    again = parse_registry(render_registry(assets), plans)
    assert sorted(again, key=lambda a: a.serial) == sorted(assets, key=lambda a: a.serial)
    assert [Asset.from_doc(a.to_doc()) for a in assets] == assets


def test_plan_import_tells_added_updated_unchanged(plans: PlanCatalogue) -> None:
    """Re-importing a serial with a new renewal is an update; the same rows are unchanged."""
    before = {a.serial: a for a in parse_registry(csv_of(row("A"), row("B")), plans)}
    incoming = parse_registry(
        csv_of(
            row("A"),
            row("B", room="R2"),
            row("C", model="g7500", **HEZO, contract_start="2025-01-10", contract_end="2027-01-09"),
        ),
        plans,
    )
    plan = plan_import(before, incoming)
    assert (plan.added, plan.updated, plan.unchanged, plan.ineligible) == (
        ("C",),
        ("B",),
        ("A",),
        ("C",),
    )


def test_firmware_csv_is_checked_whole() -> None:
    """The --firmware file lists serial,version; bad versions and repeats are named by line."""
    good = parse_installed_firmware("serial,version\nA,4.1.0_00.180034\nB,4.0.0-376092\n")
    assert good["A"].text == "4.1.0_00.180034" and good["B"].version.major == 4
    with pytest.raises(RegistryImportError) as caught:
        parse_installed_firmware("serial,version\nA,four\nA,4.1.0\n")
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, "version"), (3, "serial")]


def test_W5_contract_without_its_number_is_refused(plans: PlanCatalogue) -> None:
    """A ticket needs the contract number, so a contract row without one rejects the file."""
    text = csv_of(row(plan="poly_plus", contract_start="2025-01-10", contract_end="2026-01-09"))
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(text, plans)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (2, "contract_number")


@pytest.mark.parametrize(
    ("cells", "column", "reason"),
    [
        ({"room": "Sala Wawel\r\nBcc: x@y"}, "room", "line break"),
        ({"room": "Sala\u202eWawel"}, "room", "U+202E"),
        ({**HEZO, "contract_number": "HZ-1\n2", "contract_start": "2025-01-10",
          "contract_end": "2027-01-09"}, "contract_number", "line break"),
    ],
)  # fmt: skip
def test_room_and_contract_number_with_a_line_break_are_refused(
    plans: PlanCatalogue, cells: dict[str, str], column: str, reason: str
) -> None:
    """Text that reaches tickets and e-mail must be printable: the file is refused, saying why."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([row("GOOD1"), row(**{"serial": "BAD1", **cells})])
    with pytest.raises(RegistryImportError) as caught:
        parse_registry(out.getvalue(), plans)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (3, column) and reason in problem.message


def test_P5_partner_chain_longer_than_five_years_is_flagged_not_refused(
    one_asset: Callable[..., Asset],
) -> None:
    """Partner POLY+ 3 + 3 years in a row is imported, the renewal flagged with its rule."""
    asset = one_asset(
        _partner("2025-01-10", "2028-01-09", "PP-1"),
        _partner("2028-01-10", "2031-01-09", "PP-2"),
    )
    first, renewal = asset.contracts
    assert first.flags == ()
    assert [(f.rule, f.code) for f in renewal.flags] == [("P5", "chain_length")]
    assert renewal.ineligible_rules == ("P5",) and asset.ineligible_rules == ("P5",)


def test_P5_partner_chain_up_to_five_years_is_not_flagged(
    one_asset: Callable[..., Asset],
) -> None:
    """1 + 3 + 1 years of Partner POLY+ in a row is the longest chain sold: no flag."""
    asset = one_asset(
        _partner("2025-01-10", "2026-01-09", "PP-1"),
        _partner("2026-01-10", "2029-01-09", "PP-2"),
        _partner("2029-01-10", "2030-01-09", "PP-3"),
    )
    assert [c.flags for c in asset.contracts] == [(), (), ()]


@pytest.mark.parametrize(
    ("plan", "first", "renewal", "flags"),
    [
        ("poly_plus", ("2025-01-10", "2026-01-09"), ("2026-01-10", "2027-01-09"),
         [("E5", "renewal")]),
        ("extended", ("2026-01-10", "2027-01-09"), ("2027-01-10", "2028-01-09"),
         [("E5", "renewal")]),
        ("hezo_plus", ("2025-01-10", "2027-01-09"), ("2027-01-10", "2029-01-09"),
         [("H5", "late_purchase"), ("H5", "renewal")]),
    ],
)  # fmt: skip
def test_renewal_of_a_plan_not_sold_as_renewals_is_flagged_not_refused(
    one_asset: Callable[..., Asset],
    plan: str,
    first: tuple[str, str],
    renewal: tuple[str, str],
    flags: list[tuple[str, str]],
) -> None:
    """A renewal of POLY+, an extension or HEZO+ is imported and flagged with the rule."""
    asset = one_asset(
        row(plan=plan, contract_number="C-1", contract_start=first[0], contract_end=first[1]),
        row(plan=plan, contract_number="C-2", contract_start=renewal[0], contract_end=renewal[1]),
    )
    old, new = asset.contracts
    assert old.flags == ()
    assert sorted((f.rule, f.code) for f in new.flags) == flags


def test_contract_flags_survive_the_store_and_older_documents_keep_their_rules() -> None:
    """Flags round-trip through the store; a document from before codes keeps its rules."""
    contract = Contract(
        plan="hezo_plus", number="HZ-1", start=date(2025, 1, 10), end=date(2027, 1, 9)
    ).flagged(ContractFlag("H1", "model"))
    assert Contract.from_doc(contract.to_doc()) == contract
    older = {k: v for k, v in contract.to_doc().items() if k != "flags"}
    assert Contract.from_doc(older).flags == (ContractFlag("H1", "rule"),)
