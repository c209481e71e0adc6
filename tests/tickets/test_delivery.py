"""Ticket delivery through the durable outbox to a real SMTP server and a real webhook receiver."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from polyfleet.controller.services.delivery import (
    FAILED,
    OUTBOX,
    DeliveryWorker,
    OutgoingMessage,
    TicketOutbox,
    outbox_entries,
)
from polyfleet.controller.services.email import Attachment
from polyfleet.controller.settings.tickets import ticket_settings
from polyfleet.controller.store.tinydb import TinyDBStore
from tickets.conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    WEBHOOK_SECRET,
    SmtpPeer,
    WebhookPeer,
    ticket_sections,
)

NOW = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)


def message(tmp_path: Path, purpose: str = "ticket") -> OutgoingMessage:
    bundle = tmp_path / "diag.tar.gz"
    bundle.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 40)
    return OutgoingMessage(
        ticket_id="PF-0000000001",
        purpose=purpose,
        to="pomoc@myhezo.pl",
        subject="[PF-0000000001] Zgłoszenie serwisowe: studio_x50 X1 - awaria kamery",
        body="Numer seryjny: X1\nNumer umowy serwisowej: HZ-1\n",
        payload={"ticket": {"id": "PF-0000000001", "serial": "X1"}},
        attachments=(Attachment(filename="diag-X1.tar.gz", path=bundle),),
    )


async def enqueue(store: TinyDBStore, worker: DeliveryWorker, msg: OutgoingMessage) -> None:
    entries = TicketOutbox(store).fresh(outbox_entries(msg, channels=worker.channels, now=NOW))
    if entries:
        await store.put_many(OUTBOX, entries)


async def test_email_carries_bundle_over_starttls_and_login(
    store: TinyDBStore, smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    """An e-mail goes over STARTTLS with login, with the bundle attached and a stable Message-ID."""
    worker = DeliveryWorker(store, ticket_settings(ticket_sections(smtp_peer, None)))
    msg = message(tmp_path)
    await enqueue(store, worker, msg)
    assert await worker.run_once(NOW) == 1
    assert len(smtp_peer.received) == 1
    mail = smtp_peer.received[0]
    assert mail.tls and mail.login == SMTP_USER
    assert mail.recipients == ["pomoc@myhezo.pl"]
    assert mail.message["Message-ID"] == "<PF-0000000001.ticket.email@fleet.example.pl>"
    assert mail.message["Subject"] == msg.subject
    parts = list(mail.message.iter_attachments())
    assert [p.get_filename() for p in parts] == ["diag-X1.tar.gz"]
    assert parts[0].get_content() == msg.attachments[0].path.read_bytes()
    body = mail.message.get_body(("plain",))
    assert body is not None and "Numer umowy serwisowej: HZ-1" in body.get_content()
    assert await worker.run_once(NOW + timedelta(hours=1)) == 0
    assert len(smtp_peer.received) == 1


async def test_webhook_is_signed_and_sent_once(
    store: TinyDBStore, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """The webhook body carries the ticket and an HMAC-SHA256 signature the receiver accepts."""
    worker = DeliveryWorker(store, ticket_settings(ticket_sections(None, webhook_peer)))
    await enqueue(store, worker, message(tmp_path))
    assert await worker.run_once(NOW) == 1
    await worker.close()
    assert webhook_peer.bad_signatures == 0
    assert webhook_peer.received[0]["ticket"]["serial"] == "X1"
    assert webhook_peer.delivery_ids == ["PF-0000000001.ticket.webhook"]
    (attached,) = webhook_peer.received[0]["attachments"]
    assert attached["filename"] == "diag-X1.tar.gz"
    assert base64.b64decode(attached["base64"]) == (tmp_path / "diag.tar.gz").read_bytes()


async def test_webhook_leaves_out_a_bundle_over_its_limit(
    store: TinyDBStore, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """A bundle larger than webhook.max_bundle_bytes is not inlined; the ticket still goes."""
    sections = ticket_sections(None, webhook_peer)
    sections["webhook"]["max_bundle_bytes"] = 100
    worker = DeliveryWorker(store, ticket_settings(sections))
    await enqueue(store, worker, message(tmp_path))
    assert await worker.run_once(NOW) == 1
    await worker.close()
    assert "attachments" not in webhook_peer.received[0]


async def test_webhook_with_wrong_secret_is_refused_and_retried(
    store: TinyDBStore, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """A receiver that cannot verify the signature refuses it; nothing counts as delivered."""
    sections = ticket_sections(None, webhook_peer)
    sections["webhook"]["secret"] = "not-" + WEBHOOK_SECRET
    worker = DeliveryWorker(store, ticket_settings(sections))
    await enqueue(store, worker, message(tmp_path))
    assert await worker.run_once(NOW) == 0
    await worker.close()
    assert webhook_peer.bad_signatures == 1
    # 401 is a permanent refusal: given up and kept for the admin, not retried forever.
    assert list(store.scan(FAILED)) == ["PF-0000000001.ticket.webhook"]


async def test_webhook_retries_with_exponential_backoff(
    store: TinyDBStore, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """A receiver answering 503 is retried after 30 s, then 60 s, then delivered once."""
    webhook_peer.script = [503, 503]
    worker = DeliveryWorker(store, ticket_settings(ticket_sections(None, webhook_peer)))
    await enqueue(store, worker, message(tmp_path))
    assert await worker.run_once(NOW) == 0
    assert await worker.run_once(NOW + timedelta(seconds=29)) == 0
    assert webhook_peer.calls == 1
    assert await worker.run_once(NOW + timedelta(seconds=30)) == 0
    assert webhook_peer.calls == 2
    entry = store.get(OUTBOX, "PF-0000000001.ticket.webhook")
    assert entry is not None and entry["attempts"] == 2
    assert entry["next_attempt_at"] == (NOW + timedelta(seconds=90)).isoformat()
    assert await worker.run_once(NOW + timedelta(seconds=89)) == 0
    assert await worker.run_once(NOW + timedelta(seconds=90)) == 1
    await worker.close()
    assert webhook_peer.calls == 3
    assert len(webhook_peer.received) == 1


async def test_smtp_down_then_up_delivers_exactly_once(
    tmp_path: Path, smtp_peer: SmtpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """SMTP down, controller restarted, SMTP back: the ticket arrives once, no secret in any log."""
    caplog.set_level(logging.DEBUG)
    await smtp_peer.stop()
    settings = ticket_settings(ticket_sections(smtp_peer, None))
    msg = message(tmp_path)
    first = TinyDBStore(tmp_path / "data")
    await first.open()
    worker = DeliveryWorker(first, settings)
    await enqueue(first, worker, msg)
    assert await worker.run_once(NOW) == 0
    assert await worker.run_once(NOW + timedelta(seconds=30)) == 0
    entry = first.get(OUTBOX, "PF-0000000001.ticket.email")
    assert entry is not None and entry["attempts"] == 2
    assert "Connection" in entry["last_error"] or "refused" in entry["last_error"]
    await first.close()

    await smtp_peer.start()
    second = TinyDBStore(tmp_path / "data")
    await second.open()
    worker = DeliveryWorker(second, settings)
    # The same ticket saved again after the restart adds nothing to the outbox.
    await enqueue(second, worker, msg)
    assert await worker.run_once(NOW + timedelta(minutes=5)) == 1
    assert await worker.run_once(NOW + timedelta(hours=5)) == 0
    await enqueue(second, worker, msg)
    assert await worker.run_once(NOW + timedelta(hours=6)) == 0
    assert second.count(OUTBOX) == 0
    await second.close()
    assert len(smtp_peer.received) == 1
    assert SMTP_PASSWORD not in caplog.text
    stored = [f.read_bytes() for f in (tmp_path / "data").rglob("*") if f.is_file()]
    assert stored and not any(SMTP_PASSWORD.encode() in blob for blob in stored)


async def test_wrong_smtp_password_is_retried_and_never_shown(
    store: TinyDBStore, smtp_peer: SmtpPeer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login is an error naming the user, never the password."""
    caplog.set_level(logging.DEBUG)
    sections = ticket_sections(smtp_peer, None)
    sections["smtp"]["password"] = "wrong-" + SMTP_PASSWORD
    worker = DeliveryWorker(store, ticket_settings(sections))
    await enqueue(store, worker, message(tmp_path))
    assert await worker.run_once(NOW) == 0
    assert smtp_peer.logins_refused >= 1
    entry = store.get(OUTBOX, "PF-0000000001.ticket.email")
    assert entry is not None
    assert SMTP_USER in entry["last_error"]
    assert SMTP_PASSWORD not in entry["last_error"]
    assert SMTP_PASSWORD not in caplog.text
    assert smtp_peer.received == []


async def test_unbuildable_message_fails_alone_and_the_next_goes_out(
    store: TinyDBStore, smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    """An e-mail that cannot be built is given up at once with the reason; later ones go."""
    worker = DeliveryWorker(store, ticket_settings(ticket_sections(smtp_peer, None)))
    good = message(tmp_path)
    poisoned = OutgoingMessage(
        ticket_id="PF-0000000000",
        purpose="ticket",
        to="pomoc@myhezo.pl",
        subject="[PF-0000000000] X3\r\nBcc: someone@example.com",
        body="-",
        payload={},
    )
    entries = outbox_entries(poisoned, channels=worker.channels, now=NOW - timedelta(minutes=1))
    await store.put_many(OUTBOX, entries)
    await enqueue(store, worker, good)
    assert await worker.run_once(NOW) == 1
    assert [m.message["X-Polyfleet-Ticket"] for m in smtp_peer.received] == ["PF-0000000001"]
    (failed,) = TicketOutbox(store).failed()
    assert failed["ticket_id"] == "PF-0000000000" and failed["attempts"] == 1
    assert failed["last_error"].startswith("cannot be sent as built: ValueError")
    assert store.scan(OUTBOX) == {}
    assert worker.stats.attempts[("email", "failed")] == 1
    # Nothing is retried: a later pass sends nothing more.
    assert await worker.run_once(NOW + timedelta(days=1)) == 0
    assert len(smtp_peer.received) == 1
