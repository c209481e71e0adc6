"""A stand-in update server for lab tests: HTTPS on loopback, the layout units fetch from."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from polyfleet.simulator.identity import make_tls_identity
from polyfleet.simulator.testing import next_address


class PackageServer:
    """Serves ``<version>/manifest.json`` and ``<version>/package.bin`` under ``/fw``.

    ``lie_about`` names versions whose manifest announces another checksum (a damaged
    package as the unit sees it).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.packages: dict[str, bytes] = {}
        self.lie_about: set[str] = set()
        self.fetched: list[str] = []
        self.address = next_address()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, version: str, content: bytes) -> None:
        self.packages[version] = content

    async def _manifest(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        content = self.packages.get(version)
        if content is None:
            raise web.HTTPNotFound()
        digest = hashlib.sha256(content).hexdigest()
        if version in self.lie_about:
            digest = hashlib.sha256(b"another package").hexdigest()
        return web.json_response({"version": version, "size": len(content), "sha256": digest})

    async def _package(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        content = self.packages.get(version)
        if content is None:
            raise web.HTTPNotFound()
        self.fetched.append(version)
        return web.Response(body=content, content_type="application/octet-stream")

    async def start(self) -> str:
        tls = make_tls_identity(self.directory, "update server", self.address)
        app = web.Application()
        app.router.add_get("/fw/{version}/manifest.json", self._manifest)
        app.router.add_get("/fw/{version}/package.bin", self._package)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, 0, ssl_context=tls.server_context())
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://{self.address}:{port}/fw"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
