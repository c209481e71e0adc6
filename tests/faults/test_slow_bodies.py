"""Requests that stall: real sockets that send headers and part of a body, then nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from faultkit import Controllers, enroll, post_batch
from testkit.reports import batch, report, snapshot
from testkit.waiting import wait_until

#: Short limits, so a stalled request is dealt with within the test.
CONFIG = "[server]\nread_timeout_s = 1\nmax_unauthenticated_connections = 10\n"


class StalledRequest:
    """A socket that sent a request's headers and the first bytes of its body, then stalls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answer = b""
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := await self.reader.read(65536):
                self.answer += chunk
        self.closed.set()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def stall(url: str, path: str, token: str | None = None) -> StalledRequest:
    """POST ``path`` announcing a 10,000-byte JSON body and send only its first 10 bytes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n".encode()
        + b'{"protocol'
    )
    await writer.drain()
    return StalledRequest(reader, writer)


@contextlib.asynccontextmanager
async def stalled(
    url: str, path: str, count: int, token: str | None = None
) -> AsyncIterator[list[StalledRequest]]:
    requests = [await stall(url, path, token) for _ in range(count)]
    try:
        yield requests
    finally:
        for request in requests:
            await request.close()


async def test_stalled_body_is_answered_408_and_closed(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """A body that stops arriving gets 408 and a closed connection after the read timeout."""
    controller = await controllers.start(CONFIG)
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    async with (
        stalled(controller.url, "/api/v1/agent/enroll", 1) as public,
        stalled(controller.url, "/api/v1/agent/reports", 1, token) as agent,
    ):
        started = time.monotonic()
        for request in (*public, *agent):
            await asyncio.wait_for(request.closed.wait(), 20)
            assert request.answer.startswith(b"HTTP/1.1 408"), request.answer[:200]
            assert b'"code":"body_timeout"' in request.answer.replace(b" ", b"")
        # 1 s of read timeout plus 10,000 bytes at 64 KiB/s: well under the 20 s waited.
        assert time.monotonic() - started < 20
    timeouts = await controller.metric(
        http, controller.admin_token, 'polyfleet_connections_closed_total{reason="read_timeout"}'
    )
    assert timeouts == 2


async def test_stalled_connections_without_credential_are_bounded(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """40 stalled unauthenticated uploads: at most 10 stay open, and an agent still reports."""
    controller = await controllers.start(
        CONFIG.replace("read_timeout_s = 1", "read_timeout_s = 60")
    )
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    async with stalled(controller.url, "/api/v1/agent/enroll", 40) as requests:
        await wait_until(
            lambda: sum(not r.closed.is_set() for r in requests) <= 10,
            what="the stalled connections beyond the bound to be closed",
        )
        # A fresh connection of an agent shows its token at once and is served.
        async with aiohttp.ClientSession() as fresh:
            answer = await post_batch(
                fresh, controller.url, token, batch(report(snapshot("SLOW-1")))
            )
        assert answer.status == 200, answer
        assert sum(not r.closed.is_set() for r in requests) <= 10
        unauthenticated = await controller.metric(
            http, controller.admin_token, "polyfleet_unauthenticated_connections"
        )
        assert unauthenticated is not None and unauthenticated <= 10
    closed = await controller.metric(
        http,
        controller.admin_token,
        'polyfleet_connections_closed_total{reason="unauthenticated_limit"}',
    )
    assert closed is not None and closed >= 30
    assert "connections without a credential: closed the oldest" in controller.log()


async def test_stalled_request_headers_are_closed_after_the_read_timeout(
    controllers: Controllers,
) -> None:
    """A connection that sends half a request line and stops is closed after the timeout."""
    controller = await controllers.start(CONFIG)
    parts = urlsplit(controller.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"POST /api/v1/agent/enr")
    await writer.drain()
    try:
        assert await asyncio.wait_for(reader.read(), 20) == b""
    finally:
        writer.close()
