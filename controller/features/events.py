"""Events: health changes, unreachable devices, offline sites, jobs... as the bus keeps them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from polyfleet.controller.core import Controller
from polyfleet.controller.events import EVENT_KINDS, Event
from polyfleet.controller.features.caller import Caller, Permission
from polyfleet.controller.store.base import Doc

#: Events read from the store per step of a stream (a long catch-up goes in steps).
STREAM_PAGE = 500


def list_events(
    core: Controller,
    caller: Caller,
    *,
    since: int = 0,
    kind: str | None = None,
    site: str | None = None,
    serial: str | None = None,
    limit: int = 100,
) -> list[Doc]:
    """The first ``limit`` events after ``since`` or, without it, the newest ``limit``."""
    caller.require(Permission.READ)
    return core.bus.query(since=since, kind=kind, site=site, serial=serial, limit=limit)


def events_after(
    core: Controller,
    caller: Caller,
    *,
    after: int,
    kind: str | None = None,
    site: str | None = None,
    serial: str | None = None,
    limit: int = 100,
) -> tuple[list[Doc], int]:
    """Up to ``limit`` events after ``after``, in id order, and the cursor to ask with next:
    the id of the last one returned, or ``after`` itself when none is newer yet."""
    caller.require(Permission.READ)
    found = core.bus.query(since=after, kind=kind, site=site, serial=serial, limit=limit)
    return found, found[-1]["id"] if found else after


@dataclass(frozen=True)
class StreamItem:
    """One thing a stream sends: an event, a ``reset`` (``doc`` says why), or a keep-alive
    (``doc`` None)."""

    kind: str
    doc: Doc | None = None


async def follow_events(
    core: Controller,
    caller: Caller,
    *,
    after: int,
    keepalive_s: float,
    once: bool = False,
) -> AsyncGenerator[StreamItem]:
    """The events after ``after`` in id order, then each one as it is recorded.

    The bus subscription only wakes the stream: what is sent is always read from the store
    after the last id sent, so an event recorded while the catch-up was read is neither
    lost nor sent twice. An ``after`` older than the retained events (or newer than any)
    first gives a ``reset``: the caller has missed events it cannot get any more.
    ``once`` ends the stream when it has caught up.
    """
    caller.require(Permission.READ)
    bus = core.bus
    woken = asyncio.Event()
    stored_kinds = [cls for cls in EVENT_KINDS.values() if cls.stored]

    def wake(_: Event) -> None:
        woken.set()

    subscription = bus.subscribe(wake, kinds=stored_kinds)
    try:
        cursor = after
        if after + 1 < bus.first_id or after > bus.last_id:
            cursor = bus.first_id - 1 if after + 1 < bus.first_id else bus.last_id
            yield StreamItem(
                "reset",
                {
                    "reason": "expired" if after < cursor else "unknown",
                    "after": after,
                    "oldest": bus.first_id,
                    "newest": bus.last_id,
                    "resumes_after": cursor,
                },
            )
        while True:
            woken.clear()
            found = bus.query(since=cursor, limit=STREAM_PAGE)
            for doc in found:
                yield StreamItem(doc["kind"], doc)
            if found:
                cursor = found[-1]["id"]
                if len(found) == STREAM_PAGE:
                    continue
            if once:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), keepalive_s)
                continue
            yield StreamItem("keepalive")
    finally:
        subscription.cancel()
