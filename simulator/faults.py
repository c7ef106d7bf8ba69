"""Fault injection: how the simulator fails the way a national service fails.

A :class:`FaultConfig` is immutable; the admin endpoint swaps in a new one at run time, so the
request path reads one consistent snapshot without a lock.
"""

from __future__ import annotations

import enum
import random
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OutageWindow(BaseModel):
    """The service answers 503 (fault SRV-001) from ``start`` until ``end``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> "OutageWindow":
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("outage start and end must carry a timezone (e.g. ...Z)")
        if self.end <= self.start:
            raise ValueError("outage end must be after its start")
        return self

    @classmethod
    def parse(cls, text: str, *, now: datetime | None = None) -> "OutageWindow":
        """Parse ``START/END``: ISO-8601 instants, or ``+SECONDS`` relative to now."""
        now = now or datetime.now(timezone.utc)
        try:
            start_s, end_s = text.split("/", 1)
        except ValueError:
            raise ValueError(f"outage window {text!r}: expected START/END") from None

        def one(part: str) -> datetime:
            part = part.strip()
            if part.startswith("+"):
                from datetime import timedelta

                return now + timedelta(seconds=float(part[1:]))
            value = datetime.fromisoformat(part.replace("Z", "+00:00"))
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

        return cls(start=one(start_s), end=one(end_s))


class DuplicatesMode(str, enum.Enum):
    DEDUPE = "dedupe"  # a repeated idempotency key returns the original record
    NAIVE = "naive"  # a repeated key is stored again: the worst case the gateway must survive


Rate = Field(default=0.0, ge=0.0, le=1.0)


class FaultConfig(BaseModel):
    """Everything that can be flipped at run time through ``PUT /admin/faults``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, description="added latency per call")
    jitter_ms: float = Field(default=0.0, ge=0, description="uniform jitter added to the latency")
    error_rate: float = Rate  # HTTP 500 with a server fault (SRV-002), nothing stored
    reset_rate: float = Rate  # connection reset before processing, nothing stored
    hang_rate: float = Rate  # no answer for hang_s, then the connection is dropped; nothing stored
    ambiguous_rate: float = Rate  # processed and stored, then the connection is reset: unknown outcome
    hang_s: float = Field(default=30.0, ge=0)
    outages: tuple[OutageWindow, ...] = ()
    apply_to_sts: bool = Field(default=False, description="inject faults into the STS as well")
    token_lifetime_s: int = Field(default=3600, ge=1, description="SAML assertion lifetime")
    max_skew_s: float = Field(default=300.0, ge=0, description="allowed Timestamp clock skew")
    duplicates: DuplicatesMode = DuplicatesMode.DEDUPE

    def in_outage(self, now: datetime) -> bool:
        return any(w.start <= now < w.end for w in self.outages)


class Injection(str, enum.Enum):
    NONE = "none"
    OUTAGE = "outage"
    ERROR = "error"
    RESET = "reset"
    HANG = "hang"
    AMBIGUOUS = "ambiguous"


class FaultInjector:
    """Draws, per request, which fault (if any) hits it. Seeded for reproducible runs."""

    def __init__(self, config: FaultConfig, *, seed: int | None = None) -> None:
        self.config = config
        self._rng = random.Random(seed)

    def draw(self, now: datetime, *, sts: bool) -> Injection:
        cfg = self.config
        if sts and not cfg.apply_to_sts:
            return Injection.NONE
        if cfg.in_outage(now):
            return Injection.OUTAGE
        r = self._rng.random()
        for kind, rate in (
            (Injection.ERROR, cfg.error_rate),
            (Injection.RESET, cfg.reset_rate),
            (Injection.HANG, cfg.hang_rate),
            (Injection.AMBIGUOUS, cfg.ambiguous_rate),
        ):
            if r < rate:
                return kind
            r -= rate
        return Injection.NONE

    def delay_s(self, *, sts: bool) -> float:
        cfg = self.config
        if sts and not cfg.apply_to_sts:
            return 0.0
        if cfg.latency_ms <= 0 and cfg.jitter_ms <= 0:
            return 0.0
        return (cfg.latency_ms + self._rng.uniform(0, cfg.jitter_ms)) / 1000.0
