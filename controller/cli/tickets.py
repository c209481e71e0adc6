"""``polyfleet controller sla`` and ``tickets``: SLA what-ifs and the ticket desk commands."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from controller.domain.calendar import to_warsaw
from controller.domain.plans import CatalogueError
from controller.domain.sla import SlaTerms, deadlines
from controller.services.entitlement import load_plans


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
        raise ValueError(f"{flag}: {text!r} has no offset; give one (C2), e.g. +01:00 or Z")
    return to_warsaw(moment)


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"code": "bad_input", "message": message}}))
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_sla(args: argparse.Namespace) -> int:
    """Print the deadlines of a ticket under ``--plan`` sent/accepted/received at given times."""
    try:
        catalogue = load_plans()
        plan = catalogue.get(args.plan)
    except KeyError as exc:
        return _fail(f"--plan: {exc.args[0]}", args.json)
    except CatalogueError as exc:
        return _fail(f"plan catalogue: {exc}", args.json)
    try:
        submitted = _moment(args.submitted, "--submitted")
        accepted = _moment(args.accepted, "--accepted")
        received = _moment(args.received, "--received")
    except ValueError as exc:
        return _fail(str(exc), args.json)
    result = deadlines(
        SlaTerms.from_plan(plan), submitted=submitted, accepted=accepted, received=received
    ).as_json()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>13}: {value if value is not None else '-'}")
    return 0


def register(commands: argparse._SubParsersAction[Any]) -> None:
    sla = commands.add_parser(
        "sla",
        help="SLA deadlines of a ticket under a plan (no server needed)",
        description="Reaction, delivery and return deadlines on the Polish business calendar "
        "(W1-W3, W6, P4, E8-E10), in Europe/Warsaw time with explicit offsets.",
    )
    sla.add_argument("--plan", required=True, help="plan id from the catalogue, e.g. hezo_plus")
    sla.add_argument("--submitted", required=True, help="when the ticket was sent (ISO 8601)")
    sla.add_argument("--accepted", help="when the desk accepted it as valid (ISO 8601)")
    sla.add_argument("--received", help="when the replacement arrived (ISO 8601)")
    sla.add_argument("--json", action="store_true", help="machine-readable output")
    sla.set_defaults(func=cmd_sla)
