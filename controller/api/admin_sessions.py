"""Admin sessions on the units: taken from every accepted batch while this controller is
active, told as security events (the audit log, ``[security_webhook]``), counted in
``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from polyfleet.controller.active import run_when_active
from polyfleet.controller.events import Event, SnapshotsIngested
from polyfleet.controller.keys import CORE, METRICS
from polyfleet.controller.services.admin_sessions import AdminSessionWatch, UnexpectedSession
from polyfleet.controller.services.email import DeliveryError
from polyfleet.controller.services.webhook import WebhookSender, encode_payload

log = logging.getLogger(__name__)

#: Attempts to post one security event, and the wait before the first retry (then doubled).
#: Not kept across a restart: the audit log is the record, the webhook a prompt.
WEBHOOK_ATTEMPTS = 5
WEBHOOK_RETRY_S = 2.0


class AdminSessionCollector(Collector):
    """Other admins' sessions open on the units, and the unexpected ones since start."""

    def __init__(self, watch: AdminSessionWatch) -> None:
        self._watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        open_now = GaugeMetricFamily(
            "polyfleet_admin_sessions_open",
            "Admin sessions open on the units that are not the agents' own, by site and kind",
            labels=["site", "kind"],
        )
        for (site, kind), count in sorted(self._watch.open_sessions().items()):
            open_now.add_metric([site, kind], count)
        yield open_now
        unexpected = CounterMetricFamily(
            "polyfleet_admin_sessions_unexpected",
            "New admin sessions from outside the site's admin networks since start (each a "
            "security event in the audit log), by site",
            labels=["site"],
        )
        for site, count in sorted(self._watch.stats.unexpected.items()):
            unexpected.add_metric([site], count)
        yield unexpected


async def _feed(watch: AdminSessionWatch, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, SnapshotsIngested) and event.site_id is not None:
            await watch.take(event.site_id, event.agent_id, event.documents)


async def post_event(sender: WebhookSender, event: UnexpectedSession, at: str) -> None:
    """Post one security event, retrying a while; a failure is logged (the audit log has it)."""
    body = encode_payload(
        {
            "event": "admin_session.unexpected",
            "at": at,
            "site": event.site_id,
            "serial": event.serial,
            "session": event.details(),
        }
    )
    # The same event always carries the same delivery id: a receiver drops a repeat.
    delivery_id = f"admin-session-{event.serial}-{event.key}"
    delay = WEBHOOK_RETRY_S
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        try:
            await sender.send(delivery_id, body)
        except DeliveryError as exc:
            if exc.permanent or attempt == WEBHOOK_ATTEMPTS:
                log.error(
                    "security webhook: %s after %d attempts; the event is in the audit log",
                    exc,
                    attempt,
                )
                return
            await asyncio.sleep(delay)  # waits-for: the receiver to come back
            delay *= 2
        else:
            return


async def admin_session_context(app: web.Application) -> AsyncIterator[None]:
    """Background work for ``cleanup_ctx``: the sessions of every accepted batch."""
    core = app[CORE]
    watch = core.admin_sessions
    collector = AdminSessionCollector(watch)
    app[METRICS].register(collector)
    sender = WebhookSender(watch.webhook) if watch.webhook is not None else None
    posting: set[asyncio.Task[None]] = set()

    async def tell(event: UnexpectedSession) -> None:
        # In the background: a slow receiver must not hold up the next batch's sessions.
        assert sender is not None
        task = asyncio.create_task(post_event(sender, event, core.clock().isoformat()))
        posting.add(task)
        task.add_done_callback(posting.discard)

    if sender is not None:
        watch.listeners.append(tell)
    subscription = core.bus.subscribe_batches(
        lambda events: _feed(watch, events), kinds={SnapshotsIngested}
    )
    try:
        yield
    finally:
        subscription.cancel()
        if sender is not None:
            watch.listeners.remove(tell)
            for task in list(posting):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await sender.close()
        app[METRICS].unregister(collector)


def register(app: web.Application) -> None:
    run_when_active(app, admin_session_context)
