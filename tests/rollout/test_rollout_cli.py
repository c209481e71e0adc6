"""The rollout and package commands, through a real server and on the store alone."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import pty
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from test_rollout_api import REGISTRY, call, report

from polyfleet.controller.testing import running_controller
from polyfleet.shared.schema import Firmware, Health, HealthState, Model, Provider, Snapshot, Via

REPO = Path(__file__).resolve().parents[2]
#: Longer than the default: each test starts a dozen CLI processes and a server.
pytestmark = pytest.mark.timeout(300)


async def run_cli(*args: str, ok: bool = True) -> tuple[int, str, str]:
    """`polyfleet controller ARGS...`: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "controller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    if ok:
        assert process.returncode == 0, err
    return process.returncode, out.decode(), err.decode()


async def wait_frames(frames: list[bytes], marker: bytes, count: int) -> None:
    """Until ``marker`` was written ``count`` times to the terminal (or a minute passes)."""
    deadline = asyncio.get_running_loop().time() + 60
    while b"".join(frames).count(marker) < count:
        assert asyncio.get_running_loop().time() < deadline, b"".join(frames)
        await asyncio.sleep(0.05)  # waits-for: the watch's next frame


async def seed(data: Path) -> None:
    """Registry and reports of four Kraków devices, stored in ``data``."""
    now = datetime.now(UTC)
    async with running_controller(data) as controller:
        status, _ = await call(
            controller,
            "POST",
            "/api/v1/assets/import",
            data=REGISTRY,
            headers={"Content-Type": "text/csv"},
        )
        assert status == 200
        await report(
            controller,
            "krakow",
            *(
                Snapshot(
                    serial=serial,
                    model=Model.STUDIO_X50,
                    firmware=Firmware(version=version, build=build),
                    provider=Provider.POLY,
                    health=Health(state=HealthState.OK),
                    collected_at=now,
                    via=Via.REST,
                )
                for serial, version, build in (
                    ("K1", "4.1.0_00", "180034"),
                    ("K2", "4.1.3", "394009"),
                    ("K4", "4.2.2", "408037"),
                )
            ),
        )


async def start_server(data: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        "polyfleet",
        "controller",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert b"listening on" in line, line
    return process


@pytest.mark.expected_seconds(15)
async def test_plan_show_csv_and_controls_through_a_running_server(tmp_path: Path) -> None:
    """With a server on the data dir: plan --json, --csv read back, list, start, status --json."""
    data = tmp_path / "data"
    await seed(data)
    server = await start_server(data)
    try:
        _, out, _ = await run_cli(
            "rollout", "plan", "--target", "4.2.2-408037", "--name", "night", "--json",
            "--data-dir", str(data),
        )  # fmt: skip
        plan = json.loads(out)
        assert plan["status"] == "planned" and plan["name"] == "night"
        by = {d["serial"]: d for d in plan["devices"]}
        assert by["K4"]["reasons"][0]["code"] == "already_current"
        assert by["K1"]["status"] == "planned"
        _, text, _ = await run_cli("rollout", "show", plan["id"], "--csv", "--data-dir", str(data))
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["serial"], r["hop_version"]) for r in rows] == [
            ("K1", "4.2.2-408037"),
            ("K2", "4.2.2-408037"),
            ("K4", ""),
        ]
        _, listed, _ = await run_cli("rollout", "list", "--json", "--data-dir", str(data))
        assert [r["id"] for r in json.loads(listed)["rollouts"]] == [plan["id"]]
        package = tmp_path / "fw.bin"
        package.write_bytes(b"firmware" * 100)
        await run_cli(
            "releases", "package", "add", "4.2.2-408037", str(package), "--data-dir", str(data)
        )
        _, out, _ = await run_cli("rollout", "start", plan["id"], "--data-dir", str(data))
        assert out.strip() == f"rollout {plan['id']}: running"
        code, _, err = await run_cli(
            "rollout", "start", plan["id"], "--data-dir", str(data), ok=False
        )
        assert code == 1 and "is running: start needs it to be planned" in err
        _, out, _ = await run_cli(
            "rollout", "status", plan["id"], "--json", "--data-dir", str(data)
        )
        status = json.loads(out)
        assert status["status"] == "running"
        assert sum(status["progress"]["by_status"].values()) == 3
        _, out, _ = await run_cli("rollout", "status", plan["id"], "--data-dir", str(data))
        assert out.splitlines()[0].startswith(f"rollout {plan['id']} night: running")
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


async def test_plan_on_the_store_alone_and_a_bad_flag(tmp_path: Path) -> None:
    """Without a server the plan is stored (and audited); a bad --waves exits 1 naming the flag."""
    data = tmp_path / "data"
    await seed(data)
    _, out, _ = await run_cli(
        "rollout", "plan", "--target", "4.2.2", "--site", "krakow", "--waves", "50%,100%",
        "--data-dir", str(data),
    )  # fmt: skip
    assert "wave 0 canary" in out and "already_current: 4.2.2.408037 is installed" in out
    code, out, err = await run_cli(
        "rollout", "plan", "--target", "4.2.2", "--waves", "50%,10%", "--json",
        "--data-dir", str(data), ok=False,
    )  # fmt: skip
    assert code == 1 and json.loads(out)["error"]["field"] == "waves"
    assert "waves:" in err
    _, listed, _ = await run_cli("rollout", "list", "--json", "--data-dir", str(data))
    assert len(json.loads(listed)["rollouts"]) == 1
    _, logged, _ = await run_cli("audit", "--action", "rollout", "--json", "--data-dir", str(data))
    (entry,) = json.loads(logged)["entries"]
    assert entry["action"] == "rollout.plan" and entry["origin"]["via"] == "local_store"


async def test_package_add_checks_the_given_checksum(tmp_path: Path) -> None:
    """releases package add: a wrong --sha256 keeps nothing; the right one records the file."""
    data = tmp_path / "data"
    package = tmp_path / "fw.bin"
    package.write_bytes(b"\x7fPOLY" * 10_000)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    code, _, err = await run_cli(
        "releases", "package", "add", "4.2.2-408037", str(package), "--sha256", "ab" * 32,
        "--data-dir", str(data), ok=False,
    )  # fmt: skip
    assert code == 1 and f"the file's SHA-256 is {digest}" in err
    _, out, _ = await run_cli(
        "releases", "package", "add", "4.2.2-408037", str(package), "--sha256", digest,
        "--json", "--data-dir", str(data),
    )  # fmt: skip
    assert json.loads(out)["size"] == 50_000
    server = await start_server(data)
    try:
        _, out, _ = await run_cli("releases", "package", "list", "--json", "--data-dir", str(data))
        assert [p["sha256"] for p in json.loads(out)["packages"]] == [digest]
        other = tmp_path / "fw2.bin"
        other.write_bytes(b"other")
        _, out, _ = await run_cli(
            "releases", "package", "add", "4.1.3.394009", str(other), "--data-dir", str(data)
        )
        assert out.startswith("package 4.1.3.394009: 5 bytes")
        runtime = json.loads((data / "controller.json").read_text())
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(runtime["control_socket"])) as h,
            h.get("http://controller/api/v1/releases/4.1.3/package") as response,
        ):
            assert await response.read() == b"other"
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


async def test_status_watch_updates_in_place_on_a_terminal_and_streams_json(
    tmp_path: Path,
) -> None:
    """--watch redraws its lines in place on a terminal until the rollout ends; --json streams."""
    data = tmp_path / "data"
    await seed(data)
    server = await start_server(data)
    try:
        _, out, _ = await run_cli(
            "rollout", "plan", "--target", "4.2.2", "--json", "--data-dir", str(data)
        )
        rollout_id = json.loads(out)["id"]
        leader, follower = pty.openpty()
        watch = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "polyfleet", "controller", "rollout", "status",
            rollout_id, "--watch", "--interval", "0.2", "--data-dir", str(data),
            stdout=follower, stderr=follower, cwd=REPO,
        )  # fmt: skip
        os.close(follower)
        frames: list[bytes] = []

        async def drain() -> None:
            # Read the terminal all along: a full one would block the watch's next frame.
            while True:
                try:
                    chunk = await asyncio.to_thread(os.read, leader, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                frames.append(chunk)

        reader = asyncio.create_task(drain())
        await wait_frames(frames, f"rollout {rollout_id}".encode(), 2)
        json_watch = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "polyfleet", "controller", "rollout", "status",
            rollout_id, "--watch", "--json", "--interval", "0.2", "--data-dir", str(data),
            stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        assert json_watch.stdout is not None
        first = json.loads(await asyncio.wait_for(json_watch.stdout.readline(), 60))
        assert first["status"] == "planned"
        rest = asyncio.create_task(json_watch.stdout.read())  # read all along, as the terminal
        await run_cli("rollout", "abort", rollout_id, "--data-dir", str(data))
        assert await asyncio.wait_for(watch.wait(), 60) == 0
        await asyncio.wait_for(reader, 30)
        screen = b"".join(frames)
        os.close(leader)
        text = screen.decode()
        # Each new frame moves back to the first line of the previous one and clears down.
        assert "\x1b[" in text and "F\x1b[J" in text
        assert f"rollout {rollout_id}" in text and ": aborted" in text
        lines = (await asyncio.wait_for(rest, 60)).decode().splitlines()
        assert json.loads(lines[-1])["status"] == "aborted"
        assert await asyncio.wait_for(json_watch.wait(), 60) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
