"""``/api/v1/openapi.json``: built from the live route table and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from polyfleet.controller.api.models import ErrorResponse
from polyfleet.controller.http.spec import PUBLIC, EndpointSpec, Param, endpoint, spec_of

_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_STATUS_TEXT = {
    400: "Bad request (malformed JSON, unknown protocol version, bad query value)",
    401: "Missing, unknown, revoked or expired bearer token",
    403: "Not allowed for this role (or device of another site)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Body too large or too many snapshots",
    422: "Body does not match the schema; `field` names the place",
    429: "Too many failed credentials (or enrollment attempts) from this client address; "
    "see `Retry-After`",
    503: "Temporarily unavailable (store failed, service starting)",
}
#: Any status not listed for an operation (405, 500, 503...) still answers ``ErrorResponse``.
_DEFAULT_ERROR = "Any other error (e.g. 503 store unavailable, 500 internal); see `error.code`"


def implied_errors(spec: EndpointSpec) -> tuple[int, ...]:
    """Statuses the middlewares answer for this route whatever its handler does."""
    statuses: set[int] = set()
    if spec.roles != PUBLIC:
        # auth_middleware: no or unknown token; a role not allowed; an address over its limit
        statuses |= {401, 403, 429}
    if spec.request is not None:
        statuses |= {400, 413, 422}  # errors.read_json and validate: not JSON, too big, schema
    elif spec.request_media is not None:
        statuses.add(413)  # client_max_size, unless the handler streams with its own limit
    return tuple(sorted(statuses))


def build_openapi(app: web.Application) -> dict[str, Any]:
    """An OpenAPI 3.1 document describing every API route (not the dashboard's pages)."""
    routes: list[tuple[str, str, EndpointSpec]] = []
    models: set[type[BaseModel]] = {ErrorResponse}
    for route in app.router.routes():
        method = route.method.upper()
        if method in ("HEAD", "*", "OPTIONS"):
            continue
        path = route.resource.canonical if route.resource is not None else None
        if path is None:
            continue
        spec = spec_of(route.handler, method)
        if spec.hidden:
            continue
        routes.append((path, method, spec))
        models.update(model for model in (spec.request, spec.response) if model is not None)
        models.update(spec.error_models.values())
    ordered = sorted(models, key=lambda model: (model.__module__, model.__qualname__))
    refs, schema = models_json_schema(
        [(model, "validation") for model in ordered],
        ref_template="#/components/schemas/{model}",
    )
    # Pydantic renames models whose names clash (features may reuse a name); use its refs.
    ref_of = {model: dict(refs[(model, "validation")]) for model in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, spec in sorted(routes, key=lambda item: (item[0], item[1])):
        paths.setdefault(_PATH_PARAM.sub(r"{\1}", path), {})[method.lower()] = _operation(
            path, method, spec, ref_of
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "polyfleet controller",
            "version": "1",
            "description": "Admin API (bearer tokens: admin or viewer) and agent protocol.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameter(name: str, where: str, param: str | Param) -> dict[str, Any]:
    if isinstance(param, str):
        param = Param(param)
    parameter = {
        "name": name,
        "in": where,
        "required": True if where == "path" else param.required,
        "description": param.description,
        "schema": dict(param.schema),
    }
    if where == "query":
        # An empty value is the parameter not given (controller/http/query.py).
        parameter["allowEmptyValue"] = True
    return parameter


def _error(
    status: int, schema: Mapping[str, Any], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    # An error model says in its own docstring when it is answered (e.g. "bad rows").
    own = (model.__dict__.get("__doc__") or "").strip() if model is not None else ""
    return {
        "description": own.splitlines()[0] if own else _STATUS_TEXT.get(status, "Error"),
        "content": {"application/json": {"schema": dict(schema)}},
    }


def _operation(
    path: str, method: str, spec: EndpointSpec, ref_of: dict[type[BaseModel], dict[str, Any]]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": spec.summary.strip().splitlines()[0] if spec.summary.strip() else path,
        "operationId": f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
    }
    if spec.tags:
        operation["tags"] = list(spec.tags)
    parameters = [
        _parameter(name, "path", spec.path.get(name, Param(f"the {name.replace('_', ' ')}")))
        for name in _PATH_PARAM.findall(path)
    ]
    parameters += [_parameter(name, "query", param) for name, param in spec.query.items()]
    if parameters:
        operation["parameters"] = parameters
    if spec.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref_of[spec.request]}},
        }
    elif spec.request_media is not None:
        body = spec.request_schema or {"type": "string", "format": "binary"}
        operation["requestBody"] = {
            "required": True,
            "content": {spec.request_media: {"schema": dict(body)}},
        }
    ok: dict[str, Any] = {"description": "Success"}
    if spec.response is not None:
        ok["content"] = {spec.response_media: {"schema": ref_of[spec.response]}}
    elif spec.response_schema is not None:
        ok["content"] = {spec.response_media: {"schema": dict(spec.response_schema)}}
    elif spec.response_media != "application/json":
        ok["content"] = {spec.response_media: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(spec.response_status): ok}
    for status in sorted({*spec.errors, *implied_errors(spec)} - set(spec.error_models)):
        responses[str(status)] = _error(status, ref_of[ErrorResponse])
    for status, model in sorted(spec.error_models.items()):
        responses[str(status)] = _error(status, ref_of[model], model)
    responses["default"] = {
        "description": _DEFAULT_ERROR,
        "content": {"application/json": {"schema": ref_of[ErrorResponse]}},
    }
    operation["responses"] = dict(sorted(responses.items()))
    operation["security"] = [] if spec.roles == PUBLIC else [{"bearer": []}]
    if spec.roles:
        operation["description"] = "Roles: " + ", ".join(sorted(role.value for role in spec.roles))
    extra = dict(spec.extra)
    # Parameters the fields cannot say (a header) come after those they do, not instead.
    if "parameters" in extra:
        operation["parameters"] = [*operation.get("parameters", ()), *extra.pop("parameters")]
    operation.update(extra)
    return operation


@endpoint(
    summary="This OpenAPI document",
    roles=PUBLIC,
    response_schema={"type": "object", "required": ["openapi", "info", "paths"]},
    tags=("meta",),
)
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app))


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi_document, allow_head=False)
