"""A mistyped data directory, site, serial or ticket is refused by name; nothing is created."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_testkit import run, run_all, running_controller

from polyfleet.controller.services.entitlement import DEFAULT_RELEASES_PATH


def test_a_mistyped_data_dir_answered_with_an_empty_table(tmp_path: Path) -> None:
    """Reading a directory without a store exits 1 naming it; nothing, not a dry run, makes one."""
    typo = tmp_path / "polyfleet-dta"
    commands = [
        ["controller", "devices", "--data-dir", str(typo)],
        ["controller", "devices", "--data-dir", str(typo), "--json"],
        ["controller", "devices", "--data-dir", str(typo), "export", "--csv"],
        ["controller", "site", "list", "--data-dir", str(typo)],
        ["controller", "devices", "--data-dir", str(typo), "move", "8L21", "--site", "krk"],
        ["controller", "agent", "invite", "--site", "krk", "--data-dir", str(typo)],
    ]
    registry = tmp_path / "registry.csv"
    registry.write_text(
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,"
        "room,host_serial\nS1,studio_x50,2025-01-10,,,,,krk,r,\n",
        encoding="utf-8",
    )
    (dry,) = run_all(
        [["controller", "assets", "import", str(registry), "--dry-run", "--json",
          "--data-dir", str(typo)]],
        cwd=tmp_path,
    )  # fmt: skip
    assert dry.status == 0 and dry.json()["added"] == ["S1"], dry
    runs = run_all(commands, cwd=tmp_path)
    for done in runs:
        assert done.status == 1, done
        assert str(typo) in done.err and "holds no controller store" in done.err, done
        assert done.out == "" or done.json()["error"]["code"] == "no_store", done
    assert "no device '8L21'" in runs[4].err
    assert "no site 'krk'" in runs[5].err
    assert not typo.exists()


@pytest.mark.expected_seconds(15)
def test_an_unknown_site_serial_or_ticket_answered_like_an_empty_one(tmp_path: Path) -> None:
    """Unknown sites, serials and tickets exit 1 with the name, offline and through the server."""
    data = tmp_path / "data"
    added = run(
        "controller", "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw",
        "--data-dir", str(data), cwd=tmp_path,
    )  # fmt: skip
    assert added.status == 0, added
    offline = run_all(
        [
            ["controller", "devices", "--site", "nowhere", "--data-dir", str(data)],
            ["controller", "devices", "--site", "nowhere", "--data-dir", str(data), "--json"],
            ["controller", "devices", "--data-dir", str(data), "export", "--csv",
             "--site", "nowhere"],
            ["controller", "devices", "--data-dir", str(data), "move", "NOPE1", "--site", "krk"],
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert run("controller", "devices", "--site", "krk", "--data-dir", str(data),
               cwd=tmp_path).status == 0  # fmt: skip
    with running_controller(data, cwd=tmp_path):
        served = run_all(
            [
                ["controller", "devices", "--site", "nowhere", "--data-dir", str(data)],
                ["controller", "tickets", "list", "--site", "nowhere", "--data-dir", str(data)],
                ["controller", "tickets", "show", "PF-NOPE000000", "--data-dir", str(data),
                 "--json"],
                ["controller", "tickets", "ack", "PF-NOPE000000", "--data-dir", str(data)],
            ],
            cwd=tmp_path,
        )  # fmt: skip
        listed = run("controller", "tickets", "list", "--site", "krk", "--data-dir", str(data),
                     cwd=tmp_path)  # fmt: skip
    for done in [*offline, *served]:
        assert done.status == 1, done
    for done in [offline[0], offline[1], offline[2], served[0], served[1]]:
        assert "no site 'nowhere'" in done.err, done
    assert offline[1].json()["error"] | {"message": ""} == {
        "code": "not_found", "message": "", "problems": [], "field": "site", "rule": None,
        "file": None,
    }  # fmt: skip
    assert "no device 'NOPE1'" in offline[3].err
    assert "PF-NOPE000000" in served[2].json()["error"]["message"]
    assert served[2].json()["error"]["code"] == "not_found"
    assert "PF-NOPE000000" in served[3].err
    assert listed.status == 0 and listed.out.startswith("TICKET"), listed


def test_releases_add_wrote_into_the_installed_package(tmp_path: Path) -> None:
    """Without a catalogue of the admin's own, releases add refuses and says where to write."""
    shipped = DEFAULT_RELEASES_PATH.read_bytes()
    bare_config = tmp_path / "controller.toml"
    bare_config.write_text('[server]\nlisten = "127.0.0.1:0"\n', encoding="utf-8")
    add = ["controller", "releases", "add", "--version", "4.9.9", "--date", "2030-01-01"]
    missing = tmp_path / "etc" / "releases.toml"
    plain, with_bare_config, to_missing, to_shipped = run_all(
        [
            add,
            [*add, "--config", str(bare_config)],
            [*add, "--file", str(missing)],
            [*add, "--file", str(DEFAULT_RELEASES_PATH), "--json"],
        ],
        cwd=tmp_path,
    )
    for done in (plain, with_bare_config, to_shipped):
        assert done.status == 2, done
        assert "never changes the catalogue installed with polyfleet" in done.err, done
        assert "[entitlement]" in done.err and "--config" in done.err, done
    assert to_shipped.json()["error"]["code"] == "usage"
    assert to_missing.status == 1 and f"{missing} does not exist" in to_missing.err
    assert DEFAULT_RELEASES_PATH.read_bytes() == shipped
    assert not missing.exists()
    # The way the message shows works: a copy named in the config takes the release.
    own = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, own)
    bare_config.write_text(f'[entitlement]\nreleases = "{own}"\n', encoding="utf-8")
    done = run(*add, "--config", str(bare_config), cwd=tmp_path)
    assert done.status == 0, done
    assert "4.9.9" in own.read_text("utf-8")
    assert DEFAULT_RELEASES_PATH.read_bytes() == shipped
