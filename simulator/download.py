"""How a simulated unit fetches an ordered firmware package from its update server.

The layout an update server offers [assumed; Poly documents none]: for a version V under
the configured ``upgrade.auto.server.address`` A,

- ``GET A/V/manifest.json`` -> ``{"version": V, "size": N, "sha256": "<hex>"}``
- ``GET A/V/package.bin``   -> the package's N bytes.

The unit checks the size and the SHA-256 before it installs anything; any failure means no
install, and the reason is kept for ``GET /rest/system/softwareupdate``. Like real units
pointed at a provisioning server, it does not verify the server's certificate.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

#: How long one package download may take before the unit gives up.
DOWNLOAD_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5.0
CHUNK = 64 * 1024


class DownloadFailed(Exception):
    """The package could not be fetched or is not the one announced; the text says why."""


@dataclass
class Download:
    """One package download as the lab's control API shows it."""

    version: str
    source: str
    size: int | None = None
    bytes: int = 0
    sha256: str | None = None
    status: str = "downloading"
    detail: str = ""
    started: float = field(default_factory=time.time)

    def view(self) -> dict[str, Any]:
        return asdict(self)


def package_urls(address: str, version: str) -> tuple[str, str]:
    base = address.rstrip("/") + "/" + version
    return base + "/manifest.json", base + "/package.bin"


async def fetch_package(download: Download) -> None:
    """Fetch and check the package ``download`` names; DownloadFailed says what went wrong."""
    manifest_url, package_url = package_urls(download.source, download.version)
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(manifest_url, ssl=False) as response:
                if response.status != 200:
                    raise DownloadFailed(f"manifest: HTTP {response.status} from {manifest_url}")
                manifest = await response.json(content_type=None)
            if not isinstance(manifest, dict):
                raise DownloadFailed("manifest: not a JSON object")
            size, sha256 = manifest.get("size"), manifest.get("sha256")
            if not isinstance(size, int) or not isinstance(sha256, str):
                raise DownloadFailed("manifest: size and sha256 missing")
            download.size = size
            digest = hashlib.sha256()
            async with http.get(package_url, ssl=False) as response:
                if response.status != 200:
                    raise DownloadFailed(f"package: HTTP {response.status} from {package_url}")
                async for chunk in response.content.iter_chunked(CHUNK):
                    download.bytes += len(chunk)
                    if download.bytes > size:
                        raise DownloadFailed(f"size mismatch: more than the {size} bytes announced")
                    digest.update(chunk)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise DownloadFailed(
            f"update server unreachable: {download.source} ({type(exc).__name__}: {exc})"
        ) from exc
    download.sha256 = digest.hexdigest()
    if download.bytes != size:
        raise DownloadFailed(f"size mismatch: {download.bytes} bytes, {size} announced")
    if download.sha256 != sha256.lower():
        raise DownloadFailed(f"checksum mismatch: sha256 {download.sha256}, {sha256} announced")
