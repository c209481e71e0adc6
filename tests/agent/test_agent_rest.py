"""The REST transport against a scripted HTTPS server: odd firmware answers and hostile bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from polyfleet.agent.transport.rest import FeatureAbsent, RestClient
from polyfleet.shared.errors import (
    AuthenticationFailed,
    DeviceProtocolError,
    DeviceWedged,
    LockedOut,
)
from polyfleet.simulator.identity import make_tls_identity

Handler = Callable[[web.Request], web.StreamResponse]


@dataclass
class Scripted:
    """An HTTPS server whose answer per path the test sets; it records what it was sent."""

    port: int
    fingerprint: str
    routes: dict[tuple[str, str], Handler]
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[Scripted]:
    identity = make_tls_identity(tmp_path, "scripted", "127.0.0.1")
    server = Scripted(port=0, fingerprint=identity.fingerprint, routes={})

    async def handle(request: web.Request) -> web.StreamResponse:
        server.seen.append((request.method, request.path, dict(request.headers)))
        handler = server.routes.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="<html>404</html>", content_type="text/html")
        return handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=identity.server_context())
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


@pytest.fixture
async def client(scripted: Scripted) -> AsyncIterator[RestClient]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield RestClient(
            "127.0.0.1", scripted.port, session=session, pin=scripted.fingerprint, timeout=5
        )


def answer(
    body: Any, status: int = 200, *, raw: str | None = None, ctype: str = "application/json"
) -> Handler:
    text = raw if raw is not None else json.dumps(body)
    return lambda _request: web.Response(status=status, text=text, content_type=ctype)


def login_ok(xsrf: bool = False) -> Handler:
    def handler(_request: web.Request) -> web.Response:
        response = web.json_response(
            {
                "success": True,
                "loginStatus": {"loginResult": "NOLOCKOUT"},
                "session": {"sessionId": "PS1"},
            }
        )
        response.set_cookie("session_id", "PS1")
        if xsrf:
            response.set_cookie("XSRF-TOKEN", "tok-xyz")
        return response

    return handler


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (
            answer({"success": False, "loginStatus": {"loginResult": "NOLOCKOUT"}}),
            AuthenticationFailed,
        ),
        (
            answer(None, 403, raw="<html><body>Forbidden</body></html>\r\n", ctype="text/html"),
            AuthenticationFailed,
        ),
        (
            answer(
                {
                    "success": False,
                    "reason": "SessionPortLockout",
                    "loginStatus": {"loginResult": "LOCKOUT"},
                },
                403,
            ),
            LockedOut,
        ),
        (answer({"success": False, "reason": "SessionRequestInvalid"}, 400), AuthenticationFailed),
        (answer({"success": False, "reason": "SessionPortLockout"}, 400), LockedOut),
        (answer({"success": False, "reason": "SessionLimitReached"}, 403), DeviceProtocolError),
    ],
)
async def test_login_refusals(
    scripted: Scripted, client: RestClient, handler: Handler, error: type[Exception]
) -> None:
    """3.x 400 reasons, 4.x 403s, HTML 403 and 200-with-success-false are told apart."""
    scripted.routes[("POST", "/rest/session")] = handler
    with pytest.raises(error):
        await client.login("admin", "pw")


async def test_session_already_active_counts_as_logged_in(
    scripted: Scripted, client: RestClient
) -> None:
    """3.x SessionAlreadyActive means a session exists: carry on and log out at the end."""
    scripted.routes[("POST", "/rest/session")] = answer(
        {"success": False, "reason": "SessionAlreadyActive"}, 400
    )
    scripted.routes[("DELETE", "/rest/session")] = answer({"success": True})
    async with client.logged_in_session("admin", "pw"):
        pass
    assert ("DELETE", "/rest/session") in [(m, p) for m, p, _ in scripted.seen]


async def test_xsrf_token_echoed_and_odd_bodies_read(
    scripted: Scripted, client: RestClient
) -> None:
    """After a 4.6.2 login every call sends the XSRF cookie and header; scalars and CRLF decode."""
    scripted.routes[("POST", "/rest/session")] = login_ok(xsrf=True)
    scripted.routes[("GET", "/rest/audio/volume")] = answer(None, raw="39")
    scripted.routes[("GET", "/rest/audio/muted")] = answer(None, raw="true\r\n")
    scripted.routes[("GET", "/rest/conferences/contentstatus")] = answer(None, raw="CONTENT_IDLE")
    scripted.routes[("GET", "/rest/system/status")] = answer(None, raw='[{"name": "x"}]\r\n')
    await client.login("admin", "pw")
    assert await client.get("/rest/audio/volume") == 39
    assert await client.get("/rest/audio/muted") is True
    assert await client.get("/rest/conferences/contentstatus") == "CONTENT_IDLE"
    assert await client.get("/rest/system/status") == [{"name": "x"}]
    _method, _path, headers = scripted.seen[-1]
    assert headers["x-xsrf-token"] == "tok-xyz"
    assert "XSRF-TOKEN=tok-xyz" in headers["Cookie"] and "session_id=PS1" in headers["Cookie"]


async def test_hostile_bodies_are_refused(scripted: Scripted, client: RestClient) -> None:
    """Oversized, deeply nested, HTML and binary answers raise a protocol error, not a crash."""
    scripted.routes[("GET", "/big")] = answer(None, raw="[" + "1," * 1_500_000 + "1]")
    scripted.routes[("GET", "/deep")] = answer(None, raw="[" * 5000 + "]" * 5000)
    scripted.routes[("GET", "/html")] = answer(None, raw="<html>hi</html>", ctype="text/html")
    for path in ("/big", "/deep", "/html"):
        with pytest.raises(DeviceProtocolError):
            await client.get(path)


async def test_404_is_feature_absent_and_5xx_is_wedged(
    scripted: Scripted, client: RestClient
) -> None:
    """404 means the firmware lacks the call; one 5xx is retried, repeated 5xx is a wedged unit."""
    with pytest.raises(FeatureAbsent):
        await client.get("/rest/system/mode")
    scripted.routes[("GET", "/down")] = answer(None, 500, raw="<html>500</html>", ctype="text/html")
    with pytest.raises(DeviceWedged):
        await client.get("/down")
    flaky = iter([500, 200])
    scripted.routes[("GET", "/flaky")] = lambda _r: web.json_response({"ok": 1}, status=next(flaky))
    assert await client.get("/flaky") == {"ok": 1}
