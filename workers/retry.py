"""Retry policy: short retries inside a call (tenacity), then broker-side delays.

Every retry has a bound and a backoff with jitter (invariant 6). Broker-side delays are
bounded by the request's own deadline: past it, the request fails with a reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from schemas.wire import RETRY_TIERS_S

from .errors import AmbiguousOutcome, ServiceUnavailable


def _transient_not_ambiguous(exc: BaseException) -> bool:
    # An ambiguous outcome is not retried blindly: the caller asks the service first.
    return isinstance(exc, ServiceUnavailable) and not isinstance(exc, AmbiguousOutcome)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    call_attempts: int = 3
    call_wait_min_s: float = 0.05
    call_wait_max_s: float = 1.0
    base_s: float = 1.0
    cap_s: float = 3600.0

    def in_call(self) -> Retrying:
        """A tenacity controller for transient failures inside one call."""
        return Retrying(
            stop=stop_after_attempt(self.call_attempts),
            wait=wait_random_exponential(multiplier=self.call_wait_min_s, max=self.call_wait_max_s),
            retry=retry_if_exception(_transient_not_ambiguous),
            reraise=True,
        )

    def broker_delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter for broker-side attempt ``attempt`` (1-based)."""
        rng = rng or random
        raw = min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1))
        return raw * rng.uniform(0.5, 1.5)

    def next_attempt(self, attempt: int, now: datetime, deadline: datetime,
                     rng: random.Random | None = None) -> datetime | None:
        """When to try again, or None when the next try would fall after the deadline."""
        at = now + timedelta(seconds=self.broker_delay_s(attempt, rng))
        return at if at < deadline else None


def tier_for(delay_s: float) -> int:
    """The delay queue tier for ``delay_s``: the largest tier not above it (at least the first).

    A message waits in its tier queue with a per-message TTL of exactly ``delay_s``; since every
    message in tier k has a TTL below tier k+1, head-of-line waiting adds at most that much.
    """
    chosen = RETRY_TIERS_S[0]
    for tier in RETRY_TIERS_S:
        if tier <= delay_s:
            chosen = tier
    return chosen
