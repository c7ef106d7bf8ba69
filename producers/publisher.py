"""Confirmed publishing of requests to ``eeszt.requests`` (the wire format of ``schemas.wire``).

- :class:`Publisher`: ``submit()`` returns once the broker has confirmed that it holds the
  request durably. Thread-safe; about 2,000 confirmed submits/s, one at a time.
- :class:`~producers.batch.BatchPublisher` (in :mod:`producers.batch`): ``publish()`` keeps up
  to ``max_in_flight`` confirms outstanding and ``flush()`` waits for them, for bulk uploads
  (10,000+ messages/s).

**Delivery is at-least-once.** A message is published with ``mandatory`` set and is only
reported as published after its ``basic.ack``. When the connection dies before the confirm, the
message is published again on the next connection, so the broker may hold it twice; the gateway
deduplicates by idempotency key, so EESZT still sees it once (nothing lost, nothing sent twice).

Why not ``BlockingChannel.confirm_delivery()``: pika then waits for each confirm inside
``basic_publish``, without a timeout, which caps a publisher at one message per round trip.
Instead the underlying channel is put in confirm mode with our own ack/nack and return callbacks,
confirms are tracked per delivery tag, and the connection is pumped until the ones we wait for
have arrived.

**user_id.** Every message carries the AMQP ``user_id`` property = the broker user the
connection logged in as (RabbitMQ refuses a publish whose ``user_id`` differs, so it costs
nothing to be honest). The gateway binds a HIS user's ``reply_to`` to it (``his-NAME`` may only
ask for replies on ``his.NAME`` or ``his.NAME.*``), and ``--tenants strict`` refuses requests
without it. ``set_user_id=False`` leaves it out, for brokers whose login name is not the one in
the URL (OAuth 2 tokens, EXTERNAL); the gateway must then not run in ``strict`` mode.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pika
import pika.exceptions
from pika.spec import Basic, BasicProperties
from pydantic import ValidationError

from producers.errors import BrokerUnavailable, InvalidRequest, ProducerError, PublishFailed
from producers.memory import to_wire
from producers.topology import CONNECTION_ERRORS, coalesce_writes, connect, declare_topology
from eeszt_gw.amqp import BrokerTLS
from schemas.envelope import RequestEnvelope
from schemas.wire import DEFAULT_QUEUE_TYPE, H_REPUBLISHED, REQUESTS_EXCHANGE

__all__ = ["Publisher", "parse_line"]

log = logging.getLogger(__name__)

#: Publisher.submit polls the connection before a publish only after this many seconds without
#: a confirm: a connection that just confirmed is alive.
IDLE_PROBE_S = 1.0


def parse_line(line: str, lineno: int) -> RequestEnvelope:
    """Parse one JSONL line into a request; called by ``eeszt-gw publish`` for each line.

    Raises:
        InvalidRequest: not JSON or not a valid request; ``field``/``reason`` name the first
            problem and ``lineno`` is ``lineno``. The value itself is never repeated.
    """
    try:
        return RequestEnvelope.from_json(line)
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc, lineno=lineno) from None


@dataclass(slots=True, eq=False)
class _Outgoing:
    routing_key: str
    body: bytes
    properties: BasicProperties
    message_id: str
    sent: bool = False
    outcome: str | None = None  # None: unconfirmed; "": confirmed; else why it failed
    tag: int = field(default=0, repr=False)
    nacks: int = field(default=0, repr=False)  # nacks so far (each is sent again, bounded)
    retry_at: float = field(default=0.0, repr=False)  # monotonic time of its next send


def _outgoing(routing_key: str, body: bytes, headers: Mapping[str, Any] | None,
              message_id: str | None) -> _Outgoing:
    # Every message gets an id: a basic.return carries no delivery tag, only the properties.
    mid = message_id or str(uuid.uuid4())
    props = BasicProperties(delivery_mode=2, content_type="application/json", message_id=mid,
                            headers=dict(headers or {}))
    return _Outgoing(routing_key, body, props, mid)


def _from_request(request: RequestEnvelope) -> _Outgoing:
    return _outgoing(*to_wire(request))


def _noop() -> None:
    pass


def _login_user(conn: pika.BlockingConnection) -> str | None:
    """The user name ``conn`` logged in with, or None when it did not use one (EXTERNAL)."""
    params = getattr(getattr(conn, "_impl", None), "params", None)
    creds = getattr(params, "credentials", None)
    return creds.username if isinstance(creds, pika.PlainCredentials) else None


class _ConfirmChannel:
    """One connection with one channel in confirm mode; unconfirmed messages by delivery tag.

    Not thread-safe: its owner serialises calls. Methods raise ``CONNECTION_ERRORS`` when the
    connection dies; the owner then calls :meth:`lost`, and the next :meth:`open` republishes
    everything still unconfirmed.
    """

    def __init__(self, *, url: str | Sequence[str], connect_timeout: float, retry_attempts: int,
                 retry_backoff: float, declare: bool, exchange: str, name: str,
                 on_done: Callable[[_Outgoing], None] | None = None,
                 tls: BrokerTLS | None = None, set_user_id: bool = True,
                 queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        self._url = url
        self._tls = tls
        self._queue_type = queue_type
        self._set_user_id = set_user_id
        self._user_id: str | None = None  # the connection's user, once connected
        self._connect_timeout = connect_timeout
        self.retry_attempts = retry_attempts
        self._retry_backoff = retry_backoff
        self._declare = declare
        self._exchange = exchange
        self._name = name
        self._on_done = on_done
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None  # the pika.channel.Channel under the BlockingChannel
        self._blocking: Any = None  # keeps that BlockingChannel (and its callbacks) alive
        self._tag = 0
        self.pending: OrderedDict[int, _Outgoing] = OrderedDict()
        #: nacked, to be sent again at their retry_at: a quorum queue nacks while it elects
        #: a leader (its node died) or just after it was declared; that passes
        self.nacked: list[_Outgoing] = []
        self._returned: dict[str, str] = {}
        self._waiting = False
        self._losses = 0
        self.heard_at = 0.0  # monotonic time of the last confirm on this connection

    def open(self) -> None:
        """Connect (bounded retry) and open a confirm channel if needed, then republish.

        Raises:
            BrokerUnavailable: connecting failed ``retry_attempts`` times.
            ProducerError: the broker refused the topology declaration (argument mismatch).
        """
        if self._channel is not None and self._channel.is_open:
            return
        if self._conn is None or not self._conn.is_open:
            try:
                self._conn = connect(self._url, connect_timeout=self._connect_timeout,
                                     retry_attempts=self.retry_attempts,
                                     retry_backoff=self._retry_backoff, name=self._name,
                                     tls=self._tls)
            except BrokerUnavailable as exc:
                raise BrokerUnavailable(exc.reason, attempts=exc.attempts,
                                        unconfirmed=self.unconfirmed_ids()) from None
            coalesce_writes(self._conn)
            if self._set_user_id:
                self._user_id = _login_user(self._conn)
        blocking = self._conn.channel()
        try:
            if self._declare:
                declare_topology(blocking, self._queue_type)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise ProducerError(f"the broker refused the request topology: {exc.reply_code} "
                                f"{exc.reply_text}") from None
        selected: list[object] = []
        channel = blocking._impl  # see the module docstring: our own confirm callbacks
        channel.confirm_delivery(self._on_confirm, callback=selected.append)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)
        deadline = time.monotonic() + self._connect_timeout
        while not selected:
            if time.monotonic() > deadline:
                raise pika.exceptions.AMQPConnectionError("no Confirm.SelectOk in time")
            self._conn.process_data_events(0.05)
        self._channel, self._blocking, self._tag = channel, blocking, 0
        resend = [*self.pending.values(), *self.nacked]
        self.pending.clear()
        self.nacked.clear()
        self._returned.clear()
        if resend:
            log.info("republishing %d unconfirmed messages after reconnect", len(resend))
        for msg in resend:
            # The first copy may have reached the queue: tell the workers this may be a twin.
            msg.properties.headers = {**(msg.properties.headers or {}), H_REPUBLISHED: 1}
            self.send(msg)

    def send(self, msg: _Outgoing) -> None:
        """Hand ``msg`` to the connection's buffer; it goes out at the next :meth:`pump`."""
        if self._user_id is not None and msg.properties.user_id is None:
            msg.properties.user_id = self._user_id  # see the module docstring
        self._channel.basic_publish(self._exchange, msg.routing_key, msg.body, msg.properties,
                                    mandatory=True)
        self._tag += 1
        msg.tag, msg.sent = self._tag, True
        self.pending[self._tag] = msg

    def pump(self, time_limit: float) -> None:
        """Send buffered frames and handle confirms, for at most ``time_limit`` seconds; returns
        early when a confirm arrives."""
        assert self._conn is not None
        if self.nacked:
            now = time.monotonic()
            if any(m.retry_at <= now for m in self.nacked):
                # On a new connection: a channel that published to a quorum queue while it
                # elected a leader goes on being nacked (RabbitMQ 3.10, for a minute and more).
                # open() sends again what is unconfirmed, marked as possible twins.
                self.close()
                self.open()
                return
            time_limit = min(time_limit, max(0.0, min(m.retry_at for m in self.nacked) - now))
        self._waiting = time_limit > 0
        self._conn.process_data_events(time_limit)

    def wait_for(self, done: Callable[[], bool], deadline: float) -> bool:
        """Pump until ``done()`` or ``deadline`` (monotonic); returns ``done()``."""
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(remaining, 1.0))
        return True

    def forget(self, msg: _Outgoing) -> None:
        """Stop tracking ``msg`` (its caller gave up waiting); it is not republished."""
        self.pending.pop(msg.tag, None)
        if msg in self.nacked:
            self.nacked.remove(msg)

    def unsettled(self) -> int:
        """Messages handed over whose outcome is not known yet (sent, or to be sent again)."""
        return len(self.pending) + len(self.nacked)

    def unconfirmed_ids(self) -> list[str]:
        return [m.message_id for m in [*self.pending.values(), *self.nacked]]

    def lost(self, exc: BaseException) -> None:
        """Drop the connection after ``exc``; unconfirmed messages stay for the next open().

        Raises:
            BrokerUnavailable: the connection was lost more than ``retry_attempts`` times in
                a row without a single confirm in between.
        """
        self._losses += 1
        log.warning("broker connection lost (%s: %s); %d messages unconfirmed",
                    exc.__class__.__name__, exc, len(self.pending))
        self.close()
        if self._losses > self.retry_attempts:
            raise BrokerUnavailable(
                f"connection lost {self._losses} times in a row ({exc.__class__.__name__})",
                attempts=self._losses, unconfirmed=self.unconfirmed_ids()) from None

    def close(self) -> None:
        conn, self._conn, self._channel, self._blocking = self._conn, None, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(*CONNECTION_ERRORS):  # already gone: nothing to release
                conn.close()

    # --- callbacks, run by pika inside pump() -----------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, Basic.Nack)
        if method.multiple:
            done = []
            while self.pending and next(iter(self.pending)) <= method.delivery_tag:
                done.append(self.pending.popitem(last=False)[1])
        else:
            one = self.pending.pop(method.delivery_tag, None)
            done = [one] if one is not None else []
        for msg in done:
            returned = self._returned.pop(msg.message_id, None)
            if nacked and not returned and msg.nacks < self.retry_attempts:
                msg.nacks += 1
                msg.retry_at = time.monotonic() + min(self._retry_backoff * 2 ** (msg.nacks - 1), 5.0)
                log.info("message %s nacked by the broker; sending it again (%d of %d)",
                         msg.message_id, msg.nacks, self.retry_attempts)
                self.nacked.append(msg)
                continue
            if nacked:
                msg.outcome = (f"nacked by the broker {msg.nacks + 1} times (queue full with "
                               "reject-publish, no quorum for a quorum queue, or an internal "
                               "error)")
            else:
                msg.outcome = returned or ""
            if msg.outcome:
                log.warning("message %s not published: %s", msg.message_id, msg.outcome)
            if self._on_done is not None:
                self._on_done(msg)
        self._losses = 0
        self.heard_at = time.monotonic()
        if self._waiting and self._conn is not None:
            # A 0-delay timer is a ready event, which ends process_data_events() at once
            # instead of at its time limit.
            self._waiting = False
            self._conn.call_later(0, _noop)

    def _on_return(self, _channel: Any, method: Any, properties: BasicProperties,
                   _body: bytes) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        self._returned[properties.message_id] = (
            f"returned as unroutable ({method.reply_code} {method.reply_text}) by exchange "
            f"{method.exchange!r} for routing key {method.routing_key!r}")

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if self._channel is channel:
            self._channel = None
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            return  # the connection went: its messages are republished after reconnect
        # The broker closed the channel over a message (e.g. no such exchange): what it had not
        # confirmed yet was discarded, and republishing would only close the next channel.
        why = f"the broker closed the channel: {reason.reply_code} {reason.reply_text}"
        for msg in list(self.pending.values()):
            msg.outcome = why
            if self._on_done is not None:
                self._on_done(msg)
        self.pending.clear()
        log.error("%s", why)


class _Base:
    def __init__(self, *, url: str | Sequence[str], connect_timeout: float, retry_attempts: int,
                 retry_backoff: float, declare_topology: bool, exchange: str, name: str,
                 on_done: Callable[[_Outgoing], None] | None = None,
                 tls: BrokerTLS | None = None, set_user_id: bool = True,
                 queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        self._lock = threading.Lock()
        self._engine = _ConfirmChannel(
            url=url, connect_timeout=connect_timeout, retry_attempts=retry_attempts,
            retry_backoff=retry_backoff, declare=declare_topology, exchange=exchange, name=name,
            on_done=on_done, tls=tls, set_user_id=set_user_id, queue_type=queue_type)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent. Unconfirmed messages are logged, not waited for."""
        with self._lock:
            if self._engine.unsettled():
                log.error("closing with %d messages handed over but not confirmed; call "
                          "flush() first", self._engine.unsettled())
            self._engine.close()


class Publisher(_Base):
    """Publish one request at a time and return once the broker has confirmed it.

    ``url`` is one broker URL, or several nodes' comma-separated (``amqp://a,amqp://b``) or as
    a list: each connect tries them in turn, starting after the one that answered last.
    Connects lazily on the first submit and reconnects by itself (``retry_attempts`` connects
    with exponential, jittered backoff from ``retry_backoff`` seconds). With
    ``declare_topology`` (the default) it declares the exchanges and work queues after each
    connect, so a request never depends on a worker having started first. ``exchange`` exists
    for tests and tools. Thread-safe: a lock serialises submits, so one instance confirms about
    2,000 messages/s; use :class:`BatchPublisher` for bulk uploads. For an ``amqps://`` URL,
    ``tls`` names the broker's CA and this client's certificate (``eeszt_gw.amqp``); the
    broker's certificate is always verified. ``set_user_id`` (default on) sets each message's
    ``user_id`` to the connection's user (see the module docstring). ``queue_type`` (classic or
    quorum) is the type the work queues are declared with: the workers' ``--queue-type``.
    """

    def __init__(self, *, url: str | Sequence[str], connect_timeout: float = 5.0,
                 retry_attempts: int = 5, retry_backoff: float = 0.2, declare_topology: bool = True,
                 exchange: str = REQUESTS_EXCHANGE, tls: BrokerTLS | None = None,
                 set_user_id: bool = True, queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        super().__init__(url=url, connect_timeout=connect_timeout, retry_attempts=retry_attempts,
                         retry_backoff=retry_backoff, declare_topology=declare_topology,
                         exchange=exchange, name="eeszt-producer", tls=tls,
                         set_user_id=set_user_id, queue_type=queue_type)

    def submit(self, request: RequestEnvelope, *, timeout: float = 10.0) -> None:
        """Publish ``request`` (routing key = its payload type) and wait for the confirm.

        Raises:
            BrokerUnavailable: no broker after the bounded retry; the request was not confirmed.
            PublishFailed: nacked, returned as unroutable, or not confirmed within ``timeout``
                seconds (then it may still arrive: resubmitting is safe, the gateway dedupes).
            ProducerError: the broker refused the topology declaration.
        """
        self._submit(_from_request(request), timeout)

    def submit_raw(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None,
                   message_id: str | None = None, *, timeout: float = 10.0) -> str:
        """Publish arbitrary bytes (tests, tools); returns the message id (a new UUID if none).

        Raises what :meth:`submit` raises.
        """
        msg = _outgoing(routing_key, body, headers, message_id)
        self._submit(msg, timeout)
        return msg.message_id

    def _submit(self, msg: _Outgoing, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        engine = self._engine
        with self._lock:
            try:
                while msg.outcome is None and time.monotonic() < deadline:
                    try:
                        engine.open()
                        if not msg.sent:
                            if time.monotonic() - engine.heard_at > IDLE_PROBE_S:
                                # A 0 s pump first: an idle connection the broker dropped
                                # (missed heartbeats, a restart) fails here, before the
                                # publish, so the message is not sent again as a possible
                                # twin. A connection that confirmed within the last second
                                # skips this poll (about 70 µs of a 1 ms submit).
                                engine.pump(0)
                            engine.send(msg)
                        engine.wait_for(lambda: msg.outcome is not None, deadline)
                    except CONNECTION_ERRORS as exc:
                        engine.lost(exc)
            finally:
                if msg.outcome is None:
                    # The caller hears that it failed; a later submit must not resend it.
                    engine.forget(msg)
            if msg.outcome is None and not msg.sent:
                raise PublishFailed(msg.message_id, f"not sent within {timeout:g} s")
            if msg.outcome is None:
                raise PublishFailed(msg.message_id, f"no confirm within {timeout:g} s; it may "
                                    "still arrive (resubmitting is safe: the gateway dedupes)")
            if msg.outcome:
                raise PublishFailed(msg.message_id, msg.outcome)
