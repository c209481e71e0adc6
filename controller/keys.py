"""Typed ``web.AppKey``s: the controller's services (``app[CORE]``) and the metrics registry."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from polyfleet.controller.core import Controller

#: Every service, built once by ``build_controller``: ``app[CORE].inventory``...
CORE = web.AppKey("core", Controller)
METRICS = web.AppKey("metrics", CollectorRegistry)
