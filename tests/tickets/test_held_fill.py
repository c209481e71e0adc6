"""Held tickets (W5): the suggested fill command works as printed, and filling is checked."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.processes import Finished, in_process, polyfleet
from testkit.reports import typed_snapshot

from polyfleet.controller.app import serve
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.web.security import SESSION_COOKIE, SIGNIN_COOKIE
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    ProblemCode,
    Report,
    ReportBatch,
)

#: X7's only contract ended long ago: its tickets are held for a contract number.
REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
X7,studio_x50,2023-01-05,partner_poly_plus,PPP-2023-7,2023-01-10,2024-01-09,krk,Sala Wawel,
"""
#: The site's reporter and delivery address (``site contact``): tickets need them too.
SITE_CONTACT = (
    "--name", "Anna Nowak", "--phone", "+48 12 345 67 89", "--email", "anna@example.pl",
    "--street", "ul. Floriańska 1", "--postal-code", "31-019", "--city", "Kraków",
    "--country", "Polska",
)  # fmt: skip
HELD_LOG = re.compile(
    r"ticket (PF-[A-Z0-9-]+) held: missing contract_number; fill it in with: (.+)$"
)


#: What the admin's shell passes on: no token, so each command names its store or server.
ADMIN_ENV = {k: v for k, v in os.environ.items() if k != "POLYFLEET_TOKEN"}


async def as_admin(*args: str, stdin: bytes | None = None) -> Finished:
    """``polyfleet ARGS`` as the admin runs it, ``stdin`` as what the admin types."""
    return await polyfleet(*args, stdin=stdin, env=ADMIN_ENV, expect=None)


async def set_up(*args: str) -> Finished:
    """``polyfleet ARGS`` as the admin runs it, by this process's entry point: a step before
    what a test checks."""
    return await in_process(*args, env=ADMIN_ENV, expect=None)


@dataclass
class Server:
    url: str
    data_dir: Path
    agent_token: str
    task: asyncio.Task[None]
    stopping: asyncio.Event

    async def stop(self) -> None:
        """Stop the server (SIGTERM's way) and wait until it has released the store."""
        self.stopping.set()
        await self.task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """`controller serve` with its control socket, the site krk, an agent and the registry."""
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    config = ControllerConfig(
        data_dir=data_dir,
        listen_port=0,
        liveness_check_s=3600,
        sections={"tickets": {"min_duration_s": 60, "diagnostics_timeout_s": 0}},
    )
    urls: list[str] = []
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(config, on_ready=lambda url: (urls.append(url), ready.set()), stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        local = ["--data-dir", str(data_dir), "--json"]
        site = "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw"
        assert (await set_up("controller", "site", "add", *site, *local)).status == 0
        contact = await set_up("controller", "site", "contact", "krk", *SITE_CONTACT, *local)
        assert contact.status == 0, contact.err
        registry = tmp_path / "registry.csv"
        registry.write_text(REGISTRY, encoding="utf-8")
        imported = await set_up("controller", "assets", "import", str(registry), *local)
        assert imported.status == 0, imported.err
        invite = await set_up("controller", "agent", "invite", "--site", "krk", *local)
        code = json.loads(invite.out)["code"]
        body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "krk"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{urls[0]}/api/v1/agent/enroll", json=body) as response,
        ):
            token = (await response.json())["token"]
        yield Server(url=urls[0], data_dir=data_dir, agent_token=token, task=task, stopping=stop)
    finally:
        stop.set()
        await task


async def camera_fault(server: Server, serial: str) -> None:
    """Reports of a camera fault over two minutes, as the site's agent sends them."""
    now = datetime.now(UTC).replace(microsecond=0)
    snapshots = [
        typed_snapshot(serial, ProblemCode.CAMERA_DOWN, at=now - timedelta(seconds=seconds))
        for seconds in (150, 90, 30)
    ]
    batch = ReportBatch(
        protocol_version=PROTOCOL_VERSION,
        reports=[Report(id=f"r-{s.collected_at.timestamp():.0f}", snapshot=s) for s in snapshots],
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/api/v1/agent/reports",
            data=batch.model_dump_json(),
            headers={
                "Authorization": f"Bearer {server.agent_token}",
                "Content-Type": "application/json",
            },
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def printed_fill_command(caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    """(ticket id, command) from the controller's log line about the held ticket."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        for record in caplog.records:
            match = HELD_LOG.search(record.getMessage())
            if match:
                return match.group(1), match.group(2)
        assert loop.time() < deadline, "no held-ticket log line"
        await asyncio.sleep(0.05)  # waits-for: the controller to file the ticket


async def run_printed(command: str, stdin: bytes) -> Finished:
    """Run ``command`` exactly as printed (``polyfleet`` is this interpreter's)."""
    program, *args = shlex.split(command)
    assert program == "polyfleet"
    return await as_admin(*args, stdin=stdin)


async def test_suggested_fill_command_did_not_work_as_printed(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The command the log suggests for a held ticket runs as printed and asks for the
    number; one the registry lacks for that serial is refused unless forced; the ticket
    records who filled it and when."""
    caplog.set_level(logging.WARNING, logger="polyfleet.controller.services.ticket_service")
    await camera_fault(server, "X7")
    ticket, command = await printed_fill_command(caplog)
    assert command == (
        f"polyfleet controller tickets fill {ticket} --data-dir {shlex.quote(str(server.data_dir))}"
    )
    refused = await run_printed(command, b"PPP-2026-TYPO\n")
    assert refused.status == 1, refused.err
    assert "the asset registry knows no contract 'PPP-2026-TYPO' for serial X7" in refused.err
    assert "(it holds PPP-2023-7)" in refused.err and "--force" in refused.err
    empty = await run_printed(command, b"\n")
    assert empty.status == 2 and "still needs the service contract number" in empty.err
    filled = await run_printed(command, b"PPP-2023-7\n")
    assert filled.status == 0, filled.err
    assert filled.out.splitlines()[0].startswith(f"{ticket}  open")
    shown = await as_admin("controller", "tickets", "show", ticket, "--data-dir",
                            str(server.data_dir), "--json")  # fmt: skip
    data = json.loads(shown.out)
    assert data["status"] == "open" and data["contract_number"] == "PPP-2023-7"
    assert data["filled_by"].endswith("(on the controller)")
    filled_at = datetime.fromisoformat(data["filled_at"])
    assert abs(datetime.now(UTC) - filled_at) < timedelta(minutes=5)


async def first_ticket(local: list[str]) -> str:
    """The id of the first ticket the controller files (listed by the CLI)."""
    for _ in range(600):
        listed = json.loads((await set_up("controller", "tickets", "list", *local)).out)
        if listed["tickets"]:
            return str(listed["tickets"][0]["id"])
        await asyncio.sleep(0.05)  # waits-for: the controller to file the ticket
    raise AssertionError("no ticket filed within 30 s")


async def test_fill_took_an_empty_or_unknown_contract_number(server: Server) -> None:
    """An empty contract number is refused (CLI and API); an unknown one only with force,
    which the ticket notes with who gave it."""
    await camera_fault(server, "X7")
    local = ["--data-dir", str(server.data_dir), "--json"]
    ticket = await first_ticket(local)
    empty = await as_admin("controller", "tickets", "fill", ticket, "--contract-number", "", *local)
    assert empty.status == 2
    assert json.loads(empty.out)["error"]["message"] == "--contract-number: is empty"
    created = await as_admin(
        "controller", "token", "create", "--role", "admin", "--name", "ops", *local
    )
    token = json.loads(created.out)
    headers = {"Authorization": f"Bearer {token['token']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        path = f"{server.url}/api/v1/tickets/{ticket}"
        async with http.patch(path, json={"contract_number": ""}) as response:
            assert response.status == 422
            assert (await response.json())["error"]["field"] == "contract_number"
        async with http.patch(path, json={"contract_number": "PPP-2026-NEW"}) as response:
            assert response.status == 409
            error = (await response.json())["error"]
        assert error["code"] == "unknown_contract" and "PPP-2023-7" in error["message"]
        async with http.patch(
            path, json={"contract_number": "PPP-2026-NEW", "force": True}
        ) as response:
            assert response.status == 200, await response.text()
            filled: dict[str, Any] = await response.json()
    assert filled["status"] == "open" and filled["contract_number"] == "PPP-2026-NEW"
    assert filled["filled_by"] == f"ops (token {token['id']})"
    notes = [note["text"] for note in filled["notes"]]
    assert any(
        "contract number PPP-2026-NEW given though the asset registry lacks it (ops" in text
        for text in notes
    ), notes


async def signed_in(http: aiohttp.ClientSession, server: Server, token: str) -> dict[str, str]:
    """The cookies of a dashboard session signed in with ``token``."""
    # Cookies sent by hand: a client jar keeps no Secure cookie from plain HTTP.
    async with http.get(f"{server.url}/signin") as response:
        nonce = response.cookies[SIGNIN_COOKIE].value
    async with http.post(
        f"{server.url}/signin",
        data={"token": token, "nonce": nonce, "next": "/"},
        cookies={SIGNIN_COOKIE: nonce},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return {SESSION_COOKIE: response.cookies[SESSION_COOKIE].value}


def csrf_of(html: str) -> str:
    """The CSRF token of a dashboard page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def test_dashboard_fill_said_nobody_filled_it_and_could_not_force(server: Server) -> None:
    """The dashboard's fill form records who filled the ticket, as the API does, and takes a
    contract number the registry lacks only when the admin ticks it (the API's force)."""
    await camera_fault(server, "X7")
    local = ["--data-dir", str(server.data_dir), "--json"]
    ticket = await first_ticket(local)
    created = await as_admin(
        "controller", "token", "create", "--role", "admin", "--name", "desk", *local
    )
    token = json.loads(created.out)
    async with aiohttp.ClientSession() as http:
        session = await signed_in(http, server, token["token"])
        page = f"{server.url}/tickets/{ticket}"
        async with http.get(page, cookies=session) as response:
            html = await response.text()
        assert 'name="force" value="1"' in html
        form = {"csrf": csrf_of(html), "contract_number": "PPP-2026-NEW"}
        async with http.post(
            f"{page}/fill", data=form, cookies=session, allow_redirects=False
        ) as response:
            assert response.status == 409
            assert "PPP-2023-7" in await response.text()
        async with http.post(
            f"{page}/fill", data={**form, "force": "1"}, cookies=session, allow_redirects=False
        ) as response:
            assert response.status == 303, await response.text()
        headers = {"Authorization": f"Bearer {token['token']}"}
        async with http.get(f"{server.url}/api/v1/tickets/{ticket}", headers=headers) as response:
            filled = await response.json()
    assert filled["contract_number"] == "PPP-2026-NEW"
    assert filled["filled_by"] == f"desk (token {token['id']}, dashboard)"
    audit = json.loads((await as_admin("controller", "audit", "--action", "ticket", *local)).out)
    (entry,) = [e for e in audit["entries"] if e["action"] == "ticket.fill"]
    assert entry["details"] == {
        "contract_number": "PPP-2026-NEW",
        "force": True,
        "via": "dashboard",
    }


#: Text that reads differently than it is, or breaks the lines it is written into.
DISGUISED = {
    "serial": "X7\u202e1X",  # a right-to-left override: shows as X7X1
    "contract_number": "PPP-2023-7\nBcc: desk@example.com",
}


async def test_a_line_break_or_an_override_reached_a_ticket(server: Server) -> None:
    """A serial or contract number with a line break or a bidirectional override is refused,
    naming the field, by the API, the dashboard's form and the CLI; the ticket is unchanged."""
    await camera_fault(server, "X7")
    local = ["--data-dir", str(server.data_dir), "--json"]
    ticket = await first_ticket(local)
    flags = {field: "--" + field.replace("_", "-") for field in DISGUISED}
    created, *commands = await asyncio.gather(
        as_admin("controller", "token", "create", "--role", "admin", "--name", "ops", *local),
        *(
            as_admin("controller", "tickets", "fill", ticket, flags[field], value, *local)
            for field, value in DISGUISED.items()
        ),
    )
    for field, done in zip(DISGUISED, commands, strict=True):
        assert done.status == 2, done
        assert json.loads(done.out)["error"]["field"] == field
        assert f"{flags[field]}: contains " in done.err
    token = json.loads(created.out)["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        api = f"{server.url}/api/v1/tickets/{ticket}"
        session = await signed_in(http, server, token)
        page = f"{server.url}/tickets/{ticket}"
        for field, value in DISGUISED.items():
            async with http.patch(api, json={field: value}, headers=headers) as response:
                assert response.status == 422, await response.text()
                error = (await response.json())["error"]
            assert error["field"] == field, error
            async with http.get(page, cookies=session) as response:
                form = {"csrf": csrf_of(await response.text()), field: value}
            async with http.post(
                f"{page}/fill", data=form, cookies=session, allow_redirects=False
            ) as response:
                assert response.status == 422
                shown = await response.text()
            assert f"{field}: contains " in shown, shown
        async with http.get(api, headers=headers) as response:
            kept = await response.json()
    assert kept["serial"] == "X7" and kept["contract_number"] is None
    assert kept["status"] == "needs_data"
    audit = json.loads((await as_admin("controller", "audit", "--action", "ticket", *local)).out)
    assert [e for e in audit["entries"] if e["action"] == "ticket.fill"] == []


async def test_ticket_commands_needed_a_running_server(server: Server) -> None:
    """With no server running, ticket commands read and change the store itself, and the
    audit log records their changes as the local user's."""
    await camera_fault(server, "X7")
    local = ["--data-dir", str(server.data_dir)]
    ticket = await first_ticket([*local, "--json"])
    await server.stop()
    assert not (server.data_dir / "controller.json").exists()
    filled = await as_admin(
        "controller", "tickets", "fill", ticket, "--contract-number", "PPP-2023-7", *local,
        "--json",
    )  # fmt: skip
    assert filled.status == 0, filled.err
    data = json.loads(filled.out)
    assert data["status"] == "open" and data["contract_number"] == "PPP-2023-7"
    assert data["filled_by"].endswith("(on the controller)")
    listed = await as_admin("controller", "tickets", "list", "--site", "krk", *local)
    assert listed.status == 0, listed.err
    assert listed.out.splitlines()[1].startswith(f"{ticket}  open")
    closed = await as_admin("controller", "tickets", "close", ticket, *local)
    assert closed.status == 0, closed.err
    assert closed.out.startswith(f"{ticket}  closed")
    unknown = await as_admin("controller", "tickets", "ack", "PF-NOPE000000", *local, "--json")
    assert unknown.status == 1 and json.loads(unknown.out)["error"]["code"] == "not_found"
    audit = await as_admin("controller", "audit", "--action", "ticket", *local, "--json")
    entries = {e["action"]: e for e in json.loads(audit.out)["entries"]}
    assert set(entries) == {"ticket.fill", "ticket.close"}
    for entry in entries.values():
        assert entry["target"] == f"ticket:{ticket}"
        assert entry["origin"]["via"] == "local_store", entry
    assert entries["ticket.fill"]["details"] == {"contract_number": "PPP-2023-7"}
