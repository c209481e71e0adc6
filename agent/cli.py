"""``polyfleet agent``: probe, discover, enroll, run, held, pins."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from pydantic import ValidationError

from polyfleet.agent.config import (
    DEFAULT_CREDENTIAL_FILE,
    AgentConfig,
    DeviceConfig,
    Secret,
    check_controller_url,
    load_config,
)
from polyfleet.agent.discovery import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, Found, discover
from polyfleet.agent.drivers import check_drivers, driver_class
from polyfleet.agent.drivers.base import DriverContext, Pins
from polyfleet.agent.held import read_held, summarise
from polyfleet.agent.pins import PinStore
from polyfleet.agent.service import HELD_DIR, enroll, run_service
from polyfleet.agent.transport.failures import http_failure_words
from polyfleet.agent.uplink import ControllerRefused, ControllerUnavailable
from polyfleet.shared.cli_errors import (
    EXIT_DEVICE,
    EXIT_FAILED,
    EXIT_USAGE,
    CommandFailed,
    unreachable_controller,
)
from polyfleet.shared.errors import ConfigError, DeviceError, PolyfleetError, ProtocolError
from polyfleet.shared.fingerprint import normalise_fingerprint
from polyfleet.shared.printable import write_control
from polyfleet.shared.schema import Snapshot

DEFAULT_CONFIG = os.environ.get("POLYFLEET_AGENT_CONFIG", "agent.toml")
#: Where the systemd unit (deploy/polyfleet-agent.service) reads its config.
SYSTEM_CONFIG = Path("/etc/polyfleet/agent.toml")
#: The unit's state directory: the credential goes here when no config names a place.
SYSTEM_DATA_DIR = Path("/var/lib/polyfleet-agent")
EXIT_CONFIG = EXIT_USAGE


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    probe = commands.add_parser(
        "probe",
        help="log in to one device, print its snapshot, log out",
        description="Log in to one device, print its normalised snapshot, log out. "
        "Cameras with their own serial (Studio E70) follow as their own entries. "
        "Exits 3 with a one-line reason when the device cannot be read.",
    )
    probe.add_argument("host")
    probe.add_argument("--rest-port", type=int, default=443)
    probe.add_argument("--ssh-port", type=int, default=22)
    probe.add_argument("--user", required=True)
    probe.add_argument("--password-file", required=True, type=Path)
    trust = probe.add_mutually_exclusive_group(required=True)
    trust.add_argument("--fingerprint", help="pin: SHA256:... of the certificate (or SSH host key)")
    trust.add_argument("--insecure", action="store_true", help="accept any certificate")
    probe.add_argument(
        "--via", choices=("rest", "ssh"), default="rest", help="read over REST (default) or SSH"
    )
    probe.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    probe.add_argument(
        "--json",
        action="store_true",
        help="print JSON Lines: one Snapshot object per line, the device first, then one per "
        "camera that is its own device entry (Studio E70, with host_serial); a device "
        "without such cameras prints exactly one Snapshot object",
    )
    probe.set_defaults(func=_probe)

    disc = commands.add_parser(
        "discover",
        help="find Poly devices in the given ranges",
        description="Find Poly devices in the given address ranges only (HTTPS and SSH), "
        "without logging in. Hosts that answer but are not Poly VideoOS devices (desk "
        "phones, printers, other APIs, Linux SSH) are listed after them, marked NOT A POLY "
        "VIDEOOS DEVICE with what was seen (--json: poly false, evidence); hosts whose HTTPS "
        "did not answer within --timeout are marked NO ANSWER IN TIME (--json: undecided).",
    )
    disc.add_argument("ranges", nargs="+", metavar="CIDR")
    disc.add_argument("--rest-port", type=int, action="append", help="HTTPS port (repeatable; 443)")
    disc.add_argument("--ssh-port", type=int, action="append", help="SSH port (repeatable; 22)")
    disc.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    disc.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    disc.add_argument("--json", action="store_true")
    disc.set_defaults(func=_discover)

    enr = commands.add_parser(
        "enroll",
        help="exchange a one-time code for this agent's credential",
        description="Exchange a one-time enrollment code for the agent's credential "
        "(stored with mode 0600 where the config's controller.credential_file says).",
    )
    enr.add_argument(
        "--controller",
        required=True,
        action="append",
        help="controller URL, e.g. https://ctl-a.example.com:8443; repeat it for controllers "
        "standing by on the same database (the agent moves to the active one)",
    )
    enr.add_argument("--code", required=True)
    enr.add_argument(
        "--config",
        default=None,
        help=f"agent config whose controller.credential_file says where to store it "
        f"(default: {DEFAULT_CONFIG}, else {SYSTEM_CONFIG}, if present)",
    )
    enr.add_argument(
        "--credential-file",
        type=Path,
        default=None,
        help=f"store the credential here (default: from the config, else "
        f"{SYSTEM_DATA_DIR / DEFAULT_CREDENTIAL_FILE})",
    )
    enr.add_argument("--json", action="store_true")
    _insecure_uplink_flag(enr)
    enr.set_defaults(func=_enroll)

    run = commands.add_parser("run", help="run the agent service", description="Run the agent.")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    _insecure_uplink_flag(run)
    run.set_defaults(func=_run)

    status = commands.add_parser(
        "status",
        help="ask the running agent how it is (outbox, disk, uplink, devices)",
        description="Ask the agent running with this config (its agent.status_listen, "
        "default 127.0.0.1:9180) for its status: problems first (a disk that refuses the "
        "outbox's writes, a controller that does not take reports), each with what the "
        "agent does about it. Exit status 0 when it answered, 1 when it did not.",
    )
    status.add_argument("--config", default=DEFAULT_CONFIG)
    status.add_argument("--json", action="store_true", help="print the status document")
    status.set_defaults(func=_status)

    held = commands.add_parser(
        "held",
        help="list reports the controller refused (e.g. device known at another site)",
        description="Reports the controller refused are kept in <data_dir>/held and offered "
        "again every controller.held_retry_s; this lists them per device with the "
        "controller's reason (and the fix it names).",
    )
    held.add_argument("--config", default=DEFAULT_CONFIG)
    held.add_argument("--json", action="store_true", help="print a JSON array, one item a device")
    held.set_defaults(func=_held)

    pins = commands.add_parser("pins", help="list or accept pinned certificates and host keys")
    pin_commands = pins.add_subparsers(dest="pins_command", metavar="ACTION", required=True)
    pin_list = pin_commands.add_parser("list", help="show pins and changes waiting for review")
    pin_list.add_argument("--config", default=DEFAULT_CONFIG)
    pin_list.add_argument("--json", action="store_true")
    pin_list.set_defaults(func=_pins_list)
    accept = pin_commands.add_parser(
        "accept", help="trust a device's changed certificate/host key (after checking it)"
    )
    accept.add_argument("device", metavar="SERIAL_OR_HOST")
    accept.add_argument("--config", default=DEFAULT_CONFIG)
    accept.set_defaults(func=_pins_accept)


def _insecure_uplink_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-insecure-uplink",
        action="store_true",
        help="accept a plain http:// controller that is not on this machine (the agent "
        "token and every report cross the network unencrypted); same as the config's "
        "controller.allow_insecure_uplink = true. Without it such a URL is refused; "
        "http:// to this machine (loopback) is accepted with a warning",
    )


def _fail(
    command: str, message: str, code: int, *, kind: str | None = None, field: str | None = None
) -> NoReturn:
    """Raise the shared error, printed as ``polyfleet agent COMMAND: message`` for people."""
    first_line = message.splitlines()[0] if message else "failed"
    default = {EXIT_CONFIG: "config", EXIT_DEVICE: "device_error"}.get(code, "failed")
    raise CommandFailed(
        first_line,
        code=kind or default,
        exit_status=code,
        field=field,
        label=f"polyfleet agent {command}",
    )


def _error_code(exc: Exception) -> str:
    """``DeviceUnreachable`` -> ``device_unreachable``: the error class as a code for scripts."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


# --- probe --------------------------------------------------------------------------------


async def probe_device(
    host: str,
    *,
    rest_port: int,
    ssh_port: int | None,
    user: str,
    password: str,
    fingerprint: str | None,
    via: str = "rest",
    timeout: float = 10.0,
) -> list[Snapshot]:
    """Read one device once (``polyfleet agent probe``); raises the shared device errors."""
    device = DeviceConfig(
        host=host,
        rest_port=rest_port,
        ssh_port=ssh_port,
        user=user,
        password=Secret(origin="--password-file"),
    )
    pins = Pins(
        tls=fingerprint if via == "rest" else None, ssh=fingerprint if via == "ssh" else None
    )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        context = DriverContext(session=session, pins=pins, request_timeout_s=timeout)
        driver = driver_class(device)(device, password, context)
        if via == "ssh":
            return await driver.poll_fallback(RuntimeError("read over SSH on request"))
        return await driver.poll()


def _probe(args: argparse.Namespace) -> int:
    try:
        password = Secret(file=args.password_file, origin="--password-file").read()
        fingerprint = None if args.insecure else normalise_fingerprint(args.fingerprint)
    except (ConfigError, ValueError) as exc:
        return _fail("probe", str(exc), EXIT_CONFIG)
    try:
        snapshots = asyncio.run(
            probe_device(
                args.host,
                rest_port=args.rest_port,
                ssh_port=args.ssh_port,
                user=args.user,
                password=password,
                fingerprint=fingerprint,
                via=args.via,
                timeout=args.timeout,
            )
        )
    except DeviceError as exc:
        return _fail("probe", f"{args.host}: {exc.reason}", EXIT_DEVICE, kind=_error_code(exc))
    snapshot = snapshots[0]
    if args.via == "ssh" and snapshot.health.problems:
        # The probe asked for SSH: the "REST not used" marker is not a device problem.
        rest = [p for p in snapshot.health.problems if not p.detail.startswith("REST: ")]
        snapshot = snapshot.model_copy(update={"health": type(snapshot.health).from_problems(rest)})
    if args.json:
        # One object per line keeps every line a complete Snapshot (the wire shape exactly),
        # so `jq` or a line-by-line reader gets the cameras too.
        for entry in [snapshot, *snapshots[1:]]:
            print(entry.model_dump_json())
        return 0
    _print_snapshot(snapshot)
    for camera in snapshots[1:]:
        print()
        _print_snapshot(camera)
    return 0


def _print_snapshot(s: Snapshot) -> None:
    print(f"{s.serial}  {s.model.value} ({s.model_raw})  {s.system_name}")
    print(f"  firmware  {s.firmware.version} build {s.firmware.build}")
    print(
        f"  provider  {s.provider.value}   in call: {'yes' if s.in_call else 'no'}"
        f"   via {s.via.value}"
    )
    if s.host_serial:
        print(f"  attached to {s.host_serial}")
    print(f"  health    {s.health.state.value}")
    for problem in s.health.problems:
        print(f"    - {problem.code.value}: {problem.detail}")
    for p in s.peripherals:
        print(f"  {p.kind:<17} {p.model_raw} {p.serial} {p.firmware} {p.state}")


# --- discover -----------------------------------------------------------------------------


def _discover(args: argparse.Namespace) -> int:
    show_progress = sys.stderr.isatty()

    def progress(done: int, total: int, found: int) -> None:
        if show_progress:
            end = "\n" if done == total else ""
            # Back to the line's start: the command's own redraw, not text to escape.
            write_control(sys.stderr, "\r")
            sys.stderr.write(f"scanned {done}/{total} addresses, {found} Poly devices found{end}")
            sys.stderr.flush()

    try:
        found = asyncio.run(
            discover(
                args.ranges,
                rest_ports=tuple(args.rest_port or (443,)),
                ssh_ports=tuple(args.ssh_port or (22,)),
                concurrency=args.concurrency,
                timeout=args.timeout,
                progress=progress,
            )
        )
    except ConfigError as exc:
        return _fail("discover", str(exc), EXIT_CONFIG)
    if args.json:
        print(json.dumps([f.as_json() for f in found], indent=2))
        return 0
    _print_found(found)
    return 0


def _print_found(found: list[Found]) -> None:
    poly = [f for f in found if f.poly]
    if found:
        print(
            "ADDRESS  MODEL  OS  HTTPS PORT AND CERTIFICATE  SSH PORT AND BANNER (OR WHY NOT POLY)"
        )
    for f in poly:
        print(
            f"{f.address}  {f.model_hint or '?'}  {f.os or ''}  https:{f.rest_port} "
            f"{f.tls_fingerprint}  ssh:{f.ssh_port or '-'} {f.ssh_banner}"
        )
    slow = [f for f in found if f.undecided and not f.poly]
    for f in slow:
        # Maybe a busy unit: neither a room to enroll nor ruled out.
        print(f"{f.address}  NO ANSWER IN TIME  {'; '.join(f.evidence)}")
    others = [f for f in found if not f.poly and not f.undecided]
    for f in others:
        # Listed apart and marked, so nobody mistakes them for rooms to enroll.
        print(f"{f.address}  NOT A POLY VIDEOOS DEVICE  {'; '.join(f.evidence) or 'answered'}")
    summary = f"{len(poly)} Poly devices"
    if slow:
        summary += f", {len(slow)} too slow to tell (scan them again with a longer --timeout)"
    if others:
        summary += f", {len(others)} other hosts answered (not Poly VideoOS)"
    print(summary)


# --- enroll, run, pins --------------------------------------------------------------------


def _config_or_none(path: str | None) -> AgentConfig | None:
    """The config given, else $POLYFLEET_AGENT_CONFIG (or ./agent.toml), else the system one."""
    if path is not None:
        return load_config(path)
    for candidate in (Path(DEFAULT_CONFIG), SYSTEM_CONFIG):
        if candidate.exists():
            return load_config(candidate)
    return None


def _enroll(args: argparse.Namespace) -> int:
    try:
        config = _config_or_none(args.config)
        if args.credential_file is not None:
            target = args.credential_file
        elif config is not None:
            target = config.credential_path
        else:
            target = SYSTEM_DATA_DIR / DEFAULT_CREDENTIAL_FILE
        allow_insecure = args.allow_insecure_uplink or bool(config and config.allow_insecure_uplink)
        warnings = [
            check_controller_url(url, allow_insecure=allow_insecure) for url in args.controller
        ]
        warning = next((text for text in warnings if text), "")
        credential = asyncio.run(
            enroll(
                args.controller,
                args.code,
                credential_path=target,
                agent_name=config.agent_name if config else "",
                ca_file=config.controller_ca_file if config else None,
                allow_insecure_uplink=allow_insecure,
            )
        )
    except (ConfigError, ProtocolError) as exc:
        return _fail("enroll", str(exc), EXIT_CONFIG)
    except ValidationError as exc:
        # The request is checked before it is sent: a code of the wrong form never leaves.
        problem = exc.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "code"
        return _fail("enroll", f"--{field}: {problem['msg']}", EXIT_CONFIG, kind="bad_input")
    except ControllerRefused as exc:
        return _fail("enroll", str(exc), EXIT_FAILED, kind=exc.code or "refused")
    except ControllerUnavailable as exc:
        raise unreachable_controller(
            ", ".join(args.controller), exc, label="polyfleet agent enroll"
        ) from None
    info: dict[str, Any] = {
        "agent_id": credential.agent_id,
        "site_id": credential.site_id,
        "credential_file": str(target),
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"enrolled as agent {credential.agent_id} of site {credential.site_id}; "
            f"credential stored in {target} (mode 0600)"
        )
    if warning:
        print(f"polyfleet agent enroll: warning: {warning}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if args.allow_insecure_uplink:
            config = dataclasses.replace(config, allow_insecure_uplink=True)
        check_drivers(config)
        config.check_uplink()
    except ConfigError as exc:
        return _fail("run", str(exc), EXIT_CONFIG)
    try:
        return run_service(config)
    except PolyfleetError as exc:
        return _fail("run", str(exc), EXIT_FAILED)


def _status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail("status", str(exc), EXIT_CONFIG)
    if not config.status_listen:
        return _fail(
            "status",
            f"{config.source}: agent.status_listen is off: the agent answers no status",
            EXIT_CONFIG,
            field="agent.status_listen",
        )
    host, _, port = config.status_listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/status"
    try:
        doc = asyncio.run(_get_status(url))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return _fail(
            "status",
            f"cannot reach the agent's status at {url} ({http_failure_words(exc)}): is the "
            f"agent running with {config.source}?",
            EXIT_FAILED,
            kind="unreachable",
        )
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _print_status(doc)
    return 0


async def _get_status(url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
        resp.raise_for_status()
        doc = await resp.json()
    if not isinstance(doc, dict):
        raise ValueError("not a status document")
    return doc


def _print_status(doc: dict[str, Any]) -> None:
    agent, outbox, uplink = doc["agent"], doc["outbox"], doc["uplink"]
    devices = doc["devices"]
    state = "healthy" if doc["healthy"] else f"{len(doc['problems'])} problem(s)"
    print(f"agent {agent['name'] or '(unnamed)'}: {state}; up since {agent['started_at']}")
    for problem in doc["problems"]:
        print(f"  PROBLEM {problem}")
    disk = "disk ok" if outbox["disk_ok"] else f"disk failing since {outbox['since']}"
    print(
        f"outbox   {outbox['entries']} waiting ({outbox['bytes']} of {outbox['max_bytes']} "
        f"bytes), {outbox['memory_entries']} only in memory; {disk}; "
        f"dropped {outbox['dropped_total']}, refused {outbox['refused_total']}"
    )
    sent = uplink["last_sent_at"] or "never"
    print(
        f"uplink   {uplink['controller_url'] or '(no controller)'}: "
        f"{'ok' if uplink['ok'] else 'not sending'}; last batch taken {sent}"
    )
    print(
        f"devices  {devices['configured']} configured, {devices['answering']} answering, "
        f"{len(devices['failing'])} failing"
    )
    for failing in devices["failing"]:
        print(f"  {failing['device']} {failing['serial'] or '?'}: {failing['reason']}")
    if doc["held"]["reports"]:
        print(f"held     {doc['held']['reports']} reports (see: polyfleet agent held)")


def _held(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        devices = summarise(read_held(config.data_dir / HELD_DIR))
    except ConfigError as exc:
        return _fail("held", str(exc), EXIT_CONFIG)
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    for d in devices:
        print(f"{d['serial']}  {d['count']} report(s) held since {d['held_since']}")
        print(f"    {d['code']}: {d['reason']}")
    print(f"{sum(d['count'] for d in devices)} held reports of {len(devices)} devices")
    return 0


def _pins_list(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        records = PinStore(config.data_dir).all()
    except ConfigError as exc:
        return _fail("pins list", str(exc), EXIT_CONFIG)
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=2))
        return 0
    print(f"{'DEVICE':<22}  {'SERIAL':<16}  TLS AND SSH PINS  (SOURCE)")
    for r in records:
        waiting = []
        if r.pending_tls:
            waiting.append(f"certificate changed to {r.pending_tls}")
        if r.pending_ssh:
            waiting.append(f"host key changed to {r.pending_ssh}")
        print(
            f"{r.key:<22}  {r.serial or '?':<16}  tls {r.tls or '-'}  ssh {r.ssh or '-'}  "
            f"({r.source})"
        )
        for line in waiting:
            print(f"    WAITING FOR REVIEW: {line}")
    return 0


def _pins_accept(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        accepted = PinStore(config.data_dir).accept(args.device)
    except ConfigError as exc:
        return _fail("pins accept", str(exc), EXIT_CONFIG)
    for r in accepted:
        print(f"{r.key} ({r.serial or '?'}): now trusting tls {r.tls or '-'}, ssh {r.ssh or '-'}")
    return 0
