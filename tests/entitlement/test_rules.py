"""One table of cases per rule id of the service terms that decides entitlement."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import pytest

from polyfleet.controller.domain.assets import Asset, InstalledFirmware
from polyfleet.controller.domain.entitlement import (
    EXPIRY_HORIZONS,
    FLAGS,
    entitled_to,
    install_window,
    judge,
    parse_moment,
    unknown_asset_verdict,
)
from polyfleet.controller.domain.plans import PlanCatalogue, parse_plans
from polyfleet.controller.domain.releases import ReleaseCatalogue, hop_kind
from polyfleet.controller.domain.sla import SlaTerms, delivery_due
from polyfleet.controller.services.entitlement import DEFAULT_PLANS_PATH
from polyfleet.shared.version import FirmwareVersion

from .conftest import noon, row

V = FirmwareVersion.parse


def fw(text: str) -> InstalledFirmware:
    return InstalledFirmware(text, V(text))


def contract(plan: str, start: str, end: str, number: str = "C-1") -> dict[str, str]:
    return {"plan": plan, "contract_number": number, "contract_start": start, "contract_end": end}


# Every plan bought with an X50 on 2025-01-10, for its longest allowed term.
TERMS = {
    "extended": ("2026-01-10", "2028-01-09"),  # follows the 1-year manufacturer warranty
    "hezo_plus": ("2025-01-10", "2027-01-09"),
    "partner_poly_plus": ("2025-01-10", "2028-01-09"),
    "poly_plus": ("2025-01-10", "2030-01-09"),
}


@pytest.fixture
def bought(one_asset: Callable[..., Asset]) -> Callable[[str | None], Asset]:
    def build(plan: str | None) -> Asset:
        if plan is None:
            return one_asset(row())
        return one_asset(row(**contract(plan, *TERMS[plan])))

    return build


def verdict_json(
    asset: Asset,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    day: str,
    installed: str | None = None,
) -> dict[str, Any]:
    return judge(
        asset, plans, releases, noon(day), installed=fw(installed) if installed else None
    ).to_json()


# -- the plan table (W1, W2, W3, W6, W8, H3, H4, H6, P2, P3, P4) ------------------------------

PLAN_TABLE = [
    # plan, window, repair, reaction, language, support, config help, return days, shipping
    ("standard", "8x5", "30d", None, None, False, False, 7, False),
    ("extended", "8x5", "7d", None, None, False, False, 7, False),
    ("hezo_plus", "8x5", "nbd", 1, "pl", True, True, 7, True),
    ("partner_poly_plus", "24x7", "nbd", 1, "pl", True, False, 5, True),
    ("poly_plus", "24x7", "nbd", None, "en", True, False, 7, False),
]


@pytest.mark.parametrize(
    ("plan_id", "window", "repair", "reaction", "language", "support", "config", "ret", "ship"),
    PLAN_TABLE,
)
def test_W1_W2_W3_W6_W8_plan_table_columns_are_data(
    plans: PlanCatalogue,
    plan_id: str,
    window: str,
    repair: str,
    reaction: int | None,
    language: str | None,
    support: bool,
    config: bool,
    ret: int,
    ship: bool,
) -> None:
    """Every column of the seed's plan table reads back from plans.toml as the seed says."""
    plan = plans.get(plan_id)
    assert (plan.window, plan.repair.key, plan.reaction_hours, plan.language) == (
        window,
        repair,
        reaction,
        language,
    )
    assert (plan.technical_support, plan.configuration_help) == (support, config)
    assert (plan.return_days, plan.shipping_paid) == (ret, ship)


@pytest.mark.parametrize(
    ("plan_id", "window", "repair", "reaction", "language"),
    [(p[0], p[1], p[2], p[3], p[4]) for p in PLAN_TABLE],
)
def test_W2_verdict_shows_the_plan_in_force_terms(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    plan_id: str,
    window: str,
    repair: str,
    reaction: int | None,
    language: str | None,
) -> None:
    """The verdict's window, reaction_hours, repair and language come from the plan in force."""
    asset = bought(None if plan_id == "standard" else plan_id)
    day = "2026-06-01" if plan_id == "extended" else "2025-06-01"
    v = verdict_json(asset, plans, releases, day)
    assert v["plan"] == plan_id
    assert (v["window"], v["repair"], v["reaction_hours"], v["language"]) == (
        window,
        repair,
        reaction,
        language,
    )


D1_MODELS = frozenset({"studio_x30", "studio_x50", "studio_x70", "studio_e70"})
TERM_TABLE = [
    # plan, patches, upgrades, max term, terms sold, term rule, models, purchase limit (days)
    ("standard", "purchase_90_days", False, 1, None, None, None, None),
    ("extended", "purchase_90_days", False, 2, None, None, None, None),
    ("hezo_plus", "whole_term", False, 2, (2,), "H5", D1_MODELS, 30),
    ("partner_poly_plus", "whole_term", True, 5, (1, 3), "P5", None, None),
    ("poly_plus", "whole_term", True, 5, None, None, None, None),
]


@pytest.mark.parametrize(
    ("plan_id", "patches", "upgrades", "longest", "terms", "rule", "models", "limit"), TERM_TABLE
)
def test_S1_S2_H1_H5_P5_plan_table_terms_and_software_are_data(
    plans: PlanCatalogue,
    plan_id: str,
    patches: str,
    upgrades: bool,
    longest: int,
    terms: tuple[int, ...] | None,
    rule: str | None,
    models: frozenset[str] | None,
    limit: int | None,
) -> None:
    """The software warranty, upgrades, term limits, models and purchase limit read as seeded."""
    plan = plans.get(plan_id)
    assert (plan.patches, plan.upgrades, plan.max_term_years) == (patches, upgrades, longest)
    assert (plan.term_years, plan.term_rule, plan.eligible_models) == (terms, rule, models)
    assert plan.purchase_to_contract_days == limit
    assert plan.contract is (plan_id != "standard")
    assert (plans.patch_days_from_purchase, plans.standard_warranty_years) == (90, 1)


def test_W3_delivery_options_include_8h_even_unused(plans: PlanCatalogue) -> None:
    """NBD, 8h, 7 days and about 30 days are catalogue options; 8h is 8 clock hours."""
    assert set(plans.deliveries) == {"nbd", "8h", "7d", "30d"}
    assert (plans.deliveries["8h"].kind, plans.deliveries["8h"].amount) == ("clock_hours", 8)
    assert plans.deliveries["nbd"].kind == "next_business_day"


def test_H3_hezo_replaces_next_business_day(plans: PlanCatalogue) -> None:
    """HEZO+ repair is NBD."""
    assert plans.get("hezo_plus").repair.kind == "next_business_day"


def test_H4_hezo_support_is_polish_8x5_with_configuration_help(plans: PlanCatalogue) -> None:
    """HEZO+ gives remote support in Polish, 8x5, including configuration help."""
    plan = plans.get("hezo_plus")
    assert (plan.language, plan.window, plan.technical_support, plan.configuration_help) == (
        "pl",
        "8x5",
        True,
        True,
    )


def test_H6_hezo_user_pays_no_shipping(plans: PlanCatalogue) -> None:
    """HEZO+ and Partner POLY+ pay the shipping; the standard warranty does not promise it."""
    assert plans.get("hezo_plus").shipping_paid and plans.get("partner_poly_plus").shipping_paid
    assert not plans.get("standard").shipping_paid


def test_P1_partner_covers_every_model(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Partner POLY+ on a G7500 is eligible: it has no model limit."""
    asset = one_asset(
        row(model="g7500", **contract("partner_poly_plus", *TERMS["partner_poly_plus"]))
    )
    assert verdict_json(asset, plans, releases, "2025-06-01")["eligible"] is True
    assert plans.get("partner_poly_plus").eligible_models is None


def test_P2_partner_is_24x7_in_polish(plans: PlanCatalogue) -> None:
    """Partner POLY+ support runs 24x7 in Polish."""
    plan = plans.get("partner_poly_plus")
    assert (plan.window, plan.language, plan.technical_support) == ("24x7", "pl", True)


def test_P3_partner_ships_the_replacement_next_business_day(plans: PlanCatalogue) -> None:
    """Partner POLY+ AHR ships by the next business day, shipping paid."""
    plan = plans.get("partner_poly_plus")
    assert plan.repair.key == "nbd" and plan.shipping_paid


def test_P4_partner_return_within_5_days(plans: PlanCatalogue) -> None:
    """After an AHR the faulty unit goes back within 5 days, not 7."""
    assert plans.get("partner_poly_plus").return_days == 5
    assert plans.get("poly_plus").return_days == 7


def test_W6_return_days_default_to_7(plans: PlanCatalogue) -> None:
    """Every plan but Partner POLY+ returns within 7 days."""
    assert {p.id: p.return_days for p in plans.plans.values() if p.id != "partner_poly_plus"} == {
        "standard": 7,
        "extended": 7,
        "hezo_plus": 7,
        "poly_plus": 7,
    }


def test_D1_hezo_eligible_models(plans: PlanCatalogue) -> None:
    """HEZO+ covers exactly the D1 models: X30, X50, X70 and E70."""
    assert plans.get("hezo_plus").eligible_models == {
        "studio_x30",
        "studio_x50",
        "studio_x70",
        "studio_e70",
    }


# -- warranty, patches, upgrades (H2, S1, S2, E3, E4) ----------------------------------------

WINDOWS = [
    # plan, day, warranty_until, patches_until, upgrades_until
    (None, "2025-06-01", "2026-01-09", "2025-04-09", None),
    ("extended", "2026-06-01", "2028-01-09", "2025-04-09", None),
    ("hezo_plus", "2025-06-01", "2027-01-09", "2027-01-09", None),
    ("partner_poly_plus", "2025-06-01", "2028-01-09", "2028-01-09", "2028-01-09"),
    ("poly_plus", "2025-06-01", "2030-01-09", "2030-01-09", "2030-01-09"),
]


@pytest.mark.parametrize(("plan_id", "day", "warranty", "patches", "upgrades"), WINDOWS)
def test_S1_S2_E3_E4_windows_per_plan(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    plan_id: str | None,
    day: str,
    warranty: str,
    patches: str,
    upgrades: str | None,
) -> None:
    """Warranty runs to the later end; patches 90 days or the whole term; upgrades POLY+ only."""
    v = verdict_json(bought(plan_id), plans, releases, day)
    assert (v["warranty_until"], v["patches_until"], v["upgrades_until"]) == (
        warranty,
        patches,
        upgrades,
    )


def test_H2_hezo_extends_the_warranty_to_two_years(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Under HEZO+ the hardware is covered for 2 years from the contract start."""
    v = verdict_json(bought("hezo_plus"), plans, releases, "2026-06-01")
    assert v["warranty_until"] == "2027-01-09" and "out_of_warranty" not in v["flags"]


def test_S1_patches_run_90_days_from_purchase(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Under the standard warranty patches end on purchase + 89 days (90 days, E1)."""
    assert (
        verdict_json(bought(None), plans, releases, "2025-01-10")["patches_until"] == "2025-04-09"
    )


def test_S2_upgrades_are_one_catalogue_field(
    one_asset: Callable[..., Asset], releases: ReleaseCatalogue
) -> None:
    """Setting hezo_plus.upgrades = true in the data grants HEZO+ upgrades, with no code change."""
    document = tomllib.loads(DEFAULT_PLANS_PATH.read_text(encoding="utf-8"))
    changed = copy.deepcopy(document)
    changed["plans"]["hezo_plus"]["upgrades"] = True
    asset = one_asset(row(**contract("hezo_plus", *TERMS["hezo_plus"])))
    before = verdict_json(asset, parse_plans(document), releases, "2025-06-01", "4.1.3.394009")
    after = verdict_json(asset, parse_plans(changed), releases, "2025-06-01", "4.1.3.394009")
    assert before["upgrades_until"] is None and before["firmware"]["entitled"] is False
    assert after["upgrades_until"] == "2027-01-09" and after["firmware"]["entitled"] is True


def test_E3_extension_after_the_standard_warranty_joins_it(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """During the standard year the warranty already runs to the registered extension's end."""
    v = verdict_json(bought("extended"), plans, releases, "2025-06-01")
    assert v["plan"] == "standard" and v["warranty_until"] == "2028-01-09"


def test_E3_gap_before_a_late_contract_is_out_of_warranty(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """An extension bought after the warranty lapsed leaves the gap uncovered."""
    asset = one_asset(row(**contract("extended", "2026-03-01", "2027-02-28")))
    gap = verdict_json(asset, plans, releases, "2026-02-01")
    assert gap["plan"] is None and gap["warranty_until"] == "2026-01-09"
    assert "out_of_warranty" in gap["flags"]
    later = verdict_json(asset, plans, releases, "2026-03-01")
    assert later["plan"] == "extended" and later["warranty_until"] == "2027-02-28"


# -- E1, E5: terms and the plan in force ------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "plan"),
    [
        ("2025-01-09T12:00:00+01:00", None),  # before purchase
        ("2025-01-10T00:00:00+01:00", "standard"),
        ("2026-01-09T23:59:59+01:00", "standard"),  # last covered day (E1)
        ("2026-01-09T23:30:00+00:00", None),  # 00:30 on 10 January in Warsaw (C2)
        ("2026-01-10T00:00:00+01:00", None),
    ],
)
def test_E1_C2_terms_end_on_their_last_warsaw_day(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    at: str,
    plan: str | None,
) -> None:
    """A 1-year warranty from 10 January covers up to 9 January, counted in Warsaw dates."""
    assert judge(bought(None), plans, releases, datetime.fromisoformat(at)).plan == plan


def test_C2_naive_moment_is_refused(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """A moment without an offset is refused rather than guessed."""
    with pytest.raises(ValueError, match="offset"):
        judge(bought(None), plans, releases, datetime(2025, 6, 1, 12))


def test_E5_P5_plan_in_force_follows_the_renewal_chain(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Each day's plan is the chained term covering it; renewals keep the contract from expiring."""
    asset = one_asset(
        row(**contract("hezo_plus", "2025-01-10", "2027-01-09", "HZ-1")),
        row(**contract("partner_poly_plus", "2027-01-10", "2028-01-09", "PP-1")),
    )
    first = verdict_json(asset, plans, releases, "2026-12-20")
    assert first["plan"] == "hezo_plus"
    assert "contract_expiring_30" not in first["flags"]  # the renewal is registered
    assert "contract_expiring_60" not in first["flags"]
    second = verdict_json(asset, plans, releases, "2027-06-01")
    assert second["plan"] == "partner_poly_plus"
    assert second["upgrades_until"] == "2028-01-09" and second["patches_until"] == "2028-01-09"
    after = verdict_json(asset, plans, releases, "2028-01-10")
    assert after["plan"] is None and "out_of_warranty" in after["flags"]


@pytest.mark.parametrize(
    ("day", "flag"),
    [
        ("2027-07-01", None),  # 192 days left
        ("2027-07-13", "contract_expiring_180"),  # 180 days left
        ("2027-10-11", "contract_expiring_90"),
        ("2027-11-10", "contract_expiring_60"),
        ("2027-12-10", "contract_expiring_30"),
        ("2028-01-09", "contract_expiring_30"),  # last day
    ],
)
def test_E5_contract_expiring_smallest_horizon(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    day: str,
    flag: str | None,
) -> None:
    """Only the smallest horizon holding the contract's end is flagged."""
    flags = verdict_json(bought("partner_poly_plus"), plans, releases, day)["flags"]
    expiring = [f for f in flags if f.startswith("contract_expiring")]
    assert expiring == ([flag] if flag else [])


def test_E5_standard_warranty_raises_no_contract_flag(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """The manufacturer warranty is not a contract: no contract_expiring flag near its end."""
    flags = verdict_json(bought(None), plans, releases, "2026-01-01")["flags"]
    assert not [f for f in flags if f.startswith("contract_expiring")]


# -- eligibility in the verdict (H1, H5, E6) --------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "rules"),
    [
        ({"model": "g7500", **contract("hezo_plus", "2025-01-10", "2027-01-09")}, ["H1"]),
        (contract("hezo_plus", "2025-02-10", "2027-02-09"), ["H5"]),  # day 31 (E6)
        (contract("hezo_plus", "2025-02-09", "2027-02-08"), []),  # day 30
        (contract("hezo_plus", "2025-01-10", "2026-01-09"), ["H5"]),  # not 2 years
    ],
)
def test_H1_H5_E6_ineligible_contract_is_flagged_in_the_verdict(
    one_asset: Callable[..., Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    cells: dict[str, str],
    rules: list[str],
) -> None:
    """An ineligible HEZO+ shows eligible false, its rule ids, and ineligible_contract."""
    v = verdict_json(one_asset(row(**cells)), plans, releases, "2025-06-01")
    assert v["plan"] == "hezo_plus"
    assert (v["eligible"], v["ineligible_rules"]) == (not rules, rules)
    assert ("ineligible_contract" in v["flags"]) is bool(rules)


def test_H5_expired_ineligible_contract_no_longer_flags(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Once an ineligible contract has ended it no longer marks the device."""
    asset = one_asset(row(**contract("hezo_plus", "2025-01-10", "2026-01-09")))
    assert verdict_json(asset, plans, releases, "2026-06-01")["eligible"] is True


# -- firmware (S3, S4, E7) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "target", "kind"),
    [
        ("4.1.0.382263", "4.1.3.394009", "patch"),
        ("4.1.0_00.180034", "4.1.2-388101", "patch"),
        ("4.1.3.394009", "4.2.0-396113", "upgrade"),
        ("3.14.1.374010", "4.0.0-376092", "upgrade"),
    ],
)
def test_S3_patch_keeps_major_minor(installed: str, target: str, kind: str) -> None:
    """Same major.minor is a patch; a higher major or minor is an upgrade."""
    assert hop_kind(V(installed), V(target)) == kind


@pytest.mark.parametrize(
    ("installed", "day", "path"),
    [
        ("3.14.1.374010", "2026-01-01", ["4.1.0.382263", "4.1.0_00.180034", "4.2.2-408037"]),
        ("4.1.0_00.180034", "2024-03-01", ["4.1.3.394009"]),  # 4.2.x not yet published
        ("4.0.0-376092", "2023-04-01", []),  # nothing newer published yet
        ("4.2.2-408037", "2026-01-01", []),
        # 4.0.0 names no minimum, so an old unit steps through it first
        (
            "3.12.0",
            "2026-01-01",
            ["4.0.0-376092", "4.1.0.382263", "4.1.0_00.180034", "4.2.2-408037"],
        ),
    ],
)
def test_E7_release_stepping(
    releases: ReleaseCatalogue, installed: str, day: str, path: list[str]
) -> None:
    """Each hop is the newest published release whose minimum the current version meets."""
    assert [r.text for r in releases.path(V(installed), date.fromisoformat(day))] == path


def test_E7_catalogue_holds_only_dated_releases(releases: ReleaseCatalogue) -> None:
    """The undated 4.2.5, 4.4.0, 4.5.x, 4.6.2 are not in the catalogue."""
    assert [r.text for r in releases.releases][-1] == "4.2.2-408037"
    assert all(r.released for r in releases.releases)
    assert releases.find(V("4.2.5")) is None


FIRMWARE = [
    # plan, installed, next, kind, entitled, entitled_next
    ("hezo_plus", "4.1.0_00.180034", "4.2.2-408037", "upgrade", False, "4.1.3.394009"),
    ("hezo_plus", "4.1.3.394009", "4.2.2-408037", "upgrade", False, None),
    ("partner_poly_plus", "4.1.0_00.180034", "4.2.2-408037", "upgrade", True, "4.2.2-408037"),
    ("poly_plus", "4.2.0-396113", "4.2.2-408037", "patch", True, "4.2.2-408037"),
    ("extended", "4.1.0_00.180034", "4.2.2-408037", "upgrade", False, None),
    ("poly_plus", "4.2.2-408037", None, None, None, None),
]


@pytest.mark.parametrize(("plan_id", "installed", "nxt", "kind", "entitled", "best"), FIRMWARE)
def test_S4_E7_firmware_verdict(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    plan_id: str,
    installed: str,
    nxt: str | None,
    kind: str | None,
    entitled: bool | None,
    best: str | None,
) -> None:
    """next hop, its kind, whether it is covered now, and the newest covered hop."""
    day = "2026-06-01"
    v = verdict_json(bought(plan_id), plans, releases, day, installed)
    assert v["firmware"] == {
        "installed": installed,
        "next": nxt,
        "kind": kind,
        "entitled": entitled,
        "entitled_next": best,
    }
    assert ("update_entitled" in v["flags"]) is (best is not None)
    assert ("update_not_entitled" in v["flags"]) is (nxt is not None and not entitled)


def test_S4_entitlement_is_judged_at_install_time(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue
) -> None:
    """A patch is covered when installed inside the patch window, not after it closes."""
    asset = bought(None)  # patches to 2025-04-09
    installed, target = V("4.1.0_00.180034"), V("4.1.3.394009")
    assert entitled_to(asset, plans, installed, target, noon("2025-04-09"))
    assert not entitled_to(asset, plans, installed, target, noon("2025-04-10"))


HOTFIX, PATCHED, NEWEST = "4.1.0_00.180034", "4.1.3.394009", "4.2.2-408037"
INSTALL_WINDOWS = [
    # plan, installed, target, asked on, planned install, entitled then, covered "start..end"
    # Standard warranty: a patch is covered to purchase + 89 days; a later wave is too late.
    (None, HOTFIX, PATCHED, "2025-03-01", "2025-04-20", False, "2025-01-10..2025-04-09"),
    (None, HOTFIX, PATCHED, "2025-03-01", "2025-04-09", True, "2025-01-10..2025-04-09"),
    # HEZO+: patches for the whole term, but no upgrade window at all (S2).
    ("hezo_plus", HOTFIX, PATCHED, "2026-06-01", "2027-01-09", True, "2025-01-10..2027-01-09"),
    ("hezo_plus", PATCHED, NEWEST, "2026-06-01", "2026-06-02", False, None),
    # An extension after the first year: the only patch window was the purchase one (S1).
    ("extended", HOTFIX, PATCHED, "2026-06-01", "2026-06-02", False, None),
    # POLY+: the upgrade window is the contract, to its last Warsaw day (E1).
    ("poly_plus", PATCHED, NEWEST, "2029-12-01", "2030-01-10", False, "2025-01-10..2030-01-09"),
]


@pytest.mark.parametrize(
    ("plan_id", "installed", "target", "asked", "planned", "entitled", "window"), INSTALL_WINDOWS
)
def test_S4_rollout_planner_sees_when_an_install_is_covered(
    bought: Callable[[str | None], Asset],
    plans: PlanCatalogue,
    plan_id: str | None,
    installed: str,
    target: str,
    asked: str,
    planned: str,
    entitled: bool,
    window: str | None,
) -> None:
    """entitled_to judges the planned install; install_window says by when it must happen."""
    asset = bought(plan_id)
    assert entitled_to(asset, plans, V(installed), V(target), noon(planned)) is entitled
    span = install_window(asset, plans, V(installed), V(target), noon(asked))
    assert (f"{span.start}..{span.end}" if span else None) == window
    if span is not None and not entitled:
        # S4: the window closes before the planned install: an earlier wave would be covered.
        assert noon(planned).date() > span.end and entitled_to(
            asset, plans, V(installed), V(target), noon(span.end.isoformat())
        )


def test_S4_install_window_opens_with_a_contract_yet_to_start(
    one_asset: Callable[..., Asset], plans: PlanCatalogue
) -> None:
    """Before a POLY+ term starts, the upgrade window shown is the coming one (wait for it)."""
    asset = one_asset(row(**contract("poly_plus", "2025-06-01", "2026-05-31")))
    span = install_window(asset, plans, V("4.1.3.394009"), V("4.2.2-408037"), noon("2025-03-01"))
    assert span is not None and (span.start, span.end) == (date(2025, 6, 1), date(2026, 5, 31))
    assert not entitled_to(asset, plans, V("4.1.3.394009"), V("4.2.2-408037"), noon("2025-05-31"))
    assert entitled_to(asset, plans, V("4.1.3.394009"), V("4.2.2-408037"), noon("2025-06-01"))


@pytest.mark.parametrize(
    ("plan_id", "accepted", "due"),
    [
        # 24 December is a public holiday from 2025; 25, 26 December and the weekend follow.
        ("hezo_plus", "2025-12-23T10:00:00+01:00", "2025-12-29T17:00:00+01:00"),
        ("hezo_plus", "2024-12-23T10:00:00+01:00", "2024-12-24T17:00:00+01:00"),
        ("partner_poly_plus", "2026-11-10T10:00:00+01:00", "2026-11-12T17:00:00+01:00"),
        ("extended", "2026-11-10T10:00:00+01:00", "2026-11-17T10:00:00+01:00"),
    ],
)
def test_C1_repair_time_of_the_plan_counts_polish_business_days(
    plans: PlanCatalogue, plan_id: str, accepted: str, due: str
) -> None:
    """The verdict's repair `nbd` means the next Polish business day (holidays package, C1)."""
    terms = SlaTerms.from_plan(plans.get(plan_id))
    assert delivery_due(terms, datetime.fromisoformat(accepted)).isoformat() == due


def test_E5_every_expiry_horizon_has_its_flag() -> None:
    """contract_expiring_30|60|90|180 are all verdict flags, smallest horizon first."""
    names = [f"contract_expiring_{days}" for days in EXPIRY_HORIZONS]
    assert names == [flag for flag in FLAGS if flag.startswith("contract_expiring_")]
    assert list(EXPIRY_HORIZONS) == sorted(EXPIRY_HORIZONS) == [30, 60, 90, 180]


def test_S1_patch_window_closing_flag(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Patches ending within 30 days raise patch_window_closing; further away they do not."""
    assert (
        "patch_window_closing" in verdict_json(bought(None), plans, releases, "2025-03-15")["flags"]
    )
    assert (
        "patch_window_closing"
        not in verdict_json(bought(None), plans, releases, "2025-02-15")["flags"]
    )
    assert (
        "patch_window_closing"
        not in verdict_json(bought(None), plans, releases, "2025-05-15")["flags"]
    )


def test_E70_firmware_is_not_judged_against_videoos_releases(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """An E70 camera has its own firmware: no VideoOS hop is proposed for it."""
    camera = one_asset(row("CAM1", model="studio_e70", host_serial="SN1"))
    v = verdict_json(camera, plans, releases, "2025-06-01", "1.2.3")
    assert v["firmware"]["installed"] == "1.2.3" and v["firmware"]["next"] is None


def test_unknown_asset_verdict_covers_nothing(releases: ReleaseCatalogue) -> None:
    """A device missing from the registry is flagged unknown_asset and entitled to nothing."""
    v = unknown_asset_verdict(
        "GHOST", releases, noon("2026-06-01"), installed=fw("4.1.3.394009"), model="studio_x30"
    ).to_json()
    assert v["plan"] is None and v["flags"] == ["update_not_entitled", "unknown_asset"]
    assert v["firmware"]["next"] == "4.2.2-408037" and v["firmware"]["entitled"] is False


def test_verdict_json_has_exactly_the_issue_keys(
    bought: Callable[[str | None], Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """The verdict JSON carries the keys the issue names, no more, no fewer."""
    v = verdict_json(bought("hezo_plus"), plans, releases, "2025-06-01", "4.1.0_00.180034")
    assert list(v) == [
        "serial",
        "plan",
        "warranty_until",
        "patches_until",
        "upgrades_until",
        "window",
        "reaction_hours",
        "repair",
        "language",
        "eligible",
        "ineligible_rules",
        "flags",
        "firmware",
    ]
    assert list(v["firmware"]) == ["installed", "next", "kind", "entitled", "entitled_next"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-29", "2026-03-29T00:00:00+01:00"),  # the day DST starts: midnight is still +01
        ("2026-03-29T12:00:00Z", "2026-03-29T14:00:00+02:00"),
        ("2026-10-25T01:30:00+00:00", "2026-10-25T02:30:00+01:00"),  # after the autumn change
    ],
)
def test_C2_moments_are_read_with_explicit_offsets(text: str, expected: str) -> None:
    """--at and ?at= take a date (Warsaw midnight) or an offset moment, shown in Warsaw time."""
    assert parse_moment(text).isoformat() == expected


@pytest.mark.parametrize("text", ["2026-03-29T12:00:00", "tomorrow", "2026-02-30"])
def test_C2_ambiguous_or_bad_moments_are_refused(text: str) -> None:
    """A moment without an offset, or not a moment at all, is refused naming the text."""
    with pytest.raises(ValueError, match=re.escape(text)):
        parse_moment(text)


def test_H5_whether_an_ineligible_contract_counts_is_one_catalogue_field(
    one_asset: Callable[..., Asset], releases: ReleaseCatalogue
) -> None:
    """By default a late HEZO+ counts and is flagged; with the field false it grants nothing."""
    document = tomllib.loads(DEFAULT_PLANS_PATH.read_text(encoding="utf-8"))
    strict = copy.deepcopy(document)
    strict["ineligible_contracts_grant"] = False
    asset = one_asset(row(**contract("hezo_plus", "2025-03-01", "2027-02-28")))
    counted = verdict_json(asset, parse_plans(document), releases, "2025-06-01")
    ignored = verdict_json(asset, parse_plans(strict), releases, "2025-06-01")
    assert (counted["plan"], counted["warranty_until"]) == ("hezo_plus", "2027-02-28")
    assert (ignored["plan"], ignored["warranty_until"]) == ("standard", "2026-01-09")
    assert counted["ineligible_rules"] == ignored["ineligible_rules"] == ["H5"]


# -- terms from 29 February (E1, E2, E3) -------------------------------------------------------


def test_hezo_from_29_february_still_covers_its_last_day(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """HEZO+ 2024-02-29 .. 2026-02-28 covers 28 February 2026, and not 1 March (E2)."""
    asset = one_asset(
        row(purchase_date="2024-02-29", **contract("hezo_plus", "2024-02-29", "2026-02-28"))
    )
    last = verdict_json(asset, plans, releases, "2026-02-28")
    assert last["plan"] == "hezo_plus" and last["warranty_until"] == "2026-02-28"
    assert "out_of_warranty" not in last["flags"] and last["eligible"] is True
    after = verdict_json(asset, plans, releases, "2026-03-01")
    assert after["plan"] is None and "out_of_warranty" in after["flags"]


def test_standard_warranty_bought_on_29_february_lasts_a_full_year(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """A device bought on 29 February 2024 is under warranty through 28 February 2025 (E3)."""
    asset = one_asset(row(purchase_date="2024-02-29"))
    last = verdict_json(asset, plans, releases, "2025-02-28")
    assert last["plan"] == "standard" and last["warranty_until"] == "2025-02-28"
    assert "out_of_warranty" not in last["flags"]
    assert "out_of_warranty" in verdict_json(asset, plans, releases, "2025-03-01")["flags"]


def test_partner_chain_from_29_february_runs_to_its_end(
    one_asset: Callable[..., Asset], plans: PlanCatalogue, releases: ReleaseCatalogue
) -> None:
    """Partner POLY+ 2024-02-29 .. 2025-02-28 renewed to 2028-02-29 is one covered run (P5, E5)."""
    asset = one_asset(
        row(purchase_date="2024-02-29", **contract("partner_poly_plus", "2024-02-29",
            "2025-02-28", "PP-1")),
        row(purchase_date="2024-02-29", **contract("partner_poly_plus", "2025-03-01",
            "2028-02-29", "PP-2")),
    )  # fmt: skip
    for day in ("2025-02-28", "2025-03-01", "2028-02-29"):
        verdict = verdict_json(asset, plans, releases, day)
        assert verdict["plan"] == "partner_poly_plus", day
        assert verdict["warranty_until"] == "2028-02-29", day
