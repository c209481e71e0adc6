"""Several controllers on one PostgreSQL database: one active, the others standing by."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from controller_testkit import cli_in_process
from testkit.processes import controller_cli, start_controller
from testkit.reports import batch, bearer, report, snapshot
from testkit.waiting import wait_until

from polyfleet.agent.uplink import ControllerUnavailable, Uplink
from polyfleet.controller.store.local_postgres import LocalPostgres
from polyfleet.controller.store.postgres import read_all
from polyfleet.shared.schema import ACTIVE_CONTROLLER_HEADER, PROTOCOL_VERSION, ReportBatch

#: How long a takeover may take here (a loaded machine; the benchmark measures it).
TAKEOVER_S = 60.0


@dataclass
class Controller:
    """``polyfleet controller serve`` in a process of its own, on a shared database."""

    name: str
    process: asyncio.subprocess.Process
    url: str
    config: Path
    data_dir: Path

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 60)


def write_config(tmp_path: Path, name: str, store_url: str) -> tuple[Path, Path]:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n[tickets]\nenabled = false\n', "utf-8")
    return config, tmp_path / name


async def start(tmp_path: Path, name: str, store_url: str) -> Controller:
    config, data_dir = write_config(tmp_path, name, store_url)
    process, url = await start_controller(data_dir, "--config", str(config))
    return Controller(name, process, url, config, data_dir)


@contextlib.asynccontextmanager
async def controllers(
    tmp_path: Path, store_url: str, *names: str
) -> AsyncIterator[list[Controller]]:
    """Controllers started in order (the first is active once it answers so), all stopped."""
    started: list[Controller] = []
    try:
        for name in names:
            started.append(await start(tmp_path, name, store_url))
            if len(started) == 1:
                await wait_role(started[0], "active")
        yield started
    finally:
        for controller in started:
            controller.kill()
            await controller.process.wait()


async def health(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
            answer: dict[str, Any] = await response.json()
            return answer
    except aiohttp.ClientError:
        return None


async def wait_role(controller: Controller, role: str, active_url: str | None = None) -> None:
    async def check() -> bool:
        answer = await health(controller.url)
        if answer is None or answer["role"] != role:
            return False
        return active_url is None or answer["active_url"] == active_url

    await wait_until(check, what=f"{controller.name} as {role}", timeout=TAKEOVER_S)


async def admin_token(tmp_path: Path, store_url: str) -> str:
    """An admin token made before any controller runs (the command holds the database)."""
    config, data_dir = write_config(tmp_path, "admin", store_url)
    where = ("--config", str(config), "--data-dir", str(data_dir))
    await cli_in_process(
        "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw", *where
    )
    return (await cli_in_process("token", "create", "--role", "admin", *where)).strip()


async def agent_token(url: str, admin: str) -> str:
    async with aiohttp.ClientSession(headers=bearer(admin)) as http:
        async with http.post(f"{url}/api/v1/invites", json={"site": "krk"}) as response:
            code = (await response.json())["code"]
        async with http.post(
            f"{url}/api/v1/agent/enroll", json={"protocol_version": PROTOCOL_VERSION, "code": code}
        ) as response:
            token: str = (await response.json())["token"]
            return token


async def end_sessions_of(store_url: str, controller: Controller) -> int:
    """End every database session of a controller process, as a network partition would."""
    conn = await asyncpg.connect(store_url)
    try:
        ended: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE application_name LIKE $1",
            f"polyfleet-controller %:{controller.process.pid}",
        )
        return ended
    finally:
        await conn.close()


def report_ids(stored: dict[str, dict[str, dict[str, Any]]]) -> set[str]:
    """The ids agents gave the stored reports (the store keys them by agent too)."""
    return {report["id"] for report in stored.get("reports", {}).values()}


class Ingest:
    """Agents posting batches through the agent's own uplink (several controller URLs),
    each batch resent until acknowledged, as the agent's outbox does."""

    def __init__(self, urls: list[str], token: str) -> None:
        self.urls = urls
        self.token = token
        self.acked: dict[str, str] = {}
        self.accepted = 0
        self.duplicates = 0
        self.batches = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, posters: int = 3) -> None:
        self._tasks = [asyncio.create_task(self._post(worker)) for worker in range(posters)]

    async def _post(self, worker: int) -> None:
        async with aiohttp.ClientSession() as http:
            uplink = Uplink(self.urls, session=http, token=self.token, timeout=30)
            number = 0
            while not self._stop.is_set():
                number += 1
                reports = [
                    report(snapshot(f"W{worker}-{number}-{i}"), f"w{worker}-{number:05d}-{i:02d}")
                    for i in range(25)
                ]
                body = ReportBatch.model_validate(batch(*reports))
                while True:
                    try:
                        ack = await uplink.post_batch(body)
                        break
                    except ControllerUnavailable:
                        await asyncio.sleep(0.05)  # waits-for: a controller to take over
                self.accepted += ack.accepted
                self.duplicates += ack.duplicates
                self.batches += 1
                for item in reports:
                    self.acked[item["id"]] = item["snapshot"]["serial"]

    async def until(self, count: int, timeout: float = TAKEOVER_S) -> None:
        async def enough() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()
            return len(self.acked) >= count

        await wait_until(enough, what=f"{count} acknowledged reports", timeout=timeout)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_standby_points_agents_admins_and_browsers_to_the_active_one(
    tmp_path: Path, postgres_url: str
) -> None:
    """A standby says its role on /healthz and answers 503 + the active URL everywhere else."""
    admin = await admin_token(tmp_path, postgres_url)
    async with controllers(tmp_path, postgres_url, "a", "b") as (a, b):
        await wait_role(b, "standby", active_url=a.url)
        assert (await health(a.url)) == {
            "status": "ok",
            "role": "active",
            "store": "postgresql",
            "active_url": a.url,
            "url": a.url,
            "term": (await health(a.url) or {})["term"],
        }
        async with aiohttp.ClientSession(headers=bearer(admin)) as http:
            async with http.get(f"{b.url}/api/v1/devices") as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "2"
                assert response.headers[ACTIVE_CONTROLLER_HEADER] == a.url
                assert (await response.json())["error"]["code"] == "not_active"
            async with http.post(f"{b.url}/api/v1/agent/reports", json=batch()) as response:
                assert response.status == 503
                assert response.headers[ACTIVE_CONTROLLER_HEADER] == a.url
            async with http.get(f"{b.url}/healthz/active") as response:
                assert response.status == 503
            async with http.get(f"{a.url}/healthz/active") as response:
                assert response.status == 200
            async with http.get(
                f"{b.url}/devices?site=krk", headers={"Accept": "text/html"}, allow_redirects=False
            ) as response:
                assert response.status == 307
                assert response.headers["Location"] == f"{a.url}/devices?site=krk"
            async with http.get(f"{b.url}/metrics") as response:
                assert "polyfleet_controller_active 0" in await response.text()
            async with http.get(f"{a.url}/metrics") as response:
                assert "polyfleet_controller_active 1.0" in await response.text()

        # Admin commands on the standby's host: refused with the active URL, or sent there.
        where = ("--config", str(b.config), "--data-dir", str(b.data_dir), "--json")
        status, out, _ = await controller_cli("site", "list", *where, expect=None)
        assert status == 1
        error = json.loads(out)["error"]
        assert error["code"] == "not_active" and a.url in error["message"]
        status, out, err = await controller_cli(
            "site", "list", *where, env={**os.environ, "POLYFLEET_TOKEN": admin}, expect=None
        )
        assert status == 0, err
        assert [site["id"] for site in json.loads(out)["sites"]] == ["krk"]


async def test_kill_9_of_the_active_controller_under_ingestion_loses_no_report(
    tmp_path: Path, postgres_url: str
) -> None:
    """kill -9 of the active one mid-ingestion: the standby takes over; every acknowledged
    report is there once, and agents moved on by themselves."""
    admin = await admin_token(tmp_path, postgres_url)
    async with controllers(tmp_path, postgres_url, "a", "b") as (a, b):
        await wait_role(b, "standby", active_url=a.url)
        token = await agent_token(a.url, admin)
        ingest = Ingest([a.url, b.url], token)
        ingest.start()
        await ingest.until(600)
        a.kill()
        await a.process.wait()
        acked_before = len(ingest.acked)
        await wait_role(b, "active")
        await ingest.until(acked_before + 600)
        await ingest.stop()
    stored = await read_all(postgres_url)
    stored_ids = report_ids(stored)
    missing = sorted(set(ingest.acked) - stored_ids)
    assert missing == []
    # Every report sent was acknowledged (resent until it was): the store holds exactly them,
    # and each device was added once (a report stored twice would add its device again).
    assert stored_ids == set(ingest.acked)
    added = [event for event in stored["events"].values() if event["kind"] == "device_added"]
    assert sorted(event["serial"] for event in added) == sorted(stored["devices"])
    assert len(stored["devices"]) == len(ingest.acked)
    assert ingest.accepted <= len(ingest.acked) <= ingest.accepted + ingest.duplicates


async def test_deposed_active_controller_is_refused_its_next_write(
    tmp_path: Path, postgres_url: str
) -> None:
    """The active one loses its session, another takes over: its next write is refused (503,
    naming the new active one), nothing of it is stored, and it comes back as a standby."""
    admin = await admin_token(tmp_path, postgres_url)
    async with controllers(tmp_path, postgres_url, "a", "b") as (a, b):
        await wait_role(b, "standby", active_url=a.url)
        token = await agent_token(a.url, admin)

        async def b_took_over() -> bool:
            answer = await health(b.url)
            if answer is not None and answer["role"] == "active":
                return True
            # Until the standby has the lock, end the active one's sessions (again).
            assert await end_sessions_of(postgres_url, a) >= 0
            return False

        await wait_until(b_took_over, what="takeover by b", timeout=TAKEOVER_S)
        body = batch(report(snapshot("LATE-1"), "late-report-1"))
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{a.url}/api/v1/agent/reports", json=body, headers=bearer(token)) as answer,
        ):
            assert answer.status == 503
            assert (await answer.json())["error"]["code"] == "not_active"
        assert "late-report-1" not in report_ids(await read_all(postgres_url))
        await wait_role(a, "standby", active_url=b.url)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{a.url}/api/v1/agent/reports", json=body, headers=bearer(token)) as answer,
        ):
            assert answer.status == 503
            assert answer.headers[ACTIVE_CONTROLLER_HEADER] == b.url


async def test_postgresql_restart_under_load_loses_no_acknowledged_report(tmp_path: Path) -> None:
    """The database restarts (as after a crash) while reports pour in: none acknowledged is lost."""
    server = await asyncio.to_thread(LocalPostgres.start)
    try:
        store_url = await asyncio.to_thread(server.create_database, "fleet")
        admin = await admin_token(tmp_path, store_url)
        async with controllers(tmp_path, store_url, "a", "b") as (a, b):
            token = await agent_token(a.url, admin)
            ingest = Ingest([a.url, b.url], token)
            ingest.start()
            await ingest.until(400)
            await asyncio.to_thread(server.restart, "immediate")
            restarted_at = len(ingest.acked)
            await ingest.until(restarted_at + 400)
            await ingest.stop()
            roles = {(await health(c.url) or {}).get("role") for c in (a, b)}
            assert "active" in roles
        stored = await read_all(store_url)
        assert sorted(set(ingest.acked) - report_ids(stored)) == []
    finally:
        await asyncio.to_thread(server.stop)
