"""Malformed requests to every route of a running controller, on both stores: never a 500.

Routes come from the application's own router, so a route added later is covered without
naming it here. Each request carries one malformation (a path segment, a query value, a
header, a body) as raw bytes on its own connection, anonymous and with the credential the
route wants (an admin's bearer token and dashboard session, or an agent's token).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.http.spec import AGENTS, spec_of
from polyfleet.controller.keys import CORE
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.controller.web.security import SESSION_COOKIE, SIGNIN_COOKIE

#: Path segments in place of each route parameter (percent-encoded as sent).
HOSTILE_SEGMENTS = (
    "%00",
    "a%00b",
    "%ff%fe%c0%af",
    "%e2%80%ae%1b%5b2J",
    "..%2f..%2fetc",
    "x" * 3000,
)
#: Query values given to every query parameter a route names (and a few common ones).
HOSTILE_VALUES = ("%00", "%ff%fe", "", "9" * 400, "%1b%0d%0aX:%20y%e2%80%ae")
#: Query names the dashboard's pages read; the API's come from each handler's spec.
PAGE_QUERY = ("site", "page", "per_page", "sort", "order", "q", "days", "next", "code", "v")
#: Credential headers no client should send (each replaces the request's credentials).
HOSTILE_CREDENTIALS: tuple[bytes, ...] = (
    b"Authorization: Bearer \xff\xfe",
    b"Authorization: Bearer pft_" + b"A" * 6000,
    b"Authorization: \xc3\x28 \xe2\x80\xae",
    b"Cookie: " + SESSION_COOKIE.encode() + b"=\xff\xfe",
    b"Cookie: " + SESSION_COOKIE.encode() + b'="\\\xc5"; ' + SIGNIN_COOKIE.encode() + b"=\xe2\x80",
)
#: Other headers a handler or middleware reads, all at once (none that the parser refuses).
HOSTILE_HEADERS: tuple[bytes, ...] = (
    b"Accept-Language: \xff\xfe;q=\xc3",
    b"Origin: http://\xff\xfe",
    b"Range: bytes=\xff-",
    b"X-Forwarded-Proto: \xff",
    b"HX-Request: \xe2\x80\xae",
    b"If-None-Match: \xff",
)
#: Bodies for routes that take one (``CSRF`` becomes the session's form token).
HOSTILE_BODIES: tuple[tuple[bytes, bytes], ...] = (
    (b"application/json", b'{"name": "\xff\xfe", "code": "\xc3\x28", "id": "\xed\xa0\x80"}'),
    (b"application/json", b'{"name": "\\u0000\\u001b[2J", "id": "\\ud800", "site": "\\u202e"}'),
    (b"application/json", b'{"name": "' + b"x" * 100_000 + b'", "reports": [' + b"1," * 9 + b"1]}"),
    (b"application/json", b"\x00\xff"),
    (b"application/x-www-form-urlencoded", b"csrf=CSRF&token=\xff\xfe&name=%00&site=%ff&note=\x1b"),
    (b"application/x-www-form-urlencoded", b"csrf=%C5%BC&nonce=\xc3&next=%00&code=\xff"),
    (b"multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\n\xff"),
    (b"multipart/form-data; boundary=\xff", b"--\xff\r\n\r\n"),
    (b"text/csv", b"serial,model\r\n\xff\x00,\x1b\r\n"),
)
#: Requests aiohttp's parser refuses itself (400), before any route is found.
UNPARSABLE = (
    b"GET /\xff\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"a" * 9000 + b": 1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Route:
    method: str
    #: The path with ``{name}`` or ``{name:regex}`` placeholders.
    template: str
    params: tuple[str, ...]
    query: tuple[str, ...]
    for_agents: bool
    #: Served without a credential (the bearer check lets it by; a page may still want one).
    public: bool


def routes_of(app: web.Application) -> list[Route]:
    """Every route the application serves, with its parameters and the query it names."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("path") or info.get("formatter")
        if not isinstance(template, str):
            continue
        spec = spec_of(route.handler, route.method)
        found.append(
            Route(
                method=route.method,
                template=template,
                params=tuple(re.findall(r"\{(\w+)", template)),
                query=tuple(spec.query) if not spec.hidden else PAGE_QUERY,
                for_agents=spec.roles == AGENTS,
                public=not spec.roles,
            )
        )
    return found


def filled(route: Route, values: dict[str, str]) -> str:
    """The route's path with each parameter replaced (its own value, else ``x1``)."""
    return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: values.get(m.group(1), "x1"), route.template)


@dataclass(frozen=True)
class Probe:
    """One request as bytes, and what it was meant to try."""

    what: str
    raw: bytes


def probes(
    route: Route, known: dict[str, str], signed_in: list[bytes], csrf: str
) -> Iterator[Probe]:
    """The malformed requests for ``route``, signed in, and anonymous where an anonymous
    request gets further than the credential check (public routes) or tries a credential."""
    method = route.method
    plain = filled(route, known)
    # (what, path, headers, body, anonymous too)
    requests: list[tuple[str, str, list[bytes], bytes | None, bool]] = []
    if route.params:
        for segment in HOSTILE_SEGMENTS:
            path = filled(route, {name: segment for name in route.params})
            requests.append((f"path {segment[:20]}", path, signed_in, None, route.public))
    for value in HOSTILE_VALUES:
        query = "&".join(f"{name}={value}" for name in (*route.query, "site"))
        requests.append((f"query {value[:20]}", f"{plain}?{query}", signed_in, None, route.public))
    for credential in HOSTILE_CREDENTIALS:
        requests.append(
            (credential.decode(errors="replace")[:40], plain, [credential], None, False)
        )
    requests.append(("headers", plain, [*signed_in, *HOSTILE_HEADERS], None, True))
    if method in WRITES:
        for media, body in HOSTILE_BODIES:
            body = body.replace(b"CSRF", csrf.encode())
            what = f"{media.decode(errors='replace')} body {body[:30]!r}"
            headers = [*signed_in, b"Content-Type: " + media]
            requests.append((what, plain, headers, body, route.public))
    for what, path, headers, body, anonymous in requests:
        variants = [headers]
        if anonymous:
            variants.append([h for h in headers if h not in signed_in])
        for sent in variants:
            lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
            lines += [b"Accept: text/html,application/json", b"Origin: http://127.0.0.1"]
            lines += sent
            if body is not None:
                lines.append(b"Content-Length: " + str(len(body)).encode())
            lines.append(b"Connection: close")
            raw = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
            who = "signed in" if any(h in signed_in for h in sent) else "anonymous"
            yield Probe(f"{method} {route.template} {what} ({who})", raw)


async def status_of(url: str, raw: bytes, *, whole: bool = True) -> int:
    """Send ``raw`` on a new connection; the status of the answer (0 if none came).
    ``whole``: read the answer to its end (the request asked to close the connection)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        if whole:
            await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    return int(found.group(1)) if found else 0


@dataclass
class Target:
    """A running controller, the values its routes' parameters may name, and credentials."""

    controller: RunningController
    known: dict[str, str]
    agent: list[bytes]
    admin: list[bytes] = field(default_factory=list)
    cookie: str = ""
    csrf: str = ""

    async def sign_in(self) -> None:
        """(Again) an admin dashboard session, unless the last one still holds (a fuzzed
        sign-out may have ended it)."""
        sessions = self.controller.app[CORE].sessions
        if self.cookie and sessions.find(self.cookie) is not None:
            return
        self.cookie, session = await sessions.sign_in(self.controller.admin_token)
        self.admin = [
            f"Authorization: Bearer {self.controller.admin_token}".encode(),
            f"Cookie: {SESSION_COOKIE}={self.cookie}; {SIGNIN_COOKIE}=n0nce".encode(),
        ]
        self.csrf = session.csrf


@pytest.fixture(params=["embedded", "postgresql"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A controller with a site, an agent, a device and a dashboard session, on each store."""
    # The event stream ends after a moment (as it does after an hour in service), so each
    # probe of it gets its whole answer.
    overrides: dict[str, object] = {"events_stream_max_s": 0.1}
    if request.param == "postgresql":
        overrides["store_url"] = request.getfixturevalue("postgres_url")
    async with running_controller(tmp_path / "data", **overrides) as controller:
        agent = await controller.enroll("krk")
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{controller.url}/api/v1/agent/reports",
                json=batch(report(snapshot("HOSTILE-1"))),
                headers=bearer(agent.token),
            ) as response:
                assert response.status == 200, await response.text()
            async with http.get(
                f"{controller.url}/api/v1/tokens", headers=bearer(controller.admin_token)
            ) as response:
                (admin,) = (await response.json())["tokens"]
        known = {
            "serial": "HOSTILE-1",
            "site_id": "krk",
            "agent_id": agent.agent_id,
            "token_id": admin["id"],
            "path": "style.css",
        }
        target = Target(controller, known, [f"Authorization: Bearer {agent.token}".encode()])
        await target.sign_in()
        yield target


async def test_no_malformed_request_gets_a_500(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed paths, queries, headers, cookies and bodies to every route, anonymous and
    signed in: every answer is a 4xx (or a success), none a 500, and nothing is logged as
    an unexpected error."""
    app = target.controller.app
    routes = routes_of(app)
    assert len(routes) > 50 and any(r.template.startswith("/static/") for r in routes)
    failures: list[str] = []
    caplog.set_level(logging.WARNING)
    for raw in UNPARSABLE:
        if await status_of(target.controller.url, raw, whole=False) != 400:
            failures.append(f"no 400 for {raw[:40]!r}")
    for route in routes:
        if route.method == "HEAD":
            continue  # the GET route's handler, without its body
        signed_in = target.agent if route.for_agents else target.admin
        for probe in probes(route, target.known, signed_in, target.csrf):
            status = await status_of(target.controller.url, probe.raw)
            if status >= 500 or status == 0:
                failures.append(f"{status} for {probe.what}")
        await target.sign_in()
    unexpected = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, "\n".join(failures)
    assert not unexpected, "\n".join(unexpected)
    # What the parser refused is logged on one line without a traceback, once a minute at
    # most (the test before this one in the same process may have logged it already).
    refused = [(r.levelname, r.exc_info) for r in caplog.records if r.name == "aiohttp.server"]
    assert refused in ([], [("WARNING", None)])
