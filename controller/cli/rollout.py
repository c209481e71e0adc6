"""``polyfleet controller rollout ...`` and ``releases package ...``: plans, controls, packages.

Like every admin command, they speak the admin API: to the running server, or to one served
here on the store (``controller.cli.reach``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from polyfleet.controller.cli.reach import ControllerClient, controller_flags, print_json, run
from polyfleet.controller.domain.admin_input import shown
from polyfleet.controller.domain.rollout import (
    FAILURE_TYPES,
    AbortCriterion,
    PlanError,
    parse_abort_text,
    render_csv,
    stored_abort_criteria,
)
from polyfleet.controller.services.packages import file_chunks
from polyfleet.controller.services.rollout import ROLLOUT_STATUSES
from polyfleet.shared.cli_errors import CommandFailed
from polyfleet.shared.printable import write_control

EXIT_OK, EXIT_FAILED = 0, 1
#: ``rollout status --watch`` stops by itself once the rollout is in one of these.
FINAL = frozenset({"done", "aborted"})


class RolloutApi:
    """The rollout and package calls of the admin API, as these commands make them."""

    def __init__(self, client: ControllerClient) -> None:
        self._client = client

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self._client.call(method, path, **kwargs)

    async def plan(self, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        query = {"dry_run": "1"} if dry_run else {}
        return dict(await self._call("POST", "/api/v1/rollouts", body=body, params=query))

    async def rollouts(self, status: str | None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list((await self._call("GET", "/api/v1/rollouts", params=params))["rollouts"])

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/api/v1/rollouts/{rollout_id}"))

    async def status(self, rollout_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/api/v1/rollouts/{rollout_id}/status"))

    async def act(self, rollout_id: str, action: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/api/v1/rollouts/{rollout_id}/{action}"))

    async def add_package(self, version: str, path: Path, sha256: str | None) -> dict[str, Any]:
        params = {"sha256": sha256} if sha256 else {}
        # The file is read while it is sent: aiohttp reports a read error as the request's
        # (ClientOSError), which the reach layer turns into words like any other.
        answer = await self._call(
            "PUT",
            f"/api/v1/releases/{version}/package",
            data=file_chunks(path),
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )
        return dict(answer)

    async def packages(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/v1/releases/packages"))["packages"])


def _run(
    args: argparse.Namespace,
    action: Callable[[RolloutApi], Awaitable[int]],
    *,
    needs_store: bool = True,
) -> int:
    """Run ``action`` against the controller (``reach``). Reading or acting on rollouts needs
    a store that exists: a mistyped data directory is refused, not made anew."""
    return run(args, lambda client: action(RolloutApi(client)), needs_store=needs_store)


# -- rollout plan / list / show ---------------------------------------------------------------


def _plan_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"target": args.target}
    keys = ("canary", "waves", "window", "start", "wave_gap", "hop_length", "max_failures")
    for key in (*keys, "per_site"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.name:
        body["name"] = args.name
    body["sites"] = args.site or []
    body["models"] = args.model or []
    body["exclude"] = args.exclude or []
    if args.abort:
        body["abort_criteria"] = [criterion.to_json() for criterion in args.abort]
    return body


def abort_criterion(text: str) -> AbortCriterion:
    """``--abort WAVES:PERCENT%[:min=N][:type=FAILURE]``; a usage error says what to fix."""
    try:
        return parse_abort_text(text)
    except PlanError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def print_plan(plan: dict[str, Any]) -> None:
    """A plan for people: header, abort criteria, waves, then each device held or left out
    with why."""
    ident = plan.get("id") or "(not stored: --dry-run)"
    # Names stored before the text checks may hold control characters: shown escaped.
    print(f"rollout {ident}: {shown(plan['name'] or plan['target'])} [{plan['status']}]")
    print(
        f"target {plan['target']}, start {plan['start']}, window {plan['window']} site time, "
        f"max failures {plan['max_failures']}%, {plan['per_site']} at once per site"
    )
    for criterion in stored_abort_criteria(plan):
        print(f"  abort {criterion.text():<28} {criterion.describe()}")
    for wave in plan["waves"]:
        print(
            f"  wave {wave['index']} {wave['name']:<7} opens {wave['opens_at']}: "
            f"{len(wave['devices'])} device(s)"
        )
    counts = plan["summary"]["by_status"] if "summary" in plan else {}
    print("devices: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for device in plan["devices"]:
        hops = " -> ".join(h["version"] for h in device["hops"]) or "-"
        wave = "-" if device["wave"] is None else str(device["wave"])
        print(
            f"  {device['serial']:<16} {device['site']:<10} {device['model']:<11} "
            f"{device['status']:<9} wave {wave:<2} {device['installed'] or '?'} => {hops}"
        )
        for reason in device["reasons"]:
            print(f"  {'':<16} {reason['code']}: {reason['text']}")
        for note in device.get("notes") or ():
            print(f"  {'':<16} {note['code']}: {note['text']}")


def _print_rollout(args: argparse.Namespace, rollout: dict[str, Any]) -> None:
    """A plan or a stored rollout as ``--json``, ``--csv`` (one row per hop) or lines."""
    if args.json:
        print_json(rollout)
    elif args.csv:
        sys.stdout.write(render_csv(rollout["devices"]))
    else:
        print_plan(rollout)


def cmd_plan(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        _print_rollout(args, await backend.plan(_plan_body(args), bool(args.dry_run)))
        return EXIT_OK

    return _run(args, action)


#: The header rows of the tables for people, aligned with their rows.
ROLLOUT_HEADER = f"{'ROLLOUT':<20} {'STATUS':<8} {'TARGET':<16} {'START':<10} {'PLANNED':>7}  NAME"
PACKAGE_HEADER = f"{'VERSION':<18} {'BYTES':>12}  SHA256"


def cmd_list(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        rollouts = await backend.rollouts(args.status)
        if args.json:
            print_json({"rollouts": rollouts})
            return EXIT_OK
        print(ROLLOUT_HEADER)
        for rollout in rollouts:
            counts = (rollout.get("summary") or {}).get("by_status", {})
            planned = counts.get("planned", 0)
            print(
                f"{rollout['id']:<20} {rollout['status']:<8} {rollout['target']:<16} "
                f"{rollout['start']:<10} {planned:>7}  {shown(rollout['name'])}"
            )
        if not rollouts:
            print("no rollouts", file=sys.stderr)
        return EXIT_OK

    return _run(args, action)


def cmd_show(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        _print_rollout(args, await backend.rollout(args.id))
        return EXIT_OK

    return _run(args, action)


def _act(action_name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def action(backend: RolloutApi) -> int:
            result = await backend.act(args.id, action_name)
            if args.json:
                print_json(result)
            else:
                print(f"rollout {result['id']}: {result['status']}")
            return EXIT_OK

        return _run(args, action)

    return command


def status_lines(status: dict[str, Any]) -> list[str]:
    """What ``rollout status`` shows: the rollout, counts per status, then per wave."""
    progress = status["progress"]
    lines = [
        f"rollout {status['id']} {shown(status['name'])}: {status['status']} "
        f"(target {status['target']})",
        "  all     " + _counts(progress["by_status"]),
    ]
    for wave, counts in zip(status["waves"], progress["waves"], strict=False):
        lines.append(f"  {wave['name']:<7} " + _counts(counts["by_status"]))
    halt = status.get("halt")
    if halt:
        lines.append(f"  halted: {shown(str(halt.get('reason')))}")
    for active in status.get("active") or ():
        lines.append(f"  {active['serial']:<16} {active['status']:<18} hop {active['hop']}")
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items()) or "-"


def cmd_status(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        shown = 0
        tty = sys.stdout.isatty() and not args.json
        while True:
            status = await backend.status(args.id)
            if args.json:
                # One document per line while watching (JSON lines), one document otherwise.
                sys.stdout.write(json.dumps(status, ensure_ascii=False) + "\n")
            else:
                lines = status_lines(status)
                if tty and shown:
                    # Back to the first line of the previous frame, and clear down.
                    write_control(sys.stdout, f"\x1b[{shown}F\x1b[J")
                sys.stdout.write("\n".join(lines) + "\n")
                shown = len(lines)
            sys.stdout.flush()
            if not args.watch or status["status"] in FINAL:
                return EXIT_OK
            await asyncio.sleep(args.interval)  # waits-for: the next refresh of the watch

    return _run(args, action)


# -- releases package -------------------------------------------------------------------------


def cmd_package_add(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        if not await asyncio.to_thread(args.file.is_file):
            raise CommandFailed(
                f"{args.file}: no such file", code="file_not_found", field="file", file=args.file
            )
        doc = await backend.add_package(args.version, args.file, args.sha256)
        if args.json:
            print_json(doc)
        else:
            print(f"package {doc['version']}: {doc['size']} bytes, sha256 {doc['sha256']}")
        return EXIT_OK

    # A package may be the first thing a new controller keeps, like a site.
    return _run(args, action, needs_store=False)


def cmd_package_list(args: argparse.Namespace) -> int:
    async def action(backend: RolloutApi) -> int:
        packages = await backend.packages()
        if args.json:
            print_json({"packages": packages})
            return EXIT_OK
        print(PACKAGE_HEADER)
        for doc in packages:
            print(f"{doc['version']:<18} {doc['size']:>12}  {doc['sha256']}")
        if not packages:
            print("no firmware packages", file=sys.stderr)
        return EXIT_OK

    return _run(args, action)


def _rollout_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """The flags of a command that prints a rollout (``_print_rollout``)."""
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help=f"{what} as JSON")
    output.add_argument("--csv", action="store_true", help="one row per hop, CSV")
    controller_flags(parser, json_flag=False)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value} is outside 0.1..3600 seconds")
    return value


def register_packages(releases: argparse._SubParsersAction[Any]) -> None:
    """``releases package add|list`` (called from the releases command's parser)."""
    package = releases.add_parser("package", help="firmware packages for catalogued releases")
    actions = package.add_subparsers(dest="package_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="keep a release's package (SHA-256 and size recorded)")
    add.add_argument("version", metavar="VERSION", help="a catalogued release, e.g. 4.2.2-408037")
    add.add_argument("file", type=Path, metavar="FILE")
    add.add_argument("--sha256", help="the vendor's SHA-256: refused when the file differs")
    controller_flags(add)
    add.set_defaults(func=cmd_package_add)
    lst = actions.add_parser("list", help="the packages kept")
    controller_flags(lst)
    lst.set_defaults(func=cmd_package_list)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    rollout = commands.add_parser("rollout", help="firmware rollouts: plan, run, watch")
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan",
        help="plan a rollout (stored; it starts only with rollout start)",
        description="Plans waves per site window against contracts; every device held or "
        "left out is listed with its reason.",
    )
    plan.add_argument("--target", required=True, help="release to reach, e.g. 4.2.2-408037")
    plan.add_argument("--site", action="append", help="only this site (repeatable)")
    plan.add_argument("--model", action="append", help="only this model (repeatable)")
    plan.add_argument("--canary", type=int, help="canary devices per site (default 1)")
    plan.add_argument("--waves", help="cumulative shares (default 10%%,50%%,100%%)")
    plan.add_argument("--window", help="HH:MM-HH:MM site time (default 01:00-05:00)")
    plan.add_argument("--start", help="first night, YYYY-MM-DD (default tomorrow)")
    plan.add_argument("--wave-gap", dest="wave_gap", help="time between waves (default 1d)")
    plan.add_argument(
        "--hop-length",
        dest="hop_length",
        help="how long one update of one unit takes: hops are this far apart in the window "
        "and need their room free this long (default 45m, at most the window)",
    )
    plan.add_argument(
        "--max-failures",
        dest="max_failures",
        type=int,
        help="a later wave halts past this share of failures, percent (default 10)",
    )
    plan.add_argument(
        "--abort",
        action="append",
        type=abort_criterion,
        metavar="CRITERION",
        help="when the rollout halts by itself, as WAVES:PERCENT%%[:min=N][:type=FAILURE] "
        "(repeatable; given ones replace the defaults canary:0%% and later:MAX_FAILURES%%): "
        "WAVES is canary or later (each later wave on its own), PERCENT the share of the "
        "wave's devices failing past which it halts, min how many of them must have run "
        "first (default 1), type only failures with this code instead of every failure the "
        f"firmware or its package may be to blame for ({', '.join(FAILURE_TYPES[1:])}); "
        "e.g. --abort canary:0%% --abort later:5%%:min=20",
    )
    plan.add_argument("--per-site", dest="per_site", type=int, help="updates at once (default 5)")
    plan.add_argument("--name", help="a name people recognise")
    plan.add_argument("--exclude", action="append", metavar="SERIAL", help="leave a device out")
    plan.add_argument("--dry-run", action="store_true", help="compute and show, store nothing")
    _rollout_flags(plan, "the plan")
    plan.set_defaults(func=cmd_plan)

    lst = actions.add_parser("list", help="rollouts, newest first")
    lst.add_argument("--status", choices=ROLLOUT_STATUSES)
    controller_flags(lst)
    lst.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="a stored plan with each device's state")
    show.add_argument("id", metavar="ID")
    _rollout_flags(show, "the rollout")
    show.set_defaults(func=cmd_show)

    for name, text in (
        ("start", "start a planned rollout"),
        ("pause", "finish updates under way, start no new one"),
        ("resume", "go on after a pause or a halt"),
        ("abort", "finish updates under way and end the rollout"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("id", metavar="ID")
        controller_flags(parser)
        parser.set_defaults(func=_act(name))

    status = actions.add_parser("status", help="progress: counts per status and wave")
    status.add_argument("id", metavar="ID")
    status.add_argument("--watch", action="store_true", help="update in place until it ends")
    status.add_argument(
        "--interval", type=_positive_seconds, default=2.0, help="seconds between refreshes"
    )
    controller_flags(status)
    status.set_defaults(func=cmd_status)
