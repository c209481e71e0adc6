"""Whole stores moved: copy between the embedded store and PostgreSQL, backup and restore."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
from pathlib import Path

import aiohttp
from controller_testkit import cli_in_process, start_server
from testkit.processes import controller_cli
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.store.postgres import read_all
from polyfleet.controller.store.transfer import Place, read_backup, read_place
from polyfleet.controller.testing import enroll_codes
from polyfleet.shared.schema import PROTOCOL_VERSION


async def filled_data_dir(tmp_path: Path) -> tuple[Path, Path, str, asyncio.subprocess.Process]:
    """A serving embedded controller with a site, an agent and reports of 30 devices."""
    data_dir = tmp_path / "data"
    config = tmp_path / "controller.toml"
    config.write_text("", encoding="utf-8")
    where = ("--data-dir", str(data_dir))
    await cli_in_process(
        "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw", *where
    )
    code = (await cli_in_process("agent", "invite", "--site", "krk", *where)).strip()
    process, url = await start_server(data_dir, config)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/agent/enroll", json={"protocol_version": PROTOCOL_VERSION, "code": code}
        ) as response:
            token = (await response.json())["token"]
        for round_number in range(3):
            reports = [
                report(snapshot(f"X50-{i:03d}", state="ok"), f"round{round_number}-{i:03d}")
                for i in range(30)
            ]
            faulty = snapshot("G7-FAULT", problems=[{"code": "camera_down", "detail": "brak"}])
            faulty["system_name"] = "Sala Żółta, piętro 2"
            reports.append(report(faulty))
            async with http.post(
                f"{url}/api/v1/agent/reports", json=batch(*reports), headers=bearer(token)
            ) as response:
                assert response.status == 200
    return data_dir, config, url, process


async def stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 60) == 0


async def test_copy_embedded_to_postgresql_and_back_is_checked(
    tmp_path: Path, postgres_url: str
) -> None:
    """store copy moves every document each way; the copies equal the original exactly."""
    data_dir, _, _, process = await filled_data_dir(tmp_path)
    await stop(process)
    original = await read_place(Place(str(data_dir)))
    assert len(original["devices"]) == 31 and len(original["reports"]) == 93

    status, out, err = await controller_cli(
        "store", "copy", "--from", str(data_dir), "--to", postgres_url, "--json", expect=None
    )
    assert status == 0, err
    answer = json.loads(out)
    assert answer["verified"] is True
    assert answer["documents"] == sum(len(docs) for docs in original.values())
    assert answer["collections"]["reports"] == 93
    assert "postgresql://postgres:***@" in answer["to"]
    assert await read_all(postgres_url) == original

    back = tmp_path / "back"
    status, out, err = await controller_cli(
        "store", "copy", "--from", postgres_url, "--to", str(back), expect=None
    )
    assert status == 0, err
    assert "every document checked" in out
    assert await read_place(Place(str(back))) == original


async def test_copy_into_a_store_that_holds_documents_changes_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    """A target that is not empty is refused; its documents stay exactly as they were."""
    data_dir, _, _, process = await filled_data_dir(tmp_path)
    await stop(process)
    status, _, err = await controller_cli(
        "store", "copy", "--from", str(data_dir), "--to", postgres_url, expect=None
    )
    assert status == 0, err
    before = await read_all(postgres_url)
    status, out, err = await controller_cli(
        "store", "copy", "--from", str(data_dir), "--to", postgres_url, "--json", expect=None
    )
    assert status == 1
    error = json.loads(out)["error"]
    assert error["code"] == "store_error" and "already holds" in error["message"]
    assert "nothing was changed" in err
    assert await read_all(postgres_url) == before


async def test_copy_from_a_running_embedded_store_is_refused_with_what_to_do(
    tmp_path: Path, postgres_url: str
) -> None:
    """A data directory in use cannot be copied file-wise; the error points at backup."""
    data_dir, _, _, process = await filled_data_dir(tmp_path)
    try:
        status, _, err = await controller_cli(
            "store", "copy", "--from", str(data_dir), "--to", postgres_url, expect=None
        )
        assert status == 1
        assert "in use by a running controller" in err and "controller backup" in err
    finally:
        await stop(process)


async def test_backup_of_a_running_controller_restores_into_both_stores(
    tmp_path: Path, postgres_url: str
) -> None:
    """backup while the controller serves; restore into a new data dir and into PostgreSQL."""
    data_dir, _, url, process = await filled_data_dir(tmp_path)
    backup = tmp_path / "fleet.jsonl.gz"
    try:
        status, out, err = await controller_cli(
            "backup", "--to", str(backup), "--data-dir", str(data_dir), "--json", expect=None
        )
        assert status == 0, err
        answer = json.loads(out)
        assert answer["collections"]["devices"] == 31
        assert backup.stat().st_mode & 0o077 == 0
        # The server kept serving all along.
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
            assert (await response.json())["role"] == "active"
    finally:
        await stop(process)
    original = await read_place(Place(str(data_dir)))
    header, documents = read_backup(backup)
    assert documents == original and header["format"] == "polyfleet-backup"

    restored_dir = tmp_path / "restored"
    status, out, err = await controller_cli(
        "restore", "--from", str(backup), "--data-dir", str(restored_dir), expect=None
    )
    assert status == 0, err
    assert "every document checked" in out
    assert await read_place(Place(str(restored_dir))) == original

    status, out, err = await controller_cli(
        "restore", "--from", str(backup), "--store-url", postgres_url, "--json", expect=None
    )
    assert status == 0, err
    assert json.loads(out)["verified"] is True
    assert await read_all(postgres_url) == original

    # The restored embedded store serves the same inventory.
    config = tmp_path / "empty.toml"
    config.write_text("", encoding="utf-8")
    process, url = await start_server(restored_dir, config)
    try:
        token = (
            await cli_in_process(
                "token", "create", "--role", "viewer", "--data-dir", str(restored_dir)
            )
        ).strip()
        async with (
            aiohttp.ClientSession(headers=bearer(token)) as http,
            http.get(f"{url}/api/v1/devices") as response,
        ):
            serials = {device["serial"] for device in (await response.json())["devices"]}
        assert serials == set(original["devices"])
    finally:
        await stop(process)


async def test_backup_cut_short_is_refused_and_nothing_is_restored(
    tmp_path: Path, postgres_url: str
) -> None:
    """A truncated backup file is refused by restore, which writes nothing at all."""
    data_dir, _, _, process = await filled_data_dir(tmp_path)
    await stop(process)
    backup = tmp_path / "fleet.jsonl.gz"
    status, _, err = await controller_cli(
        "backup", "--to", str(backup), "--data-dir", str(data_dir), expect=None
    )
    assert status == 0, err
    lines = gzip.decompress(backup.read_bytes()).splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(lines[:-5])))
    status, out, err = await controller_cli(
        "restore", "--from", str(cut), "--store-url", postgres_url, "--json", expect=None
    )
    assert status == 1
    assert "cut short" in json.loads(out)["error"]["message"]
    assert await read_all(postgres_url) == {}
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(backup.read_bytes()[:-40])
    status, _, err = await controller_cli(
        "restore", "--from", str(broken), "--data-dir", str(tmp_path / "nowhere"), expect=None
    )
    assert status == 1 and "not a readable polyfleet backup" in err


async def test_backup_taken_during_ingestion_is_consistent(tmp_path: Path) -> None:
    """A backup taken while reports pour in holds each batch whole (reports with devices)."""
    data_dir, _, url, process = await filled_data_dir(tmp_path)
    backup = tmp_path / "busy.jsonl.gz"
    stop_posting = asyncio.Event()
    acked: list[int] = []

    async def post_forever() -> int:
        code = (
            await cli_in_process("agent", "invite", "--site", "krk", "--data-dir", str(data_dir))
        ).strip()
        sent = 0
        (token,) = await enroll_codes(url, [code])
        async with aiohttp.ClientSession() as http:
            while not stop_posting.is_set():
                sent += 1
                reports = [report(snapshot(f"B{sent}-{i}"), f"busy-{sent}-{i}") for i in range(20)]
                async with http.post(
                    f"{url}/api/v1/agent/reports", json=batch(*reports), headers=bearer(token)
                ) as response:
                    assert response.status == 200
                acked.append(sent)
        return sent

    poster = asyncio.create_task(post_forever())
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(acked) < 3:
            assert asyncio.get_running_loop().time() < deadline and not poster.done()
            await asyncio.sleep(0.05)  # waits-for: the poster to get going
        status, _, err = await controller_cli(
            "backup", "--to", str(backup), "--data-dir", str(data_dir), expect=None
        )
        assert status == 0, err
    finally:
        stop_posting.set()
        sent = await poster
        await stop(process)
    _, documents = read_backup(backup)
    devices = documents["devices"]
    reports = documents["reports"]
    assert sent > 0
    for report_id, stored in reports.items():
        assert stored["serial"] in devices, report_id
    batches: dict[str, set[str]] = {}
    for report_id in (stored["id"] for stored in reports.values()):
        if report_id.startswith("busy-"):
            _, number, index = report_id.split("-")
            batches.setdefault(number, set()).add(index)
    # Every batch is in the backup whole, or not at all.
    assert all(len(indexes) == 20 for indexes in batches.values()), batches
