"""What expires or closes when, per site, so contracts are renewed and updates planned in time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.calendar import warsaw_date
from polyfleet.controller.domain.entitlement import CoveredDays, coverage
from polyfleet.controller.domain.plans import PlanCatalogue

EventKind = Literal[
    "contract_ends", "warranty_ends", "patches_end", "upgrades_end", "purchase_window_closes"
]
#: Longest forecast horizon accepted, in days.
MAX_FORECAST_DAYS = 3660


@dataclass(frozen=True, kw_only=True)
class ForecastEvent:
    """One right of one device that ends on ``last_day`` (its last covered day, E1)."""

    kind: EventKind
    last_day: date
    days_left: int
    serial: str
    site: str
    room: str
    model: str
    plan: str | None = None
    contract_number: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.last_day.isoformat(),
            "days_left": self.days_left,
            "kind": self.kind,
            "serial": self.serial,
            "room": self.room,
            "model": self.model,
            "plan": self.plan,
            "contract_number": self.contract_number,
        }


@dataclass(frozen=True, kw_only=True)
class SiteForecast:
    """The events of one site, soonest first."""

    site: str
    events: tuple[ForecastEvent, ...]

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "events": [event.to_json() for event in self.events]}


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """Every site's events between ``at`` and ``at`` + ``days``."""

    at: datetime
    days: int
    sites: tuple[SiteForecast, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "days": self.days,
            "until": (warsaw_date(self.at) + timedelta(days=self.days)).isoformat(),
            "sites": [site.to_json() for site in self.sites],
        }


def _ends(window: CoveredDays, first: date, last: date) -> list[date]:
    return [span.end for span in window.spans if first <= span.end <= last]


def _event(
    asset: Asset, kind: EventKind, last_day: date, today: date, plan: str | None, number: str | None
) -> ForecastEvent:
    return ForecastEvent(
        kind=kind,
        last_day=last_day,
        days_left=(last_day - today).days,
        serial=asset.serial,
        site=asset.site,
        room=asset.room,
        model=asset.model,
        plan=plan,
        contract_number=number,
    )


def forecast(assets: Iterable[Asset], plans: PlanCatalogue, at: datetime, days: int) -> Forecast:
    """Ends of contracts, warranty, patch and upgrade windows and H5 purchase windows in range."""
    if not 0 <= days <= MAX_FORECAST_DAYS:
        raise ValueError(f"days: {days} is outside 0..{MAX_FORECAST_DAYS}")
    today = warsaw_date(at)
    horizon = today + timedelta(days=days)
    by_site: dict[str, list[ForecastEvent]] = {}
    for asset in assets:
        events = by_site.setdefault(asset.site, [])
        cover = coverage(asset, plans)

        def add(
            kind: EventKind, day: date, plan: str | None = None, num: str | None = None
        ) -> None:
            events.append(_event(asset, kind, day, today, plan, num))  # noqa: B023 - called at once

        if asset.contracts:
            # E5: a renewal already registered continues the chain; only its end lapses.
            last = asset.contracts[-1]
            if today <= last.end <= horizon:
                add("contract_ends", last.end, last.plan, last.number)
        for end in _ends(cover.warranty, today, horizon):
            add("warranty_ends", end)
        for end in _ends(cover.patches, today, horizon):
            add("patches_end", end)
        for end in _ends(cover.upgrades, today, horizon):
            add("upgrades_end", end)
        if not asset.contracts:
            for plan in plans.plans.values():
                limit = plan.purchase_to_contract_days
                if limit is None or (
                    plan.eligible_models is not None and asset.model not in plan.eligible_models
                ):
                    continue
                closes = asset.purchase_date + timedelta(days=limit)  # H5, E6: day 30 still counts
                if today <= closes <= horizon:
                    add("purchase_window_closes", closes, plan.id)
    sites = tuple(
        SiteForecast(
            site=site,
            events=tuple(sorted(events, key=lambda e: (e.last_day, e.serial, e.kind))),
        )
        for site, events in sorted(by_site.items())
    )
    return Forecast(at=at, days=days, sites=sites)
