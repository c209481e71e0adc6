"""The ticket model: W5 holds, lifecycle order, reopening, language and rendering."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from polyfleet.controller.domain.sla import SlaTerms
from polyfleet.controller.domain.tickets import (
    _FAULTS,
    _LABELS,
    ACTIONS,
    NOTES,
    REPLACEMENT_STEPS,
    Ticket,
    TicketCategory,
    TicketError,
    TicketKind,
    TicketStatus,
    choose_language,
    render_escalation,
    render_ticket,
    ticket_id,
)
from polyfleet.controller.services.entitlement import load_plans

#: An installation's random id, as ``services.installation`` makes them.
INSTALLATION = "K7Q2MX4BZP3WNA6D"
T0 = datetime(2025, 11, 28, 15, 30, tzinfo=UTC)  # Friday 16:30 in Warsaw
REPORTER = {"name": "Anna Nowak", "phone": "+48 12 345 67 89", "email": "anna@example.pl"}
ADDRESS = {"street": "ul. Floriańska 1", "postal_code": "31-019", "city": "Kraków", "country": "PL"}


def make(**overrides: object) -> Ticket:
    fields: dict[str, object] = {
        "id": ticket_id(INSTALLATION, "X1", "camera_down"),
        "kind": TicketKind.DEVICE,
        "fault": "camera_down",
        "status": TicketStatus.OPEN,
        "serial": "X1",
        "contract_number": "HZ-2025-001",
        "plan": "hezo_plus",
        "model": "studio_x50",
        "site": "krk",
        "room": "Sala Wawel",
        "language": "pl",
        "first_seen": T0 - timedelta(minutes=10),
        "opened_at": T0,
        "reporter": REPORTER,
        "rma_address": ADDRESS,
    }
    fields.update(overrides)
    ticket = Ticket.model_validate(fields)
    ticket.apply_terms(SlaTerms.from_plan(load_plans().get(str(fields["plan"]))))
    return ticket


def test_W5_missing_serial_and_contract_are_named() -> None:
    """A ticket without serial or contract number says exactly which is missing."""
    assert make(contract_number=None).missing == ["contract_number"]
    assert make(serial=None, contract_number=None).missing == ["serial", "contract_number"]
    assert make().missing == []


def test_missing_reporter_and_delivery_address_fields_are_named() -> None:
    """A ticket without the site's reporter or delivery address names each missing field;
    a site ticket needs the reporter but no delivery address; filling them releases it."""
    bare = make(reporter={"name": "Anna Nowak"}, rma_address=None)
    assert bare.missing == [
        "contact_phone",
        "contact_email",
        "address_street",
        "address_postal_code",
        "address_city",
        "address_country",
    ]
    site = make(kind=TicketKind.SITE, serial=None, contract_number=None, rma_address=None)
    assert site.missing == []
    held = make(reporter=None, status=TicketStatus.NEEDS_DATA)
    held.fill(serial=None, contract_number=None, at=T0, contact={"name": "A", "phone": "600"})
    assert held.status is TicketStatus.NEEDS_DATA and held.missing == ["contact_email"]
    held.fill(serial=None, contract_number=None, at=T0, by="ops", contact={"email": "a@b.pl"})
    assert held.status is TicketStatus.OPEN
    assert held.reporter is not None and held.reporter.name == "A"
    assert held.notes[-1].key == "details_filled"


def test_W5_fill_releases_a_held_ticket() -> None:
    """Filling in the contract number turns needs_data into open; partial input keeps it held."""
    ticket = make(contract_number=None, status=TicketStatus.NEEDS_DATA)
    ticket.fill(serial=None, contract_number="  ", at=T0)
    assert ticket.status is TicketStatus.NEEDS_DATA
    ticket.fill(serial=None, contract_number="HZ-9", at=T0)
    assert ticket.status.value == "open" and ticket.contract_number == "HZ-9"


def test_W5_sent_ticket_cannot_be_refilled() -> None:
    """Once sent, the ticket's serial and contract number are the desk's record."""
    ticket = make()
    ticket.mark_sent(T0)
    with pytest.raises(TicketError, match="before it is sent"):
        ticket.fill(serial="X2", contract_number=None, at=T0)


def test_lifecycle_moves_forward_only() -> None:
    """ack, accept, received, close in order; going back or acting before sending is refused."""
    ticket = make()
    with pytest.raises(TicketError, match="must be sent"):
        ticket.transition("ack", T0)
    ticket.mark_sent(T0)
    assert ticket.status is TicketStatus.SENT and ticket.sent_at == T0
    ticket.transition("accept", T0 + timedelta(hours=1))
    assert ticket.acknowledged_at == T0 + timedelta(hours=1)
    with pytest.raises(TicketError, match="move it back"):
        ticket.transition("ack", T0 + timedelta(hours=2))
    ticket.transition("received", T0 + timedelta(days=2))
    ticket.transition("close", T0 + timedelta(days=3))
    assert ticket.status.value == "closed"
    with pytest.raises(TicketError, match="is closed"):
        ticket.transition("ack", T0 + timedelta(days=4))
    with pytest.raises(TicketError, match="unknown"):
        ticket.transition("explode", T0)


#: The next steps of a unit's hardware fault in each status, as the dashboard offers them.
UNIT_STEPS = {
    TicketStatus.NEEDS_DATA: ["close"],
    TicketStatus.OPEN: ["close"],
    TicketStatus.SENT: ["ack", "accept", "close"],
    TicketStatus.ACKNOWLEDGED: ["accept", "close"],
    TicketStatus.ACCEPTED: ["shipped", "received", "close"],
    TicketStatus.REPLACEMENT_SHIPPED: ["received", "close"],
    TicketStatus.REPLACEMENT_RECEIVED: ["returned", "close"],
    TicketStatus.RETURNED: ["close"],
    TicketStatus.CLOSED: [],
}


def test_next_steps_follow_the_status_and_only_a_units_fault_gets_a_replacement() -> None:
    """Each status offers its next steps (accepting may skip the acknowledgement, a
    replacement may arrive unannounced, nothing jumps over acceptance or arrival); a site's
    outage and a support or configuration request never offer a replacement step, and
    every step not offered is refused with the reason."""
    others = {
        "site": {"kind": TicketKind.SITE, "serial": None, "contract_number": None},
        "support": {"category": TicketCategory.SUPPORT},
        "configuration": {"category": TicketCategory.CONFIGURATION},
    }
    for status, steps in UNIT_STEPS.items():
        unit = make(status=status)
        assert unit.allowed_actions() == steps, status
        assert make(status=status, category=TicketCategory.FAULT).allowed_actions() == steps
        for name, fields in others.items():
            other = make(status=status, **fields)
            expected = [step for step in steps if step not in REPLACEMENT_STEPS]
            assert other.allowed_actions() == expected, (name, status)
        for action in ACTIONS:
            if action not in steps:
                with pytest.raises(TicketError, match=re.escape(unit.id)):
                    unit.transition(action, T0 + timedelta(days=1))
    refused = make(status=TicketStatus.ACCEPTED, category=TicketCategory.SUPPORT)
    with pytest.raises(TicketError, match="is a support request: there is no unit to replace"):
        refused.transition("shipped", T0 + timedelta(days=1))
    early = make(status=TicketStatus.SENT)
    with pytest.raises(TicketError, match="shipped only once accepted"):
        early.transition("shipped", T0 + timedelta(days=1))


def test_W2_E9_W6_deadlines_follow_the_lifecycle() -> None:
    """Reaction from sending, delivery from acceptance, return from the replacement's arrival."""
    ticket = make()
    ticket.mark_sent(T0)
    ticket.transition("accept", T0 + timedelta(minutes=20))
    ticket.transition("received", datetime(2025, 12, 1, 12, 0, tzinfo=UTC))
    sla = ticket.sla()
    assert sla is not None
    assert sla.as_json() == {
        "window": "8x5",
        "reaction_due": "2025-12-01T09:30:00+01:00",
        "delivery_due": "2025-12-01T17:00:00+01:00",
        "delivery_means": "arrival",
        "return_due": "2025-12-08T13:00:00+01:00",
    }


def test_W2_reaction_overdue_only_when_sent_and_unacknowledged() -> None:
    """The escalation condition: sent, past reaction_due, not acknowledged, not yet escalated."""
    ticket = make()
    monday_0931 = datetime(2025, 12, 1, 8, 31, tzinfo=UTC)
    assert not ticket.reaction_overdue(monday_0931)
    ticket.mark_sent(T0)
    assert not ticket.reaction_overdue(datetime(2025, 12, 1, 8, 29, tzinfo=UTC))
    assert ticket.reaction_overdue(monday_0931)
    ticket.escalated_at = monday_0931
    assert not ticket.reaction_overdue(monday_0931 + timedelta(hours=1))
    poly = make(plan="poly_plus", language="en")
    poly.mark_sent(T0)
    assert not poly.reaction_overdue(T0 + timedelta(days=30))


def test_recurrence_after_close_reopens_the_same_ticket() -> None:
    """A closed ticket comes back as the same id, open again, with clocks reset."""
    ticket = make()
    ticket.mark_sent(T0)
    ticket.transition("close", T0 + timedelta(days=1))
    ticket.reopen(T0 + timedelta(days=2), T0 + timedelta(days=2) - timedelta(minutes=5))
    assert ticket.id == ticket_id(INSTALLATION, "X1", "camera_down")
    assert ticket.status is TicketStatus.OPEN
    assert ticket.reopen_count == 1 and ticket.sent_at is None and ticket.closed_at is None


def test_document_round_trip_keeps_everything() -> None:
    """A stored document reads back as the same ticket (the store holds plain JSON)."""
    ticket = make(flapping=True, affected_serials=["A", "B"])
    ticket.add_note(T0, "recovered")
    ticket.add_evidence({"serial": "X1"})
    doc = ticket.as_document()
    assert doc["missing"] == [] and doc["sla"]["window"] == "8x5"
    assert Ticket.from_document(doc) == ticket


@pytest.mark.parametrize(
    ("plan", "admin", "expected"),
    [
        ("hezo_plus", "en", "pl"),
        ("partner_poly_plus", "en", "pl"),
        ("poly_plus", "pl", "en"),
        ("standard", "pl", "pl"),
        ("extended", "en", "en"),
        (None, "pl", "pl"),
    ],
)
def test_H4_P2_ticket_language(plan: str | None, admin: str, expected: str) -> None:
    """Polish for HEZO+ and Partner POLY+, English for POLY+, else the admin's language."""
    language = None if plan is None else load_plans().get(plan).language
    assert choose_language(language, admin) == expected


EVIDENCE = {
    "serial": "X1",
    "model": "studio_x50",
    "firmware": {"version": "4.1.0", "build": "180034"},
    "provider": "teams",
    "collected_at": "2025-11-28T15:20:00Z",
    "health": {"problems": [{"code": "camera_down", "detail": "camera not all_up"}]},
}


def test_polish_rendering_carries_every_desk_fact() -> None:
    """The Polish ticket names serial, contract, plan, model, site, room, fault and first seen."""
    ticket = make(
        fault_detail="system.status.mr.camera down", plan_name="HEZO+", site_name="Kraków Zabłocie"
    )
    ticket.add_evidence(EVIDENCE)
    text = render_ticket(ticket)
    assert text.subject == f"[{ticket.id}] Zgłoszenie serwisowe: Poly Studio X50 X1 - awaria kamery"
    lines = text.body.splitlines()
    for line in (
        "Numer seryjny: X1",
        "Numer umowy serwisowej: HZ-2025-001",
        "Usługa: HEZO+ (hezo_plus)",
        "Model: Poly Studio X50",
        "Lokalizacja: Kraków Zabłocie (krk)",
        "Sala: Sala Wawel",
        "Usterka: awaria kamery (system.status.mr.camera down)",
        "Pierwsze wystąpienie: 2025-11-28T16:20:00+01:00",
        "Okno przyjmowania zgłoszeń: 8x5 (poniedziałek-piątek 9:00-17:00 czasu polskiego, bez "
        "świąt i dni ustawowo wolnych)",
        "Czas reakcji: 1 godz. (liczony w oknie przyjmowania zgłoszeń)",
        "Pakiet diagnostyczny niedostępny",
        "Raporty potwierdzające usterkę:",
        "  2025-11-28T16:20:00+01:00  X1  Poly Studio X50  oprogramowanie 4.1.0  teams"
        "  camera_down (camera not all_up)",
    ):
        assert line in lines, line


def test_polish_ticket_notes_are_polish_and_english_stays_english() -> None:
    """History notes render in the ticket's language; the stored text stays English."""
    ticket = make(contract_number=None)
    ticket.note(T0, "held", missing="contract_number")
    ticket.note(T0, "recovered", when="2025-11-28T15:45:00+00:00")
    ticket.note(T0, "escalated", email="escalation@myhezo.pl")
    body = render_ticket(ticket).body
    assert "wstrzymane: brak danych wymaganych przez serwis (Numer umowy serwisowej)" in body
    assert "urządzenie odzyskało sprawność: usterki nie ma od 2025-11-28T16:45:00+01:00" in body
    assert "eskalacja do escalation@myhezo.pl" in body
    assert "recovered" not in body and "held" not in body
    assert ticket.notes[0].text == "held: missing contract_number"
    english = render_ticket(ticket.model_copy(update={"language": "en"})).body
    assert "recovered: the fault was gone at 2025-11-28T16:45:00+01:00" in english
    assert "held: missing Service contract number" in english


def test_polish_texts_are_proper_polish_with_diacritics() -> None:
    """Every Polish label, fault and note is written with Polish letters, none left English."""
    polish = [t["pl"] for t in (*_FAULTS.values(), *_LABELS.values(), *NOTES.values())]
    english = [t["en"] for t in (*_FAULTS.values(), *_LABELS.values(), *NOTES.values())]
    joined = " ".join(polish).lower()
    for letter in "ąęółśżćń":
        assert letter in joined, letter
    # Words typed without their Polish letters would read as a careless translation.
    for folded in ("zglosz", "urzadz", "uslug", "polaczen", "pamiec", "blad", "wystap", "zalacz"):
        assert folded not in joined, folded
    # Each Polish text differs from its English one, except names that are the same in both.
    same = {pl for pl, en in zip(polish, english, strict=True) if pl == en}
    assert same <= {"Model"}


def test_english_rendering_and_escalation() -> None:
    """POLY+ tickets render in English; the escalation repeats the ticket after its notice."""
    ticket = make(plan="poly_plus", language="en", flapping=True)
    ticket.mark_sent(T0)
    text = render_ticket(ticket)
    assert "Service contract number: HZ-2025-001" in text.body
    assert "Flapping" in text.body
    escalation = render_escalation(ticket)
    assert escalation.subject.startswith("Escalation: ")
    assert "has not been acknowledged" in escalation.body


def test_site_ticket_needs_no_serial() -> None:
    """A site ticket (network or power) is complete without a serial or contract."""
    ticket = make(
        id=ticket_id(INSTALLATION, "site:krk", "agent_offline"),
        kind=TicketKind.SITE,
        fault="agent_offline",
        serial=None,
        contract_number=None,
        affected_serials=["X1", "X2"],
        language="en",
    )
    assert ticket.missing == []
    body = render_ticket(ticket).body
    assert "Affected devices: X1, X2" in body and "network or power" in body
