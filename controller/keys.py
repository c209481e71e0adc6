"""Typed ``web.AppKey``s: the controller's services (``app[CORE]``) and the metrics registry."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry

from polyfleet.controller.core import Controller

#: Every service, built once by ``build_controller``: ``app[CORE].inventory``...
CORE = web.AppKey("core", Controller)
METRICS = web.AppKey("metrics", CollectorRegistry)
#: The handlers serving ``GET /api/v1/events/stream`` now (ended at shutdown: they never
#: finish on their own).
EVENT_STREAMS = web.AppKey("event_streams", set[asyncio.Task[object]])
