"""A circuit breaker per EESZT service: hold traffic during an outage, release it afterwards.

- **Closed**: requests go through. ``failure_threshold`` transient failures in a row (each
  already retried inside the call) open it. Only a call that **started after the last answer**
  counts: with 64 calls in flight per process, calls that were stuck behind a burst (a TLS
  handshake storm at start-up, one slow moment) can time out together just after other calls
  were answered, and an answer newer than the call says more about the service than its
  failure does. Without this the breaker opened and closed again within milliseconds under
  load ("flapping"), parking work for nothing.
- **Open**: requests are not sent; they are parked durably in ``eeszt.parked.<service>`` (see
  :mod:`workers.outbox`) and acknowledged, so nothing waits in worker memory however long the
  outage lasts, and the HIS is told "parked" once. A prober thread sends **one probe per
  ``probe_interval_s`` per worker process** (a query by idempotency key: any SOAP answer, even a
  refusal, means the service is back). That is the bound on what an unavailable EESZT sees from
  the gateway: processes ÷ probe interval.
- **Back**: a successful probe closes the breaker and the parked requests are moved back to their
  work queue at ``release_rate`` per second (one releaser at a time across processes), so the
  recovering service is not hit by a day's backlog at once.

State is per worker process: each process finds out about an outage by itself (within
``failure_threshold`` requests) and probes by itself. :meth:`Breakers.snapshot` is what the
process tells ``eeszt-gw status`` (``workers.middleware.control``): per service the state, since
when, the failures in a row, the openings and the last probe. It reports **half-open** while a
probe is in flight: the probe is the one trial call; the requests themselves stay parked until
it answers (``state`` itself stays ``OPEN``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any, Callable

from schemas.audit import mask_text

log = logging.getLogger("eeszt_gw.breaker")


class State(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    #: only reported (``snapshot``): open, with the probe in flight
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(self, service: str, *, failure_threshold: int = 5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.service = service
        self.failure_threshold = failure_threshold
        self.clock = clock
        self.wall = wall  # epoch seconds, for what is reported (``snapshot``)
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at: float | None = None
        self.last_probe = 0.0
        self.last_success: float | None = None  # clock() of the last answer
        self.stale_failures = 0  # failures not counted: the call began before the last answer
        self.openings = 0
        self.changed_at = wall()  # the last state change (or the breaker's creation)
        self.last_probe_at: float | None = None
        self.probing = False  # a probe is in flight (set by Breakers' prober)
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    def record_success(self) -> bool:
        """A call got an answer. Returns True when this closed an open breaker."""
        if self.state is State.CLOSED and not self.failures:
            # The common case, without the lock that 64 threads would take in turn: nothing
            # to reset, only the time of the latest answer (one attribute store).
            self.last_success = self.clock()
            return False
        with self._lock:
            self.failures = 0
            self.last_success = self.clock()
            if self.state is State.OPEN:
                self.state = State.CLOSED
                self.changed_at = self.wall()
                log.info("%s answers again: circuit closed after %.0f s", self.service,
                         self.clock() - (self.opened_at or self.clock()))
                return True
            return False

    def record_failure(self, reason: str = "", *, started: float | None = None) -> None:
        """A call failed transiently (``reason``: what the last try saw, for the log).

        ``started``: when the call began, on this breaker's clock. A call that began before the
        last answer does not count (see the module's docstring); None counts always.
        """
        with self._lock:
            if started is not None and self.last_success is not None \
                    and started < self.last_success:
                self.stale_failures += 1
                return
            self.failures += 1
            if self.state is State.CLOSED and self.failures >= self.failure_threshold:
                self.state = State.OPEN
                self.opened_at = self.last_probe = self.clock()
                self.changed_at = self.wall()
                self.openings += 1
                log.warning("%s is unavailable (%d failures in a row, the last: %s): circuit "
                            "open, requests are parked", self.service, self.failures,
                            mask_text(reason) if reason else "no reason given")

    def probe_due(self, interval_s: float) -> bool:
        with self._lock:
            if self.state is not State.OPEN or self.clock() - self.last_probe < interval_s:
                return False
            self.last_probe = self.clock()
            self.last_probe_at = self.wall()
            return True

    def snapshot(self) -> dict[str, Any]:
        """What ``eeszt-gw status`` shows of this breaker; times are epoch seconds."""
        with self._lock:
            state = State.HALF_OPEN if self.state is State.OPEN and self.probing else self.state
            return {"service": self.service, "state": state.value, "since": self.changed_at,
                    "failures": self.failures, "openings": self.openings,
                    "last_probe_at": self.last_probe_at}


class Breakers:
    """The breakers of one process, and the thread that probes the open ones."""

    def __init__(self, *, failure_threshold: int = 5, probe_interval_s: float = 10.0,
                 probe: Callable[[str], bool] | None = None,
                 on_close: Callable[[str], None] | None = None) -> None:
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self.probe = probe
        self.on_close = on_close
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.probes = 0

    def get(self, service: str) -> CircuitBreaker:
        breaker = self._breakers.get(service)  # the common case: made before, no lock
        if breaker is not None:
            return breaker
        with self._lock:
            if service not in self._breakers:
                self._breakers[service] = CircuitBreaker(service,
                                                         failure_threshold=self.failure_threshold)
            return self._breakers[service]

    def states(self) -> dict[str, str]:
        with self._lock:
            return {s: b.state.value for s, b in self._breakers.items()}

    def snapshot(self, parked: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Every breaker's :meth:`CircuitBreaker.snapshot`, by service name; a service that has
        seen no request in this process has no breaker yet (closed). ``parked`` (requests this
        process parked, by service, from its metrics) adds ``parked`` where it names the service."""
        with self._lock:
            breakers = sorted(self._breakers.values(), key=lambda b: b.service)
        out = [b.snapshot() for b in breakers]
        for entry in out:
            if parked is not None and entry["service"] in parked:
                entry["parked"] = int(parked[entry["service"]])
        return out

    def closed(self, service: str) -> None:
        if self.on_close is not None:
            self.on_close(service)

    def start(self) -> "Breakers":
        if self.probe is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="breaker-prober", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(min(0.5, self.probe_interval_s / 4)):
            with self._lock:
                breakers = list(self._breakers.values())
            for breaker in breakers:
                if not breaker.probe_due(self.probe_interval_s):
                    continue
                self.probes += 1
                breaker.probing = True
                try:
                    up = self.probe(breaker.service)
                except Exception:  # a failing probe is a "still down"
                    log.exception("probe of %s failed", breaker.service)
                    up = False
                finally:
                    breaker.probing = False
                if up and breaker.record_success():
                    self.closed(breaker.service)
