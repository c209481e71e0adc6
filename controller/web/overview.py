"""The overview page: which rooms are broken, which tickets are late, what expires, what changed."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.features import overview
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.base import Doc
from polyfleet.controller.web.render import render, site_zones
from polyfleet.controller.web.security import dashboard_caller, page


def firmware_groups(rows: list[Doc]) -> list[Doc]:
    """The compliance rows (model x mode x version) shown one line per model and mode, with
    its versions listed; models the catalogue does not track (E70 cameras) are left out."""
    groups: dict[tuple[str, str], Doc] = {}
    for row in rows:
        if row["not_tracked"] == row["devices"]:
            continue
        group = groups.setdefault(
            (row["model"], row["provider"]),
            {
                "model": row["model"],
                "provider": row["provider"],
                "devices": 0,
                "current": 0,
                "behind": 0,
                "not_entitled": 0,
                "versions": [],
                "targets": [],
            },
        )
        for key in ("devices", "current", "behind", "not_entitled"):
            group[key] += row[key]
        group["versions"].append((row["version"], row["devices"]))
        if row["entitled_target"] and row["entitled_target"] not in group["targets"]:
            group["targets"].append(row["entitled_target"])
    return [groups[key] for key in sorted(groups)]


@page("Overview")
async def overview_page(request: web.Request) -> web.Response:
    data = await overview.overview(request.app[CORE], dashboard_caller(request))
    return render(
        request,
        "overview.html",
        {
            "nav": "overview",
            "live": True,
            "o": data,
            "zones": site_zones(request, data["sites"]),
            "firmware_groups": firmware_groups(data["firmware"]["rows"]),
        },
    )


def register(app: web.Application) -> None:
    app.router.add_get("/", overview_page, allow_head=False, name="overview")
