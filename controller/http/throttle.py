"""Per-address limits on guessing: failed credentials and failed enrollment codes.

Each client address has a bucket of ``per_minute`` attempts that refills evenly over a
minute. An address whose bucket is empty is answered 429 with ``Retry-After`` before its
credential or code is even looked at, so guessing costs a minute per ``per_minute`` tries
while a person who mistyped once is never slowed. Behind a reverse proxy every client has
the proxy's address: raise the limits there (``[server]`` in controller.toml).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from polyfleet.controller.http.errors import ApiError

#: Addresses remembered at most; the one idle longest is forgotten first (its bucket refills
#: within a minute anyway, so forgetting it early only forgives it a little sooner).
MAX_ADDRESSES = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class AttemptLimiter:
    """At most ``per_minute`` attempts of one kind per client address."""

    def __init__(
        self, kind: str, per_minute: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kind = kind
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: Attempts refused for being over the limit, since start (a metric).
        self.limited_total = 0
        #: Attempts counted (failed credentials, or failed enrollment codes), since start.
        self.attempts_total = 0

    def _refilled(self, address: str) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        now = self._clock()
        bucket.tokens = min(
            self.per_minute, bucket.tokens + (now - bucket.at) * self.per_minute / 60
        )
        bucket.at = now
        return bucket

    def check(self, address: str, what: str) -> None:
        """Raise 429 (``rate_limited``) when ``address`` has no attempt left."""
        bucket = self._refilled(address)
        if bucket is None or bucket.tokens >= 1:
            return
        self.limited_total += 1
        wait = math.ceil((1 - bucket.tokens) * 60 / self.per_minute)
        raise ApiError(
            429,
            "rate_limited",
            f"too many {what} from {address}: at most {self.per_minute} a minute; "
            f"try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )

    def spend(self, address: str) -> None:
        """Count one attempt of ``address``."""
        self.attempts_total += 1
        bucket = self._refilled(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(float(self.per_minute), self._clock())
            if len(self._buckets) > MAX_ADDRESSES:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(address)
        bucket.tokens = max(0.0, bucket.tokens - 1)


#: Failed bearer tokens and dashboard sign-ins, per client address.
AUTH_LIMITER = web.AppKey("auth_limiter", AttemptLimiter)
#: Failed enrollment attempts, per client address.
ENROLL_LIMITER = web.AppKey("enroll_limiter", AttemptLimiter)


def client_address(request: web.Request) -> str:
    """The peer's address as the listener saw it (never a header a client can set)."""
    return request.remote or "unknown"
