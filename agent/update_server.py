"""The site update server: packages fetched once from the controller, served over HTTPS.

The cache (``<data dir>/packages``) holds verified packages named by their SHA-256, at most
``cache_max_bytes`` of them (least recently used go first, never one in use). A download
from the controller goes to ``<sha256>.part`` and resumes from its size with an HTTP range
after an interruption or a restart; only a whole file with the right size and SHA-256 is
renamed into place. Concurrent jobs for one package share one download.

Devices fetch, as units do from a provisioning server (``simulator/download.py`` has the
layout): ``GET /fw/<version>/manifest.json`` and ``GET /fw/<version>/package.bin``. The
server's certificate is self-signed and kept in ``<data dir>/update-server``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509

from polyfleet.agent.transport.failures import http_failure_words
from polyfleet.agent.uplink import ControllerRefused, ControllerUnavailable, Uplink
from polyfleet.shared.certificates import make_self_signed
from polyfleet.shared.durable import move_into_place, write_atomically

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
INDEX_FILE = "index.json"


class PackageUnavailable(Exception):
    """The package could not be fetched or verified; the text says why."""


class PackageMismatch(PackageUnavailable):
    """What arrived is not the package ordered (its size or SHA-256 differs); discarded."""


@dataclass(frozen=True)
class PackageRef:
    """Which package a job needs, as the controller names it."""

    version: str
    sha256: str
    size: int


class PackageCache:
    """Verified packages on disk, fetched once per site from the controller."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: dict[str, int] = {}
        #: version -> sha256 of every package served; kept in ``index.json``.
        self.versions: dict[str, str] = {}
        #: Downloads from the controller this process made (bytes fetched, resumed from).
        self.fetches: list[dict[str, object]] = []

    def load(self) -> None:
        """Read the index and drop what a crash left half-renamed (blocking: call in a thread)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.versions = json.loads((self.directory / INDEX_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            self.versions = {}

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.bin"

    def has(self, ref: PackageRef) -> bool:
        path = self.path(ref.sha256)
        return path.exists() and path.stat().st_size == ref.size

    async def ensure(self, uplink: Uplink, ref: PackageRef) -> Path:
        """The verified package, downloaded (or resumed) from the controller when needed."""
        lock = self._locks.setdefault(ref.sha256, asyncio.Lock())
        async with lock:
            if await asyncio.to_thread(self.has, ref):
                await asyncio.to_thread(self._touch, ref)
                return self.path(ref.sha256)
            await self._download(uplink, ref)
            await asyncio.to_thread(self._touch, ref)
            await asyncio.to_thread(self._evict, ref.sha256)
            return self.path(ref.sha256)

    def hold(self, sha256: str) -> None:
        self._in_use[sha256] = self._in_use.get(sha256, 0) + 1

    def release(self, sha256: str) -> None:
        self._in_use[sha256] = max(0, self._in_use.get(sha256, 0) - 1)

    async def _download(self, uplink: Uplink, ref: PackageRef) -> None:
        part = self.directory / f"{ref.sha256}.part"
        offset = await asyncio.to_thread(lambda: part.stat().st_size if part.exists() else 0)
        if offset > ref.size:
            await asyncio.to_thread(part.unlink)
            offset = 0
        started = offset
        try:
            handle = await asyncio.to_thread(open, part, "ab")
            try:
                async for chunk in uplink.download_package(ref.version, offset=offset):
                    offset += len(chunk)
                    if offset > ref.size:
                        raise PackageMismatch(
                            f"{ref.version}: the controller sent more than {ref.size} bytes"
                        )
                    await asyncio.to_thread(handle.write, chunk)
                await asyncio.to_thread(_fsync, handle)
            finally:
                await asyncio.to_thread(handle.close)
        except (ControllerUnavailable, ControllerRefused, aiohttp.ClientError) as exc:
            # The part stays: the next attempt resumes from where this one stopped.
            why = http_failure_words(exc) if isinstance(exc, aiohttp.ClientError) else str(exc)
            raise PackageUnavailable(f"{ref.version}: download from the controller: {why}") from exc
        digest = await asyncio.to_thread(_sha256_of, part)
        self.fetches.append(
            {"version": ref.version, "bytes": offset - started, "resumed_from": started}
        )
        if offset != ref.size or digest != ref.sha256:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise PackageMismatch(
                f"{ref.version}: downloaded {offset} bytes with SHA-256 {digest}, "
                f"expected {ref.size} bytes with {ref.sha256}; discarded"
            )
        await asyncio.to_thread(move_into_place, part, self.path(ref.sha256))
        log.info("package %s fetched and verified (%d bytes)", ref.version, ref.size)

    def _touch(self, ref: PackageRef) -> None:
        os.utime(self.path(ref.sha256))
        if self.versions.get(ref.version) != ref.sha256:
            self.versions[ref.version] = ref.sha256
            write_atomically(self.directory / INDEX_FILE, json.dumps(self.versions))

    def _evict(self, keep: str) -> None:
        """Remove least recently used packages until the cache fits (never one in use)."""
        files = sorted(self.directory.glob("*.bin"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                return
            sha = path.stem
            if sha == keep or self._in_use.get(sha):
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            log.info("package cache: removed %s to stay under %d bytes", sha, self.max_bytes)


def _fsync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """The server's self-signed certificate, made once (blocking)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    made = make_self_signed("polyfleet site update server", names)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(made.key_pem)
    cert_path.write_bytes(made.cert_pem)
    return cert_path, key_path


class SiteUpdateServer:
    """HTTPS server of the cached packages for this site's devices."""

    def __init__(self, cache: PackageCache, *, listen: str, advertise: str, cert_dir: Path) -> None:
        self.cache = cache
        host, _, port = listen.rpartition(":")
        self._host, self._port = host, int(port)
        self._advertise = advertise or host
        self._cert_dir = cert_dir
        self._runner: web.AppRunner | None = None
        self.url = ""
        #: Every package a device fetched: serial-less (devices do not say who they are).
        self.served: list[dict[str, object]] = []

    async def start(self) -> str:
        import ssl

        await asyncio.to_thread(self.cache.load)
        cert, key = await asyncio.to_thread(_certificate, self._cert_dir, self._advertise)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        await asyncio.to_thread(context.load_cert_chain, cert, key)
        app = web.Application()
        app.router.add_get("/fw/{version}/manifest.json", self._manifest)
        app.router.add_get("/fw/{version}/package.bin", self._package)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=context)
        await site.start()
        port = self._runner.addresses[0][1]
        shown = f"[{self._advertise}]" if ":" in self._advertise else self._advertise
        self.url = f"https://{shown}:{port}/fw"
        log.info("site update server on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _known(self, version: str) -> tuple[str, Path]:
        sha = self.cache.versions.get(version)
        if sha is None or not self.cache.path(sha).exists():
            raise web.HTTPNotFound(text=f"no package {version} on this site")
        return sha, self.cache.path(sha)

    async def _manifest(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        sha, path = self._known(version)
        size = (await asyncio.to_thread(path.stat)).st_size
        return web.json_response({"version": version, "size": size, "sha256": sha})

    async def _package(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        _sha, path = self._known(version)
        self.served.append({"version": version, "peer": request.remote, "at": time.time()})
        return web.FileResponse(path, chunk_size=CHUNK)
