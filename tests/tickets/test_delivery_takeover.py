"""Ticket delivery across a takeover: a controller that lost the database sends nothing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg

from polyfleet.controller.services.delivery import (
    OUTBOX,
    SENT,
    DeliveryWorker,
    OutgoingMessage,
    TicketOutbox,
    outbox_entries,
)
from polyfleet.controller.settings.tickets import ticket_settings
from polyfleet.controller.store.postgres import PostgresStore, StoreDeposed
from tickets.conftest import WebhookPeer, ticket_sections
from tickets.test_delivery import NOW


def message(ticket_id: str) -> OutgoingMessage:
    return OutgoingMessage(
        ticket_id=ticket_id,
        purpose="ticket",
        to="pomoc@myhezo.pl",
        subject=f"[{ticket_id}] Zgłoszenie serwisowe",
        body="Numer seryjny: X1\n",
        payload={"ticket": {"id": ticket_id, "serial": "X1"}},
    )


async def test_deposed_controller_sends_nothing_and_the_new_one_sends_each_once(
    postgres_url: str, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """Messages waiting when the active one lost the database go out once, from the new one."""
    settings = ticket_settings(ticket_sections(None, webhook_peer))
    first = PostgresStore(postgres_url, holder="first", heartbeat_s=3600)
    await first.open()
    old_worker = DeliveryWorker(first, settings)
    entries = {}
    for number in (1, 2):
        entries.update(
            outbox_entries(message(f"PF-000000000{number}"), channels=("webhook",), now=NOW)
        )
    await first.put_many(OUTBOX, TicketOutbox(first).fresh(entries))
    # The first controller's session ends (a partition) and a second one takes over.
    second = PostgresStore(postgres_url, holder="second")
    taking_over = asyncio.create_task(second.open(wait=True))
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", first._backend_pid)
    finally:
        await conn.close()
    await asyncio.wait_for(taking_over, 30)
    try:
        with contextlib.suppress(StoreDeposed):
            await old_worker.run_once(NOW)
        assert webhook_peer.calls == 0
        new_worker = DeliveryWorker(second, settings)
        assert await new_worker.run_once(NOW) == 2
        assert await new_worker.run_once(NOW) == 0
        await new_worker.close()
        assert sorted(webhook_peer.delivery_ids) == [
            "PF-0000000001.ticket.webhook",
            "PF-0000000002.ticket.webhook",
        ]
        assert set(second.scan(SENT)) == set(entries) and second.count(OUTBOX) == 0
    finally:
        await old_worker.close()
        await first.close()
        await second.close()
