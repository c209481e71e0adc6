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
from test_rollout_api import call, import_registry
from testkit.processes import controller_cli, in_process, start_controller, wait_active
from testkit.reports import report_as_new_agent, typed_snapshot

from polyfleet.controller.domain.faults import FaultEvent, FaultEventKind
from polyfleet.controller.testing import running_controller
from polyfleet.shared.schema import Provider

REPO = Path(__file__).resolve().parents[2]
#: Longer than the default: each test starts a dozen CLI processes and a server.
pytestmark = pytest.mark.timeout(300)


async def wait_frames(frames: list[bytes], marker: bytes, count: int) -> None:
    """Until ``marker`` was written ``count`` times to the terminal (or a minute passes)."""
    deadline = asyncio.get_running_loop().time() + 60
    while b"".join(frames).count(marker) < count:
        assert asyncio.get_running_loop().time() < deadline, b"".join(frames)
        await asyncio.sleep(0.05)  # waits-for: the watch's next frame


async def seed(data: Path, store_url: str | None = None) -> None:
    """Registry and reports of four Kraków devices, stored in ``data`` (or the PostgreSQL
    database at ``store_url``, with a planned rollout, one package and a ticket besides)."""
    now = datetime.now(UTC)
    async with running_controller(data, store_url=store_url) as controller:
        await import_registry(controller)
        await report_as_new_agent(
            controller,
            "krakow",
            *(
                typed_snapshot(serial, at=now, version=version, build=build, provider=Provider.POLY)
                for serial, version, build in (
                    ("K1", "4.1.0_00", "180034"),
                    ("K2", "4.1.3", "394009"),
                    ("K4", "4.2.2", "408037"),
                )
            ),
        )
        if store_url is None:
            return
        body = {"target": "4.2.2-408037", "name": "seeded"}
        assert (await call(controller, "POST", "/api/v1/rollouts", json=body))[0] == 201
        path = "/api/v1/releases/4.1.3.394009/package"
        assert (await call(controller, "PUT", path, data=b"firmware" * 100))[0] == 201
        # Of a device outside the registry: held for its contract, so nothing is collected
        # or sent, and the plan above is not changed by it.
        fault = FaultEvent(
            kind=FaultEventKind.OPENED,
            subject="K9",
            fault="camera_down",
            at=now,
            site="krakow",
            serial="K9",
        )
        await controller.core.tickets.get().handle([fault])


@pytest.mark.expected_seconds(15)
async def test_plan_show_csv_and_controls_through_a_running_server(tmp_path: Path) -> None:
    """With a server on the data dir: plan --json, --csv read back, list, start, status --json."""
    data = tmp_path / "data"
    await seed(data)
    server, _ = await start_controller(data)
    try:
        _, out, _ = await controller_cli(
            "rollout", "plan", "--target", "4.2.2-408037", "--name", "night", "--json",
            "--data-dir", str(data),
        )  # fmt: skip
        plan = json.loads(out)
        assert plan["status"] == "planned" and plan["name"] == "night"
        by = {d["serial"]: d for d in plan["devices"]}
        assert by["K4"]["reasons"][0]["code"] == "already_current"
        assert by["K1"]["status"] == "planned"
        _, text, _ = await controller_cli(
            "rollout", "show", plan["id"], "--csv", "--data-dir", str(data)
        )
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["serial"], r["hop_version"]) for r in rows] == [
            ("K1", "4.2.2-408037"),
            ("K2", "4.2.2-408037"),
            ("K4", ""),
        ]
        _, listed, _ = await controller_cli("rollout", "list", "--json", "--data-dir", str(data))
        assert [r["id"] for r in json.loads(listed)["rollouts"]] == [plan["id"]]
        package = tmp_path / "fw.bin"
        package.write_bytes(b"firmware" * 100)
        await controller_cli(
            "releases", "package", "add", "4.2.2-408037", str(package), "--data-dir", str(data)
        )
        _, out, _ = await controller_cli("rollout", "start", plan["id"], "--data-dir", str(data))
        assert out.strip() == f"rollout {plan['id']}: running"
        code, _, err = await controller_cli(
            "rollout", "start", plan["id"], "--data-dir", str(data), expect=None
        )
        assert code == 1 and "is running: start needs it to be planned" in err
        _, out, _ = await controller_cli(
            "rollout", "status", plan["id"], "--json", "--data-dir", str(data)
        )
        status = json.loads(out)
        assert status["status"] == "running"
        assert sum(status["progress"]["by_status"].values()) == 3
        _, out, _ = await controller_cli("rollout", "status", plan["id"], "--data-dir", str(data))
        assert out.splitlines()[0].startswith(f"rollout {plan['id']} night: running")
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


async def test_plan_on_the_store_alone_and_a_bad_flag(tmp_path: Path) -> None:
    """Without a server the plan is stored (and audited); a bad --waves exits 1 naming the flag."""
    data = tmp_path / "data"
    await seed(data)
    _, out, _ = await controller_cli(
        "rollout", "plan", "--target", "4.2.2", "--site", "krakow", "--waves", "50%,100%",
        "--data-dir", str(data),
    )  # fmt: skip
    assert "wave 0 canary" in out and "already_current: 4.2.2.408037 is installed" in out
    code, out, err = await controller_cli(
        "rollout", "plan", "--target", "4.2.2", "--waves", "50%,10%", "--json",
        "--data-dir", str(data), expect=None,
    )  # fmt: skip
    assert code == 1 and json.loads(out)["error"]["field"] == "waves"
    assert "waves:" in err
    _, listed, _ = await controller_cli("rollout", "list", "--json", "--data-dir", str(data))
    assert len(json.loads(listed)["rollouts"]) == 1
    _, logged, _ = await controller_cli(
        "audit", "--action", "rollout", "--json", "--data-dir", str(data)
    )
    (entry,) = json.loads(logged)["entries"]
    assert entry["action"] == "rollout.plan" and entry["origin"]["via"] == "local_store"


async def test_plan_on_the_spring_forward_night_says_so_with_exact_instants(
    tmp_path: Path,
) -> None:
    """--start on Warsaw's 2027-03-28: the window lasts three hours between exact instants
    and the canary wave says it is shortened; a bad --hop-length exits 1 naming it."""
    data = tmp_path / "data"
    await seed(data)
    _, out, _ = await in_process(
        "controller", "rollout", "plan", "--target", "4.2.2", "--site", "krakow", "--start",
        "2027-03-28",
        "--window", "01:00-05:00", "--hop-length", "30m", "--dry-run", "--json",
        "--data-dir", str(data),
    )  # fmt: skip
    plan = json.loads(out)
    assert plan["hop_length"] == "30m"
    assert plan["waves"][0]["opens_at"] == "2027-03-28T01:00:00+01:00"
    (note,) = [n for n in plan["waves"][0]["notes"] if n["code"] == "window_shortened"]
    assert "lasts 3h instead of 4h" in note["text"]
    canaries = [entry for entry in plan["devices"] if entry["wave"] == 0]
    assert canaries
    for entry in canaries:
        assert entry["window"] == {
            "start": "2027-03-28T01:00:00+01:00",
            "end": "2027-03-28T05:00:00+02:00",
        }
    code, out, err = await in_process(
        "controller", "rollout", "plan", "--target", "4.2.2", "--hop-length", "soon", "--json",
        "--data-dir", str(data), expect=1,
    )  # fmt: skip
    assert code == 1 and json.loads(out)["error"]["field"] == "hop_length"
    assert "hop_length: 'soon' is not a duration" in err


async def test_package_add_checks_the_given_checksum(tmp_path: Path) -> None:
    """releases package add: a wrong --sha256 keeps nothing; the right one records the file."""
    data = tmp_path / "data"
    package = tmp_path / "fw.bin"
    package.write_bytes(b"\x7fPOLY" * 10_000)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    code, _, err = await controller_cli(
        "releases", "package", "add", "4.2.2-408037", str(package), "--sha256", "ab" * 32,
        "--data-dir", str(data), expect=None,
    )  # fmt: skip
    assert code == 1 and f"the file's SHA-256 is {digest}" in err
    _, out, _ = await controller_cli(
        "releases", "package", "add", "4.2.2-408037", str(package), "--sha256", digest,
        "--json", "--data-dir", str(data),
    )  # fmt: skip
    assert json.loads(out)["size"] == 50_000
    server, _ = await start_controller(data)
    try:
        _, out, _ = await controller_cli(
            "releases", "package", "list", "--json", "--data-dir", str(data)
        )
        assert [p["sha256"] for p in json.loads(out)["packages"]] == [digest]
        other = tmp_path / "fw2.bin"
        other.write_bytes(b"other")
        _, out, _ = await controller_cli(
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
    server, _ = await start_controller(data)
    try:
        _, out, _ = await controller_cli(
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
        await controller_cli("rollout", "abort", rollout_id, "--data-dir", str(data))
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


async def test_a_rollout_name_with_a_control_character_is_refused(tmp_path: Path) -> None:
    """--name with an escape sequence or a line break exits 1 (invalid_plan, field name) with
    the character named, never written to the terminal; nothing is stored."""
    data = tmp_path / "data"
    await seed(data)
    for name in ("night\x1b[2J", "night\nshift"):
        code, out, err = await in_process(
            "controller", "rollout", "plan", "--target", "4.2.2", "--name", name, "--json",
            "--data-dir", str(data), expect=None,
        )  # fmt: skip
        error = json.loads(out)["error"]
        assert code == 1 and (error["code"], error["field"]) == ("invalid_plan", "name")
        assert "\x1b" not in out + err and "shift" not in out + err
        assert err.splitlines()[-1].startswith("error: name: contains "), err
    _, listed, _ = await in_process(
        "controller", "rollout", "list", "--json", "--data-dir", str(data)
    )
    assert json.loads(listed)["rollouts"] == []


async def test_abort_flags_are_stored_and_shown(tmp_path: Path) -> None:
    """--abort criteria replace the defaults and are shown by rollout show; without them the
    defaults follow --max-failures; a malformed --abort is a usage error storing nothing."""
    data = tmp_path / "data"
    await seed(data)
    _, out, _ = await in_process(
        "controller", "rollout", "plan", "--target", "4.2.2-408037", "--abort", "canary:0%",
        "--abort", "later:5%:min=20:type=checksum_mismatch", "--json", "--data-dir", str(data),
    )  # fmt: skip
    plan = json.loads(out)
    assert plan["abort_criteria"] == [
        {"waves": "canary", "failure_type": "any", "threshold_percent": 0.0, "min_executed": 1},
        {
            "waves": "later",
            "failure_type": "checksum_mismatch",
            "threshold_percent": 5.0,
            "min_executed": 20,
        },
    ]
    _, shown, _ = await in_process(
        "controller", "rollout", "show", plan["id"], "--data-dir", str(data)
    )
    lines = [line.split(None, 2) for line in shown.splitlines() if line.startswith("  abort ")]
    assert lines == [
        ["abort", "canary:0%", "the canary wave halts when more than 0% of its devices fail"],
        [
            "abort",
            "later:5%:min=20:type=checksum_mismatch",
            "each later wave halts when more than 5% of its devices fail with "
            "checksum_mismatch, once 20 of them have run",
        ],
    ]
    _, out, _ = await in_process(
        "controller", "rollout", "plan", "--target", "4.2.2-408037", "--max-failures", "25",
        "--dry-run", "--data-dir", str(data),
    )  # fmt: skip
    assert [line.split()[1] for line in out.splitlines() if line.startswith("  abort ")] == [
        "canary:0%",
        "later:25%",
    ]
    code, out, err = await in_process(
        "controller", "rollout", "plan", "--target", "4.2.2-408037", "--abort", "later:150%",
        "--json", "--data-dir", str(data), expect=None,
    )  # fmt: skip
    assert code == 2 and json.loads(out)["error"]["code"] == "usage"
    assert "argument --abort: 'later:150%': PERCENT 150.0: a number 0 to 100" in err
    _, listed, _ = await in_process(
        "controller", "rollout", "list", "--json", "--data-dir", str(data)
    )
    assert [r["id"] for r in json.loads(listed)["rollouts"]] == [plan["id"]]


async def test_rollout_commands_on_a_postgresql_store(tmp_path: Path, postgres_url: str) -> None:
    """With a config naming PostgreSQL the commands see the server's rollouts, packages,
    tickets and tokens and plan through it; with no server they work on the database
    themselves, and a start without the target's package is refused as documented."""
    data = tmp_path / "data"
    config = tmp_path / "controller.toml"
    config.write_text(f'[store]\nurl = "{postgres_url}"\n[tickets]\nenabled = false\n', "utf-8")
    where = ("--config", str(config), "--data-dir", str(data))
    await seed(data, store_url=postgres_url)
    server, _ = await start_controller(data, "--config", str(config))
    try:
        runtime = json.loads((data / "controller.json").read_text())
        await wait_active(runtime["url"])
        _, listed, _ = await controller_cli("rollout", "list", "--json", *where)
        (seeded,) = json.loads(listed)["rollouts"]
        assert seeded["name"] == "seeded"
        _, packages, _ = await controller_cli("releases", "package", "list", "--json", *where)
        assert [p["version"] for p in json.loads(packages)["packages"]] == ["4.1.3.394009"]
        _, out, _ = await controller_cli(
            "rollout", "plan", "--target", "4.2.2-408037", "--name", "through the server",
            "--json", *where,
        )  # fmt: skip
        planned = json.loads(out)
        assert {d["serial"] for d in planned["devices"]} == {"K1", "K2", "K4"}
        _, logged, _ = await controller_cli("audit", "--action", "rollout.plan", "--json", *where)
        origins = {e["target"]: e["origin"]["via"] for e in json.loads(logged)["entries"]}
        assert origins[f"rollout:{planned['id']}"] == "control_socket"
        _, tickets, _ = await controller_cli("tickets", "list", "--json", *where)
        filed = [(t["serial"], t["fault"]) for t in json.loads(tickets)["tickets"]]
        assert filed == [("K9", "camera_down")]
        _, tokens, _ = await controller_cli("token", "list", "--json", *where)
        assert [t["name"] for t in json.loads(tokens)["tokens"]] == ["test admin"]
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
    _, listed, _ = await controller_cli("rollout", "list", "--json", *where)
    assert {r["name"] for r in json.loads(listed)["rollouts"]} == {"seeded", "through the server"}
    code, out, err = await controller_cli(
        "rollout", "start", planned["id"], "--json", *where, expect=None
    )
    error = json.loads(out)["error"]
    assert code == 1 and error["code"] == "conflict"
    assert error["message"] == (
        "no firmware package for 4.2.2-408037: add it with "
        "`polyfleet controller releases package add VERSION FILE`"
    )
    assert err.splitlines()[-1] == f"error: {error['message']}"
    _, shown, _ = await controller_cli("rollout", "show", planned["id"], "--json", *where)
    assert json.loads(shown)["status"] == "planned"
