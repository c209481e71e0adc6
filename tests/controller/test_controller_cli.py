"""The admin CLI, on its own and while a real server runs on the same data directory."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
from pathlib import Path

import aiohttp
import pytest
from controller_testkit import cli, start_server
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.cli import main
from polyfleet.shared.schema import PROTOCOL_VERSION


def test_first_run_commands_without_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fresh data dir: site add, token create --json, agent invite and devices all work."""
    monkeypatch.chdir(tmp_path)
    data = str(tmp_path / "data")
    site_add = ["controller", "site", "add", "krk", "--name", "Kraków", "--timezone"]
    assert main([*site_add, "Europe/Warsaw", "--data-dir", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timezone"] == "Europe/Warsaw"
    assert (
        main(["controller", "token", "create", "--role", "viewer", "--data-dir", data, "--json"])
        == 0
    )
    token = json.loads(capsys.readouterr().out)["token"]
    assert token.startswith("pft_")
    assert main(["controller", "agent", "invite", "--site", "krk", "--data-dir", data]) == 0
    assert len(capsys.readouterr().out.strip()) == 19
    assert main(["controller", "devices", "--data-dir", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"devices": []}
    # Options given before a nested action still apply to it.
    assert main(["controller", "devices", "--data-dir", data, "export", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("serial,model,provider,")
    # The token is stored hashed: the secret appears nowhere in the data directory.
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert not (tmp_path / "polyfleet-data").exists()


def test_bad_input_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown site for invite, or a bad time zone, exit 1 with a clear message."""
    data = str(tmp_path / "data")
    assert main(["controller", "agent", "invite", "--site", "nowhere", "--data-dir", data]) == 1
    assert "no site 'nowhere'" in capsys.readouterr().err
    site_add = ["controller", "site", "add", "krk", "--name", "K", "--timezone"]
    assert main([*site_add, "Mars/Olympus", "--data-dir", data]) == 1
    assert "unknown time zone" in capsys.readouterr().err


#: A Trio conference phone in the registry: a Poly product the agents do not poll.
TRIO_REGISTRY = (
    "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,"
    "host_serial\n"
    "TRIO1,Poly Trio C60,2025-01-05,partner_poly_plus,PPP-T1,2025-01-10,2026-01-09,krk,"
    "Sala Wawel,\n"
)


def test_devices_lists_an_unpolled_poly_product_by_its_monitoring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``devices --monitoring not_monitored`` on a store whose registry holds a Trio prints
    it alone, its model as printed, with its site and room; ``--monitoring polled`` not."""
    data = str(tmp_path / "data")
    registry = tmp_path / "registry.csv"
    registry.write_text(TRIO_REGISTRY, encoding="utf-8")
    site_add = ["controller", "site", "add", "krk", "--name", "Kraków", "--timezone"]
    assert main([*site_add, "Europe/Warsaw", "--data-dir", data]) == 0
    assert main(["controller", "assets", "import", str(registry), "--data-dir", data]) == 0
    capsys.readouterr()
    devices = ["controller", "devices", "--data-dir", data, "--monitoring"]
    assert main([*devices, "not_monitored"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SERIAL") and len(lines) == 2, lines
    assert lines[1].split()[0] == "TRIO1" and "Poly Trio C60" in lines[1]
    assert "not_monitored" in lines[1] and lines[1].endswith("krk / Sala Wawel")
    assert main([*devices, "polled"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []


async def test_commands_go_through_running_server(tmp_path: Path) -> None:
    """While serve runs, CLI commands change and read the live server's state safely."""
    data = tmp_path / "data"
    config = tmp_path / "controller.toml"
    config.write_text("[store]\nsnapshot_interval_s = 0.2\n", encoding="utf-8")
    process, url = await start_server(data, config)
    try:
        # The very first token, created while the server runs, works at once.
        token = json.loads(
            await cli("token", "create", "--role", "admin", "--json", "--data-dir", str(data))
        )["token"]
        await cli(
            "site",
            "add",
            "krk",
            "--name",
            "Kraków",
            "--timezone",
            "Europe/Warsaw",
            "--data-dir",
            str(data),
        )
        await cli(
            "site",
            "add",
            "waw",
            "--name",
            "Warszawa",
            "--timezone",
            "Europe/Warsaw",
            "--data-dir",
            str(data),
        )
        code = json.loads(
            await cli("agent", "invite", "--site", "krk", "--json", "--data-dir", str(data))
        )["code"]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/api/v1/agent/enroll",
                json={"protocol_version": PROTOCOL_VERSION, "code": code},
            ) as response:
                assert response.status == 200
                agent = (await response.json())["token"]
            body = batch(
                report(snapshot("X50-1")),
                report(
                    snapshot(
                        "X70-1", model="studio_x70", problems=[{"code": "lan_down", "detail": ""}]
                    )
                ),
            )
            async with http.post(
                f"{url}/api/v1/agent/reports", json=body, headers=bearer(agent)
            ) as response:
                assert response.status == 200
            listed = json.loads(
                await cli("devices", "--health", "fault", "--json", "--data-dir", str(data))
            )
            assert [d["serial"] for d in listed["devices"]] == ["X70-1"]
            exported = await cli("devices", "export", "--csv", "--data-dir", str(data))
            rows = list(csv.DictReader(io.StringIO(exported)))
            assert [(r["serial"], r["health"], r["problems"]) for r in rows] == [
                ("X50-1", "ok", ""),
                ("X70-1", "fault", "lan_down"),
            ]
            await cli("devices", "move", "X50-1", "--site", "waw", "--data-dir", str(data))
            async with http.get(f"{url}/api/v1/devices/X50-1", headers=bearer(token)) as response:
                assert (await response.json())["site"] == "waw"
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # Stopped: the same commands now work on the store directly and see the same state.
    listed = json.loads(await cli("devices", "--site", "waw", "--json", "--data-dir", str(data)))
    assert [d["serial"] for d in listed["devices"]] == ["X50-1"]
