"""VideoOS REST over HTTPS with the device certificate pinned by its SHA256 fingerprint."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

import aiohttp

from polyfleet.agent.transport.failures import http_failure_words
from polyfleet.agent.transport.ledger import OpenSession, SessionLedger
from polyfleet.shared.errors import (
    AuthenticationFailed,
    CertificateMismatch,
    DeviceError,
    DeviceProtocolError,
    DeviceUnreachable,
    DeviceWedged,
    LockedOut,
    NotAPolyDevice,
    os_error_words,
)
from polyfleet.shared.fingerprint import (
    normalise_fingerprint,
    sha256_fingerprint,
    short_fingerprint,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
#: Largest JSON answer read from a device; real answers are a few kB.
MAX_JSON_BYTES = 2 * 1024 * 1024
#: Largest binary answer (the system log archive).
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
#: Deepest JSON nesting accepted (hostile bodies can blow the parser's stack).
MAX_JSON_DEPTH = 32
#: Firmware answers some calls with an unquoted word (``CONTENT_IDLE``).
_BARE_WORD = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
#: How long a cancelled poll still waits for its login, to log that session out.
LOGIN_GRACE_S = 2.0
#: Retries of a 5xx before the unit counts as wedged ("repeated 5xx").
_SERVER_ERROR_RETRIES = 1


#: Keys of a VideoOS login answer (device document); a body with none of them is not one.
_LOGIN_KEYS = frozenset({"success", "reason", "loginStatus", "session"})
#: Login statuses judged by :meth:`RestClient.login` itself rather than the request funnel.
_LOGIN_JUDGED_STATUSES = frozenset(range(300, 500))


class FeatureAbsent(DeviceProtocolError):
    """The firmware has no such endpoint (404): a missing feature, not a fault."""

    reason = "feature absent on this firmware"


@dataclass(frozen=True)
class Answer:
    """A device answer after the funnel: status, decoded body, raw bytes."""

    status: int
    body: Any
    raw: bytes
    content_type: str


def fingerprint_digest(pin: str) -> bytes:
    """Raw sha256 digest of a ``SHA256:b64`` pin, as aiohttp.Fingerprint wants it."""
    body = normalise_fingerprint(pin)[len("SHA256:") :]
    return base64.b64decode(body + "=" * (-len(body) % 4))


def _insecure_context() -> ssl.SSLContext:
    # Device certificates are self-signed: trust comes from the pin, not a CA.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_certificate_fingerprint(host: str, port: int, *, timeout: float) -> str:
    """Connect once, read the leaf certificate and return its SHA256 pin (first contact)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=_insecure_context(), server_hostname=None
            )
    except TimeoutError as exc:
        raise DeviceUnreachable(
            f"{host}:{port}: no TLS answer within {timeout:g}s", host=host
        ) from exc
    except ssl.SSLError as exc:
        raise NotAPolyDevice(
            f"{host}:{port}: no TLS service ({http_failure_words(exc)})", host=host
        ) from exc
    except OSError as exc:
        raise DeviceUnreachable(f"{host}:{port}: {os_error_words(exc)}", host=host) from exc
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise NotAPolyDevice(f"{host}:{port}: TLS without a certificate", host=host)
        return sha256_fingerprint(der)
    finally:
        writer.close()
        with suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        del reader


def decode_body(raw: bytes, content_type: str, *, where: str, host: str) -> Any:
    """Decode a device body: JSON, a bare scalar, or an unquoted word; anything else is an error."""
    text_raw = raw.strip()
    if not text_raw:
        return None
    try:
        text = text_raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceProtocolError(f"{where}: answer is not UTF-8", host=host) from exc
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise DeviceProtocolError(f"{where}: answer nested too deeply", host=host) from exc
    except ValueError as exc:
        if _BARE_WORD.match(text):
            return text
        kind = "HTML" if text.lstrip().startswith("<") else "unreadable text"
        raise DeviceProtocolError(
            f"{where}: answer is {kind} ({content_type or 'no content type'})", host=host
        ) from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise DeviceProtocolError(f"{where}: answer nested too deeply", host=host)
    return value


def _depth(value: Any) -> int:
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        if depth > MAX_JSON_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return depth


class RestClient:
    """One device's REST API; every call goes through :meth:`_request`.

    ``pin`` is the device certificate's ``SHA256:...`` fingerprint; a different
    certificate raises :class:`CertificateMismatch` before anything (a password
    included) is sent. ``session`` is shared by all devices: cookies are kept
    per client, never in the session's jar. ``ledger`` hears of every session opened and
    closed, so one a crash leaves open is closed by the next run.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        session: aiohttp.ClientSession,
        pin: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        ledger: SessionLedger | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.pin = normalise_fingerprint(pin)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._fingerprint = aiohttp.Fingerprint(fingerprint_digest(pin))
        self._cookies: dict[str, str] = {}
        self._xsrf: str | None = None
        self.logged_in = False
        self.request_count = 0
        self._ledger = ledger
        #: Where the unit says this client's session comes from (its login answer's
        #: ``location``), "" when it does not say.
        self.location = ""

    @property
    def session_id(self) -> str | None:
        """The unit's id of the session this client holds (None: logged out)."""
        return self._cookies.get("session_id") if self.logged_in else None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        close: bool = False,
        max_bytes: int = MAX_JSON_BYTES,
        decode: bool = True,
        accept_statuses: frozenset[int] = frozenset(),
    ) -> Answer:
        """Send one request; turn library failures and bad statuses into shared errors."""
        where = f"{self.host}:{self.port} {method} {path}"
        headers: dict[str, str] = {"Accept": "application/json"}
        if self._cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
        if self._xsrf is not None:
            headers["x-xsrf-token"] = self._xsrf
        if close:
            # Each TLS connection holds ~256 kB of buffers: none stays open between polls.
            headers["Connection"] = "close"
        attempt = 0
        while True:
            attempt += 1
            self.request_count += 1
            try:
                async with self._session.request(
                    method,
                    self.base_url + path,
                    json=json_body,
                    headers=headers,
                    ssl=self._fingerprint,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    raw = await _read_limited(resp, max_bytes, where=where, host=self.host)
                    status = resp.status
                    content_type = resp.headers.get("Content-Type", "")
                    self._remember_cookies(resp.headers.getall("Set-Cookie", []))
            except aiohttp.ServerFingerprintMismatch as exc:
                seen = "SHA256:" + base64.b64encode(exc.got).decode().rstrip("=")
                raise CertificateMismatch(
                    f"{self.host}:{self.port}: the device's certificate does not match the "
                    f"pinned one (device {short_fingerprint(seen)}, "
                    f"pinned {short_fingerprint(self.pin)})",
                    host=self.host,
                    seen=seen,
                    pinned=self.pin,
                ) from exc
            except aiohttp.ClientConnectorSSLError as exc:
                raise NotAPolyDevice(f"{where}: {http_failure_words(exc)}", host=self.host) from exc
            except TimeoutError as exc:
                raise DeviceUnreachable(
                    f"{where}: no answer within {self._timeout.total:g}s", host=self.host
                ) from exc
            except aiohttp.ClientResponseError as exc:
                raise DeviceProtocolError(
                    f"{where}: {http_failure_words(exc)}", host=self.host
                ) from exc
            except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                # Never str(exc): aiohttp's names the ssl= argument, our pin object included.
                raise DeviceUnreachable(
                    f"{where}: {http_failure_words(exc)}", host=self.host
                ) from exc
            if status >= 500 and status not in accept_statuses:
                if attempt <= _SERVER_ERROR_RETRIES:
                    continue
                raise DeviceWedged(f"{where}: HTTP {status} repeatedly", host=self.host)
            break
        if status == 404 and 404 not in accept_statuses:
            raise FeatureAbsent(f"{where}: not on this firmware (404)", host=self.host)
        if status in (401, 403) and status not in accept_statuses:
            # Mid-cycle this is a lost session, not bad credentials (login decides those).
            raise DeviceProtocolError(
                f"{where}: the device refused the session (HTTP {status})", host=self.host
            )
        if not (200 <= status < 300) and status not in accept_statuses:
            raise DeviceProtocolError(f"{where}: unexpected HTTP {status}", host=self.host)
        body: Any = None
        if decode:
            try:
                body = decode_body(raw, content_type, where=where, host=self.host)
            except DeviceProtocolError:
                if status in accept_statuses:
                    body = None
                else:
                    raise
        return Answer(status=status, body=body, raw=raw, content_type=content_type)

    def _remember_cookies(self, headers: list[str]) -> None:
        for header in headers:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(header)
            except CookieError:
                continue
            for name, morsel in jar.items():
                if len(morsel.value) > 4096:
                    continue
                if name == "XSRF-TOKEN":
                    # From 4.6.2 every call must echo the token as a header too.
                    self._xsrf = morsel.value
                self._cookies[name] = morsel.value

    async def login(self, user: str, password: str) -> None:
        """``POST /rest/session``; raises AuthenticationFailed, LockedOut or NotAPolyDevice.

        Only the answers the device document lists count as a VideoOS login: 3.x 400
        with a ``reason``, 4.x 403, 200 with ``success`` (and a session when it says
        true). Anything else (another vendor's 401, a redirect, a 404 page, a 200 of
        another shape) is some other host, never "bad credentials".
        """
        self._cookies.clear()
        self._xsrf = None
        where = f"{self.host}:{self.port} login"
        answer = await self._request(
            "POST",
            "/rest/session",
            json_body={"user": user, "password": password},
            # Every 3xx/4xx is judged here: only some of them are a VideoOS answer.
            accept_statuses=_LOGIN_JUDGED_STATUSES,
        )
        status = answer.status
        body = answer.body if isinstance(answer.body, dict) else {}
        videoos_shaped = bool(_LOGIN_KEYS & body.keys())
        if status not in (200, 400, 401, 403):
            raise NotAPolyDevice(
                f"{where}: HTTP {status} is no VideoOS login answer"
                + (" (no /rest/session here)" if status == 404 else ""),
                host=self.host,
            )
        if status == 401 and not videoos_shaped:
            # VideoOS never answers 401 of its own; a bare 401 is another API's login.
            raise NotAPolyDevice(
                f"{where}: HTTP 401 without a VideoOS login answer (another API)", host=self.host
            )
        if status == 400 and not videoos_shaped:
            raise NotAPolyDevice(f"{where}: HTTP 400 without a VideoOS reason", host=self.host)
        reason = str(body.get("reason", "") or "")
        login_status = body.get("loginStatus")
        login_result = ""
        if isinstance(login_status, dict):
            login_result = str(login_status.get("loginResult", "") or "")
        if status == 400:
            # 3.x firmware: the reason decides.
            if reason == "SessionAlreadyActive":
                self.logged_in = True
                return
            if reason == "SessionPortLockout":
                raise LockedOut(
                    f"{where}: the device locked the account (SessionPortLockout)", host=self.host
                )
            if reason == "SessionRequestInvalid":
                raise AuthenticationFailed(
                    f"{where}: the device refused the credentials", host=self.host
                )
            raise DeviceProtocolError(
                f"{where}: login refused ({reason[:64] or 'no reason'})", host=self.host
            )
        if reason == "SessionLimitReached":
            raise DeviceProtocolError(f"{where}: the device has no free session", host=self.host)
        if "LOCK" in login_result.upper() and login_result.upper() != "NOLOCKOUT":
            raise LockedOut(
                f"{where}: the device locked the account ({login_result[:64]})", host=self.host
            )
        if reason == "SessionPortLockout":
            raise LockedOut(f"{where}: the device locked the account", host=self.host)
        if status in (401, 403):
            # 4.x firmware answers bad credentials with 403, sometimes as HTML.
            raise AuthenticationFailed(
                f"{where}: the device refused the credentials (HTTP {status})",
                host=self.host,
            )
        if not isinstance(answer.body, dict) or "success" not in body:
            raise NotAPolyDevice(f"{where}: login answer is not a VideoOS session", host=self.host)
        if body.get("success") is not True:
            # Some builds say 200 with success false: the body decides, not the status.
            raise AuthenticationFailed(
                f"{where}: the device refused the credentials", host=self.host
            )
        session = body.get("session")
        if isinstance(session, dict):
            session_id = session.get("sessionId")
            if isinstance(session_id, str) and session_id and "session_id" not in self._cookies:
                self._cookies["session_id"] = session_id
            location = session.get("location")
            self.location = location[:64] if isinstance(location, str) else ""
        if "session_id" not in self._cookies:
            # "success" without a session to carry is no VideoOS login.
            raise NotAPolyDevice(
                f"{where}: login said success but gave no VideoOS session", host=self.host
            )
        self.logged_in = True
        if self._ledger is not None:
            await self._ledger.opened(
                OpenSession(self.host, self.port, self._cookies["session_id"], self._xsrf)
            )

    async def logout(self) -> None:
        """``DELETE /rest/session``; never raises (the cycle already has its answers)."""
        if not self.logged_in:
            return
        self.logged_in = False
        session_id = self._cookies.get("session_id")
        try:
            await self._request(
                "DELETE",
                "/rest/session",
                close=True,
                accept_statuses=frozenset({400, 401, 403, 404}),
            )
        except DeviceError as exc:
            log.debug("%s:%s logout failed: %s", self.host, self.port, exc)
            if session_id is not None and self._ledger is not None:
                # The unit may still hold it: the next poll logs it out first.
                self._ledger.unclosed(session_id)
            session_id = None
        finally:
            self._cookies.clear()
            self._xsrf = None
        if session_id is not None and self._ledger is not None:
            await self._ledger.closed(session_id)

    async def end_left_session(self, entry: OpenSession) -> None:
        """Log out a session an earlier run left open (``DELETE /rest/session`` as it).

        Any answer ends it (a unit that no longer knows it answers 400 or 403); raises
        DeviceError when the unit does not answer, and it is kept for the next try.
        """
        cookies, xsrf = dict(self._cookies), self._xsrf
        self._cookies = {"session_id": entry.session_id}
        self._xsrf = entry.xsrf
        if entry.xsrf is not None:
            self._cookies["XSRF-TOKEN"] = entry.xsrf
        try:
            await self._request(
                "DELETE", "/rest/session", accept_statuses=frozenset({400, 401, 403, 404})
            )
        finally:
            self._cookies, self._xsrf = cookies, xsrf
        if self._ledger is not None:
            await self._ledger.closed(entry.session_id)

    @asynccontextmanager
    async def logged_in_session(self, user: str, password: str) -> AsyncIterator[RestClient]:
        """Log in, yield, and always log out: long-lived sessions wedge real units.

        Cancelled mid-login (the agent stopping, a poll deadline), the login gets a
        short grace to finish, so a session it opened on the unit is closed too.
        """
        login = asyncio.ensure_future(self.login(user, password))
        try:
            await asyncio.shield(login)
        except asyncio.CancelledError:
            await asyncio.wait([login], timeout=LOGIN_GRACE_S)
            if login.done():
                if not login.cancelled() and login.exception() is None:
                    await asyncio.shield(self.logout())
            else:
                login.cancel()
            raise
        try:
            yield self
        finally:
            await asyncio.shield(self.logout())

    async def get(self, path: str) -> Any:
        """GET a JSON (or bare scalar) answer; FeatureAbsent on 404."""
        return (await self._request("GET", path)).body

    async def post(self, path: str, body: Any = None) -> Any:
        return (await self._request("POST", path, json_body=body)).body

    async def get_bytes(self, path: str, *, max_bytes: int = MAX_ARCHIVE_BYTES) -> bytes:
        """GET a binary answer (a log archive) read up to ``max_bytes``."""
        return (await self._request("GET", path, max_bytes=max_bytes, decode=False)).raw


async def _read_limited(
    resp: aiohttp.ClientResponse, max_bytes: int, *, where: str, host: str
) -> bytes:
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise DeviceProtocolError(f"{where}: answer of {length} bytes is too large", host=host)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            raise DeviceProtocolError(f"{where}: answer larger than {max_bytes} bytes", host=host)
        chunks.append(chunk)
    return b"".join(chunks)
