"""Ticket ids name their installation: two controllers never mint the same id, one always does."""

from __future__ import annotations

import re
from pathlib import Path

from testkit.clocks import SettableClock

from polyfleet.controller.domain.tickets import TicketCategory, TicketStatus, legacy_ticket_id
from polyfleet.controller.services.entitlement import ASSETS
from polyfleet.controller.services.installation import Installation
from polyfleet.controller.services.ticket_service import TICKETS, TicketService
from polyfleet.controller.settings.tickets import ticket_settings
from polyfleet.controller.store.base import SITES
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.store.transfer import Place, read_place, write_place
from polyfleet.controller.testing import SITE_ADDRESS, SITE_CONTACT
from polyfleet.shared.schema import ProblemCode
from tickets.conftest import SmtpPeer, WebhookPeer, ticket_sections
from tickets.test_ticket_service import T0, asset, desk_over, report

TICKET_ID = re.compile(r"^PF-([A-Z2-7]{5})-[0-9A-F]{10}$")


async def new_store(path: Path) -> TinyDBStore:
    """A fresh store with the site krk and the unit X1 under HEZO+."""
    store = TinyDBStore(path)
    await store.open()
    site = {
        "id": "krk",
        "name": "krk",
        "timezone": "Europe/Warsaw",
        "contact": SITE_CONTACT,
        "delivery_address": SITE_ADDRESS,
    }
    await store.put_many(SITES, {"krk": site})
    await store.put_many(ASSETS, {"X1": asset("X1", "hezo_plus").to_doc()})
    return store


async def camera_ticket(
    store: TinyDBStore, tmp_path: Path, smtp: SmtpPeer | None, webhook: WebhookPeer | None
) -> tuple[TicketService, str]:
    """The ticket service over ``store`` after a camera fault on X1 held long enough."""
    clock = SettableClock(T0)
    settings = ticket_settings(ticket_sections(smtp, webhook, min_duration_s=300, language="en"))
    service = desk_over(store, settings, tmp_path, clock)
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    (ticket,) = service.tickets()
    if smtp is not None or webhook is not None:
        await service.worker.run_once(clock.now)
    return service, ticket.id


async def test_two_fresh_installations_give_the_same_fault_different_ids(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """The same unit and fault in two fresh stores gives two ids, each naming its own
    installation, and the e-mail and the webhook carry the id."""
    ids = []
    for name in ("first", "second"):
        store = await new_store(tmp_path / name)
        service, key = await camera_ticket(store, tmp_path / f"{name}-bundles", smtp_peer, None)
        installation = Installation(store).stored_id()
        assert installation is not None
        match = TICKET_ID.match(key)
        assert match is not None, key
        assert match.group(1) == installation[:5]
        ids.append(key)
        await service.close()
        await store.close()
    assert ids[0] != ids[1]
    mails = [m.message for m in smtp_peer.received]
    assert [m["X-Polyfleet-Ticket"] for m in mails] == ids
    assert [m["Subject"].split()[0] for m in mails] == [f"[{key}]" for key in ids]
    store = await new_store(tmp_path / "third")
    service, key = await camera_ticket(store, tmp_path / "third-bundles", None, webhook_peer)
    assert [p["ticket"]["id"] for p in webhook_peer.received] == [key]
    assert key not in ids
    await service.close()
    await store.close()


async def test_restart_and_backup_keep_the_installation_and_its_ids(tmp_path: Path) -> None:
    """After a restart, and in a copy of the store, the same fault finds the same ticket and
    a new ticket's id names the same installation."""
    store = await new_store(tmp_path / "data" / "store")
    service, key = await camera_ticket(store, tmp_path / "bundles", None, None)
    made = Installation(store).stored_id()
    await service.close()
    await store.close()
    copy = tmp_path / "copy"
    await write_place(Place(str(copy)), await read_place(Place(str(tmp_path / "data"))))
    for path in (tmp_path / "data" / "store", copy / "store"):
        store = TinyDBStore(path)
        await store.open()
        assert Installation(store).stored_id() == made
        service, again = await camera_ticket(store, tmp_path / "bundles", None, None)
        assert again == key
        hand = await service.open_by_hand(
            category=TicketCategory.FAULT, summary="no picture", serial="X1", by="admin"
        )
        assert hand.id.startswith(key[:9]) and hand.id != key
        await service.close()
        await store.close()


async def test_tickets_under_older_ids_keep_them(tmp_path: Path) -> None:
    """A ticket an older controller stored under an id without installation keeps its id:
    the fault coming back reopens it rather than filing a second ticket."""
    store = await new_store(tmp_path / "store")
    clock = SettableClock(T0)
    settings = ticket_settings(ticket_sections(None, None, min_duration_s=300, language="en"))
    service = desk_over(store, settings, tmp_path / "bundles", clock)
    await report(service, clock, "X1", range(0, 8), ProblemCode.CAMERA_DOWN)
    (ticket,) = service.tickets()
    await service.act(ticket.id, "close")
    await service.close()
    # As an older controller stored it: the same document under the id it minted then.
    older = legacy_ticket_id("X1", "camera_down")
    doc = {**ticket.as_document(), **service.get(ticket.id).as_document(), "id": older}
    await store.wait_durable(store.apply({TICKETS: {older: doc}}, {TICKETS: [ticket.id]}))
    service = desk_over(store, settings, tmp_path / "bundles", clock)
    await report(service, clock, "X1", range(8, 20))
    await report(service, clock, "X1", range(20, 30), ProblemCode.CAMERA_DOWN)
    (again,) = service.tickets()
    assert again.id == older and service.ticket_key("X1", "camera_down") == older
    assert again.status is TicketStatus.OPEN and again.reopen_count == 1
    await service.close()
    await store.close()
