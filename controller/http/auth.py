"""Bearer-token authentication and role checks, driven by each handler's ``EndpointSpec``."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from polyfleet.controller.http.errors import ApiError, Handler
from polyfleet.controller.http.spec import spec_of
from polyfleet.controller.http.throttle import AUTH_LIMITER, client_address
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import LOCAL_ADMIN, Principal, Role

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")


def principal(request: web.Request) -> Principal:
    """Who is calling (set by the middleware on every authenticated route)."""
    return request[PRINCIPAL]


def agent_site(request: web.Request) -> str:
    """The site of the calling agent, on an endpoint only agents may call (``AGENTS``)."""
    site_id = principal(request).site_id
    # The middleware lets no other role in, and every agent credential belongs to a site.
    assert site_id is not None
    return site_id


def via_control_socket(request: web.Request) -> bool:
    """The request came through the local control socket (a CLI command on this machine)."""
    # A Unix socket's name is a path string; TCP gives a (host, port) tuple.
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def _bearer(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    found = request.app[CORE].access.authenticate(token) if token else None
    if found is not None:
        # A valid credential always gets through: agents and admins behind one NAT address
        # are never refused because someone else at that address guesses.
        return found
    limiter, address = request.app[AUTH_LIMITER], client_address(request)
    # Only failures are limited: past the limit, a further failure is 429 (not 401).
    limiter.check(address, "failed credentials")
    limiter.spend(address)
    # Never echo the token back, not even partly.
    message = request.app[CORE].access.refusal(token) if token else "missing bearer token"
    raise ApiError(401, "unauthorized", message, "Authorization")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if isinstance(match, MatchInfoError):
        return await handler(request)
    spec = spec_of(match.handler, request.method)
    if not spec.roles:
        return await handler(request)
    found = LOCAL_ADMIN if via_control_socket(request) else _bearer(request)
    if found.role not in spec.roles:
        if found.role is Role.VIEWER:
            raise ApiError(403, "forbidden", "viewer tokens are read-only")
        raise ApiError(403, "forbidden", f"{found.role.value} credentials cannot use this endpoint")
    request[PRINCIPAL] = found
    return await handler(request)
