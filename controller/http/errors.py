"""JSON errors (``{"error": {"code", "message", "field"}}``) and strict request body parsing."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import operator
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from polyfleet.controller.errors import Refused
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.base import StoreHealth, StoreUnavailable
from polyfleet.shared.schema import ErrorBody

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Set on a request whose body ``check_depth`` has passed already (by the body middleware).
DEPTH_CHECKED: web.RequestKey[bool] = web.RequestKey("depth_checked")

#: Deepest nesting of arrays and objects a request body may have. The deepest body the API
#: takes is a report batch (7 levels); recursive parsers must never see thousands.
MAX_JSON_DEPTH = 32
#: A JSON string literal (escapes included), removed before brackets are counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_SCAN_IN_THREAD_BYTES = 256 * 1024
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Refused):
    """An error answer of the HTTP layer itself (a body that cannot be read, a limit):
    HTTP status, a stable ``code``, a message and the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field, status=status, headers=headers)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    problems: Sequence[Mapping[str, Any]] = (),
) -> web.Response:
    """``{"error": {code, message, field}}``, and ``problems`` beside it when there are any."""
    body: dict[str, Any] = {
        "error": ErrorBody(code=code, message=message, field=field).model_dump(mode="json")
    }
    if problems:
        body["problems"] = [dict(problem) for problem in problems]
    return web.json_response(body, status=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; unexpected ones are logged, not leaked.

    While the store's disk refuses writes, every answer says so in a ``Warning`` header:
    what it shows may include changes that are not saved yet.
    """
    response = await _answer(request, handler)
    warning = store_warning(request.app)
    if warning is not None and not response.prepared:
        response.headers["Warning"] = warning
    return response


def store_health(store: object) -> StoreHealth | None:
    """Whether ``store`` can write now, or None for a store that does not say."""
    health = getattr(store, "health", None)
    if health is None:
        return None
    state: StoreHealth = health()
    return state


def store_warning(app: web.Application) -> str | None:
    """The ``Warning`` header for answers while the store cannot write, else None."""
    state = store_health(app[CORE].store)
    if state is None or not state.failing:
        return None
    text = (
        f"storage is failing ({state.cause}); {state.not_durable} changes shown here are "
        "not saved yet and may be lost if the controller stops"
    )
    # A header is Latin-1; a path may not be.
    text = text.encode("ascii", "replace").decode("ascii").replace('"', "'")
    return f'199 polyfleet "{text}"'


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as exc:
        response = error_response(
            exc.status, exc.code, exc.message, exc.field, problems=exc.problems
        )
        response.headers.update(exc.headers)
        if exc.status == 408:
            # The rest of a late body may still trickle in: nothing more is read from it.
            response.force_close()
        return response
    except StoreUnavailable as exc:
        # The store logs the failure once; each refused request only at debug level.
        log.debug("refusing %s %s: %s", request.method, request.path, exc)
        response = error_response(
            503,
            "store_unavailable",
            f"{exc}; this change was not saved: send it again later",
        )
        response.headers["Retry-After"] = "5"
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        too_large = body_too_large(exc)
        return error_response(too_large.status, too_large.code, too_large.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        # What the router said beside the status (405's Allow) is part of the answer.
        response.headers.update(kept_headers(exc))
        return response
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the controller log has details")


#: Headers of an aiohttp HTTP exception that an answer rendered in its place keeps.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def kept_headers(exc: web.HTTPException) -> dict[str, str]:
    """The headers of ``exc`` (405's ``Allow``...) that the page or JSON answering it keeps."""
    return {name: exc.headers[name] for name in KEPT_HEADERS if name in exc.headers}


class MalformedRequestLog(logging.Filter):
    """aiohttp's server logs every request its parser refuses (it answers 400) as an error
    with a traceback: junk sent to the port would fill the log with them. Each becomes one
    warning line instead, at most one a minute, with how many were refused meanwhile."""

    #: How often a refused request is logged, at most.
    EVERY_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._logged_at = -self.EVERY_S
        self._since = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self._since += 1
        now = time.monotonic()
        if now - self._logged_at < self.EVERY_S:
            return False
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused %d malformed request(s) in the last minute; latest from %s: %s"
        record.args = (self._since, peer, reason[:200])
        record.exc_info = record.exc_text = None
        self._logged_at, self._since = now, 0
        return True


def quiet_malformed_requests() -> None:
    """Install ``MalformedRequestLog`` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestLog) for f in server_log.filters):
        server_log.addFilter(MalformedRequestLog())


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests arrays and objects deeper than ``limit``, found without parsing.

    Strings are cut out and each bracket becomes a step up (2) or down (0); the running sum
    of steps less the position is the depth there, and the scan stops at the first place
    deeper than ``limit``. Everything runs in C iterators: linear in the body and early out
    for a deep one. Removing empty pairs first (lowering the depth by one at most) shrinks
    a shallow body a lot; only a body within one level of the limit is scanned again whole.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not _deeper_than(brackets.replace(b"[]", b"").replace(b"{}", b""), limit - 1):
        return False
    return _deeper_than(brackets, limit)


def _deeper_than(brackets: bytes, limit: int) -> bool:
    depths = map(operator.sub, itertools.accumulate(brackets.translate(_STEPS)), itertools.count(1))
    return next(filter(limit.__lt__, depths), None) is not None


async def check_depth(raw: bytes) -> None:
    """400 for a body nested deeper than ``MAX_JSON_DEPTH``, before any parser recurses."""
    # A large body is scanned in a thread, so other requests are served meanwhile.
    deep = (
        await asyncio.to_thread(json_too_deep, raw)
        if len(raw) > _SCAN_IN_THREAD_BYTES
        else json_too_deep(raw)
    )
    if deep:
        raise ApiError(
            400,
            "json_too_deep",
            f"request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels",
            "body",
        )


def body_too_large(exc: web.HTTPRequestEntityTooLarge) -> ApiError:
    """The 413 for a body over the server's limit, with the limit aiohttp names."""
    return ApiError(413, "body_too_large", f"request body too large: {exc.text}")


async def read_body(request: web.Request) -> bytes:
    """The whole body; 413 when it is over the server's limit."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise body_too_large(exc) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 413 when too large, 400 when not JSON or nested too deep."""
    raw = await read_body(request)
    if not request.get(DEPTH_CHECKED):
        await check_depth(raw)
    return parse_json(raw)


def parse_json(raw: bytes) -> dict[str, Any]:
    """``raw`` (checked by ``check_depth``) as a JSON object; 400 when not JSON, 422 when not
    an object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "request body must be a JSON object")
    return data


def validate(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """``data`` as ``model``; 422 naming the first bad field (dotted path) and the problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        more = exc.error_count() - 1
        suffix = f" ({more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise ApiError(
            422, "invalid", f"{field or 'body'}: {first['msg']}{suffix}", field
        ) from None


async def read_model(request: web.Request, model: type[ModelT]) -> ModelT:
    return validate(model, await read_json(request))
