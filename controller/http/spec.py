"""What each handler accepts, returns and who may call it; read by auth and the OpenAPI builder.

A route module decorates its handlers::

    @endpoint(summary="List devices", roles=READERS, response=DeviceList,
              query={"site": "only this site",
                     "limit": Param("at most this many", {"type": "integer", "minimum": 1})})
    async def list_devices(request: web.Request) -> web.Response: ...

and adds them in its ``register(app)`` with ``app.router.add_get(path, list_devices)``.
A handler without ``@endpoint`` is admin-only for changes and readable by viewers for GET.

The OpenAPI builder adds what the middlewares answer for every route (401/403 for
authenticated routes; 400/413/422 for JSON bodies; 413 for any body; a ``default``
error), so a spec lists only the statuses its handler itself produces in ``errors``,
and names in ``error_models`` any status whose body is not the usual ``ErrorResponse``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from polyfleet.controller.services.access import Role

ADMINS = frozenset({Role.ADMIN})
READERS = frozenset({Role.ADMIN, Role.VIEWER})
AGENTS = frozenset({Role.AGENT})
PUBLIC: frozenset[Role] = frozenset()

_ATTRIBUTE = "__polyfleet_endpoint__"

HandlerT = TypeVar("HandlerT", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


@dataclass(frozen=True)
class Param:
    """A query or path parameter: what it means and the JSON schema of its value."""

    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class EndpointSpec:
    summary: str
    roles: frozenset[Role]
    request: type[BaseModel] | None = None
    #: Media type of a non-JSON body (e.g. an artifact upload, a CSV file).
    request_media: str | None = None
    #: JSON schema of that non-JSON body (default: any bytes); say its format in "description".
    request_schema: Mapping[str, Any] | None = None
    response: type[BaseModel] | None = None
    #: JSON schema of a success body that has no model (used when ``response`` is None).
    response_schema: Mapping[str, Any] | None = None
    response_status: int = 200
    response_media: str = "application/json"
    #: Query parameters: a description (a string value) or a ``Param`` with its schema.
    query: Mapping[str, str | Param] = field(default_factory=dict)
    #: Path parameters that are more than any string (e.g. an enum); others are plain strings.
    path: Mapping[str, Param] = field(default_factory=dict)
    #: Error statuses the handler itself answers with ``ErrorResponse``.
    errors: tuple[int, ...] = ()
    #: Error statuses whose body is another model (e.g. 422 with a list of problems).
    error_models: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    #: The handler checks the JSON body's nesting depth itself (where a cheaper check comes
    #: first), instead of the body middleware doing it before the handler runs.
    own_depth_check: bool = False
    #: Raw OpenAPI keys merged into the operation last, for what the fields above cannot say.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Not part of the API document: the dashboard's pages and static files, which check
    #: their own session cookie (``roles`` is then PUBLIC, so the bearer check lets them by).
    hidden: bool = False


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
