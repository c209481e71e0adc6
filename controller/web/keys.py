"""Typed keys of the dashboard's state on the application and on each request."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.services.web_sessions import WebSession

#: Added to static file addresses so a new release is fetched, not taken from the cache.
STATIC_VERSION = web.AppKey("web_static_version", str)
#: The signed-in session of a page request (None on the sign-in pages when signed out).
SESSION: web.RequestKey[WebSession | None] = web.RequestKey("web_session")
