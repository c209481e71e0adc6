"""The ticket outbox: durable e-mail and webhook deliveries, retried with back-off, sent once.

Each entry is tried on its own: one that cannot be built or is refused for good is moved to
the failed entries with its reason (for the admin, the API, the CLI and ``/metrics``) and
never holds up the others; one that may succeed later waits with exponential back-off.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from polyfleet.controller.services.email import Attachment, DeliveryError, SmtpSender, build_email
from polyfleet.controller.services.webhook import WebhookSender, encode_payload
from polyfleet.controller.settings.tickets import TicketSettings
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.periodic import Periodic
from polyfleet.shared.retry import Backoff

log = logging.getLogger(__name__)

OUTBOX = "ticket_outbox"
#: Entries delivered: kept so that enqueueing the same entry again sends nothing.
SENT = "ticket_outbox_sent"
#: Entries given up on (permanent refusal or too many attempts), for the admin to see.
FAILED = "ticket_outbox_failed"

#: ``escalation_webhook`` carries escalations only, to the escalation contact (W7).
Channel = Literal["email", "webhook", "escalation_webhook"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
Clock = Callable[[], datetime]
#: Called after a delivery with the entry and the time; returns more puts made durable with it.
DeliveredHook = Callable[[Doc, datetime], Mapping[str, Mapping[str, Doc]]]
#: Called when an entry is given up, with the entry (``last_error`` set) and the time; returns
#: more puts made durable with the failure (e.g. a note on the ticket).
FailedHook = Callable[[Doc, datetime], Mapping[str, Mapping[str, Doc]]]


@dataclass(frozen=True, kw_only=True)
class Rendering:
    """A message as it leaves: e-mail subject and body, and the webhook's JSON payload."""

    subject: str
    body: str
    payload: dict[str, Any]


#: Renders an entry at the moment it is sent (so it states what that send starts).
RenderHook = Callable[[Doc, datetime], Rendering]
#: Told of the puts of a delivery or a failure once the store has applied them.
StoredHook = Callable[[Mapping[str, Mapping[str, Doc]]], None]
#: Results an attempt is counted under (``polyfleet_ticket_delivery_attempts``).
RESULTS = ("sent", "retry", "failed")


@dataclass
class DeliveryStats:
    """Attempts since start, by channel and result, for the metrics."""

    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class OutgoingMessage:
    """One message of a ticket, before it is split per channel.

    ``subject``, ``body`` and ``payload`` are what a worker without a render hook sends; the
    ticket service leaves them out and renders each message when it is sent.
    """

    ticket_id: str
    purpose: str  # "ticket", "reopened-2", "escalation-0", ...
    to: str
    subject: str | None = None
    body: str | None = None
    payload: dict[str, Any] | None = None
    attachments: tuple[Attachment, ...] = ()


def entry_key(ticket_id: str, purpose: str, channel: Channel) -> str:
    """The stable id of one message of a ticket on one channel (its key in every collection
    here, its e-mail Message-ID and its webhook delivery id)."""
    return f"{ticket_id}.{purpose}.{channel}"


def message_ids(ticket_id: str, rounds: int) -> list[str]:
    """Every id a ticket reopened ``rounds`` times can have given its messages: per round
    (0: ``ticket``, then ``reopened-N``) its ticket and its escalation, on each channel."""
    purposes: list[str] = []
    for number in range(rounds + 1):
        purposes.append("ticket" if number == 0 else f"reopened-{number}")
        purposes += [
            f"escalation-{number}",
            f"escalation_delivery-{number}",
            f"escalation_return-{number}",
        ]
    return [entry_key(ticket_id, purpose, channel) for purpose in purposes for channel in CHANNELS]


def outbox_entries(
    message: OutgoingMessage, *, channels: tuple[Channel, ...], now: datetime
) -> dict[str, Doc]:
    """Outbox documents for ``message``, one per channel, keyed by a stable entry id."""
    entries: dict[str, Doc] = {}
    for channel in channels:
        entry_id = entry_key(message.ticket_id, message.purpose, channel)
        entry: Doc = {
            "id": entry_id,
            "channel": channel,
            "ticket_id": message.ticket_id,
            "purpose": message.purpose,
            "created_at": now.isoformat(),
            "attempts": 0,
            "next_attempt_at": now.isoformat(),
            "last_error": None,
        }
        if channel == "email":
            entry["email"] = {
                "to": message.to,
                "attachments": [
                    {"filename": a.filename, "path": str(a.path), "content_type": a.content_type}
                    for a in message.attachments
                ],
            }
            if message.subject is not None and message.body is not None:
                entry["email"].update(subject=message.subject, body=message.body)
        else:
            entry["webhook"] = {
                # Inlined at send time (bytes stay out of the store), if small enough.
                "attachments": [
                    {"filename": a.filename, "path": str(a.path), "content_type": a.content_type}
                    for a in message.attachments
                    if not a.email_only
                ],
            }
            if message.payload is not None:
                entry["webhook"]["payload"] = message.payload
        entries[entry_id] = entry
    return entries


#: The states of a delivery record, as the API names them.
RecordState = Literal["pending", "sent", "failed"]


class TicketOutbox:
    """Outbox documents in the store: enqueueing is idempotent against pending and sent entries.

    The one reader and writer of ``ticket_outbox``, ``ticket_outbox_sent`` and
    ``ticket_outbox_failed`` besides the worker's own sends (``DeliveryWorker``).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def enqueue(self, entries: Mapping[str, Doc]) -> None:
        """Queue ``entries`` (from ``fresh``); durable when this returns."""
        await self.store.wait_durable(self.store.apply({OUTBOX: dict(entries)}))

    @staticmethod
    def dropping(entry_ids: Iterable[str]) -> dict[str, list[str]]:
        """The deletes that drop waiting entries, for the caller's own ``apply`` (a ticket's
        change that makes them wrong)."""
        return {OUTBOX: list(entry_ids)}

    async def retry(self, entry_ids: Iterable[str]) -> None:
        """Forget given-up entries, so that the same messages may be queued again."""
        ids = list(entry_ids)
        if ids:
            await self.store.wait_durable(self.store.apply({}, {FAILED: ids}))

    def records(
        self, states: Iterable[RecordState], ids: Iterable[str] | None = None
    ) -> dict[RecordState, list[tuple[str, Doc]]]:
        """(key, record) by state: every record, or only those under ``ids`` (the ids a
        ticket's messages can have, ``message_ids``: a handful read instead of them all)."""
        wanted = set(states)
        keys = None if ids is None else list(ids)
        found: dict[RecordState, list[tuple[str, Doc]]] = {}
        collections: tuple[tuple[RecordState, str], ...] = (
            ("pending", OUTBOX),
            ("sent", SENT),
            ("failed", FAILED),
        )
        for state, collection in collections:
            if state not in wanted:
                continue
            if keys is None:
                found[state] = list(self.store.scan(collection).items())
            else:
                get = self.store.get
                found[state] = [
                    (key, doc) for key in keys if (doc := get(collection, key)) is not None
                ]
        return found

    async def forget(self, cutoff: datetime, finished: Callable[[Doc], bool]) -> int:
        """Drop records of messages delivered or given up before ``cutoff`` whose ticket is
        ``finished`` with them; how many. Read here, once an hour (``TicketService.tick``)."""
        doomed: dict[str, list[str]] = {}
        for collection, stamp in ((SENT, "sent_at"), (FAILED, "failed_at")):
            for key, doc in list(self.store.scan(collection).items()):
                when = doc.get(stamp)
                if not isinstance(when, str) or datetime.fromisoformat(when) > cutoff:
                    continue
                if finished(doc):
                    doomed.setdefault(collection, []).append(key)
        if doomed:
            await self.store.wait_durable(self.store.apply({}, doomed))
        return sum(len(keys) for keys in doomed.values())

    def fresh(self, entries: Mapping[str, Doc]) -> dict[str, Doc]:
        """The entries neither waiting nor already delivered (so a retry of a save adds none)."""
        return {
            key: doc
            for key, doc in entries.items()
            if self.store.get(OUTBOX, key) is None
            and self.store.get(SENT, key) is None
            and self.store.get(FAILED, key) is None
        }

    def pending(self) -> list[Doc]:
        return sorted(self.store.scan(OUTBOX).values(), key=lambda d: str(d["created_at"]))

    def sent(self) -> list[Doc]:
        return sorted(self.store.scan(SENT).values(), key=lambda d: str(d["sent_at"]))

    def failed(self) -> list[Doc]:
        return list(self.store.scan(FAILED).values())


class DeliveryWorker:
    """Drains the outbox: each due entry is tried once per pass; failures wait with back-off."""

    def __init__(
        self,
        store: Store,
        settings: TicketSettings,
        *,
        clock: Clock = utc_now,
        on_delivered: DeliveredHook | None = None,
        on_failed: FailedHook | None = None,
        render: RenderHook | None = None,
        on_stored: StoredHook | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._backoff = Backoff(
            first_s=settings.retry_base.total_seconds(), max_s=settings.retry_max.total_seconds()
        )
        self.clock = clock
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        self.render = render
        self.on_stored = on_stored
        self.outbox = TicketOutbox(store)
        self.smtp = SmtpSender(settings.smtp) if settings.smtp is not None else None
        self.webhook = WebhookSender(settings.webhook) if settings.webhook is not None else None
        self.escalation_webhook = (
            WebhookSender(settings.escalation_webhook)
            if settings.escalation_webhook is not None
            else None
        )
        self.stats = DeliveryStats()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._failing: set[str] = set()

    @property
    def channels(self) -> tuple[Channel, ...]:
        """The desk's channels: e-mail to the desk and its webhook."""
        found: list[Channel] = []
        if self.smtp is not None:
            found.append("email")
        if self.webhook is not None:
            found.append("webhook")
        return tuple(found)

    @property
    def escalation_channels(self) -> tuple[Channel, ...]:
        """Where escalations go (W7): e-mail to the escalation address, the escalation
        webhook; never the desk's own webhook."""
        found: list[Channel] = []
        if self.smtp is not None:
            found.append("email")
        if self.escalation_webhook is not None:
            found.append("escalation_webhook")
        return tuple(found)

    def wake(self) -> None:
        """Something was enqueued: try now rather than at the next interval."""
        self._wake.set()

    async def close(self) -> None:
        for sender in (self.webhook, self.escalation_webhook):
            if sender is not None:
                await sender.close()

    def backoff(self, attempts: int) -> timedelta:
        """Exponential: base, 2x base, 4x base ... capped at retry_max."""
        return timedelta(seconds=self._backoff.delay(attempts))

    async def run_once(self, now: datetime | None = None) -> int:
        """Try every due entry once, each on its own; returns how many were delivered."""
        async with self._lock:
            moment = now or self.clock()
            delivered = 0
            for key, entry in sorted(
                self.store.scan(OUTBOX).items(), key=lambda item: str(item[1].get("created_at"))
            ):
                try:
                    due = datetime.fromisoformat(str(entry["next_attempt_at"]))
                except (KeyError, TypeError, ValueError) as exc:
                    await self._give_up({**entry, "id": key}, moment, f"malformed entry: {exc!r}")
                    continue
                if due > moment:
                    continue
                # The moment of this send (whole seconds): a message that starts the reaction
                # clock states it, and the ticket stores the same one (W2).
                at = now if now is not None else self.clock().replace(microsecond=0)
                if await self._attempt({**entry, "id": key}, at):
                    delivered += 1
            return delivered

    async def run(self) -> None:
        """Forever: a pass now, then after each wake-up or check interval."""
        # One bad entry or a store hiccup must not stop delivery: the next pass tries again.
        passes = Periodic(
            "ticket delivery pass",
            self.run_once,
            interval_s=self.settings.check_interval_s,
            wake=self._wake,
            logger=log,
        )
        await passes.run()

    async def _send(self, entry: Doc, at: datetime) -> None:
        channel = entry["channel"]
        rendering = self.render(entry, at) if self.render is not None else None
        if channel == "email":
            if self.smtp is None or self.settings.smtp is None:
                raise DeliveryError("e-mail is not configured ([smtp] is missing)")
            mail = entry["email"]
            subject = rendering.subject if rendering is not None else mail["subject"]
            body = rendering.body if rendering is not None else mail["body"]
            message = await asyncio.to_thread(
                build_email,
                entry_id=entry["id"],
                sender=self.settings.smtp.sender,
                to=mail["to"],
                subject=subject,
                body=body,
                created_at=datetime.fromisoformat(entry["created_at"]),
                attachments=[
                    Attachment(
                        filename=a["filename"], path=Path(a["path"]), content_type=a["content_type"]
                    )
                    for a in mail["attachments"]
                ],
                ticket_id=entry["ticket_id"],
            )
            await self.smtp.send(message)
        elif channel in ("webhook", "escalation_webhook"):
            sender = self.webhook if channel == "webhook" else self.escalation_webhook
            settings = (
                self.settings.webhook if channel == "webhook" else self.settings.escalation_webhook
            )
            if sender is None or settings is None:
                raise DeliveryError(f"the {channel.replace('_', ' ')} is not configured")
            hook = entry["webhook"]
            payload = rendering.payload if rendering is not None else hook["payload"]
            payload = {**payload, "delivery_id": entry["id"], "purpose": entry["purpose"]}
            data = await asyncio.to_thread(
                self._webhook_body, payload, hook.get("attachments", []), settings.max_bundle_bytes
            )
            await sender.send(entry["id"], data)
        else:
            raise DeliveryError(f"unknown channel {channel!r}", permanent=True)

    @staticmethod
    def _webhook_body(payload: dict[str, Any], attachments: list[Doc], limit: int) -> bytes:
        """The payload, with each attachment inlined as base64 when within the size limit."""
        inlined = []
        for attachment in attachments:
            path = Path(attachment["path"])
            if path.stat().st_size > limit:
                continue
            inlined.append(
                {
                    "filename": attachment["filename"],
                    "content_type": attachment["content_type"],
                    "base64": base64.b64encode(path.read_bytes()).decode("ascii"),
                }
            )
        if inlined:
            payload = {**payload, "attachments": inlined}
        return encode_payload(payload)

    async def _attempt(self, entry: Doc, now: datetime) -> bool:
        channel = str(entry.get("channel"))
        # A durable (and, on PostgreSQL, fenced) write before the message leaves: a controller
        # that another one took over from is refused here and sends nothing; the new active
        # one sends it, under the same delivery id (webhook header, e-mail Message-ID).
        claim = {**entry, "sending_since": now.isoformat()}
        await self.store.wait_durable(self.store.apply({OUTBOX: {entry["id"]: claim}}))
        try:
            await self._send(entry, now)
        except (DeliveryError, OSError) as exc:
            permanent = isinstance(exc, DeliveryError) and exc.permanent
            entry["attempts"] = int(entry.get("attempts") or 0) + 1
            if channel not in self._failing:
                # Log the first failure of a channel, not every retry (then its recovery).
                log.warning("ticket %s via %s failed: %s", entry.get("ticket_id"), channel, exc)
                self._failing.add(channel)
            if permanent or entry["attempts"] >= self.settings.max_attempts:
                await self._give_up(entry, now, str(exc))
            else:
                entry["last_error"] = str(exc)
                entry["next_attempt_at"] = (now + self.backoff(entry["attempts"])).isoformat()
                self.stats.attempts[(channel, "retry")] += 1
                await self.store.wait_durable(self.store.apply({OUTBOX: {entry["id"]: entry}}))
            return False
        except Exception as exc:
            # The message cannot be built or sent as it stands (a header with a line break, an
            # entry missing a field): sending it again would fail the same way, so it is given
            # up at once, and the entries after it still go out.
            entry["attempts"] = int(entry.get("attempts") or 0) + 1
            await self._give_up(entry, now, f"cannot be sent as built: {type(exc).__name__}: {exc}")
            return False
        if channel in self._failing:
            self._failing.discard(channel)
            log.info("ticket delivery via %s works again", channel)
        record: Doc = {
            "id": entry["id"],
            "channel": channel,
            "ticket_id": entry["ticket_id"],
            "purpose": entry["purpose"],
            "attempts": int(entry["attempts"]) + 1,
            "sent_at": now.isoformat(),
        }
        puts: dict[str, dict[str, Doc]] = {SENT: {entry["id"]: record}}
        if self.on_delivered is not None:
            for collection, docs in self.on_delivered(entry, now).items():
                puts.setdefault(collection, {}).update(docs)
        seq = self.store.apply(puts, {OUTBOX: [entry["id"]]})
        if self.on_stored is not None:
            self.on_stored(puts)
        await self.store.wait_durable(seq)
        self.stats.attempts[(channel, "sent")] += 1
        return True

    async def _give_up(self, entry: Doc, now: datetime, reason: str) -> None:
        """Move ``entry`` to the failed entries with ``reason``; the ticket hears of it."""
        entry["last_error"] = reason
        entry["failed_at"] = now.isoformat()
        channel = str(entry.get("channel"))
        log.error("ticket %s via %s given up: %s", entry.get("ticket_id"), channel, reason)
        puts: dict[str, dict[str, Doc]] = {FAILED: {entry["id"]: entry}}
        if self.on_failed is not None:
            try:
                extra = self.on_failed(entry, now)
            except Exception:
                # The failure itself must be recorded even if the ticket cannot take the note.
                log.exception(
                    "ticket %s: the delivery failure could not be noted", entry.get("ticket_id")
                )
                extra = {}
            for collection, docs in extra.items():
                puts.setdefault(collection, {}).update(docs)
        seq = self.store.apply(puts, {OUTBOX: [entry["id"]]})
        if self.on_stored is not None:
            self.on_stored(puts)
        await self.store.wait_durable(seq)
        self.stats.attempts[(channel, "failed")] += 1
