"""The controller's aiohttp application: ``create_app`` wires store, services, routes, lifecycles.

Extension points (plain lists, no import magic):

- ``ROUTE_MODULES``: modules with ``register(app: web.Application) -> None`` that add routes
  (``app.router.add_get(...)`` with handlers decorated by ``controller.http.spec.endpoint``,
  so they appear in ``/api/v1/openapi.json`` and get role checks). A feature starts its
  background work from the same ``register`` by appending an async generator to
  ``app.cleanup_ctx``; it runs after the core is up (store open, services ready) and is
  torn down before the store closes. Core services are found on the ``Controller`` under
  ``controller.keys.CORE`` (``app[CORE].store``, ``.bus``, ``.inventory``, ``.jobs``,
  ``.clock``...); an admin action is a use case in ``controller.features``, which records it.
- ``BACKGROUND``: the core's own work that runs only while this controller is active
  (reachability, audit retention). A feature's scheduled work (anything that sends messages
  or orders work) plugs in the same way, with ``controller.active.run_when_active(app,
  lifecycle)``: on PostgreSQL only one controller of a database is active, and only it runs
  such work.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from polyfleet.controller import active
from polyfleet.controller.active import (
    LEADERSHIP,
    Leadership,
    RoleCollector,
    announce,
    leadership_lifecycle,
    role_middleware,
    run_when_active,
    startup_complete,
)
from polyfleet.controller.api import admin as admin_api
from polyfleet.controller.api import admin_sessions as admin_sessions_api
from polyfleet.controller.api import agent as agent_api
from polyfleet.controller.api import audit as audit_api
from polyfleet.controller.api import backup as backup_api
from polyfleet.controller.api import entitlement as entitlement_api
from polyfleet.controller.api import maintenance as maintenance_api
from polyfleet.controller.api import metrics as metrics_api
from polyfleet.controller.api import openapi as openapi_api
from polyfleet.controller.api import overview as overview_api
from polyfleet.controller.api import rollouts as rollouts_api
from polyfleet.controller.api import tickets as tickets_api
from polyfleet.controller.api.metrics import ThrottleCollector, build_registry
from polyfleet.controller.clock import Clock, system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.core import Controller, build_controller
from polyfleet.controller.http.auth import auth_middleware
from polyfleet.controller.http.bodies import CONNECTION_GUARD, body_middleware
from polyfleet.controller.http.connections import ConnectionGuard, GuardedTCPSite
from polyfleet.controller.http.errors import error_middleware, quiet_malformed_requests
from polyfleet.controller.http.query import empty_query_middleware
from polyfleet.controller.http.throttle import AUTH_LIMITER, ENROLL_LIMITER, AttemptLimiter
from polyfleet.controller.keys import (
    CORE,
    EVENT_STREAMS,
    METRICS,
)
from polyfleet.controller.store.base import Store, StoreUnavailable
from polyfleet.controller.store.tinydb import cannot_open
from polyfleet.controller.web import routes as web_routes
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.periodic import Periodic
from polyfleet.shared.schema import MAX_BODY_BYTES

log = logging.getLogger(__name__)


class RouteModule(Protocol):
    def register(self, app: web.Application) -> None: ...


Lifecycle = Callable[[web.Application], AsyncIterator[None]]

#: Route modules, in registration order.
ROUTE_MODULES: list[RouteModule] = [
    active,
    agent_api,
    admin_api,
    metrics_api,
    openapi_api,
    entitlement_api,
    tickets_api,
    maintenance_api,
    rollouts_api,
    overview_api,
    web_routes,
    audit_api,
    backup_api,
    admin_sessions_api,
]

#: In a serving process, young objects are collected automatically at these thresholds (the
#: first two of ``gc.set_threshold``); a full pass runs on a schedule, this often.
GC_YOUNG_THRESHOLDS = (50_000, 10)
GC_FULL_INTERVAL_S = 600.0
#: A third threshold the count of young passes never reaches: no full pass starts by itself.
_GC_NO_AUTOMATIC_FULL_PASS = 1_000_000_000

#: Name of the file in the data directory that tells CLI commands where the server is.
RUNTIME_FILE = "controller.json"


async def liveness_monitor(app: web.Application) -> AsyncIterator[None]:
    """Every ``liveness_check_s``: silent agents -> site offline; silent devices -> unreachable."""
    monitor = Periodic(
        "reachability check",
        app[CORE].inventory.check_liveness,
        interval_s=app[CORE].config.liveness_check_s,
        run_first=False,
        stop_on=(StoreUnavailable,),
        logger=log,
    )
    async with monitor.running():
        yield


#: How often audit entries past their retention are dropped.
AUDIT_PRUNE_INTERVAL_S = 3600.0


async def audit_retention(app: web.Application) -> AsyncIterator[None]:
    """Every hour: drop audit entries older than ``[audit] retention_days``."""

    async def prune() -> None:
        app[CORE].audit.prune()

    pruner = Periodic(
        "dropping old audit entries",
        prune,
        interval_s=AUDIT_PRUNE_INTERVAL_S,
        run_first=False,
        stop_on=(StoreUnavailable,),
        logger=log,
    )
    async with pruner.running():
        yield


#: The core's background work, run after the store is open.
BACKGROUND: list[Lifecycle] = [liveness_monitor, audit_retention]


async def _end_event_streams(app: web.Application) -> None:
    """End the event streams being served: shutdown would otherwise wait on each one."""
    streams = app[EVENT_STREAMS]
    for task in list(streams):
        task.cancel()


def create_app(
    config: ControllerConfig,
    *,
    store: Store | None = None,
    clock: Clock = system_clock,
    controller: Controller | None = None,
    command: bool = False,
) -> web.Application:
    """The controller application over ``build_controller(config, clock)`` (or ``controller``).

    The store opens and closes with the app's lifecycle. On a PostgreSQL store the
    application starts as a standby: call ``announce(app, url)`` once its listener is bound,
    and it campaigns for the database (``controller.active``).

    ``command``: the application an admin command serves to itself on a store it has opened
    and holds (no server runs): every route, none of the scheduled work.
    """
    if controller is None:
        controller = build_controller(config, clock, store=store)
    quiet_malformed_requests()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            error_middleware,
            # Before anything reads the body: a request cannot be cloned after that.
            empty_query_middleware,
            role_middleware,
            auth_middleware,
            body_middleware,
        ],
    )
    app[CORE] = controller
    app[LEADERSHIP] = Leadership(own_url=config.advertise_url, command=command)
    app[CONNECTION_GUARD] = ConnectionGuard(config.max_unauthenticated_connections)
    app[METRICS] = build_registry(controller.store, controller.inventory, app[CONNECTION_GUARD])
    app[METRICS].register(RoleCollector(app))
    app[AUTH_LIMITER] = AttemptLimiter("auth", config.auth_failures_per_minute)
    app[ENROLL_LIMITER] = AttemptLimiter("enroll", config.enroll_attempts_per_minute)
    app[METRICS].register(ThrottleCollector([app[AUTH_LIMITER], app[ENROLL_LIMITER]]))
    app[EVENT_STREAMS] = set()
    app.on_shutdown.append(_end_event_streams)
    app.cleanup_ctx.append(leadership_lifecycle)
    for lifecycle in BACKGROUND:
        run_when_active(app, lifecycle)
    for module in ROUTE_MODULES:
        module.register(app)
    # Last: every feature's start-up has run when the controller becomes active.
    app.on_startup.append(startup_complete)
    return app


def tls_context(config: ControllerConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    assert config.tls_cert is not None and config.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def control_socket_path(data_dir: Path) -> Path:
    """Where the local control socket goes (Unix socket paths are limited to ~100 bytes)."""
    path = data_dir.resolve() / "control.sock"
    if len(os.fsencode(path)) < 100:
        return path
    return Path(tempfile.mkdtemp(prefix="polyfleet-")) / "control.sock"


def read_runtime(data_dir: Path) -> dict[str, str] | None:
    """What a running server wrote about itself (url, control socket), or None."""
    try:
        data = json.loads((data_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def serve(
    config: ControllerConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    process_wide_gc_tuning: bool = True,
) -> None:
    """Run the server until SIGTERM/SIGINT (or ``stop``): TCP (TLS if set) + control socket.

    A controller deposed by another one (PostgreSQL) ends its application and starts a new
    one on the same address, as a standby; a store it cannot use ends the server with that
    error.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    housekeeping = asyncio.create_task(gc_housekeeping()) if process_wide_gc_tuning else None
    # The embedded store makes it; on PostgreSQL it holds only the control socket, artifacts
    # and bundles.
    try:
        await asyncio.to_thread(config.data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreUnavailable(cannot_open(config.data_dir, exc)) from exc
    socket_path = control_socket_path(config.data_dir)
    runtime = config.data_dir / RUNTIME_FILE
    port = config.listen_port
    first = True
    try:
        while True:
            app = create_app(config)
            # The keep-alive timer also closes a connection whose request headers do not arrive.
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, keepalive_timeout=config.read_timeout_s
            )
            await runner.setup()
            try:
                context = tls_context(config)
                tcp = GuardedTCPSite(
                    runner,
                    app[CONNECTION_GUARD],
                    host=config.listen_host,
                    port=port,
                    ssl_context=context,
                )
                await tcp.start()
                host, port = runner.addresses[0][:2]
                shown_host = f"[{host}]" if ":" in host else host
                url = f"{'https' if context else 'http'}://{shown_host}:{port}"
                announce(app, config.advertise_url or url)
                try:
                    await asyncio.to_thread(socket_path.unlink, missing_ok=True)
                    control = web.UnixSite(runner, str(socket_path))
                    await control.start()
                    await asyncio.to_thread(os.chmod, socket_path, 0o600)
                    await asyncio.to_thread(
                        write_atomically,
                        runtime,
                        json.dumps(
                            {"url": url, "control_socket": str(socket_path), "pid": os.getpid()}
                        ),
                    )
                except OSError as exc:
                    # The data directory's disk, not the listener: say which path and why.
                    raise StoreUnavailable(cannot_open(config.data_dir, exc)) from exc
                if first:
                    log.info("controller listening on %s (data in %s)", url, config.data_dir)
                    if on_ready is not None:
                        on_ready(url)
                    first = False
                await _until_either(stop, app[LEADERSHIP].ended)
            finally:
                await runner.cleanup()
            leadership = app[LEADERSHIP]
            if stop.is_set():
                log.info("controller stopping")
                return
            if leadership.failure is not None:
                raise leadership.failure
            log.info("controller starting again as a standby")
    finally:
        if housekeeping is not None:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
        await asyncio.to_thread(runtime.unlink, missing_ok=True)
        await asyncio.to_thread(socket_path.unlink, missing_ok=True)


async def _until_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waits = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


async def gc_housekeeping(
    thresholds: tuple[int, int] = GC_YOUNG_THRESHOLDS, full_interval_s: float = GC_FULL_INTERVAL_S
) -> None:
    """Collect young objects automatically and often, and everything only on a schedule.

    The state is millions of small acyclic dicts (freed by reference counting); the automatic
    collector's full passes walk all of them again and again under ingestion and cost about
    a third of the throughput in the benchmark, so full passes run every ten minutes only.
    Young objects are collected by allocation count. A batch's objects live until its
    listeners are done with it, a few passes of the event loop: with a small first threshold
    (100) nearly all of them were still alive at a pass and were walked twice on their way
    to the oldest generation, which cost the ingest benchmark about a tenth of its CPU time.
    At 50,000 most are gone by the next pass; a pass takes some 50 ms under ingestion.
    """
    saved = gc.get_threshold()
    gc.set_threshold(*thresholds, _GC_NO_AUTOMATIC_FULL_PASS)
    loop = asyncio.get_running_loop()
    try:
        while True:
            await asyncio.sleep(full_interval_s)
            started = loop.time()
            gc.collect()
            log.debug("full garbage collection took %.3f s", loop.time() - started)
    finally:
        gc.set_threshold(*saved)
