"""``polyfleet agent probe`` against lab devices: snapshots and every one-line failure reason."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from polyfleet.cli import main
from polyfleet.shared.schema import Snapshot
from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.testing import make_device


async def probe(
    capsys: pytest.CaptureFixture[str],
    device: SimDevice,
    password_file: Path,
    *extra: str,
    fingerprint: str | None = None,
    rest_port: int | None = None,
) -> tuple[int, str, str]:
    argv = [
        "agent",
        "probe",
        device.address,
        "--rest-port",
        str(rest_port or device.rest_port),
        "--ssh-port",
        str(device.ssh_port),
        "--user",
        "admin",
        "--password-file",
        str(password_file),
        "--timeout",
        "3",
    ]
    if fingerprint == "insecure":
        argv.append("--insecure")
    else:
        argv += ["--fingerprint", fingerprint or device.tls_fingerprint]
    argv += list(extra)
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot_of(out: str) -> Snapshot:
    return Snapshot.model_validate_json(out)


async def test_probe_prints_snapshot_json(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """probe --json prints exactly the wire Snapshot of a 4.x device."""
    lab = await lab_factory([make_device("X50PROBE1", model="studio_x50", provider="teams")])
    device = lab.devices["X50PROBE1"]
    code, out, err = await probe(capsys, device, password_file, "--json")
    assert code == 0, err
    snap = snapshot_of(out)
    assert snap.serial == "X50PROBE1"
    assert snap.model.value == "studio_x50"
    assert snap.model_raw == "StudioX50"
    assert snap.provider.value == "teams"
    assert snap.firmware.version == "4.2.2" and snap.firmware.build == "408037"
    assert snap.health.state.value == "ok"
    assert snap.via.value == "rest"
    assert set(json.loads(out)) == set(Snapshot.model_fields)
    assert not device.sessions, "probe must log out"


@pytest.mark.parametrize(
    ("firmware", "provider", "expected"),
    [
        ("3.12.0", "zoom", "zoom"),
        ("4.6.2", "device_mode", "device_mode"),
        ("3.14.1", "teams", "teams"),
    ],
)
async def test_probe_firmware_variants(
    lab_factory: Any, password_file: Path, capsys: Any, firmware: str, provider: str, expected: str
) -> None:
    """3.x logins (no mode endpoint: provider from apps) and 4.6.2 XSRF logins both read fine."""
    lab = await lab_factory([make_device("VAR1", firmware=firmware, provider=provider)])
    device = lab.devices["VAR1"]
    code, out, err = await probe(capsys, device, password_file, "--json")
    assert code == 0, err
    snap = snapshot_of(out)
    assert snap.firmware.version == firmware
    assert snap.provider.value == expected
    assert not device.sessions


#: One firmware of each generation: 3.x before calendar, 3.x, 4.0 to 4.6.1, 4.6.2 and later (XSRF).
FIRMWARE_GENERATIONS = ("3.12.0", "3.14.1", "4.2.2", "4.6.2")


async def test_provider_mode_on_every_firmware_with_device_mode_on_and_off(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """Teams, Zoom and Poly Video units report their provider, or device_mode only while on."""
    # Every unit lists the Device Mode app; on 3.x (no /rest/system/mode) only
    # /rest/system/mode/device may say device mode.
    combos = [
        (firmware, provider, on)
        for firmware in FIRMWARE_GENERATIONS
        for provider in ("teams", "zoom", "poly")
        for on in (False, True)
    ]
    lab = await lab_factory(
        [
            make_device(f"PM{i:02d}", firmware=firmware, provider=provider, device_mode=on)
            for i, (firmware, provider, on) in enumerate(combos)
        ]
    )
    wrong = []
    for i, (firmware, provider, on) in enumerate(combos):
        code, out, err = await probe(capsys, lab.devices[f"PM{i:02d}"], password_file, "--json")
        assert code == 0, err
        reported = snapshot_of(out).provider.value
        expected = "device_mode" if on else provider
        if reported != expected:
            wrong.append(f"{firmware} {provider} device mode {on}: {reported}, not {expected}")
    assert not wrong, wrong


async def test_3x_unit_leaving_device_mode_reports_its_provider_again(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """A 3.x Teams unit switched into device mode and back reads device_mode, then teams."""
    lab = await lab_factory([make_device("PMSWITCH", firmware="3.14.1", provider="teams")])
    device = lab.devices["PMSWITCH"]
    seen = []
    for on in (True, False):
        await device.set_device_mode(on)
        code, out, err = await probe(capsys, device, password_file, "--json")
        assert code == 0, err
        seen.append(snapshot_of(out).provider.value)
    assert seen == ["device_mode", "teams"]


async def test_probe_g7500_lists_e70_as_own_entry(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """A G7500's E70 camera is a peripheral of the host and its own entry with host_serial."""
    lab = await lab_factory([make_device("G75HOST", model="g7500")])
    device = lab.devices["G75HOST"]
    code, out, err = await probe(capsys, device, password_file)
    assert code == 0, err
    assert "studio_e70" in out and "attached to G75HOST" in out
    e70 = next(p for p in device.peripherals if p.kind == "e70")
    assert e70.serial in out


async def test_probe_json_lines_carry_the_e70_entry(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """probe --json on a G7500: the host Snapshot line, then the E70's own Snapshot line."""
    lab = await lab_factory([make_device("G75JSON", model="g7500")])
    device = lab.devices["G75JSON"]
    e70 = next(p for p in device.peripherals if p.kind == "e70")
    code, out, err = await probe(capsys, device, password_file, "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    host, camera = (Snapshot.model_validate_json(line) for line in lines)
    assert set(json.loads(lines[0])) == set(Snapshot.model_fields)
    assert (host.serial, host.host_serial) == ("G75JSON", None)
    assert e70.serial in {p.serial for p in host.peripherals}
    assert (camera.serial, camera.model.value, camera.host_serial) == (
        e70.serial,
        "studio_e70",
        "G75JSON",
    )


async def test_probe_over_ssh(lab_factory: Any, password_file: Path, capsys: Any) -> None:
    """probe --via ssh reads the legacy command line, pinned by the SSH host key."""
    lab = await lab_factory([make_device("SSHPROBE", firmware="4.1.0")])
    device = lab.devices["SSHPROBE"]
    code, out, err = await probe(
        capsys, device, password_file, "--via", "ssh", "--json", fingerprint=device.ssh_fingerprint
    )
    assert code == 0, err
    snap = snapshot_of(out)
    assert (snap.serial, snap.via.value, snap.firmware.version) == ("SSHPROBE", "ssh", "4.1.0")
    assert snap.health.state.value == "ok"


async def test_probe_failure_reasons(
    lab_factory: Any, password_file: Path, tmp_path: Path, capsys: Any
) -> None:
    """Each failure exits non-zero with its one-line reason and never prints the password."""
    lab = await lab_factory([make_device(f"FAIL{i}") for i in range(6)])
    d = [lab.devices[f"FAIL{i}"] for i in range(6)]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    os.chmod(wrong, 0o600)

    await d[0].set_fault("lan_down", True)
    await d[3].set_fault("locked_out", True)
    await d[4].set_fault("wedged", True)
    other = d[1].tls_fingerprint
    cases = [
        (await probe(capsys, d[0], password_file), "unreachable"),
        (
            await probe(capsys, d[1], password_file, fingerprint=d[2].tls_fingerprint),
            "certificate does not match the pinned fingerprint",
        ),
        (await probe(capsys, d[2], wrong), "bad credentials"),
        (await probe(capsys, d[3], password_file), "locked out"),
        (
            await probe(capsys, d[5], password_file, rest_port=d[5].ssh_port, fingerprint=other),
            "not a Poly VideoOS device",
        ),
        (await probe(capsys, d[4], password_file), "device wedged"),
    ]
    for (code, out, err), reason in cases:
        assert code != 0
        assert out == ""
        lines = err.strip().splitlines()
        assert lines[-1].endswith(reason), err
        assert "lab-admin-pw" not in err and "not-the-password" not in err


async def test_probe_survives_garbage(lab_factory: Any, password_file: Path, capsys: Any) -> None:
    """Hostile answers end in a clear reason, not a crash."""
    lab = await lab_factory([make_device("GARB1")])
    device = lab.devices["GARB1"]
    await device.set_fault("garbage", True)
    code, _out, err = await probe(capsys, device, password_file)
    assert code == 3
    assert err.strip().endswith("unexpected answer")


async def test_probe_refuses_readable_password_file(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """A password file others can read is refused before any device is contacted."""
    lab = await lab_factory([make_device("MODE1")])
    os.chmod(password_file, 0o644)
    code, _out, err = await probe(capsys, lab.devices["MODE1"], password_file)
    assert code == 2
    assert "chmod 600" in err


async def test_probe_insecure_accepts_any_certificate(
    lab_factory: Any, password_file: Path, capsys: Any
) -> None:
    """--insecure reads the device without a pin (first contact)."""
    lab = await lab_factory([make_device("INSEC1", firmware="3.12.0")])
    code, out, err = await probe(
        capsys, lab.devices["INSEC1"], password_file, "--json", fingerprint="insecure"
    )
    assert code == 0, err
    assert snapshot_of(out).serial == "INSEC1"
