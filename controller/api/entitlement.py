"""Entitlement API: the asset registry import, live verdicts per device, and the expiry forecast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from polyfleet.controller.domain.assets import COLUMNS
from polyfleet.controller.domain.entitlement import Flag, parse_moment
from polyfleet.controller.domain.forecast import MAX_FORECAST_DAYS
from polyfleet.controller.events import DeviceAdded, Event
from polyfleet.controller.features import assets, entitlement
from polyfleet.controller.http.caller import caller
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import ADMINS, READERS, Param, endpoint
from polyfleet.controller.keys import CORE
from polyfleet.shared.schema import ErrorBody

#: The catalogues of ``app[CORE]``, for route modules not yet reading them there.


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImportProblemOut(_Out):
    line: int
    column: str
    message: str
    rule: str | None = Field(
        default=None, description="the service-terms rule the cell breaks, if any"
    )


class ImportRejected(_Out):
    """The file has bad rows: nothing was imported; `problems` lists each by line and column."""

    error: ErrorBody
    problems: list[ImportProblemOut]


class ImportResult(_Out):
    dry_run: bool
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    ineligible: list[str]
    #: serial -> rule ids its contracts break (H1, H5); such contracts are imported, flagged.
    ineligible_rules: dict[str, list[str]]


class FirmwareOut(_Out):
    installed: str | None
    next: str | None
    kind: Literal["patch", "upgrade"] | None
    entitled: bool | None
    entitled_next: str | None


class VerdictOut(_Out):
    serial: str
    plan: str | None
    warranty_until: date | None
    patches_until: date | None
    upgrades_until: date | None
    window: Literal["8x5", "24x7"] | None
    reaction_hours: int | None
    repair: str | None
    language: Literal["pl", "en"] | None
    eligible: bool
    ineligible_rules: list[str]
    flags: list[Flag]
    firmware: FirmwareOut


class DeviceVerdictOut(VerdictOut):
    at: datetime


class VerdictList(_Out):
    at: datetime
    assets: list[VerdictOut]


class ForecastEventOut(_Out):
    date: date
    days_left: int
    kind: Literal[
        "contract_ends", "warranty_ends", "patches_end", "upgrades_end", "purchase_window_closes"
    ]
    serial: str
    room: str
    model: str
    plan: str | None
    contract_number: str | None


class SiteForecastOut(_Out):
    site: str
    events: list[ForecastEventOut]


class ForecastOut(_Out):
    at: datetime
    days: int
    until: date
    sites: list[SiteForecastOut]


class ContractFlagOut(_Out):
    """Why a contract is flagged: the rule and what breaks it (model, term, late_purchase,
    renewal, chain_length; rule: stored before codes existed)."""

    rule: str
    code: str


class ContractOut(_Out):
    plan: str
    contract_number: str
    contract_start: date
    contract_end: date
    ineligible_rules: list[str]
    flags: list[ContractFlagOut] = []


class AssetOut(_Out):
    serial: str
    model: str
    purchase_date: date
    site: str
    room: str
    host_serial: str | None
    contracts: list[ContractOut]
    monitoring: Literal["polled", "not_seen", "not_monitored"] = Field(
        default="polled",
        description="polled: an agent reports it; not_seen: no agent reported it yet; "
        "not_monitored: a Poly product the agents do not poll (entitlement and hand-opened "
        "tickets only)",
    )


class AssetList(_Out):
    assets: list[AssetOut]


#: ``?at=``: a moment with its offset, or a date meaning its midnight in Warsaw (C2).
AT_SCHEMA = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]
}
SITE_PARAM = Param("only this site id")
REGISTRY_CSV = {
    "type": "string",
    "description": "UTF-8 CSV (a BOM is allowed) whose header names the columns "
    + ",".join(COLUMNS)
    + "; contract columns stay empty for the plain manufacturer warranty.",
}


def _moment(request: web.Request) -> datetime | None:
    """``?at=`` (ISO 8601 with offset, or a date) for what-if questions; None: now."""
    text = request.query.get("at")
    if not text:
        return None
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"at: {exc}", "at") from None


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ApiError(400, "invalid", f"{name}: expected 1 or 0, got {value!r}", name)


@endpoint(
    summary="Import a registry CSV (checked whole; any bad row changes nothing)",
    roles=ADMINS,
    request_media="text/csv",
    request_schema=REGISTRY_CSV,
    response=ImportResult,
    query={
        "dry_run": Param(
            "true (or 1, yes) to check and report without changing anything",
            {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no"]},
        ),
        "at": Param("check purchase dates against this day instead of today", AT_SCHEMA),
    },
    errors=(400,),
    error_models={422: ImportRejected},
    tags=("entitlement",),
)
async def import_assets(request: web.Request) -> web.Response:
    dry_run = _flag(request, "dry_run")
    at = _moment(request)
    text = assets.decode_registry(await request.read(), request.charset)
    result = await assets.import_registry(
        request.app[CORE],
        caller(request),
        text,
        dry_run=dry_run,
        today=None if at is None else at.date(),
    )
    return web.json_response(result)


@endpoint(
    summary="The asset registry",
    roles=READERS,
    response=AssetList,
    query={"site": SITE_PARAM},
    tags=("entitlement",),
)
async def list_assets(request: web.Request) -> web.Response:
    site = request.query.get("site")
    found = assets.list_assets(request.app[CORE], caller(request), site=site)
    return web.json_response({"assets": found})


@endpoint(
    summary="What one device may get now (registry plus the firmware its agent reported)",
    roles=READERS,
    response=DeviceVerdictOut,
    query={"at": Param("judge at this moment instead of now (e.g. a planned install)", AT_SCHEMA)},
    errors=(400, 404),
    tags=("entitlement",),
)
async def device_entitlement(request: web.Request) -> web.Response:
    serial = request.match_info["serial"]
    verdict = await entitlement.device_verdict(
        request.app[CORE], caller(request), serial, at=_moment(request)
    )
    return web.json_response(verdict)


@endpoint(
    summary="Verdicts of every registered or reported device",
    roles=READERS,
    response=VerdictList,
    query={"site": SITE_PARAM, "at": Param("judge at this moment instead of now", AT_SCHEMA)},
    errors=(400,),
    tags=("entitlement",),
)
async def all_entitlements(request: web.Request) -> web.Response:
    verdicts = await entitlement.all_verdicts(
        request.app[CORE], caller(request), at=_moment(request), site=request.query.get("site")
    )
    return web.json_response(verdicts)


@endpoint(
    summary="What expires or closes when, per site, over the next N days",
    roles=READERS,
    response=ForecastOut,
    query={
        "days": Param(
            "horizon in days",
            {"type": "integer", "minimum": 0, "maximum": MAX_FORECAST_DAYS, "default": 90},
        ),
        "site": SITE_PARAM,
        "at": Param("start from this moment instead of now", AT_SCHEMA),
    },
    errors=(400,),
    tags=("entitlement",),
)
async def entitlement_forecast(request: web.Request) -> web.Response:
    text = request.query.get("days", "90")
    if not text.isdigit():
        raise ApiError(400, "invalid", f"days: a whole number 0..{MAX_FORECAST_DAYS}", "days")
    result = entitlement.forecast(
        request.app[CORE],
        caller(request),
        int(text),
        at=_moment(request),
        site=request.query.get("site"),
    )
    return web.json_response(result.to_json())


async def _catalogue_lifecycle(app: web.Application) -> AsyncIterator[None]:
    # Read at startup, off the event loop; a bad catalogue stops the server with its file and key.
    await app[CORE].catalogues.load()
    yield


async def _placement_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """A device first reported after the registry import still gets the registry's room."""
    registry = app[CORE].registry

    async def on_added(event: Event) -> None:
        if event.serial is not None:
            await registry.place_new_device(event.serial)

    subscription = app[CORE].bus.subscribe(on_added, kinds={DeviceAdded})
    yield
    subscription.cancel()


def register(app: web.Application) -> None:
    app.cleanup_ctx.append(_catalogue_lifecycle)
    app.cleanup_ctx.append(_placement_lifecycle)
    router = app.router
    router.add_post("/api/v1/assets/import", import_assets)
    router.add_get("/api/v1/assets", list_assets, allow_head=False)
    router.add_get("/api/v1/devices/{serial}/entitlement", device_entitlement, allow_head=False)
    router.add_get("/api/v1/entitlement", all_entitlements, allow_head=False)
    router.add_get("/api/v1/entitlement/forecast", entitlement_forecast, allow_head=False)
