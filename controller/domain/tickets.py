"""Fault tickets: the model, its lifecycle and its rendering in Polish or English."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from polyfleet.controller.domain.assets import Asset, Contract, follows
from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.contacts import DeliveryAddress, SiteContact
from polyfleet.controller.domain.language import LANGUAGES, Language, keyed_texts, plural_text
from polyfleet.controller.domain.plans import Contacts, DeliveryMeans, Plan, PlanCatalogue
from polyfleet.controller.domain.sla import (
    DeliveryKind,
    SlaDeadlines,
    SlaTerms,
    check_order,
    deadlines,
)
from polyfleet.controller.errors import Conflict, Invalid

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


class TicketCategory(StrEnum):
    """What a ticket opened by hand asks the desk for."""

    FAULT = "fault"
    SUPPORT = "support"
    CONFIGURATION = "configuration"


#: The plan's service each category asks for: the ``Plan`` field that must be true, or
#: ``repair``, which every plan gives during its term (E3). H4, P2: technical support;
#: H4: help with configuration and advice on Teams and Zoom.
CATEGORY_SERVICE: Mapping[TicketCategory, str] = {
    TicketCategory.FAULT: "repair",
    TicketCategory.SUPPORT: "technical_support",
    TicketCategory.CONFIGURATION: "configuration_help",
}
#: The fault code a ticket opened by hand is filed under, by category.
CATEGORY_FAULT: Mapping[TicketCategory, str] = {
    TicketCategory.FAULT: "reported_fault",
    TicketCategory.SUPPORT: "support_request",
    TicketCategory.CONFIGURATION: "configuration_request",
}
#: How a refusal names each service.
SERVICE_NAMES: Mapping[str, str] = {
    "repair": "repair or replacement",
    "technical_support": "technical support",
    "configuration_help": "help with configuration",
}


class ServiceNotIncluded(Invalid):
    """A ticket opened by hand asks for a service the unit's plan does not include (422
    ``not_in_plan``, field ``category``); the message names the plan and what would.

    The parts of the message travel with it, so a page can say it in its own language:
    ``service`` (a ``Plan`` field, or ``repair``), ``plan`` (the plan in force, None: none),
    ``offering`` (the plans that include the service), ``site_wide`` (a site was asked).
    """

    default_code = "not_in_plan"

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        plan: Plan | None = None,
        offering: tuple[Plan, ...] = (),
        site_wide: bool = False,
    ) -> None:
        super().__init__(message, field="category")
        self.service = service
        self.plan = plan
        self.offering = offering
        self.site_wide = site_wide


def service_refusal(
    category: TicketCategory, plan: Plan | None, catalogue: PlanCatalogue, subject: str
) -> ServiceNotIncluded | None:
    """Why the plan in force (``plan``, None: none) does not give what ``category`` asks
    for, naming the plans that would; None when it does.

    A fault is never refused here: every plan covers hardware failures during its term
    (E3), and a unit without a contract gets a ticket held for its number, as automatic
    ones are (W5).
    """
    service = CATEGORY_SERVICE[category]
    if service == "repair" or (plan is not None and getattr(plan, service)):
        return None
    wanted = SERVICE_NAMES[service]
    offering = tuple(p for p in catalogue.plans.values() if getattr(p, service))
    have = (
        f"{subject} has no service plan in force"
        if plan is None
        else f"{subject} is covered by {plan.name} ({plan.id}), which does not include {wanted}"
    )
    named = ", ".join(f"{p.name} ({p.id})" for p in offering)
    would = f"; {wanted} comes with {named}" if offering else ""
    return ServiceNotIncluded(f"{have}{would}", service=service, plan=plan, offering=offering)


#: Admin actions and the status each one leads to; a plain table, checked by ``transition``.
ACTIONS: dict[str, TicketStatus] = {
    "ack": TicketStatus.ACKNOWLEDGED,
    "accept": TicketStatus.ACCEPTED,
    "shipped": TicketStatus.REPLACEMENT_SHIPPED,
    "received": TicketStatus.REPLACEMENT_RECEIVED,
    "returned": TicketStatus.RETURNED,
    "close": TicketStatus.CLOSED,
}

#: The stamp each status sets, by name (``accepted`` -> ``accepted_at``).
_STAMPS: dict[TicketStatus, str] = {
    TicketStatus.ACKNOWLEDGED: "acknowledged",
    TicketStatus.ACCEPTED: "accepted",
    TicketStatus.REPLACEMENT_SHIPPED: "shipped",
    TicketStatus.REPLACEMENT_RECEIVED: "received",
    TicketStatus.RETURNED: "returned",
    TicketStatus.CLOSED: "closed",
}
#: How an action's moment is named in messages.
ACTION_NAMES: dict[TicketStatus, str] = dict(_STAMPS)

#: Lifecycle order; an admin action moves a ticket forward, never back.
_ORDER = list(TicketStatus)
#: Statuses in which the desk has the ticket (it has been sent).
DELIVERED = frozenset(_ORDER[_ORDER.index(TicketStatus.SENT) :]) - {TicketStatus.CLOSED}
#: Statuses in which the ticket is still being worked on.
ACTIVE = frozenset(_ORDER) - {TicketStatus.CLOSED}

#: The statuses each admin action is a next step from: the one before it, or a step the desk
#: may leave unsaid (accepting implies acknowledging; a replacement may arrive unannounced).
#: The delivery clock starts at acceptance and the return clock at the replacement's arrival
#: (W3, W6), so no step may jump over those. Closing is a step from every active status (a
#: false alarm is closed before it is sent).
STEP_FROM: Mapping[str, frozenset[TicketStatus]] = {
    "ack": frozenset({TicketStatus.SENT}),
    "accept": frozenset({TicketStatus.SENT, TicketStatus.ACKNOWLEDGED}),
    "shipped": frozenset({TicketStatus.ACCEPTED}),
    "received": frozenset({TicketStatus.ACCEPTED, TicketStatus.REPLACEMENT_SHIPPED}),
    "returned": frozenset({TicketStatus.REPLACEMENT_RECEIVED}),
    "close": ACTIVE,
}
#: The steps of a replacement unit: only a unit's hardware fault has one (a site's outage, a
#: support or configuration request has no unit to replace).
REPLACEMENT_STEPS = frozenset({"shipped", "received", "returned"})
#: What a ticket without a replacement asks for, as a refusal names it.
_NO_REPLACEMENT = {
    TicketCategory.SUPPORT: "a support request",
    TicketCategory.CONFIGURATION: "a configuration request",
}


@dataclass(frozen=True)
class RunningClock:
    """One running SLA clock of a ticket: which one and when it runs out."""

    name: Literal["reaction", "delivery", "return"]
    due: datetime


#: The deadlines that escalate when missed (W2, W3, W6, P3, P4), in the order they run.
DEADLINES: tuple[Literal["reaction", "delivery", "return"], ...] = (
    "reaction",
    "delivery",
    "return",
)


class Escalation(BaseModel):
    """One missed deadline, escalated once (W7): which, when it was due, when it was
    escalated and where it went (empty: nowhere configured, the admin was told)."""

    model_config = ConfigDict(extra="forbid")

    deadline: Literal["reaction", "delivery", "return"]
    due: AwareDatetime
    at: AwareDatetime
    to: list[str] = Field(default_factory=list)

    @property
    def late_by(self) -> timedelta:
        return self.at - self.due


class TicketError(Conflict, ValueError):
    """An action that the ticket's state does not allow (409 ``conflict``); the message says
    why and what to do."""


class TicketMomentError(Invalid, TicketError):
    """An action dated in an impossible order (before a step taken already, or ahead of now):
    422 ``invalid``, the field at fault is the step's moment, ``at``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="at")


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


class DeskContacts(BaseModel):
    """Where the ticket is followed up and escalated (W7), copied from the plan catalogue."""

    model_config = ConfigDict(extra="forbid")

    name: str
    phone: str
    portal: str
    email: str
    escalation_email: str
    escalation_phone: str

    @classmethod
    def of(cls, contacts: Contacts | None) -> DeskContacts | None:
        return None if contacts is None else cls.model_validate(contacts.to_json())


class ContractFlagNote(BaseModel):
    """One reason the ticket's contract is flagged: the rule id, a code, and the facts that
    say what it means for this device (dates, models, limits), for the ticket's text."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    code: str
    params: dict[str, str] = Field(default_factory=dict)


class Eligibility(BaseModel):
    """The contract in force is flagged (H1, H5, renewals): which, why, and which way the
    admin's ``ineligible_contracts_grant`` went (``grants``: its plan's terms apply)."""

    model_config = ConfigDict(extra="forbid")

    contract_number: str
    plan: str
    plan_name: str
    flags: list[ContractFlagNote]
    grants: bool


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
    #: What the delivery time promises: ``arrival`` (W3) or ``dispatch`` (P3).
    delivery_means: DeliveryMeans | None = None
    return_days: int | None = None
    #: The user pays no shipping on a failure (H6, P3); None when no plan applies.
    shipping_paid: bool | None = None
    #: Where to follow up and how to escalate (W7).
    contacts: DeskContacts | None = None
    #: The site's authorised reporter, whom the desk's engineer contacts (W2).
    reporter: SiteContact | None = None
    #: Where replacement hardware is delivered (the site's RMA address).
    rma_address: DeliveryAddress | None = None
    #: Set on a ticket opened by hand: what it asks for, in the admin's words, and who.
    category: TicketCategory | None = None
    summary: str | None = None
    description: str | None = None
    opened_by: str | None = None
    #: Set when the contract in force is flagged (H1, H5, P5...), with what that means.
    eligibility: Eligibility | None = None
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
    #: Where the escalation went (``email:ADDRESS``, ``webhook:URL``); empty: nowhere
    #: configured, so the admin was told instead (W7).
    escalated_to: list[str] | None = None
    #: Every missed deadline escalated so far in this round, oldest first.
    escalations: list[Escalation] = Field(default_factory=list)
    #: Who completed a held ticket's serial or contract number, and when (W5).
    filled_by: str | None = None
    filled_at: AwareDatetime | None = None
    reopen_count: int = 0
    evidence: list[dict[str, Any]] = Field(default_factory=list)
    bundle: Bundle | None = None
    bundle_error: str | None = None
    notes: list[Note] = Field(default_factory=list)

    # -- what the desk needs (W5) -------------------------------------------------

    @property
    def missing(self) -> list[str]:
        """Fields the desk requires and the ticket lacks: the serial and contract number of a
        device's ticket (W5), the authorised reporter it contacts (W2), and where a
        replacement goes for a device's fault (RMA)."""
        found: list[str] = []
        if self.kind is TicketKind.DEVICE:
            found += [name for name in ("serial", "contract_number") if not getattr(self, name)]
        found += (self.reporter or SiteContact()).missing()
        if self.needs_address:
            found += (self.rma_address or DeliveryAddress()).missing()
        return found

    @property
    def needs_address(self) -> bool:
        """A device's fault may need replacement hardware: the ticket needs the RMA address."""
        return self.kind is TicketKind.DEVICE

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
            delivery_means=self.delivery_means or "arrival",
        )

    def apply_terms(self, terms: SlaTerms | None) -> None:
        """Copy the plan's SLA terms onto the ticket: later catalogue edits move no deadline."""
        if terms is None:
            self.window = None
            self.reaction_hours = None
            self.delivery_kind = None
            self.delivery_amount = 0
            self.delivery_means = None
            self.return_days = None
            return
        self.window = terms.window
        self.reaction_hours = terms.reaction_hours
        self.delivery_kind = terms.delivery_kind
        self.delivery_amount = terms.delivery_amount
        self.delivery_means = terms.delivery_means
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

    def fill(
        self,
        *,
        serial: str | None,
        contract_number: str | None,
        at: datetime,
        by: str | None = None,
        contact: Mapping[str, str] | None = None,
        address: Mapping[str, str] | None = None,
    ) -> None:
        """The admin supplies what the desk requires (W5, W2, RMA): the serial, the contract
        number, the reporter's ``contact`` and the delivery ``address`` fields given (name ->
        text); complete, the ticket is ``open`` (ready to send).

        ``by`` names who filled it (recorded with the time).
        """
        if self.status is not TicketStatus.NEEDS_DATA and self.status is not TicketStatus.OPEN:
            raise TicketError(
                f"ticket {self.id} is {self.status.value}: its details can only be changed "
                "before it is sent"
            )
        if serial is not None:
            self.serial = serial.strip() or None
        if contract_number is not None:
            self.contract_number = contract_number.strip() or None
        if contact:
            known = (self.reporter or SiteContact()).model_dump()
            self.reporter = SiteContact(**{**known, **contact})
        if address:
            known = (self.rma_address or DeliveryAddress()).model_dump()
            self.rma_address = DeliveryAddress(**{**known, **address})
        if by is not None:
            self.filled_by = by
            self.filled_at = at
        if self.missing:
            self.status = TicketStatus.NEEDS_DATA
        else:
            self.status = TicketStatus.OPEN
            if contact or address:
                self.note(at, "details_filled", who=by or "-")
            elif by is None:
                self.note(at, "filled")
            else:
                self.note(at, "filled_by", who=by)

    def mark_sent(self, at: datetime) -> None:
        if self.status is TicketStatus.OPEN:
            self.status = TicketStatus.SENT
            self.sent_at = at

    @property
    def replaceable(self) -> bool:
        """Whether the ticket is about a unit's hardware, which the desk may replace."""
        return self.kind is TicketKind.DEVICE and self.category in (None, TicketCategory.FAULT)

    def refusal(self, action: str) -> str | None:
        """Why ``action`` (one of ``ACTIONS``) is not a next step now, or None when it is:
        the one table ``STEP_FROM`` and the ticket's kind decide, for every face."""
        target = ACTIONS.get(action)
        if target is None:
            return f"action {action!r} is unknown; use one of {', '.join(ACTIONS)}"
        if self.status is TicketStatus.CLOSED:
            return f"ticket {self.id} is closed; it reopens by itself if the fault comes back"
        if self.status in STEP_FROM[action]:
            if action in REPLACEMENT_STEPS and not self.replaceable:
                what = (
                    "a site-wide fault"
                    if self.kind is TicketKind.SITE
                    else _NO_REPLACEMENT.get(self.category or TicketCategory.FAULT, "")
                )
                return (
                    f"ticket {self.id} is {what}: there is no unit to replace, so it cannot be "
                    f"{target.value}"
                )
            return None
        if self.status not in DELIVERED:
            return (
                f"ticket {self.id} is {self.status.value}: it must be sent before it can be "
                f"{target.value}"
                + (f" (missing: {', '.join(self.missing)})" if self.missing else "")
            )
        if _ORDER.index(target) <= _ORDER.index(self.status):
            return f"ticket {self.id} is already {self.status.value}; {action} would move it back"
        after = " or ".join(status.value for status in _ORDER if status in STEP_FROM[action])
        return (
            f"ticket {self.id} is {self.status.value}: it can be {target.value} only once {after}"
        )

    def allowed_actions(self) -> list[str]:
        """The admin actions ``transition`` accepts now: the next steps, in lifecycle order."""
        return [action for action in ACTIONS if self.refusal(action) is None]

    def transition(self, action: str, at: datetime) -> None:
        """Apply an admin action, one of ``ACTIONS``; forward only, never back, and never
        dated before a step the ticket has already taken."""
        refused = self.refusal(action)
        if refused is not None:
            raise TicketError(refused)
        target = ACTIONS[action]
        self._check_moment(target, at)
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

    def _check_moment(self, target: TicketStatus, at: datetime) -> None:
        """Refuse an action dated before a step the ticket has already taken (E8-E10 start
        their clocks at these moments, so an impossible order would give wrong deadlines)."""
        moments = [
            ("opened", self.opened_at),
            ("sent", self.sent_at),
            ("acknowledged", self.acknowledged_at),
            ("accepted", self.accepted_at),
            ("shipped", self.shipped_at),
            ("received", self.received_at),
            ("returned", self.returned_at),
        ]
        if target is not TicketStatus.CLOSED:
            # Only the steps before the new one bound it (a skipped step has no moment).
            moments = moments[: [name for name, _ in moments].index(_STAMPS[target])]
        taken = [(name, when) for name, when in moments if when is not None]
        if not taken:
            return
        # The latest step taken bounds the new one (the later one in the lifecycle on a tie);
        # stored steps are not judged again.
        name, latest = max(reversed(taken), key=lambda step: step[1])
        try:
            check_order([(f"{name} at", latest), (f"{ACTION_NAMES[target]} at", at)])
        except ValueError as exc:
            raise TicketMomentError(f"ticket {self.id}: {exc}") from None

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
            "escalated_to",
        ):
            setattr(self, stamp, None)
        self.escalations = []
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

    def missed_deadlines(self, now: datetime) -> list[RunningClock]:
        """The deadlines passed by ``now`` and not escalated yet, each escalating once: the
        reaction while the ticket is sent and unacknowledged (W2); the delivery after
        acceptance until the unit is shipped, for a plan promising dispatch (P3), or has
        arrived, for one promising arrival (W3); the return after the replacement arrived
        until the failed unit is sent back (W6, P4)."""
        sla = self.sla()
        if sla is None:
            return []
        done = {escalation.deadline for escalation in self.escalations}
        found: list[RunningClock] = []
        if self.reaction_overdue(now) and sla.reaction_due is not None:
            found.append(RunningClock(name="reaction", due=sla.reaction_due))
        waiting = {TicketStatus.ACCEPTED}
        if sla.delivery_means == "arrival":
            waiting.add(TicketStatus.REPLACEMENT_SHIPPED)
        due = sla.delivery_due
        if self.status in waiting and due is not None and now >= due and "delivery" not in done:
            found.append(RunningClock(name="delivery", due=due))
        due = sla.return_due
        if (
            self.status is TicketStatus.REPLACEMENT_RECEIVED
            and due is not None
            and now >= due
            and "return" not in done
        ):
            found.append(RunningClock(name="return", due=due))
        return found

    def escalation(self, deadline: str) -> Escalation | None:
        """The escalation of ``deadline`` in this round, if it was escalated."""
        return next((e for e in self.escalations if e.deadline == deadline), None)


def eligibility_of(
    asset: Asset, contract: Contract | None, plans: PlanCatalogue
) -> Eligibility | None:
    """What a ticket says about a flagged contract in force (H1, H5, P5...), or None."""
    if contract is None or not contract.flags:
        return None
    plan = plans.plans.get(contract.plan)
    notes = [
        ContractFlagNote(
            rule=flag.rule, code=flag.code, params=_flag_params(asset, contract, plan, flag.code)
        )
        for flag in contract.flags
    ]
    return Eligibility(
        contract_number=contract.number,
        plan=contract.plan,
        plan_name=plan.name if plan is not None else contract.plan,
        flags=notes,
        grants=plans.ineligible_contracts_grant,
    )


def _flag_params(asset: Asset, contract: Contract, plan: Plan | None, code: str) -> dict[str, str]:
    """The facts a flag's text names, from the registry and the plan catalogue."""
    if plan is None:
        return {}
    start, end = contract.start.isoformat(), contract.end.isoformat()
    if code == "model" and plan.eligible_models is not None:
        return {"models": ",".join(sorted(plan.eligible_models)), "model": asset.model}
    if code == "term" and plan.term_years is not None:
        years = "/".join(str(n) for n in plan.term_years)
        return {"years": years, "start": start, "end": end}
    if code == "late_purchase" and plan.purchase_to_contract_days is not None:
        return {
            "days": str(plan.purchase_to_contract_days),
            "purchase": asset.purchase_date.isoformat(),
            "start": start,
            "late": str((contract.start - asset.purchase_date).days),
        }
    chain = _renewed(asset, contract)
    if code == "renewal" and len(chain) > 1:
        return {"previous_end": chain[-2].end.isoformat()}
    if code == "chain_length":
        return {
            "max_years": str(plan.max_term_years),
            "since": chain[0].start.isoformat(),
            "end": end,
        }
    return {}


def _renewed(asset: Asset, contract: Contract) -> list[Contract]:
    """The same-plan contracts ``contract`` renews, oldest first, ending with it (E5)."""
    chain = [contract]
    for earlier in reversed([c for c in asset.contracts if c.start < contract.start]):
        if earlier.plan == contract.plan and follows(earlier, chain[0]):
            chain.insert(0, earlier)
        else:
            break
    return chain


#: Letters of the installation id shown in each ticket id: enough for a person to tell two
#: installations apart; the digest covers the whole id.
INSTALLATION_PREFIX = 5


def ticket_id(installation: str, subject: str, fault: str) -> str:
    """Stable id of the one ticket of ``subject`` (serial or ``site:ID``) and ``fault`` in
    ``installation`` (its random id): ``PF-<installation prefix>-<digest>``, so installations
    never mint the same id and one installation always mints the same one."""
    text = f"{installation}\x00{subject}\x00{fault}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10].upper()
    return f"PF-{installation[:INSTALLATION_PREFIX].upper()}-{digest}"


def legacy_ticket_id(subject: str, fault: str) -> str:
    """The id a controller minted before ids named their installation (``PF-<digest>``):
    tickets stored under it keep it, and are still found by it."""
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

#: Every text of a ticket comes from the catalogue, controller/data/translations/<language>.toml.
_FAULTS: dict[str, dict[Language, str]] = keyed_texts("tickets.faults")

#: Ticket history notes, read by the desk too (so no rule ids). ``{when}`` is an ISO time
#: (shown in Warsaw time), ``{missing}`` comma-separated field names (shown by their labels).
NOTES: dict[str, dict[Language, str]] = keyed_texts("tickets.notes")

#: What each contract flag means for the request, by code (assets.FLAG_CODES); ``{plan}`` is
#: the plan's name, the rest come from the flag's params.
FLAG_TEXTS: dict[str, dict[Language, str]] = keyed_texts("tickets.flags")

#: Notes for the admin alone (a failed delivery, an escalation nobody could be sent): kept out
#: of what the desk receives.
ADMIN_NOTES = frozenset({"delivery_failed", "escalation_unsent"})

#: How the desk knows the models (D1).
MODEL_NAMES: dict[str, str] = {
    "studio_x30": "Poly Studio X30",
    "studio_x50": "Poly Studio X50",
    "studio_x70": "Poly Studio X70",
    "studio_e70": "Poly Studio E70",
    "g7500": "Poly G7500",
}

_LABELS: dict[str, dict[Language, str]] = keyed_texts("tickets.labels")


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


def _years(count: int, language: Language) -> str:
    """``count`` years, in words that agree with the number."""
    return plural_text("tickets.plurals", "years", language, count)


def _delivery_text(ticket: Ticket, language: Language) -> str:
    kind, amount = ticket.delivery_kind, ticket.delivery_amount
    if kind == "next_business_day":
        return _label("delivery_nbd", language)
    if kind == "clock_hours":
        return _label("delivery_hours", language).format(n=amount)
    return _label("delivery_days", language).format(n=amount)


def _terms_lines(ticket: Ticket, lang: Language) -> list[str]:
    """The plan's window, reaction, delivery and return terms, with the deadlines known now
    (W1-W3, W6, P3, P4, H6). Empty when no plan applies."""
    if ticket.window is None:
        return []
    window = _label("window_8x5" if ticket.window == "8x5" else "window_24x7", lang)
    lines = [f"{_label('window', lang)}: {ticket.window} ({window})"]
    if ticket.reaction_hours is not None:
        lines.append(
            f"{_label('reaction', lang)}: {ticket.reaction_hours} {_label('hours', lang)}"
            f" ({_label('reaction_in_window', lang)})"
        )
    else:
        lines.append(f"{_label('reaction', lang)}: {_label('no_reaction', lang)}")
    sla = ticket.sla()
    if sla is not None and sla.reaction_due is not None:
        lines.append(f"{_label('reaction_due', lang)}: {_when(sla.reaction_due)}")
    if ticket.delivery_kind is not None:
        means = _label(f"means_{ticket.delivery_means or 'arrival'}", lang)
        lines.append(f"{_label('delivery', lang)}: {_delivery_text(ticket, lang)}; {means}")
        due = None if sla is None else sla.delivery_due
        shown = _when(due) if due is not None else _label("delivery_due_pending", lang)
        lines.append(f"{_label('delivery_due', lang)}: {shown}")
    if ticket.return_days is not None:
        lines.append(
            f"{_label('return', lang)}: " + _label("return_text", lang).format(n=ticket.return_days)
        )
        if sla is not None and sla.return_due is not None:
            lines.append(f"{_label('return_due', lang)}: {_when(sla.return_due)}")
    if ticket.shipping_paid:
        lines.append(_label("shipping_paid", lang))
    return lines


def _request_lines(ticket: Ticket, lang: Language) -> list[str]:
    """A ticket opened by hand: the plan's service it asks for, who opened it, and the
    admin's description, indented."""
    if ticket.category is None:
        return []
    service = _label(f"service_{CATEGORY_SERVICE[ticket.category]}", lang)
    under = f" ({ticket.plan_name})" if ticket.plan_name else ""
    lines = [f"{_label('requested_service', lang)}: {service}{under}"]
    if ticket.opened_by:
        lines.append(f"{_label('opened_by', lang)}: {ticket.opened_by}")
    if ticket.description:
        lines.append(f"{_label('description', lang)}:")
        lines += [f"  {line}" for line in ticket.description.splitlines()]
    return lines


def _reporter_lines(ticket: Ticket, lang: Language) -> list[str]:
    """Whom the desk contacts at the site (W2) and where a replacement goes (RMA)."""
    lines: list[str] = []
    reporter = ticket.reporter
    if reporter is not None and any(reporter.model_dump().values()):
        parts = [reporter.name or "-"]
        if reporter.phone:
            parts.append(f"{_label('phone', lang)} {reporter.phone}")
        if reporter.email:
            parts.append(f"{_label('email', lang)} {reporter.email}")
        lines.append(f"{_label('reporter', lang)}: {', '.join(parts)}")
    address = ticket.rma_address
    if ticket.needs_address and address is not None and address.one_line():
        lines.append(f"{_label('rma_address', lang)}: {address.one_line()}")
    return lines


def _contact_lines(contacts: DeskContacts | None, lang: Language) -> list[str]:
    """Where to follow up and how to escalate, in the ticket's language (W7)."""
    if contacts is None:
        return []
    return [
        f"{_label('follow_up', lang)}: "
        + _label("follow_up_text", lang).format(**contacts.model_dump()),
        f"{_label('escalation_contact', lang)}: "
        + _label("escalation_text", lang).format(**contacts.model_dump()),
    ]


def contract_flag_text(flag: ContractFlagNote, plan_name: str, lang: Language) -> str:
    """A flagged contract's rule in words, as the ticket text says it (the dashboard too)."""
    return _flag_text(flag, plan_name, lang)


def _flag_text(flag: ContractFlagNote, plan_name: str, lang: Language) -> str:
    params = dict(flag.params)
    template = FLAG_TEXTS.get(flag.code, FLAG_TEXTS["rule"])[lang]
    if "models" in params:
        params["models"] = ", ".join(model_name(m) for m in params["models"].split(",") if m)
    if "model" in params:
        params["model"] = model_name(params["model"])
    for key in ("years", "max_years"):
        if key in params and params[key].isdigit():
            params[key] = _years(int(params[key]), lang)
    try:
        return template.format(plan=plan_name, **params)
    except (KeyError, IndexError):
        return FLAG_TEXTS["rule"][lang].format(plan=plan_name)


def _eligibility_lines(ticket: Ticket, eligibility: Eligibility, lang: Language) -> list[str]:
    """The contract is flagged: which rule it breaks, in words, and what that means for this
    request (the admin's choice whether flagged contracts grant anything)."""
    lines = [
        _label("flagged", lang).format(
            number=eligibility.contract_number, plan=eligibility.plan_name
        )
    ]
    lines += [f"  - {_flag_text(f, eligibility.plan_name, lang)}" for f in eligibility.flags]
    if eligibility.grants:
        lines.append(_label("flagged_grants", lang).format(plan=eligibility.plan_name))
    else:
        fallback = ticket.plan_name or _label("no_plan", lang)
        lines.append(_label("flagged_not_granted", lang).format(fallback=fallback))
    return lines


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
    if ticket.eligibility is not None:
        lines += ["", *_eligibility_lines(ticket, ticket.eligibility, lang), ""]
    detail = f" ({ticket.fault_detail})" if ticket.fault_detail else ""
    lines.append(f"{_label('fault', lang)}: {fault}{detail}")
    lines += _request_lines(ticket, lang)
    lines.append(f"{_label('first_seen', lang)}: {_when(ticket.first_seen)}")
    lines += _terms_lines(ticket, lang)
    lines += _reporter_lines(ticket, lang)
    lines += _contact_lines(ticket.contacts, lang)
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
    lines += ["", _label("footer" if ticket.category is None else "footer_by_hand", lang)]
    return RenderedMessage(subject=head, body="\n".join(lines) + "\n")


def late_text(late: timedelta, lang: Language) -> str:
    """``2 d 3 h 5 min`` (``2 dni 3 godz. 5 min``): how far past its deadline."""
    minutes = max(0, int(late.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} {_label('late_days', lang)}")
    if hours:
        parts.append(f"{hours} {_label('hours', lang)}")
    if minutes or not parts:
        parts.append(f"{minutes} min")
    return " ".join(parts)


def deadline_name(deadline: str, lang: Language) -> str:
    """``delivery`` as the ticket's language names it (``dostawy``)."""
    return _label(f"deadline_{deadline}", lang)


def _promise_text(ticket: Ticket, deadline: str, lang: Language) -> str:
    """What the plan promised for ``deadline``, in the ticket's language."""
    if deadline == "reaction":
        window = _label("reaction_in_window", lang)
        return f"{ticket.reaction_hours} {_label('hours', lang)} ({window})"
    if deadline == "delivery":
        means = _label(f"means_{ticket.delivery_means or 'arrival'}", lang)
        return f"{_delivery_text(ticket, lang)}; {means}"
    return _label("return_text", lang).format(n=ticket.return_days)


def render_escalation(ticket: Ticket, deadline: str = "reaction") -> RenderedMessage:
    """The one escalation message of a missed ``deadline`` (W7): which deadline, when it was
    due, by how much it was missed when escalated, and what the plan promised (W2, W3, W6,
    P3, P4)."""
    lang = ticket.language
    base = render_ticket(ticket)
    sla = ticket.sla()
    record = ticket.escalation(deadline)
    due = record.due if record is not None else None
    if due is None and sla is not None:
        due = {"reaction": sla.reaction_due, "delivery": sla.delivery_due}.get(
            deadline, sla.return_due
        )
    if deadline == "reaction":
        subject = f"{_label('escalation', lang)}: {base.subject}"
        lines = [
            _label("escalation_body", lang),
            f"{_label('sent_at', lang)}: {_when(ticket.sent_at)}",
            f"{_label('reaction_due', lang)}: {_when(due)}",
        ]
    else:
        what = _label(f"missed_{deadline}", lang)
        subject = f"{_label('escalation', lang)} ({what}): {base.subject}"
        lines = [
            _label(f"escalation_body_{deadline}", lang),
            f"{_label(f'{deadline}_due', lang)}: {_when(due)}",
        ]
    lines.append(f"{_label('promised', lang)}: {_promise_text(ticket, deadline, lang)}")
    if record is not None:
        lines.append(f"{_label('late_by', lang)}: {late_text(record.late_by, lang)}")
    body = "\n".join(lines) + "\n\n" + base.body
    return RenderedMessage(subject=subject, body=body)
