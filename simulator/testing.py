"""Small factories so any test area can run real simulated devices on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from polyfleet.simulator.fleet import (
    DeviceSpec,
    FleetSpec,
    OtherHostSpec,
    PeripheralSpec,
    RoomSpec,
    SiteSpec,
    UpdateBehaviour,
    split_firmware,
)
from polyfleet.simulator.lab import Lab

#: Test devices boot this fast, so reboots and updates finish within a test.
TEST_BOOT_SECONDS = 0.05
TEST_INSTALL_SECONDS = 0.2
TEST_PASSWORD = "lab-admin-pw"  # noqa: S105 - a lab device's password, not a secret

_counter = itertools.count(1)


def next_address() -> str:
    """A fresh 127.x.y.z address (ports are OS-chosen, so parallel test workers never clash)."""
    n = next(_counter)
    return f"127.42.{(n // 250) % 250}.{n % 250 + 1}"


def make_device(
    serial: str | None = None,
    model: str = "studio_x50",
    firmware: str = "4.2.2",
    **overrides: Any,
) -> DeviceSpec:
    """A DeviceSpec for tests: own loopback address, OS-chosen ports, fast boot, known password.

    ``firmware`` may carry the build (``3.12.0-366027``) or name a known release
    (``4.6.2``); ``overrides`` sets any other DeviceSpec field.
    """
    n = next(_counter)
    version, build = split_firmware(firmware, str(overrides.pop("build", "")))
    fields: dict[str, Any] = {
        "serial": serial or f"SIM{n:06d}",
        "model": model,
        "address": next_address(),
        "firmware": version,
        "build": build,
        "admin_password": TEST_PASSWORD,
        "rest_port": 0,
        "ssh_port": 0,
        "boot_seconds": TEST_BOOT_SECONDS,
        "update": UpdateBehaviour(install_seconds=TEST_INSTALL_SECONDS),
    }
    if model == "g7500" and "peripherals" not in overrides:
        fields["peripherals"] = [
            PeripheralSpec(kind="e70", serial=f"E70{n:06d}", firmware="1.3.0-001234"),
            PeripheralSpec(kind="touch_controller", serial=f"TC8{n:06d}", firmware="3.12.0-210716"),
        ]
    fields.update(overrides)
    return DeviceSpec(**fields)


def with_update(
    spec: DeviceSpec, outcome: str, install_seconds: float = TEST_INSTALL_SECONDS
) -> DeviceSpec:
    """``spec`` whose firmware updates end in ``outcome`` (ok, fail or brick)."""
    return replace(spec, update=UpdateBehaviour(install_seconds=install_seconds, outcome=outcome))


def fleet_of(devices: list[DeviceSpec], other_hosts: Sequence[OtherHostSpec] = ()) -> FleetSpec:
    """One site, one room, these devices (and hosts that are not Poly devices)."""
    room = RoomSpec(
        id="test-room", name="Test room", devices=list(devices), other_hosts=list(other_hosts)
    )
    return FleetSpec(sites=[SiteSpec(id="test-site", name="Test site", rooms=[room])])


async def start_lab(
    tmp_path: Path,
    devices: list[DeviceSpec],
    *,
    other_hosts: Sequence[OtherHostSpec] = (),
    **lab_options: Any,
) -> Lab:
    """A started lab of ``devices`` (and ``other_hosts``) keeping its files under ``tmp_path``;
    the caller stops it."""
    lab = Lab(fleet_of(devices, other_hosts), data_dir=tmp_path / "lab", **lab_options)
    await lab.start()
    return lab
