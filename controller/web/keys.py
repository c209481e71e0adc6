"""Typed keys of the dashboard's state on the application and on each request."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.services.web_sessions import SessionService, WebSession
from polyfleet.controller.settings.web import WebSettings

SETTINGS = web.AppKey("web_settings", WebSettings)
SESSIONS = web.AppKey("web_sessions", SessionService)
#: Added to static file addresses so a new release is fetched, not taken from the cache.
STATIC_VERSION = web.AppKey("web_static_version", str)
#: The signed-in session of a page request (None on the sign-in pages when signed out).
SESSION: web.RequestKey[WebSession | None] = web.RequestKey("web_session")
