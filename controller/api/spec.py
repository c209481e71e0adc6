"""What each handler accepts, returns and who may call it; read by auth and the OpenAPI builder.

A route module decorates its handlers::

    @endpoint(summary="List devices", roles=READERS, response=DeviceList,
              query={"site": "only this site"})
    async def list_devices(request: web.Request) -> web.Response: ...

and adds them in its ``register(app)`` with ``app.router.add_get(path, list_devices)``.
A handler without ``@endpoint`` is admin-only for changes and readable by viewers for GET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from controller.services.access import Role

ADMINS = frozenset({Role.ADMIN})
READERS = frozenset({Role.ADMIN, Role.VIEWER})
AGENTS = frozenset({Role.AGENT})
PUBLIC: frozenset[Role] = frozenset()

_ATTRIBUTE = "__polyfleet_endpoint__"

HandlerT = TypeVar("HandlerT", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


@dataclass(frozen=True, kw_only=True)
class EndpointSpec:
    summary: str
    roles: frozenset[Role]
    request: type[BaseModel] | None = None
    #: Media type of a non-JSON body (e.g. an artifact upload).
    request_media: str | None = None
    response: type[BaseModel] | None = None
    response_status: int = 200
    response_media: str = "application/json"
    query: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def endpoint(**kwargs: Any) -> Callable[[HandlerT], HandlerT]:
    """Attach an ``EndpointSpec`` to a handler."""
    spec = EndpointSpec(**kwargs)

    def attach(handler: HandlerT) -> HandlerT:
        setattr(handler, _ATTRIBUTE, spec)
        return handler

    return attach


def spec_of(handler: object, method: str) -> EndpointSpec:
    """The handler's spec, or the default for an undecorated one."""
    found = getattr(handler, _ATTRIBUTE, None)
    if isinstance(found, EndpointSpec):
        return found
    roles = READERS if method in ("GET", "HEAD") else ADMINS
    return EndpointSpec(summary=getattr(handler, "__doc__", None) or "", roles=roles)
