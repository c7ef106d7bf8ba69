"""Running workers: the process supervisor, one worker process, and the health probe.

``eeszt-gw worker --processes N --threads T`` starts a supervisor that spawns N worker
processes. Unlike dramatiq's own CLI, one dead process does not stop the group: the supervisor
restarts it (with a backoff if it keeps dying), and the broker redelivers whatever it held.
Scale with processes, not threads: one Python process tops out near 800 requests/s (the GIL).
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from schemas.card import LOGIN_ANSWERS_QUEUE
from eeszt_gw.amqp import (BrokerTLS, BrokerTLSError, BrokerUnreachable, broker_addresses,
                           open_connection)
from schemas.wire import DEFAULT_QUEUE_TYPE, QUEUE_CLASSES

from .middleware.audit import RabbitAuditLog
from .broker import rabbit_broker
from .cert_status import CertificateWatch
from .middleware.control import ControlResponder, InFlight, InFlightMiddleware
from .logins.backends import RabbitLoginBackend
from .middleware.metrics import (CertificateStatusCollector, MetricsObserver,
                                 register_runtime_collectors, serve_quietly)
from .outbox import RabbitOutbox
from .runtime import build_runtime
from .settings import WorkerSettings
from .logins.token_share import RabbitTokenShare, new_key
from .topology import declare

log = logging.getLogger("eeszt_gw.worker")
HEARTBEAT_EVERY_S = 2.0
HEARTBEAT_STALE_S = 30.0


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    # zeep and urllib3 at DEBUG print whole request bodies (patient data): keep them quiet.
    for noisy in ("zeep", "urllib3", "pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def declare_topology(url: str, tls: BrokerTLS | None = None,
                     queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
    """Declare the workers' topology on the first of ``url``'s broker addresses that answers.
    Raises BrokerTLSError, BrokerUnreachable, pika and socket errors."""
    conn = open_connection(broker_addresses(url, tls))
    try:
        declare(conn.channel(), queue_type)
    finally:
        conn.close()


def _freeze_startup_heap() -> None:
    """Move everything built at start-up (modules, the WSDLs zeep loaded, the registry) out of
    the garbage collector's sight, and collect young objects less often. Without it every
    full collection walks the start-up heap again: at 800 requests/s that cost was spread as
    a tax over every line of the pipeline (``eeszt-gw bench batch``, py-spy)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def worker_main(settings: WorkerSettings, slot: int = 0) -> None:
    """One worker process: consume until SIGTERM/SIGINT, then finish what is in flight.

    ``slot`` is the supervisor's slot of this process; its metrics listen on
    ``metrics_port + slot``.
    """
    setup_logging(settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tls = settings.broker_tls()
    try:
        declare_topology(settings.broker_url, tls, settings.queue_type)
    except (BrokerTLSError, BrokerUnreachable) as exc:
        log.error("%s", exc)  # one clear line; the supervisor restarts this process later
        raise SystemExit(3) from None
    broker = rabbit_broker(settings.broker_url, tls=tls, queue_type=settings.queue_type)
    in_flight = InFlight()  # what this process works on, for `eeszt-gw status`
    broker.add_middleware(InFlightMiddleware(in_flight))
    outbox = RabbitOutbox(url=settings.broker_url, tls=tls, queue_type=settings.queue_type)
    audit = RabbitAuditLog(settings.broker_url, tls=tls)
    share = RabbitTokenShare(url=settings.broker_url, tls=tls,
                             key_b64=(settings.token_key or SecretStr(new_key())).get_secret_value())
    logins = RabbitLoginBackend(outbox=outbox, window_s=settings.login_window_s,
                                challenge_ttl_s=settings.challenge_ttl_s)
    registry = CollectorRegistry()  # this process's own, never the global one
    observer = MetricsObserver(registry)
    runtime = build_runtime(settings, broker=broker, outbox=outbox, share=share,
                            login_backend=logins, audit=audit, observer=observer)
    register_runtime_collectors(registry, tokens=runtime.tokens, breakers=runtime.breakers,
                                pki_dir=settings.pki_dir)
    # own certificates' revocation status: OCSP at start and every interval, never fatal
    cert_watch = CertificateWatch(settings.pki_dir, ocsp_url=settings.ocsp_url,
                                  timeout_s=settings.ocsp_timeout_s,
                                  interval_s=settings.cert_check_interval_s).start()
    registry.register(CertificateStatusCollector(cert_watch))
    metrics = serve_quietly(settings.metrics_port + slot if settings.metrics_port else 0,
                            registry, host=settings.metrics_host, what="worker process")
    queues = {QUEUE_CLASSES[c] for c in settings.queue_classes()}
    if runtime.logins is not None and "interactive" in settings.queue_classes():
        queues.add(LOGIN_ANSWERS_QUEUE)
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=settings.threads,
                             worker_timeout=500)
    warm = settings.threads if settings.warm_connections is None else settings.warm_connections
    if warm:  # a cold pool would pay its TLS handshakes on the first requests (README)
        started = time.monotonic()
        opened = runtime.client.warm(warm)
        log.info("opened %d of %d connections to EESZT in %.1f s", opened, warm,
                 time.monotonic() - started)
    _freeze_startup_heap()
    worker.start()
    control = ControlResponder(
        settings.broker_url, tls=tls, in_flight=in_flight.snapshot,
        info={"queues": sorted(queues), "threads": settings.threads},
        login_waits=(lambda: sorted(runtime.logins.started)) if runtime.logins else None,
        breakers=(lambda: runtime.breakers.snapshot(observer.parked_counts()))
        if runtime.breakers is not None else None).start()
    log.info("worker process %d consuming %s with %d threads", os.getpid(),
             ",".join(sorted(queues)), settings.threads)
    beat = _heartbeat_path(settings)
    beat.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_heartbeat(beat, queues, settings.threads, runtime)
        while not stop.wait(HEARTBEAT_EVERY_S):
            _write_heartbeat(beat, queues, settings.threads, runtime)
    finally:
        control.stop()
        cert_watch.stop()
        worker.stop(timeout=30_000)
        runtime.close()
        audit.close()
        beat.unlink(missing_ok=True)
        if metrics is not None:  # last: in-flight work stays visible while it finishes
            metrics.shutdown()
            metrics.server_close()


def _heartbeat_path(settings: WorkerSettings) -> Path:
    return settings.heartbeat_dir / f"worker-{os.getpid()}.json"


def _write_heartbeat(path: Path, queues: set[str], threads: int, runtime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "queues": sorted(queues),
                               "threads": threads, "tokens": dict(runtime.tokens.stats)}))
    tmp.replace(path)


def check(settings: WorkerSettings) -> int:
    """Health probe: 0 when at least one worker process beat recently, else 1."""
    now = time.time()
    fresh = []
    for path in settings.heartbeat_dir.glob("worker-*.json"):
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if now - beat.get("at", 0) <= HEARTBEAT_STALE_S:
            fresh.append(beat)
    if not fresh:
        print(f"unhealthy: no worker heartbeat in {settings.heartbeat_dir} within "
              f"{HEARTBEAT_STALE_S:.0f}s")
        return 1
    print(f"healthy: {len(fresh)} worker process(es): "
          + ", ".join(f"pid {b['pid']} ({','.join(b['queues'])})" for b in fresh))
    return 0


def supervise(settings: WorkerSettings) -> int:
    """Start ``settings.processes`` worker processes and keep them running until a signal."""
    setup_logging(settings.log_level)
    if settings.token_key is None:
        # Children share tokens encrypted with a key only they know; it never leaves memory.
        settings = settings.model_copy(update={"token_key": SecretStr(new_key())})
    # glibc gives each busy thread its own malloc arena (up to 8 per core); with 64 threads
    # parsing and signing XML, their fragmentation made a worker's RSS creep up for hundreds
    # of thousands of requests. Two arenas keep it flat (`eeszt-gw bench memory`). The spawned
    # children read it at start; an operator's own setting wins.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    ctx = mp.get_context("spawn")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    procs: dict[int, Any] = {}
    restarts: dict[int, list[float]] = {}

    def start(slot: int) -> None:
        p = ctx.Process(target=worker_main, args=(settings, slot), name=f"worker-{slot}",
                        daemon=False)
        p.start()
        procs[slot] = p

    for slot in range(settings.processes):
        start(slot)
    log.info("supervisor %d started %d worker processes", os.getpid(), settings.processes)
    while not stopping.wait(0.5):
        for slot, p in list(procs.items()):
            if p.is_alive():
                continue
            recent = [t for t in restarts.get(slot, []) if time.time() - t < 60]
            restarts[slot] = recent + [time.time()]
            # Quick restarts for an occasional death; back off only when a slot keeps dying.
            delay = min(30.0, 0.5 * 2 ** max(0, len(recent) - 5))
            log.warning("worker process %s (pid %s) exited with %s; restarting in %.1fs",
                        p.name, p.pid, p.exitcode, delay)
            if stopping.wait(delay):
                break
            start(slot)
    log.info("stopping %d worker processes (finishing in-flight work)", len(procs))
    for p in procs.values():
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    for p in procs.values():
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    return 0
