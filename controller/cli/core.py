"""``polyfleet controller serve|site|token|agent|devices|audit``: the server and admin commands.

Admin commands speak the admin API, to the running server or to one they serve themselves
on the store they hold (``controller.cli.reach``), so they are safe while the server runs
and meet the same checks and audit records as the API and the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from polyfleet.controller.app import read_runtime, serve
from polyfleet.controller.cli.reach import (
    CommandError,
    ControllerClient,
    config_of,
    controller_flags,
    run,
)
from polyfleet.controller.clock import system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.core import holds_store
from polyfleet.controller.domain.admin_input import shown
from polyfleet.controller.services.device_table import CSV_COLUMNS, csv_row
from polyfleet.controller.store.base import StoreError, StoreLocked
from polyfleet.shared.cli_errors import EXIT_USAGE, CommandFailed

#: How long ``serve`` waits for an admin command to release the data directory.
SERVER_WAIT_S = 15.0


class AdminApi:
    """The admin API calls these commands make; answers have the API's shapes."""

    def __init__(self, client: ControllerClient) -> None:
        self._client = client

    async def _call(self, method: str, path: str, body: Any = None, **query: str) -> Any:
        return await self._client.call(method, path, body, params=query)

    async def add_site(self, site_id: str, name: str, timezone: str) -> dict[str, Any]:
        body = {"id": site_id, "name": name, "timezone": timezone}
        result: dict[str, Any] = await self._call("POST", "/api/v1/sites", body)
        return result

    async def sites(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/api/v1/sites"))["sites"]
        return result

    async def site(self, site_id: str) -> dict[str, Any]:
        """One site as the list shows it; refused by name when there is none."""
        found = next((site for site in await self.sites() if site["id"] == site_id), None)
        if found is None:
            raise CommandError(
                f"no site {site_id!r}; add it with: polyfleet controller site add",
                code="not_found",
                field="site",
            )
        return found

    async def create_token(
        self, role: str, name: str, expires_at: datetime | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"role": role, "name": name}
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        result: dict[str, Any] = await self._call("POST", "/api/v1/tokens", body)
        return result

    async def signin_link(self, token_id: str) -> dict[str, Any]:
        body = {"token_id": token_id}
        result: dict[str, Any] = await self._call("POST", "/api/v1/signin-links", body)
        return result

    async def invite(self, site_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/api/v1/invites", {"site": site_id})
        return result

    async def devices(self, filters: Mapping[str, str | None]) -> list[dict[str, Any]]:
        query = {key: value for key, value in filters.items() if value}
        answer = await self._call("GET", "/api/v1/devices", **query)
        result: list[dict[str, Any]] = answer["devices"]
        return result

    async def move(self, serial: str, site_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"/api/v1/devices/{serial}/move", {"site": site_id}
        )
        return result

    async def audit(self, query: Mapping[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/api/v1/audit", **query)
        return result

    async def update_site(self, site_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "PATCH", f"/api/v1/sites/{site_id}", dict(changes)
        )
        return result

    async def tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/api/v1/tokens"))["tokens"]
        return result

    async def revoke_token(self, token_id: str) -> None:
        await self._call("DELETE", f"/api/v1/tokens/{token_id}")

    async def agents(self, site_id: str | None) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/api/v1/agents", site=site_id or "")
        result: list[dict[str, Any]] = answer["agents"]
        return result

    async def revoke_agent(self, agent_id: str) -> None:
        await self._call("DELETE", f"/api/v1/agents/{agent_id}")


#: Where the API's field names differ from the flags the commands take.
_FLAG_NAMES = {"id": "site_id", "expires_at": "expires"}


def _config(args: argparse.Namespace) -> ControllerConfig:
    return config_of(args)


def _has_store(config: ControllerConfig) -> bool:
    # A PostgreSQL database is made by the first controller or command that opens it.
    return config.store_url is not None or holds_store(config.data_dir)


def _run(
    args: argparse.Namespace,
    action: Callable[[AdminApi], Awaitable[int]],
    *,
    needs_store: bool = False,
) -> int:
    """Run ``action`` against the controller (``reach``); failures in the shared shape.

    ``needs_store``: a command that reads, or changes something that must exist, refuses
    a data directory that holds no store instead of making an empty one.
    """
    return run(
        args,
        lambda client: action(AdminApi(client)),
        needs_store=needs_store,
        fields=_FLAG_NAMES,
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# -- handlers ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except CommandFailed as exc:
        exc.exit_status = EXIT_USAGE  # serve has always exited 2 on a wrong configuration
        raise

    def ready(url: str) -> None:
        print(f"polyfleet controller listening on {url}", flush=True)

    deadline = time.monotonic() + SERVER_WAIT_S
    while True:
        try:
            asyncio.run(serve(config, on_ready=ready))
            return 0
        except StoreLocked as exc:
            # An admin command holds the lock for a moment; a running server publishes itself.
            if read_runtime(config.data_dir) is not None or time.monotonic() > deadline:
                raise CommandError(
                    f"another controller is running: {exc}", code="store_locked"
                ) from None
            time.sleep(0.2)  # waits-for: an admin command to release the data directory
        except StoreError as exc:
            raise CommandError(str(exc), code="store_error") from None
        except OSError as exc:
            raise CommandError(
                f"cannot serve on {config.listen_host}:{config.listen_port}: {exc}",
                code="cannot_listen",
            ) from None


def cmd_site_add(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        site = await backend.add_site(args.site_id, args.name, args.timezone)
        if args.json:
            _print_json(site)
        else:
            print(f"site {site['id']} ({site['name']}, {site['timezone']})")
        return 0

    return _run(args, action)


def cmd_site_rename(args: argparse.Namespace) -> int:
    changes = {"name": args.name}
    if args.timezone:
        changes["timezone"] = args.timezone

    async def action(backend: AdminApi) -> int:
        site = await backend.update_site(args.site_id, changes)
        if args.json:
            _print_json(site)
        else:
            print(f"site {site['id']} ({shown(site['name'])}, {site['timezone']})")
        return 0

    return _run(args, action, needs_store=True)


#: ``site contact`` flags: the contact's and the delivery address's fields.
CONTACT_FLAGS = ("name", "phone", "email")
ADDRESS_FLAGS = ("street", "postal_code", "city", "country")


def site_contact_lines(site: Mapping[str, Any]) -> list[str]:
    """A site's reporter and delivery address, and what its tickets are held for, in lines."""
    contact = site.get("contact") or {}
    address = site.get("delivery_address") or {}
    reporter = ", ".join(contact[key] for key in CONTACT_FLAGS if contact.get(key)) or "-"
    town = " ".join(address[key] for key in ("postal_code", "city") if address.get(key))
    parts = [address.get("street"), town, address.get("country")]
    delivery = ", ".join(part for part in parts if part) or "-"
    lines = [
        f"site {site['id']} ({shown(site['name'])})",
        f"  reporter: {shown(reporter)}",
        f"  delivery address: {shown(delivery)}",
        f"  admin networks: {', '.join(site.get('admin_networks') or []) or '-'}",
    ]
    missing = site.get("ticket_fields_missing") or []
    if missing:
        lines.append(f"  tickets are held until it has: {', '.join(missing)}")
    return lines


def cmd_site_contact(args: argparse.Namespace) -> int:
    contact = {key: getattr(args, key) for key in CONTACT_FLAGS if getattr(args, key) is not None}
    address = {key: getattr(args, key) for key in ADDRESS_FLAGS if getattr(args, key) is not None}

    async def action(backend: AdminApi) -> int:
        if contact or address:
            changes: dict[str, Any] = {}
            if contact:
                changes["contact"] = contact
            if address:
                changes["delivery_address"] = address
            site = await backend.update_site(args.site_id, changes)
        else:
            site = await backend.site(args.site_id)
        if args.json:
            _print_json(site)
        else:
            print("\n".join(site_contact_lines(site)))
        return 0

    return _run(args, action, needs_store=True)


def cmd_site_networks(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        if args.networks or args.none:
            site = await backend.update_site(args.site_id, {"admin_networks": args.networks})
        else:
            site = await backend.site(args.site_id)
        if args.json:
            _print_json(site)
        else:
            networks = ", ".join(site.get("admin_networks") or []) or "none"
            print(f"site {site['id']}: admin networks {networks}")
        return 0

    if args.networks and args.none:
        raise CommandError(
            "give networks or --none, not both", code="usage", exit_status=EXIT_USAGE
        )
    return _run(args, action, needs_store=True)


def cmd_site_list(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        sites = await backend.sites()
        if args.json:
            _print_json({"sites": sites})
        else:
            print(f"{'SITE':<16} {'NAME':<24} {'DEVICES':>7}  AGENT")
            for site in sites:
                online = {True: "online", False: "agent offline", None: "no agent"}[
                    site["agent_online"]
                ]
                print(f"{site['id']:<16} {shown(site['name']):<24} {site['devices']:>7}  {online}")
        return 0

    return _run(args, action, needs_store=True)


def cmd_token_create(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        expires_at = None if args.expires is None else parse_expiry(args.expires, system_clock())
        created = await backend.create_token(args.role, args.name or "", expires_at)
        expires = created.get("expires_at")
        if args.json:
            _print_json(
                {
                    "token": created["token"],
                    "id": created["id"],
                    "role": created["role"],
                    "expires_at": expires,
                }
            )
        else:
            print(created["token"])
            until = f", expires {expires}" if expires else ""
            print(
                f"{args.role} token {created['id']}{until}: shown once, store it now",
                file=sys.stderr,
            )
        return 0

    return _run(args, action)


def cmd_token_link(args: argparse.Namespace) -> int:
    config = _config(args)

    async def action(backend: AdminApi) -> int:
        link = await backend.signin_link(args.token_id)
        url = dashboard_url(config) + link["path"]
        if args.json:
            _print_json({**link, "url": url})
        else:
            print(url)
            print(
                f"one-time dashboard sign-in for token {link['token_id']}: works once, until "
                f"{link['expires_at']}; whoever opens it first is signed in",
                file=sys.stderr,
            )
        return 0

    return _run(args, action, needs_store=True)


def dashboard_url(config: ControllerConfig) -> str:
    """Where people reach the dashboard: the advertised URL, else the running server's, else
    the configured listener's."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    runtime = read_runtime(config.data_dir) if config.store_url is None else None
    if runtime is not None and runtime.get("url"):
        return str(runtime["url"]).rstrip("/")
    scheme = "https" if config.tls else "http"
    return f"{scheme}://{config.listen_host}:{config.listen_port}"


def parse_expiry(text: str, now: datetime) -> datetime:
    """``--expires``: ``90d`` or ``12h`` from now, a date (the token works through that day,
    UTC), or a moment in ISO 8601 with its offset."""
    value = text.strip()
    unit = {"d": "days", "h": "hours"}.get(value[-1:].lower())
    if unit is not None and value[:-1].isdigit():
        return now + timedelta(**{unit: int(value[:-1])})
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise CommandError(
            f"--expires {text!r}: give 90d, 12h, a date (2027-03-31) or a moment with its "
            "offset (2027-03-31T18:00:00+02:00)",
            code="bad_input",
            field="expires",
            exit_status=EXIT_USAGE,
        )
    return moment


def confirm(args: argparse.Namespace, question: str) -> None:
    """Ask ``question`` on the terminal unless ``--yes``; a refusal or no terminal fails."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(
            "this cannot be undone and there is no terminal to ask on: add --yes to confirm",
            code="confirmation_needed",
            field="yes",
            exit_status=EXIT_USAGE,
        )
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CommandError("nothing was revoked", code="not_confirmed")


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def cmd_token_list(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        tokens = await backend.tokens()
        if args.json:
            _print_json({"tokens": tokens})
            return 0
        print(f"{'ID':<13} {'ROLE':<7} {'CREATED':<20} {'LAST USED':<20} {'EXPIRES':<28} NAME")
        for token in tokens:
            expires = _when(token.get("expires_at"))
            if token.get("expired"):
                expires += " (expired)"
            print(
                f"{token['id']:<13} {token['role']:<7} {_when(token['created_at']):<20} "
                f"{_when(token.get('last_used_at')):<20} {expires:<28} {shown(token['name'])}"
            )
        return 0

    return _run(args, action, needs_store=True)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        token = next((t for t in await backend.tokens() if t["id"] == args.token_id), None)
        if token is not None:
            named = f" ({shown(token['name'])})" if token["name"] else ""
            confirm(
                args,
                f"Revoke {token['role']} token {token['id']}{named}? Whatever uses it is "
                "refused from now on.",
            )
        # An unknown id (or an agent's credential) is refused by the revoke itself, saying why.
        await backend.revoke_token(args.token_id)
        if args.json:
            _print_json({"revoked": args.token_id})
        else:
            print(f"token {args.token_id} revoked")
        return 0

    return _run(args, action, needs_store=True)


def cmd_agent_list(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        agents = await backend.agents(args.site)
        if args.json:
            _print_json({"agents": agents})
            return 0
        print(f"{'AGENT':<17} {'SITE':<12} {'ENROLLED':<20} {'LAST SEEN':<20} {'TOKEN':<13} NAME")
        for agent in agents:
            print(
                f"{agent['id']:<17} {agent['site_id']:<12} {_when(agent['enrolled_at']):<20} "
                f"{_when(agent['last_seen']):<20} {agent['token_id'] or '-':<13} "
                f"{shown(agent['name'])} {shown(agent['hostname'])}".rstrip()
            )
            clock = agent.get("clock") or {}
            if clock.get("state") == "ahead":
                # Its reports are stored with their receive time until its clock is right.
                print(
                    f"  CLOCK AHEAD by {clock['skew_s']:.0f} s (since {_when(clock['since'])}): "
                    "its report times are replaced by the time they were received"
                )
        return 0

    return _run(args, action, needs_store=True)


def cmd_agent_revoke(args: argparse.Namespace) -> int:
    if not args.agent_ids and not args.site:
        raise CommandError(
            "name the agents to revoke, or --site SITE for all of a site's agents",
            code="usage",
            exit_status=EXIT_USAGE,
        )

    async def action(backend: AdminApi) -> int:
        known = await backend.agents(args.site)
        by_id = {agent["id"]: agent for agent in known}
        chosen = [by_id[a] for a in args.agent_ids if a in by_id] if args.agent_ids else known
        missing = [a for a in args.agent_ids if a not in by_id]
        if missing:
            where = f" at site {args.site}" if args.site else ""
            raise CommandError(
                f"no agent {', '.join(missing)}{where} (polyfleet controller agent list)",
                code="not_found",
                field="agent_id",
            )
        if not chosen:
            raise CommandError(f"site {args.site} has no agent", code="not_found", field="site")
        names = ", ".join(f"{a['id']} ({a['site_id']})" for a in chosen)
        confirm(
            args,
            f"Revoke {len(chosen)} agent(s): {names}? Their reports and job polls are refused "
            "until a new agent enrolls.",
        )
        for agent in chosen:
            await backend.revoke_agent(agent["id"])
        revoked = [agent["id"] for agent in chosen]
        if args.json:
            _print_json({"revoked": revoked})
        else:
            for agent_id in revoked:
                print(f"agent {agent_id} revoked")
        return 0

    return _run(args, action, needs_store=True)


def cmd_agent_invite(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        invite = await backend.invite(args.site)
        if args.json:
            _print_json(invite)
        else:
            print(invite["code"])
            print(
                f"one-time enrollment code for site {args.site}, expires {invite['expires_at']}: "
                f"polyfleet agent enroll --controller URL --code {invite['code']}",
                file=sys.stderr,
            )
        return 0

    if not _has_store(_config(args)):
        raise _missing_in_empty(args, f"no site {args.site!r}", "site")
    return _run(args, action)


def _missing_in_empty(args: argparse.Namespace, what: str, field: str) -> CommandError:
    """``what`` is not found, and the data directory holds no store at all: say both."""
    data_dir = _config(args).data_dir
    return CommandError(
        f"{what}: {data_dir} holds no controller store (check --data-dir)",
        code="not_found",
        field=field,
    )


async def _device_list(backend: AdminApi, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The devices the filters select; a site that does not exist is refused, not empty."""
    filters = _filters(args)
    devices = await backend.devices(filters)
    site = filters.get("site")
    if site and not devices and site not in {s["id"] for s in await backend.sites()}:
        raise CommandError(f"no site {site!r}", code="not_found", field="site")
    return devices


def _filters(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        name: getattr(args, name, None)
        for name in ("site", "model", "provider", "health", "firmware", "monitoring")
    }


def cmd_devices(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        devices = await _device_list(backend, args)
        if args.json:
            _print_json({"devices": devices})
            return 0
        print(f"{'SERIAL':<18} {'MODEL':<11} {'PROVIDER':<11} {'FIRMWARE':<18} {'HEALTH':<12} SITE")
        for device in devices:
            firmware = shown(device["firmware"]["version"])
            if device["firmware"]["build"]:
                firmware += f"-{shown(device['firmware']['build'])}"
            print(
                f"{device['serial']:<18} {device['model']:<11} {device['provider']:<11} "
                f"{firmware:<18} {device['health']['state']:<12} {device['site']}"
                + (f" / {shown(device['room'])}" if device.get("room") else "")
            )
        return 0

    return _run(args, action, needs_store=True)


def devices_csv(devices: list[dict[str, Any]]) -> str:
    """The device list as CSV (``devices export --csv``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(device) for device in devices)
    return out.getvalue()


def cmd_devices_export(args: argparse.Namespace) -> int:
    if not args.csv:
        raise CommandError(
            "choose a format: devices export --csv", code="usage", exit_status=EXIT_USAGE
        )

    async def action(backend: AdminApi) -> int:
        sys.stdout.write(devices_csv(await _device_list(backend, args)))
        return 0

    return _run(args, action, needs_store=True)


def cmd_devices_move(args: argparse.Namespace) -> int:
    async def action(backend: AdminApi) -> int:
        device = await backend.move(args.serial, args.to_site)
        if args.json:
            _print_json(device)
        else:
            print(f"device {device['serial']} now belongs to site {device['site']}")
        return 0

    if not _has_store(_config(args)):
        raise _missing_in_empty(args, f"no device {args.serial!r}", "serial")
    return _run(args, action)


def _origin_text(origin: Mapping[str, Any]) -> str:
    if origin["via"] == "http":
        return str(origin.get("address") or "network")
    place = "control socket" if origin["via"] == "control_socket" else "local, no server"
    return f"{place} ({origin['user']})" if origin.get("user") else place


def cmd_audit(args: argparse.Namespace) -> int:
    query = {
        name: str(value)
        for name, value in (
            ("action", args.action),
            ("actor", args.actor),
            ("target", args.target),
            ("site", args.site),
            ("from", args.start),
            ("to", args.end),
            ("before", args.before),
            ("after", args.after),
            ("limit", args.limit),
        )
        if value is not None
    }

    async def action(backend: AdminApi) -> int:
        page = await backend.audit(query)
        if args.json:
            _print_json(page)
            return 0
        print(f"{'ID':>6}  {'AT':<25} {'ACTOR':<16} {'FROM':<24} {'ACTION':<16} TARGET")
        for entry in page["entries"]:
            details = json.dumps(entry["details"], ensure_ascii=False, sort_keys=True)
            print(
                f"{entry['id']:>6}  {entry['at']:<25} {shown(entry['actor']['name']):<16} "
                f"{shown(_origin_text(entry['origin'])):<24} {entry['action']:<16} "
                f"{shown(entry['target'])}" + (f"  {shown(details)}" if entry["details"] else "")
            )
        if page["more"] and page["entries"]:
            last = page["entries"][-1]["id"]
            step = f"--after {last}" if args.after is not None else f"--before {last}"
            print(f"more entries: add {step}", file=sys.stderr)
        return 0

    return _run(args, action, needs_store=True)


# -- argument parsing ----------------------------------------------------------------------


def _device_filters(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    default = argparse.SUPPRESS if nested else None
    parser.add_argument("--site", default=default, help="only this site")
    parser.add_argument("--health", default=default, help="ok, degraded, fault or unreachable")
    parser.add_argument(
        "--model", default=default, help="studio_x30, studio_x50, studio_x70, studio_e70, g7500"
    )
    parser.add_argument("--provider", default=default, help="teams, zoom, poly, device_mode")
    parser.add_argument("--firmware", default=default, help="firmware version, e.g. 4.1.0")
    parser.add_argument(
        "--monitoring",
        default=default,
        help="polled (units an agent reports) or not_monitored (registered Poly products "
        "the agents do not poll)",
    )


def register(commands: argparse._SubParsersAction[Any]) -> None:
    serve_parser = commands.add_parser("serve", help="run the controller")
    controller_flags(serve_parser, json_flag=False)
    serve_parser.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080)")
    serve_parser.set_defaults(func=cmd_serve)

    site = commands.add_parser("site", help="sites").add_subparsers(
        dest="site_command", metavar="ACTION", required=True
    )
    site_add = site.add_parser("add", help="add a site (an id in use is refused: use rename)")
    site_add.add_argument("site_id")
    site_add.add_argument("--name", required=True)
    site_add.add_argument("--timezone", required=True, help="IANA zone, e.g. Europe/Warsaw")
    controller_flags(site_add)
    site_add.set_defaults(func=cmd_site_add)
    site_rename = site.add_parser("rename", help="rename a site (or change its time zone)")
    site_rename.add_argument("site_id")
    site_rename.add_argument("--name", required=True, help="the new name")
    site_rename.add_argument("--timezone", help="a new IANA zone, e.g. Europe/Warsaw")
    controller_flags(site_rename)
    site_rename.set_defaults(func=cmd_site_rename)
    site_contact = site.add_parser(
        "contact",
        help="the site's authorised reporter and RMA delivery address (shown without flags)",
        description="Set the authorised reporter the service desk contacts about a ticket "
        "and the address replacement hardware is delivered to. Every ticket carries them; a ticket "
        "of a site without them is held until they are set. An empty value clears a field.",
    )
    site_contact.add_argument("site_id")
    site_contact.add_argument("--name", help="the reporter's name")
    site_contact.add_argument("--phone", help="the reporter's phone, e.g. +48 12 345 67 89")
    site_contact.add_argument("--email", help="the reporter's e-mail address")
    site_contact.add_argument("--street", help="delivery address: street and number")
    site_contact.add_argument("--postal-code", help="delivery address: postal code")
    site_contact.add_argument("--city", help="delivery address: city")
    site_contact.add_argument("--country", help="delivery address: country")
    controller_flags(site_contact)
    site_contact.set_defaults(func=cmd_site_contact)
    site_networks = site.add_parser(
        "admin-networks",
        help="networks admins sign in to the units from (shown without arguments)",
        description="A new admin session on a unit from an address outside these networks "
        "is a security event (audit log, metric, [security_webhook]).",
    )
    site_networks.add_argument("site_id")
    site_networks.add_argument("networks", nargs="*", metavar="CIDR", help="e.g. 10.20.0.0/16")
    site_networks.add_argument("--none", action="store_true", help="no admin network at all")
    controller_flags(site_networks)
    site_networks.set_defaults(func=cmd_site_networks)
    site_list = site.add_parser("list", help="list sites")
    controller_flags(site_list)
    site_list.set_defaults(func=cmd_site_list)

    token = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True
    )
    token_create = token.add_parser("create", help="create an API token (printed once)")
    token_create.add_argument("--role", required=True, choices=["admin", "viewer"])
    token_create.add_argument("--name", default="")
    token_create.add_argument(
        "--expires",
        metavar="WHEN",
        help="when the token stops working: 90d, 12h, a date (works through it, UTC) or "
        "an ISO 8601 moment with offset (default: never)",
    )
    controller_flags(token_create)
    token_create.set_defaults(func=cmd_token_create)
    token_list = token.add_parser("list", help="list API tokens (never their secrets)")
    controller_flags(token_list)
    token_list.set_defaults(func=cmd_token_list)
    token_revoke = token.add_parser(
        "revoke", help="revoke an API token (asks first; never the last admin token)"
    )
    token_link = token.add_parser(
        "link",
        help="a one-time dashboard sign-in link for a token (a wall screen, a colleague)",
    )
    token_link.add_argument("token_id", help="the admin or viewer token's id (token list)")
    controller_flags(token_link)
    token_link.set_defaults(func=cmd_token_link)
    token_revoke.add_argument("token_id", help="the token's id (token list)")
    token_revoke.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    controller_flags(token_revoke)
    token_revoke.set_defaults(func=cmd_token_revoke)

    agent = commands.add_parser("agent", help="site agents").add_subparsers(
        dest="agent_command", metavar="ACTION", required=True
    )
    invite = agent.add_parser("invite", help="one-time enrollment code for a site's agent")
    invite.add_argument("--site", required=True)
    controller_flags(invite)
    invite.set_defaults(func=cmd_agent_invite)
    agent_list = agent.add_parser("list", help="list enrolled agents")
    agent_list.add_argument("--site", help="only this site's agents")
    controller_flags(agent_list)
    agent_list.set_defaults(func=cmd_agent_list)
    agent_revoke = agent.add_parser(
        "revoke", help="revoke agents (by id, or every agent of --site); asks first"
    )
    agent_revoke.add_argument("agent_ids", nargs="*", metavar="AGENT_ID", help="agents to revoke")
    agent_revoke.add_argument("--site", help="the site's agents (all of them without ids)")
    agent_revoke.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    controller_flags(agent_revoke)
    agent_revoke.set_defaults(func=cmd_agent_revoke)

    devices = commands.add_parser("devices", help="list, export or move devices")
    controller_flags(devices)
    _device_filters(devices)
    devices.set_defaults(func=cmd_devices)
    device_actions = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    export = device_actions.add_parser("export", help="export the device list")
    export.add_argument("--csv", action="store_true", help="CSV on standard output")
    controller_flags(export, json_flag=False, nested=True)
    _device_filters(export, nested=True)
    export.set_defaults(func=cmd_devices_export)
    move = device_actions.add_parser("move", help="move a device (and its cameras) to a site")
    move.add_argument("serial")
    move.add_argument("--site", dest="to_site", required=True, help="the new site")
    controller_flags(move, nested=True)
    move.set_defaults(func=cmd_devices_move)

    audit = commands.add_parser(
        "audit",
        help="the audit log: admin actions with who, when, what and from where",
        description="Admin actions, newest first (oldest first with --after). Filters combine.",
    )
    audit.add_argument("--action", help="an action (token.revoke) or a kind of action (token)")
    audit.add_argument("--actor", help="a token name or id, or a local OS user")
    audit.add_argument("--target", help="e.g. device:X50-1, site:krk, token:ID")
    audit.add_argument("--site", help="only actions concerning this site")
    audit.add_argument("--from", dest="start", help="from this moment (ISO 8601 with offset)")
    audit.add_argument("--to", dest="end", help="before this moment (ISO 8601 with offset)")
    audit.add_argument("--before", type=int, help="entries older than this id (next page)")
    audit.add_argument("--after", type=int, help="entries newer than this id, oldest first")
    audit.add_argument("--limit", type=int, help="at most this many (default 100, max 1000)")
    controller_flags(audit)
    audit.set_defaults(func=cmd_audit)
