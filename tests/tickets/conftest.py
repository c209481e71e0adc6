"""Real peers for ticket tests: aiosmtpd with STARTTLS and login, a signed-webhook receiver."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from testkit.servers import serving

from polyfleet.controller.services.webhook import DELIVERY_HEADER, verify
from polyfleet.controller.store.base import SITES
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.testing import SITE_ADDRESS, SITE_CONTACT
from polyfleet.simulator.identity import make_tls_identity

SMTP_USER = "polyfleet"
SMTP_PASSWORD = "smtp-secret-Zq81"
WEBHOOK_SECRET = "hook-secret-Yw52"


@dataclass
class TlsFiles:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1, trusted by the clients through ca_file."""
    identity = make_tls_identity(tmp_path_factory.mktemp("tls"), "127.0.0.1", "127.0.0.1")
    return TlsFiles(cert=identity.cert_path, key=identity.key_path)


@dataclass
class ReceivedMail:
    envelope_from: str
    recipients: list[str]
    message: EmailMessage
    login: str
    tls: bool


@dataclass
class SmtpPeer:
    """An SMTP server that can be stopped and started again on the same port."""

    tls: TlsFiles
    port: int = 0
    received: list[ReceivedMail] = field(default_factory=list)
    logins_refused: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        peer = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                assert isinstance(envelope.content, bytes)
                message = message_from_bytes(envelope.content, policy=policy.default)
                assert isinstance(message, EmailMessage)
                peer.received.append(
                    ReceivedMail(
                        envelope_from=str(envelope.mail_from),
                        recipients=list(envelope.rcpt_tos),
                        message=message,
                        login=(session.auth_data or b"").decode()
                        if isinstance(session.auth_data, bytes)
                        else str(session.auth_data),
                        tls=session.ssl is not None,
                    )
                )
                return "250 OK"

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == SMTP_USER
                and data.password.decode() == SMTP_PASSWORD
            )
            if not ok:
                peer.logins_refused += 1
                return AuthResult(success=False, handled=False)
            return AuthResult(success=True, auth_data=data.login)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                Handler(),
                tls_context=context,
                require_starttls=True,
                auth_required=True,
                authenticator=authenticator,
                hostname="127.0.0.1",
            ),
            "127.0.0.1",
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def smtp_peer(tls_files: TlsFiles) -> AsyncIterator[SmtpPeer]:
    peer = SmtpPeer(tls=tls_files)
    await peer.start()
    yield peer
    await peer.stop()


@dataclass
class WebhookPeer:
    """An aiohttp receiver that checks the HMAC signature; answers can be scripted."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    delivery_ids: list[str] = field(default_factory=list)
    bad_signatures: int = 0
    script: list[int] = field(default_factory=list)
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        if self.script:
            status = self.script.pop(0)
            if status != 200:
                return web.json_response({"error": "scripted"}, status=status)
        signature = request.headers.get("X-Polyfleet-Signature", "")
        if not verify(WEBHOOK_SECRET, body, signature):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.received.append(json.loads(body))
        self.delivery_ids.append(request.headers[DELIVERY_HEADER])
        return web.json_response({"ok": True})


async def _receiver(path: str) -> AsyncIterator[WebhookPeer]:
    peer = WebhookPeer()
    app = web.Application()
    app.router.add_post(path, peer.handle)
    async with serving(app) as url:
        peer.url = url + path
        yield peer


@pytest.fixture
async def webhook_peer() -> AsyncIterator[WebhookPeer]:
    """The service desk's webhook receiver."""
    async for peer in _receiver("/hook"):
        yield peer


@pytest.fixture
async def escalation_peer() -> AsyncIterator[WebhookPeer]:
    """The escalation contact's webhook receiver, apart from the desk's."""
    async for peer in _receiver("/escalate"):
        yield peer


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TinyDBStore]:
    """The real controller store in a temporary data directory, holding the site krk with
    its reporter and delivery address (which every ticket carries)."""
    instance = TinyDBStore(tmp_path / "data")
    await instance.open()
    site = {
        "id": "krk",
        "name": "krk",
        "timezone": "Europe/Warsaw",
        "contact": SITE_CONTACT,
        "delivery_address": SITE_ADDRESS,
    }
    await instance.put_many(SITES, {"krk": site})
    yield instance
    await instance.close()


def ticket_sections(
    smtp: SmtpPeer | None,
    webhook: WebhookPeer | None,
    *,
    escalation_webhook: WebhookPeer | None = None,
    **tickets: Any,
) -> dict[str, dict[str, Any]]:
    """Config tables as an admin would write them in controller.toml."""
    sections: dict[str, dict[str, Any]] = {"tickets": {"retry_base_s": 30, **tickets}}
    if smtp is not None:
        sections["smtp"] = {
            "host": "127.0.0.1",
            "port": smtp.port,
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "from": "polyfleet@fleet.example.pl",
            "ca_file": str(smtp.tls.cert),
            "timeout_s": 10,
        }
    if webhook is not None:
        sections["webhook"] = {"url": webhook.url, "secret": WEBHOOK_SECRET, "timeout_s": 10}
    if escalation_webhook is not None:
        sections["escalation_webhook"] = {
            "url": escalation_webhook.url,
            "secret": WEBHOOK_SECRET,
            "timeout_s": 10,
        }
    return sections
