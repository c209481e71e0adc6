"""Access: API tokens, one-time dashboard sign-in links, and site agents' credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.admin_input import display_name
from polyfleet.controller.errors import Invalid, NotFound
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.services.access import Role
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.web_sessions import SignInRefused
from polyfleet.controller.store.base import Doc

#: The path a one-time sign-in link opens (``?code=...``).
SIGNIN_LINK_PATH = "/signin/link"

#: Roles a token can be created with (agents get theirs by enrolling).
TOKEN_ROLES = (Role.ADMIN, Role.VIEWER)
#: Notices listed per agent by ``agent_statuses`` (the newest).
NOTICES_SHOWN = 5


def list_tokens(core: Controller, caller: Caller) -> list[Doc]:
    """API tokens (never their secrets), oldest first."""
    caller.require(Permission.ADMINISTER)
    return core.access.list_tokens()


async def create_token(
    core: Controller,
    caller: Caller,
    *,
    role: str,
    name: str = "",
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """A new admin or viewer token: its record plus ``token``, the secret, shown once."""
    caller.require(Permission.ADMINISTER)
    try:
        chosen = Role(role)
    except ValueError:
        chosen = None
    if chosen not in TOKEN_ROLES:
        known = ", ".join(r.value for r in TOKEN_ROLES)
        raise Invalid(f"role: {role!r} is not a token role; use {known}", field="role")
    checked = display_name(name, field="name", allow_empty=True)
    token, created = await core.access.create_token(chosen, checked, expires_at=expires_at)
    details = {"role": created["role"], "name": created["name"]}
    if created["expires_at"] is not None:
        details["expires_at"] = created["expires_at"]
    await record(core, caller, AuditAction.TOKEN_CREATE, f"token:{created['id']}", details)
    return {**created, "token": token}


async def revoke_token(core: Controller, caller: Caller, token_id: str) -> Doc:
    """Revoke an API token (never an agent's credential, never the last admin token)."""
    caller.require(Permission.ADMINISTER)
    revoked = await core.access.revoke_token(token_id)
    details = {"role": revoked["role"], "name": revoked["name"]}
    await record(core, caller, AuditAction.TOKEN_REVOKE, f"token:{token_id}", details)
    return revoked


async def create_signin_link(core: Controller, caller: Caller, token_id: str) -> dict[str, Any]:
    """A one-time dashboard sign-in for ``token_id``: ``{path, token_id, expires_at}``."""
    caller.require(Permission.ADMINISTER)
    try:
        code, expires = await core.sessions.create_link(token_id)
    except SignInRefused as exc:
        raise NotFound(str(exc), field="token_id") from None
    details = {"expires_at": expires.isoformat()}
    await record(core, caller, AuditAction.SIGNIN_LINK_CREATE, f"token:{token_id}", details)
    return {
        "path": f"{SIGNIN_LINK_PATH}?code={code}",
        "token_id": token_id,
        "expires_at": expires.isoformat(),
    }


def list_agents(core: Controller, caller: Caller, site_id: str | None = None) -> list[Doc]:
    """Site agents with their credentials' ids and their last call."""
    caller.require(Permission.ADMINISTER)
    agents = core.access.list_agents(site_id)
    for agent in agents:
        call = core.inventory.agent_last_call(agent["id"])
        if call is not None and (
            agent["last_seen"] is None or call.isoformat() > agent["last_seen"]
        ):
            agent["last_seen"] = call.isoformat()
    return agents


def agent_statuses(core: Controller, caller: Caller) -> list[dict[str, Any]]:
    """Each site agent as the dashboard shows it: its record, its last call (``last_call``),
    what it last said about itself (``status``) and its newest notices, by site."""
    caller.require(Permission.READ)
    found = []
    for agent in core.access.list_agents():
        agent_id = agent["id"]
        last_call = core.inventory.agent_last_call(agent_id)
        notices = core.bus.query(kind="agent_notice", agent=agent_id, limit=NOTICES_SHOWN)
        found.append(
            {
                **agent,
                "last_call": last_call.isoformat() if last_call else agent["last_seen"],
                "status": core.inventory.agent_status(agent_id),
                "notices": notices[::-1],
            }
        )
    return found


async def revoke_agent(core: Controller, caller: Caller, agent_id: str) -> Doc:
    """Revoke a site agent: its credential stops working at once."""
    caller.require(Permission.ADMINISTER)
    agent = await core.access.revoke_agent(agent_id)
    details = {"name": agent["name"], "hostname": agent["hostname"], "token_id": agent["token_id"]}
    await record(
        core, caller, AuditAction.AGENT_REVOKE, f"agent:{agent_id}", details, site=agent["site_id"]
    )
    return agent
