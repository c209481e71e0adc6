"""Entitlement per site: what expires or closes when, flagged contracts with the reason in
words, and the asset registry import with each problem shown next to its line."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from polyfleet.controller.api.entitlement import (
    CATALOGUES,
    VERDICTS,
    import_registry,
    registry_forecast,
)
from polyfleet.controller.domain.assets import RegistryImportError
from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CLOCK, INVENTORY, STORE
from polyfleet.controller.services import entitlement as service
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.web.keys import SESSION
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import UploadedFile, audit_action, form_of, page

#: Horizons offered for the forecast, in days.
HORIZONS = (30, 60, 90, 180, 365)
DEFAULT_HORIZON = 180


def _days(request: web.Request) -> int:
    text = request.query.get("days", str(DEFAULT_HORIZON))
    if not text.isdigit() or int(text) not in HORIZONS:
        raise ApiError(400, "invalid", f"days: one of {', '.join(map(str, HORIZONS))}", "days")
    return int(text)


async def _page(
    request: web.Request,
    *,
    result: dict[str, Any] | None = None,
    problems: list[dict[str, Any]] | None = None,
    status: int = 200,
) -> web.Response:
    app = request.app
    now = to_warsaw(app[CLOCK]())
    days = _days(request) if request.method == "GET" else DEFAULT_HORIZON
    site = request.query.get("site") or None
    catalogues = app[CATALOGUES]
    releases = await catalogues.releases()
    sites = app[INVENTORY].sites()
    forecast = registry_forecast(app, now, days, site=site)
    registry = service.registry(app[STORE])
    flagged = [
        asset
        for asset in sorted(registry.values(), key=lambda a: (a.site, a.serial))
        if asset.ineligible_rules and (site is None or asset.site == site)
    ]
    verdicts = service.live_verdicts(
        app[STORE], catalogues.plans, releases, now, site=site, cache=app[VERDICTS]
    )
    site_of = {serial: asset.site for serial, asset in registry.items()}
    for device in app[INVENTORY].devices():
        site_of.setdefault(device["serial"], device["site"])
    flag_counts: dict[str, Counter[str]] = {}
    for verdict in verdicts:
        counter = flag_counts.setdefault(site_of.get(verdict.serial, "?"), Counter())
        counter.update(verdict.flags)
    session = request[SESSION]
    return render(
        request,
        "entitlement.html",
        {
            "nav": "entitlement",
            "live": result is None and problems is None,
            "forecast": forecast,
            "days": days,
            "horizons": HORIZONS,
            "site": site,
            "sites": sites,
            "site_names": {s["id"]: s["name"] for s in sites},
            "flagged": flagged,
            "flag_counts": flag_counts,
            "flags": FLAGS,
            "plans": catalogues.plans,
            "today": now.date(),
            "can_import": session is not None and session.principal.role in ADMINS,
            "result": result,
            "problems": problems,
        },
        status=status,
    )


@page("Entitlement per site: expiries, flagged contracts, the registry import")
async def entitlement_page(request: web.Request) -> web.Response:
    return await _page(request)


@page("Import the asset registry (admins): checked whole, problems shown by line", roles=ADMINS)
async def registry_import(request: web.Request) -> web.Response:
    t = translator(request)
    form = await form_of(request)
    upload = form.get("registry")
    dry_run = form.get("dry_run") == "1"
    if not isinstance(upload, UploadedFile) or not upload.filename:
        result = {"error": t.gettext("Choose the registry file (CSV) first.")}
        return await _page(request, result=result, status=400)
    content = upload.content
    today = to_warsaw(request.app[CLOCK]()).date()
    try:
        plan, text = await import_registry(request.app, content, dry_run=dry_run, today=today)
        if not dry_run:
            details = service.import_details(plan, text)
            await audit_action(request, AuditAction.ASSETS_IMPORT, "assets", details)
    except RegistryImportError as exc:
        text = content.decode("utf-8-sig", errors="replace")
        by_line: dict[int, list[Any]] = {}
        for problem in exc.problems:
            by_line.setdefault(problem.line, []).append(problem)
        lines = [
            {"number": number, "text": line, "problems": by_line.get(number, [])}
            for number, line in enumerate(text.splitlines(), start=1)
        ]
        # Problems past the last line (a missing column in a short file) still show.
        extra = [p for number, ps in by_line.items() if number > len(lines) for p in ps]
        shown = [line for line in lines if line["problems"] or line["number"] == 1]
        return await _page(
            request,
            problems=[
                *shown,
                *([{"number": None, "text": "", "problems": extra}] if extra else []),
            ],
            result={"count": len(exc.problems), "filename": upload.filename},
            status=422,
        )
    except ApiError as exc:
        return await _page(request, result={"error": exc.message}, status=exc.status)
    return await _page(request, result={"dry_run": dry_run, **plan.to_json()})


def register(app: web.Application) -> None:
    app.router.add_get("/entitlement", entitlement_page, allow_head=False, name="entitlement")
    app.router.add_post("/entitlement/import", registry_import)
