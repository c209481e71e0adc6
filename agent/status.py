"""The agent's own status and metrics on a loopback listener (``polyfleet agent status``).

``GET /status`` answers one JSON document (what :class:`AgentStatus` holds);
``GET /metrics`` the same numbers in Prometheus text format. Both are read-only and
served on loopback only: they name devices and paths, never secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from polyfleet.agent.config import DEFAULT_STATUS_LISTEN
from polyfleet.shared.errors import ConfigError, os_error_words

log = logging.getLogger(__name__)

#: A status document: built by the service each time it is asked (cheap: counters only).
StatusSource = Callable[[], dict[str, Any]]


def split_listen(text: str, *, where: str) -> tuple[str, int]:
    """``127.0.0.1:9180`` -> (host, port); ConfigError naming ``where`` otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT (e.g. {DEFAULT_STATUS_LISTEN})")
    return host.strip("[]"), int(port)


class _StatusCollector(Collector):
    """The status document's numbers as Prometheus samples, read at scrape time."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        doc = self._source()
        outbox = doc["outbox"]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            return family

        yield gauge(
            "polyfleet_agent_healthy", "1 when the agent has no problem to report", doc["healthy"]
        )
        yield gauge(
            "polyfleet_agent_outbox_entries", "Reports and notices waiting", outbox["entries"]
        )
        yield gauge("polyfleet_agent_outbox_bytes", "Size of what waits", outbox["bytes"])
        yield gauge(
            "polyfleet_agent_outbox_max_bytes", "The outbox's size limit", outbox["max_bytes"]
        )
        yield gauge(
            "polyfleet_agent_outbox_disk_ok",
            "1 while the outbox's disk takes writes, 0 while it refuses them",
            1.0 if outbox["disk_ok"] else 0.0,
        )
        yield gauge(
            "polyfleet_agent_outbox_memory_entries",
            "Entries only in memory because the disk refused them (lost if the agent stops)",
            outbox["memory_entries"],
        )
        yield counter(
            "polyfleet_agent_outbox_write_failures",
            "Writes of the outbox the disk refused",
            outbox["write_failures"],
        )
        yield counter(
            "polyfleet_agent_outbox_dropped",
            "Reports a full outbox dropped (repeats, then changes folded into later ones)",
            outbox["dropped_total"],
        )
        yield counter(
            "polyfleet_agent_outbox_refused",
            "State changes a full outbox refused (offered again by the next poll)",
            outbox["refused_total"],
        )
        yield gauge(
            "polyfleet_agent_held_reports",
            "Reports the controller refused, kept aside",
            doc["held"]["reports"],
        )
        devices = GaugeMetricFamily(
            "polyfleet_agent_devices", "Configured devices by whether they answer", labels=["state"]
        )
        devices.add_metric(["answering"], doc["devices"]["answering"])
        devices.add_metric(["failing"], len(doc["devices"]["failing"]))
        yield devices
        yield gauge(
            "polyfleet_agent_uplink_up",
            "1 when the last attempt to send to the controller worked",
            1.0 if doc["uplink"]["ok"] else 0.0,
        )
        yield counter(
            "polyfleet_agent_batches_sent",
            "Report batches the controller took",
            doc["uplink"]["batches_sent"],
        )


class StatusServer:
    """``/status`` and ``/metrics`` on ``listen`` (loopback); failing to bind only warns."""

    def __init__(self, source: StatusSource, *, listen: str) -> None:
        self.source = source
        self.listen = listen
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._registry = CollectorRegistry()
        self._registry.register(_StatusCollector(source))

    async def start(self) -> None:
        if not self.listen:
            return
        host, port = split_listen(self.listen, where="agent.status_listen")
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # The agent's work does not depend on it: say so, and carry on without.
            log.warning(
                "no status or metrics this run: cannot listen on %s (%s); set "
                "agent.status_listen to a free HOST:PORT",
                self.listen,
                os_error_words(exc),
            )
            return
        self._runner = runner
        bound = runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        log.info("status on %s/status, metrics on %s/metrics", self.url, self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.source())

    async def _metrics(self, _request: web.Request) -> web.Response:
        # A few counters: cheap enough for the event loop, and read where they change.
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
