"""Admin sessions the agents report: kept per unit, shown on the device page, and a new one
from outside the site's admin networks told once (audit log, metric, security webhook)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from dashboard.dashboard_testkit import SESSION_COOKIE, http_sign_in
from testkit.waiting import wait_until
from tickets.conftest import WEBHOOK_SECRET, WebhookPeer, _receiver

from polyfleet.controller.config import config_from_mapping
from polyfleet.controller.settings.security import security_webhook
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.errors import ConfigError
from polyfleet.shared.schema import PROTOCOL_VERSION

SERIAL = "SESSX5001"
START = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
OWN = {"key": "a1", "user": "admin", "role": "ADMIN", "address": "127.0.0.1", "kind": "web"}
INSIDE = {"key": "b2", "user": "anna", "role": "ADMIN", "address": "10.20.1.5", "kind": "web"}
OUTSIDE = {
    "key": "c3",
    "user": "eve\x1b[2J\u202e",
    "role": "ADMIN",
    "address": "198.51.100.7",
    "kind": "ssh",
}


def session(fields: dict[str, str], *, agent: bool = False) -> dict[str, Any]:
    return {**fields, "since": START.isoformat(), "agent": agent}


def report(number: int, sessions: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "id": f"sessions-report-{number:04d}",
        "snapshot": {
            "serial": SERIAL,
            "model": "studio_x50",
            "firmware": {"version": "4.2.2", "build": "408037"},
            "provider": "teams",
            "health": {"state": "ok", "problems": []},
            "collected_at": (START + timedelta(minutes=number)).isoformat(),
            "via": "rest",
            "sessions": sessions,
        },
    }


@dataclass
class World:
    controller: RunningController
    http: aiohttp.ClientSession
    agent: dict[str, str]
    security: WebhookPeer

    async def send(self, *reports: dict[str, Any]) -> tuple[int, Any]:
        body = {"protocol_version": PROTOCOL_VERSION, "reports": list(reports)}
        url = self.controller.url + "/api/v1/agent/reports"
        async with self.http.post(url, json=body, headers=self.agent) as answer:
            result = answer.status, await answer.json()
        await self.controller.core.bus.drain()
        return result

    async def get(self, path: str, **headers: str) -> str:
        merged = {**self.controller.admin_headers, **headers}
        async with self.http.get(self.controller.url + path, headers=merged) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.text()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """A controller whose site ``krk`` signs in to its units from 10.20.0.0/16, one agent,
    and a receiver of its ``[security_webhook]``."""
    receiver = _receiver("/security")
    security = await anext(receiver)
    sections = {"security_webhook": {"url": security.url, "secret": WEBHOOK_SECRET}}
    try:
        async with running_controller(
            tmp_path_factory.mktemp("sessions"), sections=sections
        ) as controller:
            credential = await controller.enroll("krk")
            await controller.core.inventory.update_site("krk", admin_networks=["10.20.0.0/16"])
            async with aiohttp.ClientSession() as http:
                agent = {"Authorization": f"Bearer {credential.token}"}
                world = World(controller=controller, http=http, agent=agent, security=security)
                status, _ = await world.send(report(0, [session(OWN, agent=True)]))
                assert status == 200
                yield world
    finally:
        await receiver.aclose()


async def audit_entries(world: World) -> list[dict[str, Any]]:
    text = await world.get("/api/v1/audit?action=admin_session")
    entries: list[dict[str, Any]] = json.loads(text)["entries"]
    return entries


@pytest.mark.asyncio(loop_scope="module")
async def test_a_new_session_from_outside_is_audited_and_counted_once(world: World) -> None:
    """A session from outside the admin networks is one audit entry, one count and one signed
    webhook post, however many reports list it; the agent's own and an admin network's are
    no event."""
    sessions = [session(OWN, agent=True), session(INSIDE), session(OUTSIDE)]
    assert (await world.send(report(1, sessions)))[0] == 200
    assert (await world.send(report(2, sessions)))[0] == 200
    [entry] = await audit_entries(world)
    assert (entry["action"], entry["target"], entry["site"]) == (
        "admin_session.unexpected",
        f"device:{SERIAL}",
        "krk",
    )
    details = entry["details"]
    assert (details["address"], details["kind"], details["admin_networks"]) == (
        "198.51.100.7",
        "ssh",
        ["10.20.0.0/16"],
    )
    # Reported text is marked where it enters: no escape reaches a log reader's terminal.
    assert details["user"] == "eve\N{REPLACEMENT CHARACTER}[2J\N{REPLACEMENT CHARACTER}"
    metrics = await world.get("/metrics")
    assert 'polyfleet_admin_sessions_unexpected_total{site="krk"} 1.0' in metrics
    assert 'polyfleet_admin_sessions_open{kind="ssh",site="krk"} 1.0' in metrics
    assert 'polyfleet_admin_sessions_open{kind="web",site="krk"} 1.0' in metrics
    await wait_until(lambda: bool(world.security.received), what="the security webhook")
    [posted] = world.security.received
    assert (posted["event"], posted["site"], posted["serial"]) == (
        "admin_session.unexpected",
        "krk",
        SERIAL,
    )
    assert posted["session"] == details
    assert world.security.bad_signatures == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_the_device_page_shows_other_admins_in_site_time_in_both_languages(
    world: World,
) -> None:
    """The device page lists the other admins' sessions (user, address, type, since in the
    site's time), marks one from outside, and leaves the agent's own out; in Polish too."""
    sessions = [session(OWN, agent=True), session(INSIDE), session(OUTSIDE)]
    await world.send(report(3, sessions))
    url = world.controller.url
    cookie = await http_sign_in(world.http, url, world.controller.admin_token)
    cookies = {SESSION_COOKIE: cookie}
    pages = {}
    for language in ("en", "pl"):
        async with world.http.get(
            f"{url}/devices/{SERIAL}", cookies=cookies, headers={"Accept-Language": language}
        ) as answer:
            assert answer.status == 200
            pages[language] = await answer.text()
    page = pages["en"]
    block = page[page.index('id="admin-sessions"') :]
    block = block[: block.index("</section>")]
    assert "anna" in block and "10.20.1.5" in block and "198.51.100.7" in block
    assert "127.0.0.1" not in block, "the agent's own session is not shown"
    assert block.count("outside the admin networks") == 1
    assert "web interface" in block and "SSH" in block
    # 08:00 UTC is 09:00 in Kraków in December.
    assert "2026-12-07 09:00 +01:00" in block
    assert "\x1b" not in page and "\u202e" not in page
    polish = pages["pl"]
    assert "Sesje administracyjne" in polish and "spoza sieci administracyjnych" in polish


@pytest.mark.asyncio(loop_scope="module")
async def test_the_api_lists_other_admins_sessions_without_their_ids(world: World) -> None:
    """``GET /api/v1/devices/{serial}/sessions`` gives user, address, kind, since and the
    outside flag of other admins' sessions, never a session id; an unknown serial is 404."""
    sessions = [session(OWN, agent=True), session(INSIDE), session(OUTSIDE)]
    await world.send(report(4, sessions))
    answer = json.loads(await world.get(f"/api/v1/devices/{SERIAL}/sessions"))
    assert (answer["serial"], answer["read"]) == (SERIAL, True)
    listed = {s["address"]: s for s in answer["sessions"]}
    assert sorted(listed) == ["10.20.1.5", "198.51.100.7"], "the agent's own is left out"
    inside, outside = listed["10.20.1.5"], listed["198.51.100.7"]
    assert (inside["user"], inside["kind"], inside["outside_admin_networks"]) == (
        "anna",
        "web",
        False,
    )
    assert (outside["kind"], outside["outside_admin_networks"]) == ("ssh", True)
    assert datetime.fromisoformat(inside["since"]) == START
    assert all("key" not in s and "id" not in s for s in answer["sessions"])
    assert '"b2"' not in json.dumps(answer) and '"c3"' not in json.dumps(answer)
    url = f"{world.controller.url}/api/v1/devices/NOSUCH1/sessions"
    async with world.http.get(url, headers=world.controller.admin_headers) as missing:
        assert missing.status == 404
        assert (await missing.json())["error"]["field"] == "serial"


@pytest.mark.asyncio(loop_scope="module")
async def test_ended_sessions_leave_and_a_late_older_reading_brings_none_back(
    world: World,
) -> None:
    """A reading without a session drops it; a late resend of an older reading brings
    nothing back; a session from an admin network is never an event."""
    await world.send(report(10, [session(OWN, agent=True)]))
    assert world.controller.core.admin_sessions.of(SERIAL) == []
    await world.send(report(9, [session(OWN, agent=True), session(INSIDE)]))
    assert world.controller.core.admin_sessions.of(SERIAL) == []
    await world.send(report(11, [session(INSIDE)]))
    assert [s["user"] for s in world.controller.core.admin_sessions.of(SERIAL)] == ["anna"]
    assert len(await audit_entries(world)) == 1
    assert len(world.security.received) == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_oversized_or_odd_session_lists_are_refused_by_name(world: World) -> None:
    """More sessions than a unit could list, an over-long user or a made-up kind are refused
    with the field named; nothing of the batch is stored."""
    many = [session({**INSIDE, "key": f"k{n}"}) for n in range(65)]
    long_user = [session({**INSIDE, "user": "x" * 129})]
    odd_kind = [session({**INSIDE, "kind": "telnet"})]
    for sessions, field in (
        (many, "reports.0.snapshot.sessions"),
        (long_user, "reports.0.snapshot.sessions.0.user"),
        (odd_kind, "reports.0.snapshot.sessions.0.kind"),
    ):
        status, body = await world.send(report(20, sessions))
        assert status == 422, body
        assert body["error"]["field"] == field


def test_a_security_webhook_without_a_secret_is_refused_by_name() -> None:
    """``[security_webhook]`` needs a secret to sign with: the error names the key."""
    raw = {"security_webhook": {"url": "https://soc.example.pl/hook"}}
    with pytest.raises(ConfigError) as refused:
        config_from_mapping(raw, source=Path("controller.toml"))
    assert "security_webhook.secret" in str(refused.value)
    config = config_from_mapping(
        {"security_webhook": {"url": "https://soc.example.pl/hook", "secret": "s3cret-value"}}
    )
    settings = security_webhook(config.sections)
    assert settings is not None and settings.url == "https://soc.example.pl/hook"
    assert "s3cret-value" not in repr(settings)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_unit_whose_sessions_were_never_read_says_so(world: World) -> None:
    """A unit reported without sessions (an older agent, a read over SSH) is not shown as
    free of other admins: its page says the sessions were not read."""
    other = report(30, None)
    other["snapshot"]["serial"] = "SESSX5002"
    assert (await world.send(other))[0] == 200
    cookie = await http_sign_in(world.http, world.controller.url, world.controller.admin_token)
    async with world.http.get(
        f"{world.controller.url}/devices/SESSX5002", cookies={SESSION_COOKIE: cookie}
    ) as answer:
        page = await answer.text()
    assert "admin sessions have not been read" in page
    assert "No other admin is signed in" not in page
