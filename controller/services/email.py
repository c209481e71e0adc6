"""Ticket e-mail: a MIME message with the diagnostics bundle, sent with STARTTLS and login."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from polyfleet.controller.settings.tickets import SmtpSettings


class DeliveryError(Exception):
    """A message could not be delivered now; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, kw_only=True)
class Attachment:
    filename: str
    path: Path
    content_type: str = "application/gzip"
    #: Only for e-mail: the webhook's JSON already carries the same data.
    email_only: bool = False


def message_id(entry_id: str, sender: str) -> str:
    """A Message-ID derived from the outbox entry, so a resend is recognisably the same message."""
    domain = sender.rpartition("@")[2] or "polyfleet.invalid"
    return f"<{entry_id}@{domain}>"


def build_email(
    *,
    entry_id: str,
    sender: str,
    to: str,
    subject: str,
    body: str,
    created_at: datetime,
    attachments: list[Attachment],
    ticket_id: str,
) -> EmailMessage:
    """The complete message; reads attachment files, so call it off the event loop."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(created_at)
    msg["Message-ID"] = message_id(entry_id, sender)
    # Threads the desk's mailbox per ticket (first message, reopenings, escalation).
    msg["References"] = message_id(f"{ticket_id}.thread", sender)
    msg["X-Polyfleet-Ticket"] = ticket_id
    msg.set_content(body, charset="utf-8")
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.path.read_bytes(),
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return msg


class SmtpSender:
    """Sends one message per connection: STARTTLS (verified), then login, then the message."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            context.load_verify_locations(cafile=str(self.settings.ca_file))
        return context

    def _send_blocking(self, message: EmailMessage) -> None:
        s = self.settings
        where = f"SMTP {s.host}:{s.port}"
        try:
            with smtplib.SMTP(s.host, s.port, local_hostname=s.helo, timeout=s.timeout_s) as client:
                client.ehlo()
                if s.starttls:
                    if not client.has_extn("starttls"):
                        raise DeliveryError(f"{where} does not offer STARTTLS; refusing to send")
                    client.starttls(context=self._tls_context())
                    client.ehlo()
                if s.username is not None and s.password is not None:
                    client.login(s.username, s.password.reveal())
                client.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            # The reply text may echo what was sent; keep only the code.
            raise DeliveryError(
                f"{where}: login as {s.username} refused ({exc.smtp_code})"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"{where}: recipients refused: {', '.join(exc.recipients)}", permanent=True
            ) from None
        except smtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.smtp_code < 600
            raise DeliveryError(
                f"{where}: server said {exc.smtp_code}", permanent=permanent
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message``; DeliveryError when the server is down or refuses it."""
        await asyncio.to_thread(self._send_blocking, message)
