"""Tokens have a lifecycle (expiry, last use) and guessing is rate-limited per client address."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from access_testkit import admin_at_controller, controller_process
from testkit.clients import client_from
from testkit.processes import controller_cli
from testkit.reports import bearer
from testkit.waiting import wait_until

from polyfleet.controller.web.security import SIGNIN_COOKIE
from polyfleet.shared.schema import PROTOCOL_VERSION

LIMITS = "[server]\nauth_failures_per_minute = 4\nenroll_attempts_per_minute = 3\n"


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = bearer(token) if token is not None else {}
    async with http.request(method, url, json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_an_expired_token_is_refused_in_words_and_listed_as_expired(tmp_path: Path) -> None:
    """A token past its expiry gets 401 naming the expiry; the list shows it expired."""
    async with admin_at_controller(tmp_path / "data") as (controller, http, api, ops):
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        status, short, _ = await _call(
            http,
            "POST",
            f"{api}/tokens",
            ops,
            {"role": "viewer", "name": "wall", "expires_at": soon},
        )
        assert status == 201 and short["expires_at"] == soon and short["expired"] is False
        assert (await _call(http, "GET", f"{api}/devices", short["token"]))[0] == 200

        async def refused() -> Any:
            status, answer, _ = await _call(http, "GET", f"{api}/devices", short["token"])
            return answer if status == 401 else None

        answer = await wait_until(refused, timeout=30)
        message = answer["error"]["message"]
        assert f"token {short['id']} expired at {soon}" in message
        assert short["token"] not in message
        listed = await controller.cli("token", "list", "--json")
        assert listed.status == 0, listed.err
        (wall,) = [t for t in listed.json()["tokens"] if t["id"] == short["id"]]
        assert wall["expired"] is True and wall["expires_at"] == soon
        table = await controller.cli("token", "list")
        assert re.search(rf"{short['id']} +viewer .* \(expired\) +wall", table.out), table.out

        # An expiry that has passed already is refused, by the API and by the CLI.
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        status, answer, _ = await _call(
            http, "POST", f"{api}/tokens", ops, {"role": "viewer", "expires_at": past}
        )
        assert status == 422 and answer["error"]["field"] == "expires_at"
        assert "not in the future" in answer["error"]["message"]
        done = await controller.cli(
            "token", "create", "--role", "viewer", "--expires", "2001-01-01", "--json"
        )
        assert done.status != 0 and "not in the future" in done.json()["error"]["message"]
        done = await controller.cli("token", "create", "--role", "viewer", "--expires", "soon")
        assert done.status == 2 and "--expires 'soon'" in done.err


@pytest.mark.expected_seconds(15)
async def test_expiry_forms_of_the_cli_and_last_use_survive_a_restart(tmp_path: Path) -> None:
    """--expires takes 90d, a date or a moment; a token's last use is kept across restarts."""
    data = tmp_path / "data"
    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        ops = await controller.admin_token("ops")
        before = datetime.now(UTC)
        made = {}
        for form in ("90d", "2099-03-31", "2099-03-31T18:00:00+02:00"):
            done = await controller.cli(
                "token", "create", "--role", "viewer", "--name", form, "--expires", form, "--json"
            )
            assert done.status == 0, done.err
            made[form] = datetime.fromisoformat(done.json()["expires_at"])
        assert timedelta(days=90) <= made["90d"] - before < timedelta(days=90, minutes=5)
        assert made["2099-03-31"] == datetime(2099, 4, 1, tzinfo=UTC)
        assert made["2099-03-31T18:00:00+02:00"] == datetime(2099, 3, 31, 16, tzinfo=UTC)
        listed = (await controller.cli("token", "list", "--json")).json()["tokens"]
        assert all(t["last_used_at"] is None for t in listed if t["role"] == "viewer")

        assert (await _call(http, "GET", f"{controller.url}/api/v1/devices", ops))[0] == 200
        listed = (await controller.cli("token", "list", "--json")).json()["tokens"]
        (used,) = [t for t in listed if t["name"] == "ops"]
        assert used["last_used_at"] is not None
        assert datetime.fromisoformat(used["last_used_at"]) >= before
    async with controller_process(data) as controller:
        listed = (await controller.cli("token", "list", "--json")).json()["tokens"]
        (again,) = [t for t in listed if t["name"] == "ops"]
        assert again["last_used_at"] == used["last_used_at"]


async def test_an_expired_admin_token_does_not_count_as_another_admin(tmp_path: Path) -> None:
    """The last working admin token stays, even beside an admin token that has expired."""
    async with admin_at_controller(tmp_path / "data") as (_controller, http, api, ops):
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        status, brief, _ = await _call(
            http, "POST", f"{api}/tokens", ops, {"role": "admin", "expires_at": soon}
        )
        assert status == 201
        await asyncio.sleep(1.5)  # waits-for: the second admin token to expire
        ops_id = [t["id"] for t in (await _call(http, "GET", f"{api}/tokens", ops))[1]["tokens"]]
        ops_id.remove(brief["id"])
        status, answer, _ = await _call(http, "DELETE", f"{api}/tokens/{ops_id[0]}", ops)
        assert status == 409 and answer["error"]["code"] == "last_admin_token"


@pytest.mark.expected_seconds(15)
async def test_failed_tokens_are_limited_per_client_address(tmp_path: Path) -> None:
    """Past the limit an address gets 429 with Retry-After for further failures; a good token
    from it gets through at once, and other addresses are not slowed."""
    async with (
        controller_process(tmp_path / "data", LIMITS) as controller,
        client_from("127.0.0.2") as guesser,
        client_from("127.0.0.3") as neighbour,
    ):
        url = f"{controller.url}/api/v1/devices"
        ops = await controller.admin_token("ops")
        for i in range(4):
            status, answer, _ = await _call(guesser, "GET", url, f"pft_guess{i}")
            assert status == 401, answer
        status, answer, headers = await _call(guesser, "GET", url, "pft_guess5")
        assert status == 429 and answer["error"]["code"] == "rate_limited"
        assert "too many failed credentials from 127.0.0.2" in answer["error"]["message"]
        assert 1 <= int(headers["Retry-After"]) <= 60
        # Only failures are limited: a good token from that address gets through at once.
        assert (await _call(guesser, "GET", url, ops))[0] == 200
        assert (await _call(neighbour, "GET", url, ops))[0] == 200
        assert (await _call(guesser, "GET", url, "pft_guess6"))[0] == 429
        # The bucket refills evenly: 15 s buys one more failed attempt at 4 a minute.
        await asyncio.sleep(int(headers["Retry-After"]))  # waits-for: the promised retry time
        assert (await _call(guesser, "GET", url, "pft_guess7"))[0] == 401
        async with neighbour.get(f"{controller.url}/metrics", headers=bearer(ops)) as response:
            metrics = await response.text()
        assert re.search(r'^polyfleet_rate_limited_total\{kind="auth"\} 2\.0$', metrics, re.M)
        assert re.search(
            r'^polyfleet_auth_attempts_counted_total\{kind="auth"\} 5\.0$', metrics, re.M
        )


@pytest.mark.expected_seconds(15)
async def test_enrollment_attempts_are_limited_per_client_address(tmp_path: Path) -> None:
    """Guessing codes is cut off at the limit, a good code included; another address enrolls
    as many agents as it has codes."""
    async with (
        controller_process(tmp_path / "data", LIMITS) as controller,
        client_from("127.0.0.2") as guesser,
        client_from("127.0.0.3") as site,
    ):
        assert (
            await controller.cli(
                "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw"
            )
        ).status == 0
        invite = await controller.cli("agent", "invite", "--site", "krk", "--json")
        assert invite.status == 0, invite.err
        code = invite.json()["code"]
        url = f"{controller.url}/api/v1/agent/enroll"

        def body(code: str) -> dict[str, Any]:
            return {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "a"}

        for _ in range(3):
            status, answer, _ = await _call(guesser, "POST", url, None, body("AAAA-BBBB"))
            assert status == 403 and answer["error"]["code"] == "enrollment_refused"
        status, answer, headers = await _call(guesser, "POST", url, None, body(code))
        assert status == 429
        assert "too many failed enrollment attempts" in answer["error"]["message"]
        assert "Retry-After" in headers
        status, answer, _ = await _call(site, "POST", url, None, body(code))
        assert status == 200 and answer["site_id"] == "krk"
        # Good codes do not count: many agents may enroll through one address at once.
        for _ in range(4):
            invite = await controller.cli("agent", "invite", "--site", "krk", "--json")
            status, answer, _ = await _call(site, "POST", url, None, body(invite.json()["code"]))
            assert status == 200, answer


async def test_dashboard_sign_in_shares_the_limit_on_failed_tokens(tmp_path: Path) -> None:
    """Wrong tokens typed into the sign-in form count like wrong bearer tokens; past the limit a
    wrong one gets 429 in words, while the right one still signs in."""
    async with (
        controller_process(tmp_path / "data", LIMITS) as controller,
        client_from("127.0.0.2") as browser,
    ):
        ops = await controller.admin_token("ops")

        async def sign_in(token: str) -> tuple[int, str]:
            async with browser.get(f"{controller.url}/signin") as page:
                form = await page.text()
                # Sent back by hand: a client jar keeps no Secure cookie over plain HTTP.
                cookies = "; ".join(f"{k}={v.value}" for k, v in page.cookies.items())
            found = re.search(r'name="nonce" value="([^"]+)"', form)
            assert found is not None, form
            data = {"nonce": found.group(1), "token": token, "next": "/"}
            async with browser.post(
                f"{controller.url}/signin",
                data=data,
                headers={"Cookie": cookies},
                allow_redirects=False,
            ) as response:
                return response.status, await response.text()

        for i in range(4):
            status, page = await sign_in(f"pft_wrong{i}")
            assert status == 401 and "Unknown or revoked token." in page
        status, page = await sign_in("pft_wrong5")
        assert status == 429
        assert re.search(r"Too many failed sign-ins from this address; try again in \d+ s\.", page)
        assert (await sign_in(ops))[0] == 303


async def test_a_one_time_sign_in_link_from_the_cli_signs_in_once(tmp_path: Path) -> None:
    """`token link ID` prints a dashboard URL that signs in as that token once; with no
    server running it names the configured listener; an unknown id is refused."""
    data = tmp_path / "data"
    async with controller_process(data) as controller, aiohttp.ClientSession() as http:
        made = await controller.cli(
            "token", "create", "--role", "viewer", "--name", "wall", "--json"
        )
        viewer = made.json()
        done = await controller.cli("token", "link", viewer["id"])
        assert done.status == 0, done.err
        url = done.out.strip()
        assert url.startswith(f"{controller.url}/signin/link?code="), url
        assert "works once" in done.err and url not in done.err
        async with http.get(url) as response:
            page = await response.text()
            nonce = response.cookies[SIGNIN_COOKIE].value
        assert "This one-time link signs you in as wall (viewer)." in page
        code = url.split("code=", 1)[1]
        form = {"nonce": nonce, "code": code}
        for expected in (303, 401):
            async with http.post(
                f"{controller.url}/signin/link",
                data=form,
                cookies={SIGNIN_COOKIE: nonce},
                allow_redirects=False,
            ) as response:
                assert response.status == expected, await response.text()
        refused = await controller.cli("token", "link", "nosuchtoken", "--json")
        assert refused.status != 0 and refused.json()["error"]["code"] == "not_found"
        audit = (await controller.cli("audit", "--action", "signin_link", "--json")).json()
        assert [e["target"] for e in audit["entries"]] == [f"token:{viewer['id']}"]
    offline = await controller_cli(
        "token", "link", viewer["id"], "--data-dir", str(data), "--json", expect=None
    )
    assert offline.status == 0, offline.err
    assert offline.json()["url"].startswith("http://127.0.0.1:8080/signin/link?code=")
