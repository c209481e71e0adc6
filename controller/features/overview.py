"""The overview: the fleet at a glance, as ``GET /api/v1/overview``, the overview page and the
kiosk all show it."""

from __future__ import annotations

from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.entitlement import EXPIRY_HORIZONS
from polyfleet.controller.features.caller import Caller, Permission
from polyfleet.controller.features.entitlement import live_verdicts, now, registry_forecast
from polyfleet.controller.services.overview import CHANGES_WINDOW, OverviewInputs, build_overview

#: Rollouts the overview shows: those that move, or may move again.
ROLLOUTS_UNDER_WAY = ("running", "paused", "halted")


async def overview(core: Controller, caller: Caller) -> dict[str, Any]:
    """Rooms by their worst device, urgent tickets, firmware compliance, what expires within
    30/60/90/180 days, what changed in 24 hours and the rollouts under way; ``tickets`` is
    None while the ticket service is starting."""
    caller.require(Permission.READ)
    moment = now(core)
    releases = await core.catalogues.releases()
    tickets = core.tickets.service
    rollouts = core.rollouts
    inputs = OverviewInputs(
        sites=core.inventory.sites(),
        devices=core.inventory.fleet(),
        tickets=None if tickets is None else tickets.tickets(),
        verdicts=await live_verdicts(core, moment),
        releases=releases,
        forecast=registry_forecast(core, moment, max(EXPIRY_HORIZONS)),
        events=core.bus.recent(moment - CHANGES_WINDOW),
        now=moment,
        rollouts=[
            rollouts.progress(found["id"])
            for found in rollouts.rollouts()
            if found["status"] in ROLLOUTS_UNDER_WAY
        ],
        maintenance=core.maintenance.windows(),
    )
    return build_overview(inputs)
