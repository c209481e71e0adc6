"""Events: health changes, unreachable devices, offline sites, jobs... as the bus keeps them."""

from __future__ import annotations

from polyfleet.controller.core import Controller
from polyfleet.controller.features.caller import Caller, Permission
from polyfleet.controller.store.base import Doc


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
