"""Receiving the gateway's replies on the HIS side.

A HIS owns a durable queue bound to ``eeszt.replies`` with its routing key (the ``reply_to`` of
its requests). :class:`ReplyListener` declares and consumes it; :func:`parse_reply` is the one
place where reply bytes become a typed reply, shared with :class:`producers.memory.MemoryReplies`.

Acknowledgement rule (at-least-once, like the request path): a reply handed to you is acked
when you ask for the next one (the next loop iteration or ``get()``), or when you close the
listener normally. If your code fails in between, leave through ``with`` (or call
``close(ack_last=False)``) and the broker delivers that reply again. ``listen()`` acks each reply
right after its callback returns. A reply that cannot be parsed is logged (never its body) and
acked at once, so it never blocks the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import pika
import pika.exceptions
from pydantic import ValidationError

from producers.errors import BrokerUnavailable, ProducerError
from producers.topology import CONNECTION_ERRORS, connect, declare_replies_exchange
from eeszt_gw.amqp import BrokerTLS
from schemas.replies import REPLY_ADAPTER, Reply, describe_validation_error
from schemas.wire import DEFAULT_QUEUE_TYPE, REPLIES_EXCHANGE, queue_arguments

__all__ = ["ReplyListener", "parse_reply"]

log = logging.getLogger(__name__)


def parse_reply(body: bytes, *, routing_key: str = "",
                message_id: str | None = None) -> Reply | None:
    """Parse a reply body; ``None`` (and a warning naming the field, never the body) if invalid."""
    try:
        return REPLY_ADAPTER.validate_json(body)
    except ValidationError as exc:
        field, reason = describe_validation_error(exc)
        log.warning("dropping an unparseable reply (routing key %r, message id %s, %d bytes): "
                    "%s: %s", routing_key, message_id, len(body), field or "(reply)", reason)
        return None


def _refusal(queue: str, exc: pika.exceptions.ChannelClosedByBroker, *, declared: bool) -> str:
    """One line for a reply queue the broker refused, with what usually causes it."""
    line = f"the broker refused reply queue {queue!r}: {exc.reply_code} {exc.reply_text}"
    if exc.reply_code == 404:
        return (f"{line} (it does not exist: the operator creates it, e.g. "
                "deploy/rabbitmq/add-his-user; check --queue and the vhost)")
    if exc.reply_code == 403:
        hint = ("this broker user may not read it (a HIS reads only its own his.NAME.replies)"
                if not declared else "this broker user may not declare or read it (a HIS user "
                "that may configure nothing needs --no-declare)")
        return f"{line} ({hint})"
    if exc.reply_code == 406 and declared:
        return (f"{line} (it exists with other arguments: --queue-type must match its type, "
                "or consume it as it is with --no-declare)")
    return line


class ReplyListener:
    """Consume the replies sent to ``routing_key`` from queue ``queue``.

    The queue (default ``f"{routing_key}.replies"``) is declared durable and bound to
    ``eeszt.replies``; ``durable=False`` declares a queue that disappears with its last
    consumer (tests, watching by hand). ``prefetch`` replies are buffered client-side. Connects
    on first use and reconnects by itself; replies not acked yet are redelivered after a
    reconnect. Not thread-safe: use it from one thread (``listen(stop=event)`` is how another
    thread stops it). ``url`` (one URL or several nodes') and ``tls``: as for
    :class:`~producers.Publisher`.

    ``declare=False`` declares and binds nothing and only consumes ``queue``, which must exist:
    the way for a HIS user of ``deploy/rabbitmq/add-his-user``, which may read its own queue and
    configure nothing. A missing queue (404) or another HIS's (403) is a :class:`ProducerError`
    naming the queue.
    """

    def __init__(self, url: str | Sequence[str], *, routing_key: str, queue: str | None = None,
                 durable: bool = True, prefetch: int = 100, connect_timeout: float = 5.0,
                 retry_attempts: int = 5, retry_backoff: float = 0.2,
                 tls: BrokerTLS | None = None, declare: bool = True,
                 queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        self.routing_key = routing_key
        self._queue_type = queue_type
        self.queue = queue or f"{routing_key}.replies"
        self._declare = declare
        self._url = url
        self._tls = tls
        self._durable = durable
        self._prefetch = prefetch
        self._connect_timeout = connect_timeout
        self._retry_attempts = retry_attempts
        self._retry_backoff = retry_backoff
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._buffer: deque[tuple[int, bytes, str | None, str]] = deque()
        self._last_tag: int | None = None  # handed out, not acked yet
        self._losses = 0

    # --- the public API ---------------------------------------------------------------------

    def open(self) -> Self:
        """Connect and declare the queue now (otherwise the first ``get`` does it).

        Raises:
            BrokerUnavailable: no broker after the bounded retry.
        """
        if self._channel is None or not self._channel.is_open:
            self._open()
        return self

    def get(self, timeout: float | None = None) -> Reply | None:
        """The next reply, or ``None`` after ``timeout`` seconds without one (``None`` waits
        for ever). Acks the reply handed out before this call.

        Raises:
            BrokerUnavailable: the broker went away and did not come back within the bounded
                retry.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            raw = self._next_raw(deadline)
            if raw is None:
                return None
            tag, body, message_id, routing_key = raw
            reply = parse_reply(body, routing_key=routing_key, message_id=message_id)
            if reply is None:
                self._ack(tag)
                continue
            self._last_tag = tag
            return reply

    def __iter__(self) -> Iterator[Reply]:
        """Yield replies for ever; each one is acked when the loop asks for the next."""
        while True:
            reply = self.get()
            if reply is not None:
                yield reply

    def listen(self, callback: Callable[[Reply], object], *,
               stop: threading.Event | None = None) -> None:
        """Call ``callback`` for each reply until ``stop`` is set (checked twice a second).

        Each reply is acked after ``callback`` returns. If ``callback`` raises, the reply is
        given back to the broker (redelivered later) and the exception propagates.
        """
        while stop is None or not stop.is_set():
            reply = self.get(timeout=0.5 if stop is not None else None)
            if reply is None:
                continue
            try:
                callback(reply)
            except BaseException:
                self._give_back()
                raise
            self._ack_last()

    def close(self, *, ack_last: bool = True) -> None:
        """Ack the last reply handed out (unless ``ack_last`` is false) and disconnect.

        Idempotent; never raises for a connection that is already gone.
        """
        if ack_last:
            with contextlib.suppress(*CONNECTION_ERRORS):  # else it is redelivered: fine
                self._ack_last()
        conn, self._conn, self._channel = self._conn, None, None
        self._buffer.clear()
        self._last_tag = None
        if conn is not None and conn.is_open:
            with contextlib.suppress(*CONNECTION_ERRORS):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(ack_last=exc_type is None)

    # --- internals --------------------------------------------------------------------------

    def _open(self) -> None:
        self.close(ack_last=False)  # tags of a dead channel mean nothing on a new one
        conn = connect(self._url, connect_timeout=self._connect_timeout,
                       retry_attempts=self._retry_attempts, retry_backoff=self._retry_backoff,
                       name=f"eeszt-replies:{self.queue}", tls=self._tls)
        channel = conn.channel()
        try:
            if self._declare:
                declare_replies_exchange(channel)
                # durable: of the --queue-type; auto-delete: always classic (quorum cannot)
                channel.queue_declare(self.queue, durable=self._durable,
                                      auto_delete=not self._durable,
                                      arguments=queue_arguments(self._queue_type)
                                      if self._durable else None)
                channel.queue_bind(self.queue, REPLIES_EXCHANGE, routing_key=self.routing_key)
            channel.basic_qos(prefetch_count=self._prefetch)
            channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            conn.close()
            raise ProducerError(_refusal(self.queue, exc, declared=self._declare)) from None
        self._conn, self._channel = conn, channel

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._buffer.append((method.delivery_tag, body, properties.message_id,
                             method.routing_key))

    def _next_raw(self, deadline: float | None) -> tuple[int, bytes, str | None, str] | None:
        while True:
            try:
                self._ack_last()
                if self._channel is None or not self._channel.is_open:
                    self._open()
                if self._buffer:
                    self._losses = 0
                    return self._buffer.popleft()
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return None
                assert self._conn is not None
                self._conn.process_data_events(min(remaining, 1.0))
            except CONNECTION_ERRORS as exc:
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        self._losses += 1
        log.warning("reply connection lost (%s); reconnecting", exc.__class__.__name__)
        self.close(ack_last=False)
        if self._losses > self._retry_attempts:
            raise BrokerUnavailable(f"reply connection lost {self._losses} times in a row",
                                    attempts=self._losses) from None

    def _ack(self, tag: int) -> None:
        if self._channel is not None and self._channel.is_open:
            self._channel.basic_ack(tag)

    def _ack_last(self) -> None:
        tag, self._last_tag = self._last_tag, None
        if tag is not None:
            self._ack(tag)

    def _give_back(self) -> None:
        tag, self._last_tag = self._last_tag, None
        if tag is not None and self._channel is not None and self._channel.is_open:
            # Unacked on a dead channel, it is redelivered anyway.
            with contextlib.suppress(*CONNECTION_ERRORS):
                self._channel.basic_nack(tag, requeue=True)
