"""An API query parameter sent empty (``?status=``) is one not sent, on every endpoint."""

from __future__ import annotations

from aiohttp import web

from polyfleet.controller.http.errors import Handler

#: Where an empty value means "not given": the API (pages read their forms themselves).
API_PREFIX = "/api/"


@web.middleware
async def empty_query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Drop the empty values of an API request's query before its handler reads it.

    A form or a script that fills a parameter from an empty field sends ``name=``: the API
    document allows it, and each handler would otherwise read it as a value (refused as no
    integer, no status, no date) or not, as it happened to be written.
    """
    query = request.rel_url.query
    if not request.path.startswith(API_PREFIX) or all(query.values()):
        return await handler(request)
    kept = [(name, value) for name, value in query.items() if value]
    return await handler(request.clone(rel_url=request.rel_url.with_query(kept)))
