"""Who asks for a use case: the actor and origin the audit log records, and what the role may do.

Each face builds a ``Caller`` and hands it to the use case, which checks the permission it
needs before it changes anything::

    caller = api_caller(request)               # a bearer token, or the local control socket
    caller = dashboard_caller(request)         # a signed-in browser session
    caller = Caller.local()                    # a CLI command working on the store itself
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.errors import NotAllowed
from polyfleet.controller.services.access import Principal, Role
from polyfleet.controller.services.audit import Actor, AuditAction, Origin, local_command


class Permission(StrEnum):
    """What a use case needs of its caller's role."""

    #: Look: lists, pages, exports.
    READ = "read"
    #: Act on rooms: devices, jobs, tickets and rollouts.
    OPERATE = "operate"
    #: Administer: sites, tokens, agents, the asset registry and the catalogues.
    ADMINISTER = "administer"


#: What each role may do.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.VIEWER: frozenset({Permission.READ}),
    Role.AGENT: frozenset(),
}


@dataclass(frozen=True, kw_only=True)
class Caller:
    """The one asking: recorded in the audit log as ``actor`` from ``origin``."""

    actor: Actor
    origin: Origin
    role: Role
    #: The dashboard's actions say so in their audit details (``"via": "dashboard"``).
    via: str | None = None

    @classmethod
    def local(cls) -> Caller:
        """An admin command run on this machine while no server runs (the store is held)."""
        actor, origin = local_command()
        return cls(actor=actor, origin=origin, role=Role.ADMIN)

    @classmethod
    def of(cls, principal: Principal, origin: Origin, *, via: str | None = None) -> Caller:
        """A caller with a credential (a token, a session's token, the control socket)."""
        actor = Actor(
            name=principal.name or principal.token_id,
            role=principal.role.value,
            token_id=principal.token_id,
        )
        return cls(actor=actor, origin=origin, role=principal.role, via=via)

    @property
    def name(self) -> str:
        """How jobs and notes name who asked: the token's name (its id when unnamed)."""
        return self.actor.name

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: Permission) -> None:
        """Refuse (403) unless the caller's role has ``permission``."""
        if self.may(permission):
            return
        if self.role is Role.VIEWER:
            raise NotAllowed("viewer tokens are read-only")
        raise NotAllowed(f"{self.role.value} credentials cannot do this")

    def details(self, details: Mapping[str, Any] | None) -> dict[str, Any]:
        """Audit details as this caller's face records them."""
        found = dict(details or {})
        if self.via is not None:
            found["via"] = self.via
        return found


async def record(
    core: Controller,
    caller: Caller,
    action: AuditAction,
    target: str,
    details: Mapping[str, Any] | None = None,
    *,
    site: str | None = None,
) -> None:
    """Audit what ``caller`` just did; durable when this returns."""
    await core.audit.record(
        caller.actor, caller.origin, action, target, caller.details(details), site=site
    )
