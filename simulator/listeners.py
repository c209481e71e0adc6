"""A simulated host's REST and SSH listeners, and the one way to shut them down."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko
from aiohttp import web


@dataclass
class Listeners:
    rest_server: asyncio.Server | None = None
    ssh_socket: socket.socket | None = None
    ssh_task: asyncio.Task[None] | None = None
    ssh_transports: set[paramiko.Transport] = field(default_factory=set)
    #: While silent in ``drop`` mode: listeners that never accept, plus the connections
    #: that fill their one-slot queues, so the kernel drops every new connection attempt.
    tarpit: list[socket.socket] = field(default_factory=list)

    def track_ssh(self, transport: paramiko.Transport, active: bool, *, serving: bool) -> bool:
        """Register (or forget) a live SSH transport; False when the host no longer serves.

        Call with the lock ``close`` takes held.
        """
        if not active:
            self.ssh_transports.discard(transport)
            return True
        if not serving:
            return False
        self.ssh_transports.add(transport)
        return True

    async def close(self, web_server: web.Server, transports_lock: threading.Lock) -> None:
        """Stop accepting, drop open HTTPS connections and end every SSH session."""
        if self.rest_server is not None:
            self.rest_server.close()
            for handler in web_server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
            self.rest_server = None
        if self.ssh_task is not None:
            self.ssh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ssh_task
            self.ssh_task = None
        if self.ssh_socket is not None:
            self.ssh_socket.close()
            self.ssh_socket = None
        with transports_lock:
            transports = list(self.ssh_transports)
            self.ssh_transports.clear()
        for transport in transports:
            # Closing joins paramiko's thread: keep that off the event loop.
            await asyncio.to_thread(transport.close)


def bind_listener(address: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking socket listening on ``address:port`` (closed again if that fails)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def accept_ssh(
    sock: socket.socket, serve: Callable[[socket.socket], None], name: str
) -> None:
    """Hand every connection accepted on ``sock`` to ``serve``, until the socket is closed."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _peer = await loop.sock_accept(sock)
        except OSError:
            return
        conn.setblocking(True)
        # One short-lived thread per SSH connection: paramiko is blocking.
        threading.Thread(target=serve, args=(conn,), name=name, daemon=True).start()
