"""The command line's small things, as its user sees them: version, headers, pipes, files, help."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
from cli_testkit import Run, closed_port, run, run_all
from testkit.reports import report_as_new_agent, typed_snapshot

from polyfleet.cli import build_parser
from polyfleet.controller.testing import running_controller
from polyfleet.shared.process import polyfleet_argv
from polyfleet.shared.schema import Provider

ROOT = Path(__file__).resolve().parents[2]
DEMO_ASSETS = ROOT / "deploy" / "examples" / "assets-demo.csv"
RULE_ID = re.compile(r"\b[CDHPSW]\d{1,2}\b|\bE(?!70\b)\d{1,2}\b")


def test_version_flag_was_missing(tmp_path: Path) -> None:
    """polyfleet --version prints the installed version and exits 0."""
    done = run("--version", cwd=tmp_path)
    assert (done.status, done.out.strip()) == (0, f"polyfleet {version('polyfleet')}")


def _closed_reader(*args: str, cwd: Path) -> tuple[int, str]:
    """Run with a standard output whose reader is already gone, as after ``| head -0``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.Popen(
            polyfleet_argv(*args), stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=cwd
        )
    finally:
        os.close(write_end)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.fixture(scope="module")
def store_with_a_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A controller data directory holding one site (Kraków), made by the command itself;
    the tests only read it."""
    data = tmp_path_factory.mktemp("cli") / "data"
    site = run(
        "controller", "site", "add", "krk", "--name", "Kraków", "--timezone", "Europe/Warsaw",
        "--data-dir", str(data), cwd=data.parent,
    )  # fmt: skip
    assert site.status == 0, site
    return data


async def _one_of_each(data: Path) -> dict[tuple[str, ...], str]:
    """A device, a ticket and a planned rollout stored in ``data``, by a real controller;
    what each show command is given to show."""
    async with running_controller(data) as controller:
        snapshot = typed_snapshot("K1", version="4.1.0_00", build="180034", provider=Provider.POLY)
        await report_as_new_agent(controller, "krk", snapshot)
        headers = {"Authorization": f"Bearer {controller.admin_token}"}
        made = []
        async with aiohttp.ClientSession(headers=headers) as http:
            for path, body in (
                ("/api/v1/tickets", {"site": "krk", "category": "fault", "summary": "switch"}),
                ("/api/v1/rollouts", {"target": "4.2.2-408037", "name": "pipe"}),
            ):
                async with http.post(controller.url + path, json=body) as response:
                    assert response.status == 201, await response.text()
                    made.append(str((await response.json())["id"]))
    ticket, rollout = made
    return {
        ("tickets", "show"): ticket,
        ("rollout", "show"): rollout,
        ("rollout", "status"): rollout,
    }


@pytest.fixture(scope="module")
def store_with_one_of_each(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[tuple[str, ...], str]]:
    """A controller data directory holding a site, a device, a ticket and a rollout, and the
    id each show command takes; the tests only read it."""
    data = tmp_path_factory.mktemp("cli-full") / "data"
    return data, asyncio.run(_one_of_each(data))


def _controller_commands(named: set[str]) -> set[tuple[str, ...]]:
    """The controller's commands whose last word is in ``named``, read from the parser."""
    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
                return
        if path and path[-1] in named:
            found.add(path)

    walk(build_parser(["controller"]), ())
    return {path[1:] for path in found if path[0] == "controller"}


def test_piping_into_head_printed_a_broken_pipe_traceback(
    store_with_one_of_each: tuple[Path, dict[tuple[str, ...], str]], tmp_path: Path
) -> None:
    """Output into a reader that went away ends quietly with status 141, text or JSON: every
    list and show command of the controller, over a store that holds something of each."""
    data, shown = store_with_one_of_each
    stored = ["--data-dir", str(data)]
    listings = [
        ["site", "list", *stored],
        ["token", "list", *stored],
        ["agent", "list", *stored],
        ["devices", *stored],
        ["devices", "export", "--csv", *stored],
        ["audit", *stored],
        ["tickets", "list", *stored],
        ["tickets", "deliveries", *stored],
        ["maintenance", "list", *stored],
        ["rollout", "list", *stored],
        ["releases", "list"],
        ["releases", "package", "list", *stored],
        ["entitlement", "check", "--assets", str(DEMO_ASSETS)],
        ["entitlement", "forecast", "--assets", str(DEMO_ASSETS)],
    ]
    # Every list and show command the parser has is run: a new one needs its line here.
    listed = {tuple(a[: a.index("--data-dir")] if "--data-dir" in a else a) for a in listings}
    assert _controller_commands({"list"}) <= listed
    assert set(shown) == _controller_commands({"show", "status"})
    shows = [[*command, key, *stored] for command, key in sorted(shown.items())]
    every = [
        *listings,
        *shows,
        ["entitlement", "check", "--assets", str(DEMO_ASSETS), "--json"],
        *([*show, "--json"] for show in shows),
    ]
    # Some at a time, as run_all does: each waits on its own process.
    with ThreadPoolExecutor(max_workers=4) as pool:
        ended = list(
            pool.map(lambda args: _closed_reader("controller", *args, cwd=tmp_path), every)
        )
    for args, (status, err) in zip(every, ended, strict=True):
        assert (status, err) == (141, ""), (args, err)


def _first_line(done: Run) -> str:
    assert done.status == 0, done
    return done.out.splitlines()[0]


def test_tables_had_no_header_row(store_with_a_site: Path, tmp_path: Path) -> None:
    """Every table for people starts with a header row naming its columns."""
    data = str(store_with_a_site)
    sites, devices, releases, check, forecast, rollouts, packages = run_all(
        [
            ["controller", "site", "list", "--data-dir", data],
            ["controller", "devices", "--data-dir", data],
            ["controller", "releases", "list"],
            ["controller", "entitlement", "check", "--assets", str(DEMO_ASSETS),
             "--at", "2026-11-25"],
            ["controller", "entitlement", "forecast", "--assets", str(DEMO_ASSETS),
             "--at", "2026-11-25", "--days", "365"],
            ["controller", "rollout", "list", "--data-dir", data],
            ["controller", "releases", "package", "list", "--data-dir", data],
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert _first_line(sites).split() == ["SITE", "NAME", "DEVICES", "AGENT"]
    assert sites.out.splitlines()[1].split()[:3] == ["krk", "Kraków", "0"]
    assert _first_line(devices).split()[:3] == ["SERIAL", "MODEL", "PROVIDER"]
    assert _first_line(releases).split()[:2] == ["DATE", "VERSION"]
    assert releases.out.splitlines()[1][:10].count("-") == 2
    check_lines = check.out.splitlines()
    assert check_lines[1].split()[:5] == ["SERIAL", "PLAN", "WARRANTY", "PATCHES", "UPGRADES"]
    assert any(re.match(r"\S+ +\S+ +\d{4}-\d{2}-\d{2}  ", line) for line in check_lines[2:])
    forecast_lines = forecast.out.splitlines()
    assert forecast_lines[2].split()[:4] == ["LAST", "DAY", "DAYS", "SERIAL"], forecast.out
    # Empty, they still name their columns, and say so on stderr.
    assert _first_line(rollouts).split() == [
        "ROLLOUT",
        "STATUS",
        "TARGET",
        "START",
        "PLANNED",
        "NAME",
    ]
    assert rollouts.err.strip().endswith("no rollouts"), rollouts
    assert _first_line(packages).split() == ["VERSION", "BYTES", "SHA256"]


def test_help_texts_showed_literal_backticks() -> None:
    """No --help page of any command shows backticks or rule ids."""
    pages: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        pages[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")

    walk(build_parser(), "polyfleet")
    assert len(pages) > 30 and "polyfleet controller tickets ack" in pages
    for name, text in pages.items():
        assert "`" not in text, (name, text)
        assert not RULE_ID.search(text), (name, RULE_ID.search(text))


def test_a_missing_file_did_not_say_which_file(tmp_path: Path) -> None:
    """A file that is not there is named, with the reason in words; never a traceback."""
    missing = tmp_path / "no-such-dir" / "missing"
    password = tmp_path / "pw"
    password.write_text("x\n", encoding="utf-8")
    os.chmod(password, 0o600)
    commands = [
        ["controller", "assets", "import", f"{missing}.csv", "--data-dir", str(tmp_path / "d")],
        ["controller", "entitlement", "check", "--assets", f"{missing}.csv"],
        ["controller", "entitlement", "check", "--assets", str(DEMO_ASSETS),
         "--firmware", f"{missing}.csv"],
        ["controller", "entitlement", "check", "--assets", str(DEMO_ASSETS),
         "--plans", f"{missing}.toml"],
        ["controller", "releases", "list", "--file", f"{missing}.toml"],
        ["controller", "releases", "add", "--version", "9.9.9", "--date", "2030-01-01",
         "--file", f"{missing}.toml"],
        ["controller", "devices", "--config", f"{missing}.toml"],
        ["controller", "tickets", "list", "--config", f"{missing}.toml"],
        ["agent", "run", "--config", f"{missing}.toml"],
        ["agent", "pins", "list", "--config", f"{missing}.toml"],
        ["agent", "probe", "127.0.0.1", "--user", "admin", "--password-file", f"{missing}.pw",
         "--insecure"],
        ["sim", "--fleet", f"{missing}.toml"],
        ["demo", "--assets", f"{missing}.csv", "--data-dir", str(tmp_path / "demo")],
    ]  # fmt: skip
    for done in run_all(commands, cwd=tmp_path):
        assert done.status in (1, 2), done
        assert str(missing) in done.err, done
        assert "Traceback" not in done.err and "Errno" not in done.err, done
        assert re.search(r"no such file|No such file|does not exist", done.err), done
    assert not (tmp_path / "demo").exists()
    assert not (tmp_path / "d").exists()


def test_an_unreachable_controller_did_not_say_what_to_check(tmp_path: Path) -> None:
    """A controller that does not answer is named by URL, with what to check."""
    url = f"http://127.0.0.1:{closed_port()}"
    tickets, enroll = run_all(
        [
            ["controller", "tickets", "list", "--url", url, "--token", "t"],
            ["agent", "enroll", "--controller", url, "--code", "ABCD-EFGH-JKLM-NPQR",
             "--credential-file", str(tmp_path / "credential")],
        ],
        cwd=tmp_path,
    )  # fmt: skip
    for done in (tickets, enroll):
        assert done.status == 1, done
        assert f"cannot reach the controller at {url}" in done.err, done
        assert "(connection refused: nothing listens at that address and port)" in done.err
        assert "Check that the controller runs" in done.err, done
        assert "Traceback" not in done.err
    assert not (tmp_path / "credential").exists()
