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
import uuid
from functools import partial
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage, ShutdownNotifications, TimeLimit

from schemas.card import LOGIN_ANSWERS_QUEUE
from schemas.wire import H_TYPE

#: payload type family -> actor (one actor per EESZT service)
ACTOR_OF_FAMILY: dict[str, str] = {
    "erecept": "eRecept",
    "ebeutalo": "eBeutalo",
    "eprofil": "eProfil",
    "event": "esemenyKatalogus",
    "ehr": "eht",
}
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
                  message_id: str | None = None, consumer: int | None = None) -> dramatiq.Message:
    """A dramatiq message for one raw delivery. Never fails, whatever the body holds."""
    plain = _plain_headers(headers)
    mtype = plain.get(H_TYPE) or routing_key or ""
    if queue == LOGIN_ANSWERS_QUEUE:
        actor = LOGIN_ACTOR
    else:
        actor = ACTOR_OF_FAMILY.get(str(mtype).split(".", 1)[0], UNROUTABLE_ACTOR)
    meta = {"queue": queue, "type": mtype or None, "redelivered": bool(redelivered),
            "headers": plain, "message_id": message_id, "consumer": consumer}
    return dramatiq.Message(
        queue_name=queue, actor_name=actor,
        args=(base64.b64encode(body).decode("ascii"), meta), kwargs={}, options={},
        message_id=str(uuid.uuid4()),
    )


class _GatewayConsumer(_RabbitmqConsumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _LIVE_CONSUMERS.add(id(self))

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
                                consumer=id(self))
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def close(self):
        _LIVE_CONSUMERS.discard(id(self))
        super().close()

    def _nack(self, tag):
        # Requeue: the actor could not hand off what the request produced (broker trouble).
        self.connection.add_callback_threadsafe(
            partial(self.channel.basic_nack, tag, requeue=True))


class GatewayBroker(RabbitmqBroker):
    @property
    def consumer_class(self):
        return _GatewayConsumer


def middleware(time_limit_ms: int) -> list:
    return [CurrentMessage(), TimeLimit(time_limit=time_limit_ms), ShutdownNotifications()]


def rabbit_broker(url: str, *, time_limit_ms: int = 10 * 60 * 1000) -> GatewayBroker:
    return GatewayBroker(url=url, confirm_delivery=True, middleware=middleware(time_limit_ms))


def stub_broker(*, time_limit_ms: int = 10 * 60 * 1000) -> StubBroker:
    """The embedded, in-memory broker of the demo and the unit tests."""
    return StubBroker(middleware=middleware(time_limit_ms))
