"""Who gets in: sign-in, the session cookie, CSRF, one-time links, languages, headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from testkit.clocks import SettableClock

from dashboard.dashboard_testkit import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    cookie_value,
    form_field,
    http_sign_in,
)
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.controller.web.routes import STATIC_DIR


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


@pytest.fixture
async def controller(tmp_path: Path, clock: SettableClock) -> AsyncIterator[RunningController]:
    sections = {"web": {"session_ttl_s": 3600, "signin_link_ttl_s": 300}}
    async with running_controller(tmp_path / "data", clock=clock, sections=sections) as running:
        yield running


async def signin_nonce(http: aiohttp.ClientSession, url: str) -> str:
    """The sign-in cookie the sign-in page at ``url`` sets, which its form must carry."""
    async with http.get(url + "/signin") as response:
        return cookie_value(response, SIGNIN_COOKIE)


def post_signin_form(
    http: aiohttp.ClientSession, url: str, nonce: str, form: dict[str, str]
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """POST a sign-in ``form`` to ``url`` with the sign-in cookie ``nonce``; the redirect
    it answers is not followed."""
    return http.post(url, data=form, cookies={SIGNIN_COOKIE: nonce}, allow_redirects=False)


async def test_session_cookie_is_secure_http_only_same_site_with_an_expiry(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Signing in sets a Secure, HttpOnly, SameSite=Lax cookie that expires with the session."""
    nonce = await signin_nonce(http, controller.url)
    async with post_signin_form(
        http,
        controller.url + "/signin",
        nonce,
        {"token": controller.admin_token, "nonce": nonce, "next": "/devices?site=krk"},
    ) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/devices?site=krk"
        header = next(
            value
            for value in response.headers.getall("Set-Cookie")
            if value.startswith(SESSION_COOKIE + "=")
        )
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"secure", "httponly", "path", "max-age"} <= attributes
    assert "SameSite=Lax" in header and "Max-Age=3600" in header
    assert controller.admin_token not in header


async def test_pages_send_a_browser_without_a_session_to_sign_in(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Without a session every page redirects to the sign-in form, keeping where it was going."""
    async with http.get(controller.url + "/devices?site=krk", allow_redirects=False) as response:
        assert response.status == 303
        location = urlsplit(response.headers["Location"])
        assert location.path == "/signin"
        assert parse_qs(location.query) == {"next": ["/devices?site=krk"]}
    async with http.get(
        controller.url + "/", headers={"HX-Request": "true"}, allow_redirects=False
    ) as response:
        assert response.status == 401
        assert response.headers["HX-Redirect"].startswith("/signin")


async def test_sign_in_refuses_unknown_tokens_agent_credentials_and_a_forged_form(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A wrong token, an agent's credential and a form without its nonce sign nobody in."""
    agent = await controller.enroll("krk")
    nonce = await signin_nonce(http, controller.url)
    for token, status, text in (
        ("pft_not-a-token", 401, "Unknown or revoked token."),
        (agent.token, 401, "Agent credentials cannot sign in to the dashboard."),
    ):
        async with post_signin_form(
            http, controller.url + "/signin", nonce, {"token": token, "nonce": nonce}
        ) as response:
            assert response.status == status
            body = await response.text()
            assert text in body
            assert SESSION_COOKIE not in response.cookies
            assert token not in body
    async with post_signin_form(
        http,
        controller.url + "/signin",
        nonce,
        {"token": controller.admin_token, "nonce": "forged"},
    ) as response:
        assert response.status == 403
        assert SESSION_COOKIE not in response.cookies


async def test_a_form_without_the_sessions_csrf_token_or_from_another_site_is_refused(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A POST needs the session's CSRF token and a same-origin Origin; the session survives."""
    cookie = await http_sign_in(http, controller.url, controller.admin_token)
    cookies = {SESSION_COOKIE: cookie}
    async with http.get(controller.url + "/", cookies=cookies) as response:
        csrf = form_field(await response.text(), "csrf")
    for data, headers in (
        ({}, {}),
        ({"csrf": "wrong"}, {}),
        ({"csrf": csrf}, {"Origin": "http://evil.example"}),
    ):
        async with http.post(
            controller.url + "/signout",
            data=data,
            headers=headers,
            cookies=cookies,
            allow_redirects=False,
        ) as response:
            assert response.status == 403, data
    async with http.get(controller.url + "/", cookies=cookies, allow_redirects=False) as response:
        assert response.status == 200
    async with http.post(
        controller.url + "/signout",
        data={"csrf": csrf},
        headers={"Origin": controller.url},
        cookies=cookies,
        allow_redirects=False,
    ) as response:
        assert response.status == 303
    async with http.get(controller.url + "/", cookies=cookies, allow_redirects=False) as response:
        assert response.status == 303, "signed out: the old cookie opens nothing"


async def test_a_session_ends_at_its_expiry_and_when_its_token_is_revoked(
    controller: RunningController, http: aiohttp.ClientSession, clock: SettableClock
) -> None:
    """The cookie stops working at the session's fixed expiry, and at once on token revoke."""
    cookie = await http_sign_in(http, controller.url, controller.admin_token)
    clock.now += timedelta(seconds=3599)
    async with http.get(
        controller.url + "/", cookies={SESSION_COOKIE: cookie}, allow_redirects=False
    ) as response:
        assert response.status == 200
    clock.now += timedelta(seconds=2)
    async with http.get(
        controller.url + "/", cookies={SESSION_COOKIE: cookie}, allow_redirects=False
    ) as response:
        assert response.status == 303
    viewer, record = await controller.core.access.create_token(Role.VIEWER, "wall")
    cookie = await http_sign_in(http, controller.url, viewer)
    assert await controller.core.access.revoke_token(record["id"])
    async with http.get(
        controller.url + "/", cookies={SESSION_COOKIE: cookie}, allow_redirects=False
    ) as response:
        assert response.status == 303


async def test_a_one_time_link_signs_in_once_within_minutes_and_never_holds_the_token(
    controller: RunningController, http: aiohttp.ClientSession, clock: SettableClock
) -> None:
    """A link signs in by a form post, once; used or expired, it signs nobody in."""
    headers = controller.admin_headers
    tokens = await (await http.get(controller.url + "/api/v1/tokens", headers=headers)).json()
    token_id = tokens["tokens"][0]["id"]

    async def new_link() -> str:
        async with http.post(
            controller.url + "/api/v1/signin-links", json={"token_id": token_id}, headers=headers
        ) as response:
            assert response.status == 201
            body = await response.json()
        assert controller.admin_token not in body["path"]
        return str(body["path"])

    async def use(path: str) -> aiohttp.ClientResponse:
        async with http.get(controller.url + path) as response:
            page = await response.text()
            assert "test admin" in page, "the page says who the link signs in"
            nonce = cookie_value(response, SIGNIN_COOKIE)
        code = form_field(page, "code")
        return await http.post(
            controller.url + "/signin/link",
            data={"code": code, "nonce": nonce},
            cookies={SIGNIN_COOKIE: nonce},
            allow_redirects=False,
        )

    path = await new_link()
    async with http.get(controller.url + path) as response:
        assert response.status == 200, "looking at the link does not spend it"
    first = await use(path)
    assert first.status == 303 and SESSION_COOKIE in first.cookies
    again = await http.get(controller.url + path)
    assert again.status == 410
    expiring = await new_link()
    page = await (await http.get(controller.url + expiring)).text()
    clock.now += timedelta(seconds=301)
    nonce = await signin_nonce(http, controller.url)
    async with post_signin_form(
        http,
        controller.url + "/signin/link",
        nonce,
        {"code": form_field(page, "code"), "nonce": nonce},
    ) as response:
        assert response.status == 401
        assert "expired" in await response.text()
    async with http.post(
        controller.url + "/api/v1/signin-links", json={"token_id": "nope"}, headers=headers
    ) as response:
        assert response.status == 404


async def test_a_wall_screen_signs_in_with_a_viewer_token_and_sees_only_the_kiosk(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Kiosk sign-in refuses admin tokens; a kiosk session opens /kiosk and nothing else."""
    viewer, _ = await controller.core.access.create_token(Role.VIEWER, "wall")
    nonce = await signin_nonce(http, controller.url)
    form = {"nonce": nonce, "kiosk": "1"}
    async with post_signin_form(
        http, controller.url + "/signin", nonce, {**form, "token": controller.admin_token}
    ) as response:
        assert response.status == 401
        assert "viewer token" in await response.text()
    async with post_signin_form(
        http, controller.url + "/signin", nonce, {**form, "token": viewer}
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/kiosk"
        assert "Max-Age=2592000" in response.headers["Set-Cookie"] or any(
            "Max-Age=2592000" in value for value in response.headers.getall("Set-Cookie")
        )
        cookies = {SESSION_COOKIE: cookie_value(response, SESSION_COOKIE)}
    async with http.get(controller.url + "/kiosk", cookies=cookies) as response:
        assert response.status == 200
        page = await response.text()
        assert "<form" not in page, "a wall screen has no action, not even sign-out"
    async with http.get(
        controller.url + "/devices", cookies=cookies, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/kiosk"


async def test_pages_answer_in_polish_for_a_polish_browser(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Accept-Language pl gives Polish pages; en or none gives English ones."""
    async with http.get(
        controller.url + "/signin", headers={"Accept-Language": "pl-PL,pl;q=0.9,en;q=0.5"}
    ) as response:
        page = await response.text()
    assert '<html lang="pl"' in page and "Zaloguj się" in page
    cookie = await http_sign_in(http, controller.url, controller.admin_token)
    async with http.get(
        controller.url + "/",
        headers={"Accept-Language": "pl"},
        cookies={SESSION_COOKIE: cookie},
    ) as response:
        page = await response.text()
    assert "Przegląd" in page and "Overview" not in page
    async with http.get(
        controller.url + "/", headers={"Accept-Language": "en-US"}, cookies={SESSION_COOKIE: cookie}
    ) as response:
        assert '<html lang="en"' in await response.text()


async def test_pages_carry_security_headers_and_unknown_ones_answer_html(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Pages forbid framing and foreign scripts; a mistyped page is HTML, the API stays JSON."""
    async with http.get(controller.url + "/signin") as response:
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"
    async with http.get(
        controller.url + "/no/such/page", headers={"Accept": "text/html"}
    ) as response:
        assert response.status == 404
        assert response.content_type == "text/html"
        assert "There is no such page." in await response.text()
    async with http.get(controller.url + "/api/v1/devices") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    async with http.get(
        controller.url + "/api/v1/nope", headers={"Accept": "text/html"}
    ) as response:
        assert response.content_type == "application/json"


async def test_sign_in_never_sends_the_browser_to_another_site(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """``next`` pointing elsewhere (//host, https://host, backslashes) goes to / instead."""
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "devices"):
        nonce = await signin_nonce(http, controller.url)
        async with post_signin_form(
            http,
            controller.url + "/signin",
            nonce,
            {"token": controller.admin_token, "nonce": nonce, "next": target},
        ) as response:
            assert response.headers["Location"] == "/", target


async def test_static_files_ship_in_the_package_with_licence_and_version(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """htmx is served from the package with its licence; versioned addresses cache for long."""
    cookie = await http_sign_in(http, controller.url, controller.admin_token)
    async with http.get(controller.url + "/", cookies={SESSION_COOKIE: cookie}) as response:
        page = await response.text()
    script = re.search(r'src="(/static/vendor/htmx\.min\.js\?v=\w+)"', page)
    assert script is not None
    async with http.get(controller.url + script.group(1)) as response:
        assert response.status == 200
        assert "javascript" in response.content_type
        assert "immutable" in response.headers["Cache-Control"]
    readme = (STATIC_DIR / "vendor" / "README.md").read_text(encoding="utf-8")
    assert "htmx" in readme and "2.0.11" in readme
    async with http.get(controller.url + "/static/vendor/htmx.LICENSE") as response:
        assert "Zero-Clause BSD" in await response.text()
    async with http.get(controller.url + "/static/../app.py") as response:
        assert response.status == 404
