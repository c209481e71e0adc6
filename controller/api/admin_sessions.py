"""Admin sessions on the units: taken from every accepted batch while this controller is
active, told as security events, counted in ``/metrics``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from polyfleet.controller.active import run_when_active
from polyfleet.controller.events import Event, SnapshotsIngested
from polyfleet.controller.keys import CORE, METRICS
from polyfleet.controller.services.admin_sessions import AdminSessionWatch


class AdminSessionCollector(Collector):
    """Other admins' sessions open on the units, and the unexpected ones since start."""

    def __init__(self, watch: AdminSessionWatch) -> None:
        self._watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        open_now = GaugeMetricFamily(
            "polyfleet_admin_sessions_open",
            "Admin sessions open on the units that are not the agents' own, by site and kind",
            labels=["site", "kind"],
        )
        for (site, kind), count in sorted(self._watch.open_sessions().items()):
            open_now.add_metric([site, kind], count)
        yield open_now
        unexpected = CounterMetricFamily(
            "polyfleet_admin_sessions_unexpected",
            "New admin sessions from outside the site's admin networks since start (each a "
            "security event in the audit log), by site",
            labels=["site"],
        )
        for site, count in sorted(self._watch.stats.unexpected.items()):
            unexpected.add_metric([site], count)
        yield unexpected


async def _feed(watch: AdminSessionWatch, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, SnapshotsIngested) and event.site_id is not None:
            await watch.take(event.site_id, event.agent_id, event.documents)


async def admin_session_context(app: web.Application) -> AsyncIterator[None]:
    """Background work for ``cleanup_ctx``: the sessions of every accepted batch."""
    watch = app[CORE].admin_sessions
    collector = AdminSessionCollector(watch)
    app[METRICS].register(collector)
    subscription = app[CORE].bus.subscribe_batches(
        lambda events: _feed(watch, events), kinds={SnapshotsIngested}
    )
    try:
        yield
    finally:
        subscription.cancel()
        app[METRICS].unregister(collector)


def register(app: web.Application) -> None:
    run_when_active(app, admin_session_context)
