"""The audit log: admin actions recorded with who, when, what and from where; kept as set."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from access_testkit import controller_process, enroll_agent, post_report
from testkit.clocks import SettableClock
from testkit.processes import in_process
from testkit.reports import bearer, snapshot
from testkit.waiting import wait_until

from polyfleet.controller.testing import running_controller

TICKETS_AT_ONCE = """\
[tickets]
min_reports = 1
min_duration_s = 0
check_interval_s = 3600
diagnostics_timeout_s = 0
"""
REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
X50-1,studio_x50,2025-01-10,hezo_plus,HZ-1,2025-01-10,2027-01-09,krk,Wawel,
"""


async def _get(http: aiohttp.ClientSession, url: str, token: str, **query: str) -> Any:
    async with http.get(url, headers=bearer(token), params=query) as response:
        body = await response.json()
        assert response.status == 200, body
        return body


async def _send(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> Any:
    async with http.request(method, url, json=body, headers=bearer(token)) as response:
        answer = await response.json()
        assert response.status < 300, answer
        return answer


async def test_every_admin_action_is_audited_with_who_when_what_and_where(
    tmp_path: Path,
) -> None:
    """Tokens, invites, sites, moves, rooms, jobs, tickets and imports each leave one entry."""
    async with (
        controller_process(tmp_path / "data", TICKETS_AT_ONCE) as controller,
        aiohttp.ClientSession() as http,
    ):
        url = controller.url
        admin = await controller.admin_token("ops")
        api = f"{url}/api/v1"
        await _send(http, "POST", f"{api}/sites", admin, {"id": "krk", "name": "Kraków"})
        await _send(http, "POST", f"{api}/sites", admin, {"id": "waw", "name": "Warszawa"})
        invite = await _send(http, "POST", f"{api}/invites", admin, {"site": "krk"})
        agent = await enroll_agent(http, url, invite["code"], name="krk-agent")
        now = datetime.now(UTC).isoformat()
        await post_report(
            http, url, agent["token"], snapshot("X50-1", collected_at=now), "report-00001"
        )
        ghost = snapshot(
            "GHOST-1", collected_at=now, problems=[{"code": "camera_down", "detail": "dark"}]
        )
        await post_report(http, url, agent["token"], ghost, "report-00002")
        viewer = await _send(http, "POST", f"{api}/tokens", admin, {"role": "viewer", "name": "tv"})
        await _send(http, "DELETE", f"{api}/tokens/{viewer['id']}", admin)
        await _send(http, "PATCH", f"{api}/devices/X50-1", admin, {"room": "Wawel"})
        await _send(http, "POST", f"{api}/devices/X50-1/move", admin, {"site": "waw"})
        job = await _send(
            http, "POST", f"{api}/devices/X50-1/jobs", admin, {"kind": "collect_diagnostics"}
        )
        async with http.post(
            f"{api}/assets/import",
            data=REGISTRY.encode(),
            headers={**bearer(admin), "Content-Type": "text/csv"},
        ) as response:
            assert response.status == 200, await response.text()

        async def ghost_ticket() -> Any:
            listed = await _get(http, f"{api}/tickets", admin)
            return [t for t in listed["tickets"] if t.get("serial") == "GHOST-1"]

        (ticket,) = await wait_until(ghost_ticket)
        # GHOST-1 is not in the asset registry: its number is taken only when forced.
        filled = {"contract_number": "C-9", "force": True}
        await _send(http, "PATCH", f"{api}/tickets/{ticket['id']}", admin, filled)
        await _send(http, "POST", f"{api}/tickets/{ticket['id']}/close", admin)

        page = await _get(http, f"{api}/audit", admin, after="0")
        entries = page["entries"]
        assert [(e["action"], e["target"]) for e in entries] == [
            ("token.create", entries[0]["target"]),
            ("site.add", "site:krk"),
            ("site.add", "site:waw"),
            ("invite.create", "site:krk"),
            ("agent.enroll", f"agent:{agent['agent_id']}"),
            ("token.create", f"token:{viewer['id']}"),
            ("token.revoke", f"token:{viewer['id']}"),
            ("device.room", "device:X50-1"),
            ("device.move", "device:X50-1"),
            ("job.create", f"job:{job['id']}"),
            ("assets.import", "assets"),
            ("ticket.fill", f"ticket:{ticket['id']}"),
            ("ticket.close", f"ticket:{ticket['id']}"),
        ]
        assert page["more"] is False
        # The first token came from the CLI through the control socket: the OS user, no address.
        first = entries[0]
        assert first["actor"] == {"name": getpass.getuser(), "role": "admin", "token_id": None}
        assert first["origin"]["via"] == "control_socket"
        assert first["origin"]["user"] == getpass.getuser() and first["origin"]["pid"] > 0
        assert first["details"] == {"role": "admin", "name": "ops"}
        admin_id = first["target"].removeprefix("token:")
        # Every later one came over HTTP with the "ops" token, from the client's address.
        for entry in entries[1:]:
            if entry["action"] == "agent.enroll":
                assert entry["actor"]["role"] == "agent"
                assert entry["actor"]["name"] == "krk-agent"
            else:
                assert entry["actor"] == {"name": "ops", "role": "admin", "token_id": admin_id}
            assert entry["origin"] == {
                "via": "http",
                "address": "127.0.0.1",
                "user": None,
                "pid": None,
            }
        by_action = {e["action"]: e for e in entries}
        assert by_action["device.move"]["details"] == {"site": ["krk", "waw"]}
        assert by_action["device.move"]["site"] == "waw"
        assert by_action["device.room"]["details"] == {"room": [None, "Wawel"]}
        assert by_action["job.create"]["details"]["kind"] == "collect_diagnostics"
        assert by_action["assets.import"]["details"]["added"] == {"count": 1, "first": ["X50-1"]}
        assert by_action["ticket.fill"]["details"] == {"contract_number": "C-9", "force": True}
        assert by_action["ticket.close"]["details"] == {"status": "closed"}
        moments = [datetime.fromisoformat(e["at"]) for e in entries]
        assert moments == sorted(moments)
        assert all(m.tzinfo is not None for m in moments)
        # Secrets never reach the log: not the tokens, not the enrollment code.
        text = json.dumps(entries)
        for secret in (admin, viewer["token"], agent["token"], invite["code"]):
            assert secret not in text

        # The CLI shows the same log, through the running server.
        shown = await controller.cli("audit", "--json", "--after", "0")
        assert shown.status == 0, shown.err
        assert shown.json()["entries"] == entries
        table = await controller.cli("audit", "--action", "device")
        assert table.status == 0, table.err
        lines = table.out.splitlines()
        assert len(lines) == 3 and "device.move" in lines[1] and "device.room" in lines[2]
        assert "127.0.0.1" in lines[1] and "ops" in lines[1]

        # Viewers may not read it; nobody may change it.
        viewer2 = await _send(http, "POST", f"{api}/tokens", admin, {"role": "viewer"})
        async with http.get(f"{api}/audit", headers=bearer(viewer2["token"])) as response:
            assert response.status == 403
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            async with http.request(method, f"{api}/audit", headers=bearer(admin)) as response:
                assert response.status == 405, method


async def test_audit_entries_survive_a_crash_and_keep_their_ids(tmp_path: Path) -> None:
    """An action answered before kill -9 is in the log after restart; ids continue upward."""
    data = tmp_path / "data"
    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        admin = await controller.admin_token()
        await _send(http, "POST", f"{controller.url}/api/v1/sites", admin, {"id": "gdn"})
        await controller.kill()
    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        await _send(http, "POST", f"{controller.url}/api/v1/sites", admin, {"id": "poz"})
        page = await _get(http, f"{controller.url}/api/v1/audit", admin)
        assert [(e["id"], e["action"], e["target"]) for e in page["entries"]] == [
            (3, "site.add", "site:poz"),
            (2, "site.add", "site:gdn"),
            (1, "token.create", page["entries"][2]["target"]),
        ]


async def test_audit_filters_and_pages(tmp_path: Path) -> None:
    """Filters by action kind, actor, target, site and time; pages back and forward by id."""
    async with controller_process(tmp_path / "data") as controller, aiohttp.ClientSession() as http:
        api = f"{controller.url}/api/v1"
        admin = await controller.admin_token("ops")
        second = await _send(http, "POST", f"{api}/tokens", admin, {"role": "admin", "name": "b"})
        for site in ("s1", "s2", "s3", "s4", "s5"):
            await _send(http, "POST", f"{api}/sites", admin, {"id": site})
        await _send(http, "POST", f"{api}/invites", second["token"], {"site": "s2"})

        first_page = await _get(http, f"{api}/audit", admin, limit="3")
        ids = [e["id"] for e in first_page["entries"]]
        assert ids == [8, 7, 6] and first_page["more"] is True
        rest = await _get(http, f"{api}/audit", admin, limit="10", before="6")
        assert [e["id"] for e in rest["entries"]] == [5, 4, 3, 2, 1]
        assert rest["more"] is False
        forward = await _get(http, f"{api}/audit", admin, after="6")
        assert [e["id"] for e in forward["entries"]] == [7, 8]

        sites = await _get(http, f"{api}/audit", admin, action="site")
        assert [e["target"] for e in sites["entries"]] == [f"site:s{i}" for i in (5, 4, 3, 2, 1)]
        exact = await _get(http, f"{api}/audit", admin, action="site.add", target="site:s3")
        assert [e["id"] for e in exact["entries"]] == [5]
        none = await _get(http, f"{api}/audit", admin, action="sit")
        assert none["entries"] == []
        by_b = await _get(http, f"{api}/audit", admin, actor="b")
        assert [e["action"] for e in by_b["entries"]] == ["invite.create"]
        by_id = await _get(http, f"{api}/audit", admin, actor=second["id"])
        assert by_b == by_id
        at_s2 = await _get(http, f"{api}/audit", admin, site="s2")
        assert [e["action"] for e in at_s2["entries"]] == ["invite.create", "site.add"]
        moment = first_page["entries"][0]["at"]
        later = (datetime.fromisoformat(moment) + timedelta(seconds=1)).isoformat()
        until = await _get(http, f"{api}/audit", admin, to=later, **{"from": moment})
        assert until["entries"][0]["id"] == 8
        assert await _get(http, f"{api}/audit", admin, **{"from": later}) == {
            "entries": [],
            "more": False,
        }
        for query, field in (
            ({"from": "yesterday"}, "from"),
            ({"to": "2026-03-01T10:00"}, "to"),
            ({"limit": "0"}, "limit"),
            ({"before": "-1"}, "before"),
        ):
            async with http.get(f"{api}/audit", params=query, headers=bearer(admin)) as response:
                assert response.status == 400, query
                assert (await response.json())["error"]["field"] == field
        refused = await controller.cli("audit", "--from", "yesterday")
        assert refused.status == 1 and "from" in refused.err and "ISO 8601" in refused.err


async def test_cli_commands_without_a_server_are_audited_as_local(tmp_path: Path) -> None:
    """With no server running, CLI changes are recorded as the local user's, via the store."""
    data = str(tmp_path / "data")
    site = ("krk", "--name", "Kraków", "--timezone", "Europe/Warsaw")
    await in_process("controller", "site", "add", *site, "--data-dir", data)
    created = await in_process(
        "controller", "token", "create", "--role", "viewer", "--data-dir", data, "--json"
    )
    shown = await in_process("controller", "audit", "--data-dir", data, "--json")
    entries = shown.json()["entries"]
    assert [e["action"] for e in entries] == ["token.create", "site.add"]
    user = getpass.getuser()
    for entry in entries:
        assert entry["actor"] == {"name": user, "role": "admin", "token_id": None}
        assert entry["origin"]["via"] == "local_store" and entry["origin"]["user"] == user
    assert entries[1]["details"] == {"name": "Kraków", "timezone": "Europe/Warsaw"}
    assert created.json()["token"] not in shown.out
    table = await in_process("controller", "audit", "--data-dir", data)
    assert f"local, no server ({user})" in table.out


async def test_audit_entries_older_than_the_retention_are_dropped(tmp_path: Path) -> None:
    """With retention_days = 30, entries older than 30 days go at start; ids are not reused."""
    clock = SettableClock()
    data = tmp_path / "data"
    async with (
        running_controller(data, clock=clock, audit_retention_days=30) as controller,
        aiohttp.ClientSession() as http,
    ):
        api = f"{controller.url}/api/v1"
        await _send(http, "POST", f"{api}/sites", controller.admin_token, {"id": "old"})
        clock.now += timedelta(days=20)
        await _send(http, "POST", f"{api}/sites", controller.admin_token, {"id": "mid"})
        clock.now += timedelta(days=11)
        # The hourly pass, run now rather than waited for.
        assert controller.core.audit.prune() == 1
        page = await _get(http, f"{api}/audit", controller.admin_token)
        assert [e["target"] for e in page["entries"]] == ["site:mid"]
    clock.now += timedelta(days=20)
    async with (
        running_controller(data, clock=clock, audit_retention_days=30) as controller,
        aiohttp.ClientSession() as http,
    ):
        api = f"{controller.url}/api/v1"
        page = await _get(http, f"{api}/audit", controller.admin_token)
        assert page["entries"] == []  # dropped at start
        await _send(http, "POST", f"{api}/sites", controller.admin_token, {"id": "new"})
        page = await _get(http, f"{api}/audit", controller.admin_token)
        assert [(e["id"], e["target"]) for e in page["entries"]] == [(3, "site:new")]
