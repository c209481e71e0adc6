"""Tickets: list, show, deliveries, bundles; open one by hand, fill in a held one, move one
along, send it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.admin_input import contract_number as checked_contract_number
from polyfleet.controller.domain.admin_input import display_name, multiline_text, printable_text
from polyfleet.controller.domain.admin_input import serial as checked_serial
from polyfleet.controller.domain.contacts import (
    ADDRESS_KEYS,
    CONTACT_KEYS,
    checked_address_field,
    checked_contact_field,
)
from polyfleet.controller.domain.language import LANGUAGES
from polyfleet.controller.domain.tickets import (
    ACTIONS,
    ACTIVE,
    Ticket,
    TicketCategory,
    TicketKind,
    TicketStatus,
    fault_text,
    model_name,
)
from polyfleet.controller.errors import BadRequest, Invalid, InvalidInput, NotFound
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.overview import URGENCIES, ticket_urgency
from polyfleet.controller.services.ticket_service import TicketService
from polyfleet.controller.store.base import Doc

#: ``send`` (re)sends an open ticket; the rest are lifecycle steps (``ACTIONS``).
VERBS = (*ACTIONS, "send")
#: The audit record of each verb.
AUDITED: Mapping[str, AuditAction] = {
    "ack": AuditAction.TICKET_ACK,
    "accept": AuditAction.TICKET_ACCEPT,
    "shipped": AuditAction.TICKET_SHIPPED,
    "received": AuditAction.TICKET_RECEIVED,
    "returned": AuditAction.TICKET_RETURNED,
    "close": AuditAction.TICKET_CLOSE,
    "send": AuditAction.TICKET_SEND,
}
#: States a delivery record can be listed in.
DELIVERY_STATES = ("pending", "retrying", "sent", "failed")
#: Statuses a ticket can be listed in.
STATUSES = tuple(status.value for status in TicketStatus)
#: Closed tickets stay on the dashboard's list this long.
RECENT = timedelta(days=7)


def _service(core: Controller) -> TicketService:
    return core.tickets.get()


def _listed(service: TicketService, ticket: Ticket) -> Doc:
    """The ticket's document with how its messages fare (``delivery``, ``delivery_error``)."""
    state, error = service.delivery_state(ticket.id)
    return {**ticket.as_document(), "delivery": state, "delivery_error": error}


def _detail(service: TicketService, ticket: Ticket) -> Doc:
    return {**_listed(service, ticket), "deliveries": service.deliveries(ticket.id)}


# -- reading ---------------------------------------------------------------------------------


def list_tickets(
    core: Controller, caller: Caller, *, status: str | None = None, site: str | None = None
) -> list[Doc]:
    """Tickets (in ``status``, of ``site``), newest first, each with how its messages fare."""
    caller.require(Permission.READ)
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: {status!r} is not one of {', '.join(STATUSES)}", field="status")
    service = _service(core)
    return [_listed(service, ticket) for ticket in service.tickets(status=status, site=site)]


def ticket_detail(core: Controller, caller: Caller, ticket_id: str) -> Doc:
    """One ticket with its deliveries; ``TicketNotFound`` when there is none."""
    caller.require(Permission.READ)
    service = _service(core)
    return _detail(service, service.get(ticket_id))


def list_deliveries(
    core: Controller, caller: Caller, *, ticket: str | None = None, state: str | None = None
) -> list[Doc]:
    """Ticket messages by channel (of one ticket, in one state), oldest first."""
    caller.require(Permission.READ)
    if state is not None and state not in DELIVERY_STATES:
        known = ", ".join(DELIVERY_STATES)
        raise BadRequest(f"state: {state!r} is not one of {known}", field="state")
    return _service(core).deliveries(ticket, state=state)


@dataclass(frozen=True, kw_only=True)
class BundleFile:
    """A ticket's diagnostics bundle on disk, as it is downloaded."""

    path: Path
    filename: str
    content_type: str


def ticket_bundle(core: Controller, caller: Caller, ticket_id: str) -> BundleFile:
    """The ticket's diagnostics bundle (W4); ``NotFound`` saying why when it has none."""
    caller.require(Permission.READ)
    service = _service(core)
    ticket = service.get(ticket_id)
    if ticket.bundle is None:
        reason = ticket.bundle_error or "not collected yet"
        raise NotFound(f"ticket {ticket.id} has no diagnostics bundle: {reason}")
    return BundleFile(
        path=service.bundle_dir / ticket.id / ticket.bundle.filename,
        filename=ticket.bundle.filename,
        content_type=ticket.bundle.content_type,
    )


#: How the tickets page sorts: most urgent first, by when opened (newest first), by age
#: (oldest first) or by site name; ``-`` first turns the order round.
BOARD_SORTS = ("urgency", "opened", "age", "site")
#: What a ticket is about (``TicketKind``).
KINDS = tuple(kind.value for kind in TicketKind)
#: How urgent an active ticket is (``services.overview``), as the page filters by it.
URGENCY_LEVELS: tuple[str, ...] = URGENCIES


@dataclass(frozen=True, kw_only=True)
class BoardQuery:
    """What the tickets page asks for; each field is a query parameter of the same name."""

    #: Words that must all appear in the id, summary, fault, device, room or site.
    q: str = ""
    status: str | None = None
    site: str | None = None
    kind: str | None = None
    urgency: str | None = None
    sort: str = BOARD_SORTS[0]
    descending: bool = False

    @property
    def sort_param(self) -> str:
        return ("-" if self.descending else "") + self.sort

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> BoardQuery:
        """From query strings; ``InvalidInput`` names the bad parameter and what it takes."""
        chosen: dict[str, str | None] = {}
        for name, allowed in (("status", STATUSES), ("kind", KINDS), ("urgency", URGENCY_LEVELS)):
            value = values.get(name) or None
            if value is not None and value not in allowed:
                raise InvalidInput(name, f"{name} must be one of {', '.join(allowed)}")
            chosen[name] = value
        sort_text = values.get("sort") or BOARD_SORTS[0]
        sort = sort_text.removeprefix("-")
        if sort not in BOARD_SORTS:
            sorts = ", ".join(BOARD_SORTS)
            raise InvalidInput("sort", f"sort must be one of {sorts} (- first: descending)")
        return cls(
            q=" ".join((values.get("q") or "").split()),
            site=values.get("site") or None,
            sort=sort,
            descending=sort_text.startswith("-"),
            **chosen,
        )


@dataclass(frozen=True, kw_only=True)
class BoardRow:
    """One ticket as the tickets page lists it."""

    ticket: Ticket
    #: Its site's name (its id when the site is gone), and how long it has been open.
    site_name: str
    age_s: int
    #: ``ticket_urgency`` while active ("" once closed) and its running SLA clock.
    urgency: str
    clock: Doc | None


@dataclass(frozen=True, kw_only=True)
class TicketBoard:
    """The tickets page: active tickets and those closed within ``RECENT``, as asked for,
    with the active ones counted by urgency (before the urgency filter)."""

    active: list[BoardRow]
    closed: list[BoardRow]
    counts: dict[str, int]


def _words(ticket: Ticket, site_name: str) -> str:
    """What the search looks in, lower case: fault texts in every language, so an admin finds
    a ticket by the words the page shows them."""
    parts = [
        ticket.id,
        ticket.summary or "",
        ticket.fault,
        ticket.fault_detail,
        *(fault_text(ticket.fault, language) for language in LANGUAGES),
        ticket.serial or "",
        ticket.model or "",
        model_name(ticket.model) if ticket.model else "",
        ticket.room or "",
        ticket.site or "",
        site_name,
        *ticket.affected_serials,
    ]
    return "\n".join(parts).casefold()


def _order(query: BoardQuery, row: BoardRow) -> tuple[Any, ...]:
    """The sort key of ``row`` (ascending); the id settles ties."""
    ticket = row.ticket
    if query.sort == "opened":
        return (-ticket.opened_at.timestamp(), ticket.id)
    if query.sort == "age":
        # By the moment itself: tickets opened within one second still have an order.
        return (ticket.opened_at.timestamp(), ticket.id)
    if query.sort == "site":
        return (row.site_name.casefold(), _urgent_first(row), ticket.id)
    return (*_urgent_first(row), ticket.id)


def _urgent_first(row: BoardRow) -> tuple[int, float]:
    """Most urgent first (overdue the longest first); closed ones last, latest closed first."""
    if not row.urgency:
        closed = row.ticket.closed_at
        return (len(URGENCIES), -closed.timestamp() if closed is not None else 0.0)
    left = row.clock["seconds_left"] if row.clock is not None else float("inf")
    return (URGENCIES.index(row.urgency), float(left))


def ticket_board(core: Controller, caller: Caller, query: BoardQuery | None = None) -> TicketBoard:
    """Active tickets and those closed within ``RECENT`` that match ``query``, in its order."""
    caller.require(Permission.READ)
    query = query or BoardQuery()
    service = _service(core)
    now = core.clock()
    sites = core.inventory.sites()
    names = {str(site["id"]): str(site.get("name") or site["id"]) for site in sites}
    words = query.q.casefold().split()
    wanted_statuses = None if query.status is None else {query.status}

    def rows(tickets: list[Ticket]) -> list[BoardRow]:
        found = []
        for ticket in tickets:
            if wanted_statuses is not None and ticket.status.value not in wanted_statuses:
                continue
            if query.kind is not None and ticket.kind.value != query.kind:
                continue
            site_name = names.get(ticket.site or "", ticket.site_name or ticket.site or "")
            if words and not all(word in _words(ticket, site_name) for word in words):
                continue
            urgency, clock = ("", None)
            if ticket.status in ACTIVE:
                urgency, clock = ticket_urgency(ticket, now)
            age = int((now - ticket.opened_at).total_seconds())
            found.append(
                BoardRow(
                    ticket=ticket, site_name=site_name, age_s=age, urgency=urgency, clock=clock
                )
            )
        return found

    active = rows(service.active_tickets(site=query.site))
    counts = {urgency: 0 for urgency in URGENCIES}
    for row in active:
        counts[row.urgency] += 1
    closed = rows(service.closed_since(now - RECENT, site=query.site))
    if query.urgency is not None:
        active = [row for row in active if row.urgency == query.urgency]
        # A closed ticket has no urgency.
        closed = []
    for found in (active, closed):
        found.sort(key=lambda row: _order(query, row), reverse=query.descending)
    return TicketBoard(active=active, closed=closed, counts=counts)


@dataclass(frozen=True, kw_only=True)
class TicketView:
    """One ticket as its page shows it."""

    ticket: Ticket
    deliveries: list[Doc]
    #: How urgent it is while active (``ticket_urgency``; "" once closed), and its running
    #: SLA clock.
    urgency: str
    clock: Doc | None
    #: What the caller may do with it now (none for a caller who may only look): the next
    #: steps for its status and kind, as the service takes them (``next_steps``).
    actions: list[str]


def ticket_view(core: Controller, caller: Caller, ticket_id: str) -> TicketView:
    caller.require(Permission.READ)
    service = _service(core)
    ticket = service.get(ticket_id)
    actions = service.next_steps(ticket) if caller.may(Permission.OPERATE) else []
    urgency: str = ""
    clock: Doc | None = None
    if ticket.status in ACTIVE:
        urgency, clock = ticket_urgency(ticket, core.clock())
    return TicketView(
        ticket=ticket,
        deliveries=service.deliveries(ticket.id),
        urgency=urgency,
        clock=clock,
        actions=actions,
    )


def device_tickets(core: Controller, caller: Caller, serial: str) -> list[Ticket]:
    """A device's tickets (its own, and site tickets that name it), newest first."""
    caller.require(Permission.READ)
    return _service(core).device_tickets(serial)


def active_tickets(core: Controller, caller: Caller) -> list[Ticket]:
    """Tickets still being worked on (any status but closed), newest first."""
    caller.require(Permission.READ)
    return _service(core).active_tickets()


@dataclass(frozen=True, kw_only=True)
class TicketSubject:
    """What a ticket opened by hand would be about, as a page names it: a unit (enrolled or
    only registered) or a site; unknown parts None."""

    serial: str | None
    model: str | None
    site: str | None
    site_name: str | None


def ticket_subject(
    core: Controller, caller: Caller, *, serial: str | None = None, site: str | None = None
) -> TicketSubject:
    """The unit ``serial`` or the site ``site`` named for a page, from the inventory or the
    asset registry; what neither knows stays None (the use case refuses it by name)."""
    caller.require(Permission.READ)
    model: str | None = None
    if serial:
        device = core.inventory.find_device(serial)
        asset = core.registry.asset(serial)
        if device is not None:
            found_model, site = device.get("model"), device.get("site_id")
            model = found_model if isinstance(found_model, str) else None
        elif asset is not None:
            model, site = asset.model, asset.site
    known = core.inventory.find_site(site) if site else None
    return TicketSubject(
        serial=serial or None,
        model=model,
        site=site,
        site_name=None if known is None else str(known.get("name") or site),
    )


# -- acting ----------------------------------------------------------------------------------


def _filled_by(caller: Caller) -> str:
    """How a ticket names who filled it in: the token (and the face), or this machine."""
    actor = caller.actor
    if actor.token_id is None:
        return f"{actor.name} (on the controller)"
    via = f", {caller.via}" if caller.via else ""
    return f"{actor.name} (token {actor.token_id}{via})"


async def fill_ticket(
    core: Controller,
    caller: Caller,
    ticket_id: str,
    *,
    serial: str | None = None,
    contract_number: str | None = None,
    force: bool = False,
    details: Mapping[str, str | None] | None = None,
) -> Doc:
    """Complete a held ticket: its serial or contract number (W5), the reporter's
    ``contact_*`` and the delivery ``address_*`` fields (``details``, flat keys as
    ``missing`` names them); complete, it is sent.

    Refused: ``TicketNotFound``; an unprintable or empty value (``AdminInputError``, the
    field named); ``UnknownContract`` for a number the asset registry lacks for the serial
    unless ``force``; ``TicketError`` once the ticket is sent.
    """
    caller.require(Permission.OPERATE)
    service = _service(core)
    # Every given text is checked first: a bad one is named whatever the ticket.
    filled: dict[str, Any] = {}
    if serial is not None:
        filled["serial"] = checked_serial(serial)
    if contract_number is not None:
        filled["contract_number"] = checked_contract_number(contract_number)
    contact: dict[str, str] = {}
    address: dict[str, str] = {}
    for key, value in (details or {}).items():
        if value is None:
            continue
        if key in CONTACT_KEYS:
            name = key.removeprefix("contact_")
            contact[name] = checked_contact_field(name, value, field=key)
        elif key in ADDRESS_KEYS:
            name = key.removeprefix("address_")
            address[name] = checked_address_field(name, value, field=key)
        else:
            raise BadRequest(f"{key}: not a ticket detail", field=key)
    service.get(ticket_id)
    ticket = await service.fill(
        ticket_id,
        serial=filled.get("serial"),
        contract_number=filled.get("contract_number"),
        by=_filled_by(caller),
        force=force,
        contact=contact or None,
        address=address or None,
    )
    filled.update({f"contact_{k}": v for k, v in contact.items()})
    filled.update({f"address_{k}": v for k, v in address.items()})
    if force:
        filled["force"] = True
    await record(
        core, caller, AuditAction.TICKET_FILL, f"ticket:{ticket.id}", filled, site=ticket.site
    )
    return _detail(service, ticket)


#: Categories a ticket opened by hand may ask for.
CATEGORIES = tuple(category.value for category in TicketCategory)
#: Longest one-line summary of a ticket opened by hand.
SUMMARY_MAX_CHARS = 200


async def open_ticket(
    core: Controller,
    caller: Caller,
    *,
    category: str,
    summary: str,
    description: str = "",
    serial: str | None = None,
    site: str | None = None,
    contact: str | None = None,
) -> Doc:
    """Open a ticket by hand: for a unit (``serial``: enrolled or in the asset registry) or
    a whole site (``site``), a ``fault`` the agents cannot see, or the ``support`` or
    ``configuration`` help the unit's plan sells (H4, P2). It goes to the desk as automatic
    tickets do, held while the desk's required facts are missing.

    Refused: a category not in ``CATEGORIES``, neither or both of serial and site, an
    unprintable text (422, the field named); an unknown unit or site (404);
    ``ServiceNotIncluded`` when the plan in force lacks the service (422 ``not_in_plan``).
    """
    caller.require(Permission.OPERATE)
    if category not in CATEGORIES:
        raise Invalid(
            f"category: {category!r} is not one of {', '.join(CATEGORIES)}", field="category"
        )
    if (serial is None) == (site is None):
        raise Invalid(
            "give the unit's serial or, for a site-wide problem, the site", field="serial"
        )
    text = printable_text(summary, field="summary", max_chars=SUMMARY_MAX_CHARS)
    details = multiline_text(description, field="description")
    person = None if contact is None else display_name(contact, field="contact", allow_empty=True)
    model = None
    if serial is not None:
        serial = checked_serial(serial)
        device = core.inventory.find_device(serial)
        if device is None and core.registry.asset(serial) is None:
            raise NotFound(
                f"no unit {serial!r}: it is neither enrolled nor in the asset registry; "
                "register it first (polyfleet controller assets import)",
                field="serial",
                template="no unit {serial}: it is neither enrolled nor in the asset registry; "
                "register it first (polyfleet controller assets import)",
                params={"serial": repr(serial)},
            )
        if device is not None:
            model = device.get("model")
            site = device.get("site_id")
    else:
        assert site is not None
        core.inventory.site(site)
    service = _service(core)
    ticket = await service.open_by_hand(
        category=TicketCategory(category),
        summary=text,
        description=details,
        serial=serial,
        site=site,
        model=model if isinstance(model, str) else None,
        contact=person or None,
        by=_filled_by(caller),
    )
    await record(
        core,
        caller,
        AuditAction.TICKET_OPEN,
        f"ticket:{ticket.id}",
        {"category": category, "serial": serial, "summary": text, "status": ticket.status.value},
        site=ticket.site,
    )
    return _detail(service, ticket)


async def act_on_ticket(
    core: Controller, caller: Caller, ticket_id: str, verb: str, *, at: datetime | None = None
) -> Doc:
    """One lifecycle step (``ACTIONS``: ack, accept, shipped, received, returned, close),
    dated ``at`` when it happened earlier, or ``send`` for an open ticket.

    Refused: an unknown verb or ``TicketNotFound`` (404); ``TicketError`` when its status does
    not allow it (409); ``TicketMomentError`` when ``at`` is ahead of now or before an
    earlier step (422, ``at``).
    """
    caller.require(Permission.OPERATE)
    audited = AUDITED.get(verb)
    if audited is None:
        raise NotFound(f"no ticket action {verb!r}; use one of {', '.join(VERBS)}")
    service = _service(core)
    service.get(ticket_id)
    if verb == "send":
        ticket = await service.resend(ticket_id)
    else:
        ticket = await service.act(ticket_id, verb, at=at)
    details = {"status": ticket.status.value}
    if at is not None:
        details["at"] = at.isoformat()
    await record(core, caller, audited, f"ticket:{ticket.id}", details, site=ticket.site)
    return _detail(service, ticket)
