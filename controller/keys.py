"""Typed ``web.AppKey``s: where route modules and features find the core services."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from polyfleet.controller.clock import Clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.core import Controller
from polyfleet.controller.events import EventBus
from polyfleet.controller.services.access import AccessService
from polyfleet.controller.services.audit import AuditLog
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.services.jobs import JobService
from polyfleet.controller.store.base import Store

CONFIG = web.AppKey("config", ControllerConfig)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
STORE = web.AppKey("store", Store)
EVENT_BUS = web.AppKey("event_bus", EventBus)
ACCESS = web.AppKey("access", AccessService)
INVENTORY = web.AppKey("inventory", Inventory)
JOBS = web.AppKey("jobs", JobService)
METRICS = web.AppKey("metrics", CollectorRegistry)
AUDIT = web.AppKey("audit", AuditLog)
CORE = web.AppKey("core", Controller)
