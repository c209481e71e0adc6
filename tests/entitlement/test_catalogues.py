"""The plan and release catalogues are validated data; bad files are refused naming the key."""

from __future__ import annotations

import copy
import shutil
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from polyfleet.controller.domain.plans import CatalogueError, parse_plans
from polyfleet.controller.domain.releases import make_release, parse_releases, render_releases
from polyfleet.controller.services.entitlement import (
    DEFAULT_PLANS_PATH,
    DEFAULT_RELEASES_PATH,
    add_release,
    catalogue_paths,
    load_releases,
)


def _plans_document() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_PLANS_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("plans", "hezo_plus", "window"), "9x5", "plans.hezo_plus.window"),
        (("plans", "poly_plus", "repair"), "4h", "plans.poly_plus.repair"),
        (("plans", "extended", "return_days"), "seven", "plans.extended.return_days"),
        (("plans", "hezo_plus", "eligible_models"), ["studio_x99"], "eligible_models"),
        (("plans", "partner_poly_plus", "term_years"), [1, 9], "term_years"),
        (("delivery", "8h", "amount"), 0, "delivery.8h.amount"),
    ],
)
def test_bad_plan_catalogue_names_the_key(path: tuple[str, ...], value: Any, message: str) -> None:
    """A wrong value in plans.toml is refused with the dotted key in the message."""
    document = copy.deepcopy(_plans_document())
    table = document
    for key in path[:-1]:
        table = table[key]
    table[path[-1]] = value
    with pytest.raises(CatalogueError, match=message.replace(".", r"\.")):
        parse_plans(document)


def test_W3_plan_may_use_the_8h_option() -> None:
    """The catalogue can give a plan 8-hour delivery without code changes (W3)."""
    document = copy.deepcopy(_plans_document())
    document["plans"]["poly_plus"]["repair"] = "8h"
    assert parse_plans(document).get("poly_plus").repair.amount == 8


def test_E7_undated_release_is_refused_by_the_catalogue() -> None:
    """A release without a publication date cannot enter releases.toml (E7)."""
    with pytest.raises(CatalogueError, match="date"):
        parse_releases({"release": [{"version": "4.2.5"}]})


def test_E7_needs_must_be_older_than_the_release() -> None:
    """A release cannot need a version newer than itself."""
    with pytest.raises(CatalogueError, match="needs"):
        make_release("4.2.0.1", date(2024, 1, 1), "4.3.0")


def test_releases_render_and_parse_round_trip() -> None:
    """Writing the catalogue and reading it back gives the same catalogue."""
    catalogue = load_releases()
    assert parse_releases(tomllib.loads(render_releases(catalogue))) == catalogue


def test_E7_add_release_is_atomic_and_validated(tmp_path: Path) -> None:
    """add_release writes the new catalogue whole; a refused one leaves the file as it was."""
    target = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, target)
    add_release("4.4.0.415000", date(2025, 3, 1), "4.2.2-408037", path=target)
    assert load_releases(target).releases[-1].text == "4.4.0.415000"
    before = target.read_bytes()
    with pytest.raises(CatalogueError, match="already catalogued"):
        add_release("4.4.0-415000", date(2025, 3, 2), path=target)
    assert target.read_bytes() == before


def test_catalogue_paths_from_the_config_section(tmp_path: Path) -> None:
    """[entitlement] plans/releases name other catalogue files; absent means the shipped ones."""
    assert catalogue_paths({}) == (None, None)
    assert catalogue_paths({"releases": str(tmp_path / "r.toml")}) == (None, tmp_path / "r.toml")
    with pytest.raises(CatalogueError, match="releases"):
        catalogue_paths({"releases": 5})


# The dated releases of the device document (shared/devices/poly-videoos.md), as published.
DEVICE_DOCUMENT_RELEASES = [
    ("2023-03-23", "4.0.0-376092", None),
    ("2023-05-03", "4.0.1.380048", "3.14.1.374010"),
    ("2023-06-16", "4.0.2.384012", "3.14.1.374010"),
    ("2023-08-28", "4.1.0.382263", "3.14.1.374010"),
    ("2023-10-05", "4.1.0_00.180034", "4.1.0.382263"),
    ("2023-12-14", "4.1.2-388101", "4.1.0_00.180034"),
    ("2024-02-13", "4.1.3.394009", "4.1.0_00.180034"),
    ("2024-05-02", "4.2.0-396113", "4.1.0_00.180034"),
    ("2024-06-21", "4.2.2-408037", "4.1.0_00.180034"),
]


def test_E7_shipped_releases_are_the_device_document_table() -> None:
    """releases.toml holds exactly the dated releases Poly published, with builds and needs."""
    catalogue = load_releases()
    assert [
        (r.released.isoformat(), r.text, r.needs_text) for r in catalogue.releases
    ] == DEVICE_DOCUMENT_RELEASES
    assert [r.build for r in catalogue.releases][-1] == 408037
    assert catalogue.models == {"studio_x30", "studio_x50", "studio_x70", "g7500"}
