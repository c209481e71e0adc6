"""The agent (the real CLI as a process, and the poller) against lab hosts that are not Poly."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from agent_testkit import make_poller
from testkit.processes import polyfleet
from testkit.site_agents import agent_config

from polyfleet.agent.config import DeviceConfig, Secret
from polyfleet.simulator.fleet import DeviceSpec, FleetSpec, OtherHostSpec, RoomSpec, SiteSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.other_host import OtherHost
from polyfleet.simulator.testing import TEST_PASSWORD, fleet_of, make_device, next_address

REPO = Path(__file__).resolve().parents[2]
KINDS = ("web_server", "json_api", "poly_phone")
NOT_POLY = "not a Poly VideoOS device"
#: Seconds per request given to an SSH probe: a shell must be recognised, not waited out.
#: Far above any start-up and handshake time on a loaded machine, so that only a probe that
#: waits for the timeout comes near it.
SLOW_TIMEOUT_S = 120.0

LabFactory = Callable[[list[DeviceSpec]], Awaitable[Lab]]


@dataclass(frozen=True)
class Run:
    """One finished CLI process."""

    code: int
    out: str
    err: str
    seconds: float


async def timed(*argv: str) -> Run:
    """``polyfleet ARGV`` as its own process: what it printed, and how long it took."""
    started = time.monotonic()
    code, out, err = await polyfleet(*argv, expect=None)
    return Run(code, out, err, time.monotonic() - started)


def probe_argv(
    address: str,
    rest_port: int,
    ssh_port: int | None,
    password_file: Path,
    *,
    via: str,
    fingerprint: str | None,
    timeout: float = 5.0,
) -> list[str]:
    argv = ["agent", "probe", address, "--rest-port", str(rest_port)]
    if ssh_port is not None:
        argv += ["--ssh-port", str(ssh_port)]
    argv += ["--user", "admin", "--password-file", str(password_file), "--via", via]
    argv += ["--timeout", f"{timeout:g}"]
    argv += ["--fingerprint", fingerprint] if fingerprint else ["--insecure"]
    return argv


def other_host(kind: str) -> OtherHostSpec:
    """A host of ``kind`` on its own address, with a Linux SSH that takes the lab password."""
    return OtherHostSpec(
        name=f"other-{kind.replace('_', '-')}",
        address=next_address(),
        kind=kind,
        rest_port=0,
        ssh_port=0,
        admin_password=TEST_PASSWORD,
    )


@pytest.fixture
async def lab_with_others(tmp_path: Path) -> AsyncIterator[Lab]:
    """One VideoOS device and one host of every other kind, each with a Linux SSH."""
    fleet = fleet_of([make_device("OTHERDEV1")])
    room = fleet.sites[0].rooms[0]
    rooms = [
        RoomSpec(
            id=room.id,
            name=room.name,
            devices=list(room.devices),
            other_hosts=[other_host(kind) for kind in KINDS],
        )
    ]
    site = fleet.sites[0]
    lab = Lab(
        FleetSpec(sites=[SiteSpec(id=site.id, name=site.name, rooms=rooms)]), data_dir=tmp_path
    )
    await lab.start()
    yield lab
    await lab.stop()


def host_of(lab: Lab, kind: str) -> OtherHost:
    return lab.other_hosts[f"other-{kind.replace('_', '-')}"]


async def test_probe_says_not_poly_for_every_other_host(
    lab_with_others: Lab, password_file: Path
) -> None:
    """probe over REST (pinned, or first contact) and SSH exits 3: 'not a Poly VideoOS device'."""
    cases: list[tuple[str, list[str]]] = []
    for kind in KINDS:
        h = host_of(lab_with_others, kind)
        ports = (h.address, h.rest_port, h.ssh_port, password_file)
        # The 401 API on first contact (--insecure), the others pinned: one login either way.
        pin = None if kind == "json_api" else h.tls_fingerprint
        cases += [
            (f"{kind} rest", probe_argv(*ports, via="rest", fingerprint=pin)),
            (
                f"{kind} ssh",
                # A long timeout: the shell prompt must be told apart, not waited out.
                probe_argv(
                    *ports, via="ssh", fingerprint=h.ssh_fingerprint, timeout=SLOW_TIMEOUT_S
                ),
            ),
        ]
    runs = await asyncio.gather(*(timed(*argv) for _name, argv in cases))
    for (name, argv), run in zip(cases, runs, strict=True):
        address = argv[2]
        assert run.code == 3, (name, run)
        assert run.out == "", name
        assert run.err == f"polyfleet agent probe: {address}: {NOT_POLY}\n", (name, run.err)
        assert TEST_PASSWORD not in run.err
        if name.endswith(" ssh"):
            assert run.seconds < SLOW_TIMEOUT_S / 2, (name, run.seconds)


async def test_real_devices_keep_their_reasons_next_to_other_hosts(
    lab_factory: LabFactory, password_file: Path, tmp_path: Path
) -> None:
    """Bad credentials on 3.x (400), 4.x (403) and 200-refusing builds, REST and SSH, stay so."""
    specs: list[DeviceSpec] = [
        make_device("BADPW3X", firmware="3.12.0"),
        make_device("BADPW4X", firmware="4.6.2"),
        make_device("BADPW200", firmware="4.2.2", login_failure_status=200),
        make_device("LOCKED4X", firmware="4.6.2"),
    ]
    lab = await lab_factory(specs)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    os.chmod(wrong, 0o600)
    cases: list[tuple[str, list[str], str]] = []
    for spec in specs[:3]:
        d = lab.devices[spec.serial]
        cases.append(
            (
                f"{spec.serial} rest",
                probe_argv(d.address, d.rest_port, d.ssh_port, wrong, via="rest", fingerprint=None),
                "bad credentials",
            )
        )
    d = lab.devices["BADPW4X"]
    cases.append(
        (
            "ssh",
            probe_argv(
                d.address, d.rest_port, d.ssh_port, wrong, via="ssh", fingerprint=d.ssh_fingerprint
            ),
            "bad credentials",
        )
    )
    d = lab.devices["LOCKED4X"]
    await d.set_fault("locked_out", True)
    cases.append(
        (
            "locked",
            probe_argv(
                d.address, d.rest_port, d.ssh_port, password_file, via="rest", fingerprint=None
            ),
            "locked out",
        )
    )
    runs = await asyncio.gather(*(timed(*argv) for _name, argv, _reason in cases))
    for (name, argv, reason), run in zip(cases, runs, strict=True):
        assert run.code == 3, (name, run)
        assert run.err == f"polyfleet agent probe: {argv[2]}: {reason}\n", (name, run.err)


async def test_probe_over_ssh_waits_for_a_late_videoos_greeting(
    lab_factory: LabFactory, password_file: Path
) -> None:
    """A VideoOS unit that greets late over SSH is still read (silence is not a shell)."""
    lab = await lab_factory([make_device("LATEGREET", ssh_banner_delay_ms=800)])
    d = lab.devices["LATEGREET"]
    run = await timed(
        *probe_argv(
            d.address,
            d.rest_port,
            d.ssh_port,
            password_file,
            via="ssh",
            fingerprint=d.ssh_fingerprint,
        ),
        "--json",
    )
    assert run.code == 0, run.err
    snapshot = json.loads(run.out)
    assert (snapshot["serial"], snapshot["via"]) == ("LATEGREET", "ssh")


def discover_argv(lab: Lab) -> list[str]:
    device = lab.devices["OTHERDEV1"]
    hosts = [host_of(lab, kind) for kind in KINDS]
    argv = ["agent", "discover", f"{device.address}/32", *(f"{h.address}/32" for h in hosts)]
    for port in sorted({device.rest_port, *(h.rest_port for h in hosts)}):
        argv += ["--rest-port", str(port)]
    for port in sorted({device.ssh_port, *(h.ssh_port or 0 for h in hosts)}):
        argv += ["--ssh-port", str(port)]
    return [*argv, "--timeout", "2"]


async def test_discover_lists_only_videoos_as_poly(lab_with_others: Lab) -> None:
    """discover lists the VideoOS device as Poly and every other host apart, marked not Poly."""
    argv = discover_argv(lab_with_others)
    text, as_json = await asyncio.gather(timed(*argv), timed(*argv, "--json"))
    device = lab_with_others.devices["OTHERDEV1"]
    assert text.code == 0 and as_json.code == 0, (text.err, as_json.err)

    lines = text.out.splitlines()
    assert lines[-1] == "1 Poly devices, 3 other hosts answered (not Poly VideoOS)"
    by_address = {line.split()[0]: line for line in lines[:-1]}
    assert "NOT A POLY" not in by_address[device.address]
    assert by_address[device.address].startswith(f"{device.address}  Studio X50  PolyOS  ")
    for kind in KINDS:
        h = host_of(lab_with_others, kind)
        line = by_address[h.address]
        assert line.startswith(f"{h.address}  NOT A POLY VIDEOOS DEVICE  landing page HTTP "), line
        assert f"ssh:{h.ssh_port} SSH-2.0-OpenSSH_9.2p1" in line

    found = {f["address"]: f for f in json.loads(as_json.out)}
    assert [a for a, f in found.items() if f["poly"]] == [device.address]
    assert found[device.address]["videoos_api"] is True
    web = found[host_of(lab_with_others, "web_server").address]
    assert (web["title"], web["server"], web["videoos_api"]) == (
        "Web Management",
        "lighttpd/1.4.59",
        None,
    )
    api = found[host_of(lab_with_others, "json_api").address]
    assert api["evidence"][0] == "landing page HTTP 401 [nginx]: not a Poly page"
    phone = found[host_of(lab_with_others, "poly_phone").address]
    assert phone["videoos_api"] is False and phone["model_hint"] == "" and phone["os"] == ""
    assert "no VideoOS REST API (/rest/system: 404)" in phone["evidence"]
    for kind in KINDS:
        h = host_of(lab_with_others, kind)
        f = found[h.address]
        assert (f["poly"], f["tls_fingerprint"], f["ssh_port"]) == (
            False,
            h.tls_fingerprint,
            h.ssh_port,
        )


async def test_service_reports_a_misconfigured_other_host_without_lockout_backoff(
    lab_with_others: Lab, password_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """An API host configured as a device is api_error 'not Poly', polled again at once."""
    h = host_of(lab_with_others, "json_api")
    device = DeviceConfig(
        host=h.address,
        rest_port=h.rest_port,
        ssh_port=h.ssh_port,
        user="admin",
        password=Secret(file=password_file, origin="test"),
        serial="NOTPOLY1",
    )
    poller = make_poller(agent_config(tmp_path, [device], lockout_backoff_s=600.0), http)
    key = next(iter(poller.states))
    for contacts in (1, 2):
        [snap] = await poller.poll_device(key)
        assert snap.serial == "NOTPOLY1"
        assert [(p.code.value, p.detail.startswith(NOT_POLY)) for p in snap.health.problems] == [
            ("api_error", True)
        ], snap.health.problems
        # Bad credentials would back off for 600 s; a host that is not Poly is no lockout risk.
        assert poller.states[key].device_contacts == contacts
