"""``polyfleet demo``: the lab, a controller and one agent per site, all on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import ipaddress
import json
import logging
import math
import secrets
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from polyfleet.agent.config import load_config as load_agent_config
from polyfleet.agent.service import AgentService
from polyfleet.controller.app import serve as serve_controller
from polyfleet.controller.config import DEFAULT_LIVENESS_CHECK_S, ControllerConfig
from polyfleet.controller.domain.calendar import WARSAW
from polyfleet.controller.domain.plans import add_years
from polyfleet.controller.domain.rollout import ROLLOUT_TICK_S
from polyfleet.controller.services.entitlement import load_releases
from polyfleet.controller.services.webhook import verify as verify_signature
from polyfleet.shared.cli_errors import CommandFailed, unreadable_file
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import PolyfleetError
from polyfleet.shared.process import polyfleet_argv
from polyfleet.simulator.fleet import DeviceSpec, FleetSpec, SiteSpec, load_fleet
from polyfleet.simulator.lab import Lab

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("polyfleet-demo")
DEFAULT_LISTEN = "127.0.0.1:8080"
#: Shipped in the package (deploy/examples in the repository, installed as polyfleet/examples).
EXAMPLES = Path(__file__).resolve().parent / "examples"
DEMO_FLEET = EXAMPLES / "fleet-demo.toml"
DEMO_ASSETS = EXAMPLES / "assets-demo.csv"
#: The day the demo registry was written for: its dates move with the calendar from there.
DEMO_ASSETS_AS_OF = date(2026, 11, 25)
#: Short enough that the demo's faults turn into tickets within a few minutes.
DEMO_POLL_INTERVAL_S = 10
STATUS_EVERY_S = 15.0
#: Stand-in firmware packages: deterministic bytes of this size (a real VideoOS package is
#: a few hundred MB; the vendor's files are not ours to ship).
DEMO_PACKAGE_BYTES = 8 * 1024 * 1024
#: ``--rollout``: the window opens now and lasts this long; waves follow this far apart.
DEMO_ROLLOUT_WINDOW_MIN = 45
DEMO_ROLLOUT_WAVE_GAP_MIN = 3
#: Scripted faults an update does not run into: the site's network down for a while (the
#: agent waits for the unit to come back); another admin signing in (no health problem:
#: the update's verification never sees it). A slow unit answers its agent too late to be
#: ordered anything: like a unit with a scripted fault, it is left for another night, so
#: the demo's rollout runs all its waves to the end.
UNSEEN_FAULTS = frozenset({"lan_down", "admin_session"})
#: Where each demo site's admins sign in to its units from: the fleet file's scripted
#: ``admin_session`` (from 198.51.100.23) is outside them, so it is a security event.
DEMO_ADMIN_NETWORKS = ("10.0.0.0/8", "192.168.0.0/16")
#: ``--time-scale``: how much faster the demo may run. Beyond it a poll comes every second
#: or less, and the whole fleet's polls crowd the one process the demo runs in.
MAX_TIME_SCALE = 10.0
DESK_SIGNATURE_HEADER = "X-Polyfleet-Signature"
#: The HTTPS and SSH ports every demo lab device answers on, when free on this machine.
DEMO_LAB_PORTS = (8443, 8022)
#: The usual pair, then system-chosen pairs: another process may take one in between.
LAB_PORT_ATTEMPTS = 4


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run this long, then stop cleanly (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where everything the demo writes goes (default ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"controller address (default {DEFAULT_LISTEN}; another free port if taken)",
    )
    parser.add_argument("--fleet", type=Path, default=DEMO_FLEET, help="lab fleet file")
    parser.add_argument("--assets", type=Path, default=DEMO_ASSETS, help="asset registry CSV")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line per status instead of text"
    )
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="also run the planned firmware rollout now, in a window that opens at once "
        "(otherwise it is only planned, for tomorrow night)",
    )
    parser.add_argument(
        "--time-scale",
        type=_time_scale,
        default=1.0,
        metavar="FACTOR",
        help="run the demo FACTOR times faster (1 to 10, default 1): polls, ticket "
        "thresholds, status lines, the rollout's steps, device boots and installs, and, once "
        "the rollout is planned, the lab's scripted faults and calls; the same things "
        "happen, sooner (--duration stays in real seconds)",
    )
    parser.set_defaults(func=run)


def demo_site_contact(site: SiteSpec) -> dict[str, Any]:
    """The demo site's authorised reporter and RMA delivery address (made up, example domain)."""
    return {
        "contact": {
            "name": f"Administrator {site.name}",
            "phone": "+48 12 345 67 89",
            "email": f"it-{site.id}@example.pl",
        },
        "delivery_address": {
            "street": "ul. Przykładowa 1",
            "postal_code": "00-001",
            "city": site.name,
            "country": "Polska",
        },
    }


def counted(n: int, noun: str) -> str:
    """``1 ticket``, ``2 tickets``: the demo speaks English (the dashboard is translated)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _time_scale(text: str) -> float:
    try:
        factor = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1.0 <= factor <= MAX_TIME_SCALE:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and {MAX_TIME_SCALE:g}")
    return factor


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(Demo(args).main())
    except CommandFailed:
        raise
    except PolyfleetError as exc:
        raise CommandFailed(str(exc), code="demo_failed", label="polyfleet demo") from None


@dataclass
class ServiceDesk:
    """A stand-in for the service desk's webhook: checks signatures, keeps what it receives."""

    inbox: Path
    secret: str
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(self.secret, body, request.headers.get(DESK_SIGNATURE_HEADER, "")):
            self.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        self.received.append(payload)
        name = f"{len(self.received):04d}.json"
        await asyncio.to_thread(
            (self.inbox / name).write_text, json.dumps(payload, indent=2), "utf-8"
        )
        return web.json_response({"ok": True})


class Demo:
    """Starts everything, shows what happens, stops everything cleanly."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir: Path = args.data_dir.resolve()
        self.stop = asyncio.Event()
        self.controller_url = ""
        self.admin_token = ""
        self.admin_token_id = ""
        self.signin_link = ""
        self.signin_expires = ""
        self.rollout_id: str | None = None
        self.lab_control_url = ""
        self.lab_ports = DEMO_LAB_PORTS
        self.lab_ranges: list[str] = []
        self.out = sys.stdout
        self.scale: float = args.time_scale

    def seconds(self, seconds: float) -> float:
        """``seconds`` of the demo's timeline, in real seconds under ``--time-scale``."""
        return seconds / self.scale

    def say(self, text: str) -> None:
        if not self.args.json:
            print(text, file=self.out, flush=True)

    async def main(self) -> int:
        started = time.monotonic()
        # Both inputs are read before anything starts: a wrong path stops here, named.
        fleet = quicker_devices(load_fleet(self.args.fleet), self.scale)
        try:
            assets_text = await asyncio.to_thread(self.args.assets.read_text, "utf-8")
        except OSError as exc:
            raise unreadable_file(self.args.assets, exc, what="the asset registry") from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            lab = await self._start_lab(fleet)
            stack.push_async_callback(lab.stop)
            self.say(f"lab: {len(lab.devices)} simulated devices, control API {lab.control_url}")
            self.say(
                f"  each on its own 127.0.x.y address, HTTPS on port {self.lab_ports[0]}, "
                f"SSH on port {self.lab_ports[1]}"
            )
            self.lab_control_url = lab.control_url

            desk, desk_url = await self._start_desk(stack)
            controller_task = await self._start_controller(desk_url, desk.secret)
            stack.push_async_callback(self._stop_controller, controller_task)
            self.signin_link = await self._signin_link()
            await self._write_demo_json()
            self.say(f"controller: {self.controller_url}")
            self.say(f"dashboard: {self.controller_url}/")
            self.say(f"  sign in once with: {self.signin_link}")
            self.say(
                f"  (it works once, until {self.signin_expires}; after that sign in with the "
                "admin token below)"
            )
            self.say(f"admin token: {self.admin_token}")
            self.say(f"  (also in {self.data_dir / 'demo.json'})")

            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.admin_token}"}
            ) as http:
                try:
                    await self._setup_sites(http, fleet)
                    await self._import_assets(http, assets_text)
                    agents = await self._start_agents(http, fleet, lab)
                    for agent in agents:
                        stack.push_async_callback(agent.stop)
                    self.say(f"agents: one per site ({', '.join(s.id for s in fleet.sites)})")
                    self.say("service desk (webhook) inbox: " + str(desk.inbox))
                    await self._register_packages(http)
                    await self._wait_reported(http, lab, started)
                    await self._show_operations(http, fleet)
                    self.rollout_id = await self._plan_rollout(http, fleet)
                    await self._write_demo_json()
                    if self.scale != 1:
                        # Start-up takes what it takes on this machine: until the plan is
                        # made, faults come when they would without --time-scale.
                        lab.set_timeline_rate(self.scale)
                        self.say(f"lab timeline: {self.scale:g} times faster from now")
                    await self._watch(http, desk, started)
                except (aiohttp.ClientError, PolyfleetError):
                    if not self.stop.is_set():
                        raise
                    # Ctrl-C during start-up: the controller is already going away.
        self.say("demo stopped cleanly")
        return 0

    async def _start_desk(self, stack: contextlib.AsyncExitStack) -> tuple[ServiceDesk, str]:
        inbox = self.data_dir / "desk"
        inbox.mkdir(exist_ok=True)
        desk = ServiceDesk(inbox=inbox, secret=secrets.token_urlsafe(24))
        app = web.Application()
        app.router.add_post("/tickets", desk.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stack.push_async_callback(runner.cleanup)
        host, port = runner.addresses[0][:2]
        return desk, f"http://{host}:{port}/tickets"

    async def _start_controller(self, desk_url: str, desk_secret: str) -> asyncio.Task[None]:
        data_dir = self.data_dir / "controller"
        data_dir.mkdir(exist_ok=True)
        secret_file = data_dir / "desk-webhook.secret"
        write_atomically(secret_file, desk_secret)
        host, _, port = self.args.listen.rpartition(":")
        if not _port_free(host, int(port)):
            self.say(f"{self.args.listen} is taken: the controller takes another free port")
            port = "0"
        config = ControllerConfig(
            listen_host=host,
            listen_port=int(port),
            data_dir=data_dir,
            # Whole seconds; never shorter than the agents' interval, or devices look silent.
            poll_interval_s=math.ceil(self.seconds(DEMO_POLL_INTERVAL_S)),
            liveness_check_s=self.seconds(DEFAULT_LIVENESS_CHECK_S),
            sections={
                "tickets": {
                    "min_duration_s": self.seconds(20),
                    "unreachable_min_duration_s": self.seconds(45),
                    "clear_after_s": self.seconds(30),
                    "check_interval_s": self.seconds(2),
                    "diagnostics_timeout_s": 30,
                },
                "rollouts": {"tick_s": self.seconds(ROLLOUT_TICK_S)},
                "webhook": {
                    "url": desk_url,
                    "secret_file": str(secret_file),
                    "signature_header": DESK_SIGNATURE_HEADER,
                },
            },
        )
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_ready(url: str) -> None:
            if not ready.done():
                ready.set_result(url)

        task = asyncio.create_task(serve_controller(config, on_ready=on_ready, stop=self.stop))
        waiters: set[asyncio.Future[Any]] = {task, ready}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises why the controller could not start
            raise PolyfleetError("the controller stopped before it was ready")
        self.controller_url = ready.result()
        self.admin_token = await self._create_admin_token(data_dir)
        return task

    async def _create_admin_token(self, data_dir: Path) -> str:
        # The same command an admin runs; it goes through the running server.
        process = await asyncio.create_subprocess_exec(
            *polyfleet_argv(
                "controller",
                "token",
                "create",
                "--role",
                "admin",
                "--name",
                "demo",
                "--data-dir",
                str(data_dir),
                "--json",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise PolyfleetError(f"could not create the admin token: {err.decode().strip()}")
        created = json.loads(out)
        token, token_id = created["token"], created["id"]
        assert isinstance(token, str) and isinstance(token_id, str)
        self.admin_token_id = token_id
        return token

    async def _signin_link(self) -> str:
        """A one-time dashboard sign-in link for the demo's admin token (the token itself
        never goes into an address that a browser history or a proxy log would keep)."""
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.admin_token}"}) as http,
            http.post(
                f"{self.controller_url}/api/v1/signin-links",
                json={"token_id": self.admin_token_id},
            ) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status != 201:
                raise PolyfleetError(f"could not make a sign-in link: {answer}")
        expires = datetime.fromisoformat(answer["expires_at"]).astimezone()
        self.signin_expires = expires.strftime("%H:%M:%S")
        return f"{self.controller_url}{answer['path']}"

    async def _stop_controller(self, task: asyncio.Task[None]) -> None:
        self.stop.set()
        await task

    async def _write_demo_json(self) -> None:
        path = self.data_dir / "demo.json"
        document = {
            "url": self.controller_url,
            "dashboard": f"{self.controller_url}/",
            "signin_link": self.signin_link,
            "admin_token": self.admin_token,
            "rollout_id": self.rollout_id,
            # What the examples need to reach the lab: its control API, the ports its
            # devices answer on (one HTTPS and one SSH port for all) and their ranges.
            "lab_control_url": self.lab_control_url,
            "lab_rest_port": self.lab_ports[0],
            "lab_ssh_port": self.lab_ports[1],
            "lab_ranges": self.lab_ranges,
        }
        await asyncio.to_thread(write_atomically, path, json.dumps(document))

    async def _start_lab(self, fleet: FleetSpec) -> Lab:
        """The lab, every device on one HTTPS and one SSH port (each on its own address).

        Shared ports let ``agent discover`` find the whole lab with one ``--rest-port`` and
        one ``--ssh-port``. The usual pair is taken when free; another demo running on this
        machine makes this one take a free pair the system picks.
        """
        addresses = [spec.address for _site, _room, spec in fleet.placed_devices()]
        addresses += [spec.address for _site, _room, spec in fleet.placed_other_hosts()]
        self.lab_ranges = sorted(
            {str(ipaddress.ip_network(f"{address}/24", strict=False)) for address in addresses}
        )
        for attempt in range(LAB_PORT_ATTEMPTS):
            ports = DEMO_LAB_PORTS if attempt == 0 else _free_ports(addresses[0], 2)
            lab = Lab(_on_ports(fleet, *ports), data_dir=self.data_dir / "lab")
            try:
                await lab.start()
            except OSError as exc:
                if attempt == LAB_PORT_ATTEMPTS - 1:
                    raise PolyfleetError(f"the lab cannot listen: {exc}") from None
                continue
            self.lab_ports = (ports[0], ports[1])
            return lab
        raise AssertionError("unreachable")

    async def _register_packages(self, http: aiohttp.ClientSession) -> None:
        """A stand-in package for each catalogued release, so rollouts run end to end."""
        releases = await asyncio.to_thread(load_releases)
        for release in releases.releases:
            body = stand_in_package(release.text)
            async with http.put(
                f"{self.controller_url}/api/v1/releases/{release.text}/package",
                data=body,
                headers={"Content-Type": "application/octet-stream"},
            ) as response:
                if response.status >= 400:
                    answer = await response.text()
                    raise PolyfleetError(f"package {release.text} refused: {answer[:300]}")
        self.say(
            f"firmware packages: a {DEMO_PACKAGE_BYTES // (1024 * 1024)} MiB stand-in for each "
            f"of the {len(releases.releases)} catalogued releases"
        )

    async def _wait_reported(self, http: aiohttp.ClientSession, lab: Lab, started: float) -> None:
        """Until every lab unit has reported once (a plan needs what they run), or a minute."""
        wanted = set(lab.devices)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stop.is_set():
            devices = (await _api(http, "GET", f"{self.controller_url}/api/v1/devices"))["devices"]
            if wanted <= {d["serial"] for d in devices}:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=1)

    async def _plan_rollout(self, http: aiohttp.ClientSession, fleet: FleetSpec) -> str | None:
        """Plan a rollout to the newest release and show who is left out and why."""
        releases = await asyncio.to_thread(load_releases)
        target = releases.releases[-1].text
        # The demo's admin keeps out the units whose certificate changes on every reboot:
        # after an update their agent must be re-pinned by hand, so they are done by hand.
        excluded = sorted(
            spec.serial
            for site in fleet.sites
            for room in site.rooms
            for spec in room.devices
            if spec.regenerate_cert_on_reboot
            # Faults scripted on a unit during the rollout (a camera unplugged...) would be
            # blamed on its update by the verification: its admin updates it another night.
            or any(window.name not in UNSEEN_FAULTS for window in spec.faults)
        )
        body: dict[str, Any] = {
            "target": target,
            "name": f"demo: every room to {target}",
            "exclude": excluded,
            "per_site": 3,
        }
        if self.args.rollout:
            now = datetime.now(WARSAW)
            end = now + timedelta(minutes=DEMO_ROLLOUT_WINDOW_MIN)
            body.update(
                window=f"{now - timedelta(minutes=1):%H:%M}-{end:%H:%M}",
                start=now.date().isoformat(),
                # A minute at least: shorter gaps are refused.
                wave_gap=f"{max(1, round(self.seconds(DEMO_ROLLOUT_WAVE_GAP_MIN)))}m",
            )
        plan = await _api(http, "POST", f"{self.controller_url}/api/v1/rollouts", body)
        counts = plan["summary"]["by_status"]
        self.say(
            f"rollout {plan['id']} planned to {target}: "
            + ", ".join(f"{n} {status}" for status, n in counts.items())
            + f"; window {plan['window']} site time from {plan['start']}"
        )
        for wave in plan["waves"]:
            self.say(f"  wave {wave['name']}: {counted(len(wave['devices']), 'device')}")
        for device in plan["devices"]:
            if device["status"] == "planned" and device["channel"] == "agent":
                continue
            # Each unit once, with every reason it has.
            reasons = "; ".join(f"{r['code']}: {r['text']}" for r in device["reasons"])
            self.say(f"  {device['serial']:<20} {device['status']:<8} {reasons}")
        rollout_id = str(plan["id"])
        if self.args.rollout:
            await _api(http, "POST", f"{self.controller_url}/api/v1/rollouts/{rollout_id}/start")
            self.say(
                f"rollout {rollout_id} started; watch it with: "
                f"polyfleet controller rollout status {rollout_id} --watch "
                f"--data-dir {self.data_dir / 'controller'}"
            )
        else:
            self.say(
                "  start it with (or run the demo with --rollout): "
                f"polyfleet controller rollout start {rollout_id} "
                f"--data-dir {self.data_dir / 'controller'}"
            )
        return rollout_id

    async def _setup_sites(self, http: aiohttp.ClientSession, fleet: FleetSpec) -> None:
        known = await _api(http, "GET", f"{self.controller_url}/api/v1/sites")
        existing = {site["id"] for site in known["sites"]}
        for site in fleet.sites:
            path = f"{self.controller_url}/api/v1/sites/{site.id}"
            if site.id in existing:
                # A run on an earlier demo's data: the fleet file still names the site.
                body = {"name": site.name, "timezone": site.timezone}
                await _api(http, "PATCH", path, body)
            else:
                body = {"id": site.id, "name": site.name, "timezone": site.timezone}
                await _api(http, "POST", f"{self.controller_url}/api/v1/sites", body)
            # Tickets are held without a reporter and a delivery address: the demo's go out.
            facts = {**demo_site_contact(site), "admin_networks": list(DEMO_ADMIN_NETWORKS)}
            await _api(http, "PATCH", path, facts)

    async def _show_operations(self, http: aiohttp.ClientSession, fleet: FleetSpec) -> None:
        """A maintenance window booked for a unit and a ticket opened by hand, as an admin
        would: both show on the dashboard and in ``maintenance list`` / ``tickets list``."""
        placed = fleet.placed_devices()
        if not placed:
            return
        _site, room, device = placed[-1]
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        window = {
            "serial": device.serial,
            "from": start.isoformat(),
            "until": (start + timedelta(hours=2)).isoformat(),
            "reason": f"{room.name} refurbished",
        }
        try:
            booked = await _api(http, "POST", f"{self.controller_url}/api/v1/maintenance", window)
            self.say(
                f"maintenance: {booked['id']} booked for {booked['target']} from "
                f"{booked['starts']} ({booked['reason']}): its faults will open no ticket"
            )
        except PolyfleetError as exc:
            # A rerun on this data within the hour finds its own earlier window.
            self.say(f"maintenance: not booked again ({exc})")
        first_site, _room, first = placed[0]
        opened = await _api(
            http,
            "POST",
            f"{self.controller_url}/api/v1/tickets",
            {
                "serial": first.serial,
                "category": "fault",
                "summary": "touch panel cracked",
                "description": "The touch controller's glass is cracked; it still responds.",
            },
        )
        self.say(
            f"ticket opened by hand: {opened['id']} for {first.serial} ({first_site.id}), "
            f"status {opened['status']}"
        )

    async def _import_assets(self, http: aiohttp.ClientSession, text: str) -> None:
        shift = (datetime.now(UTC).date() - DEMO_ASSETS_AS_OF).days
        candidates = [(shift_registry_dates(text, shift), shift)] if shift else []
        candidates.append((text, 0))
        for body, days in candidates:
            async with http.post(
                f"{self.controller_url}/api/v1/assets/import",
                data=body.encode(),
                headers={"Content-Type": "text/csv"},
            ) as response:
                answer = await response.json(content_type=None)
            if response.status < 400:
                moved = f", dates moved {days} days to keep them current" if days else ""
                self.say(f"asset registry: {self.args.assets.name} imported{moved}")
                return
            if days == 0:
                raise PolyfleetError(f"asset import refused: {answer}")

    async def _start_agents(
        self, http: aiohttp.ClientSession, fleet: FleetSpec, lab: Lab
    ) -> list[AgentService]:
        agents: list[AgentService] = []
        for site in fleet.sites:
            invite = await _api(
                http, "POST", f"{self.controller_url}/api/v1/invites", {"site": site.id}
            )
            folder = self.data_dir / "agents" / site.id
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / "enrollment-code", invite["code"])
            lines = [
                "# Written by `polyfleet demo`: this site's agent and the lab devices it polls.",
                "[agent]",
                f"data_dir = {_toml(str(folder / 'data'))}",
                f"name = {_toml(site.id + '-agent')}",
                f"poll_interval_s = {self.seconds(DEMO_POLL_INTERVAL_S):g}",
                f"jitter_s = {self.seconds(2):g}",
                "lockout_backoff_s = 120",
                # One agent per site in one process: each takes a free port for its status.
                'status_listen = "127.0.0.1:0"',
                "",
                "[controller]",
                f"url = {_toml(self.controller_url)}",
                f"enrollment_code_file = {_toml(str(folder / 'enrollment-code'))}",
                "send_interval_s = 1",
                f"jobs_interval_s = {self.seconds(2):g}",
                "",
            ]
            for room in site.rooms:
                for spec in room.devices:
                    device = lab.devices[spec.serial]
                    password_file = folder / f"{spec.serial}.password"
                    write_atomically(password_file, spec.admin_password)
                    lines += [
                        "[[devices]]",
                        f"host = {_toml(device.address)}",
                        f"name = {_toml(spec.system_name or spec.serial)}",
                        f"serial = {_toml(spec.serial)}",
                        f"rest_port = {device.rest_port}",
                        f"ssh_port = {device.ssh_port}",
                        f"password_file = {_toml(str(password_file))}",
                        f"tls_fingerprint = {_toml(device.tls_fingerprint)}",
                        f"ssh_fingerprint = {_toml(device.ssh_fingerprint)}",
                        "",
                    ]
            config_path = folder / "agent.toml"
            write_atomically(config_path, "\n".join(lines))
            agent = AgentService(load_agent_config(config_path))
            await agent.start()
            agents.append(agent)
        return agents

    async def _watch(self, http: aiohttp.ClientSession, desk: ServiceDesk, started: float) -> None:
        duration = self.args.duration
        deadline = None if duration is None else started + duration
        seen_tickets: set[str] = set()
        seen_events: set[str] = set()
        while not self.stop.is_set():
            timeout = self.seconds(STATUS_EVERY_S)
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=timeout)
            if self.stop.is_set():
                break  # Ctrl-C or SIGTERM: the controller is already going away
            await self._status(http, desk, seen_tickets, started)
            await self._security_events(http, seen_events)
            if deadline is not None and time.monotonic() >= deadline:
                break

    async def _status(
        self,
        http: aiohttp.ClientSession,
        desk: ServiceDesk,
        seen_tickets: set[str],
        started: float,
    ) -> None:
        try:
            devices = (await _api(http, "GET", f"{self.controller_url}/api/v1/devices"))["devices"]
            tickets = (await _api(http, "GET", f"{self.controller_url}/api/v1/tickets"))["tickets"]
        except (aiohttp.ClientError, PolyfleetError) as exc:
            self.say(f"status unavailable: {exc}")
            return
        rollout: dict[str, Any] | None = None
        if self.rollout_id is not None:
            with contextlib.suppress(aiohttp.ClientError, PolyfleetError):
                rollout = await _api(
                    http, "GET", f"{self.controller_url}/api/v1/rollouts/{self.rollout_id}/status"
                )
        health = Counter(str(d["health"]["state"]) for d in devices)
        status = {
            "elapsed_s": round(time.monotonic() - started),
            "devices": len(devices),
            "health": dict(sorted(health.items())),
            "tickets": len(tickets),
            "delivered_to_desk": len(desk.received),
        }
        if rollout is not None:
            status["rollout"] = {
                "id": rollout["id"],
                "status": rollout["status"],
                "devices": rollout["progress"]["by_status"],
            }
        if self.args.json:
            print(json.dumps(status), flush=True)
        else:
            parts = ", ".join(f"{n} {state}" for state, n in sorted(health.items()))
            self.say(
                f"[{status['elapsed_s']:>4}s] {len(devices)} devices ({parts or 'none yet'}); "
                f"{counted(len(tickets), 'ticket')}, {len(desk.received)} delivered to the desk"
            )
            if rollout is not None:
                counts = ", ".join(f"{n} {s}" for s, n in rollout["progress"]["by_status"].items())
                halt = f" ({rollout['halt']['reason']})" if rollout.get("halt") else ""
                self.say(f"       rollout {rollout['id']} {rollout['status']}{halt}: {counts}")
        for ticket in tickets:
            ticket_id = str(ticket.get("id"))
            if ticket_id not in seen_tickets:
                seen_tickets.add(ticket_id)
                subject = ticket.get("serial") or "the whole site"
                self.say(
                    f"  new ticket {ticket_id}: {ticket.get('fault')} on {subject} "
                    f"({ticket.get('site')}), status {ticket.get('status')}"
                )

    async def _security_events(self, http: aiohttp.ClientSession, seen: set[str]) -> None:
        """Tell each new unexpected admin session once (the audit log holds them)."""
        url = f"{self.controller_url}/api/v1/audit?action=admin_session.unexpected"
        try:
            entries = (await _api(http, "GET", url))["entries"]
        except (aiohttp.ClientError, PolyfleetError):
            return  # the status line just said the controller is unavailable
        for entry in entries:
            key = f"{entry.get('at')} {entry.get('target')}"
            if key in seen:
                continue
            seen.add(key)
            details = entry.get("details") or {}
            self.say(
                f"  security event: admin session on {details.get('serial')} "
                f"({entry.get('site')}) by {details.get('user')!r} over {details.get('kind')} "
                f"from {details.get('address')}, outside the site's admin networks"
            )


async def _api(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    async with http.request(method, url, json=body) as response:
        answer = await response.json(content_type=None)
        if response.status >= 400:
            raise PolyfleetError(f"{method} {url} answered {response.status}: {answer}")
        assert isinstance(answer, dict)
        return answer


def stand_in_package(version: str) -> bytes:
    """Deterministic bytes standing in for a release's package (the same on every run)."""
    seed = hashlib.sha256(f"polyfleet stand-in package {version}".encode()).digest()
    block = seed * (65536 // len(seed))
    return (block * (DEMO_PACKAGE_BYTES // len(block) + 1))[:DEMO_PACKAGE_BYTES]


def _toml(text: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(text, ensure_ascii=False)


def _free_ports(host: str, count: int) -> tuple[int, ...]:
    """``count`` different ports free on ``host`` now, chosen by the system."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            probe = held.enter_context(socket.socket())
            probe.bind((host, 0))
            ports.append(int(probe.getsockname()[1]))
    return tuple(ports)


def quicker_devices(fleet: FleetSpec, scale: float) -> FleetSpec:
    """``fleet`` with every device's boots and installs ``scale`` times shorter."""
    if scale == 1:
        return fleet

    def faster(device: DeviceSpec) -> DeviceSpec:
        return replace(
            device,
            boot_seconds=device.boot_seconds / scale,
            update=replace(device.update, install_seconds=device.update.install_seconds / scale),
        )

    sites = [
        replace(
            site,
            rooms=[replace(room, devices=[faster(d) for d in room.devices]) for room in site.rooms],
        )
        for site in fleet.sites
    ]
    return replace(fleet, sites=sites)


def _on_ports(fleet: FleetSpec, rest_port: int, ssh_port: int) -> FleetSpec:
    """``fleet`` with every port it leaves to the system (0 or unset) set to the given ones."""

    def rest(port: int | None) -> int:
        return port or rest_port

    def ssh(port: int | None) -> int:
        return port or ssh_port

    sites = []
    for site in fleet.sites:
        rooms = []
        for room in site.rooms:
            devices = [
                replace(d, rest_port=rest(d.rest_port), ssh_port=ssh(d.ssh_port))
                for d in room.devices
            ]
            others = [
                replace(
                    o,
                    rest_port=rest(o.rest_port),
                    ssh_port=None if o.ssh_port is None else ssh(o.ssh_port),
                )
                for o in room.other_hosts
            ]
            rooms.append(replace(room, devices=devices, other_hosts=others))
        sites.append(replace(site, rooms=rooms))
    return replace(fleet, sites=sites)


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def shift_registry_dates(text: str, days: int) -> str:
    """The registry CSV moved ``days`` later, so "expiring soon" stays true on any day.

    Terms keep their whole-year lengths (E2) and renewals stay back to back
    (E5), so a leap day on the way does not turn a valid file into a bad one.
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return text
    shift = timedelta(days=days)
    previous: dict[str, tuple[date, date]] = {}  # serial -> (old end, new end)
    for row in rows:
        if row.get("purchase_date"):
            row["purchase_date"] = (date.fromisoformat(row["purchase_date"]) + shift).isoformat()
        if not (row.get("contract_start") and row.get("contract_end")):
            continue
        start = date.fromisoformat(row["contract_start"])
        end = date.fromisoformat(row["contract_end"])
        chained = previous.get(row["serial"])
        if chained is not None and start == chained[0] + timedelta(days=1):
            new_start = chained[1] + timedelta(days=1)
        else:
            new_start = start + shift
        new_end = end + shift
        for years in range(1, 11):
            if add_years(start, years) - timedelta(days=1) == end:
                new_end = add_years(new_start, years) - timedelta(days=1)
            elif add_years(start, years) == end:
                new_end = add_years(new_start, years)
        previous[row["serial"]] = (end, new_end)
        row["contract_start"], row["contract_end"] = new_start.isoformat(), new_end.isoformat()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
