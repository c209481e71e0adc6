"""The REST API of simulated devices, driven through aiohttp over pinned TLS."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from lab_client import FakeClock, LabFactory, Rest, one_device, pin
from testkit.waiting import wait_until

from polyfleet.simulator.device import FaultError
from polyfleet.simulator.fleet import PeripheralSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import make_device, start_lab


def status_map(entries: list[dict[str, object]]) -> dict[str, object]:
    return {str(e["name"]).removeprefix("system.status."): e["stateList"] for e in entries}


async def test_poll_cycle_answers_like_the_device_document(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Login, the poll cycle's GETs and logout answer with the documented shapes."""
    lab = await lab_factory([make_device(serial="X50POLL1", model="studio_x50", provider="teams")])
    device = lab.devices["X50POLL1"]
    client = rest_factory(device)
    login = await client.login()
    assert login.status == 200
    body = await login.json()
    assert body["success"] is True and body["session"]["sessionId"].startswith("PS")
    assert login.cookies["session_id"].value == body["session"]["sessionId"]
    system = await client.json("GET", "/rest/system")
    assert system["serialNumber"] == "X50POLL1"
    assert system["model"] == "StudioX50"
    assert (system["softwareVersion"], system["build"]) == ("4.2.2", "408037")
    assert system["lanStatus"]["state"] == "LAN_UP"
    assert system["rebootNeeded"] is False
    status = status_map(await client.json("GET", "/rest/system/status"))
    assert status["mr.camera"] == ["all_up"] and status["sipserver"] == ["up"]
    mode = await client.json("GET", "/rest/system/mode")
    assert mode["app"] == "com.microsoft.skype.teams.ipphone"
    apps = await client.json("GET", "/rest/system/apps")
    assert "com.microsoft.skype.teams.ipphone" in {a["packageName"] for a in apps}
    assert await client.json("GET", "/rest/system/mode/device") == {"result": False}
    devices = await client.json("POST", "/rest/current/devicemanagement/devices")
    assert devices[0]["serialNumber"] == "X50POLL1" and devices[0]["deviceCategory"] == "SYSTEM"
    assert await client.json("GET", "/rest/conferences") == []
    logout = await client.request("DELETE", "/rest/session")
    assert logout.status == 200
    after = await client.request("GET", "/rest/system")
    assert after.status == 403


async def test_certificate_pin_is_what_the_device_serves(lab_factory: LabFactory) -> None:
    """The advertised TLS fingerprint matches the served certificate; a wrong pin is refused."""
    lab = await lab_factory([make_device(), make_device()])
    first, second = lab.devices.values()
    assert first.tls_fingerprint != second.tls_fingerprint
    async with aiohttp.ClientSession() as http:
        url = f"https://{first.address}:{first.rest_port}/"
        async with http.get(url, ssl=pin(first.tls_fingerprint)) as ok:
            assert ok.status == 200
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await http.get(url, ssl=pin(second.tls_fingerprint))


async def test_landing_page_names_the_device(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """``/`` is a plain HTML page naming the Poly model, no login needed."""
    lab = await lab_factory([make_device(model="studio_x70")])
    client = rest_factory(next(iter(lab.devices.values())))
    response = await client.request("GET", "/")
    assert response.status == 200 and response.content_type == "text/html"
    assert "Poly Studio X70" in await response.text()


async def test_no_session_gets_403_with_html(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A call without a session is refused with 403 and an HTML body."""
    lab = await lab_factory([make_device()])
    client = rest_factory(next(iter(lab.devices.values())))
    response = await client.request("GET", "/rest/system")
    assert response.status == 403
    assert response.content_type == "text/html" and "403" in await response.text()


@pytest.mark.parametrize(
    ("firmware", "status"),
    [("3.12.0-366027", 400), ("3.14.1", 400), ("4.0.2", 403), ("4.6.2", 403)],
)
async def test_bad_login_depends_on_firmware(
    lab_factory: LabFactory, rest_factory: Rest, firmware: str, status: int
) -> None:
    """3.x refuses bad credentials with 400 SessionRequestInvalid, 4.x with 403."""
    lab = await lab_factory([make_device(firmware=firmware)])
    client = rest_factory(next(iter(lab.devices.values())))
    response = await client.login("wrong")
    assert response.status == status
    body = await response.json()
    assert body["success"] is False and body["reason"] == "SessionRequestInvalid"


async def test_3x_reason_codes_for_logout_and_second_login(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """3.x: logout without session is SessionNoActiveSession, login twice SessionAlreadyActive."""
    lab = await lab_factory([make_device(firmware="3.12.0")])
    client = rest_factory(next(iter(lab.devices.values())))
    logout = await client.request("DELETE", "/rest/session")
    assert (logout.status, (await logout.json())["reason"]) == (400, "SessionNoActiveSession")
    assert (await client.login()).status == 200
    again = await client.login()
    assert (again.status, (await again.json())["reason"]) == (400, "SessionAlreadyActive")


async def test_lockout_after_repeated_failures_then_expiry(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """After lockout_failures bad logins even the right password fails until the lockout ends."""
    clock = FakeClock()
    lab = await lab_factory(
        [make_device(firmware="3.14.1", lockout_failures=3, lockout_seconds=120)], clock=clock
    )
    device = next(iter(lab.devices.values()))
    client = rest_factory(device)
    for _ in range(3):
        assert (await client.login("wrong")).status == 400
    locked = await client.login()
    body = await locked.json()
    assert (locked.status, body["reason"]) == (400, "SessionPortLockout")
    assert body["loginStatus"]["loginResult"] == "LOCKOUT"
    clock.advance(119)
    assert (await client.login()).status == 400
    clock.advance(2)
    assert (await client.login()).status == 200


async def test_locked_out_fault_refuses_good_password_on_4x(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """The locked_out fault makes a 4.x device answer 403 SessionPortLockout until cleared."""
    _, device, client = await one_device(
        lab_factory, rest_factory, make_device(firmware="4.2.2"), login=False
    )
    await device.set_fault("locked_out", True)
    response = await client.login()
    assert (response.status, (await response.json())["reason"]) == (403, "SessionPortLockout")
    await device.set_fault("locked_out", False)
    assert (await client.login()).status == 200


async def test_xsrf_required_from_4_6_2(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """From 4.6.2 calls need the XSRF-TOKEN cookie and x-xsrf-token header; older ones do not."""
    lab = await lab_factory([make_device(firmware="4.6.2"), make_device(firmware="4.2.2")])
    new, old = lab.devices.values()
    client = rest_factory(new)
    login = await client.login()
    assert "XSRF-TOKEN" in login.cookies
    assert (await client.request("GET", "/rest/system", xsrf=False)).status == 403
    wrong = await client.request("GET", "/rest/system", xsrf=False, headers={"x-xsrf-token": "x"})
    assert wrong.status == 403
    assert (await client.request("GET", "/rest/system")).status == 200
    old_client = rest_factory(old)
    old_login = await old_client.login()
    assert "XSRF-TOKEN" not in old_login.cookies
    assert (await old_client.request("GET", "/rest/system", xsrf=False)).status == 200


@pytest.mark.parametrize(
    ("firmware", "present"), [("3.12.0", False), ("3.14.1", False), ("4.0.2", True)]
)
async def test_mode_endpoint_absent_on_old_firmware(
    lab_factory: LabFactory, rest_factory: Rest, firmware: str, present: bool
) -> None:
    """/rest/system/mode answers 404 before 4.0.0 (feature absent, not a fault)."""
    lab = await lab_factory([make_device(firmware=firmware)])
    client = rest_factory(next(iter(lab.devices.values())))
    await client.login()
    response = await client.request("GET", "/rest/system/mode")
    assert response.status == (200 if present else 404)
    assert (await client.request("GET", "/rest/no/such/thing")).status == 404


async def test_bare_scalars_and_trailing_crlf(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """Some answers are bare scalars with a JSON content type; some bodies end in CRLF."""
    lab = await lab_factory([make_device()])
    client = rest_factory(next(iter(lab.devices.values())))
    await client.login()
    volume = await client.request("GET", "/rest/audio/volume")
    assert volume.content_type == "application/json" and await volume.text() == "39"
    content = await client.request("GET", "/rest/conferences/contentstatus")
    assert await content.text() == "CONTENT_IDLE"
    status = await client.request("GET", "/rest/system/status")
    assert (await status.read()).endswith(b"\r\n")


async def test_session_limit_refuses_extra_logins(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Beyond session_limit concurrent sessions a login is refused until one logs out."""
    lab = await lab_factory([make_device(session_limit=2, firmware="4.1.0_00")])
    device = next(iter(lab.devices.values()))
    first, second, third = (rest_factory(device) for _ in range(3))
    assert (await first.login()).status == 200
    assert (await second.login()).status == 200
    refused = await third.login()
    assert (refused.status, (await refused.json())["reason"]) == (403, "SessionLimitReached")
    await first.request("DELETE", "/rest/session")
    assert (await third.login()).status == 200


@pytest.mark.parametrize(
    ("fault", "path", "check"),
    [
        (
            "camera_down",
            "/rest/system/status",
            lambda b: status_map(b)["mr.camera"] == ["all_down"],
        ),
        (
            "microphone_down",
            "/rest/audio/microphones",
            lambda b: b[0]["state"] == "MIC_STATE_RED",
        ),
        (
            "sip_unregistered",
            "/rest/system/status",
            lambda b: status_map(b)["sipserver"] == ["down"],
        ),
        ("sip_unregistered", "/rest/system/sipservers", lambda b: b[0]["state"] == "DOWN"),
        (
            "log_storage_full",
            "/rest/system/status",
            lambda b: status_map(b)["logthreshold"] == ["full"],
        ),
        ("reboot_needed", "/rest/system", lambda b: b["rebootNeeded"] is True),
    ],
)
async def test_faults_change_the_answers(
    lab_factory: LabFactory,
    rest_factory: Rest,
    fault: str,
    path: str,
    check: Callable[[object], bool],
) -> None:
    """Each fault shows in the answer the device document maps it from, and clears again."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device())
    assert not check(await client.json("GET", path))
    await device.set_fault(fault, True)
    assert check(await client.json("GET", path))
    await device.set_fault(fault, False)
    assert not check(await client.json("GET", path))


async def test_microphone_down_lowers_connected_count(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """With microphone_down, mr.audio is some_down and one microphone fewer is connected."""
    extra = PeripheralSpec(kind="microphone", serial="MIC0001")
    _, device, client = await one_device(
        lab_factory, rest_factory, make_device(peripherals=[extra])
    )
    assert (await client.json("GET", "/rest/audio"))["numOfMicsConnected"] == 2
    await device.set_fault("microphone_down", True)
    assert (await client.json("GET", "/rest/audio"))["numOfMicsConnected"] == 1
    assert status_map(await client.json("GET", "/rest/system/status"))["mr.audio"] == ["some_down"]


async def test_g7500_peripherals_e70_and_disconnects(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """A G7500 lists its E70 and TC8; peripheral_disconnected and e70_down change their state."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(model="g7500"))

    async def states() -> dict[str, str]:
        entries = await client.json("POST", "/rest/current/devicemanagement/devices")
        return {e["productName"]: e["deviceState"] for e in entries if e["serialNumber"]}

    assert await states() == {
        "G7500": "CONNECTED",
        "Poly Studio E70": "CONNECTED",
        "Poly TC8": "CONNECTED",
    }
    e70 = next(p.serial for p in device.peripherals if p.kind == "e70")
    await device.set_fault("peripheral_disconnected", True, serial=e70)
    assert (await states())["Poly Studio E70"] == "DISCONNECTED"
    await device.set_fault("peripheral_disconnected", True)
    assert (await states())["Poly TC8"] == "DISCONNECTED"
    await device.set_fault("peripheral_disconnected", False)
    await device.set_fault("e70_down", True)
    assert (await states())["Poly Studio E70"] == "ERROR"
    status = status_map(await client.json("GET", "/rest/system/status"))
    assert status["mr.camera"] == ["all_down"] and status["trackablecamera"] == ["down"]


async def test_wedged_answers_5xx_until_reboot(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A wedged device answers 500 to every REST call until it reboots."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(), login=False)
    await device.set_fault("wedged", True)
    assert (await client.login()).status == 500
    assert (await client.request("GET", "/rest/no/such/thing")).status == 500
    assert (await client.request("GET", "/")).status == 200
    await device.reboot()
    await device.wait_power("on")
    assert (await client.login()).status == 200
    assert "wedged" not in device.faults


async def test_slow_adds_latency(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """The slow fault delays every answer by latency_ms."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(), login=False)
    await device.set_fault("slow", True, latency_ms=300)
    started = time.monotonic()
    await client.request("GET", "/")
    assert time.monotonic() - started >= 0.3
    await device.set_fault("slow", False)
    started = time.monotonic()
    await client.request("GET", "/")
    assert time.monotonic() - started < 0.3


async def test_lan_down_stops_answering_and_comes_back(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """lan_down refuses REST and SSH connections and drops sessions; clearing restores both."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device())
    await device.set_fault("lan_down", True)
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.request("GET", "/")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(device.address, device.ssh_port)
    await device.set_fault("lan_down", False)
    assert (await client.request("GET", "/rest/system")).status == 403
    _reader, writer = await asyncio.open_connection(device.address, device.ssh_port)
    writer.close()


async def test_call_shows_in_conferences_and_state(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """In a call /rest/conferences lists a CONNECTED connection; the device stays readable."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(in_call=True))
    calls = await client.json("GET", "/rest/conferences")
    assert calls[0]["connections"][0]["state"] == "CONNECTED"
    assert (await client.json("GET", "/rest/system"))["state"] == "READY"
    await device.end_call()
    assert await client.json("GET", "/rest/conferences") == []


async def test_garbage_answers_are_not_json(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """The garbage fault answers malformed JSON and odd shapes after a normal login."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(), login=False)
    await device.set_fault("garbage", True)
    assert (await client.login()).status == 200
    system = await client.request("GET", "/rest/system")
    with pytest.raises(ValueError):
        await system.json()
    status = await client.json("GET", "/rest/system/status")
    assert not isinstance(status, list)


async def test_config_get_set_and_log_archive(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """POST /rest/config reads and sets variables; /rest/system/logs is a real tar archive."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(serial="CFG00001"))
    got = await client.json_post("/rest/config", {"names": ["upgrade.auto.enable", "no.such.key"]})
    assert [v["result"] for v in got["vars"]] == ["NOERROR", "ERR_NOTFOUND"]
    assert got["vars"][0]["value"] == "false"
    set_ = await client.json_post(
        "/rest/config",
        {
            "vars": [
                {"name": "upgrade.auto.enable", "value": "true"},
                {"name": "upgrade.auto.version", "value": "nonsense"},
            ]
        },
    )
    assert [v["result"] for v in set_["vars"]] == ["NOERROR", "ERR_INVALIDVALUE"]
    assert device.config["upgrade.auto.enable"] == "true"
    logs = await client.request("GET", "/rest/system/logs")
    with tarfile.open(fileobj=io.BytesIO(await logs.read())) as archive:
        names = archive.getnames()
        info = archive.extractfile("logs/info.txt")
        assert info is not None and b"serial=CFG00001" in info.read()
    assert "logs/system.log" in names


async def test_reboot_drops_sessions_and_keeps_certificate(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """POST /rest/system/reboot answers, goes down, comes back; sessions are gone, cert kept."""
    lab = await lab_factory([make_device()])
    device = next(iter(lab.devices.values()))
    fingerprint = device.tls_fingerprint
    client = rest_factory(device)
    await client.login()
    response = await client.request("POST", "/rest/system/reboot", json={"action": "reboot"})
    assert response.status == 200
    await wait_until(lambda: device.power != "on")
    await device.wait_power("on")
    assert (await client.request("GET", "/rest/system")).status == 403
    assert device.tls_fingerprint == fingerprint


async def test_certificate_regenerated_on_reboot_when_configured(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """regenerate_cert_on_reboot: a new certificate after a reboot, kept across a lab restart."""
    lab = await lab_factory([make_device(regenerate_cert_on_reboot=True)])
    device = next(iter(lab.devices.values()))
    before = device.tls_fingerprint
    await device.reboot()
    await device.wait_power("on")
    assert device.tls_fingerprint != before
    assert (await rest_factory(device).request("GET", "/")).status == 200
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await http.get(f"https://{device.address}:{device.rest_port}/", ssl=pin(before))
    regenerated = device.tls_fingerprint
    await lab.stop()
    again = Lab(lab.fleet, data_dir=lab.data_dir)
    await again.start()
    try:
        assert again.devices[device.serial].tls_fingerprint == regenerated
    finally:
        await again.stop()


async def test_some_builds_refuse_login_with_200(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """With login_failure_status = 200 a refused login is 200 with success false in the body."""
    lab = await lab_factory([make_device(login_failure_status=200)])
    client = rest_factory(next(iter(lab.devices.values())))
    response = await client.login("wrong")
    assert response.status == 200 and (await response.json())["success"] is False
    assert "session_id" not in response.cookies


async def test_idle_session_expires(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A session unused for session_idle_seconds is gone: the next call is 403 HTML."""
    clock = FakeClock()
    lab = await lab_factory([make_device(session_idle_seconds=60)], clock=clock)
    device = next(iter(lab.devices.values()))
    client = rest_factory(device)
    await client.login()
    clock.advance(59)
    assert (await client.request("GET", "/rest/system")).status == 200
    clock.advance(59)
    assert (await client.request("GET", "/rest/system")).status == 200
    clock.advance(61)
    expired = await client.request("GET", "/rest/system")
    assert expired.status == 403 and expired.content_type == "text/html"
    assert not device.sessions


async def test_4x_logout_and_relogin(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """4.x: logout without a session is 403 HTML; a second login opens a second session."""
    _, device, client = await one_device(
        lab_factory, rest_factory, make_device(firmware="4.2.2"), login=False
    )
    logout = await client.request("DELETE", "/rest/session")
    assert (logout.status, logout.content_type) == (403, "text/html")
    first = (await (await client.login()).json())["session"]["sessionId"]
    again = await client.login()
    assert again.status == 200
    assert (await again.json())["session"]["sessionId"] != first
    assert len(device.sessions) == 2


async def test_xsrf_needs_cookie_and_header_also_on_logout(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """4.6.2: the header without the XSRF cookie is refused, and logout needs the header too."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(firmware="4.6.2"))
    token = client.xsrf
    assert token
    client.http.cookie_jar.clear(lambda morsel: morsel.key == "XSRF-TOKEN")
    assert (await client.request("GET", "/rest/system")).status == 403
    await client.login()
    assert (await client.request("DELETE", "/rest/session", xsrf=False)).status == 403
    assert len(device.sessions) == 2
    assert (await client.request("DELETE", "/rest/session")).status == 200
    assert len(device.sessions) == 1


@pytest.mark.parametrize(
    ("firmware", "provider", "calendar"),
    [
        ("3.12.0", "teams", 404),
        ("3.14.1", "teams", "ONLINE"),
        ("4.0.2", "zoom", "ONLINE"),
        ("4.2.2", "poly", "DISABLED"),
    ],
)
async def test_calendar_by_firmware_and_mode_device_on_every_firmware(
    lab_factory: LabFactory,
    rest_factory: Rest,
    firmware: str,
    provider: str,
    calendar: int | str,
) -> None:
    """/rest/calendar exists from 3.14 (ONLINE for Teams/Zoom); /rest/system/mode/device always."""
    lab = await lab_factory([make_device(firmware=firmware, provider=provider)])
    client = rest_factory(next(iter(lab.devices.values())))
    await client.login()
    answer = await client.request("GET", "/rest/calendar")
    if isinstance(calendar, int):
        assert (answer.status, answer.content_type) == (calendar, "text/html")
    else:
        assert answer.status == 200 and (await answer.json())["status"] == calendar
    assert await client.json("GET", "/rest/system/mode/device") == {"result": False}


DEVICE_MODE_APP = {"appName": "Device Mode", "packageName": "com.polycom.camuvc"}
PROVIDER_APPS = {
    "teams": "com.microsoft.skype.teams.ipphone",
    "zoom": "us.zoom.zoompresence",
    "poly": None,
}


async def test_device_mode_app_is_listed_on_every_unit_on_or_off(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Every firmware and provider lists the Device Mode app; only mode/device says it is on."""
    combos = [
        (firmware, provider, on)
        for firmware in ("3.12.0", "3.14.1", "4.2.2", "4.6.2")
        for provider in PROVIDER_APPS
        for on in (False, True)
    ]
    lab = await lab_factory(
        [
            make_device(f"DM{i:02d}", firmware=firmware, provider=provider, device_mode=on)
            for i, (firmware, provider, on) in enumerate(combos)
        ]
    )
    for i, (firmware, provider, on) in enumerate(combos):
        device = lab.devices[f"DM{i:02d}"]
        client = rest_factory(device)
        assert (await client.login()).status == 200
        apps = await client.json("GET", "/rest/system/apps")
        packages = {a["packageName"] for a in apps}
        where = (firmware, provider, on)
        assert any(a["appName"] == "Device Mode" and a["personaName"] == "camuvc" for a in apps), (
            where
        )
        assert {DEVICE_MODE_APP["packageName"], "com.poly.polylauncher"} <= packages, where
        other = PROVIDER_APPS[provider]
        assert other in packages if other else len(packages) == 2, where
        assert all("isActive" not in a for a in apps), "units list what is installed"
        assert await client.json("GET", "/rest/system/mode/device") == {"result": on}, where
        mode = await client.request("GET", "/rest/system/mode")
        if firmware.startswith("3."):
            assert mode.status == 404, where
        else:
            persona = (await mode.json())["activePersona"]
            assert (persona == "camuvc") is on, where
        view = device.view()
        assert view["provider"] == ("device_mode" if on else provider), where
        assert (view["provider_mode"], view["device_mode"]) == (provider, on)


async def test_device_mode_switches_at_runtime_through_the_control_api(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """POST /devices/{serial}/device_mode turns it on and off; a 3.x unit's answers follow."""
    lab = await lab_factory([make_device("DMSWITCH", firmware="3.12.0", provider="zoom")])
    device = lab.devices["DMSWITCH"]
    client = rest_factory(device)
    await client.login()
    async with aiohttp.ClientSession() as control:
        url = f"{lab.control_url}/devices/DMSWITCH/device_mode"
        async with control.post(url, json={"on": True}) as resp:
            assert resp.status == 200
            view = await resp.json()
        assert (view["provider"], view["device_mode"], view["provider_mode"]) == (
            "device_mode",
            True,
            "zoom",
        )
        assert await client.json("GET", "/rest/system/mode/device") == {"result": True}
        async with control.post(url, json={"on": "yes"}) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "on"
        async with control.post(url, json={"on": False}) as resp:
            assert (await resp.json())["provider"] == "zoom"
    assert await client.json("GET", "/rest/system/mode/device") == {"result": False}


async def test_more_scalars_and_crlf_bodies(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """/rest/audio/muted is a bare ``false``; /rest/audio and /rest/conferences end in CRLF."""
    lab = await lab_factory([make_device()])
    client = rest_factory(next(iter(lab.devices.values())))
    await client.login()
    muted = await client.request("GET", "/rest/audio/muted")
    assert muted.content_type == "application/json" and await muted.read() == b"false"
    for path in ("/rest/audio", "/rest/conferences"):
        body = await (await client.request("GET", path)).read()
        assert body.endswith(b"\r\n") and not body.endswith(b"\r\n\r\n"), path


async def test_session_limit_on_3x_is_400(lab_factory: LabFactory, rest_factory: Rest) -> None:
    """A 3.x unit refuses a login beyond session_limit with 400 SessionLimitReached."""
    lab = await lab_factory([make_device(session_limit=1, firmware="3.14.1")])
    device = next(iter(lab.devices.values()))
    first, second = rest_factory(device), rest_factory(device)
    assert (await first.login()).status == 200
    refused = await second.login()
    assert (refused.status, (await refused.json())["reason"]) == (400, "SessionLimitReached")


async def test_e70_has_its_own_serial_and_firmware(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """The G7500's devices list carries the E70's and the TC8's own serials and firmware."""
    e70 = PeripheralSpec(kind="e70", serial="E70OWN001", firmware="1.3.0-009011")
    tc8 = PeripheralSpec(kind="touch_controller", serial="TC8OWN001", firmware="4.2.2-210716")
    lab = await lab_factory([make_device(model="g7500", peripherals=[e70, tc8])])
    client = rest_factory(next(iter(lab.devices.values())))
    await client.login()
    entries = await client.json("POST", "/rest/current/devicemanagement/devices")
    by_serial = {e["serialNumber"]: e for e in entries if e["serialNumber"]}
    assert by_serial["E70OWN001"]["softwareVersion"] == "1.3.0-009011"
    assert by_serial["E70OWN001"]["deviceCategory"] == "CAMERA"
    assert by_serial["TC8OWN001"]["deviceType"] == "TOUCHCONTROL"


async def test_lan_degraded_answers_but_reports_lan_down(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """lan_degraded keeps the device answering with lanStatus LAN_DOWN and ipnetwork down."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device())
    await device.set_fault("lan_degraded", True)
    system = await client.json("GET", "/rest/system")
    assert system["lanStatus"]["state"] == "LAN_DOWN"
    assert status_map(await client.json("GET", "/rest/system/status"))["ipnetwork"] == ["down"]
    logs = await client.request("GET", "/rest/system/logs")
    with tarfile.open(fileobj=io.BytesIO(await logs.read())) as archive:
        member = archive.extractfile("logs/system.log")
        assert member is not None and b"net: LAN_DOWN 0/UNKNOWN" in member.read()
    await device.set_fault("lan_degraded", False)
    assert (await client.json("GET", "/rest/system"))["lanStatus"]["state"] == "LAN_UP"
    assert status_map(await client.json("GET", "/rest/system/status"))["ipnetwork"] == ["up"]


async def test_power_off_refuses_and_drop_mode_times_out(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """Silent devices refuse connections by default; with silent_mode drop attempts time out."""
    lab = await lab_factory([make_device(), make_device(silent_mode="drop")])
    refusing, dropping = lab.devices.values()
    await refusing.power_off()
    with pytest.raises(aiohttp.ClientConnectorError):
        await rest_factory(refusing).request("GET", "/")
    await dropping.power_off()
    client = rest_factory(dropping)
    timeout = aiohttp.ClientTimeout(total=0.5)
    with pytest.raises(TimeoutError):
        await client.request("GET", "/", timeout=timeout)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.open_connection(dropping.address, dropping.ssh_port), 0.5)
    await dropping.power_on()
    await dropping.wait_power("on")
    assert (await client.request("GET", "/")).status == 200


async def test_lan_down_mode_drop_overrides_the_device(
    lab_factory: LabFactory, rest_factory: Rest
) -> None:
    """lan_down with mode drop times out even on a refusing device; clearing it serves again."""
    _, device, client = await one_device(lab_factory, rest_factory, make_device(), login=False)
    await device.set_fault("lan_down", True, mode="drop")
    with pytest.raises(TimeoutError):
        await client.request("GET", "/", timeout=aiohttp.ClientTimeout(total=0.5))
    await device.set_fault("lan_down", False)
    assert (await client.request("GET", "/")).status == 200
    with pytest.raises(FaultError, match="mode"):
        await device.set_fault("lan_down", True, mode="sideways")


async def test_default_ports_are_443_and_22_for_root(tmp_path: Path) -> None:
    """Without ports in the spec a device takes 443/22 as root, OS-chosen ports otherwise."""
    pid = os.getpid()
    address = f"127.43.{(pid >> 8) % 250}.{pid % 250 + 1}"
    spec = make_device(address=address, rest_port=None, ssh_port=None)
    lab = await start_lab(tmp_path, [spec])
    try:
        device = lab.devices[spec.serial]
        if os.geteuid() == 0:
            assert (device.rest_port, device.ssh_port) == (443, 22)
        else:
            assert device.rest_port not in (0, 443) and device.ssh_port not in (0, 22)
        async with aiohttp.ClientSession() as http:
            url = f"https://{address}:{device.rest_port}/"
            async with http.get(url, ssl=pin(device.tls_fingerprint)) as response:
                assert response.status == 200
    finally:
        await lab.stop()
