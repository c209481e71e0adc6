"""Background work every N seconds: the first failure and the recovery logged once each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from polyfleet.shared.periodic import Periodic
from polyfleet.shared.retry import Backoff

LOGGER = "polyfleet.test.periodic"
#: Short enough that a test runs many rounds at once; no test waits for a time to pass.
TICK_S = 0.001


class Flaky:
    """Work that fails on the rounds given, and tells when ``rounds`` rounds have run."""

    def __init__(self, failing: set[int], rounds: int, error: Exception | None = None) -> None:
        self.failing = failing
        self.rounds = rounds
        self.error = error or RuntimeError("the disk is on fire")
        self.calls = 0
        self.done = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls >= self.rounds:
            self.done.set()
        if self.calls in self.failing:
            raise self.error


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_first_failure_logged_once_with_traceback_and_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each run of failures: one error (with traceback) at its start, one line at its end."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    work = Flaky(failing={2, 3, 4, 7}, rounds=9)
    loop = Periodic("disk check", work, interval_s=TICK_S, logger=logging.getLogger(LOGGER))
    async with loop.running():
        await work.done.wait()
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["disk check failed; trying again"] * 2
    assert all(r.exc_info is not None for r in errors)
    assert _messages(caplog, logging.INFO) == [
        "disk check works again (after 3 failures)",
        "disk check works again (after 1 failure)",
    ]
    assert len(_messages(caplog, logging.DEBUG)) == 2  # the 2nd and 3rd failure of the first run


async def test_expected_failures_are_logged_in_words_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure of an expected kind is one warning line naming it, no traceback."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    work = Flaky(failing={1, 2}, rounds=3, error=ConnectionError("controller away"))
    loop = Periodic(
        "job pull",
        work,
        interval_s=TICK_S,
        expected=(ConnectionError,),
        logger=logging.getLogger(LOGGER),
    )
    async with loop.running():
        await work.done.wait()
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["job pull failed: controller away; trying again"]
    assert warnings[0].exc_info is None
    assert not _messages(caplog, logging.ERROR)


async def test_cancel_ends_the_loop_and_the_work_in_it() -> None:
    """Leaving ``running`` cancels the task, also while the work itself is running."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # waits-for: the cancellation below
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with Periodic("slow work", slow, interval_s=TICK_S).running() as task:
        await started.wait()
    assert task.cancelled() and cancelled.is_set()


async def test_a_stop_exception_ends_the_loop_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """The configured stop exception ends ``run`` without an error in the log."""

    class StoreClosed(Exception):
        pass

    caplog.set_level(logging.INFO, logger=LOGGER)
    work = Flaky(failing={3}, rounds=3, error=StoreClosed("closed"))
    loop = Periodic(
        "prune",
        work,
        interval_s=TICK_S,
        stop_on=(StoreClosed,),
        logger=logging.getLogger(LOGGER),
    )
    await asyncio.wait_for(loop.run(), timeout=30)
    assert work.calls == 3 and not caplog.records


async def test_wake_cuts_the_wait_short_and_run_first_false_waits_first() -> None:
    """With an hour's interval, the work runs only when woken (and not before, if told so)."""
    wake = asyncio.Event()
    work = Flaky(failing=set(), rounds=2)
    loop = Periodic("delivery", work, interval_s=3600, wake=wake, run_first=False)
    async with loop.running():
        await asyncio.sleep(0)  # waits-for: the loop to start waiting
        assert work.calls == 0
        wake.set()
        while work.calls < 1:
            await asyncio.sleep(0)  # waits-for: the woken round
        wake.set()
        await work.done.wait()
    assert work.calls == 2


async def test_failures_in_a_row_wait_by_the_backoff() -> None:
    """With a back-off, a failing round waits by it (here: an hour), not by the interval."""
    work = Flaky(failing={1}, rounds=1)
    loop = Periodic("upload", work, interval_s=TICK_S, backoff=Backoff(first_s=3600, max_s=3600))
    async with loop.running():
        await work.done.wait()
        for _ in range(20):
            await asyncio.sleep(0)  # waits-for: rounds that must not come
    assert work.calls == 1 and loop.failures == 1
