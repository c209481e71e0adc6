"""Active or standby: of the controllers sharing one database, one serves and the others wait.

A controller on the embedded store is always active. On PostgreSQL every controller starts
as a standby and campaigns for the database's advisory lock (``PostgresStore.open(wait=True)``);
the one that gets it loads the state, starts the scheduled work and serves. A standby
answers ``/healthz`` with its role, and every other request with HTTP 503, ``Retry-After``
and the active controller's advertised URL in the ``Polyfleet-Active-Controller`` header
(absent while no controller is active), so agents, the CLI and the dashboard move there;
a browser asking a standby for a page is redirected (307) to the same page on the active one.
It takes over the moment the active one's lock is released or its session dies. A
controller that finds its writes fenced off (another one took over) is deposed: it stops
its scheduled work and ends its application; ``serve`` starts it again as a standby.

Scheduled work plugs in through one mechanism, from a route module's ``register(app)``::

    run_when_active(app, lifecycle)

``lifecycle`` is an async generator like an ``app.cleanup_ctx`` entry: it starts once this
controller is active (store loaded, services ready) and ends before the store closes or
when the controller is deposed. The reachability monitor, ticket detection, escalations and
deliveries run this way; anything that sends messages or orders work must, so that only one
controller acts at a time (its writes are fenced besides).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict

from polyfleet.controller.http.errors import Handler, error_response, store_health
from polyfleet.controller.http.spec import PUBLIC, endpoint
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.postgres import PostgresStore, StoreDeposed
from polyfleet.shared.schema import ACTIVE_CONTROLLER_HEADER, NOT_ACTIVE_CODE

log = logging.getLogger(__name__)

#: Names the active controller's advertised URL on a standby's 503 answers.
ACTIVE_HEADER = ACTIVE_CONTROLLER_HEADER
#: Says the answering controller's role on every answer of ``/healthz``.
ROLE_HEADER = "Polyfleet-Role"
#: Seconds a client is told to wait before trying again (or moving to the active one).
RETRY_AFTER_S = 2
#: How often a standby reads who the active controller is.
WATCH_INTERVAL_S = 1.0
#: Paths a controller that is not active answers itself.
ALWAYS_SERVED = frozenset({"/healthz", "/healthz/active", "/metrics"})

Lifecycle = Callable[[web.Application], AsyncIterator[None]]


class Role(enum.StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    ACTIVE = "active"
    DEPOSED = "deposed"
    STOPPING = "stopping"


@dataclass
class Leadership:
    """This controller's role and what it knows of the active one."""

    role: Role = Role.STARTING
    #: The URL this controller advertises (known once its listener is bound).
    own_url: str | None = None
    #: The active controller's advertised URL (this one's own when active).
    active_url: str | None = None
    #: Fencing term while active on PostgreSQL.
    term: int | None = None
    backend: Literal["embedded", "postgresql"] = "embedded"
    #: An admin command's own application over the store it holds: active from the start,
    #: with none of the scheduled work.
    command: bool = False
    #: Work that runs only while active, in registration order.
    lifecycles: list[Lifecycle] = field(default_factory=list)
    #: Set once the listener is bound and ``own_url`` known (a campaign starts after it).
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the application should end: deposed, or a fatal store error (``failure``).
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None
    became_active: asyncio.Event = field(default_factory=asyncio.Event)
    _running: list[AsyncIterator[None]] = field(default_factory=list)
    _campaign: asyncio.Task[None] | None = None

    @property
    def deposed(self) -> bool:
        return self.role is Role.DEPOSED


LEADERSHIP = web.AppKey("leadership", Leadership)


def run_when_active(app: web.Application, lifecycle: Lifecycle) -> None:
    """Run ``lifecycle`` (an async generator, as in ``cleanup_ctx``) only while active."""
    app[LEADERSHIP].lifecycles.append(lifecycle)


def announce(app: web.Application, url: str) -> None:
    """The listener is bound at ``url``: a standby may now campaign under that URL."""
    leadership = app[LEADERSHIP]
    if leadership.own_url is None:
        leadership.own_url = url
    leadership.listening.set()


# -- lifecycle ---------------------------------------------------------------------------------


async def leadership_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The core's ``cleanup_ctx`` entry: open the store now (embedded) or campaign (PostgreSQL)."""
    leadership = app[LEADERSHIP]
    store = app[CORE].store
    if isinstance(store, PostgresStore):
        leadership.backend = "postgresql"
    if leadership.command:
        # The command opened the store itself, to learn whether a server holds it.
        _load_services(app)
    elif isinstance(store, PostgresStore):
        leadership.role = Role.STANDBY
        store.deposed_observers.append(lambda exc: _on_deposed(app, exc))
    else:
        await store.open()
        _load_services(app)
    try:
        yield
    finally:
        leadership.role = Role.STOPPING
        if leadership._campaign is not None:
            leadership._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leadership._campaign
        await _stop_active_work(app)
        await app[CORE].bus.close()
        await store.close()


async def startup_complete(app: web.Application) -> None:
    """Appended to ``on_startup`` last: every feature is set up; become active or campaign."""
    leadership = app[LEADERSHIP]
    if leadership.command:
        leadership.role = Role.ACTIVE
    elif leadership.backend == "postgresql":
        leadership._campaign = asyncio.create_task(_campaign(app), name="controller-campaign")
    else:
        await _start_active_work(app)


def _load_services(app: web.Application) -> None:
    app[CORE].load()
    if app[LEADERSHIP].command:
        # Ticket commands work on the store too; detection and delivery stay the server's.
        app[CORE].start_tickets(background=False)


async def _start_active_work(app: web.Application) -> None:
    leadership = app[LEADERSHIP]
    for lifecycle in leadership.lifecycles:
        running = lifecycle(app).__aiter__()
        await anext(running)
        leadership._running.append(running)
    leadership.role = Role.ACTIVE
    leadership.active_url = leadership.own_url
    leadership.became_active.set()


async def _stop_active_work(app: web.Application) -> None:
    leadership = app[LEADERSHIP]
    while leadership._running:
        running = leadership._running.pop()
        try:
            await anext(running)
        except StopAsyncIteration:
            continue
        except Exception:
            log.exception("active work failed while stopping")
            continue
        log.error("an active-only lifecycle yielded more than once; it was left as it was")


async def _campaign(app: web.Application) -> None:
    """Wait for the database's lock, then load the state and start the scheduled work."""
    leadership = app[LEADERSHIP]
    store = app[CORE].store
    assert isinstance(store, PostgresStore)
    await leadership.listening.wait()
    store.advertise_url = leadership.own_url
    stop_watching = asyncio.Event()
    watcher = asyncio.create_task(
        _watch_active(app, store, stop_watching), name="controller-watch-active"
    )
    try:
        log.info("controller standing by for %s as %s", store.shown_url, leadership.own_url)
        await store.open(wait=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("controller cannot take the store: %s", exc)
        leadership.failure = exc
        leadership.ended.set()
        return
    finally:
        # Asked to stop rather than cancelled: a query cut off mid-way leaves its connection
        # in a state asyncpg can only report as an error.
        stop_watching.set()
        await watcher
        await store.stop_watching()
    leadership.role = Role.STARTING
    leadership.term = store.term
    _load_services(app)
    try:
        await _start_active_work(app)
    except StoreDeposed:
        return
    log.info("controller active (term %d) at %s", store.term, leadership.own_url)


async def _watch_active(app: web.Application, store: PostgresStore, stop: asyncio.Event) -> None:
    """While standing by: who is active, for the redirect header (first failure logged)."""
    leadership = app[LEADERSHIP]
    failing = False
    while not stop.is_set():
        try:
            leader = await store.leader()
            found = leader.url if leader is not None and leader.held else None
            if found != leadership.active_url:
                log.info("active controller: %s", found or "none")
            leadership.active_url = found
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("cannot read who is active from %s: %s", store.shown_url, exc)
            failing = True
            leadership.active_url = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)


def _on_deposed(app: web.Application, exc: StoreDeposed) -> None:
    leadership = app[LEADERSHIP]
    if leadership.role is Role.STOPPING:
        return
    log.error("controller deposed (%s): stopping its work; it starts again as a standby", exc)
    leadership.role = Role.DEPOSED
    leadership.active_url = None
    leadership.ended.set()


# -- HTTP --------------------------------------------------------------------------------------


def not_active_response(leadership: Leadership, request: web.Request) -> web.Response:
    """503 with ``Retry-After`` and, when known, the active controller's URL; a browser
    asking for a page is sent on to the same page there (307)."""
    active = leadership.active_url if leadership.active_url != leadership.own_url else None
    wants_page = "text/html" in request.headers.get("Accept", "")
    if active is not None and request.method in ("GET", "HEAD") and wants_page:
        return web.Response(
            status=307,
            headers={
                "Location": active + request.path_qs,
                ACTIVE_HEADER: active,
                ROLE_HEADER: leadership.role.value,
            },
        )
    if active is not None:
        message = f"this controller is a standby; the active controller is {active}"
    elif leadership.role is Role.STANDBY:
        message = "this controller is a standby and no controller is active yet; try again"
    else:
        message = f"this controller is {leadership.role.value}; try again shortly"
    response = error_response(503, NOT_ACTIVE_CODE, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    response.headers[ROLE_HEADER] = leadership.role.value
    if active is not None:
        response.headers[ACTIVE_HEADER] = active
    return response


@web.middleware
async def role_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only the active controller serves; the others point to it."""
    leadership = request.app[LEADERSHIP]
    if leadership.role is Role.ACTIVE:
        try:
            return await handler(request)
        except StoreDeposed:
            return not_active_response(leadership, request)
    if request.path in ALWAYS_SERVED:
        if request.path == "/metrics":
            return _metrics_when_not_active(leadership)
        return await handler(request)
    return not_active_response(leadership, request)


class HealthOut(BaseModel):
    """What ``/healthz`` answers: this controller's role and where the active one is."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]
    role: Role
    store: Literal["embedded", "postgresql"]
    #: The active controller's advertised URL (this one's own when it is active).
    active_url: str | None
    #: This controller's advertised URL.
    url: str | None
    #: The fencing term this controller writes under (PostgreSQL, while active).
    term: int | None
    #: Whether this controller's changes are acknowledged now: ``unavailable`` while its
    #: disk refuses writes or its database does not answer (changes are refused or wait);
    #: ``not_open`` while it holds no store (a standby, a controller starting).
    store_state: Literal["available", "unavailable", "not_open"]
    #: What the store said when it is unavailable, else None.
    store_problem: str | None


def _health(leadership: Leadership, store: object) -> HealthOut:
    active = leadership.role is Role.ACTIVE
    state = store_health(store) if active else None
    if not active:
        store_state: Literal["available", "unavailable", "not_open"] = "not_open"
    elif state is not None and state.failing:
        store_state = "unavailable"
    else:
        store_state = "available"
    return HealthOut(
        status="ok",
        role=leadership.role,
        store=leadership.backend,
        active_url=leadership.active_url,
        url=leadership.own_url,
        term=leadership.term if active else None,
        store_state=store_state,
        store_problem=state.cause if state is not None and state.failing else None,
    )


@endpoint(
    summary="Liveness and role (active or standby) of this controller; no token needed",
    roles=PUBLIC,
    response=HealthOut,
    tags=("operations",),
)
async def healthz(request: web.Request) -> web.Response:
    leadership = request.app[LEADERSHIP]
    health = _health(leadership, request.app[CORE].store)
    response = web.json_response(health.model_dump(mode="json"))
    response.headers[ROLE_HEADER] = leadership.role.value
    return response


@endpoint(
    summary="200 only on the active controller (a load balancer's check); 503 elsewhere",
    roles=PUBLIC,
    response=HealthOut,
    errors=(503,),
    tags=("operations",),
)
async def healthz_active(request: web.Request) -> web.Response:
    leadership = request.app[LEADERSHIP]
    if leadership.role is not Role.ACTIVE:
        return not_active_response(leadership, request)
    return await healthz(request)


def _metrics_when_not_active(leadership: Leadership) -> web.Response:
    # A standby holds no state: it shows its role only, without asking for a token.
    text = (
        "# HELP polyfleet_controller_active 1 on the active controller, 0 on a standby\n"
        "# TYPE polyfleet_controller_active gauge\n"
        "polyfleet_controller_active 0\n"
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


class RoleCollector(Collector):
    """``polyfleet_controller_active`` and the PostgreSQL store's state, at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        leadership = self._app[LEADERSHIP]
        yield GaugeMetricFamily(
            "polyfleet_controller_active",
            "1 on the active controller, 0 on a standby",
            value=1.0 if leadership.role is Role.ACTIVE else 0.0,
        )
        store = self._app[CORE].store
        if isinstance(store, PostgresStore):
            yield GaugeMetricFamily(
                "polyfleet_store_connected",
                "1 while the store's database session is up (changes wait while it is 0)",
                value=1.0 if store.connected else 0.0,
            )
            yield GaugeMetricFamily(
                "polyfleet_store_pending_changes",
                "Changes applied but not yet committed",
                value=float(store.pending),
            )


def register(app: web.Application) -> None:
    """Routes of every controller, active or not; ``create_app`` adds the rest of the wiring."""
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/healthz/active", healthz_active, allow_head=False)
