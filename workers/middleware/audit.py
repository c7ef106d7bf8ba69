"""The audit trail: every state change of a request, append-only, bounded, TAJ-masked.

:class:`AuditLog` is the seam: one method, ``record(event)``, that never blocks its caller on
I/O and never raises. :class:`MemoryAuditLog` keeps events in a list (tests, the demo);
:class:`RabbitAuditLog` writes them to the RabbitMQ **stream** ``eeszt.audit``, and
:func:`workers.middleware.audit_reader.read_audit`
reads them back (``eeszt-gw audit``). :func:`audit_event` builds an event with
``at`` = now and ``actor`` = this worker process.

**The stream.** ``eeszt.audit`` is declared durable with ``x-queue-type: stream``,
``x-max-age`` (default ``"30D"``, :attr:`StreamRetention.max_age`, env
``EESZT_AUDIT_MAX_AGE``) and ``x-max-length-bytes`` (default 5 GB, ``5_000_000_000``,
:attr:`StreamRetention.max_length_bytes`, env ``EESZT_AUDIT_MAX_LENGTH_BYTES``): a stream is an
append-only log that readers do not consume, so nobody can delete or rewrite one event, and
RabbitMQ drops whole old segments once either bound is passed (so ``x-max-age`` is honoured at
segment granularity). RabbitMQ refuses to re-declare a queue with other arguments; to change
the retention of an existing stream, use a policy (``rabbitmqctl set_policy ... '{"max-age":
"90D"}' --apply-to queues``). A writer whose arguments differ logs a warning and writes to the
stream as it is.

**Batches, and what a crash can lose.** One AMQP message carries many events as JSON lines
(``application/x-ndjson``), persistent, with publisher confirms. A background thread with its
own connection publishes what was recorded every ``flush_interval_s`` (0.2 s) or as soon as
``max_batch`` (500) events wait. A process that crashes (SIGKILL, OOM) loses the events of the
batch not yet confirmed: at most ``flush_interval_s`` worth in normal operation. That is the
trade-off for throughput: one confirmed audit publish per state change would double the
broker's load (every request already costs a confirmed publish per reply, retry or dead
letter), for events that describe, and never decide, what happens to a request. ``close()``
flushes what is buffered, so a graceful stop loses nothing.

**When the broker is in trouble** the thread reconnects with a capped backoff and keeps events
in memory meanwhile, at most ``max_buffer`` (100,000); beyond that it drops the oldest, counts
the drops (:attr:`RabbitAuditLog.dropped`) and logs a warning at most once a minute. Such a
buffer is lost if the process dies before the broker is back.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import pika
import pika.exceptions
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.audit import AuditEvent, AuditKind, AuditStep
from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection

log = logging.getLogger("eeszt_gw.audit")

AUDIT_QUEUE = "eeszt.audit"
CONTENT_TYPE = "application/x-ndjson"
_WARN_EVERY_S = 60.0


class StreamRetention(BaseSettings):
    """How long the audit stream keeps events (env ``EESZT_AUDIT_*``)."""

    model_config = SettingsConfigDict(env_prefix="EESZT_AUDIT_", extra="ignore", frozen=True)

    max_age: str = Field(default="30D", pattern=r"^[0-9]+[YMDhms]$",
                         description="x-max-age: e.g. 30D, 12h (units Y M D h m s)")
    max_length_bytes: int = Field(default=5_000_000_000, gt=0,
                                  description="x-max-length-bytes of the stream")

    def arguments(self) -> dict[str, Any]:
        """The queue arguments every declarer of the stream uses."""
        return {"x-queue-type": "stream", "x-max-age": self.max_age,
                "x-max-length-bytes": self.max_length_bytes}


class AuditLog(Protocol):
    def record(self, event: AuditEvent | AuditStep) -> None:
        """Keep ``event``. Returns at once (no I/O on the caller's thread) and never raises."""


class NullAuditLog:
    """Records nothing: the default where no audit trail is configured."""

    def record(self, event: AuditEvent | AuditStep) -> None:
        pass

    def close(self) -> None:
        pass


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


#: forks of this process so far: the writer thread and the actor's pid belong to one process
_forks = 0
_actor: tuple[int, str] = (-1, "")


def _after_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork)


def worker_actor() -> str:
    """``"worker pid 123 on host"``: who acts, for events recorded by a worker process."""
    global _actor
    forks, actor = _actor
    if forks != _forks:  # once per process, not a getpid() per event
        actor = f"worker pid {os.getpid()} on {_hostname()}"
        _actor = (_forks, actor)
    return actor


def audit_event(kind: AuditKind | str, *, message_id: object, idempotency_key: str = "",
                service: str = "", attempt: int | None = None, detail: str = "",
                actor: str | None = None) -> AuditStep:
    """An event that happened now, done by this worker process unless ``actor`` is given, as
    an :class:`~schemas.audit.AuditStep` (masked, not validated: the hot path's event).

    Raises ``ValueError`` for an unknown ``kind``.
    """
    return AuditStep.now(AuditKind(kind), str(message_id), idempotency_key, service, attempt,
                         detail, actor or worker_actor())


class MemoryAuditLog:
    """Events in a list, in record order. Thread-safe."""

    def __init__(self) -> None:
        self._events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def record(self, event: AuditEvent | AuditStep) -> None:
        if isinstance(event, AuditStep):
            event = event.to_event()
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[AuditEvent]:
        with self._lock:
            return list(self._events)

    def story(self, message_id_or_key: str) -> list[AuditEvent]:
        """The events of one request, by message id or idempotency key, in record order."""
        return [e for e in self.events if e.matches(message_id_or_key)]

    def close(self) -> None:
        pass


def encode_batch(events: list[AuditEvent | AuditStep]) -> bytes:
    return b"".join((e.to_json_bytes() if isinstance(e, AuditStep)
                     else e.model_dump_json().encode()) + b"\n" for e in events)


def decode_batch(body: bytes) -> Iterator[AuditEvent]:
    """The events of one stream message; a line that is not an event is logged and skipped."""
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            yield AuditEvent.model_validate_json(line)
        except ValueError as exc:
            log.warning("skipped an unreadable audit line: %s", type(exc).__name__)


def _params(url: str, tls: BrokerTLS | None = None) -> list[pika.URLParameters]:
    """Every broker address of ``url`` (comma-separated), for :func:`open_connection`."""
    # a blocked broker (memory alarm) must not hang us
    return broker_addresses(url, tls, heartbeat=60, blocked_connection_timeout=30,
                            socket_timeout=10, connection_attempts=1)


def declare_stream(channel, retention: StreamRetention, queue: str = AUDIT_QUEUE):
    """Declare the audit stream; returns the channel to go on with.

    If the stream exists with other arguments, RabbitMQ closes the channel (406); the stream
    is then used as it is, on a new channel, after a warning.
    """
    try:
        channel.queue_declare(queue, durable=True, arguments=retention.arguments())
        return channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        log.warning("the audit stream %s exists with other arguments (%s); writing to it as it "
                    "is (change retention with a policy)", queue, exc.reply_text)
    channel = channel.connection.channel()
    channel.queue_declare(queue, passive=True)
    return channel


class RabbitAuditLog:
    """Batched, confirmed writes to the audit stream from a background thread.

    The thread starts on the first ``record`` in a process (so a log made before a fork works
    in the child, which writes only what it recorded itself) and has its own connection. Call
    :meth:`close` on shutdown; it flushes. See the module docstring for the stream arguments
    and what a crash can lose.
    """

    def __init__(self, url: str, *, flush_interval_s: float = 0.2, max_batch: int = 500,
                 max_buffer: int = 100_000, retention: StreamRetention | None = None,
                 tls: BrokerTLS | None = None) -> None:
        self.url = url
        self.tls = tls
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.retention = retention or StreamRetention()
        self.dropped = 0
        self._buffer: deque[AuditEvent | AuditStep] = deque()
        self._inflight = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._forks = -1
        self._conn: pika.BlockingConnection | None = None
        self._channel = None
        self._reported_drops = 0
        self._last_warning = float("-inf")

    # --- the caller's side ------------------------------------------------------------------------
    def record(self, event: AuditEvent | AuditStep) -> None:
        try:
            with self._lock:
                if self._closing:
                    self.dropped += 1
                    return
                if self._forks != _forks:  # the first record in this process
                    self._start()
                if len(self._buffer) >= self.max_buffer:
                    self._buffer.popleft()
                    self.dropped += 1
                self._buffer.append(event)
                full = len(self._buffer) >= self.max_batch
            if full:
                self._wake.set()
        except Exception:  # the audit trail must never break the request it describes
            pass

    @property
    def pending(self) -> int:
        """Events recorded but not yet confirmed by the broker."""
        with self._lock:
            return len(self._buffer) + self._inflight

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything recorded so far is confirmed; False if ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while self._buffer or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._idle.wait(min(left, 0.1))
                self._wake.set()
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (for at most ``timeout_s``), then stop the thread and close the connection.

        Events still unconfirmed after the timeout are counted as dropped and logged."""
        with self._lock:
            thread = self._thread if self._forks == _forks else None
        if thread is not None:
            self.flush(timeout_s)
        with self._lock:
            self._closing = True
            lost = len(self._buffer)
            self._buffer.clear()
            self.dropped += lost
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout_s)
        if lost:
            log.warning("audit log closed with %d events not written to %s", lost, AUDIT_QUEUE)

    def __enter__(self) -> "RabbitAuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:  # the first record in this process; called with the lock held
        if self._thread is not None:  # forked: the parent writes what it recorded, on its
            self._buffer.clear()      # own connection, which is not ours to use
        self._forks = _forks
        self._conn = self._channel = None
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # --- the writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            with self._lock:
                if self._closing and not self._buffer:
                    break
            try:
                self._flush_all()
                failures = 0
            except Exception as exc:  # broker trouble: keep the events, reconnect later
                failures += 1
                self._disconnect()
                delay = min(5.0, 0.2 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                if failures == 1 or failures % 50 == 0:
                    log.warning("audit stream unavailable (%s: %s); %d events kept in memory, "
                                "retrying", type(exc).__name__, exc, self.pending)
                if self._stop.wait(delay):
                    break
            self._report_drops()
        self._disconnect()
        with self._idle:
            self._idle.notify_all()

    def _flush_all(self) -> None:
        while True:
            with self._lock:
                n = min(len(self._buffer), self.max_batch)
                batch = [self._buffer.popleft() for _ in range(n)]
                self._inflight = n
            if not batch:
                self._keepalive()
                return
            try:
                self._publish(batch)
            except BaseException:
                with self._lock:  # back to the front, oldest first; the bound still holds
                    self._inflight = 0
                    if self._closing:  # close() counted the buffer already: count these too
                        self.dropped += len(batch)
                        raise
                    self._buffer.extendleft(reversed(batch))
                    while len(self._buffer) > self.max_buffer:
                        self._buffer.popleft()
                        self.dropped += 1
                raise
            with self._idle:
                self._inflight = 0
                self._idle.notify_all()

    def _ensure_channel(self):
        if self._channel is None or self._channel.is_closed:
            self._disconnect()
            self._conn = open_connection(_params(self.url, self.tls))
            channel = declare_stream(self._conn.channel(), self.retention)
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def _publish(self, batch: list[AuditEvent | AuditStep]) -> None:
        props = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2,
                                     timestamp=int(time.time()),
                                     headers={"eeszt-audit-events": len(batch)})
        self._ensure_channel().basic_publish("", AUDIT_QUEUE, encode_batch(batch), props,
                                             mandatory=True)

    def _keepalive(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.process_data_events(0)  # heartbeats while idle

    def _disconnect(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass

    def _report_drops(self) -> None:
        with self._lock:
            new = self.dropped - self._reported_drops
        now = time.monotonic()
        if new and now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning, self._reported_drops = now, self.dropped
            log.warning("audit buffer full (%d events): dropped the %d oldest events "
                        "(%d in total)", self.max_buffer, new, self.dropped)
