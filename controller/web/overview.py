"""The overview page: which rooms are broken, which tickets are late, what expires, what changed."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.api.overview import overview_of
from polyfleet.controller.web.render import render
from polyfleet.controller.web.security import page


@page("Overview")
async def overview_page(request: web.Request) -> web.Response:
    data = await overview_of(request.app)
    zones = {site["id"]: site["timezone"] for site in data["sites"]}
    return render(
        request, "overview.html", {"nav": "overview", "live": True, "o": data, "zones": zones}
    )


def register(app: web.Application) -> None:
    app.router.add_get("/", overview_page, allow_head=False, name="overview")
