"""The dashboard's route module: settings, sessions, templates, static files and every page."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from polyfleet.controller.active import run_when_active
from polyfleet.controller.domain.admin_input import shown
from polyfleet.controller.http.spec import PUBLIC
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.base import StoreUnavailable
from polyfleet.controller.web import (
    agents,
    devices,
    entitlement,
    hand_tickets,
    kiosk,
    maintenance,
    overview,
    rollouts,
    signin,
    tickets,
)
from polyfleet.controller.web.keys import STATIC_VERSION
from polyfleet.controller.web.render import setup_templates
from polyfleet.controller.web.security import page, page_middleware
from polyfleet.shared.periodic import Periodic

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: How often expired sessions and sign-in links are forgotten.
PRUNE_INTERVAL_S = 3600.0
#: Static addresses carry ``?v=`` (a digest of the files): cached for a year, fetched anew
#: whenever a file changes.
STATIC_CACHE = "public, max-age=31536000, immutable"


def static_version() -> str:
    """A short digest of every static file: changes whenever one of them does."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@page("A static file of the dashboard (styles, scripts and their licences)", roles=PUBLIC)
async def static_file(request: web.Request) -> web.StreamResponse:
    relative = request.match_info["path"]
    try:
        path = (STATIC_DIR / relative).resolve()
        found = path.is_relative_to(STATIC_DIR) and await asyncio.to_thread(path.is_file)
    except (ValueError, OSError):
        # A NUL byte, or a name longer than the file system takes: no such file either.
        found = False
    if not found:
        raise web.HTTPNotFound(text=f"no file {shown(relative)!r}"[:200])
    cache = STATIC_CACHE if request.query.get("v") == request.app[STATIC_VERSION] else "no-cache"
    return web.FileResponse(path, headers={"Cache-Control": cache})


async def _prune_sessions(app: web.Application) -> AsyncIterator[None]:
    sessions = app[CORE].sessions

    async def prune() -> None:
        forgotten = await sessions.prune()
        if forgotten:
            log.info("forgot %d expired dashboard sessions and sign-in links", forgotten)

    pruner = Periodic(
        "pruning dashboard sessions",
        prune,
        interval_s=PRUNE_INTERVAL_S,
        stop_on=(StoreUnavailable,),
        logger=log,
    )
    async with pruner.running():
        yield


def register(app: web.Application) -> None:
    app[STATIC_VERSION] = static_version()
    setup_templates(app)
    # Innermost: runs after the API's error and bearer middlewares have let a page by.
    app.middlewares.append(page_middleware)
    # Scheduled work: on the active controller only.
    run_when_active(app, _prune_sessions)
    app.router.add_get("/static/{path:.+}", static_file, allow_head=False)
    modules = (
        signin,
        overview,
        devices,
        tickets,
        hand_tickets,
        maintenance,
        entitlement,
        rollouts,
        agents,
        kiosk,
    )
    for module in modules:
        module.register(app)
