"""What a worker publishes: replies, broker-side retries, dead letters. Always confirmed.

:class:`Outbox` is the seam. :class:`RabbitOutbox` publishes over a per-thread pika channel with
publisher confirms (pika channels are not thread-safe); :class:`MemoryOutbox` keeps everything in
memory for unit tests and the embedded demo. A request is acknowledged only after what it
produced here was confirmed, so a crash in between leads to a redelivery, never to a loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Protocol

import pika
import pika.exceptions

from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection
from schemas.replies import Accepted, Failed, Rejected, StatusUpdate
from schemas.wire import (
    DEAD_LETTER_QUEUE,
    H_CODE,
    H_IDEMPOTENCY_KEY,
    H_KIND,
    H_MESSAGE_ID,
    H_REASON,
    REPLIES_EXCHANGE,
    DEFAULT_QUEUE_TYPE,
    dead_letter_to,
    parked_queue,
    queue_arguments,
    retry_queue,
)

from .errors import GatewayError
from .retry import tier_for

log = logging.getLogger("eeszt_gw.outbox")
Reply = Accepted | Rejected | Failed | StatusUpdate


class BrokerError(GatewayError):
    """The broker did not confirm a publish after a bounded number of attempts."""


class Outbox(Protocol):
    def reply(self, routing_key: str, reply: Reply) -> None:
        """Publish a reply to the HIS's routing key; returns once confirmed."""

    def retry(self, queue: str, body: bytes, headers: dict[str, Any], delay_s: float,
              message_id: str | None) -> None:
        """Park the request durably for ``delay_s``, then hand it back to ``queue``."""

    def dead_letter(self, body: bytes, headers: dict[str, Any], message_id: str | None) -> None:
        """Keep a message that cannot be processed, with the reason in its headers."""

    def park(self, service: str, queue: str, body: bytes, headers: dict[str, Any], ttl_ms: int,
             message_id: str | None) -> None:
        """Hold a request while ``service`` is down; at its deadline it returns to ``queue``."""

    def release_parked(self, service: str, queue: str, *, rate_per_s: float) -> int:
        """Move the parked requests of ``service`` back to ``queue``, at most ``rate_per_s``."""

    def key_lock(self, institution: str, service: str, key: str) -> ContextManager[bool]:
        """Yield True while this thread is the one copy of ``institution``'s request ``key``
        allowed to ask ``service`` and send; False when another copy holds it (across worker
        processes). Another institution's request with the same key is another request."""


def key_lock_queue(institution: str, service: str, key: str) -> str:
    """The exclusive queue that is the lock of one institution's request. The key can be long
    and the institution is hashed with it, so that no choice of either can reach another's."""
    digest = hashlib.sha256(f"{institution}\0{service}\0{key}".encode()).hexdigest()[:32]
    return f"eeszt.lock.key.{institution[:16]}.{service}.{digest}"


def plain_user(params: pika.ConnectionParameters) -> str | None:
    """The broker user a connection with ``params`` logs in as, or None when its credentials
    are not a user name and password (e.g. EXTERNAL with a client certificate).

    The gateway sets it as the ``user_id`` of the requests it republishes (retry, park and
    login-wait queues): RabbitMQ checks that it matches the connection's user, so a worker
    running with ``--tenants strict`` can tell its own copies from a HIS that left
    ``user_id`` out (workers/tenants.py).
    """
    creds = params.credentials
    return creds.username if isinstance(creds, pika.PlainCredentials) else None


def reply_headers(reply: Reply) -> dict[str, Any]:
    headers: dict[str, Any] = {H_KIND: reply.kind, H_MESSAGE_ID: str(reply.message_id),
                               H_IDEMPOTENCY_KEY: reply.idempotency_key}
    if isinstance(reply, Rejected):
        headers[H_CODE] = reply.code
    return headers


class RabbitOutbox:
    """Confirmed publishes over one channel per thread, reconnecting on failure."""

    def __init__(self, *, url: str, attempts: int = 5, backoff_s: float = 0.2,
                 tls: BrokerTLS | None = None, queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        # every broker address of url (comma-separated), tried in turn on each connect
        self.params = broker_addresses(url, tls, heartbeat=60, blocked_connection_timeout=30)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._local = threading.local()
        self._declared: set[str] = set()
        self._declare_lock = threading.Lock()
        #: the type of the retry, parked and login queues it declares (schemas.wire)
        self.queue_type = queue_type

    @property
    def user_id(self) -> str | None:
        """The ``user_id`` of what this outbox republishes (see :func:`plain_user`)."""
        return plain_user(self.params[0])  # the same user at every address (eeszt_gw.amqp)

    def _channel(self):
        ch = getattr(self._local, "channel", None)
        if ch is None or ch.is_closed:
            conn = getattr(self._local, "conn", None)
            if conn is None or not conn.is_open:  # else the broker closed only the channel
                conn = open_connection(self.params)
            ch = conn.channel()
            ch.confirm_delivery()
            self._local.conn, self._local.channel = conn, ch
        return ch

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.channel = None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass

    def _retrying(self, what: str, op: Callable[[], None],
                  answers: tuple[type[BaseException], ...]) -> None:
        """Run ``op`` on this thread's channel, reconnecting after a broker connection error,
        at most ``attempts`` times, then raise :class:`BrokerError` naming ``what``. Errors in
        ``answers`` are the broker's own answer, not a connection problem: raised at once."""
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                op()
                return
            except answers:
                raise
            except (pika.exceptions.AMQPError, OSError) as exc:
                last = exc
                self._drop()
                # jitter, so that 64 threads that lost one connection do not reconnect in step
                time.sleep(self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.5))
        raise BrokerError(f"broker did not {what}: {last}")

    def _publish(self, exchange: str, routing_key: str, body: bytes,
                 props: pika.BasicProperties, *, mandatory: bool,
                 nack_is_answer: bool = False) -> None:
        """Publish, confirmed. Unroutable is RabbitMQ's answer, raised at once. So is a nack
        where a queue rejects by design (a lock that is taken: ``nack_is_answer``); anywhere
        else a nack means "not stored now" (a quorum queue between leaders, or declared a
        moment ago), retried like a lost connection."""
        answers: tuple[type[BaseException], ...] = (pika.exceptions.UnroutableError,)
        if nack_is_answer:
            answers += (pika.exceptions.NackError,)
        self._retrying(
            f"confirm a publish to {exchange or routing_key}",
            lambda: self._channel().basic_publish(exchange, routing_key, body, props,
                                                  mandatory=mandatory),
            answers=answers)

    def reply(self, routing_key: str, reply: Reply) -> None:
        body = reply.model_dump_json().encode()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     message_id=f"{reply.message_id}:{reply.kind}",
                                     correlation_id=str(reply.message_id),
                                     headers=reply_headers(reply))
        try:
            self._publish(REPLIES_EXCHANGE, routing_key, body, props, mandatory=True)
        except pika.exceptions.UnroutableError:
            # No queue is bound to the HIS's key: keep the reply rather than lose it.
            log.warning("no queue bound for reply key %s; reply kept in %s", routing_key,
                        DEAD_LETTER_QUEUE)
            headers = {**reply_headers(reply), H_REASON: f"undeliverable reply for {routing_key}"}
            self.dead_letter(body, headers, props.message_id)

    def retry(self, queue: str, body: bytes, headers: dict[str, Any], delay_s: float,
              message_id: str | None) -> None:
        name = retry_queue(queue, tier_for(delay_s))
        self._ensure_queue(name, queue)
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     message_id=message_id, headers=headers,
                                     expiration=str(max(1, int(delay_s * 1000))),
                                     user_id=self.user_id)
        self._publish("", name, body, props, mandatory=True)

    def _ensure_queue(self, name: str, target: str) -> None:
        """Declare the durable queue ``name`` that dead-letters to ``target``, once per process.

        A broker connection lost mid-declare is retried like a publish, then raised as
        :class:`BrokerError`, so the request is requeued (never answered as an internal error).
        """
        if name in self._declared:
            return

        def declare() -> None:
            try:
                self._channel().queue_declare(name, durable=True, arguments=queue_arguments(
                    self.queue_type, dead_letter_to(target)))
            except pika.exceptions.ChannelClosedByBroker:
                self._drop()  # the broker refused the arguments; the closed channel goes too
                raise

        with self._declare_lock:
            self._retrying(f"declare {name}", declare,
                           answers=(pika.exceptions.ChannelClosedByBroker,))
            self._declared.add(name)

    def dead_letter(self, body: bytes, headers: dict[str, Any], message_id: str | None) -> None:
        props = pika.BasicProperties(delivery_mode=2, message_id=message_id, headers=headers,
                                     timestamp=int(time.time()))
        self._publish("", DEAD_LETTER_QUEUE, body, props, mandatory=True)

    def park(self, service: str, queue: str, body: bytes, headers: dict[str, Any], ttl_ms: int,
             message_id: str | None) -> None:
        name = parked_queue(service)
        self._ensure_queue(name, queue)
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     message_id=message_id, headers=headers,
                                     expiration=str(max(1, ttl_ms)), user_id=self.user_id)
        self._publish("", name, body, props, mandatory=True)

    def release_parked(self, service: str, queue: str, *, rate_per_s: float) -> int:
        """One releaser at a time across processes (an exclusive lock queue); paced."""
        conn = open_connection(self.params)
        moved = 0
        try:
            ch = conn.channel()
            try:
                ch.queue_declare(f"eeszt.lock.release.{service}", exclusive=True, auto_delete=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 405:
                    return 0  # another process is releasing this service's backlog
                raise
            ch.confirm_delivery()
            interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
            while True:
                try:
                    method, props, body = ch.basic_get(parked_queue(service), auto_ack=False)
                except pika.exceptions.ChannelClosedByBroker:
                    return moved  # nothing was ever parked
                if method is None:
                    return moved
                out = pika.BasicProperties(content_type=props.content_type, delivery_mode=2,
                                           message_id=props.message_id, headers=props.headers,
                                           user_id=self.user_id)
                ch.basic_publish("", queue, body, out, mandatory=True)
                ch.basic_ack(method.delivery_tag)
                moved += 1
                if interval:
                    time.sleep(interval)
        finally:
            if conn.is_open:
                conn.close()

    @contextlib.contextmanager
    def key_lock(self, institution: str, service: str, key: str) -> Iterator[bool]:
        """An exclusive queue declared on this thread's connection: RabbitMQ lets one
        connection hold it, and drops it with the connection, so a crashed holder frees it."""
        name = key_lock_queue(institution, service, key)
        lock_channel = None

        def take() -> None:
            nonlocal lock_channel
            self._channel()
            lock_channel = self._local.conn.channel()  # a 405 closes this channel only
            lock_channel.queue_declare(name, exclusive=True, auto_delete=True)

        try:
            self._retrying(f"take the lock {name}", take,
                           answers=(pika.exceptions.ChannelClosedByBroker,))
            held = True
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:  # RESOURCE_LOCKED: another copy holds it
                raise
            held = False
        try:
            yield held
        finally:
            if held:
                try:
                    lock_channel.queue_delete(name)
                    lock_channel.close()
                except (pika.exceptions.AMQPError, OSError):
                    self._drop()  # the connection goes, and the exclusive queue with it

    def close(self) -> None:
        self._drop()


@dataclass
class MemoryOutbox:
    """Everything in memory. ``on_reply`` / ``on_retry`` let the demo route them onwards."""

    replies: dict[str, list[Reply]] = field(default_factory=lambda: defaultdict(list))
    retries: list[tuple[str, bytes, dict[str, Any], float]] = field(default_factory=list)
    dead: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    parked: dict[str, list[tuple[str, bytes, dict[str, Any], str | None]]] = field(
        default_factory=lambda: defaultdict(list))
    on_reply: Callable[[str, Reply], None] | None = None
    on_retry: Callable[[str, bytes, dict[str, Any], float, str | None], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _held: set[tuple[str, str, str]] = field(default_factory=set)

    @contextlib.contextmanager
    def key_lock(self, institution: str, service: str, key: str) -> Iterator[bool]:
        lock = (institution, service, key)
        with self._lock:
            held = lock not in self._held
            self._held.add(lock)
        try:
            yield held
        finally:
            if held:
                with self._lock:
                    self._held.discard(lock)

    def reply(self, routing_key: str, reply: Reply) -> None:
        with self._lock:
            self.replies[routing_key].append(reply)
        if self.on_reply:
            self.on_reply(routing_key, reply)

    def retry(self, queue: str, body: bytes, headers: dict[str, Any], delay_s: float,
              message_id: str | None) -> None:
        with self._lock:
            self.retries.append((queue, body, dict(headers), delay_s))
        if self.on_retry:
            self.on_retry(queue, body, headers, delay_s, message_id)

    def dead_letter(self, body: bytes, headers: dict[str, Any], message_id: str | None) -> None:
        with self._lock:
            self.dead.append((body, dict(headers)))

    def park(self, service: str, queue: str, body: bytes, headers: dict[str, Any], ttl_ms: int,
             message_id: str | None) -> None:
        with self._lock:
            self.parked[service].append((queue, body, dict(headers), message_id))

    def release_parked(self, service: str, queue: str, *, rate_per_s: float) -> int:
        with self._lock:
            items = self.parked.pop(service, [])
        for q, body, headers, mid in items:
            if self.on_retry:
                self.on_retry(q, body, headers, 0.0, mid)
        return len(items)

    def all_replies(self) -> list[Reply]:
        with self._lock:
            return [r for rs in self.replies.values() for r in rs]
