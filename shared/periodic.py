"""Work run every N seconds in the background: the first failure and the recovery are logged.

The one place a background loop catches broad exceptions (like Home Assistant's update
coordinator): a failure is logged the first time, with its traceback unless it is one of
the ``expected`` kinds, later ones only at debug level, and the recovery once. A loop ends
when cancelled, or quietly when the work raises one of ``stop_on`` (a store that closed
under it, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from polyfleet.shared.retry import Backoff

log = logging.getLogger(__name__)


class Periodic:
    """``work`` every ``interval_s`` seconds, named ``name`` in the log.

    ``run_first``: run at once (True) or after a first interval. ``wake``: an event that
    cuts a wait short (new work arrived). ``backoff``: how long to wait after failures in
    a row instead of the interval (None: the interval).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        *,
        interval_s: float,
        run_first: bool = True,
        wake: asyncio.Event | None = None,
        stop_on: tuple[type[BaseException], ...] = (),
        expected: tuple[type[Exception], ...] = (),
        backoff: Backoff | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.work = work
        self.interval_s = interval_s
        self.run_first = run_first
        self.wake = wake
        self.stop_on = stop_on
        self.expected = expected
        self.backoff = backoff
        self.log = logger
        #: Failures in a row (0: the last run worked).
        self.failures = 0
        self.last_error: Exception | None = None

    async def run(self) -> None:
        """Until cancelled, or until the work raises one of ``stop_on``."""
        if not self.run_first:
            await self._wait(self.interval_s)
        while True:
            try:
                await self.work()
            except self.stop_on as exc:
                self.log.debug("%s stopped: %s", self.name, exc)
                return
            except Exception as exc:  # the loop boundary: the next round may work again
                self._failed(exc)
            else:
                self._worked()
            await self._wait(self._next_wait())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        """Run in a task while the block runs; cancelled and awaited when it ends."""
        task = asyncio.create_task(self.run(), name=self.name)
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _next_wait(self) -> float:
        if self.failures and self.backoff is not None:
            return self.backoff.delay(self.failures)
        return self.interval_s

    async def _wait(self, seconds: float) -> None:
        if self.wake is None:
            await asyncio.sleep(seconds)  # waits-for: the next round
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = exc
        if self.failures > 1:
            self.log.debug("%s failed again (%d in a row): %s", self.name, self.failures, exc)
        elif isinstance(exc, self.expected):
            self.log.warning("%s failed: %s; trying again", self.name, exc)
        else:
            self.log.exception("%s failed; trying again", self.name)

    def _worked(self) -> None:
        if self.failures:
            failed = "1 failure" if self.failures == 1 else f"{self.failures} failures"
            self.log.info("%s works again (after %s)", self.name, failed)
        self.failures = 0
        self.last_error = None
