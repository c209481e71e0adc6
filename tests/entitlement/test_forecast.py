"""The forecast: what expires or closes when, per site, over N days; and the demo registry."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from polyfleet.controller.domain.assets import Asset, parse_registry
from polyfleet.controller.domain.entitlement import judge
from polyfleet.controller.domain.forecast import forecast
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue

from .conftest import csv_of, noon, row

REPO = Path(__file__).resolve().parents[2]
DEMO_ASSETS = REPO / "deploy" / "examples" / "assets-demo.csv"
DEMO_FLEET = REPO / "deploy" / "examples" / "fleet-demo.toml"


def events(assets: list[Asset], plans: PlanCatalogue, day: str, days: int) -> list[tuple[str, ...]]:
    result = forecast(assets, plans, noon(day), days)
    return [
        (site.site, e.serial, e.kind, e.last_day.isoformat(), str(e.days_left))
        for site in result.sites
        for e in site.events
    ]


def test_forecast_lists_ends_within_the_horizon_per_site(plans: PlanCatalogue) -> None:
    """Each site lists the contract, warranty and software windows that end within N days."""
    assets = parse_registry(
        csv_of(
            row(
                "A",
                site="krk",
                plan="partner_poly_plus",
                contract_number="PP-1",
                contract_start="2025-01-10",
                contract_end="2026-01-09",
            ),
            row("B", site="waw", purchase_date="2025-06-01"),
        ),
        plans,
    )
    assert events(assets, plans, "2025-12-20", 30) == [
        ("krk", "A", "contract_ends", "2026-01-09", "20"),
        ("krk", "A", "patches_end", "2026-01-09", "20"),
        ("krk", "A", "upgrades_end", "2026-01-09", "20"),
        ("krk", "A", "warranty_ends", "2026-01-09", "20"),
    ]
    # B's warranty (to 2026-05-31) comes into a 180-day horizon.
    wide = events(assets, plans, "2025-12-20", 180)
    assert ("waw", "B", "warranty_ends", "2026-05-31", "162") in wide


def test_forecast_skips_ends_covered_by_a_registered_renewal(plans: PlanCatalogue) -> None:
    """A term followed by a registered renewal does not expire; only the chain's end shows (E5)."""
    assets = parse_registry(
        csv_of(
            row(
                plan="partner_poly_plus",
                contract_number="PP-1",
                contract_start="2025-01-10",
                contract_end="2026-01-09",
            ),
            row(
                plan="partner_poly_plus",
                contract_number="PP-2",
                contract_start="2026-01-10",
                contract_end="2027-01-09",
            ),
        ),
        plans,
    )
    assert events(assets, plans, "2025-12-20", 90) == []
    ends = events(assets, plans, "2026-12-20", 30)
    assert ("waw", "SN1", "contract_ends", "2027-01-09", "20") in ends


def test_H5_forecast_shows_when_the_hezo_purchase_window_closes(plans: PlanCatalogue) -> None:
    """A new X50 without a contract can still get HEZO+ up to purchase + 30 days (H5, E6)."""
    assets = parse_registry(csv_of(row(purchase_date="2026-11-10")), plans)
    assert ("waw", "SN1", "purchase_window_closes", "2026-12-10", "15") in events(
        assets, plans, "2026-11-25", 30
    )
    g7500 = parse_registry(csv_of(row(model="g7500", purchase_date="2026-11-10")), plans)
    assert not [
        e for e in events(g7500, plans, "2026-11-25", 30) if e[2] == "purchase_window_closes"
    ]


def test_forecast_refuses_a_negative_horizon(plans: PlanCatalogue) -> None:
    """days must be 0 or more."""
    with pytest.raises(ValueError, match="days"):
        forecast([], plans, noon("2026-01-01"), -1)


def _demo() -> tuple[list[str], dict[str, str]]:
    fleet = tomllib.loads(DEMO_FLEET.read_text(encoding="utf-8"))
    serials: list[str] = []
    cameras: dict[str, str] = {}
    for site in fleet["sites"]:
        for room in site["rooms"]:
            for device in room["devices"]:
                serials.append(device["serial"])
                for peripheral in device.get("peripherals", []):
                    if peripheral["kind"] == "e70":
                        cameras[peripheral["serial"]] = device["serial"]
    return serials, cameras


@pytest.mark.skipif(not DEMO_FLEET.exists(), reason="the demo fleet file is not there")
def test_demo_registry_is_realistic_for_the_demo_fleet(
    plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """The demo registry imports cleanly and has every plan, expiries, ineligible and missing."""
    assets = parse_registry(DEMO_ASSETS.read_text(encoding="utf-8"), plans)
    by_serial = {a.serial: a for a in assets}
    bars, cameras = _demo()
    at = noon("2026-11-25")
    verdicts = {a.serial: judge(a, plans, releases, at) for a in assets}
    plans_used = {v.plan for v in verdicts.values()}
    assert set(plans.plans) <= plans_used and None in plans_used
    assert any("contract_expiring_30" in v.flags for v in verdicts.values())
    assert {r for v in verdicts.values() for r in v.ineligible_rules} == {"H1", "H5"}
    missing = [s for s in [*bars, *cameras] if s not in by_serial]
    assert missing, "some fleet devices must be missing from the registry"
    assert [s for s in by_serial if s not in bars and s not in cameras], "one never reported"
    for camera, host in cameras.items():
        if camera in by_serial:
            assert by_serial[camera].host_serial == host and by_serial[camera].model == "studio_e70"
    assert any(len(a.contracts) > 1 for a in assets), "a renewal chain"
