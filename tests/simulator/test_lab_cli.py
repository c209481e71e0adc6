"""``polyfleet sim`` as a real process: ready file, control API, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from lab_client import pin

FLEET = """
[defaults]
rest_port = 0
ssh_port = 0

[[sites]]
id = "gdansk"
name = "Gdańsk"

[[sites.rooms]]
id = "zuraw"
name = "Żuraw"

[[sites.rooms.devices]]
serial = "CLI00001"
model = "g7500"
firmware = "4.6.2"
admin_password = "cli-secret-pw"
address = "127.45.0.1"

[[sites.rooms.devices.peripherals]]
kind = "e70"
serial = "E70CLI01"
firmware = "1.3.0-001234"

[[sites.rooms.devices]]
serial = "CLI00002"
model = "studio_x30"
firmware = "3.12.0"
admin_password = "cli-secret-pw2"
address = "127.45.0.2"

[[sites.rooms.other_hosts]]
name = "cli-printer"
address = "127.45.0.3"
rest_port = 0
ssh_port = 0
admin_password = "cli-secret-pw3"
"""


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "polyfleet", "sim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


async def test_sim_writes_ready_file_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The ready file lists every device (no passwords); devices answer; SIGTERM stops cleanly."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET, encoding="utf-8")
    ready = tmp_path / "ready.json"
    proc = start(
        tmp_path,
        "--fleet",
        str(fleet),
        "--data-dir",
        str(tmp_path / "data"),
        "--ready-file",
        str(ready),
        "--json",
        "--duration",
        "60",
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no ready file"
            await asyncio.sleep(0.05)  # waits-for: the lab process to write its ready file
        text = ready.read_text(encoding="utf-8")
        info = json.loads(text)
        assert "cli-secret-pw" not in text
        assert [d["serial"] for d in info["devices"]] == ["CLI00001", "CLI00002"]
        first = info["devices"][0]
        assert first["site"] == "gdansk" and first["room"] == "zuraw"
        assert first["firmware"] == {"version": "4.6.2", "build": "420118"}
        [other] = info["other_hosts"]
        assert (other["name"], other["kind"], other["room"]) == (
            "cli-printer",
            "web_server",
            "zuraw",
        )
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            url = f"https://{other['address']}:{other['rest_port']}/rest/session"
            async with http.post(url, ssl=pin(other["tls_fingerprint"])) as response:
                assert response.status == 404
            url = f"https://{first['address']}:{first['rest_port']}/rest/session"
            body = {"user": "admin", "password": "cli-secret-pw"}
            async with http.post(url, json=body, ssl=pin(first["tls_fingerprint"])) as response:
                assert response.status == 200
            async with http.get(info["control_url"] + "/devices/CLI00002") as response:
                assert (await response.json())["ssh_port"] == info["devices"][1]["ssh_port"]
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[0]) == info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def test_sim_duration_stops_by_itself(tmp_path: Path) -> None:
    """With --duration the lab runs that long and exits 0."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET, encoding="utf-8")
    proc = start(tmp_path, "--fleet", str(fleet), "--duration", "0.5")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert "lab running: 2 devices" in out
    assert "cli-printer" in out and "not Poly: web_server" in out
    assert (tmp_path / "polyfleet-lab" / "devices" / "CLI00001").is_dir()


async def test_sim_bad_fleet_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A bad fleet file stops the command with exit 2 and a message naming file and key."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.replace('model = "studio_x30"', 'model = "x31"'), encoding="utf-8")
    proc = start(tmp_path, "--fleet", str(fleet), "--duration", "1")
    _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 2
    assert str(fleet) in err and "sites[0].rooms[0].devices[1].model" in err
    assert os.listdir(tmp_path) == ["fleet.toml"]
