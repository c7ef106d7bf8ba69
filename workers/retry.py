"""Retry policy: short retries inside a call (tenacity), then broker-side delays.

Every retry has a bound and a backoff with jitter (invariant 6). Broker-side delays are
bounded by the request's own deadline: past it, the request fails with a reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from schemas.wire import RETRY_TIERS_S

from .errors import AmbiguousOutcome, ServiceUnavailable

T = TypeVar("T")


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

    def call(self, fn: Callable[[int], T]) -> T:
        """``fn(try_number)``, tried again after a transient failure, at most ``call_attempts``
        tries in all, with jittered exponential waits between them (:meth:`in_call`).

        The first try runs outside tenacity: it is the common case, and tenacity's bookkeeping
        per call (a controller, an attempt manager, a future) costs as much as parsing EESZT's
        answer. After a transient failure the tries go on under tenacity as if it had made the
        first one too, with the same waits and the same bound; any other error propagates.
        """
        try:
            return fn(1)
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient
            if self.call_attempts <= 1 or not _transient_not_ambiguous(exc):
                raise
            first_failure: BaseException | None = exc
        for attempt in self.in_call():
            with attempt:
                if first_failure is not None:  # tenacity's try 1 is the one made above
                    failure, first_failure = first_failure, None
                    raise failure
                return fn(attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

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
