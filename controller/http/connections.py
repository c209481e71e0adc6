"""Bounds on what callers hold open: unauthenticated connections, and the site that counts them.

A connection counts as unauthenticated from its start until a request on it shows a valid
credential (the body middleware tells ``ConnectionGuard.authenticated``). Past
``max_unauthenticated`` such connections, the oldest of them is closed: a flood of stalled
connections cannot keep out an agent, which shows its token in the first request it sends
(milliseconds after connecting), while the flood's own connections take turns. How long any
request may take to arrive is bounded separately (the keep-alive timer for headers, the body
middleware's deadline for bodies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

#: A connection object that has not been connected this long after its creation is gone.
_NEVER_CONNECTED_S = 1.0
#: How often the warning about closed connections is logged, at most.
_WARN_EVERY_S = 60.0


@dataclass
class ConnectionStats:
    """Counters the metrics endpoint reads."""

    closed_unauthenticated: int = 0
    closed_read_timeout: int = 0


class ConnectionGuard:
    """Tracks the TCP connections without a credential yet and closes the oldest past a bound."""

    def __init__(self, max_unauthenticated: int) -> None:
        self.max_unauthenticated = max_unauthenticated
        self.stats = ConnectionStats()
        #: Unauthenticated connections, oldest first, with when each was accepted.
        self._waiting: dict[RequestHandler, float] = {}
        self._warned_at = 0.0
        self._closed_since_warning = 0

    @property
    def unauthenticated(self) -> int:
        """How many connections without a credential are open now."""
        self._forget_closed()
        return len(self._waiting)

    def admit(self, server: web.Server) -> RequestHandler:
        """The protocol for a new connection (the listening socket's protocol factory)."""
        handler = server()
        self._waiting[handler] = time.monotonic()
        # Once the connections accepted in this burst are made (their transports are set).
        asyncio.get_running_loop().call_soon(self._enforce)
        return handler

    def _enforce(self) -> None:
        """Close the oldest connected unauthenticated connections beyond the bound."""
        self._forget_closed()
        excess = len(self._waiting) - self.max_unauthenticated
        if excess <= 0:
            return
        oldest = [h for h in self._waiting if h.transport is not None][:excess]
        for handler in oldest:
            del self._waiting[handler]
            self._close(handler)

    def authenticated(self, handler: object) -> None:
        """A request on this connection showed a valid credential: it no longer counts."""
        if isinstance(handler, RequestHandler):
            self._waiting.pop(handler, None)

    def _forget_closed(self) -> None:
        now = time.monotonic()
        gone = []
        for handler, since in self._waiting.items():
            transport = handler.transport
            if transport is None:
                if now - since > _NEVER_CONNECTED_S:
                    gone.append(handler)
            elif transport.is_closing():
                gone.append(handler)
        for handler in gone:
            del self._waiting[handler]

    def _close(self, handler: RequestHandler) -> None:
        self.stats.closed_unauthenticated += 1
        self._closed_since_warning += 1
        transport = handler.transport
        peer = None if transport is None else transport.get_extra_info("peername")
        handler.force_close()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            log.warning(
                "more than %d connections without a credential: closed the oldest "
                "(%d since the last warning; latest from %s)",
                self.max_unauthenticated,
                self._closed_since_warning,
                peer,
            )
            self._warned_at = now
            self._closed_since_warning = 0


class GuardedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a ``ConnectionGuard``."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, **kwargs: object) -> None:
        super().__init__(runner, **kwargs)  # type: ignore[arg-type]
        self._guard = guard

    async def start(self) -> None:
        # TCPSite.start with the guard in front of the server's protocol factory.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: guard.admit(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
