"""``polyfleet controller maintenance add|list|end``: windows during which faults open no ticket.

Like every admin command, they speak the admin API: to the running server, or to one served
here on the store (``controller.cli.reach``).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from polyfleet.controller.cli.reach import CommandError, ControllerClient, controller_flags, run
from polyfleet.controller.domain.admin_input import shown
from polyfleet.shared.cli_errors import EXIT_USAGE

#: The header row of ``maintenance list``, aligned with :func:`_line`.
HEADER = f"{'ID':<11}  {'STATE':<8} {'SCOPE':<6} {'TARGET':<24} {'FROM':<25} {'UNTIL':<25} REASON"


def _moment(text: str, flag: str) -> str:
    """An ISO 8601 moment with its offset, checked here so a typo fails before sending."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{flag}: {text!r} is not an ISO 8601 time (e.g. 2026-12-08T08:00:00+01:00)",
            code="usage",
            field=flag.removeprefix("--"),
            exit_status=EXIT_USAGE,
        ) from None
    if moment.tzinfo is None:
        raise CommandError(
            f"{flag}: {text!r} has no UTC offset; add one, e.g. {text}+01:00",
            code="usage",
            field=flag.removeprefix("--"),
            exit_status=EXIT_USAGE,
        )
    return moment.isoformat()


def _line(window: dict[str, Any]) -> str:
    line = (
        f"{window['id']:<11}  {window['state']:<8} {window['scope']:<6} {window['target']:<24} "
        f"{window['starts']:<25} {window['ends']:<25} {window['reason']}"
    )
    held = window.get("silenced_faults") or []
    if held:
        faults = ", ".join(f"{f.get('serial') or f.get('site')} {f.get('fault')}" for f in held)
        line += f"  (holding back: {faults})"
    return shown(line)


def cmd_add(args: argparse.Namespace) -> int:
    if args.until is None:
        raise CommandError(
            "--until is required: open-ended maintenance would silence faults forever",
            code="usage",
            field="until",
            exit_status=EXIT_USAGE,
        )
    body: dict[str, Any] = {
        "from": _moment(args.starts, "--from"),
        "until": _moment(args.until, "--until"),
        "reason": args.reason,
    }
    for key in ("site", "room", "serial"):
        if getattr(args, key):
            body[key] = getattr(args, key)

    async def action(client: ControllerClient) -> int:
        window = await client.call("POST", "/api/v1/maintenance", body)
        if args.json:
            print(json.dumps(window))
        else:
            print(
                shown(
                    f"maintenance {window['id']} ({window['state']}): {window['scope']} "
                    f"{window['target']} from {window['starts']} until {window['ends']}: "
                    f"{window['reason']}"
                )
            )
            print(f"end it early with: polyfleet controller maintenance end {window['id']}")
        return 0

    return run(args, action, needs_store=True, fields={"starts": "from"})


def cmd_list(args: argparse.Namespace) -> int:
    async def action(client: ControllerClient) -> int:
        found = (await client.call("GET", "/api/v1/maintenance"))["maintenance"]
        if args.json:
            print(json.dumps({"maintenance": found}))
            return 0
        print(HEADER)
        for window in found:
            print(_line(window))
        return 0

    return run(args, action, needs_store=True)


def cmd_end(args: argparse.Namespace) -> int:
    async def action(client: ControllerClient) -> int:
        path = f"/api/v1/maintenance/{quote(args.window_id, safe='')}"
        window = await client.call("DELETE", path)
        if args.json:
            print(json.dumps(window))
        else:
            print(f"maintenance {window['id']} ended at {window['ended_at']}")
        return 0

    return run(args, action, needs_store=True)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    group = commands.add_parser(
        "maintenance",
        help="maintenance windows: planned work during which faults open no ticket",
        description="During a window the faults of what it covers are recorded and shown, "
        "but no ticket is sent; a fault still present when it ends gets its ticket at once, "
        "dated from its real start.",
    )
    actions = group.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="put a site, a room or a unit into maintenance")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--site", help="a whole site")
    what.add_argument("--room", help="a room: SITE/ROOM, or its name when one site has it")
    what.add_argument("--serial", help="one unit")
    add.add_argument("--from", dest="starts", required=True, help="ISO 8601 with offset")
    add.add_argument("--until", help="ISO 8601 with offset (required: no open-ended window)")
    add.add_argument("--reason", required=True, help="why, e.g. 'room refurbished'")
    controller_flags(add)
    add.set_defaults(func=cmd_add)
    listing = actions.add_parser("list", help="every window with its state")
    controller_flags(listing)
    listing.set_defaults(func=cmd_list)
    end = actions.add_parser("end", help="end a window now (cancel one not started)")
    end.add_argument("window_id", help="e.g. MW-1A2B3C4D")
    controller_flags(end)
    end.set_defaults(func=cmd_end)
