"""Prometheus metrics of a worker process: requests, tokens, circuits, certificates.

One concern, one module. The pipeline tells a :class:`MetricsObserver` about every outcome (it
is the pipeline's ``Observer``); everything else is read at scrape time by custom collectors
(:class:`TokenCollector`, :class:`BreakerCollector`, :class:`CertificateCollector`), so no work
runs per request beyond the observer's counter increments.

Each worker process has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one) and its own HTTP endpoint: with ``--processes N`` the process in supervisor slot ``i``
listens on ``metrics_port + i`` (a restarted process keeps its slot, hence its port), so
Prometheus scrapes ``metrics_port`` … ``metrics_port + N - 1`` on each host. Port 0 disables the
endpoint. The metric names are fixed: a Grafana dashboard uses exactly these.

- ``eeszt_requests_total{service,outcome}`` counter; outcome: accepted, rejected, failed,
  retrying, parked, waiting, dead-lettered
- ``eeszt_request_duration_seconds{service}`` histogram: the request's ``created_at`` to its
  final outcome (accepted, rejected, failed) in this worker
- ``eeszt_parked_total{service}`` counter: requests parked while the service's circuit is open
- ``eeszt_dead_lettered_total{service}`` counter: messages this worker put in ``eeszt.dlq``
  (failed, invalid without a reply address, rejected without a reply address)
- ``eeszt_sts_calls_total{method}`` counter: STS logins by method (x509: the institution;
  eszig and mobiltoken: a doctor at the workstation, by card or MobilToken), from
  ``TokenManager.stats``; ``eeszt_token_cache_hits_total`` counter
- ``eeszt_circuit_open{service}`` gauge: 1 while the circuit is open, else 0
- ``eeszt_certificate_days_left{certificate}`` gauge, per file in PKI_DIR: days to
  ``notAfter``, negative once expired
- ``eeszt_certificate_revoked{certificate}`` gauge, institution.pem and access.pem: 1 when the
  CA's OCSP responder says revoked, else 0 (:mod:`workers.cert_status`, at start and hourly)
- ``eeszt_certificate_ocsp_status{certificate,status}`` gauge: 1 for the last OCSP outcome
  (good, revoked or unknown), 0 for the others: alert on ``status="unknown"`` too

A message whose service cannot be read (an invalid message of an unknown type) is counted under
``service="unknown"``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.soap import SERVICES

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..cert_status import CertificateWatch

    from schemas.envelope import RequestEnvelope

    from ..breaker import Breakers
    from ..logins.tokens import TokenManager

log = logging.getLogger("eeszt_gw.metrics")

OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "failed", "retrying", "parked", "waiting",
                             "dead-lettered")
FINAL_OUTCOMES = frozenset({"accepted", "rejected", "failed"})
UNKNOWN_SERVICE = "unknown"
#: 5 ms (a hot token, a fast EESZT) up to 10 min (retries, a short outage); longer is +Inf.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                       10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STS_METHODS: tuple[str, ...] = ("x509", "mobiltoken", "eszig")
#: the certificates whose expiry is exposed, when present in PKI_DIR
CERTIFICATE_FILES: tuple[str, ...] = ("access.pem", "institution.pem", "server-ca.pem", "sts.pem")
_BY_METHOD = "logins_by_method:"


class _ServiceSeries:
    """The label children of one service, resolved once."""

    __slots__ = ("outcomes", "duration", "parked", "dead_lettered")

    def __init__(self, service: str, requests: Counter, duration: Histogram, parked: Counter,
                 dead_lettered: Counter) -> None:
        self.outcomes = {kind: requests.labels(service=service, outcome=kind) for kind in OUTCOMES}
        self.duration = duration.labels(service=service)
        self.parked = parked.labels(service=service)
        self.dead_lettered = dead_lettered.labels(service=service)


class MetricsObserver:
    """The pipeline's ``Observer``: counts outcomes and observes durations, per service.

    Thread-safe (prometheus_client's children lock their own values). Label children are
    resolved once per service and kept, so a call costs two dict lookups and the increments.
    """

    def __init__(self, registry: CollectorRegistry, *, services: Iterable[str] = tuple(SERVICES),
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._requests = Counter("eeszt_requests", "Requests by service and outcome in this "
                                 "worker process", ("service", "outcome"), registry=registry)
        self._duration = Histogram("eeszt_request_duration_seconds", "From the request's "
                                   "created_at to its final outcome (accepted, rejected, failed) "
                                   "in this worker process", ("service",),
                                   buckets=DURATION_BUCKETS, registry=registry)
        self._parked = Counter("eeszt_parked", "Requests parked in eeszt.parked.<service> while "
                               "the service's circuit is open", ("service",), registry=registry)
        self._dead_lettered = Counter("eeszt_dead_lettered", "Messages put in the dead-letter "
                                      "queue eeszt.dlq", ("service",), registry=registry)
        self._series: dict[str, _ServiceSeries] = {}
        self._lock = threading.Lock()
        for service in (*services, UNKNOWN_SERVICE):  # zeros from the start, for rate()
            self._add(service)

    def outcome(self, service: str, kind: str, request: RequestEnvelope | None) -> None:
        """Called by the pipeline for every outcome; never raises for an unknown kind."""
        service = service or UNKNOWN_SERVICE
        series = self._series.get(service) or self._add(service)
        counter = series.outcomes.get(kind)
        if counter is None:
            counter = series.outcomes[kind] = self._requests.labels(service=service, outcome=kind)
        counter.inc()
        if kind in FINAL_OUTCOMES and request is not None:
            series.duration.observe(max(0.0, self.clock() - request.created_at.timestamp()))
        if kind == "parked":
            series.parked.inc()
        elif (kind == "failed" or kind == "dead-lettered"
              or (kind == "rejected" and request is not None and not request.reply_to)):
            series.dead_lettered.inc()

    def parked_counts(self) -> dict[str, float]:
        """Requests parked per service in this process since it started (``eeszt-gw status``
        shows them next to the circuit breakers)."""
        return {s.labels["service"]: s.value for family in self._parked.collect()
                for s in family.samples if s.name == "eeszt_parked_total"}

    def _add(self, service: str) -> _ServiceSeries:
        with self._lock:
            series = self._series.get(service)
            if series is None:
                series = _ServiceSeries(service, self._requests, self._duration, self._parked,
                                        self._dead_lettered)
                self._series[service] = series
            return series


class TokenCollector(Collector):
    """STS logins by method and cache hits, read from ``TokenManager.stats`` at scrape time.

    Every ``logins_by_method:<m>`` key is reported; the three methods always are (0 when
    absent). A doctor's login at the workstation is counted by the login coordinator under the
    method the bridge reports (``eszig``: card, ``mobiltoken``: a code typed there).
    """

    def __init__(self, tokens: TokenManager) -> None:
        self.tokens = tokens

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("eeszt_sts_calls", "", labels=("method",))
        yield CounterMetricFamily("eeszt_token_cache_hits", "")

    def collect(self) -> Iterator[Metric]:
        stats = dict(self.tokens.stats)  # one C-level copy: consistent under worker threads
        calls = CounterMetricFamily("eeszt_sts_calls", "Token logins at the STS by authentication "
                                    "method (this worker process)", labels=("method",))
        methods = dict.fromkeys(STS_METHODS, 0)
        for key, n in stats.items():
            if key.startswith(_BY_METHOD):
                methods[key[len(_BY_METHOD):]] = n
        for method, n in methods.items():
            calls.add_metric((method,), n)
        yield calls
        yield CounterMetricFamily("eeszt_token_cache_hits", "Tokens served from the cache "
                                  "(this worker process)", value=stats.get("hits", 0))


class BreakerCollector(Collector):
    """``eeszt_circuit_open{service}`` from ``Breakers.states()`` at scrape time.

    Every known service is reported (0 until its breaker exists), so an alert on it works from
    the first scrape.
    """

    def __init__(self, breakers: Breakers, *, services: Iterable[str] = tuple(SERVICES)) -> None:
        self.breakers = breakers
        self.services = tuple(services)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("eeszt_circuit_open", "", labels=("service",))

    def collect(self) -> Iterator[Metric]:
        states = dict.fromkeys(self.services, "closed")
        states.update(self.breakers.states())
        gauge = GaugeMetricFamily("eeszt_circuit_open", "1 while the service's circuit is open "
                                  "in this worker process (requests are parked), else 0",
                                  labels=("service",))
        for service, state in states.items():
            gauge.add_metric((service,), 1.0 if state == "open" else 0.0)
        yield gauge


class CertificateCollector(Collector):
    """``eeszt_certificate_days_left{certificate}`` for the PKI files, at scrape time.

    A file is parsed again only when its mtime or size changed. A missing file is left out; an
    unreadable one is left out and logged once per change. A bundle counts its earliest
    ``notAfter``.
    """

    def __init__(self, pki_dir: Path, *, files: Iterable[str] = CERTIFICATE_FILES,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.pki_dir = Path(pki_dir)
        self.files = tuple(files)
        self.clock = clock
        self._cache: dict[str, tuple[tuple[int, int], datetime | None]] = {}

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("eeszt_certificate_days_left", "", labels=("certificate",))

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("eeszt_certificate_days_left", "Days until the certificate in "
                                  "PKI_DIR expires (negative once expired)",
                                  labels=("certificate",))
        now = self.clock()
        for name in self.files:
            not_after = self._not_after(name)
            if not_after is not None:
                gauge.add_metric((name,), (not_after - now).total_seconds() / 86400.0)
        yield gauge

    def _not_after(self, name: str) -> datetime | None:
        path = self.pki_dir / name
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
            not_after: datetime | None = min(c.not_valid_after_utc for c in certs)
        except (OSError, ValueError) as exc:
            log.warning("certificate %s is unreadable: %s", path, exc)
            not_after = None
        self._cache[name] = (key, not_after)
        return not_after


class CertificateStatusCollector(Collector):
    """The revocation status of the worker's own certificates, from a
    :class:`~workers.cert_status.CertificateWatch` (checked in the background, read here)."""

    STATES = ("good", "revoked", "unknown")

    def __init__(self, watch: CertificateWatch) -> None:
        self.watch = watch

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("eeszt_certificate_revoked", "", labels=("certificate",))
        yield GaugeMetricFamily("eeszt_certificate_ocsp_status", "",
                                labels=("certificate", "status"))

    def collect(self) -> Iterator[Metric]:
        revoked = GaugeMetricFamily("eeszt_certificate_revoked", "1 when the certificate's CA "
                                    "says (OCSP) it is revoked, else 0", labels=("certificate",))
        states = GaugeMetricFamily("eeszt_certificate_ocsp_status", "1 for the certificate's "
                                   "last OCSP outcome: good, revoked or unknown (no trustworthy "
                                   "answer)", labels=("certificate", "status"))
        for name, check in sorted(self.watch.results().items()):
            revoked.add_metric((name,), 1.0 if check.status == "revoked" else 0.0)
            for state in self.STATES:
                states.add_metric((name, state), 1.0 if check.status == state else 0.0)
        yield revoked
        yield states


def register_runtime_collectors(registry: CollectorRegistry, *, tokens: TokenManager,
                                breakers: Breakers | None, pki_dir: Path) -> None:
    """Add the scrape-time collectors of one worker process to ``registry``."""
    registry.register(TokenCollector(tokens))
    if breakers is not None:
        registry.register(BreakerCollector(breakers))
    registry.register(CertificateCollector(pki_dir))


def start_metrics_server(port: int, registry: CollectorRegistry, *,
                         host: str = "127.0.0.1") -> WSGIServer | None:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    Returns the server (call ``shutdown()`` to stop it), or None when ``port`` is 0 (disabled).
    Raises OSError when the address cannot be bound.
    """
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server


def serve_quietly(port: int, registry: CollectorRegistry, *, host: str = "127.0.0.1",
                  what: str = "process") -> Any:
    """:func:`start_metrics_server`, but a busy port is logged, not fatal: a process that
    cannot expose metrics still does its real work (and is not restarted in a loop)."""
    try:
        return start_metrics_server(port, registry, host=host)
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
        log.error("this %s serves no metrics: cannot listen on %s:%d (%s)", what, host, port, exc)
        return None
