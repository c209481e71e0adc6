"""Sites: list, add, rename or change the time zone, set the contact, delivery address and
admin networks, and invite a site's agent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.admin_input import network as checked_network
from polyfleet.controller.domain.contacts import address_changes, contact_changes
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
    contact: Mapping[str, Any] | None = None,
    delivery_address: Mapping[str, Any] | None = None,
    admin_networks: Sequence[str] | None = None,
) -> Doc:
    """Rename a site, change its time zone, its authorised reporter and RMA delivery address
    (the fields given; "" clears one), or its admin networks (the whole list).

    Tickets of the site held for a contact or an address that now has it go out.
    """
    caller.require(Permission.ADMINISTER)
    checked_contact = None if contact is None else contact_changes(contact)
    checked_address = None if delivery_address is None else address_changes(delivery_address)
    networks = None
    if admin_networks is not None:
        networks = [
            checked_network(text, field=f"admin_networks[{index}]")
            for index, text in enumerate(admin_networks)
        ]
    old, new = await core.inventory.update_site(
        site_id,
        name=name,
        timezone=timezone,
        contact=checked_contact,
        delivery_address=checked_address,
        admin_networks=networks,
    )
    changes = site_changes(old, new)
    renamed = {key: value for key, value in changes.items() if key in ("name", "timezone")}
    reached = {key: value for key, value in changes.items() if key not in renamed}
    if renamed or not reached:
        await record(
            core, caller, AuditAction.SITE_UPDATE, f"site:{site_id}", renamed, site=site_id
        )
    if reached:
        await record(
            core, caller, AuditAction.SITE_CONTACT, f"site:{site_id}", reached, site=site_id
        )
    service = core.tickets.service
    if reached and service is not None:
        # Held tickets of the site that lacked these go out now.
        await service.recheck_held()
    return core.inventory.site(site_id)


async def invite_agent(core: Controller, caller: Caller, site_id: str) -> dict[str, Any]:
    """A one-time enrollment code for the site's agent: ``{code, site, expires_at}``."""
    caller.require(Permission.ADMINISTER)
    code, expires = await core.access.create_invite(site_id)
    details = {"expires_at": expires.isoformat()}
    await record(core, caller, AuditAction.INVITE_CREATE, f"site:{site_id}", details, site=site_id)
    return {"code": code, "site": site_id, "expires_at": expires.isoformat()}
