"""Agents and sites: each agent's last call, version, outbox, held reports and notices;
enrollment codes for a site's agent, shown once."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from polyfleet.controller.features import access, sites
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import UnknownSite
from polyfleet.controller.web.render import render, site_zones, translator
from polyfleet.controller.web.security import admin_forms, dashboard_caller, form_of, page


def _page(
    request: web.Request,
    *,
    invite: dict[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    core, caller = request.app[CORE], dashboard_caller(request)
    found_sites = sites.list_sites(core, caller)
    return render(
        request,
        "agents.html",
        {
            "nav": "agents",
            # The page that shows an enrollment code is never refreshed: the code shows once.
            "live": invite is None and error is None,
            "sites": found_sites,
            "site_names": {site["id"]: site["name"] for site in found_sites},
            "zones": site_zones(request, found_sites),
            "agents": access.agent_statuses(core, caller),
            "can_invite": admin_forms(request),
            "invite": invite,
            "error": error,
            "controller_url": f"{request.scheme}://{request.host}",
        },
        status=status,
    )


@page("Agents and sites: last call, version, outbox, held reports, notices")
async def agents_page(request: web.Request) -> web.Response:
    return _page(request)


@page("Create a one-time enrollment code for a site's agent, shown once (admins)", roles=ADMINS)
async def create_invite(request: web.Request) -> web.Response:
    form = await form_of(request)
    site = str(form.get("site") or "")
    if not site:
        return _page(request, error=translator(request).gettext("Choose a site."), status=400)
    try:
        invite = await sites.invite_agent(request.app[CORE], dashboard_caller(request), site)
    except UnknownSite as exc:
        return _page(request, error=str(exc), status=404)
    return _page(request, invite=invite)


def register(app: web.Application) -> None:
    app.router.add_get("/agents", agents_page, allow_head=False, name="agents")
    app.router.add_post("/agents/invite", create_invite)
