"""Fixtures for every test folder: one PostgreSQL server per session (per xdist worker), labs,
the shipped catalogues."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.site_agents import lab_password_file

from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.services.entitlement import load_plans, load_releases
from polyfleet.controller.store.local_postgres import LocalPostgres
from polyfleet.simulator.fleet import DeviceSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import start_lab

#: Set in the pytest process when the run starts, so every process the run starts (xdist
#: workers, servers, agents, their children and daemons) carries it in its environment:
#: what still carries it when the run ends was left behind by a test.
RUN_MARK = "POLYFLEET_TEST_RUN"
#: How long a process that is on its way out (a worker, a server just sent SIGTERM) may take.
STRAGGLER_GRACE_S = 5.0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL server on loopback, started on first use and stopped at the session's end."""
    server = LocalPostgres.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plans() -> PlanCatalogue:
    """The shipped plan catalogue."""
    return load_plans()


@pytest.fixture(scope="session")
def releases() -> ReleaseCatalogue:
    """The shipped release catalogue."""
    return load_releases()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """The URL of a new, empty database of its own on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the test (folders may give theirs other settings)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def lab_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Lab]]]:
    """Start labs of given DeviceSpecs (and ``start_lab`` options); all stop after the test."""
    labs: list[Lab] = []

    async def factory(devices: list[DeviceSpec], **options: Any) -> Lab:
        lab = await start_lab(tmp_path / f"lab{len(labs)}", devices, **options)
        labs.append(lab)
        return lab

    yield factory
    for lab in labs:
        await lab.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """The lab devices' admin password in an owner-only file."""
    return lab_password_file(tmp_path)


def pytest_configure(config: pytest.Config) -> None:
    # xdist workers keep the mark of the run that started them: the run checks them all.
    # (A pytest that a test runs is a run of its own, though it inherits a worker's
    # environment: only xdist's workers have workerinput.)
    if not hasattr(config, "workerinput"):
        os.environ[RUN_MARK] = uuid.uuid4().hex
    config.addinivalue_line(
        "markers",
        "expected_seconds(seconds): about how long the test takes on a CI machine; the "
        "longest start first, so that none starts last and keeps the run waiting",
    )


def expected_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("expected_seconds")
    return float(marker.args[0]) if marker is not None else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked long first, longest first; the others keep their order.

    xdist (``--dist loadgroup``) hands tests to the workers in this order, as each asks for
    more: a long test started last would leave one core idle while it runs.
    """
    items.sort(key=lambda item: -expected_seconds(item))


def processes_marked(mark: str) -> dict[int, str]:
    """pid -> command line of every other process started with ``RUN_MARK=mark``."""
    wanted = f"{RUN_MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # The environment a process was started with; empty for a zombie.
            if wanted not in Path(entry.path, "environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or another user's
        found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.hookimpl(trylast=True)  # after xdist has stopped its workers
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if a process it started outlives it; such processes are killed."""
    mark = os.environ.get(RUN_MARK)
    if mark is None or hasattr(session.config, "workerinput") or not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + STRAGGLER_GRACE_S
    left = processes_marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # waits-for: stragglers on their way out
        left = processes_marked(mark)
    if not left:
        return
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    lines = [f"  pid {pid}: {cmdline}" for pid, cmdline in sorted(left.items())]
    report = pytest.TestReport(
        nodeid="tests/conftest.py::no_process_outlives_the_test_run",
        location=("tests/conftest.py", 0, "no process outlives the test run"),
        keywords={},
        outcome="failed",
        longrepr=f"{len(left)} process(es) started by the tests outlived the run "
        f"(killed now):\n" + "\n".join(lines),
        when="call",
    )
    session.config.hook.pytest_runtest_logreport(report=report)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
