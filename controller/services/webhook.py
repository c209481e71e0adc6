"""Ticket webhook: a JSON POST signed with HMAC-SHA256 over the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from typing import Any

import aiohttp

from polyfleet.controller.services.email import DeliveryError
from polyfleet.controller.settings.tickets import WebhookSettings

DELIVERY_HEADER = "X-Polyfleet-Delivery"


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare)."""
    return hmac.compare_digest(sign(secret, body), header)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Stable bytes for a payload: the same entry always sends the same body and signature."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookSender:
    """Posts one payload per call through one aiohttp session (opened lazily)."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.ca_file is None:
            return True
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(self.settings.ca_file))
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery_id: str, body: bytes) -> None:
        """POST ``body``; DeliveryError on a network error or a non-2xx answer."""
        s = self.settings
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
            )
        headers = {
            "Content-Type": "application/json",
            s.signature_header: sign(s.secret.reveal(), body),
            DELIVERY_HEADER: delivery_id,
        }
        try:
            async with self._session.post(s.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return
                # 408 and 429 are "try later"; other 4xx will not get better by retrying.
                permanent = 400 <= response.status < 500 and response.status not in (408, 429)
                raise DeliveryError(
                    f"webhook {s.url}: answered {response.status}", permanent=permanent
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"webhook {s.url}: {type(exc).__name__}: {exc}") from None
