"""``polyfleet controller sla`` and ``tickets``: SLA what-ifs and the ticket desk commands.

The ticket commands speak the admin API like every admin command (``controller.cli.reach``):
to the controller of the data directory, or to one served here on its store when none runs;
``--url`` with an admin token reaches a controller elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from polyfleet.controller.cli.reach import TOKEN_ENV as REACH_TOKEN_ENV
from polyfleet.controller.cli.reach import CommandError, ControllerClient, controller_flags, run
from polyfleet.controller.domain.admin_input import AdminInputError, shown
from polyfleet.controller.domain.admin_input import contract_number as check_contract_number
from polyfleet.controller.domain.admin_input import serial as check_serial
from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.contacts import (
    ADDRESS_KEYS,
    CONTACT_KEYS,
    checked_address_field,
    checked_contact_field,
)
from polyfleet.controller.domain.plans import CatalogueError
from polyfleet.controller.domain.sla import MomentOrderError, SlaTerms, check_order, deadlines
from polyfleet.controller.domain.tickets import TicketCategory
from polyfleet.controller.services.entitlement import load_plans
from polyfleet.shared.cli_errors import EXIT_USAGE, CommandFailed, unreachable_controller


def _moment(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{flag}: {text!r} is not ISO 8601 (e.g. 2025-12-23T16:30:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        # C2: a moment without its offset is refused rather than guessed.
        raise ValueError(f"{flag}: {text!r} has no offset; give one, e.g. +01:00 or Z")
    return to_warsaw(moment)


def _fail(
    message: str,
    as_json: bool,
    *,
    code: int = EXIT_USAGE,
    kind: str | None = None,
    field: str | None = None,
    rule: str | None = None,
) -> NoReturn:
    """Exit 2 for bad input, 1 when the server refused or could not be reached.

    ``as_json`` is kept for callers; ``polyfleet.cli.main`` prints the error either way.
    """
    del as_json
    raise CommandFailed(
        message,
        code=kind or ("bad_input" if code == EXIT_USAGE else "refused"),
        exit_status=code,
        field=field,
        rule=rule,
    )


def cmd_sla(args: argparse.Namespace) -> int:
    """Print the deadlines of a ticket under ``--plan`` sent/accepted/received at given times."""
    try:
        catalogue = load_plans()
        plan = catalogue.get(args.plan)
    except KeyError as exc:
        return _fail(f"--plan: {exc.args[0]}", args.json)
    except CatalogueError as exc:
        return _fail(f"plan catalogue: {exc}", args.json)
    moments: dict[str, datetime | None] = {}
    for name in ("submitted", "accepted", "received"):
        try:
            moments[name] = _moment(getattr(args, name), f"--{name}")
        except ValueError as exc:
            offset = "has no offset" in str(exc)
            _fail(str(exc), args.json, field=name, rule="C2" if offset else None)
    submitted, accepted, received = (
        moments["submitted"],
        moments["accepted"],
        moments["received"],
    )
    try:
        # A ticket is accepted after it is sent, and the replacement arrives after that.
        check_order(
            [("--submitted", submitted), ("--accepted", accepted), ("--received", received)]
        )
    except MomentOrderError as exc:
        _fail(str(exc), args.json, field=exc.later.removeprefix("--"))
    result: dict[str, Any] = deadlines(
        SlaTerms.from_plan(plan), submitted=submitted, accepted=accepted, received=received
    ).as_json()
    # W2, W7: only a promised reaction time escalates when it passes unacknowledged.
    result["reaction_hours"] = plan.reaction_hours
    result["escalates"] = plan.reaction_hours is not None
    if args.json:
        print(json.dumps(result))
        return 0
    for key in ("window", "reaction_due", "delivery_due", "delivery_means", "return_due"):
        value = result[key]
        if key == "reaction_due" and plan.reaction_hours is None:
            value = "none promised"
        elif key == "delivery_due" and value is None:
            value = "- (counted from --accepted)"
        elif key == "return_due" and value is None:
            value = "- (counted from --received)"
        print(f"{key:>14}: {value}")
    contacts = catalogue.contacts_of(plan)
    if plan.reaction_hours is None:
        print(
            f"{'escalation':>14}: never on time: {plan.name} promises no reaction time, so its "
            "tickets are not escalated when nobody reacts"
        )
    else:
        where = f" to {contacts.escalation_email} ({contacts.escalation_phone})" if contacts else ""
        print(
            f"{'escalation':>14}: at reaction_due if the ticket is not acknowledged by then{where}"
        )
    return 0


# -- tickets: the ticket desk, through the admin API -------------------------------------------

#: An admin token for ``--url`` (the variable's name; ``--token`` wins).
TOKEN_ENV = REACH_TOKEN_ENV
#: How long a call to a remote controller (``--url``) may take.
REMOTE_TIMEOUT_S = 30.0

TicketAction = Callable[[ControllerClient], Awaitable[Any]]


async def _at_url(
    url: str, headers: Mapping[str, str], ca_file: str | None, action: TicketAction
) -> Any:
    """Run ``action`` against the controller at ``url`` (``--url``), with the token's header."""
    context: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            timeout=aiohttp.ClientTimeout(total=REMOTE_TIMEOUT_S),
        ) as session:
            return await action(ControllerClient(session, url, headers))
    except aiohttp.ClientError as exc:
        raise unreachable_controller(url, exc) from None


def _reach(args: argparse.Namespace, action: TicketAction) -> Any:
    """What ``action`` returns, run against the controller: ``--url`` with an admin token,
    else the one of ``--data-dir``/``--config`` (the running server, or one served here on
    the store when none runs, as every admin command does)."""
    if args.url:
        token = args.token or os.environ.get(TOKEN_ENV)
        if not token:
            raise CommandError(
                f"--token (or {TOKEN_ENV}) is required with --url: an admin token",
                code="bad_input",
                field="token",
            )
        headers = {"Authorization": f"Bearer {token}"}
        return asyncio.run(_at_url(args.url.rstrip("/"), headers, args.ca_file, action))
    found: list[Any] = []

    async def keep(client: ControllerClient) -> int:
        found.append(await action(client))
        return 0

    # Every ticket command reads or changes tickets: a data directory without a store is
    # refused by name rather than answered from a new empty one.
    run(args, keep, needs_store=True)
    return found[0]


def _ticket_path(ticket_id: str, *rest: str) -> str:
    return "/".join(["/api/v1/tickets", quote(ticket_id, safe=""), *rest])


def _request(
    method: str, path: str, body: Any = None, *, params: Mapping[str, str | None] | None = None
) -> TicketAction:
    """One admin API call, for ``_reach`` to make."""

    async def call(client: ControllerClient) -> Any:
        return await client.call(method, path, body, params=params)

    return call


#: The header row of ``tickets list``, aligned with :func:`_line`.
LIST_HEADER = (
    f"{'TICKET':<13}  {'STATUS':<20} {'DEVICE/SITE':<16} {'FAULT':<24} {'PLAN':<18}"
).rstrip()


def _line(ticket: dict[str, Any]) -> str:
    missing = ticket.get("missing") or []
    held = f" missing: {', '.join(missing)}" if missing else ""
    subject = ticket.get("serial") or ticket.get("site") or "-"
    flags = " flapping" if ticket.get("flapping") else ""
    delivery = ""
    if ticket.get("delivery") in ("failed", "retrying"):
        delivery = f" delivery {ticket['delivery']}: {ticket.get('delivery_error') or '?'}"
    return shown(
        f"{ticket['id']}  {ticket['status']:<20} {subject:<16} {ticket['fault']:<24}"
        f" {ticket.get('plan') or '-':<18}{flags}{held}{delivery}"
    )


#: The header row of ``tickets deliveries``, aligned with :func:`_delivery_line`.
DELIVERY_HEADER = (
    f"{'TICKET':<13}  {'CHANNEL':<8} {'STATE':<9} {'PURPOSE':<14} {'ATTEMPTS':<12} WHEN  LAST ERROR"
)


def _delivery_line(delivery: dict[str, Any]) -> str:
    state = "retrying" if delivery.get("retrying") else str(delivery.get("state"))
    when = delivery.get("failed_at") or delivery.get("sent_at") or delivery.get("next_attempt_at")
    error = f"  {delivery['last_error']}" if delivery.get("last_error") else ""
    return shown(
        f"{delivery.get('ticket_id')}  {delivery.get('channel', '-'):<8} {state:<9}"
        f" {delivery.get('purpose', '-'):<14} attempts {delivery.get('attempts', 0):<3}"
        f" {when or '-'}{error}"
    )


def _show(ticket: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [_line(ticket)]
    keys = (
        "kind", "serial", "contract_number", "plan", "plan_name", "model", "site", "site_name",
        "room", "host_serial",
        "language", "first_seen", "opened_at", "sent_at", "acknowledged_at", "accepted_at",
        "shipped_at", "received_at", "returned_at", "closed_at", "escalated_at",
        "filled_by", "filled_at",
    )  # fmt: skip
    lines += [f"  {key:>16}: {shown(str(ticket[key]))}" for key in keys if ticket.get(key)]
    if ticket.get("escalated_to") is not None:
        where = ", ".join(ticket["escalated_to"]) or "nowhere: no escalation channel configured"
        lines.append(f"  {'escalated_to':>16}: {shown(where)}")
    eligibility = ticket.get("eligibility")
    if eligibility:
        reasons = ", ".join(f"{flag['code']} ({flag['rule']})" for flag in eligibility["flags"])
        honoured = "honoured" if eligibility["grants"] else "not honoured"
        lines.append(
            f"  {'flagged':>16}: {shown(eligibility['contract_number'])} "
            f"({eligibility['plan_name']}): {reasons}; {honoured}"
        )
    sla = ticket.get("sla") or {}
    lines += [f"  {key:>16}: {value}" for key, value in sla.items() if value]
    bundle = ticket.get("bundle")
    if bundle:
        lines.append(f"  {'bundle':>16}: {bundle['filename']} ({bundle['size']} bytes)")
    elif ticket.get("bundle_error"):
        lines.append(f"  {'bundle':>16}: none ({ticket['bundle_error']})")
    for note in ticket.get("notes", [])[-10:]:
        lines.append(f"  {note['at']}  {shown(note['text'])}")
    if ticket.get("missing"):
        lines.append(f"  {'fill in with':>16}: {fill_command(ticket['id'], args)}")
    for delivery in ticket.get("deliveries", []):
        state = "retrying" if delivery.get("retrying") else delivery["state"]
        lines.append(
            shown(
                f"  delivery {delivery['id']}: {state}"
                + (f" ({delivery['last_error']})" if delivery.get("last_error") else "")
            )
        )
    return "\n".join(lines)


#: How each field the desk requires is asked for when ``tickets fill`` is given no flag.
_FILL_PROMPTS = {
    "serial": ("--serial", "the failed device's serial number"),
    "contract_number": ("--contract-number", "the service contract number"),
    "contact_name": ("--contact-name", "the authorised reporter's name"),
    "contact_phone": ("--contact-phone", "the reporter's phone number"),
    "contact_email": ("--contact-email", "the reporter's e-mail address"),
    "address_street": ("--address-street", "the delivery address's street and number"),
    "address_postal_code": ("--address-postal-code", "the delivery address's postal code"),
    "address_city": ("--address-city", "the delivery address's city"),
    "address_country": ("--address-country", "the delivery address's country"),
}
#: The fields of the reporter and the delivery address ``tickets fill`` takes.
DETAIL_FIELDS = (*CONTACT_KEYS, *ADDRESS_KEYS)


def fill_command(ticket: str, args: argparse.Namespace) -> str:
    """``tickets fill`` for ``ticket`` reaching the server as this command did (never a token):
    it asks for what is missing, so it works as printed."""
    parts = ["polyfleet", "controller", "tickets", "fill", ticket]
    for flag in ("config", "data_dir", "url", "ca_file"):
        value = getattr(args, flag, None)
        if value:
            parts += [f"--{flag.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts)


def _ask(field: str, ticket: dict[str, Any], as_json: bool) -> str:
    """One missing field read from standard input (a prompt on a terminal)."""
    flag, what = _FILL_PROMPTS[field]
    device = " ".join(
        str(ticket[key]) for key in ("serial", "model", "room", "site") if ticket.get(key)
    )
    if sys.stdin.isatty():
        print(f"{what} for {ticket['id']} ({shown(device)}): ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        _fail(f"fill: {ticket['id']} still needs {what}: type it, or give {flag}", as_json)
    return line.strip()


def _fill_body(args: argparse.Namespace) -> dict[str, Any]:
    """What ``tickets fill`` sends; with no flag, each missing field is asked for first.

    The values are checked here, by the same rules as the controller's, so a line break
    typed by mistake is refused (exit 2) before anything reaches the controller.
    """
    given: dict[str, str | None] = {
        field: getattr(args, field, None) for field in ("serial", "contract_number", *DETAIL_FIELDS)
    }
    if all(value is None for value in given.values()):
        # Read first, then ask: no store is held while the admin types.
        ticket = _reach(args, _request("GET", _ticket_path(args.ticket_id)))
        missing = [field for field in ticket.get("missing") or [] if field in _FILL_PROMPTS]
        if not missing:
            _fail(
                f"fill: {args.ticket_id} lacks nothing; give --serial, --contract-number or a "
                "--contact-*/--address-* flag to change them",
                args.json,
            )
        given.update({field: _ask(field, ticket, args.json) for field in missing})
    try:
        body: dict[str, Any] = {
            "serial": None
            if given["serial"] is None
            else check_serial(given["serial"], field="--serial"),
            "contract_number": None
            if given["contract_number"] is None
            else check_contract_number(given["contract_number"], field="--contract-number"),
        }
        for field in DETAIL_FIELDS:
            value = given[field]
            if value is None:
                continue
            flag = _FILL_PROMPTS[field][0]
            name = field.partition("_")[2]
            if field in CONTACT_KEYS:
                body[field] = checked_contact_field(name, value, field=flag)
            else:
                body[field] = checked_address_field(name, value, field=flag)
    except AdminInputError as exc:
        _fail(str(exc), args.json, field=(exc.field or "").removeprefix("--").replace("-", "_"))
    if args.force:
        body["force"] = True
    return body


def _step_body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The body of a lifecycle step: its moment (``--at``), when given."""
    if getattr(args, "at", None) is None:
        return None
    try:
        at = _moment(args.at, "--at")
    except ValueError as exc:
        _fail(str(exc), args.json, field="at", rule="C2")
    assert at is not None
    return {"at": at.isoformat()}


def _listing(args: argparse.Namespace) -> TicketAction:
    """``tickets list``: an empty list of a site that does not exist is refused by name."""

    async def call(client: ControllerClient) -> Any:
        query = {"status": args.status, "site": args.site}
        data = await client.call("GET", "/api/v1/tickets", params=query)
        if args.site and not data["tickets"]:
            # An empty list for a mistyped site would read as "no tickets there".
            sites = (await client.call("GET", "/api/v1/sites"))["sites"]
            if args.site not in {site["id"] for site in sites}:
                raise CommandError(f"no site {args.site!r}", code="not_found", field="site")
        return data

    return call


def _open_body(args: argparse.Namespace) -> dict[str, Any]:
    """What ``tickets open`` sends; ``--description -`` reads the description from stdin."""
    description = args.description or ""
    if description == "-":
        description = sys.stdin.read()
    body: dict[str, Any] = {
        "category": args.category,
        "summary": args.summary,
        "description": description,
    }
    for key in ("serial", "site", "contact"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return body


def _print_rows(
    header: str, rows: list[dict[str, Any]], line: Callable[[dict[str, Any]], str], none: str
) -> None:
    """A listing: its header, a line a row, and ``none`` on stderr when it is empty (so a
    script reading stdout still gets the header alone)."""
    print(header)
    for row in rows:
        print(line(row))
    if not rows:
        print(none, file=sys.stderr)


def cmd_tickets(args: argparse.Namespace) -> int:
    """Run one ``tickets`` subcommand against the controller."""
    action = args.tickets_command
    call: TicketAction
    if action == "list":
        call = _listing(args)
    elif action == "deliveries":
        query = {"state": args.state, "ticket": args.ticket}
        call = _request("GET", "/api/v1/tickets/deliveries", params=query)
    elif action == "show":
        call = _request("GET", _ticket_path(args.ticket_id))
    elif action == "fill":
        call = _request("PATCH", _ticket_path(args.ticket_id), _fill_body(args))
    elif action == "open":
        call = _request("POST", "/api/v1/tickets", _open_body(args))
    else:
        call = _request("POST", _ticket_path(args.ticket_id, action), _step_body(args))
    data = _reach(args, call)
    if args.json:
        print(json.dumps(data))
    elif action == "list":
        _print_rows(LIST_HEADER, data["tickets"], _line, "no tickets")
    elif action == "deliveries":
        _print_rows(DELIVERY_HEADER, data["deliveries"], _delivery_line, "no deliveries")
    else:
        print(_show(data, args))
    return 0


def _register_tickets(commands: argparse._SubParsersAction[Any]) -> None:
    tickets = commands.add_parser(
        "tickets",
        help="fault tickets: list, show, fill, ack, accept, received, close",
        description="Fault tickets through the admin API: the controller of --data-dir (or "
        "--config) on this machine needs no token, and when it is not running the command "
        "works on its store; a controller elsewhere is reached with --url and an admin --token.",
    )
    common = argparse.ArgumentParser(add_help=False)
    controller_flags(common)
    common.add_argument("--url", help="the controller's URL, e.g. https://127.0.0.1:8080")
    common.add_argument("--token", help=f"an admin API token for --url (or set {TOKEN_ENV})")
    common.add_argument("--ca-file", help="CA certificate to trust for an https --url")
    sub = tickets.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common], help="tickets, newest first")
    listing.add_argument("--status", help="only this status (needs_data, open, sent...)")
    listing.add_argument("--site", help="only this site")
    deliveries = sub.add_parser(
        "deliveries",
        parents=[common],
        help="ticket messages by channel: pending, retrying, sent, failed (with the reason)",
    )
    deliveries.add_argument(
        "--state", choices=("pending", "retrying", "sent", "failed"), help="only this state"
    )
    deliveries.add_argument("--ticket", help="only this ticket's messages")
    opening = sub.add_parser(
        "open",
        parents=[common],
        help="open a ticket by hand: a fault the agents cannot see, or support or "
        "configuration help the unit's plan includes",
        description="Open a ticket by hand for a unit (--serial) or a whole site (--site). "
        "The unit's plan decides: a category it does not include is refused, naming the plan "
        "and the plans that include it. The ticket goes to the service desk as automatic ones "
        "do (same SLA clocks, reporter, delivery address, escalation).",
    )
    opening.add_argument("--serial", help="the unit's serial number")
    opening.add_argument("--site", help="the site, for a site-wide problem (instead of --serial)")
    opening.add_argument(
        "--category",
        required=True,
        choices=[category.value for category in TicketCategory],
        help="what the ticket asks for",
    )
    opening.add_argument("--summary", required=True, help="one line: what is wrong or needed")
    opening.add_argument(
        "--description", help="the details, several lines allowed; '-' reads them from stdin"
    )
    opening.add_argument(
        "--contact", help="whom the desk should ask for (default: the site's reporter)"
    )
    described = {
        "show": "one ticket with its notes, SLA and deliveries",
        "ack": "the desk contacted us (stops the reaction clock)",
        "accept": "the desk accepted the ticket as valid (starts the delivery clock)",
        "shipped": "the replacement is on its way (a unit's fault, once accepted)",
        "received": "the replacement arrived (starts the return clock; once accepted)",
        "returned": "the failed unit was sent back (once the replacement arrived)",
        "close": "the ticket is done",
        "send": "send an open ticket now (not while its messages are on their way)",
        "fill": "fill in what a held ticket lacks: serial, contract number, the reporter's "
        "contact, the delivery address (what is missing is asked for when no flag is given); "
        "then it is sent",
    }
    dated = ("ack", "accept", "shipped", "received", "returned", "close")
    for name, help_text in described.items():
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.add_argument("ticket_id", help="e.g. PF-K7Q2M-1A2B3C4D5E")
        if name == "fill":
            command.add_argument("--serial", help="the failed device's serial number")
            command.add_argument("--contract-number", help="the service contract number")
            for field in DETAIL_FIELDS:
                flag, what = _FILL_PROMPTS[field]
                command.add_argument(flag, dest=field, help=what)
            command.add_argument(
                "--force",
                action="store_true",
                help="take a contract number the asset registry does not hold for the serial",
            )
        if name in dated:
            command.add_argument(
                "--at",
                help="when it happened, if earlier (ISO 8601 with offset, e.g. "
                "2026-03-02T09:15:00+01:00); not before the ticket's earlier steps",
            )
    tickets.set_defaults(func=cmd_tickets)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    sla = commands.add_parser(
        "sla",
        help="SLA deadlines of a ticket under a plan (no server needed)",
        description="Reaction, delivery and return deadlines on the Polish business calendar, "
        "in Europe/Warsaw time with explicit offsets.",
    )
    sla.add_argument("--plan", required=True, help="plan id from the catalogue, e.g. hezo_plus")
    sla.add_argument("--submitted", required=True, help="when the ticket was sent (ISO 8601)")
    sla.add_argument("--accepted", help="when the desk accepted it as valid (ISO 8601)")
    sla.add_argument("--received", help="when the replacement arrived (ISO 8601)")
    sla.add_argument("--json", action="store_true", help="machine-readable output")
    sla.set_defaults(func=cmd_sla)
    _register_tickets(commands)
