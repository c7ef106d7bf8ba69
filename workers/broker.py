"""dramatiq on RabbitMQ, reading the gateway's plain-JSON wire format.

A HIS publishes a plain JSON request (``schemas.wire``), not a dramatiq message. The broker
here wraps each delivery into a dramatiq :class:`~dramatiq.Message` for the actor of the
request's service, carrying the raw body and the AMQP facts (redelivered flag, headers). So a
HIS in any language can publish with a plain AMQP client, and everything dramatiq offers
(worker threads, priorities, middleware, time limits, graceful shutdown) still applies.

Two deliberate departures from dramatiq's defaults:

- publisher confirms are on (dramatiq's default is off, so a crash could lose a publish);
- a message whose actor raised is requeued, not dead-lettered to ``<queue>.XQ`` (whose 7-day
  TTL silently expires messages). Actors raise only when the broker could not take what a
  request produced; everything else ends in a reply or in ``eeszt.dlq``.
"""

from __future__ import annotations

import base64
import itertools
import os
import threading
import uuid
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import (
    DEAD_MESSAGE_TTL,
    RabbitmqBroker,
    _RabbitmqConsumer,
    _RabbitmqMessage,
)
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import ShutdownNotifications, TimeLimit

from schemas.card import LOGIN_ANSWERS_QUEUE
from eeszt_gw.amqp import BrokerTLS, broker_addresses, in_order
from schemas.services import SERVICE_OF_FAMILY
from schemas.wire import DEFAULT_QUEUE_TYPE, H_TYPE, queue_arguments

#: payload type family -> actor (one actor per EESZT service, named as the service)
ACTOR_OF_FAMILY: dict[str, str] = dict(SERVICE_OF_FAMILY)
UNROUTABLE_ACTOR = "unroutable"
#: ids of consumers whose connection is alive; a message from any other one is stale
_LIVE_CONSUMERS: set[int] = set()
LOGIN_ACTOR = "loginEvents"


def _plain_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """Only JSON-safe scalars survive (x-death holds datetimes); keep its count."""
    out: dict[str, Any] = {}
    for k, v in (headers or {}).items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, (str, int, float, bool)):
            out[str(k)] = v
    deaths = (headers or {}).get("x-death")
    if isinstance(deaths, list):
        out["x-death-count"] = sum(int(d.get("count", 1)) for d in deaths if isinstance(d, dict))
    return out


def consumer_alive(consumer_id: int | None) -> bool:
    """False for a message whose consumer's connection has died since it was delivered.

    dramatiq keeps processing prefetched messages after their connection is gone, while the
    broker redelivers them elsewhere; such a stale copy must not be processed.
    """
    return consumer_id is None or consumer_id in _LIVE_CONSUMERS


def wrap_delivery(*, queue: str, body: bytes, routing_key: str | None = None,
                  headers: dict[str, Any] | None = None, redelivered: bool = False,
                  message_id: str | None = None, consumer: int | None = None,
                  user_id: str | None = None, exchange: str | None = None) -> dramatiq.Message:
    """A dramatiq message for one raw delivery. Never fails, whatever the body holds.

    ``user_id`` is the delivery's AMQP user_id (RabbitMQ validated it against the publisher's
    connection): the tenant check of ``workers/tenants.py`` trusts it. ``exchange`` and
    ``routing_key`` travel along for the checks of ``workers/intake.py``.
    """
    plain = _plain_headers(headers)
    mtype = plain.get(H_TYPE) or routing_key or ""
    if queue == LOGIN_ANSWERS_QUEUE:
        actor = LOGIN_ACTOR
    else:
        actor = ACTOR_OF_FAMILY.get(str(mtype).split(".", 1)[0], UNROUTABLE_ACTOR)
    meta = {"queue": queue, "type": mtype or None, "redelivered": bool(redelivered),
            "headers": plain, "message_id": message_id, "consumer": consumer, "user_id": user_id,
            "exchange": exchange, "routing_key": routing_key}
    return dramatiq.Message(
        queue_name=queue, actor_name=actor,
        args=(base64.b64encode(body).decode("ascii"), meta), kwargs={}, options={},
        message_id=_delivery_id(),
    )


_delivery_ids = itertools.count(1)
_id_prefix = uuid.uuid4().hex[:16]


def _new_prefix() -> None:  # a forked child numbers its deliveries apart from its parent
    global _id_prefix, _delivery_ids
    _id_prefix, _delivery_ids = uuid.uuid4().hex[:16], itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def _delivery_id() -> str:
    """dramatiq's id of one delivery, unique in this process and across processes: a random
    prefix drawn once per process and a counter. ``uuid4()`` per delivery would cost a
    ``getrandom`` system call, and with it a hand-over of the GIL, on the consumer thread."""
    return f"{_id_prefix}-{next(_delivery_ids)}"


class _GatewayConsumer(_RabbitmqConsumer):
    """dramatiq's consumer, reading plain-JSON deliveries, with coalesced acknowledgements.

    Worker threads settle messages from their own threads. dramatiq hands every ack to the
    connection's thread with its own ``add_callback_threadsafe`` (a pipe write, a timer and a
    socket flush each); here settlements queue up and one callback sends all that are waiting,
    without a flush of its own: the consumer's next poll writes them in one go. That halves
    the consumer thread's CPU per message at 800 messages/s (``eeszt-gw bench batch``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._settle_lock = threading.Lock()
        self._to_settle: list[tuple[int, bool]] = []
        self._settle_scheduled = False
        _LIVE_CONSUMERS.add(id(self))

    def ack(self, message):
        self._settle(message, True)

    def nack(self, message):
        # Requeue: the actor could not hand off what the request produced (broker trouble).
        self._settle(message, False)

    def _settle(self, message, ack: bool) -> None:
        tag = message._tag
        try:
            self.known_tags.remove(tag)
        except KeyError:
            self.logger.warning("Failed to settle message: not in known tags.")
            return
        with self._settle_lock:
            self._to_settle.append((tag, ack))
            if self._settle_scheduled:
                return
            self._settle_scheduled = True
        try:
            self.connection.add_callback_threadsafe(self._settle_waiting)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            with self._settle_lock:
                self._settle_scheduled = False
            raise ConnectionClosed(e) from None

    def _settle_waiting(self) -> None:
        """On the connection's thread: send every waiting ack/nack (written by the next poll)."""
        with self._settle_lock:
            waiting, self._to_settle = self._to_settle, []
            self._settle_scheduled = False
        channel = self.channel._impl
        for tag, ack in waiting:
            if ack:
                channel.basic_ack(tag)
            else:
                channel.basic_nack(tag, requeue=True)

    def __next__(self):
        try:
            method, properties, body = next(self.iterator)
            if method is None:
                return None
        except (AssertionError, pika.exceptions.AMQPConnectionError,
                pika.exceptions.AMQPChannelError) as e:
            _LIVE_CONSUMERS.discard(id(self))
            raise ConnectionClosed(e) from None
        message = wrap_delivery(queue=self.queue_name.removesuffix(".DQ"), body=body,
                                routing_key=method.routing_key, headers=properties.headers,
                                redelivered=method.redelivered, message_id=properties.message_id,
                                consumer=id(self), user_id=properties.user_id,
                                exchange=method.exchange)
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def close(self):
        _LIVE_CONSUMERS.discard(id(self))
        super().close()



class GatewayBroker(RabbitmqBroker):
    #: the type of the queues dramatiq declares itself (the work queues it consumes and their
    #: ``.DQ`` and ``.XQ``); it must equal the one ``workers.topology`` declared them with.
    #: No ``x-max-priority`` ever (quorum queues refuse it): priorities are dramatiq's own,
    #: among the messages a worker process has prefetched from its queues.
    queue_type: str = DEFAULT_QUEUE_TYPE

    @property
    def parameters(self) -> Any:
        """The broker addresses for pika, which tries a list in its order: each connect gets
        them starting after the one that answered last in this process (``eeszt_gw.amqp``)."""
        found = self._parameters
        return in_order(found) if isinstance(found, list) and len(found) > 1 else found

    @parameters.setter
    def parameters(self, value: Any) -> None:
        self._parameters = value

    @property
    def consumer_class(self):
        return _GatewayConsumer

    def _build_queue_arguments(self, queue_name):
        return queue_arguments(self.queue_type, super()._build_queue_arguments(queue_name))

    def _declare_xq_queue(self, queue_name):
        # dramatiq's own arguments (a 7-day x-message-ttl), typed like the rest
        return self.channel.queue_declare(queue=xq_name(queue_name), durable=True,
                                          arguments=queue_arguments(
                                              self.queue_type,
                                              {"x-message-ttl": DEAD_MESSAGE_TTL}))


def middleware(time_limit_ms: int) -> list:
    """dramatiq's middleware for the gateway: a time limit per message and shutdown
    notifications. No ``CurrentMessage``: nothing reads it, and it costs two context-variable
    writes and two more hooks per message."""
    return [TimeLimit(time_limit=time_limit_ms), ShutdownNotifications()]


def rabbit_broker(url: str, *, tls: BrokerTLS | None = None,
                  time_limit_ms: int = 10 * 60 * 1000,
                  queue_type: str = DEFAULT_QUEUE_TYPE) -> GatewayBroker:
    """The workers' broker on every address of ``url`` (comma-separated URLs: the nodes of one
    broker, tried in turn); ``amqps://`` is verified TLS (``eeszt_gw.amqp``).
    Raises BrokerConfigError."""
    addresses = broker_addresses(url, tls)
    # Not dramatiq's own URL parsing: pika alone, no hostname check, no client certificate,
    # no commas. Its consumers and publishers connect with broker.parameters, a list.
    broker = GatewayBroker(parameters=[], confirm_delivery=True,
                           middleware=middleware(time_limit_ms))
    broker.parameters = addresses
    broker.queue_type = queue_type
    return broker


def stub_broker(*, time_limit_ms: int = 10 * 60 * 1000) -> StubBroker:
    """The embedded, in-memory broker of the demo and the unit tests."""
    return StubBroker(middleware=middleware(time_limit_ms))
