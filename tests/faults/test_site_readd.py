"""Re-adding a site answers 409 and leaves it as it was; PATCH and site rename rename it."""

from __future__ import annotations

from pathlib import Path

from access_testkit import admin_at_controller, controller_process
from testkit.clients import call_with_token


async def test_adding_an_existing_site_is_refused_and_patch_renames_it(tmp_path: Path) -> None:
    """POST /api/v1/sites with a taken id answers 409 naming the site; nothing changes."""
    async with admin_at_controller(tmp_path / "data") as (_controller, http, api, ops):
        krk = {"id": "krk", "name": "Kraków", "timezone": "Europe/Warsaw"}
        assert (await call_with_token(http, "POST", f"{api}/sites", ops, krk))[0] == 201
        again = {"id": "krk", "name": "Krakow HQ", "timezone": "Europe/London"}
        status, answer = await call_with_token(http, "POST", f"{api}/sites", ops, again)
        assert status == 409, answer
        assert answer["error"]["code"] == "site_exists" and answer["error"]["field"] == "id"
        assert "'Kraków'" in answer["error"]["message"] and "PATCH" in answer["error"]["message"]
        _, sites = await call_with_token(http, "GET", f"{api}/sites", ops)
        assert [(s["id"], s["name"], s["timezone"]) for s in sites["sites"]] == [
            ("krk", "Kraków", "Europe/Warsaw")
        ]

        status, renamed = await call_with_token(
            http, "PATCH", f"{api}/sites/krk", ops, {"name": "Kraków Old Town"}
        )
        assert status == 200, renamed
        assert (renamed["id"], renamed["name"], renamed["timezone"]) == (
            "krk",
            "Kraków Old Town",
            "Europe/Warsaw",
        )
        status, moved = await call_with_token(
            http, "PATCH", f"{api}/sites/krk", ops, {"timezone": "Europe/Berlin"}
        )
        assert status == 200 and moved["name"] == "Kraków Old Town"
        assert moved["timezone"] == "Europe/Berlin"
        for body, expected in (
            ({}, 400),
            ({"name": "two\nlines"}, 422),
            ({"name": ""}, 422),
            ({"timezone": "Mars/Olympus"}, 400),
            ({"name": "x", "colour": "red"}, 422),
        ):
            status, answer = await call_with_token(http, "PATCH", f"{api}/sites/krk", ops, body)
            assert status == expected, (body, answer)
        assert (await call_with_token(http, "PATCH", f"{api}/sites/nowhere", ops, {"name": "x"}))[
            0
        ] == 404
        status, answer = await call_with_token(
            http, "POST", f"{api}/sites", ops, {"id": "gdn", "name": "Gdańsk\r\nBcc: x"}
        )
        assert status == 400 and answer["error"]["field"] == "name"

        _, log = await call_with_token(http, "GET", f"{api}/audit", ops)
        updates = [e for e in log["entries"] if e["action"] == "site.update"]
        assert [e["details"] for e in updates] == [
            {"timezone": ["Europe/Warsaw", "Europe/Berlin"]},
            {"name": ["Kraków", "Kraków Old Town"]},
        ]


async def test_cli_site_add_refuses_a_taken_id_and_site_rename_renames(tmp_path: Path) -> None:
    """site add of a taken id exits 1 (site_exists) and keeps the name; site rename changes it."""
    async with controller_process(tmp_path / "data") as controller:
        add = ("site", "add", "waw", "--timezone", "Europe/Warsaw", "--json")
        first = await controller.cli(*add, "--name", "Warszawa")
        assert first.status == 0, first.err
        second = await controller.cli(*add, "--name", "Warsaw")
        assert second.status == 1
        assert second.json()["error"]["code"] == "site_exists"
        assert "site rename waw" in second.err
        renamed = await controller.cli("site", "rename", "waw", "--name", "Warszawa Mokotów")
        assert renamed.status == 0, renamed.err
        listed = await controller.cli("site", "list", "--json")
        assert [(s["id"], s["name"]) for s in listed.json()["sites"]] == [
            ("waw", "Warszawa Mokotów")
        ]
