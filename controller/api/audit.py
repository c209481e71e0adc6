"""``GET /api/v1/audit`` and ``record(request, ...)``: the one line that audits an admin action.

Usage in any handler (see ``controller.services.audit`` for the names to use)::

    from polyfleet.controller.api import audit

    await audit.record(request, "device.move", f"device:{serial}", {"site": [old, new]})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from polyfleet.controller.api.models import AuditPage
from polyfleet.controller.http.caller import who_and_where
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import ADMINS, Param, endpoint
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.audit import (
    MAX_PAGE,
    Actor,
    AuditAction,
    AuditQuery,
    InvalidAuditQuery,
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


async def record(
    request: web.Request,
    action: AuditAction,
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
    return await request.app[CORE].audit.record(
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
    entries, more = request.app[CORE].audit.query(query)
    return web.json_response({"entries": entries, "more": more})


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit", list_audit, allow_head=False)
