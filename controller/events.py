"""In-process event bus: features subscribe to what happens to devices, agents and jobs.

Usage (from a feature's background task, see ``controller.app.BACKGROUND``)::

    bus = app[CORE].bus
    subscription = bus.subscribe(on_event, kinds={HealthChanged, AgentOffline})
    ...
    subscription.cancel()

``on_event(event)`` may be a plain function or a coroutine function. Each subscriber gets
every event in publication order from its own queue, so a slow subscriber never delays
ingestion or other subscribers; an exception is logged (first one per subscriber in a row)
and delivery goes on. ``bus.subscribe_batches(on_events, kinds=...)`` hands over every event
waiting at that moment in one call (``on_events(events)``), for subscribers that pay a fixed
cost per call. ``await bus.drain()`` waits until every subscriber has handled every event
published so far (tests use it instead of sleeping).

Accepted reports come as one ``SnapshotsIngested`` per batch (a batch holds up to hundreds
of them; one event each made delivery cost more than storing them). The per-report
``SnapshotIngested`` is still published, but only while some subscriber asks for it.

Every stored event has an id, one more than the previous one's: it is the key in the store
and survives restarts and takeovers (``load`` continues after the newest stored one), so
``GET /api/v1/events?after=ID`` and ``GET /api/v1/events/stream`` resume from it.

Every event except those two is also stored (collection ``events``, newest ``events_keep``
kept) and served by ``GET /api/v1/events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from polyfleet.controller.store.base import EVENTS, Doc, Store
from polyfleet.shared.schema import HealthState, Report, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened, at ``at`` (UTC), about a site and/or a device."""

    kind: ClassVar[str] = "event"
    #: Whether the event is kept for ``GET /api/v1/events`` (snapshots are far too many).
    stored: ClassVar[bool] = True
    at: datetime
    site_id: str | None = None
    serial: str | None = None

    def data(self) -> dict[str, Any]:
        """Kind-specific fields as JSON, in declaration order (none for the kinds not stored,
        whose payload is models and documents)."""
        if not self.stored:
            return {}
        return {
            item.name: _json_value(getattr(self, item.name))
            for item in fields(self)
            if item.name not in _COMMON_FIELDS
        }


#: The fields every event has, stored beside ``data`` rather than in it.
_COMMON_FIELDS = frozenset(item.name for item in fields(Event))


def _json_value(value: Any) -> Any:
    """An event field in its JSON form: times in ISO form, enums by value, tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, kw_only=True)
class SnapshotIngested(Event):
    """A report was accepted (first time, not a resend) and is durable.

    Made only while a subscriber asks for this kind; ``SnapshotsIngested`` carries a batch.
    """

    kind: ClassVar[str] = "snapshot_ingested"
    stored: ClassVar[bool] = False
    snapshot: Snapshot
    report_id: str
    agent_id: str


@dataclass(frozen=True, kw_only=True)
class SnapshotsIngested(Event):
    """The reports of one batch that were accepted (first time, not resends), now durable.

    ``documents`` are the reports as stored (``id``, ``serial``, ``snapshot`` in JSON form),
    in batch order; ``site_id`` is the reporting agent's site.
    """

    kind: ClassVar[str] = "snapshots_ingested"
    stored: ClassVar[bool] = False
    agent_id: str
    # The stored documents, not models: they are alive in the store anyway, while a batch of
    # models kept until the subscribers run is thousands of objects for the collector to scan.
    documents: tuple[Doc, ...]

    @property
    def reports(self) -> tuple[Report, ...]:
        """The reports as models (built on each access)."""
        return tuple(
            Report(id=doc["id"], snapshot=Snapshot.model_validate(doc["snapshot"]))
            for doc in self.documents
        )


@dataclass(frozen=True, kw_only=True)
class DeviceAdded(Event):
    """A device was reported for the first time."""

    kind: ClassVar[str] = "device_added"
    model: str


@dataclass(frozen=True, kw_only=True)
class HealthChanged(Event):
    """A device's health state or set of problem codes changed (``old`` None: first report)."""

    kind: ClassVar[str] = "health_changed"
    old: HealthState | None
    new: HealthState
    #: In their JSON form (``{"code", "detail"}``), as the report stored them.
    problems: tuple[Doc, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DeviceUnreachable(Event):
    """No report mentioned the device for ``unreachable_after_polls`` poll intervals."""

    kind: ClassVar[str] = "device_unreachable"
    last_seen: datetime | None


@dataclass(frozen=True, kw_only=True)
class AgentOffline(Event):
    """No agent of the site called in for ``unreachable_after_polls`` poll intervals."""

    kind: ClassVar[str] = "agent_offline"
    last_seen: datetime | None


@dataclass(frozen=True, kw_only=True)
class AgentOnline(Event):
    """An agent of a site that was offline called in again."""

    kind: ClassVar[str] = "agent_online"
    agent_id: str


@dataclass(frozen=True, kw_only=True)
class AgentEnrolled(Event):
    """An agent exchanged an enrollment code for its credential."""

    kind: ClassVar[str] = "agent_enrolled"
    agent_id: str
    agent_name: str = ""
    hostname: str = ""


@dataclass(frozen=True, kw_only=True)
class AgentNoticeReceived(Event):
    """An agent told the controller something (e.g. what its full outbox dropped)."""

    kind: ClassVar[str] = "agent_notice"
    agent_id: str
    notice: str
    detail: str = ""
    count: int = 0


@dataclass(frozen=True, kw_only=True)
class AgentClockChanged(Event):
    """An agent's reports were found collected in the future ("ahead", by ``skew_s`` seconds),
    or are on time again ("ok")."""

    kind: ClassVar[str] = "agent_clock"
    agent_id: str
    state: str
    skew_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceMoved(Event):
    """An admin moved a device to another site (``site_id`` is the new one)."""

    kind: ClassVar[str] = "device_moved"
    from_site: str | None


@dataclass(frozen=True, kw_only=True)
class JobFinished(Event):
    """An agent posted the result of a job."""

    kind: ClassVar[str] = "job_finished"
    job_id: str
    job_kind: str
    status: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class RolloutChanged(Event):
    """A rollout was started, paused, resumed, aborted, halted or finished."""

    kind: ClassVar[str] = "rollout_changed"
    rollout_id: str
    action: str
    status: str
    by: str = ""
    detail: str = ""


#: Every event kind, by name (used by the events API filter).
EVENT_KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        SnapshotIngested,
        SnapshotsIngested,
        DeviceAdded,
        HealthChanged,
        DeviceUnreachable,
        AgentOffline,
        AgentOnline,
        AgentEnrolled,
        AgentNoticeReceived,
        AgentClockChanged,
        DeviceMoved,
        JobFinished,
        RolloutChanged,
    )
}

Callback = Callable[[Event], Awaitable[None] | None]
BatchCallback = Callable[[list[Event]], Awaitable[None] | None]


@dataclass(eq=False)
class Subscription:
    """One subscriber's queue and delivery task; ``cancel()`` stops delivery."""

    callback: Callback | None
    kinds: frozenset[type[Event]] | None
    batch_callback: BatchCallback | None = None
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    bus: EventBus | None = None

    def wants(self, event: Event) -> bool:
        return self.kinds is None or type(event) in self.kinds

    def cancel(self) -> None:
        if self.bus is not None:
            self.bus._subscriptions.discard(self)
        if self.task is not None:
            self.task.cancel()


class EventBus:
    """Publishes events to subscribers and records the storable ones in the store."""

    def __init__(self, store: Store, *, keep: int) -> None:
        self._store = store
        self._keep = keep
        self._subscriptions: set[Subscription] = set()
        self._next_id = 1
        #: The oldest stored event's id (older ones were dropped past ``keep``).
        self._first_id = 1
        #: Per kind, the ids of its stored events, oldest first (ids of events dropped past
        #: ``keep`` are let go as the kind's next event comes, or skipped when read).
        self._by_kind: dict[str, deque[int]] = {}

    def load(self) -> None:
        """Continue numbering after the stored events (call once the store is open)."""
        stored = self._store.scan(EVENTS)
        keys = sorted(int(key) for key in stored)
        self._next_id = max(keys, default=0) + 1
        self._first_id = min(keys, default=self._next_id)
        by_kind: dict[str, deque[int]] = {}
        for event_id in keys:
            by_kind.setdefault(str(stored[f"{event_id:012d}"]["kind"]), deque()).append(event_id)
        self._by_kind = by_kind

    @property
    def first_id(self) -> int:
        """The oldest stored event's id (the next one's while none is stored)."""
        return self._first_id

    @property
    def last_id(self) -> int:
        """The newest recorded event's id (0 before the first)."""
        return self._next_id - 1

    def _ids(self, since: int, kind: str | None) -> Iterator[int]:
        """Ids to read: after ``since`` oldest first, or without it newest first; of ``kind``
        only when given (so a rare kind is found without reading the others)."""
        first = max(since + 1, self._first_id)
        if kind is None:
            return iter(
                range(first, self._next_id) if since else range(self._next_id - 1, first - 1, -1)
            )
        ids = self._by_kind.get(kind, deque())
        if since:
            return (event_id for event_id in ids if event_id >= first)
        return (event_id for event_id in reversed(ids) if event_id >= first)

    def query(
        self,
        *,
        since: int = 0,
        kind: str | None = None,
        site: str | None = None,
        serial: str | None = None,
        agent: str | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        """Stored events, oldest first: the first ``limit`` after ``since``, or without
        ``since`` the newest ``limit``; each filter keeps only events that match it
        (``agent``: events whose data names that agent, such as its notices).

        Event ids are consecutive keys, and the ids of each kind are kept, so this reads the
        ids it needs from the newest (or from ``since``) on, never the whole collection.
        """

        def wanted(doc: Doc | None) -> bool:
            return (
                doc is not None
                and (kind is None or doc["kind"] == kind)
                and (site is None or doc["site_id"] == site)
                and (serial is None or doc["serial"] == serial)
                and (agent is None or doc["data"].get("agent_id") == agent)
            )

        ids = self._ids(since, kind)
        found: list[Doc] = []
        for event_id in ids:
            doc = self._store.get(EVENTS, f"{event_id:012d}")
            if wanted(doc):
                assert doc is not None
                found.append(doc)
                if len(found) >= limit:
                    break
        return found if since else found[::-1]

    def recent(self, since: datetime) -> list[Doc]:
        """Stored events that happened at ``since`` or later, newest first."""
        found: list[Doc] = []
        for event_id in range(self._next_id - 1, self._first_id - 1, -1):
            doc = self._store.get(EVENTS, f"{event_id:012d}")
            if doc is None:
                continue
            if datetime.fromisoformat(doc["at"]) < since:
                break
            found.append(doc)
        return found

    def subscribe(
        self, callback: Callback, *, kinds: Iterable[type[Event]] | None = None
    ) -> Subscription:
        """Deliver events (all, or only ``kinds``) to ``callback`` from now on."""
        subscription = Subscription(
            callback=callback, kinds=None if kinds is None else frozenset(kinds), bus=self
        )
        subscription.task = asyncio.create_task(
            self._deliver(subscription), name="event-subscriber"
        )
        self._subscriptions.add(subscription)
        return subscription

    def subscribe_batches(
        self, callback: BatchCallback, *, kinds: Iterable[type[Event]] | None = None
    ) -> Subscription:
        """Like ``subscribe``, but ``callback`` gets every event waiting at once, in order.

        For a subscriber whose work per call has a fixed cost (a durable write): when it falls
        behind, it catches up in one call instead of paying that cost per event.
        """
        subscription = Subscription(
            callback=None,
            batch_callback=callback,
            kinds=None if kinds is None else frozenset(kinds),
            bus=self,
        )
        subscription.task = asyncio.create_task(
            self._deliver_batches(subscription), name="event-subscriber"
        )
        self._subscriptions.add(subscription)
        return subscription

    def wants(self, kind: type[Event]) -> bool:
        """Whether any subscriber would receive events of ``kind`` (so they are worth making)."""
        return any(
            subscription.kinds is None or kind in subscription.kinds
            for subscription in self._subscriptions
        )

    def record(
        self, events: Iterable[Event]
    ) -> tuple[dict[str, dict[str, Doc]], dict[str, list[str]]]:
        """The change that stores ``events``: (puts, deletes) by collection, as ``apply`` takes
        them, for a service to apply together with the state they describe (one commit)."""
        puts: dict[str, Doc] = {}
        deletes: list[str] = []
        for event in events:
            if not event.stored:
                continue
            event_id = self._next_id
            self._next_id += 1
            puts[f"{event_id:012d}"] = event_doc(event_id, event)
            expired = event_id - self._keep
            if expired > 0:
                deletes.append(f"{expired:012d}")
                self._first_id = max(self._first_id, expired + 1)
            ids = self._by_kind.setdefault(event.kind, deque())
            ids.append(event_id)
            while ids[0] < self._first_id:
                ids.popleft()
        return {EVENTS: puts}, {EVENTS: deletes}

    def dispatch(self, events: Iterable[Event]) -> None:
        """Hand ``events`` to subscribers (after they are recorded and durable)."""
        for event in events:
            for subscription in self._subscriptions:
                if subscription.wants(event):
                    subscription.queue.put_nowait(event)

    async def publish(self, *events: Event) -> None:
        """Record ``events`` durably, then deliver them."""
        puts, deletes = self.record(events)
        if puts[EVENTS] or deletes[EVENTS]:
            await self._store.wait_durable(self._store.apply(puts, deletes))
        self.dispatch(events)

    async def drain(self) -> None:
        """Return once every subscriber has handled everything published so far."""
        for subscription in list(self._subscriptions):
            await subscription.queue.join()

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.cancel()
            if subscription.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await subscription.task

    async def _deliver(self, subscription: Subscription) -> None:
        assert subscription.callback is not None
        failing = False
        while True:
            event = await subscription.queue.get()
            try:
                result = subscription.callback(event)
                if inspect.isawaitable(result):
                    await result
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # Log the first failure of a run, not every one (a broken subscriber would flood).
                if not failing:
                    log.exception(
                        "event subscriber %r failed on %s", subscription.callback, event.kind
                    )
                failing = True
            finally:
                subscription.queue.task_done()

    async def _deliver_batches(self, subscription: Subscription) -> None:
        assert subscription.batch_callback is not None
        queue = subscription.queue
        failing = False
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            try:
                result = subscription.batch_callback(events)
                if inspect.isawaitable(result):
                    await result
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.exception(
                        "event subscriber %r failed on %d events",
                        subscription.batch_callback,
                        len(events),
                    )
                failing = True
            finally:
                for _ in events:
                    queue.task_done()


def event_doc(event_id: int, event: Event) -> Doc:
    """The stored and served form of an event."""
    return {
        "id": event_id,
        "kind": event.kind,
        "at": event.at.isoformat(),
        "site_id": event.site_id,
        "serial": event.serial,
        "data": event.data(),
    }
