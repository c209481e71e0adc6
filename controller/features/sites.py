"""Sites: list, add, rename or change the time zone, and invite a site's agent."""

from __future__ import annotations

from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.inventory import site_changes
from polyfleet.controller.store.base import Doc


def list_sites(core: Controller, caller: Caller) -> list[Doc]:
    caller.require(Permission.READ)
    return core.inventory.sites()


def site(core: Controller, caller: Caller, site_id: str) -> Doc:
    """One site as ``list_sites`` shows it; ``UnknownSite`` when there is none."""
    caller.require(Permission.READ)
    return core.inventory.site(site_id)


async def add_site(
    core: Controller, caller: Caller, *, site_id: str, name: str, timezone: str
) -> Doc:
    """A new site (``SiteExists`` when the id is taken: ``update_site`` renames)."""
    caller.require(Permission.ADMINISTER)
    await core.inventory.add_site(site_id, name=name, timezone=timezone)
    added = core.inventory.site(site_id)
    details = {"name": added["name"], "timezone": added["timezone"]}
    await record(core, caller, AuditAction.SITE_ADD, f"site:{site_id}", details, site=site_id)
    return added


async def update_site(
    core: Controller,
    caller: Caller,
    site_id: str,
    *,
    name: str | None = None,
    timezone: str | None = None,
) -> Doc:
    """Rename a site or change its time zone."""
    caller.require(Permission.ADMINISTER)
    old, new = await core.inventory.update_site(site_id, name=name, timezone=timezone)
    changes = site_changes(old, new)
    await record(core, caller, AuditAction.SITE_UPDATE, f"site:{site_id}", changes, site=site_id)
    return core.inventory.site(site_id)


async def invite_agent(core: Controller, caller: Caller, site_id: str) -> dict[str, Any]:
    """A one-time enrollment code for the site's agent: ``{code, site, expires_at}``."""
    caller.require(Permission.ADMINISTER)
    code, expires = await core.access.create_invite(site_id)
    details = {"expires_at": expires.isoformat()}
    await record(core, caller, AuditAction.INVITE_CREATE, f"site:{site_id}", details, site=site_id)
    return {"code": code, "site": site_id, "expires_at": expires.isoformat()}
