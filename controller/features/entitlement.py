"""Entitlement: each device's verdict against its service contract, and what expires when."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.calendar import to_warsaw, warsaw_date
from polyfleet.controller.domain.entitlement import EntitlementVerdict
from polyfleet.controller.domain.forecast import MAX_FORECAST_DAYS, Forecast
from polyfleet.controller.errors import BadRequest
from polyfleet.controller.features.caller import Caller, Permission
from polyfleet.controller.services import entitlement as service
from polyfleet.controller.services.entitlement import UnknownAsset


def now(core: Controller) -> datetime:
    """The controller's clock, in Warsaw (every contract rule reads the Warsaw day, E1)."""
    return to_warsaw(core.clock())


async def verdict_lookup(
    core: Controller, at: datetime | None = None
) -> Callable[[str], EntitlementVerdict | None]:
    """Each device's verdict at ``at`` (default now), by serial (cached: ``VerdictCache``)."""
    catalogues, cache = core.catalogues, core.verdicts
    releases = await catalogues.releases()
    moment = at or now(core)
    day = warsaw_date(moment)
    return lambda serial: cache.verdict(
        core.registry, core.inventory, catalogues.plans, releases, serial, moment, day=day
    )


async def live_verdicts(
    core: Controller, at: datetime, *, site: str | None = None
) -> list[EntitlementVerdict]:
    """Verdicts of every registered or reported device (of ``site``) at ``at``, by serial."""
    releases = await core.catalogues.releases()
    return service.live_verdicts(
        core.registry,
        core.inventory,
        core.catalogues.plans,
        releases,
        at,
        site=site,
        cache=core.verdicts,
    )


def registry_forecast(
    core: Controller, at: datetime, days: int, *, site: str | None = None
) -> Forecast:
    """What expires or closes within ``days`` of ``at`` (of ``site``), cached per day."""
    return core.forecasts.forecast(core.registry, core.catalogues.plans, at, days, site=site)


async def device_verdict(
    core: Controller, caller: Caller, serial: str, *, at: datetime | None = None
) -> dict[str, Any]:
    """What one device may get at ``at`` (default now): ``{at, **verdict}``; ``UnknownAsset``
    when neither the registry nor a report knows the serial."""
    caller.require(Permission.READ)
    moment = at or now(core)
    verdict = (await verdict_lookup(core, moment))(serial)
    if verdict is None:
        raise UnknownAsset(serial)
    return {"at": moment.isoformat(), **verdict.to_json()}


async def all_verdicts(
    core: Controller, caller: Caller, *, at: datetime | None = None, site: str | None = None
) -> dict[str, Any]:
    """Verdicts of every registered or reported device (of ``site``): ``{at, assets}``."""
    caller.require(Permission.READ)
    moment = at or now(core)
    verdicts = await live_verdicts(core, moment, site=site)
    return {"at": moment.isoformat(), "assets": [verdict.to_json() for verdict in verdicts]}


def forecast(
    core: Controller,
    caller: Caller,
    days: int,
    *,
    at: datetime | None = None,
    site: str | None = None,
) -> Forecast:
    """What expires or closes when, per site, within ``days`` (0..``MAX_FORECAST_DAYS``)."""
    caller.require(Permission.READ)
    if not 0 <= days <= MAX_FORECAST_DAYS:
        raise BadRequest(f"days: a whole number 0..{MAX_FORECAST_DAYS}", field="days")
    return registry_forecast(core, at or now(core), days, site=site)


async def entitlement_summary(
    core: Controller, caller: Caller, *, days: int, site: str | None = None
) -> dict[str, Any]:
    """The entitlement page: the forecast, contracts flagged ineligible (with their rules),
    and per site how many devices carry each verdict flag."""
    caller.require(Permission.READ)
    moment = now(core)
    registry, inventory = core.registry, core.inventory
    flagged = sorted(
        (asset for asset in registry.assets(site) if asset.ineligible_rules),
        key=lambda asset: (asset.site, asset.serial),
    )
    flag_counts: dict[str, Counter[str]] = {}
    for verdict in await live_verdicts(core, moment, site=site):
        where = registry.site_of(verdict.serial) or inventory.site_of(verdict.serial) or "?"
        flag_counts.setdefault(where, Counter()).update(verdict.flags)
    return {
        "forecast": registry_forecast(core, moment, days, site=site),
        "sites": inventory.sites(),
        "flagged": flagged,
        "flag_counts": flag_counts,
        "plans": core.catalogues.plans,
        "today": moment.date(),
    }
