"""Entitlement per site: what expires or closes when, flagged contracts with the reason in
words, and the asset registry import with each problem shown next to its line."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from polyfleet.controller.domain.assets import RegistryImportError
from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.errors import BadRequest
from polyfleet.controller.features import assets, entitlement
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import (
    UploadedFile,
    admin_forms,
    dashboard_caller,
    form_of,
    page,
)

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
    days = _days(request) if request.method == "GET" else DEFAULT_HORIZON
    site = request.query.get("site") or None
    summary = await entitlement.entitlement_summary(
        request.app[CORE], dashboard_caller(request), days=days, site=site
    )
    sites = summary["sites"]
    return render(
        request,
        "entitlement.html",
        {
            **summary,
            "nav": "entitlement",
            "live": result is None and problems is None,
            "days": days,
            "horizons": HORIZONS,
            "site": site,
            "site_names": {s["id"]: s["name"] for s in sites},
            "flags": FLAGS,
            "can_import": admin_forms(request),
            "result": result,
            "problems": problems,
        },
        status=status,
    )


def _problems_by_line(content: bytes, refused: RegistryImportError) -> list[dict[str, Any]]:
    """The file's header and each line with problems, the problems beside it."""
    text = content.decode("utf-8-sig", errors="replace")
    by_line: dict[int, list[Any]] = {}
    for problem in refused.problems:
        by_line.setdefault(problem.line, []).append(problem)
    lines = [
        {"number": number, "text": line, "problems": by_line.get(number, [])}
        for number, line in enumerate(text.splitlines(), start=1)
    ]
    # Problems past the last line (a missing column in a short file) still show.
    extra = [p for number, ps in by_line.items() if number > len(lines) for p in ps]
    shown = [line for line in lines if line["problems"] or line["number"] == 1]
    return [*shown, *([{"number": None, "text": "", "problems": extra}] if extra else [])]


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
    # What the file says is shown on this page, beside the form: bad rows by line, and a
    # file that is not text; any other refusal is the dashboard's error page.
    try:
        text = assets.decode_registry(upload.content)
        done = await assets.import_registry(
            request.app[CORE], dashboard_caller(request), text, dry_run=dry_run
        )
    except RegistryImportError as exc:
        return await _page(
            request,
            problems=_problems_by_line(upload.content, exc),
            result={"count": len(exc.problems), "filename": upload.filename},
            status=exc.status,
        )
    except BadRequest as exc:
        return await _page(request, result={"error": exc.message}, status=exc.status)
    return await _page(request, result=done)


def register(app: web.Application) -> None:
    app.router.add_get("/entitlement", entitlement_page, allow_head=False, name="entitlement")
    app.router.add_post("/entitlement/import", registry_import)
