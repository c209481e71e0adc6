"""Request body guards that run before any handler: JSON nesting depth (more to come)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from polyfleet.controller.api.errors import DEPTH_CHECKED, ApiError, Handler, check_depth
from polyfleet.controller.api.spec import spec_of


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a JSON body nested too deep before the handler looks at anything (a path id).

    Runs after authentication, so a caller without a credential never makes it read a body.
    A handler whose spec says ``own_depth_check`` checks where it costs least itself.
    """
    match = request.match_info
    if not isinstance(match, MatchInfoError) and request.body_exists:
        spec = spec_of(match.handler, request.method)
        if spec.request is not None and not spec.own_depth_check:
            await check_depth(await _read(request))
            request[DEPTH_CHECKED] = True
    return await handler(request)


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "body_too_large", f"request body too large: {exc.text}") from None
