"""The asset registry: import a registry file (checked whole, or only checked) and list it."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.assets import (
    EncodingProblem,
    decode_csv,
    is_polled_model,
    parse_registry,
)
from polyfleet.controller.errors import BadRequest
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.features.entitlement import now
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.entitlement import import_details
from polyfleet.controller.store.base import Doc


def decode_registry(raw: bytes, charset: str | None = None) -> str:
    """A registry file's text: in ``charset`` when the sender named one, else as spreadsheets
    save CSV (UTF-8, or Polish Excel's Windows-1250). BadRequest (``body``) when it is not."""
    if charset:
        try:
            return raw.decode(charset).removeprefix("\ufeff")
        except (UnicodeDecodeError, LookupError) as exc:
            raise BadRequest(f"body: not {charset} text: {exc}", field="body") from None
    try:
        return decode_csv(raw).text
    except EncodingProblem as exc:
        raise BadRequest(f"body: {exc}", field="body") from None


async def import_registry(
    core: Controller,
    caller: Caller,
    text: str,
    *,
    dry_run: bool,
    today: date | None = None,
) -> dict[str, Any]:
    """Check a registry CSV whole and import it (or, ``dry_run``, only say what it would do):
    ``{dry_run, added, updated, unchanged, ineligible, ineligible_rules}``.

    Any bad cell refuses the whole file, changing nothing: ``RegistryImportError`` lists every
    problem by line and column (free text such as rooms and contract numbers goes through the
    one checker of admin input: a line break is refused, naming the column). ``today`` refuses
    purchases after it (default: the controller's Warsaw day).
    """
    caller.require(Permission.ADMINISTER)
    day = today or now(core).date()
    # Ten thousand rows take a while: parsed off the event loop.
    assets = await asyncio.to_thread(parse_registry, text, core.catalogues.plans, today=day)
    plan = await core.registry.import_assets(assets, dry_run=dry_run)
    if not dry_run:
        details = import_details(plan, text)
        await record(core, caller, AuditAction.ASSETS_IMPORT, "assets", details)
    return {"dry_run": dry_run, **plan.to_json()}


def list_assets(core: Controller, caller: Caller, *, site: str | None = None) -> list[Doc]:
    """The registered assets (of ``site``), by serial, as stored."""
    caller.require(Permission.READ)
    return [
        {**asset.to_doc(), "monitoring": monitoring(core, asset.serial, asset.model)}
        for asset in core.registry.assets(site)
    ]


def monitoring(core: Controller, serial: str, model: str) -> str:
    """``polled`` (an agent reports it), ``not_seen`` (a polled model no agent reported
    yet) or ``not_monitored`` (a Poly product the agents do not poll: entitlement, expiry
    forecast and hand-opened tickets only)."""
    if not is_polled_model(model):
        return "not_monitored"
    return "polled" if core.inventory.find_device(serial) is not None else "not_seen"
