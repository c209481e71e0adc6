"""Fault tickets: the model, its lifecycle and its rendering in Polish or English."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.sla import DeliveryKind, SlaDeadlines, SlaTerms, deadlines

Language = Literal["pl", "en"]
LANGUAGES: tuple[Language, ...] = ("pl", "en")
#: Evidence kept per ticket: the first snapshots that showed the fault and the latest ones.
MAX_EVIDENCE = 6
#: Notes kept per ticket (a flapping device must not grow its ticket forever).
MAX_NOTES = 50


class TicketStatus(StrEnum):
    NEEDS_DATA = "needs_data"
    OPEN = "open"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    ACCEPTED = "accepted"
    REPLACEMENT_SHIPPED = "replacement_shipped"
    REPLACEMENT_RECEIVED = "replacement_received"
    RETURNED = "returned"
    CLOSED = "closed"


class TicketKind(StrEnum):
    DEVICE = "device"
    SITE = "site"


#: Admin actions and the status each one leads to; a plain table, checked by ``transition``.
ACTIONS: dict[str, TicketStatus] = {
    "ack": TicketStatus.ACKNOWLEDGED,
    "accept": TicketStatus.ACCEPTED,
    "shipped": TicketStatus.REPLACEMENT_SHIPPED,
    "received": TicketStatus.REPLACEMENT_RECEIVED,
    "returned": TicketStatus.RETURNED,
    "close": TicketStatus.CLOSED,
}

#: Lifecycle order; an admin action may move a ticket forward (skipping steps), never back.
_ORDER = list(TicketStatus)
#: Statuses in which the desk has the ticket (it has been sent).
DELIVERED = frozenset(_ORDER[_ORDER.index(TicketStatus.SENT) :]) - {TicketStatus.CLOSED}
#: Statuses in which the ticket is still being worked on.
ACTIVE = frozenset(_ORDER) - {TicketStatus.CLOSED}


@dataclass(frozen=True)
class RunningClock:
    """One running SLA clock of a ticket: which one and when it runs out."""

    name: Literal["reaction", "delivery", "return"]
    due: datetime


class TicketError(ValueError):
    """An action that the ticket's state does not allow; the message says why and what to do."""


class Note(BaseModel):
    """A line of the ticket's history; ``key`` and ``params`` let it be rendered in Polish."""

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime
    text: str
    key: str | None = None
    params: dict[str, str] = Field(default_factory=dict)


class Bundle(BaseModel):
    """The diagnostics bundle the agent collected (W4); the bytes live beside the ticket."""

    model_config = ConfigDict(extra="forbid")

    filename: str
    sha256: str
    size: int = Field(ge=0)
    content_type: str = "application/gzip"


class Ticket(BaseModel):
    """One ticket per device (or site) and fault; stored as a plain JSON document."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    kind: TicketKind
    fault: str
    fault_detail: str = ""
    status: TicketStatus
    serial: str | None = None
    contract_number: str | None = None
    plan: str | None = None
    plan_name: str | None = None
    model: str | None = None
    site: str | None = None
    site_name: str | None = None
    room: str | None = None
    host_serial: str | None = None
    affected_serials: list[str] = Field(default_factory=list)
    language: Language
    window: Literal["8x5", "24x7"] | None = None
    reaction_hours: int | None = None
    delivery_kind: DeliveryKind | None = None
    delivery_amount: int = 0
    return_days: int | None = None
    flapping: bool = False
    first_seen: AwareDatetime
    opened_at: AwareDatetime
    sent_at: AwareDatetime | None = None
    acknowledged_at: AwareDatetime | None = None
    accepted_at: AwareDatetime | None = None
    shipped_at: AwareDatetime | None = None
    received_at: AwareDatetime | None = None
    returned_at: AwareDatetime | None = None
    closed_at: AwareDatetime | None = None
    escalated_at: AwareDatetime | None = None
    reopen_count: int = 0
    evidence: list[dict[str, Any]] = Field(default_factory=list)
    bundle: Bundle | None = None
    bundle_error: str | None = None
    notes: list[Note] = Field(default_factory=list)

    # -- what the desk needs (W5) -------------------------------------------------

    @property
    def missing(self) -> list[str]:
        """Fields the desk requires and the ticket lacks (W5); empty for a site ticket."""
        if self.kind is TicketKind.SITE:
            return []
        return [name for name in ("serial", "contract_number") if not getattr(self, name)]

    @property
    def sla_terms(self) -> SlaTerms | None:
        if self.window is None or self.delivery_kind is None or self.return_days is None:
            return None
        return SlaTerms(
            window=self.window,
            reaction_hours=self.reaction_hours,
            delivery_kind=self.delivery_kind,
            delivery_amount=self.delivery_amount,
            return_days=self.return_days,
        )

    def apply_terms(self, terms: SlaTerms | None) -> None:
        """Copy the plan's SLA terms onto the ticket: later catalogue edits move no deadline."""
        if terms is None:
            self.window = None
            self.reaction_hours = None
            self.delivery_kind = None
            self.delivery_amount = 0
            self.return_days = None
            return
        self.window = terms.window
        self.reaction_hours = terms.reaction_hours
        self.delivery_kind = terms.delivery_kind
        self.delivery_amount = terms.delivery_amount
        self.return_days = terms.return_days

    def sla(self) -> SlaDeadlines | None:
        terms = self.sla_terms
        if terms is None:
            return None
        return deadlines(
            terms, submitted=self.sent_at, accepted=self.accepted_at, received=self.received_at
        )

    def as_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        doc["missing"] = self.missing
        sla = self.sla()
        doc["sla"] = None if sla is None else sla.as_json()
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Ticket:
        fields = {k: v for k, v in doc.items() if k not in ("missing", "sla")}
        return cls.model_validate(fields)

    # -- lifecycle ----------------------------------------------------------------

    def add_note(self, at: datetime, text: str) -> None:
        self.notes = [*self.notes, Note(at=at, text=text)][-MAX_NOTES:]

    def note(self, at: datetime, key: str, **params: str) -> None:
        """A note from the ``NOTES`` table: stored in English, rendered in the ticket's language."""
        text = NOTES[key]["en"].format(**params)
        self.notes = [*self.notes, Note(at=at, text=text, key=key, params=params)][-MAX_NOTES:]

    def add_evidence(self, snapshot: dict[str, Any]) -> None:
        """Keep the first snapshots that showed the fault and the latest ones."""
        kept = [*self.evidence, snapshot]
        if len(kept) > MAX_EVIDENCE:
            half = MAX_EVIDENCE // 2
            kept = kept[:half] + kept[-(MAX_EVIDENCE - half) :]
        self.evidence = kept

    def fill(self, *, serial: str | None, contract_number: str | None, at: datetime) -> None:
        """The admin supplies what W5 requires; complete, the ticket is ``open`` (ready to send)."""
        if self.status is not TicketStatus.NEEDS_DATA and self.status is not TicketStatus.OPEN:
            raise TicketError(
                f"ticket {self.id} is {self.status.value}: its serial and contract number "
                "can only be changed before it is sent"
            )
        if serial is not None:
            self.serial = serial.strip() or None
        if contract_number is not None:
            self.contract_number = contract_number.strip() or None
        if self.missing:
            self.status = TicketStatus.NEEDS_DATA
        else:
            self.status = TicketStatus.OPEN
            self.note(at, "filled")

    def mark_sent(self, at: datetime) -> None:
        if self.status is TicketStatus.OPEN:
            self.status = TicketStatus.SENT
            self.sent_at = at

    def refusal(self, action: str) -> str | None:
        """Why ``action`` (one of ``ACTIONS``) is not allowed now, or None when it is."""
        target = ACTIONS.get(action)
        if target is None:
            return f"action {action!r} is unknown; use one of {', '.join(ACTIONS)}"
        if self.status is TicketStatus.CLOSED:
            return f"ticket {self.id} is closed; it reopens by itself if the fault comes back"
        # Closing is always allowed (a false alarm is closed before it is sent).
        if target is not TicketStatus.CLOSED:
            if self.status not in DELIVERED:
                return (
                    f"ticket {self.id} is {self.status.value}: it must be sent before it can be "
                    f"{target.value}"
                    + (f" (missing: {', '.join(self.missing)})" if self.missing else "")
                )
            if _ORDER.index(target) <= _ORDER.index(self.status):
                return (
                    f"ticket {self.id} is already {self.status.value}; {action} would move it back"
                )
        return None

    def allowed_actions(self) -> list[str]:
        """The admin actions ``transition`` accepts now, in lifecycle order."""
        return [action for action in ACTIONS if self.refusal(action) is None]

    def transition(self, action: str, at: datetime) -> None:
        """Apply an admin action, one of ``ACTIONS``; forward only, never back."""
        refused = self.refusal(action)
        if refused is not None:
            raise TicketError(refused)
        target = ACTIONS[action]
        self.status = target
        stamp = {
            TicketStatus.ACKNOWLEDGED: "acknowledged_at",
            TicketStatus.ACCEPTED: "accepted_at",
            TicketStatus.REPLACEMENT_SHIPPED: "shipped_at",
            TicketStatus.REPLACEMENT_RECEIVED: "received_at",
            TicketStatus.RETURNED: "returned_at",
            TicketStatus.CLOSED: "closed_at",
        }[target]
        setattr(self, stamp, at)
        # Accepting implies the desk reacted; record it so the reaction clock stops.
        if target is not TicketStatus.CLOSED and self.acknowledged_at is None:
            self.acknowledged_at = at

    def reopen(self, at: datetime, came_back: datetime) -> None:
        """A recurrence after closing brings back the same ticket (one per device and fault)."""
        self.reopen_count += 1
        for stamp in (
            "sent_at",
            "acknowledged_at",
            "accepted_at",
            "shipped_at",
            "received_at",
            "returned_at",
            "closed_at",
            "escalated_at",
        ):
            setattr(self, stamp, None)
        self.status = TicketStatus.NEEDS_DATA if self.missing else TicketStatus.OPEN
        self.note(at, "reopened", when=came_back.isoformat())

    def running_clock(self) -> RunningClock | None:
        """The SLA clock the ticket waits on now, if any: reaction from sending until the desk
        reacts (W2), delivery from acceptance until the unit arrives (W3), return from its
        arrival until the failed unit is sent back (W6, P4)."""
        sla = self.sla()
        if sla is None:
            return None
        if self.status is TicketStatus.SENT and sla.reaction_due is not None:
            return RunningClock(name="reaction", due=sla.reaction_due)
        if (
            self.status in (TicketStatus.ACCEPTED, TicketStatus.REPLACEMENT_SHIPPED)
            and sla.delivery_due is not None
        ):
            return RunningClock(name="delivery", due=sla.delivery_due)
        if self.status is TicketStatus.REPLACEMENT_RECEIVED and sla.return_due is not None:
            return RunningClock(name="return", due=sla.return_due)
        return None

    def reaction_overdue(self, now: datetime) -> bool:
        """Sent, not acknowledged, reaction deadline passed and not yet escalated (W2, W7)."""
        if self.status is not TicketStatus.SENT or self.escalated_at is not None:
            return False
        sla = self.sla()
        return sla is not None and sla.reaction_due is not None and now >= sla.reaction_due


def ticket_id(subject: str, fault: str) -> str:
    """Stable id of the one ticket of ``subject`` (serial or ``site:ID``) and ``fault``."""
    digest = hashlib.sha256(f"{subject}\x00{fault}".encode()).hexdigest()[:10].upper()
    return f"PF-{digest}"


def choose_language(plan_language: str | None, admin_language: str) -> Language:
    """The plan's support language (pl: HEZO+, Partner POLY+; en: POLY+), else the admin's."""
    if plan_language in LANGUAGES:
        return plan_language
    if admin_language in LANGUAGES:
        return admin_language
    raise ValueError(f"language: {admin_language!r} is not one of {', '.join(LANGUAGES)}")


# -- rendering --------------------------------------------------------------------

_FAULTS: dict[str, dict[Language, str]] = {
    "lan_down": {"pl": "brak połączenia sieciowego (LAN)", "en": "network link (LAN) down"},
    "camera_down": {"pl": "awaria kamery", "en": "camera failure"},
    "microphone_down": {"pl": "awaria mikrofonu", "en": "microphone failure"},
    "sip_unregistered": {"pl": "brak rejestracji SIP", "en": "SIP not registered"},
    "log_storage_full": {"pl": "pełna pamięć logów", "en": "log storage full"},
    "reboot_needed": {"pl": "wymagany restart", "en": "reboot needed"},
    "peripheral_disconnected": {
        "pl": "odłączone urządzenie peryferyjne",
        "en": "peripheral disconnected",
    },
    "api_error": {"pl": "błąd interfejsu urządzenia", "en": "device API error"},
    "auth_failed": {"pl": "błąd uwierzytelnienia", "en": "authentication failed"},
    "locked_out": {"pl": "konto zablokowane", "en": "account locked out"},
    "unreachable": {"pl": "urządzenie nieosiągalne", "en": "device unreachable"},
    "certificate_changed": {"pl": "zmiana certyfikatu", "en": "certificate changed"},
    "firmware_update_failed": {
        "pl": "urządzenie nie wróciło po aktualizacji oprogramowania",
        "en": "device did not come back from a firmware update",
    },
    "agent_offline": {
        "pl": "lokalizacja bez łączności (agent offline: sieć lub zasilanie)",
        "en": "site offline (agent offline: network or power)",
    },
    "site_unreachable": {
        "pl": "większość urządzeń lokalizacji nieosiągalna (sieć lub zasilanie)",
        "en": "most of the site's devices unreachable (network or power)",
    },
}

#: Ticket history notes, read by the desk too (so no rule ids). ``{when}`` is an ISO time
#: (shown in Warsaw time), ``{missing}`` comma-separated field names (shown by their labels).
NOTES: dict[str, dict[Language, str]] = {
    "held": {
        "pl": "wstrzymane: brak danych wymaganych przez serwis ({missing})",
        "en": "held: missing {missing}",
    },
    "filled": {
        "pl": "numer seryjny i numer umowy serwisowej uzupełnione przez administratora",
        "en": "serial and contract number completed by the admin",
    },
    "completed": {
        "pl": "numer umowy serwisowej uzupełniony z rejestru urządzeń",
        "en": "contract number completed from the asset registry",
    },
    "agent_clock_ahead": {
        "pl": "zegar agenta lokalizacji spieszy się o {skew_s} s: czasy jego raportów zastąpiono "
        "czasem ich odbioru",
        "en": "the site agent's clock is {skew_s} s ahead: its report times were replaced by the "
        "time they were received",
    },
    "agent_clock_ok": {
        "pl": "zegar agenta lokalizacji znów wskazuje właściwy czas",
        "en": "the site agent's clock is right again",
    },
    "seen_again": {
        "pl": "usterka ponownie zaobserwowana {when}",
        "en": "fault seen again at {when}",
    },
    "recovered": {
        "pl": "urządzenie odzyskało sprawność: usterki nie ma od {when}",
        "en": "recovered: the fault was gone at {when}",
    },
    "flapping": {
        "pl": "usterka niestabilna: pojawia się i znika wielokrotnie w ciągu godziny",
        "en": "flapping: appears and clears repeatedly within an hour",
    },
    "reopened": {
        "pl": "usterka powróciła {when}; zgłoszenie ponownie otwarte",
        "en": "fault came back at {when}; reopened",
    },
    "bundle_missing": {
        "pl": "brak pakietu diagnostycznego: {error}",
        "en": "diagnostics bundle missing: {error}",
    },
    "escalated": {
        "pl": "czas reakcji minął bez potwierdzenia zgłoszenia; eskalacja do {email}",
        "en": "reaction time passed unacknowledged; escalated to {email}",
    },
    "delivery_failed": {
        "pl": "wysyłka ({channel}) nie powiodła się: {error}; po poprawieniu: "
        "polyfleet controller tickets send {ticket}",
        "en": "delivery by {channel} failed: {error}; once fixed: "
        "polyfleet controller tickets send {ticket}",
    },
    "dropped": {
        "pl": "nie zostaną już wysłane: {entries}",
        "en": "no longer sent: {entries}",
    },
}

#: Notes for the admin alone (how a delivery failed): kept out of what the desk receives.
ADMIN_NOTES = frozenset({"delivery_failed"})

#: How the desk knows the models (D1).
MODEL_NAMES: dict[str, str] = {
    "studio_x30": "Poly Studio X30",
    "studio_x50": "Poly Studio X50",
    "studio_x70": "Poly Studio X70",
    "studio_e70": "Poly Studio E70",
    "g7500": "Poly G7500",
}

_LABELS: dict[str, dict[Language, str]] = {
    "ticket": {"pl": "Zgłoszenie serwisowe", "en": "Service ticket"},
    "site_ticket": {"pl": "Zgłoszenie dotyczące lokalizacji", "en": "Site ticket"},
    "serial": {"pl": "Numer seryjny", "en": "Serial number"},
    "contract_number": {"pl": "Numer umowy serwisowej", "en": "Service contract number"},
    "plan": {"pl": "Usługa", "en": "Service plan"},
    "model": {"pl": "Model", "en": "Model"},
    "site": {"pl": "Lokalizacja", "en": "Site"},
    "room": {"pl": "Sala", "en": "Room"},
    "host": {"pl": "Urządzenie nadrzędne (host)", "en": "Host system"},
    "fault": {"pl": "Usterka", "en": "Fault"},
    "first_seen": {"pl": "Pierwsze wystąpienie", "en": "First seen"},
    "flapping": {
        "pl": "Usterka niestabilna: wielokrotnie pojawia się i znika w ciągu godziny",
        "en": "Flapping: the fault appears and clears repeatedly within an hour",
    },
    "affected": {"pl": "Urządzenia, których dotyczy", "en": "Affected devices"},
    "evidence": {"pl": "Raporty potwierdzające usterkę", "en": "Reports showing the fault"},
    "bundle": {
        "pl": "Załączono pakiet diagnostyczny z urządzenia (logi, status)",
        "en": "Attached: the device's diagnostics bundle (logs, status)",
    },
    "no_bundle": {
        "pl": "Pakiet diagnostyczny niedostępny",
        "en": "Diagnostics bundle not available",
    },
    "reaction_due": {"pl": "Termin reakcji", "en": "Reaction due"},
    "window": {"pl": "Okno przyjmowania zgłoszeń", "en": "Ticket window"},
    "reaction": {"pl": "Czas reakcji", "en": "Reaction time"},
    "hours": {"pl": "godz.", "en": "h"},
    "firmware": {"pl": "oprogramowanie", "en": "firmware"},
    "healthy": {"pl": "bez usterek", "en": "no problems"},
    "reopened": {"pl": "Zgłoszenie ponownie otwarte", "en": "Ticket reopened"},
    "escalation": {"pl": "Eskalacja", "en": "Escalation"},
    "escalation_body": {
        "pl": "Czas reakcji minął, a zgłoszenie nie zostało potwierdzone.",
        "en": "The reaction time has passed and the ticket has not been acknowledged.",
    },
    "sent_at": {"pl": "Wysłano", "en": "Sent"},
    "notes": {"pl": "Notatki", "en": "Notes"},
    "footer": {
        "pl": "Zgłoszenie utworzone automatycznie przez polyfleet.",
        "en": "Ticket filed automatically by polyfleet.",
    },
}


def fault_text(fault: str, language: Language) -> str:
    return _FAULTS.get(fault, {}).get(language, fault)


def _label(key: str, language: Language) -> str:
    return _LABELS[key][language]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else to_warsaw(moment).isoformat(timespec="seconds")


def _when_text(text: object) -> str:
    """An ISO time from a stored document, in Warsaw time; anything else as it is."""
    if not isinstance(text, str):
        return "?"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return _when(moment) if moment.tzinfo is not None else text


def note_text(note: Note, language: Language) -> str:
    """A note in ``language`` (notes from before keys existed stay as written)."""
    template = NOTES.get(note.key or "", {}).get(language)
    if template is None:
        return note.text
    params = dict(note.params)
    if "when" in params:
        params["when"] = _when_text(params["when"])
    if "missing" in params:
        params["missing"] = ", ".join(
            _label(name, language) if name in _LABELS else name
            for name in params["missing"].split(",")
            if name
        )
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        return note.text


def _site(ticket: Ticket) -> str:
    """``Name (id)`` when the site has a name of its own, else its id."""
    if ticket.site_name:
        return f"{ticket.site_name} ({ticket.site})"
    return ticket.site or "?"


def model_name(model: str | None) -> str:
    if model is None:
        return "?"
    return MODEL_NAMES.get(model, model)


def _evidence_line(snap: dict[str, Any], language: Language) -> str:
    """One snapshot that shows the fault: when, what, firmware, and every problem it listed."""
    problems = snap.get("health", {}).get("problems", [])
    listed = "; ".join(
        str(p.get("code", "?")) + (f" ({p['detail']})" if p.get("detail") else "")
        for p in problems
        if isinstance(p, dict)
    )
    firmware = snap.get("firmware", {})
    version = firmware.get("version") if isinstance(firmware, dict) else None
    parts = [
        _when_text(snap.get("collected_at")),
        str(snap.get("serial", "?")),
        model_name(snap.get("model")),
    ]
    if version:
        parts.append(f"{_label('firmware', language)} {version}")
    if snap.get("provider"):
        parts.append(str(snap["provider"]))
    parts.append(listed or _label("healthy", language))
    return "  " + "  ".join(parts)


@dataclass(frozen=True, kw_only=True)
class RenderedMessage:
    subject: str
    body: str


def render_ticket(ticket: Ticket) -> RenderedMessage:
    """Subject and plain-text body in the ticket's language, carrying every W5/W4 fact."""
    lang = ticket.language
    fault = fault_text(ticket.fault, lang)
    if ticket.kind is TicketKind.SITE:
        head = f"[{ticket.id}] {_label('site_ticket', lang)}: {_site(ticket)} - {fault}"
    else:
        device = f"{model_name(ticket.model)} {ticket.serial or '?'}"
        head = f"[{ticket.id}] {_label('ticket', lang)}: {device} - {fault}"
    if ticket.reopen_count:
        head += f" ({_label('reopened', lang)} #{ticket.reopen_count})"
    plan = ticket.plan
    if plan and ticket.plan_name and ticket.plan_name != plan:
        plan = f"{ticket.plan_name} ({plan})"
    rows: list[tuple[str, str | None]] = [
        ("serial", ticket.serial),
        ("contract_number", ticket.contract_number),
        ("plan", plan),
        ("model", None if ticket.model is None else model_name(ticket.model)),
        ("site", _site(ticket) if ticket.site else None),
        ("room", ticket.room),
        ("host", ticket.host_serial),
    ]
    lines = [head, ""]
    for key, value in rows:
        if value or (key in ("serial", "contract_number") and ticket.kind is TicketKind.DEVICE):
            lines.append(f"{_label(key, lang)}: {value or '-'}")
    detail = f" ({ticket.fault_detail})" if ticket.fault_detail else ""
    lines.append(f"{_label('fault', lang)}: {fault}{detail}")
    lines.append(f"{_label('first_seen', lang)}: {_when(ticket.first_seen)}")
    if ticket.window is not None:
        lines.append(f"{_label('window', lang)}: {ticket.window}")
    if ticket.reaction_hours is not None:
        lines.append(f"{_label('reaction', lang)}: {ticket.reaction_hours} {_label('hours', lang)}")
    sla = ticket.sla()
    if sla is not None and sla.reaction_due is not None:
        lines.append(f"{_label('reaction_due', lang)}: {_when(sla.reaction_due)}")
    if ticket.flapping:
        lines.append(_label("flapping", lang))
    if ticket.affected_serials:
        lines.append(f"{_label('affected', lang)}: {', '.join(ticket.affected_serials)}")
    lines.append("")
    lines.append(_label("bundle", lang) if ticket.bundle else _label("no_bundle", lang))
    if ticket.evidence:
        lines += ["", f"{_label('evidence', lang)}:"]
        lines += [_evidence_line(snap, lang) for snap in ticket.evidence]
    desk_notes = [note for note in ticket.notes if note.key not in ADMIN_NOTES]
    if desk_notes:
        lines += ["", f"{_label('notes', lang)}:"]
        lines += [f"  {_when(note.at)}  {note_text(note, lang)}" for note in desk_notes[-10:]]
    lines += ["", _label("footer", lang)]
    return RenderedMessage(subject=head, body="\n".join(lines) + "\n")


def render_escalation(ticket: Ticket) -> RenderedMessage:
    """The one escalation message sent when the reaction time passes unacknowledged (W2, W7)."""
    lang = ticket.language
    base = render_ticket(ticket)
    sla = ticket.sla()
    due = None if sla is None else sla.reaction_due
    subject = f"{_label('escalation', lang)}: {base.subject}"
    body = (
        f"{_label('escalation_body', lang)}\n"
        f"{_label('sent_at', lang)}: {_when(ticket.sent_at)}\n"
        f"{_label('reaction_due', lang)}: {_when(due)}\n\n" + base.body
    )
    return RenderedMessage(subject=subject, body=body)
