"""The registry and verdicts in a running controller: import over HTTP, live verdicts, forecast."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.reports import report_as_new_agent, typed_snapshot

from polyfleet.controller.services.access import Role
from polyfleet.controller.services.entitlement import DEFAULT_RELEASES_PATH, add_release
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    Model,
    Provider,
    Report,
    ReportBatch,
    Snapshot,
)

from .conftest import BASELINE, REJECTED, csv_of, row

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

REGISTRY = csv_of(
    row(
        "X50HZ",
        site="krakow",
        plan="hezo_plus",
        contract_number="HZ-1",
        contract_start="2025-01-10",
        contract_end="2027-01-09",
    ),
    row(
        "X30PP",
        model="studio_x30",
        site="krakow",
        plan="partner_poly_plus",
        contract_number="PP-1",
        contract_start="2024-01-01",
        contract_end="2026-12-31",
        purchase_date="2024-01-01",
    ),
    row("NEVERSEEN", site="gdansk", purchase_date="2026-10-01"),
)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "data", clock=lambda: NOW) as running:
        yield running


async def _import(
    controller: RunningController, text: str, *, dry_run: bool = False, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {
        "Authorization": f"Bearer {token or controller.admin_token}",
        "Content-Type": "text/csv",
    }
    url = controller.url + "/api/v1/assets/import" + ("?dry_run=1" if dry_run else "")
    async with aiohttp.ClientSession() as http, http.post(url, data=text, headers=headers) as r:
        return r.status, await r.json()


async def _get(controller: RunningController, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.get(controller.url + path) as response,
    ):
        return response.status, await response.json()


def _snapshot(serial: str, model: Model, version: str, build: str) -> Snapshot:
    return typed_snapshot(serial, at=NOW, model=model, version=version, build=build)


async def test_import_over_the_api_then_dry_run_and_reimport(controller: RunningController) -> None:
    """A dry run changes nothing; the import stores every device; the same file again is a no-op."""
    status, body = await _import(controller, REGISTRY, dry_run=True)
    assert (status, body["dry_run"], sorted(body["added"])) == (
        200,
        True,
        ["NEVERSEEN", "X30PP", "X50HZ"],
    )
    assert (body["ineligible"], body["ineligible_rules"]) == ([], {})
    assert (await _get(controller, "/api/v1/assets"))[1]["assets"] == []
    status, body = await _import(controller, REGISTRY)
    assert status == 200 and len(body["added"]) == 3
    assets = (await _get(controller, "/api/v1/assets"))[1]["assets"]
    assert [a["serial"] for a in assets] == ["NEVERSEEN", "X30PP", "X50HZ"]
    status, body = await _import(controller, REGISTRY)
    assert sorted(body["unchanged"]) == ["NEVERSEEN", "X30PP", "X50HZ"] and body["added"] == []


async def test_bad_import_over_the_api_leaves_the_registry_untouched(
    controller: RunningController,
) -> None:
    """A file with one bad row is refused with 422, every problem listed, nothing changed."""
    assert (await _import(controller, REGISTRY))[0] == 200
    before = (await _get(controller, "/api/v1/assets"))[1]
    bad = csv_of(
        row("X50HZ", site="krakow", room="moved"),  # would change a device
        row("NEW1", model="studio_x99"),
        row("NEW2", purchase_date="2026-02-30"),
    )
    status, body = await _import(controller, bad)
    assert status == 422 and body["error"]["code"] == "invalid_registry"
    assert [(p["line"], p["column"]) for p in body["problems"]] == [
        (3, "model"),
        (4, "purchase_date"),
    ]
    assert (await _get(controller, "/api/v1/assets"))[1] == before


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_each_rejection_case_over_the_api_leaves_the_registry_untouched(
    controller: RunningController, case: str
) -> None:
    """Each bad file the issue lists gets 422 naming its cell; the registry stays as it was."""
    assert (await _import(controller, BASELINE))[0] == 200
    before = (await _get(controller, "/api/v1/assets"))[1]
    text, (line, column) = REJECTED[case]
    for dry_run in (True, False):
        status, body = await _import(controller, text, dry_run=dry_run)
        assert status == 422 and body["error"]["code"] == "invalid_registry"
        assert [(p["line"], p["column"]) for p in body["problems"]] == [(line, column)]
        assert f"line {line}, column {column}" in body["error"]["message"]
    assert (await _get(controller, "/api/v1/assets"))[1] == before
    _, verdicts = await _get(controller, "/api/v1/entitlement")
    assert {v["serial"] for v in verdicts["assets"]} == {"KEEP1", "KEEP2"}


async def test_viewer_cannot_import_and_anonymous_is_refused(controller: RunningController) -> None:
    """Importing needs an admin token: viewer gets 403, no token 401."""
    viewer, _ = await controller.core.access.create_token(Role.VIEWER, "viewer")
    assert (await _import(controller, REGISTRY, token=viewer))[0] == 403
    async with (
        aiohttp.ClientSession() as http,
        http.post(controller.url + "/api/v1/assets/import", data=REGISTRY) as response,
    ):
        assert response.status == 401


async def test_live_verdicts_use_reported_firmware_and_flag_unknown_and_unreported(
    controller: RunningController,
) -> None:
    """Reported devices get their firmware judged; unknown_asset and not_reported are flagged."""
    assert (await _import(controller, REGISTRY))[0] == 200
    await report_as_new_agent(
        controller,
        "krakow",
        _snapshot("X50HZ", Model.STUDIO_X50, "4.1.0_00", "180034"),
        _snapshot("X30PP", Model.STUDIO_X30, "4.1.3", "394009"),
        _snapshot("GHOST1", Model.STUDIO_X70, "4.2.0", "396113"),
    )
    status, hezo = await _get(controller, "/api/v1/devices/X50HZ/entitlement")
    assert status == 200 and hezo["plan"] == "hezo_plus"
    assert hezo["firmware"] == {
        "installed": "4.1.0_00.180034",
        "next": "4.2.2-408037",
        "kind": "upgrade",
        "entitled": False,
        "entitled_next": "4.1.3.394009",
    }
    assert hezo["flags"] == ["update_entitled", "update_not_entitled", "contract_expiring_60"]
    _, partner = await _get(controller, "/api/v1/devices/X30PP/entitlement")
    assert partner["firmware"]["entitled"] is True and "contract_expiring_60" in partner["flags"]
    _, ghost = await _get(controller, "/api/v1/devices/GHOST1/entitlement")
    assert ghost["plan"] is None and "unknown_asset" in ghost["flags"]
    _, unseen = await _get(controller, "/api/v1/devices/NEVERSEEN/entitlement")
    assert unseen["plan"] == "standard" and "not_reported" in unseen["flags"]
    assert unseen["firmware"]["installed"] is None
    status, _ = await _get(controller, "/api/v1/devices/NOSUCH/entitlement")
    assert status == 404
    _, everything = await _get(controller, "/api/v1/entitlement?site=krakow")
    assert [v["serial"] for v in everything["assets"]] == ["GHOST1", "X30PP", "X50HZ"]


async def test_D2_verdict_is_the_same_in_teams_zoom_or_poly_mode(
    controller: RunningController,
) -> None:
    """The plans cover a device in any provider mode: the mode does not change its verdict."""
    assert (await _import(controller, REGISTRY))[0] == 200
    verdicts = []
    for number, provider in enumerate((Provider.TEAMS, Provider.ZOOM, Provider.POLY)):
        snap = _snapshot("X50HZ", Model.STUDIO_X50, "4.1.0_00", "180034")
        snap = snap.model_copy(update={"provider": provider, "collected_at": NOW})
        agent = await controller.enroll("krakow", agent_name=f"agent-{number}")
        batch = ReportBatch(
            protocol_version=PROTOCOL_VERSION,
            reports=[Report(id=f"mode-{provider.value}", snapshot=snap)],
        )
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {agent.token}"}) as http,
            http.post(
                controller.url + "/api/v1/agent/reports", json=batch.model_dump(mode="json")
            ) as response,
        ):
            assert response.status == 200
        _, device = await _get(controller, "/api/v1/devices/X50HZ")
        assert device["provider"] == provider.value
        verdicts.append((await _get(controller, "/api/v1/devices/X50HZ/entitlement"))[1])
    assert verdicts[0]["plan"] == "hezo_plus" and verdicts[0]["firmware"]["installed"]
    assert verdicts[0] == verdicts[1] == verdicts[2]


async def test_forecast_per_site_over_n_days(controller: RunningController) -> None:
    """The forecast lists, per site, what ends within N days of the controller's now."""
    assert (await _import(controller, REGISTRY))[0] == 200
    status, body = await _get(controller, "/api/v1/entitlement/forecast?days=60")
    assert status == 200 and body["until"] == "2027-01-24"
    sites = {s["site"]: s["events"] for s in body["sites"]}
    assert [(e["serial"], e["kind"], e["date"]) for e in sites["krakow"]] == [
        ("X30PP", "contract_ends", "2026-12-31"),
        ("X30PP", "patches_end", "2026-12-31"),
        ("X30PP", "upgrades_end", "2026-12-31"),
        ("X30PP", "warranty_ends", "2026-12-31"),
        ("X50HZ", "contract_ends", "2027-01-09"),
        ("X50HZ", "patches_end", "2027-01-09"),
        ("X50HZ", "warranty_ends", "2027-01-09"),
    ]
    assert sites["gdansk"] == [
        {
            "date": "2026-12-29",
            "days_left": 34,
            "kind": "patches_end",
            "serial": "NEVERSEEN",
            "room": "",
            "model": "studio_x50",
            "plan": None,
            "contract_number": None,
        }
    ]
    status, _ = await _get(controller, "/api/v1/entitlement/forecast?days=-1")
    assert status == 400


async def test_openapi_lists_the_entitlement_routes(controller: RunningController) -> None:
    """The OpenAPI document names the import, verdict and forecast routes."""
    _, document = await _get(controller, "/api/v1/openapi.json")
    for path in (
        "/api/v1/assets/import",
        "/api/v1/devices/{serial}/entitlement",
        "/api/v1/entitlement/forecast",
    ):
        assert path in document["paths"]


async def test_E7_running_controller_sees_a_release_added_by_the_cli(tmp_path: Path) -> None:
    """A release added to the configured catalogue file is used by the next verdict."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    sections = {"entitlement": {"releases": str(catalogue)}}
    async with running_controller(tmp_path / "data", clock=lambda: NOW, sections=sections) as ctl:
        assert (await _import(ctl, REGISTRY))[0] == 200
        await report_as_new_agent(
            ctl, "krakow", _snapshot("X30PP", Model.STUDIO_X30, "4.2.2", "408037")
        )
        _, before = await _get(ctl, "/api/v1/devices/X30PP/entitlement")
        assert before["firmware"]["next"] is None
        await asyncio.to_thread(
            add_release, "4.4.0.415000", date(2025, 3, 1), "4.2.2-408037", path=catalogue
        )
        _, after = await _get(ctl, "/api/v1/devices/X30PP/entitlement")
        assert (after["firmware"]["next"], after["firmware"]["kind"]) == ("4.4.0.415000", "upgrade")
        assert after["firmware"]["entitled"] is True


async def test_E70_camera_reported_on_its_host_gets_its_own_verdict(
    controller: RunningController,
) -> None:
    """An E70 registered with its host is judged on its own contract, with no VideoOS hop."""
    registry = csv_of(
        row("G7HOST", model="g7500", site="krakow"),
        row(
            "E70CAM",
            model="studio_e70",
            site="krakow",
            host_serial="G7HOST",
            plan="hezo_plus",
            contract_number="HZ-9",
            contract_start="2025-01-10",
            contract_end="2027-01-09",
        ),
    )
    assert (await _import(controller, registry))[0] == 200
    camera = _snapshot("E70CAM", Model.STUDIO_E70, "1.3.0", "009011").model_copy(
        update={"host_serial": "G7HOST"}
    )
    await report_as_new_agent(
        controller, "krakow", _snapshot("G7HOST", Model.G7500, "4.1.3", "394009"), camera
    )
    _, verdict = await _get(controller, "/api/v1/devices/E70CAM/entitlement")
    assert (verdict["plan"], verdict["eligible"]) == ("hezo_plus", True)
    assert verdict["firmware"] == {
        "installed": "1.3.0.009011",
        "next": None,
        "kind": None,
        "entitled": None,
        "entitled_next": None,
    }
    _, host = await _get(controller, "/api/v1/devices/G7HOST/entitlement")
    assert host["firmware"]["next"] == "4.2.2-408037" and host["plan"] is None


async def _room_of(controller: RunningController, serial: str) -> Any:
    status, device = await _get(controller, f"/api/v1/devices/{serial}")
    assert status == 200
    return device["room"]


async def test_registry_room_fills_devices_reported_before_the_import(
    controller: RunningController,
) -> None:
    """A device already reported gets the room the imported registry names for it."""
    await report_as_new_agent(
        controller, "krakow", _snapshot("ROOMED", Model.STUDIO_X50, "4.1.0", "382263")
    )
    assert await _room_of(controller, "ROOMED") is None
    status, _ = await _import(controller, csv_of(row("ROOMED", site="krakow", room="krk-wawel")))
    assert status == 200
    assert await _room_of(controller, "ROOMED") == "krk-wawel"


async def test_registry_room_fills_devices_first_reported_after_the_import(
    controller: RunningController,
) -> None:
    """A device first reported after the import is placed in its registry room."""
    status, _ = await _import(controller, csv_of(row("LATER", site="krakow", room="krk-kazimierz")))
    assert status == 200
    await report_as_new_agent(
        controller, "krakow", _snapshot("LATER", Model.STUDIO_X50, "4.1.0", "382263")
    )
    deadline = asyncio.get_running_loop().time() + 5
    while await _room_of(controller, "LATER") != "krk-kazimierz":
        assert asyncio.get_running_loop().time() < deadline, "room never filled in"
        await asyncio.sleep(0.05)  # waits-for: the device-added event to be handled


async def test_room_set_by_an_admin_is_not_overwritten_by_the_registry(
    controller: RunningController,
) -> None:
    """An admin's own room for a device wins over the registry's."""
    await report_as_new_agent(
        controller, "krakow", _snapshot("MINE", Model.STUDIO_X50, "4.1.0", "382263")
    )
    async with (
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
        http.patch(controller.url + "/api/v1/devices/MINE", json={"room": "lab"}) as response,
    ):
        assert response.status == 200, await response.text()
    status, _ = await _import(controller, csv_of(row("MINE", site="krakow", room="krk-wawel")))
    assert status == 200
    assert await _room_of(controller, "MINE") == "lab"


#: A registry as Excel saves "CSV" in a Polish locale: `;`, DD.MM.YYYY, Windows-1250, CRLF.
POLISH_EXCEL = (
    "serial;model;purchase_date;plan;contract_number;contract_start;contract_end;site;room;"
    "host_serial\r\n"
    "PL1;Studio X50;10.01.2025;hezo_plus;HZ/2025/1;10.01.2025;09.01.2027;krakow;Sala Łódź;\r\n"
).encode("cp1250")


async def test_a_polish_excel_registry_over_the_api_was_refused(
    controller: RunningController,
) -> None:
    """A `;`, DD.MM.YYYY, Windows-1250 file imports over the API, with or without a charset."""
    url = controller.url + "/api/v1/assets/import"
    for content_type in ("text/csv", "text/csv; charset=windows-1250"):
        headers = {**controller.admin_headers, "Content-Type": content_type}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=POLISH_EXCEL, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
    _status, body = await _get(controller, "/api/v1/assets")
    (asset,) = [a for a in body["assets"] if a["serial"] == "PL1"]
    assert (asset["room"], asset["purchase_date"]) == ("Sala Łódź", "2025-01-10")
    assert asset["contracts"][0]["contract_end"] == "2027-01-09"


async def test_a_release_catalogue_broken_or_gone_while_running_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    """The configured release file half-edited, then moved away, while the controller runs:
    verdicts and the overview are still judged with the last good catalogue."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    sections = {"entitlement": {"releases": str(catalogue)}}
    async with running_controller(
        tmp_path / "data", clock=lambda: NOW, sections=sections
    ) as controller:
        assert (await _import(controller, REGISTRY))[0] == 200
        _, before = await _get(controller, "/api/v1/entitlement")
        catalogue.write_text("[[release]\nversion = ", encoding="utf-8")
        assert await _get(controller, "/api/v1/entitlement") == (200, before)
        catalogue.unlink()
        assert await _get(controller, "/api/v1/entitlement") == (200, before)
        assert (await _get(controller, "/api/v1/overview"))[0] == 200
