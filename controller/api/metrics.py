"""``/metrics`` in Prometheus text format: devices by labels, ingestion and store timings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from polyfleet.controller.http.connections import ConnectionGuard
from polyfleet.controller.http.errors import store_health
from polyfleet.controller.http.spec import PUBLIC, READERS, endpoint
from polyfleet.controller.http.throttle import AttemptLimiter
from polyfleet.controller.keys import CORE, METRICS
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.base import Store

INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class InventoryCollector(Collector):
    """Computed at scrape time from the in-memory state (10,000 devices take a few ms)."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        devices = GaugeMetricFamily(
            "polyfleet_devices",
            "Devices by site, model, provider, firmware and health",
            labels=["site", "model", "provider", "firmware", "health"],
        )
        counts: Counter[tuple[str, str, str, str, str]] = Counter()
        for doc in self._inventory.fleet().values():
            firmware = (doc.get("firmware") or {}).get("version", "")
            health = (doc.get("health") or {}).get("state", "unreachable")
            counts[
                (doc["site_id"], doc.get("model", ""), doc.get("provider", ""), firmware, health)
            ] += 1
        for labels, count in sorted(counts.items()):
            devices.add_metric(list(labels), count)
        yield devices
        online = GaugeMetricFamily(
            "polyfleet_site_agent_online",
            "1 when an agent of the site calls in, 0 when it went silent (absent: never enrolled)",
            labels=["site"],
        )
        for site_id in self._inventory.site_ids():
            state = self._inventory.site_online(site_id)
            if state is not None:
                online.add_metric([site_id], 1.0 if state else 0.0)
        yield online
        stats = self._inventory.stats
        reports = CounterMetricFamily(
            "polyfleet_reports_ingested",
            "Reports received from agents, by result",
            labels=["result"],
        )
        reports.add_metric(["accepted"], stats.accepted)
        reports.add_metric(["duplicate"], stats.duplicates)
        # Older than a device's full retained history on arrival: neither kept nor accepted.
        reports.add_metric(["superseded"], stats.superseded)
        # Refused one by one, the rest of their batch stored (by code below).
        reports.add_metric(["refused"], sum(stats.refused_reports.values()))
        yield reports
        yield CounterMetricFamily(
            "polyfleet_report_batches_refused",
            "Batches refused for naming another site's devices",
            value=stats.refused_batches,
        )
        by_code = CounterMetricFamily(
            "polyfleet_reports_refused",
            "Reports refused one by one (the rest of their batch stored), by why",
            labels=["code"],
        )
        for code, count in sorted(stats.refused_reports.items()):
            by_code.add_metric([code], count)
        yield by_code
        yield CounterMetricFamily(
            "polyfleet_reported_characters_marked",
            "Control, format and bidirectional characters in what agents and devices report, "
            "replaced by a visible mark where they enter",
            value=stats.marked_characters,
        )


class StoreCollector(Collector):
    """Whether the store's disk refuses writes, and what is not on disk yet."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = store_health(self._store)
        if state is None:
            return
        yield GaugeMetricFamily(
            "polyfleet_store_failing",
            "1 while the store's disk or database takes no writes (changes wait or are "
            "refused, and are retried)",
            value=1.0 if state.failing else 0.0,
        )
        yield GaugeMetricFamily(
            "polyfleet_store_not_durable_changes",
            "Applied changes that are not on disk yet while writes fail",
            value=state.not_durable,
        )
        yield CounterMetricFamily(
            "polyfleet_store_write_failures",
            "Store writes the disk refused",
            value=state.write_failures,
        )


class ConnectionCollector(Collector):
    """Connections without a credential, and those closed for holding on too long."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "polyfleet_unauthenticated_connections",
            "Open connections that have not shown a credential yet",
            value=self._guard.unauthenticated,
        )
        closed = CounterMetricFamily(
            "polyfleet_connections_closed",
            "Connections the controller closed: too many without a credential, or a request "
            "body that did not arrive in time",
            labels=["reason"],
        )
        stats = self._guard.stats
        closed.add_metric(["unauthenticated_limit"], stats.closed_unauthenticated)
        closed.add_metric(["read_timeout"], stats.closed_read_timeout)
        yield closed


class ThrottleCollector(Collector):
    """Failed credentials and enrollment attempts counted, and those refused as too many."""

    def __init__(self, limiters: Sequence[AttemptLimiter]) -> None:
        self._limiters = limiters

    def collect(self) -> Iterator[CounterMetricFamily]:
        attempts = CounterMetricFamily(
            "polyfleet_auth_attempts_counted",
            "Attempts counted against the per-address limits: failed credentials (kind "
            "auth) and failed enrollment codes (kind enroll)",
            labels=["kind"],
        )
        limited = CounterMetricFamily(
            "polyfleet_rate_limited",
            "Requests answered 429 because their client address was over a limit, by kind",
            labels=["kind"],
        )
        for limiter in self._limiters:
            attempts.add_metric([limiter.kind], limiter.attempts_total)
            limited.add_metric([limiter.kind], limiter.limited_total)
        yield attempts
        yield limited


def build_registry(
    store: Store, inventory: Inventory, guard: ConnectionGuard | None = None
) -> CollectorRegistry:
    """A registry of its own per application (several controllers can share a process)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(InventoryCollector(inventory))
    registry.register(StoreCollector(store))
    if guard is not None:
        registry.register(ConnectionCollector(guard))
    ingest = Histogram(
        "polyfleet_ingest_seconds",
        "Time to validate, apply and durably store one report batch",
        buckets=INGEST_BUCKETS,
        registry=registry,
    )
    inventory.stats.observers.append(ingest.observe)
    flush = Histogram(
        "polyfleet_store_flush_seconds",
        "Time of store writes: journal group commits (fsync) and full snapshots",
        labelnames=["kind"],
        buckets=INGEST_BUCKETS,
        registry=registry,
    )
    observers = getattr(store, "flush_observers", None)
    if isinstance(observers, list):
        observers.append(lambda kind, seconds: flush.labels(kind=kind).observe(seconds))
    return registry


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


metrics_protected = endpoint(
    summary="Prometheus metrics (text format)",
    roles=READERS,
    response_media="text/plain",
    errors=(401,),
    tags=("metrics",),
)(_metrics)


async def metrics_public(request: web.Request) -> web.Response:
    return await _metrics(request)


endpoint(
    summary="Prometheus metrics (text format)",
    roles=PUBLIC,
    response_media="text/plain",
    tags=("metrics",),
)(metrics_public)


def register(app: web.Application) -> None:
    handler = metrics_protected if app[CORE].config.metrics_require_token else metrics_public
    app.router.add_get("/metrics", handler, allow_head=False)
