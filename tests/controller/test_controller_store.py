"""The durable stores: generic documents, restarts, crashes, kill -9 during ingestion.

Tests taking ``backend`` run over both stores (embedded and PostgreSQL); the others are
about the embedded store's files (journal, snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from controller_testkit import cli_in_process, start_server
from store_backends import StoreBackend, crash
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.store.base import StoreError, StoreLocked
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.testing import enroll_codes, running_controller


@contextlib.asynccontextmanager
async def opened(directory: Path, **kwargs: float) -> AsyncIterator[TinyDBStore]:
    store = TinyDBStore(directory, **kwargs)  # type: ignore[arg-type]
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_documents_survive_reopen(backend: StoreBackend) -> None:
    """put_many/delete are durable: a reopened store has exactly the same documents."""
    async with backend.opened() as store:
        await store.put_many("tickets", {"t1": {"state": "open"}, "t2": {"state": "sent"}})
        await store.delete("tickets", "t1")
        await store.put_many("ticket_outbox", {"m1": {"to": "desk@example.invalid"}})
        assert store.get("tickets", "t2") == {"state": "sent"}
    async with backend.opened() as store:
        assert dict(store.scan("tickets")) == {"t2": {"state": "sent"}}
        assert store.get("ticket_outbox", "m1") == {"to": "desk@example.invalid"}
        assert store.count("tickets") == 1


async def test_acknowledged_changes_survive_a_crash(backend: StoreBackend) -> None:
    """Without a clean close (no final snapshot), every durable change is there after reopening."""
    store = backend.new(snapshot_interval_s=3600)
    await store.open()
    for i in range(50):
        await store.put_many("things", {f"k{i}": {"n": i}})
    await store.delete("things", "k0")
    # Simulate a crash: drop the store without close(); the lock goes with it.
    backend.crash(store)
    async with backend.opened() as reopened:
        assert reopened.count("things") == 49
        assert reopened.get("things", "k49") == {"n": 49}
        assert reopened.get("things", "k0") is None


async def test_one_apply_is_durable_whole_and_scan_keeps_insertion_order(
    backend: StoreBackend,
) -> None:
    """Changes of one apply come back together after a crash, in the order they were added."""
    store = backend.new(snapshot_interval_s=3600)
    await store.open()
    await store.put_many("things", {"b": {"n": 1}, "a": {"n": 2}})
    seq = store.apply(
        {"things": {"c": {"n": 3}, "b": {"n": 10}}, "other": {"x": {"y": None}}},
        {"things": ["a"]},
    )
    await store.wait_durable(seq)
    backend.crash(store)
    async with backend.opened() as reopened:
        assert list(reopened.scan("things").items()) == [("b", {"n": 10}), ("c", {"n": 3})]
        assert reopened.get("other", "x") == {"y": None}


async def test_changed_fields_replay_onto_documents_after_crash(backend: StoreBackend) -> None:
    """Updates that change few fields rebuild exactly the documents after a crash."""
    device = {f"f{n}": n for n in range(10)} | {"nested": {"a": [1, 2]}, "seen": "t0"}
    store = backend.new(snapshot_interval_s=3600)
    await store.open()
    await store.put_many("devices", {"D1": device, "D2": device})
    await store.checkpoint()
    await store.put_many("devices", {"D1": {**device, "seen": "t1", "nested": {"a": [1, 3]}}})
    await store.put_many("devices", {"D1": {**device, "seen": "t2", "nested": {"a": [1, 3]}}})
    fewer = {name: value for name, value in device.items() if name != "f0"}
    await store.put_many("devices", {"D2": {**fewer, "extra": None}, "D3": {"new": True}})
    expected = dict(store.scan("devices"))
    if backend.name == "embedded":
        journal = b"".join(
            path.read_bytes() for path in (backend.directory / "journal").glob("*.log")
        )
        # The point of the form: D1's unchanged fields are not written again.
        assert b'"u":{"devices":{"D1":{"seen":"t2"}}}' in journal
    backend.crash(store)
    async with backend.opened() as reopened:
        assert dict(reopened.scan("devices")) == expected
        assert reopened.get("devices", "D1") == {**device, "seen": "t2", "nested": {"a": [1, 3]}}
        assert "f0" not in (reopened.get("devices", "D2") or {})


async def test_patches_journal_named_fields_and_replay_after_crash(backend: StoreBackend) -> None:
    """Patches merge over documents (or start one), journal only their fields, and replay."""
    store = backend.new(snapshot_interval_s=3600)
    await store.open()
    await store.put_many("devices", {"D1": {"a": 1, "b": [1, 2], "seen": "t0"}})
    await store.checkpoint()
    seq = store.apply(
        {"devices": {"D2": {"a": 2}}},
        None,
        {"devices": {"D1": {"seen": "t1"}, "D2": {"seen": "t1"}, "D3": {"new": True}}},
    )
    await store.wait_durable(seq)
    await store.wait_durable(store.apply({}, {"devices": ["D3"]}, {"devices": {"D1": {"b": []}}}))
    assert store.get("devices", "D1") == {"a": 1, "b": [], "seen": "t1"}
    assert store.get("devices", "D2") == {"a": 2, "seen": "t1"}
    assert store.get("devices", "D3") is None
    if backend.name == "embedded":
        journal = b"".join(
            path.read_bytes() for path in (backend.directory / "journal").glob("*.log")
        )
        assert b'"D1":{"seen":"t1"}' in journal and b'"a":1' not in journal
    backend.crash(store)
    async with backend.opened() as reopened:
        assert dict(reopened.scan("devices")) == {
            "D1": {"a": 1, "b": [], "seen": "t1"},
            "D2": {"a": 2, "seen": "t1"},
        }


async def test_handed_over_documents_are_kept_as_given_and_replay(backend: StoreBackend) -> None:
    """Handed-over puts are stored as the very dicts given; others are copied; both replay."""
    async with backend.opened() as store:
        given = {"serial": "D1", "snapshot": {"via": "rest"}}
        copied = {"serial": "D2"}
        await store.wait_durable(store.apply({"reports": {"R1": given}}, handover=True))
        await store.wait_durable(store.apply({"reports": {"R2": copied}}))
        assert store.get("reports", "R1") is given
        assert store.get("reports", "R2") == copied and store.get("reports", "R2") is not copied
    async with backend.opened() as reopened:
        assert dict(reopened.scan("reports")) == {"R1": given, "R2": copied}


async def test_torn_journal_tail_is_cut_off(tmp_path: Path) -> None:
    """A half-written last journal line (crash mid-write) is dropped; earlier changes stay."""
    store = TinyDBStore(tmp_path, snapshot_interval_s=3600)
    await store.open()
    await store.put_many("things", {"a": {"n": 1}})
    crash(store)
    journal = max((tmp_path / "journal").glob("*.log"))
    with open(journal, "ab") as handle:
        handle.write(b'1234abcd {"p": {"things": {"b"')
    async with opened(tmp_path) as reopened:
        assert dict(reopened.scan("things")) == {"a": {"n": 1}}
        await reopened.put_many("things", {"c": {"n": 3}})
    async with opened(tmp_path) as again:
        assert set(again.scan("things")) == {"a", "c"}


async def test_snapshot_replaces_journal_atomically(tmp_path: Path) -> None:
    """A checkpoint leaves one complete snapshot, no temporary files and no old journal."""
    async with opened(tmp_path, snapshot_interval_s=3600) as store:
        await store.put_many("devices", {f"S{i}": {"i": i} for i in range(9000)})
        await store.checkpoint()
        snapshots = list((tmp_path / "snapshots").iterdir())
        assert len(snapshots) == 1 and not snapshots[0].name.endswith(".tmp")
        # 9000 documents are split over several TinyDB files.
        assert len(list(snapshots[0].glob("devices.*.json"))) == 3
        assert all(path.stat().st_size == 0 for path in (tmp_path / "journal").glob("*.log"))
    async with opened(tmp_path) as store:
        assert store.count("devices") == 9000


async def test_text_of_any_kind_survives_journal_and_snapshot(backend: StoreBackend) -> None:
    """Non-ASCII text, escapes, NUL, a lone surrogate and huge numbers read back the same."""
    docs = {
        "pl": {"name": "Kraków, sala Żółta", "lines": 'a\nb\t"c"\\', "n": [0, -1.5, 10**18, 2**70]},
        "odd": {"text": "half \ud800 pair", "nested": {"empty": {}, "none": None, "t": True}},
        "nul": {"text": "before\x00after", "emoji": "\U0001f4f9"},
    }
    store = backend.new(snapshot_interval_s=3600)
    await store.open()
    await store.put_many("things", docs)
    backend.crash(store)
    # Reopening replays the journal, then writes a snapshot; the second reopen reads that.
    async with backend.opened() as replayed:
        assert dict(replayed.scan("things")) == docs
    async with backend.opened() as from_snapshot:
        assert dict(from_snapshot.scan("things")) == docs


async def test_close_during_a_snapshot_leaves_one_complete_snapshot(tmp_path: Path) -> None:
    """Closing while the background snapshot is written waits for it instead of racing it."""
    store = TinyDBStore(tmp_path, journal_max_bytes=1)
    await store.open()
    await store.put_many("devices", {f"S{i}": {"i": i, "pad": "x" * 200} for i in range(20000)})
    deadline = asyncio.get_running_loop().time() + 10
    while not store._checkpoint_lock.locked():
        assert asyncio.get_running_loop().time() < deadline, "no background snapshot started"
        await asyncio.sleep(0.001)  # waits-for: the size-triggered snapshot to begin
    await store.put_many("devices", {"last": {"i": -1}})
    await store.close()
    current = (tmp_path / "CURRENT").read_text(encoding="ascii").strip()
    assert [path.name for path in (tmp_path / "snapshots").iterdir()] == [f"{int(current):012d}"]
    async with opened(tmp_path) as reopened:
        assert reopened.count("devices") == 20001


async def test_second_opener_is_locked_out(backend: StoreBackend) -> None:
    """Two processes never write one store: the second open fails with StoreLocked."""
    async with backend.opened():
        with pytest.raises(StoreLocked):
            await backend.new().open()


async def test_unserialisable_document_changes_nothing(backend: StoreBackend) -> None:
    """A document that is not JSON is refused before anything is applied."""
    async with backend.opened() as store:
        with pytest.raises(TypeError):
            await store.put_many("things", {"ok": {"n": 1}, "bad": {"when": object()}})
        assert store.count("things") == 0
        await store.put_many("things", {"after": {"n": 2}})
    async with backend.opened() as reopened:
        assert dict(reopened.scan("things")) == {"after": {"n": 2}}


async def test_restart_keeps_devices_tokens_and_report_ids(
    backend: StoreBackend, tmp_path: Path
) -> None:
    """After a restart the inventory, credentials and idempotency of report ids are intact."""
    body = batch(
        report(snapshot("X50-1"), "rep-restart-1"), report(snapshot("X50-2"), "rep-restart-2")
    )
    async with (
        running_controller(tmp_path, **backend.overrides) as controller,
        aiohttp.ClientSession() as http,
    ):
        agent = await controller.enroll("krk")
        async with http.post(
            f"{controller.url}/api/v1/agent/reports", json=body, headers=bearer(agent.token)
        ) as response:
            assert await response.json() == {"accepted": 2, "duplicates": 0}
        admin = controller.admin_token
    async with (
        running_controller(tmp_path, **backend.overrides) as controller,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{controller.url}/api/v1/devices", headers=bearer(admin)) as response:
            assert response.status == 200
            assert [d["serial"] for d in (await response.json())["devices"]] == ["X50-1", "X50-2"]
        async with http.post(
            f"{controller.url}/api/v1/agent/reports", json=body, headers=bearer(agent.token)
        ) as response:
            assert await response.json() == {"accepted": 0, "duplicates": 2}


async def prepare_kill_test(tmp_path: Path, backend: StoreBackend) -> tuple[Path, Path, str, str]:
    """A store with a site, an admin token and an enrollment code; a config whose frequent
    snapshots make the kill also land during snapshot writes (embedded store)."""
    data_dir = tmp_path / "data"
    config = tmp_path / "controller.toml"
    config.write_text(backend.config_toml(snapshot_interval_s=0.05), encoding="utf-8")
    where = ("--config", str(config), "--data-dir", str(data_dir))
    await cli_in_process(
        "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw", *where
    )
    admin = (await cli_in_process("token", "create", "--role", "admin", *where)).strip()
    code = (await cli_in_process("agent", "invite", "--site", "krk", *where)).strip()
    return data_dir, config, admin, code


async def ingest_until_killed(
    process: asyncio.subprocess.Process,
    url: str,
    code: str,
    make_reports: Callable[[int, int], list[dict[str, Any]]],
    on_ack: Callable[[int, list[dict[str, Any]]], None],
    enough: Callable[[], bool],
) -> None:
    """Four posters send batches (``make_reports(worker, number)``) and note each acked one
    (``on_ack(number, reports)``) until ``enough()``; then the server gets kill -9."""
    stop = asyncio.Event()
    try:
        (token,) = await enroll_codes(url, [code])
        async with aiohttp.ClientSession() as http:

            async def poster(worker: int) -> None:
                number = 0
                while not stop.is_set():
                    number += 1
                    reports = make_reports(worker, number)
                    try:
                        async with http.post(
                            f"{url}/api/v1/agent/reports",
                            json=batch(*reports),
                            headers=bearer(token),
                        ) as response:
                            if response.status == 200:
                                await response.read()
                                on_ack(number, reports)
                    except aiohttp.ClientError:
                        return

            posters = [asyncio.create_task(poster(worker)) for worker in range(4)]
            deadline = asyncio.get_running_loop().time() + 30
            while not enough():
                assert asyncio.get_running_loop().time() < deadline, "ingestion too slow"
                await asyncio.sleep(0.01)  # waits-for: enough acknowledged reports
            process.send_signal(signal.SIGKILL)
            await process.wait()
            stop.set()
            await asyncio.gather(*posters)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def test_kill_9_during_ingestion_loses_no_acknowledged_report(
    backend: StoreBackend, tmp_path: Path
) -> None:
    """kill -9 of a serving controller mid-ingestion: after restart every acked report is there."""
    data_dir, config, admin, code = await prepare_kill_test(tmp_path, backend)
    process, url = await start_server(data_dir, config)
    acked: dict[str, str] = {}

    def reports_of(worker: int, number: int) -> list[dict[str, Any]]:
        return [
            report(snapshot(f"K{worker}-{number}-{i}"), f"kill-{worker}-{number}-{i:03d}")
            for i in range(40)
        ]

    def note(number: int, reports: list[dict[str, Any]]) -> None:
        for item in reports:
            acked[item["id"]] = item["snapshot"]["serial"]

    await ingest_until_killed(process, url, code, reports_of, note, lambda: len(acked) >= 2000)
    survived = dict(acked)
    assert len(survived) >= 2000
    process, url = await start_server(data_dir, config)
    try:
        async with aiohttp.ClientSession(headers=bearer(admin)) as http:
            async with http.get(f"{url}/api/v1/devices") as response:
                serials = {d["serial"] for d in (await response.json())["devices"]}
            missing = [rid for rid, serial in survived.items() if serial not in serials]
            assert missing == []
            for report_id, serial in survived.items():
                async with http.get(f"{url}/api/v1/devices/{serial}/reports") as response:
                    ids = [r["id"] for r in (await response.json())["reports"]]
                assert report_id in ids
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    assert not os.path.exists(data_dir / "controller.json")


async def test_kill_9_while_devices_report_again_keeps_their_latest_acked_state(
    backend: StoreBackend, tmp_path: Path
) -> None:
    """kill -9 while the same devices report over and over: each keeps its last acked report."""
    data_dir, config, admin, code = await prepare_kill_test(tmp_path, backend)
    process, url = await start_server(data_dir, config)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    last_acked: dict[str, tuple[int, str]] = {}
    rounds = 0

    def reports_of(worker: int, number: int) -> list[dict[str, Any]]:
        reports = []
        for i in range(25):
            snap = snapshot(f"R{worker}-{i}", collected_at=start + timedelta(seconds=number))
            snap["uptime_s"] = float(number)
            reports.append(report(snap, f"again-{worker}-{number:05d}-{i:03d}"))
        return reports

    def note(number: int, reports: list[dict[str, Any]]) -> None:
        nonlocal rounds
        rounds += 1
        for item in reports:
            last_acked[item["snapshot"]["serial"]] = (number, item["id"])

    await ingest_until_killed(process, url, code, reports_of, note, lambda: rounds >= 80)
    acked = dict(last_acked)
    assert len(acked) == 100
    process, url = await start_server(data_dir, config)
    try:
        async with aiohttp.ClientSession(headers=bearer(admin)) as http:
            for serial, (number, report_id) in acked.items():
                async with http.get(f"{url}/api/v1/devices/{serial}") as response:
                    device = await response.json()
                async with http.get(f"{url}/api/v1/devices/{serial}/reports") as response:
                    reports = (await response.json())["reports"]
                assert report_id in device["reports"]
                # At most the one batch in flight at the kill may have landed after it.
                assert number <= device["uptime_s"] <= number + 1
                newest = max(reports, key=lambda r: r["snapshot"]["collected_at"])
                assert device["uptime_s"] == newest["snapshot"]["uptime_s"]
                assert device["collected_at"] == newest["snapshot"]["collected_at"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_missing_snapshot_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    """If the snapshot CURRENT names is gone, opening fails loudly instead of starting empty."""
    async with opened(tmp_path) as store:
        await store.put_many("devices", {"X50-1": {"site_id": "krk"}})
    for path in (tmp_path / "snapshots").iterdir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    with pytest.raises(StoreError, match="missing"):
        await TinyDBStore(tmp_path).open()
    # The failed open released the lock: a later open (after a restore) is possible.
    with pytest.raises(StoreError, match="missing"):
        await TinyDBStore(tmp_path).open()
