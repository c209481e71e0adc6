"""Fleet files: the demo fleet loads, bad files fail with the file and the key named."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from polyfleet.shared.errors import ConfigError
from polyfleet.simulator.fleet import FAULTS, DeviceSpec, load_fleet

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "fleet-demo.toml"

GOOD = """
[[sites]]
id = "krakow"
name = "Kraków"

[[sites.rooms]]
id = "r1"
name = "Room 1"

[[sites.rooms.devices]]
serial = "AAA0001"
model = "studio_x30"
firmware = "3.12.0-366027"
address = "127.44.0.1"
"""


ADDRESS = 'address = "127.44.0.1"\n'
FAULT = "[[sites.rooms.devices.faults]]\n"
OTHER = """[[sites.rooms.other_hosts]]
name = "nas-1"
kind = "json_api"
address = "127.44.0.9"
rest_port = 8443

[[sites.rooms.devices]]"""

FULL = (
    GOOD
    + """provider = "zoom"
device_mode = true
silent_mode = "drop"
ssh_server_version = "OpenSSH_7.4"
update = { install_seconds = 3, outcome = "brick" }

[[sites.rooms.devices.peripherals]]
kind = "microphone"
serial = "MIC0001"

[[sites.rooms.devices.faults]]
name = "slow"
at = 10
until = 20
latency_ms = 250

[[sites.rooms.devices.calls]]
at = 5
remote = "sip:board@127.0.0.1"

[[sites.rooms.other_hosts]]
name = "printer-1"
address = "127.44.0.10"
title = "Printer"
ssh_port = 2222
"""
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_fleet_covers_models_modes_and_generations() -> None:
    """The demo fleet: three Polish sites, ~30 devices of every model and mode, faults, others."""
    fleet = load_fleet(DEMO)
    assert [(s.id, s.name) for s in fleet.sites] == [
        ("krakow", "Kraków"),
        ("warszawa", "Warszawa"),
        ("gdansk", "Gdańsk"),
    ]
    devices = [d for _, _, d in fleet.placed_devices()]
    assert 25 <= len(devices) <= 40
    assert set(Counter(d.model for d in devices)) == {
        "studio_x30",
        "studio_x50",
        "studio_x70",
        "g7500",
    }
    assert set(Counter(d.provider for d in devices)) == {"teams", "zoom", "poly", "device_mode"}
    assert {d.version.major for d in devices} == {3, 4}
    assert any(d.firmware == "4.6.2" for d in devices)
    assert all(any(p.kind == "e70" for p in d.peripherals) for d in devices if d.model == "g7500")
    assert {f.name for d in devices for f in d.faults} >= {
        "camera_down",
        "microphone_down",
        "lan_down",
    }
    assert all(d.rest_port == 0 and d.ssh_port == 0 for d in devices)
    assert len({d.address for d in devices}) == len(devices)
    gdansk = [d for s, _, d in fleet.placed_devices() if s.id == "gdansk"]
    assert all(any(f.name == "lan_down" and f.at == 200 for f in d.faults) for d in gdansk)
    others = [o for _, _, o in fleet.placed_other_hosts()]
    assert others and {o.address for o in others}.isdisjoint({d.address for d in devices})


def test_defaults_fill_in_a_minimal_device(tmp_path: Path) -> None:
    """A device needs only serial, model and address; the build splits off the version."""
    fleet = load_fleet(write(tmp_path, GOOD))
    device = fleet.sites[0].rooms[0].devices[0]
    assert (device.firmware, device.build, device.provider) == ("3.12.0", "366027", "poly")
    assert device.ssh_host_key_type == "ed25519" and device.update.outcome == "ok"
    assert fleet.sites[0].timezone == "Europe/Warsaw"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('model = "studio_x30"', 'model = "x99"'), "sites[0].rooms[0].devices[0].model"),
        (
            ('address = "127.44.0.1"', 'address = "10.0.0.1"'),
            "sites[0].rooms[0].devices[0].address",
        ),
        (
            ('firmware = "3.12.0-366027"', 'firmware = "four"'),
            "sites[0].rooms[0].devices[0].firmware",
        ),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nrest_port = "x"'), "devices[0].rest_port"),
        (('serial = "AAA0001"', 'serial = "AAA0001"\ncolour = "red"'), "devices[0].colour"),
        (
            (
                'serial = "AAA0001"',
                'serial = "AAA0001"\n[[sites.rooms.devices.faults]]\nname = "fire"',
            ),
            "devices[0].faults[0].name",
        ),
        (
            (
                'serial = "AAA0001"',
                'serial = "AAA0001"\n[[sites.rooms.devices.faults]]\n'
                'name = "slow"\nat = 5\nuntil = 2',
            ),
            "devices[0].faults[0].until",
        ),
        (
            (ADDRESS, ADDRESS + "[[sites.rooms.devices.calls]]\nat = -1\n"),
            "devices[0].calls[0].at",
        ),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nprovider = "webex"'), "devices[0].provider"),
        (
            ('serial = "AAA0001"', 'serial = "AAA0001"\ndevice_mode = "on"'),
            "devices[0].device_mode",
        ),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nlockout_failures = 0'), "lockout_failures"),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nsession_limit = 0'), "session_limit"),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nrest_port = 70000'), "devices[0].rest_port"),
        (
            ('serial = "AAA0001"', 'serial = "AAA0001"\nlogin_failure_status = 401'),
            "devices[0].login_failure_status",
        ),
        (('serial = "AAA0001"', 'serial = "AAA0001"\nsilent_mode = "hide"'), "silent_mode"),
        (
            ('serial = "AAA0001"', 'serial = "AAA0001"\nssh_server_version = "Open-SSH_8"'),
            "ssh_server_version",
        ),
        (
            ('serial = "AAA0001"', 'serial = "AAA0001"\nin_call = "yes"'),
            "devices[0].in_call",
        ),
        (
            (
                ADDRESS,
                ADDRESS + '[[sites.rooms.devices.peripherals]]\nkind = "webcam"\nserial = "W1"\n',
            ),
            "devices[0].peripherals[0].kind",
        ),
        (
            ('serial = "AAA0001"', 'serial = "AAA0001"\nupdate = { outcome = "maybe" }'),
            "devices[0].update.outcome",
        ),
        (
            (ADDRESS, ADDRESS + FAULT + 'name = "slow"\nlatency_ms = "lots"\n'),
            "devices[0].faults[0].latency_ms",
        ),
        (
            (ADDRESS, ADDRESS + FAULT + 'name = "camera_down"\ncolour = 1\n'),
            "devices[0].faults[0].colour",
        ),
        (
            (ADDRESS, ADDRESS + FAULT + 'name = "lan_down"\nmode = "sideways"\n'),
            "devices[0].faults[0].mode",
        ),
        (
            (
                ADDRESS,
                ADDRESS
                + '[[sites.rooms.devices.peripherals]]\nkind = "microphone"\nserial = "M1"\n'
                + FAULT
                + 'name = "peripheral_disconnected"\nserial = "TC8X"\n',
            ),
            "devices[0].faults[0].serial",
        ),
        ((ADDRESS, ADDRESS + FAULT + 'name = "e70_down"\n'), "devices[0].faults[0].name"),
        (
            (ADDRESS, ADDRESS + FAULT + 'name = "peripheral_disconnected"\n'),
            "devices[0].faults[0].name",
        ),
        (("[[sites]]", '[defaults]\nserial = "X"\n\n[[sites]]'), "defaults.serial"),
        (("[[sites]]", "colour = 1\n[[sites]]"), "colour"),
        (
            ("[[sites.rooms.devices]]", OTHER.replace('kind = "json_api"', 'kind = "fridge"')),
            "rooms[0].other_hosts[0].kind",
        ),
        (
            ("[[sites.rooms.devices]]", OTHER.replace("127.44.0.9", "8.8.8.8")),
            "rooms[0].other_hosts[0].address",
        ),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, change: tuple[str, str], key: str) -> None:
    """A wrong value fails with a ConfigError naming the file and the key path."""
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_every_table_is_read(tmp_path: Path) -> None:
    """Peripherals, fault windows with parameters, calls, update and other hosts are all read."""
    fleet = load_fleet(write(tmp_path, FULL))
    device = fleet.sites[0].rooms[0].devices[0]
    assert (device.provider, device.silent_mode, device.ssh_server_version) == (
        "zoom",
        "drop",
        "OpenSSH_7.4",
    )
    assert device.device_mode and device.starts_in_device_mode and device.provider_mode == "zoom"
    assert (device.update.install_seconds, device.update.outcome) == (3.0, "brick")
    assert [(p.kind, p.serial) for p in device.peripherals] == [("microphone", "MIC0001")]
    [fault] = device.faults
    assert (fault.name, fault.at, fault.until, fault.params) == (
        "slow",
        10,
        20,
        {"latency_ms": 250},
    )
    [call] = device.calls
    assert (call.at, call.until, call.remote) == (5, None, "sip:board@127.0.0.1")
    [(_site, room, other)] = fleet.placed_other_hosts()
    assert (room.id, other.name, other.kind, other.title, other.ssh_port) == (
        "r1",
        "printer-1",
        "web_server",
        "Printer",
        2222,
    )


def test_site_faults_reach_every_device_of_the_site(tmp_path: Path) -> None:
    """A site's fault windows go to each of its devices; one a device cannot have is an error."""
    second = (
        '[[sites.rooms.devices]]\nserial = "AAA0002"\nmodel = "g7500"\naddress = "127.44.0.2"\n'
    )
    outage = '[[sites.faults]]\nname = "lan_down"\nat = 60\nuntil = 120\nmode = "drop"\n'
    fleet = load_fleet(write(tmp_path, GOOD + second + outage))
    for _site, _room, device in fleet.placed_devices():
        [window] = device.faults
        assert (window.name, window.at, window.until, window.params) == (
            "lan_down",
            60,
            120,
            {"mode": "drop"},
        )
    bad = GOOD + second + '[[sites.faults]]\nname = "e70_down"\n'
    with pytest.raises(ConfigError, match=r"sites\[0\]\.faults\[0\]\.name: device AAA0001"):
        load_fleet(write(tmp_path, bad))


def test_port_clashes_are_refused(tmp_path: Path) -> None:
    """One address:port taken twice (REST or SSH, device or other host) fails naming both."""
    second = (
        '[[sites.rooms.devices]]\nserial = "AAA0002"\nmodel = "g7500"\naddress = "127.44.0.1"\n'
        "ssh_port = 8443\n"
    )
    clash = GOOD.replace('address = "127.44.0.1"', 'address = "127.44.0.1"\nrest_port = 8443')
    with pytest.raises(ConfigError, match=r"devices\[1\]\.ssh_port: 127\.44\.0\.1:8443 is already"):
        load_fleet(write(tmp_path, clash + second))
    other = OTHER.replace("127.44.0.9", "127.44.0.1")
    with pytest.raises(ConfigError, match=r"other_hosts\[0\]\.rest_port"):
        load_fleet(write(tmp_path, clash.replace("[[sites.rooms.devices]]", other)))
    with pytest.raises(ConfigError, match="no devices"):
        load_fleet(write(tmp_path, '[[sites]]\nid = "empty"\n'))


def test_duplicate_serial_and_bad_toml(tmp_path: Path) -> None:
    """A serial used twice and a TOML syntax error are both reported with the file."""
    second = (
        '[[sites.rooms.devices]]\nserial = "AAA0001"\nmodel = "g7500"\naddress = "127.44.0.2"\n'
    )
    path = write(tmp_path, GOOD + second)
    with pytest.raises(ConfigError, match="already used"):
        load_fleet(path)
    broken = write(tmp_path, "[[sites]\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_fleet(broken)
    assert str(broken) in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.toml")


def test_device_spec_validates_in_code() -> None:
    """DeviceSpec built in code rejects unknown models, faults and non-loopback addresses."""
    DeviceSpec(serial="OK1", model="g7500", address="127.0.0.9")
    with pytest.raises(ValueError, match="model"):
        DeviceSpec(serial="BAD1", model="studio_x99", address="127.0.0.9")
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        DeviceSpec(serial="BAD2", model="g7500", address="192.168.1.1")
    assert "garbage" in FAULTS and "e70_down" in FAULTS


def test_the_documented_fleet_example_loads(tmp_path: Path) -> None:
    """The fleet file example in docs/lab.md is a valid fleet using every table."""
    text = (DEMO.parents[2] / "docs" / "lab.md").read_text(encoding="utf-8")
    match = re.search(r"## Fleet files\n\n```toml\n(.*?)```", text, re.DOTALL)
    assert match is not None
    fleet = load_fleet(write(tmp_path, match.group(1)))
    [(_site, _room, device)] = fleet.placed_devices()
    assert [w.name for w in device.faults] == ["camera_down", "lan_down"]
    assert [p.kind for p in device.peripherals] == ["e70"] and device.calls
    assert [o.name for _, _, o in fleet.placed_other_hosts()] == ["waw-wisla-printer"]
