"""The kiosk: a read-only overview for a wall screen, in large type, refreshing itself."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.features import overview
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, site_zones
from polyfleet.controller.web.security import dashboard_caller, page


@page("Kiosk: the overview for a wall screen", kiosk=True)
async def kiosk_page(request: web.Request) -> web.Response:
    data = await overview.overview(request.app[CORE], dashboard_caller(request))
    return render(
        request,
        "kiosk.html",
        {
            "live": True,
            "live_every": request.app[CORE].web.kiosk_refresh_s,
            "o": data,
            "zones": site_zones(request, data["sites"]),
            "kiosk": True,
        },
    )


def register(app: web.Application) -> None:
    app.router.add_get("/kiosk", kiosk_page, allow_head=False, name="kiosk")
