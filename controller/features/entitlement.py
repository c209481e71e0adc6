"""Entitlement: each device's verdict against its service contract, judged now."""

from __future__ import annotations

from collections.abc import Callable

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.entitlement import EntitlementVerdict


async def verdict_lookup(core: Controller) -> Callable[[str], EntitlementVerdict | None]:
    """Each device's verdict now, by serial (cached: see ``VerdictCache``)."""
    catalogues, cache = core.catalogues, core.verdicts
    releases = await catalogues.releases()
    at = to_warsaw(core.clock())
    day = at.date()
    return lambda serial: cache.verdict(core.store, catalogues.plans, releases, serial, at, day=day)
