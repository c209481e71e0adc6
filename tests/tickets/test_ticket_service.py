"""The ticket service: faults become tickets in the store, sent to real SMTP and webhook peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from testkit.clocks import SettableClock
from testkit.reports import typed_snapshot

from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.domain.assets import Asset, Contract
from polyfleet.controller.domain.tickets import TicketStatus
from polyfleet.controller.events import EventBus
from polyfleet.controller.services.delivery import SENT
from polyfleet.controller.services.entitlement import ASSETS, Registry, load_plans
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.services.ticket_service import FAULT_STATE, TicketService
from polyfleet.controller.settings.tickets import TicketSettings, ticket_settings
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.testing import SITE_CONTACT
from polyfleet.shared.schema import (
    ProblemCode,
)
from tickets.conftest import SmtpPeer, WebhookPeer, ticket_sections

# Monday 24 November 2025, 10:00 in Warsaw.
T0 = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def desk_over(
    store: TinyDBStore, settings: TicketSettings, tmp_path: Path, clock: SettableClock
) -> TicketService:
    """A ticket service over ``store``, with the inventory and registry it reads (as stored)."""
    inventory = Inventory(store, EventBus(store, keep=100), clock, ControllerConfig())
    inventory.load()
    registry = Registry(store, inventory)
    registry.load()
    return TicketService(
        store,
        settings,
        plans=load_plans(),
        bundle_dir=tmp_path / "bundles",
        inventory=inventory,
        registry=registry,
        clock=clock,
    )


def asset(serial: str, plan: str | None, *, number: str = "C-1", room: str = "Wawel") -> Asset:
    contracts: tuple[Contract, ...] = ()
    if plan is not None:
        contracts = (
            Contract(plan=plan, number=number, start=date(2025, 1, 10), end=date(2027, 1, 9)),
        )
    return Asset(
        serial=serial,
        model="studio_x50",
        purchase_date=date(2025, 1, 1),
        site="krk",
        room=room,
        contracts=contracts,
    )


@pytest.fixture
async def desk(
    store: TinyDBStore, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer, tmp_path: Path
) -> AsyncIterator[tuple[TicketService, SettableClock]]:
    clock = SettableClock(T0)
    await store.put_many(
        ASSETS,
        {
            a.serial: a.to_doc()
            for a in (
                asset("X1", "hezo_plus"),
                asset("X2", "poly_plus"),
                asset("X3", None),
                asset("X4", "hezo_plus"),
            )
        },
    )
    settings = ticket_settings(
        ticket_sections(smtp_peer, webhook_peer, min_duration_s=300, language="en")
    )
    service = desk_over(store, settings, tmp_path, clock)
    yield service, clock
    await service.close()


async def report(
    service: TicketService, clock: SettableClock, serial: str, minutes: range, *codes: ProblemCode
) -> None:
    for minute in minutes:
        clock.now = T0 + minute * MINUTE
        await service.on_snapshot(typed_snapshot(serial, *codes, at=clock.now), site="krk")
    await service.wait_prepared()


async def test_held_fault_files_one_ticket_sent_by_mail_and_webhook(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A camera fault held 5 minutes files one Polish HEZO+ ticket, delivered on both channels."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 12), ProblemCode.CAMERA_DOWN)
    tickets = service.tickets()
    assert [(t.serial, t.fault, t.status) for t in tickets] == [
        ("X1", "camera_down", TicketStatus.OPEN)
    ]
    ticket = tickets[0]
    assert ticket.contract_number == "C-1" and ticket.plan == "hezo_plus"
    assert ticket.room == "Wawel" and ticket.language == "pl"
    assert ticket.first_seen == T0 and ticket.evidence
    assert ticket.bundle is None and ticket.bundle_error  # no diagnostics source here
    assert await service.worker.run_once(clock.now) == 2
    assert service.get(ticket.id).status is TicketStatus.SENT
    assert service.get(ticket.id).sent_at == clock.now
    assert len(smtp_peer.received) == 1
    assert "awaria kamery" in smtp_peer.received[0].message["Subject"]
    assert webhook_peer.bad_signatures == 0
    assert [p["ticket"]["id"] for p in webhook_peer.received] == [ticket.id]
    # More reports of the same fault add no ticket and no message.
    await report(service, clock, "X1", range(12, 40), ProblemCode.CAMERA_DOWN)
    assert await service.worker.run_once(clock.now) == 0
    assert len(service.tickets()) == 1 and len(smtp_peer.received) == 1


async def test_short_blip_files_nothing(desk: tuple[TicketService, SettableClock]) -> None:
    """A camera problem gone within the hold time files no ticket."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 3), ProblemCode.CAMERA_DOWN)
    await report(service, clock, "X1", range(3, 30))
    assert service.tickets() == []


async def test_flapping_gives_one_ticket_marked_flapping(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """A camera that keeps failing and recovering within an hour gives one flapping ticket."""
    service, clock = desk
    for start in range(0, 60, 6):
        await report(service, clock, "X1", range(start, start + 2), ProblemCode.CAMERA_DOWN)
        await report(service, clock, "X1", range(start + 2, start + 6))
        await service.worker.run_once(clock.now)
    tickets = service.tickets()
    assert len(tickets) == 1 and tickets[0].flapping
    assert len(smtp_peer.received) == 1


async def test_W5_missing_contract_holds_ticket_until_filled(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """No contract number: held as needs_data naming it; filled in, the ticket goes out."""
    service, clock = desk
    await report(service, clock, "X3", range(0, 8), ProblemCode.MICROPHONE_DOWN)
    (ticket,) = service.tickets()
    assert ticket.status is TicketStatus.NEEDS_DATA
    assert ticket.missing == ["contract_number"]
    assert ticket.plan == "standard" and ticket.language == "en"
    assert await service.worker.run_once(clock.now) == 0
    filled = await service.fill(ticket.id, contract_number="INV-2025-17", force=True)
    assert filled.status is TicketStatus.OPEN
    await service.wait_prepared()
    assert await service.worker.run_once(clock.now) == 2
    assert "INV-2025-17" in smtp_peer.received[0].message.get_body().get_content()  # type: ignore[union-attr]


async def test_unknown_device_is_held_naming_both_fields(
    desk: tuple[TicketService, SettableClock],
) -> None:
    """A device missing from the registry is held for its contract number (its serial is known)."""
    service, clock = desk
    await report(service, clock, "NOTREG", range(0, 8), ProblemCode.LAN_DOWN)
    (ticket,) = service.tickets()
    assert ticket.status is TicketStatus.NEEDS_DATA and ticket.missing == ["contract_number"]
    assert ticket.plan is None and ticket.sla() is None


async def test_W2_W7_missed_reaction_escalates_once_never_to_the_desks_webhook(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """An unacknowledged HEZO+ ticket past its reaction time escalates exactly once, by
    e-mail to the escalation address; the desk's own webhook never gets the escalation."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    await service.worker.run_once(clock.now)
    (ticket,) = service.tickets()
    due = ticket.sla().reaction_due  # type: ignore[union-attr]
    assert due == clock.now + timedelta(hours=1)
    assert await service.check_escalations(due - timedelta(seconds=1)) == 0
    assert await service.check_escalations(due) == 1
    assert await service.check_escalations(due + timedelta(hours=3)) == 0
    await service.worker.run_once(due)
    escalations = [m for m in smtp_peer.received if m.recipients == ["escalation@myhezo.pl"]]
    assert len(escalations) == 1
    assert escalations[0].message["Subject"].startswith("Eskalacja: ")
    assert [p["event"] for p in webhook_peer.received] == ["ticket"]
    assert service.get(ticket.id).escalated_to == ["email:escalation@myhezo.pl"]


async def test_W2_acknowledged_ticket_is_not_escalated(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """An acknowledged ticket never escalates; POLY+ (no reaction promise) never does either."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    await report(service, clock, "X2", range(0, 8), ProblemCode.CAMERA_DOWN)
    await service.worker.run_once(clock.now)
    await service.act(service.ticket_key("X1", "camera_down"), "ack")
    assert await service.check_escalations(clock.now + timedelta(days=10)) == 0
    assert service.get(service.ticket_key("X2", "camera_down")).language == "en"


async def test_recovery_adds_note_and_recurrence_reopens_closed_ticket(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """Recovery adds a note; after closing, the same fault reopens the same ticket and resends."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    await service.worker.run_once(clock.now)
    key = service.ticket_key("X1", "camera_down")
    await report(service, clock, "X1", range(8, 30))
    assert any("recovered" in note.text for note in service.get(key).notes)
    await service.act(key, "close")
    await report(service, clock, "X1", range(200, 210), ProblemCode.CAMERA_DOWN)
    reopened = service.get(key)
    assert reopened.status is TicketStatus.OPEN and reopened.reopen_count == 1
    assert await service.worker.run_once(clock.now) == 2
    assert len(service.tickets()) == 1
    subjects = [m.message["Subject"] for m in smtp_peer.received]
    assert len(subjects) == 2 and "#1" in subjects[1]
    sent: dict[str, Any] = dict(service.store.scan(SENT))
    assert f"{key}.reopened-1.email" in sent


async def test_site_outage_gives_one_site_ticket(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """An agent going offline files one site ticket in the admin's language, no device tickets."""
    service, clock = desk
    await service.inventory.update_site("krk", name="Kraków Zabłocie", contact=SITE_CONTACT)
    for serial in ("X1", "X2", "X4"):
        await report(service, clock, serial, range(0, 1))
    clock.now = T0 + 10 * MINUTE
    await service.on_agent_offline("krk", at=clock.now)
    for serial in ("X1", "X2", "X4"):
        await service.on_device_unreachable(serial, site="krk", at=clock.now)
    await service.tick(clock.now + timedelta(hours=2))
    await service.wait_prepared()
    (ticket,) = service.tickets()
    assert ticket.kind.value == "site" and ticket.fault == "agent_offline"
    assert ticket.affected_serials == ["X1", "X2", "X4"]
    assert ticket.status is TicketStatus.OPEN and ticket.language == "en"
    assert await service.worker.run_once(clock.now) == 2
    assert ticket.site_name == "Kraków Zabłocie"
    subject = smtp_peer.received[0].message["Subject"]
    assert subject.endswith(
        "Site ticket: Kraków Zabłocie (krk) - site offline (agent offline: network or power)"
    )


async def test_send_retries_deliveries_given_up_on(
    store: TinyDBStore, webhook_peer: WebhookPeer, tmp_path: Path
) -> None:
    """A webhook refused for good is tried again when the admin sends the ticket again."""
    clock = SettableClock(T0)
    await store.put_many(ASSETS, {"X1": asset("X1", "hezo_plus").to_doc()})
    settings = ticket_settings(ticket_sections(None, webhook_peer, min_duration_s=60))
    service = desk_over(store, settings, tmp_path, clock)
    try:
        webhook_peer.script = [400]
        await report(service, clock, "X1", range(0, 3), ProblemCode.CAMERA_DOWN)
        (ticket,) = service.tickets()
        assert await service.worker.run_once(clock.now) == 0
        assert [d["state"] for d in service.deliveries(ticket.id)] == ["failed"]
        await service.resend(ticket.id)
        await service.wait_prepared()
        assert await service.worker.run_once(clock.now) == 1
        assert service.get(ticket.id).status is TicketStatus.SENT
        assert len(webhook_peer.received) == 1
    finally:
        await service.close()


async def test_sent_records_are_kept_while_needed_then_pruned(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """Sent records live while their ticket can resend that id, then for the retention only."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    await report(service, clock, "X2", range(0, 8), ProblemCode.CAMERA_DOWN)
    assert await service.worker.run_once(clock.now) == 4
    x1, x2 = service.ticket_key("X1", "camera_down"), service.ticket_key("X2", "camera_down")
    await report(service, clock, "X1", range(8, 30))
    await service.act(x1, "close")
    # Closed, then back: the reopened round sends under new ids.
    await report(service, clock, "X1", range(200, 208), ProblemCode.CAMERA_DOWN)
    assert await service.worker.run_once(clock.now) == 2
    sent_at = clock.now

    def kept() -> list[str]:
        return sorted(service.store.scan(SENT))

    assert len(kept()) == 6
    # Within the retention (90 days by default) nothing goes.
    assert await service.prune_deliveries(sent_at + timedelta(days=89)) == 0
    # Past it: only the first round of X1 (a later round has begun) is forgotten.
    await service.tick(sent_at + timedelta(days=91))
    assert kept() == sorted(
        f"{key}.{purpose}.{channel}"
        for key, purpose in ((x1, "reopened-1"), (x2, "ticket"))
        for channel in ("email", "webhook")
    )
    # X2 (poly_plus, sent, never closed) keeps its records however old; closed X1 loses them.
    await service.act(x1, "close")
    assert await service.prune_deliveries(sent_at + timedelta(days=400)) == 2
    assert {doc["ticket_id"] for doc in service.store.scan(SENT).values()} == {x2}
    # Nothing of the pruned rounds is sent again.
    await service.resume()
    await service.wait_prepared()
    assert await service.worker.run_once(sent_at + timedelta(days=400)) == 0
    assert len(smtp_peer.received) == 3


async def test_closing_an_unsent_ticket_drops_its_waiting_messages(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A false alarm closed while SMTP and the webhook are down never reaches the desk later."""
    service, clock = desk
    await smtp_peer.stop()
    webhook_peer.script = [503]
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    assert await service.worker.run_once(clock.now) == 0
    key = service.ticket_key("X1", "camera_down")
    assert [d["state"] for d in service.deliveries(key)] == ["pending", "pending"]
    closed = await service.act(key, "close")
    assert "no longer sent" in closed.notes[-1].text
    await smtp_peer.start()
    assert await service.worker.run_once(clock.now + timedelta(hours=5)) == 0
    assert smtp_peer.received == [] and webhook_peer.received == []


async def test_W7_acknowledged_while_escalation_waits_sends_no_escalation(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """An escalation held up by a delivery outage is dropped once the desk acknowledges."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    assert await service.worker.run_once(clock.now) == 2
    key = service.ticket_key("X1", "camera_down")
    due = service.get(key).sla().reaction_due  # type: ignore[union-attr]
    assert due is not None
    await smtp_peer.stop()
    webhook_peer.script = [503]
    assert await service.check_escalations(due) == 1
    assert await service.worker.run_once(due) == 0
    clock.now = due + MINUTE
    await service.act(key, "ack")
    await smtp_peer.start()
    assert await service.worker.run_once(due + timedelta(hours=5)) == 0
    assert len(smtp_peer.received) == 1 and len(webhook_peer.received) == 1
    assert service.deliveries(key) and all(d["state"] == "sent" for d in service.deliveries(key))


async def test_W5_held_ticket_goes_out_once_the_registry_has_its_contract(
    desk: tuple[TicketService, SettableClock], smtp_peer: SmtpPeer
) -> None:
    """A ticket held for its contract number is completed from a later registry import."""
    service, clock = desk
    await report(service, clock, "X3", range(0, 8), ProblemCode.MICROPHONE_DOWN)
    key = service.ticket_key("X3", "microphone_down")
    await service.tick(clock.now)
    assert service.get(key).status is TicketStatus.NEEDS_DATA
    await service.registry.import_assets(
        [asset("X3", "partner_poly_plus", number="PPP-33")], dry_run=False
    )
    await service.tick(clock.now)
    await service.wait_prepared()
    ticket = service.get(key)
    assert ticket.status is TicketStatus.OPEN and ticket.contract_number == "PPP-33"
    assert ticket.plan == "partner_poly_plus" and ticket.language == "pl"
    assert await service.worker.run_once(clock.now) == 2
    body = smtp_peer.received[0].message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Numer umowy serwisowej: PPP-33" in text
    assert "numer umowy serwisowej uzupełniony z rejestru urządzeń" in text


async def test_plans_without_a_language_use_the_admins(
    store: TinyDBStore, smtp_peer: SmtpPeer, tmp_path: Path
) -> None:
    """Standard warranty and site tickets follow tickets.language; POLY+ stays English."""
    clock = SettableClock(T0)
    await store.put_many(
        ASSETS,
        {a.serial: a.to_doc() for a in (asset("X2", "poly_plus"), asset("X3", "standard"))},
    )
    settings = ticket_settings(ticket_sections(smtp_peer, None, min_duration_s=60, language="pl"))
    service = desk_over(store, settings, tmp_path, clock)
    try:
        await report(service, clock, "X2", range(0, 3), ProblemCode.LAN_DOWN)
        await report(service, clock, "X3", range(0, 3), ProblemCode.LAN_DOWN)
        await service.on_agent_offline("krk", at=clock.now)
        await service.wait_prepared()
        languages = {t.serial or t.site: t.language for t in service.tickets()}
        assert languages == {"X2": "en", "X3": "pl", "krk": "pl"}
        assert await service.worker.run_once(clock.now) == 3
        subjects = sorted(m.message["Subject"].split("] ", 1)[1] for m in smtp_peer.received)
        assert subjects == [
            "Service ticket: Poly Studio X50 X2 - network link (LAN) down",
            "Zgłoszenie dotyczące lokalizacji: krk - lokalizacja bez łączności "
            "(agent offline: sieć lub zasilanie)",
            "Zgłoszenie serwisowe: Poly Studio X50 X3 - brak połączenia sieciowego (LAN)",
        ]
    finally:
        await service.close()


async def test_healthy_reports_do_not_rewrite_detector_state(
    desk: tuple[TicketService, SettableClock],
) -> None:
    """Detector state is saved when a device is first seen, not again for its healthy reports."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 1))
    first = dict(service.store.scan(FAULT_STATE))
    assert first["X1"]["site"] == "krk"
    await report(service, clock, "X1", range(1, 30))
    assert dict(service.store.scan(FAULT_STATE)) == first


async def test_listings_by_status_site_and_device_lost_track_of_writes(
    desk: tuple[TicketService, SettableClock], store: TinyDBStore, tmp_path: Path
) -> None:
    """Tickets chosen by status, site and device (and their deliveries) follow filing,
    sending and closing, and a service built afresh on the store finds them the same way."""
    service, clock = desk
    await report(service, clock, "X1", range(0, 12), ProblemCode.CAMERA_DOWN)
    (ticket,) = service.tickets()
    assert [t.id for t in service.tickets(status="open", site="krk", serial="X1")] == [ticket.id]
    assert service.tickets(site="waw") == [] and service.device_tickets("X2") == []
    assert service.open_tickets_by_serial() == {"X1": (ticket.id,)}
    assert await service.worker.run_once(clock.now) == 2
    assert [t.id for t in service.tickets(status="sent")] == [ticket.id]
    assert service.tickets(status="open") == []
    every = [d for d in service.deliveries() if d["ticket_id"] == ticket.id]
    assert len(every) == 2 and service.deliveries(ticket.id) == every
    assert service.delivery_state(ticket.id) == ("sent", None)
    await service.act(ticket.id, "close")
    assert service.active_tickets() == [] and service.open_tickets_by_serial() == {}
    assert [t.id for t in service.closed_since(clock.now)] == [ticket.id]
    assert service.closed_since(clock.now + MINUTE) == []
    fresh = desk_over(store, service.settings, tmp_path, clock)
    try:
        assert [t.id for t in fresh.tickets(status="closed", serial="X1")] == [ticket.id]
        assert [t.id for t in fresh.device_tickets("X1")] == [ticket.id]
        assert fresh.deliveries(ticket.id) == every
    finally:
        await fresh.close()
