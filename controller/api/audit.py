"""``GET /api/v1/audit`` and ``record(request, ...)``: the one line that audits an admin action.

Usage in any handler (see ``controller.services.audit`` for the names to use)::

    from polyfleet.controller.api import audit

    await audit.record(request, "device.move", f"device:{serial}", {"site": [old, new]})
"""

from __future__ import annotations

import pwd
import socket
import struct
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from polyfleet.controller.api.auth import PRINCIPAL, via_control_socket
from polyfleet.controller.api.errors import ApiError
from polyfleet.controller.api.models import AuditPage
from polyfleet.controller.api.spec import ADMINS, Param, endpoint
from polyfleet.controller.keys import AUDIT
from polyfleet.controller.services.audit import (
    MAX_PAGE,
    Actor,
    AuditQuery,
    InvalidAuditQuery,
    Origin,
)
from polyfleet.controller.store.base import Doc

_INTEGER = {"type": "integer", "minimum": 0}
AUDIT_QUERY: dict[str, str | Param] = {
    "action": "only this action (token.revoke) or every action on a kind of object (token)",
    "actor": "only actions by this token name or id, or local OS user",
    "target": "only actions on this target, e.g. device:X50-1, site:krk, token:ID",
    "site": "only actions concerning this site",
    "from": Param(
        "only entries at or after this moment (ISO 8601 with offset)",
        {"type": "string", "format": "date-time"},
    ),
    "to": Param(
        "only entries before this moment (ISO 8601 with offset)",
        {"type": "string", "format": "date-time"},
    ),
    "before": Param("only entries with a smaller id, newest first (the next page)", _INTEGER),
    "after": Param("only entries with a larger id, oldest first (follow the log)", _INTEGER),
    "limit": Param(
        f"at most this many (default 100, max {MAX_PAGE})",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
    ),
}

#: ``struct ucred`` of SO_PEERCRED: pid, uid, gid.
_UCRED = struct.Struct("3i")


def _peer(request: web.Request) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of the control socket, when the OS says."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    except OSError:
        return None
    return pid, uid


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def who_and_where(request: web.Request) -> tuple[Actor, Origin]:
    """The actor and origin of a request, as the audit log records them."""
    found = request.get(PRINCIPAL)
    if via_control_socket(request):
        peer = _peer(request)
        user = _user_name(peer[1]) if peer else None
        actor = Actor(name=user or "local control socket", role="admin")
        return actor, Origin(via="control_socket", user=user, pid=peer[0] if peer else None)
    origin = Origin(via="http", address=request.remote)
    if found is None:
        return Actor(name="anonymous", role="none"), origin
    name = found.name or found.token_id
    return Actor(name=name, role=found.role.value, token_id=found.token_id), origin


async def record(
    request: web.Request,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
    *,
    site: str | None = None,
    actor: Actor | None = None,
) -> Doc:
    """Audit an action done for ``request``; durable when it returns.

    ``actor`` names who acted when the request carries no credential of its own (an agent
    enrolling with a code); otherwise it comes from the request's token.
    """
    found, origin = who_and_where(request)
    return await request.app[AUDIT].record(
        actor or found, origin, action, target, details, site=site
    )


@endpoint(
    summary="The audit log: admin actions with who, when, what and from where",
    roles=ADMINS,
    response=AuditPage,
    query=AUDIT_QUERY,
    errors=(400,),
    tags=("audit",),
)
async def list_audit(request: web.Request) -> web.Response:
    try:
        query = AuditQuery.parse(request.query)
    except InvalidAuditQuery as exc:
        raise ApiError(400, "invalid", str(exc), exc.field) from None
    entries, more = request.app[AUDIT].query(query)
    return web.json_response({"entries": entries, "more": more})


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit", list_audit, allow_head=False)
