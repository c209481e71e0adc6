"""Shared pieces for entitlement tests: the shipped catalogues and a registry CSV builder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import pytest

from polyfleet.controller.domain.assets import COLUMNS, Asset, parse_registry
from polyfleet.controller.domain.calendar import WARSAW
from polyfleet.controller.domain.plans import PlanCatalogue

Row = dict[str, str]
CsvOf = Callable[..., str]


def row(serial: str = "SN1", **cells: str) -> Row:
    """One registry row: an X50 bought 2025-01-10 at site waw, no contract, unless overridden."""
    base = {column: "" for column in COLUMNS}
    base.update(serial=serial, model="studio_x50", purchase_date="2025-01-10", site="waw")
    base.update(cells)
    return base


def csv_of(*rows: Row) -> str:
    """Registry CSV text with the header and ``rows``."""
    lines = [",".join(COLUMNS)]
    lines += [",".join(r[column] for column in COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def noon(day: str) -> datetime:
    """Noon in Warsaw on ``day`` (YYYY-MM-DD)."""
    return datetime.fromisoformat(f"{day}T12:00:00").replace(tzinfo=WARSAW)


@pytest.fixture
def one_asset(plans: PlanCatalogue) -> Callable[..., Asset]:
    """Parse rows of one serial into its Asset (the file must be valid)."""

    def build(*rows: Row) -> Asset:
        (asset,) = parse_registry(csv_of(*rows), plans)
        return asset

    return build


def _contract(plan: str, number: str, start: str, end: str) -> dict[str, str]:
    return {"plan": plan, "contract_number": number, "contract_start": start, "contract_end": end}


#: The day the rejection cases are checked on (a purchase after it is in the future).
TODAY = date(2026, 11, 25)
#: A registry to import first; every case of REJECTED would change it if it got through.
BASELINE = csv_of(
    row("KEEP1", room="Wawel", **_contract("hezo_plus", "HZ-1", "2025-01-10", "2027-01-09")),
    row("KEEP2", model="studio_x30", room="Praga"),
)
#: The changes each rejected file carries besides its bad rows (line 2 and 3).
_CHANGES = (row("KEEP1", room="moved"), row("NEWDEV", room="new"))


def _renewal_disagreeing(**device: str) -> str:
    """A file whose serial BAD has a contract and its renewal on rows that disagree on
    ``device`` (line 5)."""
    return csv_of(
        *_CHANGES,
        row("BAD", **_contract("poly_plus", "P-1", "2025-01-10", "2026-01-09")),
        row("BAD", **device, **_contract("poly_plus", "P-2", "2026-01-10", "2027-01-09")),
    )


#: The import rejection cases the issue lists: (file, the (line, column) of the problem).
REJECTED: dict[str, tuple[str, tuple[int, str]]] = {
    "unknown_plan": (csv_of(*_CHANGES, row("BAD", plan="gold")), (4, "plan")),
    "unknown_model": (csv_of(*_CHANGES, row("BAD", model="studio_x99")), (4, "model")),
    "bad_date": (csv_of(*_CHANGES, row("BAD", purchase_date="10/01/2025")), (4, "purchase_date")),
    "purchase_in_the_future": (
        csv_of(*_CHANGES, row("BAD", purchase_date="2030-01-10")),
        (4, "purchase_date"),
    ),
    "impossible_date": (
        csv_of(*_CHANGES, row("BAD", purchase_date="2025-02-30")),
        (4, "purchase_date"),
    ),
    "end_before_start": (
        csv_of(*_CHANGES, row("BAD", **_contract("poly_plus", "P-1", "2025-03-01", "2025-02-01"))),
        (4, "contract_end"),
    ),
    "contract_before_purchase": (
        csv_of(*_CHANGES, row("BAD", **_contract("poly_plus", "P-1", "2024-03-01", "2025-02-28"))),
        (4, "contract_start"),
    ),
    "serial_disagrees_on_model": (_renewal_disagreeing(model="studio_x70"), (5, "model")),
    "serial_disagrees_on_purchase_date": (
        _renewal_disagreeing(purchase_date="2025-01-11"),
        (5, "purchase_date"),
    ),
    "longer_than_the_plan_allows": (
        csv_of(*_CHANGES, row("BAD", **_contract("extended", "E-1", "2026-01-10", "2029-01-09"))),
        (4, "contract_end"),
    ),
    "P5_partner_term_not_1_or_3_years": (
        csv_of(
            *_CHANGES,
            row("BAD", **_contract("partner_poly_plus", "PP-1", "2025-01-10", "2027-01-09")),
        ),
        (4, "contract_end"),
    ),
    "E5_renewal_gap": (
        csv_of(
            *_CHANGES,
            row("BAD", **_contract("poly_plus", "P-1", "2025-01-10", "2026-01-09")),
            row("BAD", **_contract("poly_plus", "P-2", "2026-01-11", "2027-01-10")),
        ),
        (5, "contract_start"),
    ),
    "E5_renewal_overlap": (
        csv_of(
            *_CHANGES,
            row("BAD", **_contract("poly_plus", "P-1", "2025-01-10", "2026-01-09")),
            row("BAD", **_contract("poly_plus", "P-2", "2026-01-09", "2027-01-08")),
        ),
        (5, "contract_start"),
    ),
}
