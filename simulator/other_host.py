"""Hosts on a site's network that answer HTTPS (and maybe SSH) but are not Poly VideoOS devices."""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko
from aiohttp import web

from polyfleet.simulator import identity
from polyfleet.simulator.fleet import OtherHostSpec, default_port
from polyfleet.simulator.listeners import Listeners, accept_ssh, bind_listener
from polyfleet.simulator.ssh import AUTH_FAILED, AUTH_SUCCESSFUL, SessionServer, serve_session

#: What each kind says in its ``Server`` header and SSH identification [assumed: typical].
SERVER_HEADERS = {"web_server": "lighttpd/1.4.59", "json_api": "nginx", "poly_phone": "Poly"}
SSH_VERSION = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"
MAX_LINE = 1024
LISTEN_BACKLOG = 16


def _page(status: int, title: str, body: str, server: str) -> web.Response:
    text = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body>{body}</body></html>\n"
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Server": server}
    )


class OtherHost:
    """One non-Poly host: an HTTPS server of its ``kind`` and, with ``ssh_port``, a Linux SSH."""

    def __init__(self, spec: OtherHostSpec, *, site: str, room: str, data_dir: Path) -> None:
        self.spec = spec
        self.site = site
        self.room = room
        self.data_dir = data_dir
        self.rest_port = spec.rest_port if spec.rest_port is not None else default_port(443)
        self.ssh_port: int | None = spec.ssh_port
        self.tls_fingerprint = ""
        self.ssh_fingerprint = ""
        self._tls: identity.TlsIdentity | None = None
        self._host_key: paramiko.PKey | None = None
        self._listeners = Listeners()
        self._lock = threading.Lock()
        self._web = web.Server(self._handle)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def admin_password(self) -> str:
        return self.spec.admin_password

    def load_identity(self) -> None:
        """Load or make the certificate and host key (blocking: call from a thread)."""
        self._tls = identity.load_or_make_tls_identity(
            self.data_dir, self.spec.page_title, self.address
        )
        self.tls_fingerprint = self._tls.fingerprint
        if self.spec.ssh_port is not None:
            self._host_key = identity.load_or_make_host_key(self.data_dir, "ed25519")
            self.ssh_fingerprint = identity.host_key_fingerprint(self._host_key)

    async def start(self) -> None:
        if self._tls is None:
            await asyncio.to_thread(self.load_identity)
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._web,
            self.address,
            self.rest_port,
            ssl=self._tls.server_context(),
            ssl_handshake_timeout=10,
        )
        self._listeners.rest_server = server
        self.rest_port = server.sockets[0].getsockname()[1]
        if self.ssh_port is not None:
            sock = bind_listener(self.address, self.ssh_port, LISTEN_BACKLOG)
            self.ssh_port = sock.getsockname()[1]
            self._listeners.ssh_socket = sock
            self._listeners.ssh_task = loop.create_task(self._accept_ssh(sock))

    async def stop(self) -> None:
        await self._listeners.close(self._web, self._lock)

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "site": self.site,
            "room": self.room,
            "address": self.address,
            "rest_port": self.rest_port,
            "ssh_port": self.ssh_port,
            "tls_fingerprint": self.tls_fingerprint,
            "ssh_fingerprint": self.ssh_fingerprint,
            "title": self.spec.page_title,
        }

    # --- HTTPS ----------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        kind = self.spec.kind
        server = SERVER_HEADERS[kind]
        title = self.spec.page_title
        if kind == "json_api":
            # Another vendor's API: everything needs its own token, none of VideoOS's shapes.
            return web.Response(
                status=401,
                text=json.dumps({"error": "unauthorized", "message": "missing bearer token"}),
                content_type="application/json",
                headers={"Server": server, "WWW-Authenticate": 'Bearer realm="api"'},
            )
        if request.path == "/" and request.method in ("GET", "HEAD"):
            if kind == "poly_phone":
                body = f"<h1>{title}</h1><p>Web Configuration Utility</p><form>Password</form>"
            else:
                body = f"<h1>{title}</h1><p>Sign in to manage this device.</p>"
            return _page(200, title, body, server)
        return _page(404, "404 Not Found", "<h1>Not Found</h1>", server)

    # --- SSH: a plain Linux box -----------------------------------------------------------

    async def _accept_ssh(self, sock: socket.socket) -> None:
        await accept_ssh(sock, self._serve_ssh, f"ssh-{self.name}")

    def answer(self, line: str) -> tuple[str, int]:
        """A shell's output and exit status for one command line."""
        try:
            words = shlex.split(line)
        except ValueError:
            return "sh: 1: Syntax error: Unterminated quoted string\n", 2
        if not words:
            return "", 0
        if words[0] == "whoami":
            return "admin\n", 0
        if words[0] == "hostname":
            return f"{self.name}\n", 0
        if words[0] == "uname":
            return f"Linux {self.name} 6.1.0-18-amd64 #1 SMP Debian 6.1.76-1 x86_64 GNU/Linux\n", 0
        return f"sh: 1: {words[0]}: not found\n", 127

    def _serve_ssh(self, conn: socket.socket) -> None:
        assert self._host_key is not None
        server = _LinuxSshServer(self.spec.admin_password)

        def run(channel: paramiko.Channel) -> None:
            if server.command is not None:
                output, status = self.answer(server.command)
                if status:
                    channel.sendall_stderr(output.encode())
                else:
                    channel.sendall(output.encode())
                channel.send_exit_status(status)
            else:
                self._shell(channel, echo=server.pty)
                channel.send_exit_status(0)

        serve_session(
            conn,
            version=SSH_VERSION,
            host_key=self._host_key,
            server=server,
            track=self._track_ssh_transport,
            run=run,
        )

    def _track_ssh_transport(self, transport: paramiko.Transport, active: bool) -> bool:
        """Register (or forget) a live SSH transport; False once the host no longer serves."""
        with self._lock:
            serving = self._listeners.ssh_socket is not None
            return self._listeners.track_ssh(transport, active, serving=serving)

    def _shell(self, channel: paramiko.Channel, *, echo: bool) -> None:
        prompt = f"admin@{self.name}:~$ ".encode()
        channel.sendall(b"Linux " + self.name.encode() + b" 6.1.0-18-amd64 x86_64\r\n\r\n" + prompt)
        line = bytearray()
        while True:
            data = channel.recv(1024)
            if not data:
                return
            for byte in data:
                if byte not in (0x0A, 0x0D):
                    if len(line) < MAX_LINE:
                        line.append(byte)
                    continue
                if byte == 0x0A and not line:
                    continue
                text = line.decode("utf-8", "replace").strip()
                line.clear()
                if echo:
                    # A terminal echoes what was typed; without a pty nothing does.
                    channel.sendall(text.encode() + b"\r\n")
                if text in ("exit", "logout"):
                    channel.sendall(b"logout\r\n")
                    return
                output, _status = self.answer(text)
                channel.sendall(output.replace("\n", "\r\n").encode() + prompt)


class _LinuxSshServer(SessionServer):
    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password

    def check_auth_password(self, username: str, password: str) -> int:
        good = secrets.compare_digest(password.encode(), self.password.encode())
        return AUTH_SUCCESSFUL if good else AUTH_FAILED
