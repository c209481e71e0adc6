"""The lab's control API and fault timeline, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import paramiko
import pytest
from lab_client import FakeClock, LabFactory, RestClient, connect, exec_command
from testkit.waiting import wait_until

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.fleet import FAULTS, CallWindow, FaultWindow, MeetingSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import fleet_of, make_device, with_update


async def call(lab: Lab, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, lab.control_url + path, json=body) as response,
    ):
        return response.status, await response.json()


async def test_list_and_get_devices(lab_factory: LabFactory) -> None:
    """GET /devices lists every device with where it listens and what it pins."""
    lab = await lab_factory([make_device(serial="CTL00001"), make_device(serial="CTL00002")])
    status, body = await call(lab, "GET", "/devices")
    assert status == 200
    assert [d["serial"] for d in body["devices"]] == ["CTL00001", "CTL00002"]
    first = body["devices"][0]
    device = lab.devices["CTL00001"]
    assert (first["address"], first["rest_port"], first["ssh_port"]) == (
        device.address,
        device.rest_port,
        device.ssh_port,
    )
    assert first["tls_fingerprint"] == device.tls_fingerprint
    assert "admin_password" not in first
    status, one = await call(lab, "GET", "/devices/CTL00002")
    assert (status, one["serial"], one["power"]) == (200, "CTL00002", "on")


async def test_unknown_serial_and_fault_are_clear_4xx(lab_factory: LabFactory) -> None:
    """Unknown serials answer 404 and unknown faults 400, both as JSON naming the problem."""
    lab = await lab_factory([make_device(serial="CTL00003")])
    status, body = await call(lab, "GET", "/devices/NOPE")
    assert status == 404 and "NOPE" in body["error"]
    status, body = await call(
        lab, "POST", "/devices/CTL00003/faults", {"fault": "on_fire", "active": True}
    )
    assert status == 400 and "on_fire" in body["error"] and "camera_down" in body["known"]
    status, body = await call(lab, "POST", "/devices/CTL00003/faults", {"fault": "slow"})
    assert status == 400 and body["field"] == "active"
    status, body = await call(
        lab, "POST", "/devices/CTL00003/faults", {"fault": "slow", "active": True, "ms": 5}
    )
    assert status == 400 and body["field"] == "ms" and "latency_ms" in body["error"]
    status, body = await call(
        lab,
        "POST",
        "/devices/CTL00003/faults",
        {"fault": "slow", "active": True, "latency_ms": -1},
    )
    assert status == 400 and body["field"] == "latency_ms"
    assert lab.devices["CTL00003"].faults == {}
    status, body = await call(lab, "POST", "/devices/CTL00003/power", [1])
    assert status == 400


async def test_faults_calls_power_and_reboot(lab_factory: LabFactory) -> None:
    """The control API raises faults with parameters, starts calls, powers off and on, reboots."""
    lab = await lab_factory([make_device(serial="CTL00004")])
    device = lab.devices["CTL00004"]
    status, body = await call(
        lab, "POST", "/devices/CTL00004/faults", {"fault": "slow", "active": True, "latency_ms": 50}
    )
    assert status == 200 and body["faults"] == {"slow": {"latency_ms": 50.0}}
    status, body = await call(lab, "POST", "/devices/CTL00004/call", {"active": True})
    assert body["in_call"] is True and device.call is not None
    status, body = await call(lab, "POST", "/devices/CTL00004/power", {"on": False})
    assert body["power"] == "off" and not body["listening"]
    status, body = await call(lab, "POST", "/devices/CTL00004/reboot")
    assert status == 409
    status, body = await call(lab, "POST", "/devices/CTL00004/power", {"on": True})
    assert body["power"] == "booting"
    await device.wait_power("on")
    status, body = await call(lab, "POST", "/devices/CTL00004/reboot")
    assert status == 200 and body["power"] == "booting"


async def test_timeline_raises_and_clears_faults(lab_factory: LabFactory) -> None:
    """Fault and call windows apply at their times; a jump sets every window's state."""
    spec = make_device(
        serial="CTL00005",
        faults=[
            FaultWindow(name="camera_down", at=0, until=100),
            FaultWindow(name="lan_down", at=200, until=300),
            FaultWindow(name="slow", at=50, params={"latency_ms": 10}),
        ],
        calls=[CallWindow(at=100, until=220)],
    )
    lab = await lab_factory([spec])
    device = lab.devices["CTL00005"]
    assert set(device.faults) == {"camera_down"}
    status, body = await call(lab, "POST", "/timeline", {"seconds": 250})
    assert status == 200 and body["seconds"] >= 250
    assert set(device.faults) == {"lan_down", "slow"} and not device.listening
    assert device.call is None
    await call(lab, "POST", "/timeline", {"seconds": 120})
    assert set(device.faults) == {"slow"} and device.listening
    assert device.call is not None
    status, _ = await call(lab, "POST", "/timeline/reset")
    assert status == 200 and set(device.faults) == {"camera_down"}
    status, body = await call(lab, "POST", "/timeline", {"seconds": -1})
    assert status == 400 and body["field"] == "seconds"


async def test_timeline_advances_by_itself(lab_factory: LabFactory) -> None:
    """Windows start and end on time without anyone moving the timeline."""
    spec = make_device(
        faults=[
            FaultWindow(name="log_storage_full", at=0, until=0.1),
            FaultWindow(name="reboot_needed", at=0.05),
        ]
    )
    lab = await lab_factory([spec])
    device = lab.devices[spec.serial]
    assert "log_storage_full" in device.faults
    await wait_until(lambda: "reboot_needed" in device.faults)
    await wait_until(lambda: "log_storage_full" not in device.faults)
    assert lab.timeline_seconds() >= 0.1


async def test_a_faster_timeline_reaches_later_windows_sooner(lab_factory: LabFactory) -> None:
    """At rate 600, a window half a minute ahead opens and closes long before half a minute."""
    spec = make_device(faults=[FaultWindow(name="camera_down", at=30, until=60)])
    lab = await lab_factory([spec])
    device = lab.devices[spec.serial]
    assert "camera_down" not in device.faults
    lab.set_timeline_rate(600)
    await wait_until(lambda: "camera_down" in device.faults)
    await wait_until(lambda: "camera_down" not in device.faults)
    assert lab.timeline_seconds() >= 60


async def test_timeline_rate_changes_keep_the_timeline_continuous(
    lab_factory: LabFactory,
) -> None:
    """A new rate applies from now on: seconds already passed stay as they were, jumps too."""
    clock = FakeClock()
    lab = await lab_factory([make_device()], clock=clock)
    clock.advance(10)
    lab.set_timeline_rate(4)
    assert lab.timeline_seconds() == 10
    clock.advance(2)
    assert lab.timeline_seconds() == 18
    await lab.jump_timeline(100)
    clock.advance(1)
    assert lab.timeline_seconds() == 104
    lab.set_timeline_rate(1)
    clock.advance(1)
    assert lab.timeline_seconds() == 105
    with pytest.raises(ValueError, match="above 0"):
        lab.set_timeline_rate(0)


async def test_duplicate_serial_in_code_built_fleet_is_refused(tmp_path: Path) -> None:
    """A fleet built in code with one serial twice is refused before anything listens."""
    with pytest.raises(ValueError, match="DUP00001"):
        Lab(fleet_of([make_device("DUP00001"), make_device("DUP00001")]), data_dir=tmp_path)


async def test_index_lists_every_endpoint_and_fault(lab_factory: LabFactory) -> None:
    """GET / names every control endpoint and every fault the lab knows."""
    lab = await lab_factory([make_device()])
    status, body = await call(lab, "GET", "/")
    assert status == 200
    assert body["faults"] == list(FAULTS) and "lan_degraded" in body["faults"]
    routes = {" ".join(e.split()[:2]) for e in body["endpoints"]}
    assert routes == {
        "GET /devices",
        "GET /devices/{serial}",
        "GET /devices/{serial}/config",
        "GET /downloads",
        "POST /devices/{serial}/faults",
        "DELETE /devices/{serial}/faults",
        "POST /sites/{site}/faults",
        "POST /devices/{serial}/call",
        "POST /devices/{serial}/power",
        "POST /devices/{serial}/reboot",
        "POST /devices/{serial}/update",
        "POST /devices/{serial}/password",
        "POST /devices/{serial}/device_mode",
        "POST /devices/{serial}/identity",
        "GET /devices/{serial}/sessions",
        "POST /devices/{serial}/sessions",
        "DELETE /devices/{serial}/sessions/{session_id}",
        "GET /timeline",
        "POST /timeline",
        "POST /timeline/reset",
        "GET /other_hosts",
    }


async def test_get_timeline_counts_seconds(lab_factory: LabFactory) -> None:
    """GET /timeline tells the timeline's seconds; a jump moves it."""
    clock = FakeClock()
    lab = await lab_factory([make_device()], clock=clock)
    clock.advance(12.5)
    assert await call(lab, "GET", "/timeline") == (200, {"seconds": 12.5})
    await call(lab, "POST", "/timeline", {"seconds": 100})
    clock.advance(1)
    assert await call(lab, "GET", "/timeline") == (200, {"seconds": 101.0})


async def test_clear_all_faults(lab_factory: LabFactory) -> None:
    """DELETE /devices/{serial}/faults clears every fault, lan_down in drop mode included."""
    lab = await lab_factory([make_device(serial="CTL00006")])
    device = lab.devices["CTL00006"]
    for fault in ("camera_down", "locked_out"):
        await call(lab, "POST", "/devices/CTL00006/faults", {"fault": fault, "active": True})
    status, body = await call(
        lab,
        "POST",
        "/devices/CTL00006/faults",
        {"fault": "lan_down", "active": True, "mode": "drop"},
    )
    assert (status, body["listening"], body["silent_mode"]) == (200, False, "drop")
    assert device.locked_out()
    status, body = await call(lab, "DELETE", "/devices/CTL00006/faults")
    assert status == 200 and body["faults"] == {} and body["listening"] is True
    assert body["silent_mode"] == "refuse"
    assert not device.locked_out()


async def test_control_changes_are_seen_by_real_clients(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """A call, a fault and a power cut set over the control API show on the device's REST API."""
    lab = await lab_factory([make_device(serial="CTL00007")])
    client = rest_factory(lab.devices["CTL00007"])
    await client.login()
    await call(lab, "POST", "/devices/CTL00007/call", {"active": True, "remote": "sip:x@127.0.0.1"})
    [conference] = await client.json("GET", "/rest/conferences")
    assert conference["connections"][0]["address"] == "sip:x@127.0.0.1"
    await call(lab, "POST", "/devices/CTL00007/call", {"active": False})
    assert await client.json("GET", "/rest/conferences") == []
    await call(lab, "POST", "/devices/CTL00007/faults", {"fault": "reboot_needed", "active": True})
    assert (await client.json("GET", "/rest/system"))["rebootNeeded"] is True
    await call(lab, "POST", "/devices/CTL00007/power", {"on": False})
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.request("GET", "/")
    status, body = await call(lab, "POST", "/devices/CTL00007/call", {"active": "yes"})
    assert status == 400 and body["field"] == "active"


async def test_provider_delivered_update(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """POST /devices/{serial}/update installs a version as Teams would: silent, then back on it."""
    spec = with_update(make_device(serial="CTL00008", firmware="4.1.3", provider="teams"), "ok")
    lab = await lab_factory([spec])
    device = lab.devices["CTL00008"]
    status, body = await call(lab, "POST", "/devices/CTL00008/update", {"version": "4.2.0"})
    assert status == 200 and body["power"] == "installing"
    status, body = await call(lab, "POST", "/devices/CTL00008/update", {"version": "4.2.0"})
    assert status == 409
    await device.wait_power("on")
    client = rest_factory(device)
    await client.login()
    system = await client.json("GET", "/rest/system")
    assert (system["softwareVersion"], system["build"]) == ("4.2.0", "396113")
    status, body = await call(lab, "POST", "/devices/CTL00008/update", {"version": "four"})
    assert status == 400 and body["field"] == "version"


async def test_password_change_refuses_the_old_one(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """POST /devices/{serial}/password changes the password for REST and SSH; it is never shown."""
    lab = await lab_factory([make_device(serial="CTL00009", firmware="4.2.2")])
    device = lab.devices["CTL00009"]
    old = device.admin_password
    status, body = await call(lab, "POST", "/devices/CTL00009/password", {"password": "rotated-1"})
    assert status == 200 and "rotated-1" not in json.dumps(body)
    client = rest_factory(device)
    assert (await client.login(old)).status == 403
    assert (await client.login("rotated-1")).status == 200
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(connect, device, old)
    await asyncio.to_thread(lambda: connect(device, "rotated-1").close())
    status, body = await call(lab, "POST", "/devices/CTL00009/password", {"password": ""})
    assert status == 400 and body["field"] == "password"


async def test_site_outage_over_the_control_api(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """POST /sites/{site}/faults sets a fault on every device of the site, or on none."""
    lab = await lab_factory([make_device(model="g7500"), make_device(model="studio_x30")])
    g7500, x30 = lab.devices.values()
    status, body = await call(
        lab, "POST", "/sites/test-site/faults", {"fault": "e70_down", "active": True}
    )
    assert status == 400 and x30.serial in body["error"] and body["field"] == "name"
    assert g7500.faults == {} and x30.faults == {}
    status, body = await call(
        lab, "POST", "/sites/test-site/faults", {"fault": "lan_down", "active": True}
    )
    assert status == 200 and [d["listening"] for d in body["devices"]] == [False, False]
    for device in (g7500, x30):
        with pytest.raises(aiohttp.ClientConnectorError):
            await rest_factory(device).request("GET", "/")
    status, body = await call(
        lab, "POST", "/sites/test-site/faults", {"fault": "lan_down", "active": False}
    )
    assert status == 200 and all(d["listening"] for d in body["devices"])
    status, body = await call(
        lab, "POST", "/sites/nowhere/faults", {"fault": "lan_down", "active": True}
    )
    assert status == 404 and "nowhere" in body["error"]


async def test_overlapping_windows_of_one_fault_add_up(lab_factory: LabFactory) -> None:
    """Two windows of one fault keep it raised until the last one ends (a jump agrees)."""
    spec = make_device(
        # The later-starting windows come first: a last-one-wins timeline would fail here.
        faults=[
            FaultWindow(name="camera_down", at=50, until=150),
            FaultWindow(name="camera_down", at=0, until=100),
        ],
        calls=[CallWindow(at=40, until=90), CallWindow(at=10, until=60)],
    )
    lab = await lab_factory([spec])
    device = lab.devices[spec.serial]
    assert "camera_down" in device.faults and device.call is None
    for t, camera, in_call in ((70, True, True), (120, True, False), (160, False, False)):
        await call(lab, "POST", "/timeline", {"seconds": t})
        assert ("camera_down" in device.faults, device.call is not None) == (camera, in_call), t


async def test_running_timeline_keeps_an_overlapped_fault(lab_factory: LabFactory) -> None:
    """When one window ends by itself while another of the fault runs, the fault stays."""
    spec = make_device(
        faults=[
            FaultWindow(name="log_storage_full", at=0, until=0.1),
            FaultWindow(name="log_storage_full", at=0.05, until=30),
            FaultWindow(name="reboot_needed", at=0.2),
        ]
    )
    lab = await lab_factory([spec])
    device = lab.devices[spec.serial]
    # reboot_needed starts after the first window's end: once it is up, that edge has passed.
    await wait_until(lambda: "reboot_needed" in device.faults)
    assert "log_storage_full" in device.faults


async def test_identity_renewal_gives_a_new_certificate_and_host_key(
    lab_factory: LabFactory,
) -> None:
    """POST /devices/{serial}/identity: the next TLS and SSH connections show the new ones."""
    lab = await lab_factory([make_device(serial="CTLIDENT")])
    device = lab.devices["CTLIDENT"]
    old_tls, old_ssh = device.tls_fingerprint, device.ssh_fingerprint
    status, body = await call(lab, "POST", "/devices/CTLIDENT/identity", {"host_key": "yes"})
    assert (status, body["field"]) == (400, "host_key")
    status, body = await call(lab, "POST", "/devices/CTLIDENT/identity", {})
    assert status == 400 and "certificate and/or host_key" in body["error"]
    status, body = await call(lab, "POST", "/devices/CTLIDENT/identity", {"host_key": True})
    assert status == 200
    assert body["ssh_fingerprint"] != old_ssh and body["tls_fingerprint"] == old_tls
    assert "status end" in (await asyncio.to_thread(exec_command, device, "status"))[0]
    status, body = await call(lab, "POST", "/devices/CTLIDENT/identity", {"certificate": True})
    assert status == 200 and body["tls_fingerprint"] != old_tls
    async with aiohttp.ClientSession() as http:
        # The client pins the device's fingerprint as now shown: the new one is served.
        assert (await RestClient(device, http).login()).status == 200


async def test_room_calendars_from_the_fleet_and_the_control_api(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """Meetings come from the fleet file and the control API; the unit lists those in the
    asked span on /rest/calendar/meetings; a Poly Video room has no calendar (404)."""
    start = datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    spec = make_device(
        serial="CAL00001",
        provider="zoom",
        meetings=[MeetingSpec(start=start, end=start + timedelta(hours=1), subject="Review")],
    )
    lab = await lab_factory([spec, make_device(serial="CAL00002", provider="poly")])
    status, body = await call(
        lab,
        "POST",
        "/devices/CAL00001/meetings",
        {"start": "2027-03-28T05:00:00+02:00", "end": "2027-03-28T05:30:00+02:00"},
    )
    assert status == 201 and body["id"] == "m2" and body["calendar"] == "on"
    status, body = await call(lab, "POST", "/devices/CAL00001/meetings", {"start": "x"})
    assert status == 400
    rest = rest_factory(lab.devices["CAL00001"])
    assert (await rest.login()).status == 200
    span = "start=2027-03-28T00:00:00%2B00:00&end=2027-03-28T12:00:00%2B00:00"
    listed = await rest.json("GET", f"/rest/calendar/meetings?{span}")
    assert [(m["id"], m["startTime"]) for m in listed] == [
        ("m1", "2027-03-28T01:00:00+00:00"),
        ("m2", "2027-03-28T05:00:00+02:00"),
    ]
    status, body = await call(lab, "DELETE", "/devices/CAL00001/meetings/m1")
    assert status == 200 and [m["id"] for m in body["meetings"]] == ["m2"]
    later = "start=2027-03-28T03:30:00%2B00:00&end=2027-03-28T12:00:00%2B00:00"
    assert await rest.json("GET", f"/rest/calendar/meetings?{later}") == []
    poly = rest_factory(lab.devices["CAL00002"])
    assert (await poly.login()).status == 200
    response = await poly.request("GET", f"/rest/calendar/meetings?{span}")
    assert response.status == 404


async def test_admin_sessions_list_logins_and_scripted_admins(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """A unit lists its open admin sessions (its REST logins and admins the control API signs
    in), drops a login at logout, and a scripted one when closed; bad bodies name the field."""
    lab = await lab_factory([make_device(serial="CTL00011", firmware="4.6.2")])
    client = rest_factory(lab.devices["CTL00011"])
    assert (await client.login()).status == 200
    status, body = await call(
        lab,
        "POST",
        "/devices/CTL00011/sessions",
        {"address": "192.0.2.44", "user": "jan", "type": "ssh"},
    )
    assert status == 201
    foreign = body["session"]
    listed = await client.json("GET", "/rest/current/session/sessions")
    assert [(s["userId"], s["clientType"], s["location"]) for s in listed] == [
        ("admin", "WEB", "127.0.0.1"),
        ("jan", "SSH", "192.0.2.44"),
    ]
    assert all(isinstance(s["startTime"], int) and s["sessionId"] for s in listed)
    status, body = await call(lab, "GET", "/devices/CTL00011")
    assert body["sessions"] == 2 and len(body["admin_sessions"]) == 2
    assert (await client.request("DELETE", "/rest/session")).status == 200
    status, body = await call(lab, "GET", "/devices/CTL00011/sessions")
    assert [s["id"] for s in body["sessions"]] == [foreign["id"]]
    status, body = await call(lab, "DELETE", f"/devices/CTL00011/sessions/{foreign['id']}")
    assert (status, body) == (200, {"sessions": []})
    status, body = await call(lab, "DELETE", f"/devices/CTL00011/sessions/{foreign['id']}")
    assert status == 404 and body["field"] == "session_id"
    status, body = await call(lab, "POST", "/devices/CTL00011/sessions", {"user": "jan"})
    assert status == 400 and body["field"] == "address"
    status, body = await call(
        lab, "POST", "/devices/CTL00011/sessions", {"address": "192.0.2.1", "type": "telnet"}
    )
    assert status == 400 and body["field"] == "type"


async def test_the_admin_session_fault_signs_another_admin_in_and_out(
    lab_factory: LabFactory, rest_factory: Callable[[SimDevice], RestClient]
) -> None:
    """The admin_session fault (timeline or control API) signs an admin in from its address
    until cleared; a reboot signs them out; a bad parameter is named."""
    lab = await lab_factory([make_device(serial="CTL00012")])
    device = lab.devices["CTL00012"]
    client = rest_factory(device)
    assert (await client.login()).status == 200
    status, body = await call(
        lab,
        "POST",
        "/devices/CTL00012/faults",
        {"fault": "admin_session", "active": True, "address": "203.0.113.5", "type": "ssh"},
    )
    assert status == 200
    listed = await client.json("GET", "/rest/current/session/sessions")
    assert [(s["location"], s["clientType"]) for s in listed][-1] == ("203.0.113.5", "SSH")
    await call(lab, "POST", "/devices/CTL00012/faults", {"fault": "admin_session", "active": False})
    listed = await client.json("GET", "/rest/current/session/sessions")
    assert [s["location"] for s in listed] == ["127.0.0.1"]
    await device.set_fault("admin_session", True)
    assert [s.address for s in device.sessions.values() if s.held] == ["198.51.100.23"]
    await device.reboot()
    await device.wait_power("on")
    assert device.sessions == {} and "admin_session" not in device.faults
    status, body = await call(
        lab,
        "POST",
        "/devices/CTL00012/faults",
        {"fault": "admin_session", "active": True, "type": "telnet"},
    )
    assert status == 400 and body["field"] == "type"
