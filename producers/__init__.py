"""The HIS-side client of eeszt-gateway: confirmed publishing, replies, test data, commands.

- :class:`Publisher`: ``submit(request)`` returns once RabbitMQ confirmed the request.
- :class:`BatchPublisher`: pipelined confirms for bulk uploads; ``flush()`` reports.
- :class:`ReplyListener`: the HIS's reply queue; iterate, ``get()`` or ``listen()``.
- :class:`MemoryPublisher` / :class:`MemoryReplies`: the same seams in memory
  (:class:`RequestPublisher`, :class:`BatchRequestPublisher`, :class:`ReplySource`).
- :func:`parse_line`: one JSONL line to a request, or :class:`InvalidRequest`.
- :func:`generate`: realistic synthetic requests as JSONL lines.
- :func:`declare_topology`: the reference declaration of the request exchanges and queues.
- :class:`BrokerTLS`: CA and client certificate for an ``amqps://`` broker URL (verified TLS).

Errors: see :mod:`producers.errors` (``ProducerError`` and its tree). Delivery is at-least-once;
the gateway deduplicates by idempotency key. Depends on ``schemas`` only (plus pika and rich).
"""

from producers.errors import BrokerUnavailable, InvalidRequest, ProducerError, PublishFailed
from producers.generate import MALFORMED_KINDS, generate
from producers.memory import (
    BatchRequestPublisher,
    BatchSummary,
    FailedMessage,
    MemoryPublisher,
    MemoryReplies,
    ReplySource,
    RequestPublisher,
    Sink,
    to_wire,
)
from producers.batch import BatchPublisher
from producers.publisher import Publisher, parse_line
from producers.replies import ReplyListener, parse_reply
from producers.topology import DEFAULT_BROKER_URL, connect, declare_topology, safe_url
from eeszt_gw.amqp import BrokerTLS

__all__ = [
    "DEFAULT_BROKER_URL",
    "MALFORMED_KINDS",
    "BatchPublisher",
    "BatchRequestPublisher",
    "BatchSummary",
    "BrokerTLS",
    "BrokerUnavailable",
    "FailedMessage",
    "InvalidRequest",
    "MemoryPublisher",
    "MemoryReplies",
    "ProducerError",
    "PublishFailed",
    "Publisher",
    "ReplyListener",
    "ReplySource",
    "RequestPublisher",
    "Sink",
    "connect",
    "declare_topology",
    "generate",
    "parse_line",
    "parse_reply",
    "safe_url",
    "to_wire",
]
