"""The kiosk: a read-only overview for a wall screen, in large type, refreshing itself.

A wall screen cannot scroll: whatever the fleet's size, the kiosk shows what fits one
1920x1080 screen in its type (the kiosk test's screenshot holds it to that) and says how
many more there are. Its counters count everything; each list shows its first items, most
urgent first, and "and N more", so what a list shows plus N is what its counter says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from polyfleet.controller.features import overview
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, site_zones
from polyfleet.controller.web.security import dashboard_caller, page

#: Lines of each list one screen holds under the counters, in the kiosk's 24 px type.
KIOSK_TICKETS = 5
KIOSK_SITES = 4
#: One row of tiles at 1920 px.
KIOSK_ROOMS = 6
#: Rooms that need a look first: the worst state, then maintenance.
_SEVERITY = {"fault": 0, "unreachable": 1, "degraded": 2}


def _first(items: Sequence[Any], shown: int) -> tuple[list[Any], int]:
    """The first ``shown`` items, and how many more there are."""
    return list(items[:shown]), max(0, len(items) - shown)


def kiosk_board(data: Mapping[str, Any]) -> dict[str, Any]:
    """What the kiosk lists: tickets, sites and the rooms that need a look, each bounded."""
    tickets = data["tickets"]["items"] if data.get("tickets") else []
    rooms = [
        {**room, "site": site["id"], "site_name": site["name"]}
        for site in data["sites"]
        for room in site["rooms"]
        if room["worst"] in _SEVERITY or room.get("maintenance")
    ]
    rooms.sort(key=lambda room: _SEVERITY.get(room["worst"], len(_SEVERITY)))
    sites = sorted(
        data["sites"],
        key=lambda site: (
            site.get("agent_online") is not False,
            -site["health"].get("fault", 0),
            -site["health"].get("unreachable", 0),
            -site["health"].get("degraded", 0),
        ),
    )
    shown_tickets, more_tickets = _first(tickets, KIOSK_TICKETS)
    shown_sites, more_sites = _first(sites, KIOSK_SITES)
    shown_rooms, more_rooms = _first(rooms, KIOSK_ROOMS)
    return {
        "tickets": shown_tickets,
        "more_tickets": more_tickets,
        "sites": shown_sites,
        "more_sites": more_sites,
        "rooms": shown_rooms,
        "more_rooms": more_rooms,
        "rooms_needing_a_look": len(rooms),
    }


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
            "board": kiosk_board(data),
            "zones": site_zones(request, data["sites"]),
            "kiosk": True,
        },
    )


def register(app: web.Application) -> None:
    app.router.add_get("/kiosk", kiosk_page, allow_head=False, name="kiosk")
