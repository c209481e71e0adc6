"""Shared pieces for entitlement tests: the shipped catalogues and a registry CSV builder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from controller.domain.assets import COLUMNS, Asset, parse_registry
from controller.domain.calendar import WARSAW
from controller.domain.plans import PlanCatalogue
from controller.domain.releases import ReleaseCatalogue
from controller.services.entitlement import load_plans, load_releases

Row = dict[str, str]
CsvOf = Callable[..., str]


@pytest.fixture(scope="session")
def plans() -> PlanCatalogue:
    """The shipped plan catalogue."""
    return load_plans()


@pytest.fixture(scope="session")
def releases() -> ReleaseCatalogue:
    """The shipped release catalogue."""
    return load_releases()


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
