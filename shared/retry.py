"""Waiting between attempts: exponential back-off, capped, optionally jittered, as one policy."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Past this many doublings every delay is at its cap anyway; the bound keeps the power finite.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """How long to wait after ``failures`` failed attempts in a row.

    The first failure waits ``first_s``, each further one ``factor`` times longer, never more
    than ``max_s``. With ``jitter`` (0 to 1) the wait is drawn from ``[(1 - jitter) * d, d]``,
    so that many clients failing together (agents of a controller that restarted) do not
    come back in step.
    """

    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0:
            raise ValueError(f"back-off times must not be negative: {self}")
        if self.factor < 1:
            raise ValueError(f"back-off factor must be at least 1: {self}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"back-off jitter must be between 0 and 1: {self}")

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row (1: the first), unjittered."""
        doublings = min(max(0, failures - 1), _MAX_DOUBLINGS)
        return min(self.max_s, self.first_s * self.factor**doublings)

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (1: the first), jitter applied."""
        ceiling = self.ceiling(failures)
        if not self.jitter:
            return ceiling
        return random.uniform(ceiling * (1 - self.jitter), ceiling)
