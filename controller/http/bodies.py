"""Request bodies, before any handler: a deadline to arrive, JSON nesting depth, credentials seen.

Every body a handler takes whole (JSON, CSV) is read here within ``body_deadline_s`` and
checked for nesting; a streamed upload (``application/octet-stream``) gets the same deadline
through ``deadline_chunks`` in its handler. A late body is answered 408 and its connection
closed, so a caller that stalls mid-body holds nothing for longer than the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from polyfleet.controller.http.auth import PRINCIPAL
from polyfleet.controller.http.connections import ConnectionGuard
from polyfleet.controller.http.errors import (
    DEPTH_CHECKED,
    ApiError,
    Handler,
    body_too_large,
    check_depth,
)
from polyfleet.controller.http.spec import spec_of
from polyfleet.controller.keys import CORE
from polyfleet.shared.schema import MAX_BODY_BYTES

#: The slowest upload rate a body may arrive at, beyond the read timeout itself.
MIN_BODY_RATE = 64 * 1024
#: Bodies handlers stream themselves, under ``deadline_chunks``.
STREAMED_MEDIA = "application/octet-stream"

CONNECTION_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard", ConnectionGuard)


def body_deadline_s(request: web.Request, *, most: int = MAX_BODY_BYTES) -> float:
    """How long this request's body may take: the read timeout plus its size at the slowest
    rate (``most`` bytes when it does not say its size)."""
    length = request.content_length
    size = most if length is None else min(length, most)
    return request.app[CORE].config.read_timeout_s + size / MIN_BODY_RATE


def body_timeout(request: web.Request, seconds: float) -> ApiError:
    """The 408 for a body that did not arrive in time (the connection is closed with it)."""
    guard = request.app.get(CONNECTION_GUARD)
    if guard is not None:
        guard.stats.closed_read_timeout += 1
    # Nothing more is read: without this the server would linger reading the rest of it.
    request.content.feed_eof()
    return ApiError(
        408,
        "body_timeout",
        f"the request body did not arrive within {seconds:.0f} s; send it again",
        "body",
    )


async def deadline_chunks(
    request: web.Request, chunks: AsyncIterator[bytes], seconds: float
) -> AsyncIterator[bytes]:
    """``chunks`` of a streamed body, or a 408 ``ApiError`` once ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    iterator = aiter(chunks)
    while True:
        try:
            async with _timeout_at(deadline):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise body_timeout(request, seconds) from None
        yield chunk


def _timeout_at(deadline: float) -> asyncio.Timeout:
    """``asyncio.timeout_at`` for a ``time.monotonic()`` deadline."""
    return asyncio.timeout(max(0.0, deadline - time.monotonic()))


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read a body within its deadline and refuse one nested too deep, before the handler.

    Runs after authentication: a caller without a credential never gets a body read for an
    endpoint that wants one, and a connection whose request showed one no longer counts
    against the bound on unauthenticated connections.
    """
    if PRINCIPAL in request:
        guard = request.app.get(CONNECTION_GUARD)
        if guard is not None:
            guard.authenticated(request.protocol)
    match = request.match_info
    if isinstance(match, MatchInfoError) or not request.body_exists:
        return await handler(request)
    spec = spec_of(match.handler, request.method)
    if spec.request_media == STREAMED_MEDIA:
        return await handler(request)
    seconds = body_deadline_s(request)
    try:
        async with _timeout_at(time.monotonic() + seconds):
            raw = await request.read()
    except TimeoutError:
        raise body_timeout(request, seconds) from None
    except ConnectionResetError:
        # The caller went away (or its connection was closed as one too many): no answer
        # reaches it, and it is no fault of the controller's.
        raise ApiError(
            400, "body_incomplete", "the connection closed before the body arrived", "body"
        ) from None
    except web.HTTPRequestEntityTooLarge as exc:
        raise body_too_large(exc) from None
    # JSON by the handler's spec (a model, or a JSON media type) or by what the caller says.
    json_body = (
        spec.request is not None
        or (spec.request_media or "").endswith("json")
        or request.content_type.endswith("json")
    )
    if json_body and not spec.own_depth_check:
        await check_depth(raw)
        request[DEPTH_CHECKED] = True
    return await handler(request)
