"""Waiting for something a test cannot be told about: look again until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for the slowest condition any test waits for by default (a whole lab reporting
#: on a busy CI machine); only a test that is failing anyway waits this long.
DEFAULT_TIMEOUT_S = 60.0


async def wait_until(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "",
    interval: float | None = None,
) -> T:
    """The first truthy value of ``check()`` (awaited when it is a coroutine function).

    AssertionError naming ``what`` and the last value seen once ``timeout`` seconds pass.
    A plain check is looked at every 20 ms; an awaited one (usually a request) every 50 ms,
    unless ``interval`` says otherwise.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
            pause = 0.05 if interval is None else interval
        else:
            pause = 0.02 if interval is None else interval
        if found:
            return found  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or check} (last: {found!r:.300})"
            )
        await asyncio.sleep(pause)  # waits-for: the condition, looked at again
