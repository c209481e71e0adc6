"""The demo's asset registry stays valid and current whatever day the demo runs."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from polyfleet.controller.domain.assets import parse_registry
from polyfleet.controller.services.entitlement import load_plans
from polyfleet.demo import DEMO_ASSETS, DEMO_ASSETS_AS_OF, shift_registry_dates


def test_demo_registry_imports_as_shipped() -> None:
    """The shipped registry is accepted on the day it was written for."""
    assets = parse_registry(DEMO_ASSETS.read_text("utf-8"), load_plans(), today=DEMO_ASSETS_AS_OF)
    assert len({a.serial for a in assets}) > 20


@pytest.mark.parametrize("days", [1, 97, 365, 400, 3 * 365 + 17])
def test_shifted_registry_keeps_every_row_and_stays_valid(days: int) -> None:
    """Moved by N days, the registry keeps every row, moves purchases by N days, stays valid."""
    text = DEMO_ASSETS.read_text("utf-8")
    shifted = shift_registry_dates(text, days)
    before, after = text.splitlines(), shifted.splitlines()
    assert len(before) == len(after)
    for old, new in zip(before[1:], after[1:], strict=True):
        old_cells, new_cells = old.split(","), new.split(",")
        if old_cells[2]:
            moved = date.fromisoformat(old_cells[2]) + timedelta(days=days)
            assert new_cells[2] == moved.isoformat()
        if old_cells[5]:
            start_moved = date.fromisoformat(new_cells[5]) - date.fromisoformat(old_cells[5])
            assert abs(start_moved.days - days) <= 2  # a leap day may sit between
        assert old_cells[:2] == new_cells[:2]
        assert old_cells[7:] == new_cells[7:]
    later = DEMO_ASSETS_AS_OF + timedelta(days=days)
    assert parse_registry(shifted, load_plans(), today=later)


def test_shifted_registry_keeps_renewals_back_to_back() -> None:
    """A renewal chain crossing a leap day still chains after the move (E5)."""
    text = "\n".join(
        [
            "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
            "site,room,host_serial",
            "S1,studio_x50,2023-03-01,partner_poly_plus,A,2023-03-01,2024-02-29,krakow,r,",
            "S1,studio_x50,2023-03-01,partner_poly_plus,B,2024-03-01,2027-02-28,krakow,r,",
        ]
    )
    shifted = shift_registry_dates(text, 365).splitlines()
    first, second = shifted[1].split(","), shifted[2].split(",")
    assert date.fromisoformat(second[5]) == date.fromisoformat(first[6]) + timedelta(days=1)
    assets = parse_registry("\n".join(shifted), load_plans())
    assert [a.serial for a in assets] == ["S1"]
