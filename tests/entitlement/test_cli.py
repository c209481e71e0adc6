"""`polyfleet controller assets|entitlement|releases`, each also run as a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from testkit import processes

from polyfleet.cli import main
from polyfleet.controller.app import read_runtime, serve
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.services.entitlement import (
    DEFAULT_PLANS_PATH,
    DEFAULT_RELEASES_PATH,
    registry,
)
from polyfleet.controller.store.tinydb import TinyDBStore

from .conftest import BASELINE, REJECTED, csv_of, row

REGISTRY = csv_of(
    row(
        "X50HZ",
        plan="hezo_plus",
        contract_number="HZ-1",
        contract_start="2025-01-10",
        contract_end="2027-01-09",
    ),
    row(
        "G7HZ",
        model="g7500",
        plan="hezo_plus",
        contract_number="HZ-2",
        contract_start="2025-03-01",
        contract_end="2027-02-28",
    ),
    row("CAM1", model="studio_e70", host_serial="X50HZ"),
)
FIRMWARE = "serial,version\nX50HZ,4.1.0_00.180034\nG7HZ,4.2.2-408037\n"


def polyfleet(*args: str, cwd: Path, process: bool = False) -> processes.Finished:
    """``polyfleet controller ARGS`` in ``cwd``: run by this process's entry point, or as a
    process of its own (``process``) where the test checks what the command prints."""
    if process:
        return asyncio.run(processes.polyfleet("controller", *args, cwd=cwd, expect=None))
    with contextlib.chdir(cwd):
        return processes.run_main("controller", *args, expect=None)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_check_prints_the_verdict_json(tmp_path: Path) -> None:
    """`entitlement check --json` judges every asset of the file at --at, with its firmware."""
    assets = write(tmp_path / "assets.csv", REGISTRY)
    firmware = write(tmp_path / "fw.csv", FIRMWARE)
    done = polyfleet(
        "entitlement", "check", "--assets", str(assets), "--firmware", str(firmware),
        "--at", "2026-12-01T10:00:00+01:00", "--json", cwd=tmp_path, process=True,
    )  # fmt: skip
    assert done.status == 0, done.err
    document: dict[str, Any] = json.loads(done.out)
    assert document["at"] == "2026-12-01T10:00:00+01:00"
    verdicts = {v["serial"]: v for v in document["assets"]}
    assert list(verdicts) == ["CAM1", "G7HZ", "X50HZ"]
    assert verdicts["X50HZ"] == {
        "serial": "X50HZ",
        "plan": "hezo_plus",
        "warranty_until": "2027-01-09",
        "patches_until": "2027-01-09",
        "upgrades_until": None,
        "window": "8x5",
        "reaction_hours": 1,
        "repair": "nbd",
        "language": "pl",
        "eligible": True,
        "ineligible_rules": [],
        "flags": ["update_entitled", "update_not_entitled", "contract_expiring_60"],
        "firmware": {
            "installed": "4.1.0_00.180034",
            "next": "4.2.2-408037",
            "kind": "upgrade",
            "entitled": False,
            "entitled_next": "4.1.3.394009",
        },
    }
    assert verdicts["G7HZ"]["ineligible_rules"] == ["H1", "H5"]
    assert "ineligible_contract" in verdicts["G7HZ"]["flags"]
    assert verdicts["CAM1"]["plan"] is None and "out_of_warranty" in verdicts["CAM1"]["flags"]


def test_check_with_a_bad_file_exits_non_zero_listing_every_line(tmp_path: Path) -> None:
    """A bad row makes `entitlement check` fail, naming every problem by line."""
    bad = write(
        tmp_path / "assets.csv",
        csv_of(row("A", model="x99"), row("B"), row("C", purchase_date="2025-02-30")),
    )
    done = polyfleet("entitlement", "check", "--assets", str(bad), "--json", cwd=tmp_path)
    assert done.status == 1
    problems = json.loads(done.out)["problems"]
    assert [(p["line"], p["column"]) for p in problems] == [(2, "model"), (4, "purchase_date")]
    assert "line 2, column model" in done.err and "line 4, column purchase_date" in done.err


def test_check_refuses_an_at_without_offset(tmp_path: Path) -> None:
    """--at without an offset is refused (C2) rather than guessed."""
    assets = write(tmp_path / "assets.csv", REGISTRY)
    done = polyfleet(
        "entitlement", "check", "--assets", str(assets), "--at", "2026-12-01T10:00", cwd=tmp_path
    )
    assert done.status == 1 and "offset" in done.err


def test_forecast_command_lists_per_site(tmp_path: Path) -> None:
    """`entitlement forecast --days N --json` lists what ends per site."""
    assets = write(tmp_path / "assets.csv", REGISTRY)
    done = polyfleet(
        "entitlement", "forecast", "--assets", str(assets), "--days", "60", "--at", "2026-12-01",
        "--json", cwd=tmp_path, process=True,
    )  # fmt: skip
    assert done.status == 0, done.err
    (site,) = json.loads(done.out)["sites"]
    assert site["site"] == "waw"
    assert ("X50HZ", "contract_ends", "2027-01-09") in [
        (e["serial"], e["kind"], e["date"]) for e in site["events"]
    ]


def test_E7_releases_add_and_list(tmp_path: Path) -> None:
    """`releases add` puts a dated release into the catalogue file; `list` shows it in order."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    done = polyfleet(
        "releases", "add", "--version", "4.2.5.412001", "--date", "2024-10-01",
        "--needs", "4.1.0_00.180034", "--file", str(catalogue), "--json",
        cwd=tmp_path, process=True,
    )  # fmt: skip
    assert done.status == 0, done.err
    assert json.loads(done.out)["added"]["version"] == "4.2.5.412001"
    listed = polyfleet(
        "releases", "list", "--file", str(catalogue), "--json", cwd=tmp_path, process=True
    )
    versions = [r["version"] for r in json.loads(listed.out)["releases"]]
    assert versions[-2:] == ["4.2.2-408037", "4.2.5.412001"]
    firmware = write(tmp_path / "fw.csv", "serial,version\nX50HZ,4.2.2-408037\n")
    assets = write(tmp_path / "assets.csv", REGISTRY)
    check = polyfleet(
        "entitlement", "check", "--assets", str(assets), "--firmware", str(firmware),
        "--releases", str(catalogue), "--at", "2026-01-01", "--json", cwd=tmp_path,
    )  # fmt: skip
    hezo = next(v for v in json.loads(check.out)["assets"] if v["serial"] == "X50HZ")
    assert (hezo["firmware"]["next"], hezo["firmware"]["kind"]) == ("4.2.5.412001", "patch")


def test_releases_list_takes_data_dir_and_config_like_the_other_commands(tmp_path: Path) -> None:
    """`releases list --data-dir DIR --config FILE` lists the catalogue the config names; the
    data directory is only accepted, never made."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    added = polyfleet(
        "releases", "add", "--version", "4.2.5.412001", "--date", "2024-10-01",
        "--file", str(catalogue), cwd=tmp_path,
    )  # fmt: skip
    assert added.status == 0, added.err
    config = write(tmp_path / "controller.toml", f'[entitlement]\nreleases = "{catalogue}"\n')
    data = tmp_path / "polyfleet-data"
    listed = polyfleet(
        "releases", "list", "--data-dir", str(data), "--config", str(config), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert listed.status == 0, listed.err
    assert json.loads(listed.out)["releases"][-1]["version"] == "4.2.5.412001"
    shipped = polyfleet("releases", "list", "--data-dir", str(data), cwd=tmp_path)
    assert shipped.status == 0, shipped.err
    assert shipped.out.split()[:2] == ["DATE", "VERSION"]
    assert "4.2.5.412001" not in shipped.out
    assert not data.exists()


def test_releases_add_refuses_bad_input_and_leaves_the_file_alone(tmp_path: Path) -> None:
    """A duplicate, a bad date or a needs newer than the release changes nothing."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    before = catalogue.read_bytes()
    for args in (
        ["--version", "4.2.2.408037", "--date", "2024-06-21"],
        ["--version", "4.4.0", "--date", "2025-02-30"],
        ["--version", "4.4.0", "--date", "2025-02-01", "--needs", "4.5.0"],
        ["--version", "four", "--date", "2025-02-01"],
    ):
        done = polyfleet("releases", "add", *args, "--file", str(catalogue), cwd=tmp_path)
        assert done.status == 1, args
        assert "error:" in done.err
    assert catalogue.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _stored(data_dir: Path) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        store = TinyDBStore(data_dir / "store")
        await store.open()
        try:
            return {serial: asset.to_doc() for serial, asset in registry(store).items()}
        finally:
            await store.close()

    return asyncio.run(read())


def test_assets_import_offline_and_rejection_leaves_registry_untouched(tmp_path: Path) -> None:
    """Without a server the import writes the store under its lock; a bad file changes nothing."""
    data = tmp_path / "data"
    good = write(tmp_path / "good.csv", REGISTRY)
    dry = polyfleet(
        "assets", "import", str(good), "--dry-run", "--data-dir", str(data), "--json", cwd=tmp_path
    )
    assert dry.status == 0, dry.err
    assert json.loads(dry.out)["dry_run"] is True and _stored(data) == {}
    done = polyfleet("assets", "import", str(good), "--data-dir", str(data), "--json", cwd=tmp_path)
    assert done.status == 0, done.err
    result = json.loads(done.out)
    assert sorted(result["added"]) == ["CAM1", "G7HZ", "X50HZ"] and result["ineligible"] == ["G7HZ"]
    assert result["ineligible_rules"] == {"G7HZ": ["H1", "H5"]}
    before = _stored(data)
    bad = write(
        tmp_path / "bad.csv",
        csv_of(row("X50HZ", room="elsewhere"), row("NEW", purchase_date="2025-13-01")),
    )
    refused = polyfleet("assets", "import", str(bad), "--data-dir", str(data), cwd=tmp_path)
    assert refused.status == 1 and "line 3, column purchase_date" in refused.err
    assert _stored(data) == before


async def test_assets_import_goes_through_a_running_server(tmp_path: Path) -> None:
    """With the server running, the CLI imports through its control socket, not the locked store."""
    data = tmp_path / "data"
    config = ControllerConfig(data_dir=data, listen_host="127.0.0.1", listen_port=0)
    stop = asyncio.Event()
    ready = asyncio.Event()
    server = asyncio.create_task(serve(config, on_ready=lambda url: ready.set(), stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        assert read_runtime(data) is not None
        good = write(tmp_path / "good.csv", REGISTRY)
        imported = await processes.polyfleet(
            "controller", "assets", "import", str(good), "--data-dir", str(data), "--json",
            cwd=tmp_path,
        )  # fmt: skip
        assert sorted(imported.json()["added"]) == ["CAM1", "G7HZ", "X50HZ"]
        bad = write(tmp_path / "bad.csv", csv_of(row("Q", model="nope")))
        refused = await processes.polyfleet(
            "controller", "assets", "import", str(bad), "--data-dir", str(data),
            cwd=tmp_path, expect=1,
        )  # fmt: skip
        assert "line 2, column model" in refused.err
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=30)
    assert sorted(_stored_async_safe(data)) == ["CAM1", "G7HZ", "X50HZ"]


def _stored_async_safe(data_dir: Path) -> dict[str, Any]:
    """Read the store from a worker thread (this test's loop is running)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_stored, data_dir).result(timeout=60)


def test_releases_add_writes_the_catalogue_named_by_the_config(tmp_path: Path) -> None:
    """With --config, `releases add` changes the file [entitlement] releases names."""
    catalogue = tmp_path / "releases.toml"
    shutil.copy(DEFAULT_RELEASES_PATH, catalogue)
    config = write(tmp_path / "controller.toml", f'[entitlement]\nreleases = "{catalogue}"\n')
    done = polyfleet(
        "releases", "add", "--version", "4.4.0.415000", "--date", "2025-03-01",
        "--config", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert done.status == 0, done.err
    assert '"4.4.0.415000"' in catalogue.read_text(encoding="utf-8")


def _import_in_process(path: Path, data: Path) -> int:
    """`polyfleet controller assets import` run by the real entry point in this process."""
    return main(["controller", "assets", "import", str(path), "--data-dir", str(data), "--json"])


def _check_refusals(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], run: Any
) -> list[str]:
    """Run every rejection case; returns the cases whose output or exit code was wrong."""
    wrong: list[str] = []
    for case, (text, (line, column)) in sorted(REJECTED.items()):
        path = write(tmp_path / f"{case}.csv", text)
        code = run(path)
        out, err = capsys.readouterr()
        problems = json.loads(out).get("problems", [])
        if (
            code != 1
            or [(p["line"], p["column"]) for p in problems] != [(line, column)]
            or f"line {line}, column {column}" not in err
        ):
            wrong.append(f"{case}: exit {code}, {out!r} {err!r}")
    return wrong


def test_each_rejection_case_leaves_the_store_untouched_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a server every bad file the issue lists exits 1 naming its cell; nothing changes."""
    data = tmp_path / "data"
    assert _import_in_process(write(tmp_path / "base.csv", BASELINE), data) == 0
    capsys.readouterr()
    before = _stored(data)
    assert _check_refusals(tmp_path, data, capsys, lambda p: _import_in_process(p, data)) == []
    assert _stored(data) == before and sorted(before) == ["KEEP1", "KEEP2"]


async def test_each_rejection_case_leaves_the_registry_untouched_while_the_server_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the server holding the store, every bad file is refused through it; nothing changes."""
    data = tmp_path / "data"
    config = ControllerConfig(data_dir=data, listen_host="127.0.0.1", listen_port=0)
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, on_ready=lambda url: ready.set(), stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        base = write(tmp_path / "base.csv", BASELINE)
        assert await asyncio.to_thread(_import_in_process, base, data) == 0
        capsys.readouterr()
        assert read_runtime(data) is not None

        def run(path: Path) -> int:
            return _import_in_process(path, data)

        wrong = await asyncio.to_thread(_check_refusals, tmp_path, data, capsys, run)
        assert wrong == []
        # A file the CLI's own catalogue accepts but the server's refuses: the server's answer
        # (422 with every problem) is what the admin sees, and nothing changes either.
        plans = tmp_path / "plans.toml"
        plans.write_text(
            DEFAULT_PLANS_PATH.read_text(encoding="utf-8")
            + '\n[plans.gold]\nname = "gold"\ncontract = true\nwindow = "24x7"\n'
            'repair = "nbd"\npatches = "whole_term"\nupgrades = true\n'
            "technical_support = true\nconfiguration_help = true\nmax_term_years = 5\n"
            "return_days = 7\n",
            encoding="utf-8",
        )
        gold = write(
            tmp_path / "gold.csv",
            csv_of(
                row("KEEP1", room="moved"),
                row(
                    "NEW",
                    plan="gold",
                    contract_number="G-1",
                    contract_start="2025-01-10",
                    contract_end="2026-01-09",
                ),
            ),
        )
        argv = ["controller", "assets", "import", str(gold), "--data-dir", str(data)]
        code = await asyncio.to_thread(main, [*argv, "--plans", str(plans)])
        err = capsys.readouterr().err
        assert code == 1 and "server refused the import" in err
        assert "line 3, column plan: unknown plan 'gold'" in err
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=30)
    stored = _stored_async_safe(data)
    assert sorted(stored) == ["KEEP1", "KEEP2"] and stored["KEEP1"]["room"] == "Wawel"


def test_H1_H5_import_names_the_rules_an_ineligible_contract_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ineligible HEZO+ is imported; the summary says in words what it breaks, not rule ids."""
    data = tmp_path / "data"
    path = write(tmp_path / "assets.csv", REGISTRY)
    code = main(["controller", "assets", "import", str(path), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert code == 0 and "imported 3 device(s): 3 new" in out
    assert "flagged ineligible (imported): G7HZ" in out
    assert "G7HZ: hezo_plus covers only studio_e70, studio_x30, studio_x50, studio_x70" in out
    assert "G7HZ: hezo_plus is sold only for 2-year terms and must start within 30 days" in out
    assert not re.search(r"\b[HWCEPS]\d\b", out), out
    assert _stored(data)["G7HZ"]["contracts"][0]["ineligible_rules"] == ["H1", "H5"]
