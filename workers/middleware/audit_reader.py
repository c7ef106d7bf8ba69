"""Reading the audit trail back: :func:`read_audit` (``eeszt-gw audit``).

The writer side (:class:`~workers.middleware.audit.RabbitAuditLog`, the stream's declaration
and retention) lives in :mod:`workers.middleware.audit`; this module only reads ``eeszt.audit``
in stream order and stops once caught up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pika
import pika.exceptions

from schemas.audit import AuditEvent
from eeszt_gw.amqp import BrokerTLS, open_connection
from workers.middleware.audit import AUDIT_QUEUE, CONTENT_TYPE, _params, decode_batch

log = logging.getLogger("eeszt_gw.audit")

#: header of the empty message a reader appends to find the end of the stream
H_READ_MARKER = "eeszt-audit-read-marker"


def read_audit(url: str, *, message_id: str | None = None, since: datetime | None = None,
               until: datetime | None = None, idle_s: float = 1.0, prefetch: int = 200,
               queue: str = AUDIT_QUEUE, tls: BrokerTLS | None = None) -> Iterator[AuditEvent]:
    """The audit events in stream order (the order they were written), filtered.

    ``message_id`` matches an event's message id or its idempotency key. ``since`` attaches to
    the stream at that time (``x-stream-offset`` timestamp; events are published after they
    happen, so none is skipped), otherwise at the first offset. Consumes with a prefetch and
    manual acks (RabbitMQ requires both for streams).

    Stops once caught up. A stream tells an AMQP 0-9-1 reader neither its length nor its end,
    and writers may keep appending, so the reader first appends an empty marker message (no
    events; header ``eeszt-audit-read-marker``) and stops when it reaches it. Without write
    permission it stops when no message came for ``idle_s``. Yields nothing if the stream does
    not exist. Raises ``pika.exceptions.AMQPError`` if the broker cannot be read.
    """
    conn = open_connection(_params(url, tls))
    try:
        channel = conn.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return
            raise
        marker = _append_marker(conn, queue)
        channel.basic_qos(prefetch_count=prefetch)
        offset: Any = since.astimezone(timezone.utc) if since else "first"
        for method, props, body in channel.consume(queue, auto_ack=False,
                                                   arguments={"x-stream-offset": offset},
                                                   inactivity_timeout=idle_s):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            if marker and (props.headers or {}).get(H_READ_MARKER) == marker:
                break
            for event in decode_batch(body):
                if message_id is not None and not event.matches(message_id):
                    continue
                if (since and event.at < since) or (until and event.at > until):
                    continue
                yield event
        channel.cancel()
    finally:
        if conn.is_open:
            conn.close()


def _append_marker(conn: pika.BlockingConnection, queue: str) -> str | None:
    """Append an empty, confirmed marker message; None if this user may not write."""
    marker = uuid.uuid4().hex
    channel = conn.channel()
    try:
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"", pika.BasicProperties(
            content_type=CONTENT_TYPE, delivery_mode=2, timestamp=int(time.time()),
            headers={H_READ_MARKER: marker}), mandatory=True)
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.NackError,
            pika.exceptions.UnroutableError) as exc:
        log.debug("no read marker (%s); reading until the stream is idle", exc)
        return None
    finally:
        if channel.is_open:
            channel.close()
    return marker

