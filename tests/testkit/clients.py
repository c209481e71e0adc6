"""HTTP clients for tests: calls carrying a token, and calls from another loopback address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from testkit.reports import bearer


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from ``address`` (another loopback address)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


async def call_with_token(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    """One JSON call carrying ``token``: its status and its JSON answer."""
    async with http.request(method, url, json=body, headers=bearer(token)) as response:
        return response.status, await response.json()
