"""Finds Poly devices in the ranges an admin names (and nowhere else), without logging in."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from polyfleet.agent.transport.rest import fetch_certificate_fingerprint
from polyfleet.shared.errors import ConfigError, DeviceError

DEFAULT_REST_PORTS = (443,)
DEFAULT_SSH_PORTS = (22,)
DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT_S = 2.0
#: Largest number of addresses one discover run accepts (a /16).
MAX_ADDRESSES = 65536
_TITLE = re.compile(rb"<title>([^<]{0,200})</title>", re.IGNORECASE)
_MAX_PAGE = 64 * 1024


@dataclass
class Found:
    """What an unauthenticated look at one address showed."""

    address: str
    poly: bool = False
    rest_port: int | None = None
    tls_fingerprint: str | None = None
    title: str = ""
    os: str = ""
    model_hint: str = ""
    #: The HTTPS ``Server`` header, what a host that is not Poly often names itself by.
    server: str = ""
    ssh_port: int | None = None
    ssh_banner: str = ""
    #: Whether ``/rest/system`` asks for a session (VideoOS); None when not looked at.
    videoos_api: bool | None = None
    #: It took TLS but did not answer over HTTPS within the timeout: a busy unit may be a
    #: Poly, so it is neither counted as one nor called something else.
    undecided: bool = False
    evidence: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def expand_ranges(ranges: Iterable[str]) -> list[str]:
    """Addresses of the given CIDRs (or single addresses), in order, without duplicates."""
    seen: dict[str, None] = {}
    for text in ranges:
        try:
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"{text!r} is not an address range (e.g. 127.0.0.0/24): {exc}"
            ) from exc
        if network.num_addresses > MAX_ADDRESSES:
            raise ConfigError(
                f"{text}: {network.num_addresses} addresses is more than {MAX_ADDRESSES}; "
                "split it into smaller ranges"
            )
        hosts = list(network.hosts()) if network.num_addresses > 2 else list(network)
        for address in hosts:
            seen[str(address)] = None
        if len(seen) > MAX_ADDRESSES:
            raise ConfigError(f"more than {MAX_ADDRESSES} addresses in total; narrow the ranges")
    return list(seen)


async def _landing_page(
    session: aiohttp.ClientSession, address: str, port: int, timeout: float
) -> tuple[int, str, bytes]:
    async with _look(session, address, port, "/", timeout) as resp:
        server = resp.headers.get("Server", "")[:100]
        return resp.status, server, await resp.content.read(_MAX_PAGE)


async def _rest_api_status(
    session: aiohttp.ClientSession, address: str, port: int, timeout: float
) -> int | None:
    """Status of ``GET /rest/system`` without a session: 403 on VideoOS, else 404 or other."""
    try:
        async with _look(session, address, port, "/rest/system", timeout) as resp:
            await resp.content.read(_MAX_PAGE)
            return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def _look(
    session: aiohttp.ClientSession, address: str, port: int, path: str, timeout: float
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """``GET https://address:port/path`` as discovery asks: no certificate check, no
    redirect followed."""
    host = f"[{address}]" if ":" in address else address
    return session.get(
        f"https://{host}:{port}{path}",
        ssl=_no_verify(),
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
    )


def _no_verify() -> ssl.SSLContext:
    # Discovery only looks (no credentials are sent): any certificate is worth a look.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _ssh_banner(address: str, port: int, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return ""
    text = line.decode("ascii", errors="replace").strip()
    return text[:200] if text.startswith("SSH-") else ""


async def probe_address(
    session: aiohttp.ClientSession,
    address: str,
    *,
    rest_ports: tuple[int, ...],
    ssh_ports: tuple[int, ...],
    timeout: float,
) -> Found | None:
    """Look at one address: TLS certificate and landing page on the REST ports, SSH banner."""
    found = Found(address=address)
    for port in rest_ports:
        try:
            fingerprint = await fetch_certificate_fingerprint(address, port, timeout=timeout)
        except DeviceError:
            continue
        found.rest_port = port
        found.tls_fingerprint = fingerprint
        try:
            status, server, page = await _landing_page(session, address, port, timeout)
        except TimeoutError:
            found.undecided = True
            found.evidence.append(
                f"https:{port}: TLS, but no HTTP answer within {timeout:g} s "
                "(a busy unit may need a longer --timeout)"
            )
            break
        except (aiohttp.ClientError, OSError):
            found.evidence.append(f"https:{port}: TLS, but no HTTP answer")
            break
        found.server = server
        match = _TITLE.search(page)
        found.title = match.group(1).decode("utf-8", "replace").strip() if match else ""
        lowered = page.lower()
        if b"polyos" in lowered:
            found.os = "PolyOS"
        elif b"videoos" in lowered:
            found.os = "Poly VideoOS"
        landing = f"landing page HTTP {status}" + (f" {found.title!r}" if found.title else "")
        if found.os:
            landing += f" (says {found.os})"
        if server:
            landing += f" [{server}]"
        if status == 200 and (found.os or found.title.lower().startswith("poly")):
            found.evidence.append(landing)
            # Poly desk phones say "Poly" too: only a VideoOS REST API makes it one of ours.
            api = await _rest_api_status(session, address, port, timeout)
            # VideoOS asks for a session with 403 (device document); a 401 is another API.
            found.videoos_api = api == 403
            if found.videoos_api:
                found.poly = True
                found.model_hint = found.title.removeprefix("Poly ").strip()
                found.evidence.append(f"VideoOS REST API (/rest/system asks for a session: {api})")
            elif api is None:
                found.undecided = True
                found.evidence.append(
                    f"/rest/system gave no answer within {timeout:g} s "
                    "(a busy unit may need a longer --timeout)"
                )
                found.os = ""
            else:
                found.evidence.append(f"no VideoOS REST API (/rest/system: {api})")
                # What the page claims is in the evidence; the fields name only Poly devices.
                found.os = ""
        else:
            found.evidence.append(f"{landing}: not a Poly page")
        break
    for port in ssh_ports:
        banner = await _ssh_banner(address, port, timeout)
        if banner:
            found.ssh_port = port
            found.ssh_banner = banner
            if not found.poly:
                # Without logging in SSH names only its software, never "VideoOS".
                found.evidence.append(f"ssh:{port} {banner}")
            break
    if found.rest_port is None and found.ssh_port is None:
        return None
    return found


async def discover(
    ranges: Iterable[str],
    *,
    rest_ports: tuple[int, ...] = DEFAULT_REST_PORTS,
    ssh_ports: tuple[int, ...] = DEFAULT_SSH_PORTS,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[Found]:
    """Every answering address of ``ranges`` (Poly or not), in address order.

    At most ``concurrency`` addresses are looked at at once; ``progress(done,
    total, poly_found)`` is called after each address.
    """
    addresses = expand_ranges(ranges)
    total = len(addresses)
    semaphore = asyncio.Semaphore(max(1, concurrency))
    results: dict[str, Found] = {}
    done = 0
    poly = 0

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def one(address: str) -> None:
            nonlocal done, poly
            async with semaphore:
                found = await probe_address(
                    session, address, rest_ports=rest_ports, ssh_ports=ssh_ports, timeout=timeout
                )
            done += 1
            if found is not None:
                results[address] = found
                poly += found.poly
            if progress is not None:
                progress(done, total, poly)

        await asyncio.gather(*(one(a) for a in addresses))
    return [results[a] for a in addresses if a in results]
