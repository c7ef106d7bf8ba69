"""Reaching the broker and declaring the request topology, exactly as ``schemas.wire`` draws it.

:func:`declare_topology` applies ``schemas.wire.REQUEST_PATH``, the exchanges, work queues and
bindings declared once as data. Everyone who declares them (producers, workers) must pass the
same arguments, or RabbitMQ closes the channel with ``PRECONDITION_FAILED``; take them from
``schemas.wire.declaration_calls``. Declaring is
idempotent, so every process declares at start-up and none depends on another having run first.

:func:`connect` opens a ``pika.BlockingConnection`` with a bounded, jittered retry, each attempt
going round every broker address of the URL setting (``amqp://a,amqp://b``), and turns pika's
errors into :class:`~producers.errors.BrokerUnavailable`. :func:`safe_url`
(``eeszt_gw.amqp``) is the only form in which a broker URL may be logged (the password is
masked).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from producers.errors import BrokerUnavailable, ProducerError
from eeszt_gw.amqp import (
    CONNECTION_ERRORS,
    TLS_EOF,
    BrokerConfigError,
    BrokerTLS,
    BrokerTLSError,
    BrokerUnreachable,
    broker_addresses,
    describe_error,
    open_connection,
    safe_url,
)
from eeszt_gw.config import DEFAULT_BROKER_URL
from schemas.wire import (
    DEFAULT_QUEUE_TYPE,
    REPLIES_EXCHANGE_DECLARATION,
    REQUEST_PATH,
    declaration_calls,
)

__all__ = [
    "DEFAULT_BROKER_URL",
    "coalesce_writes",
    "connect",
    "declare_replies_exchange",
    "declare_topology",
    "retry_delay",
    "safe_url",
]

log = logging.getLogger(__name__)

#: Longest pause between two connects, however many attempts came before.
MAX_BACKOFF_S: Final = 10.0



def declare_replies_exchange(channel: BlockingChannel) -> None:
    """Declare ``eeszt.replies`` (topic, durable). Idempotent; pika errors propagate."""
    method, args, kwargs = REPLIES_EXCHANGE_DECLARATION.call(DEFAULT_QUEUE_TYPE)
    getattr(channel, method)(*args, **kwargs)


def declare_topology(channel: BlockingChannel, queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
    """Declare every exchange, work queue and binding of the request path. Idempotent.

    ``queue_type`` (``classic`` or ``quorum``) must be the workers' ``--queue-type``.

    Called by :class:`~producers.Publisher` and :class:`~producers.BatchPublisher` after each
    connect (unless ``declare_topology=False``), so that a request published before any worker
    ever ran still lands in a durable queue instead of being returned as unroutable.

    Raises:
        pika.exceptions.ChannelClosedByBroker: something exists with other arguments
            (``PRECONDITION_FAILED``); the channel is closed afterwards.
    """
    for method, args, kwargs in declaration_calls(REQUEST_PATH, queue_type):
        getattr(channel, method)(*args, **kwargs)


def retry_delay(attempt: int, backoff: float) -> float:
    """Pause before connect number ``attempt + 1``: ``backoff * 2**(attempt-1)`` with ±50 %
    jitter (so that many clients restarted together do not reconnect in lockstep), capped."""
    base = min(MAX_BACKOFF_S, backoff * 2 ** max(0, attempt - 1))
    return base * random.uniform(0.5, 1.5)  # jitter, not cryptography


class _RedactReturnedBody(logging.Filter):
    """pika's BlockingChannel logs a WARNING with the first 255 bytes of every returned message,
    which would put a TAJ into the logs (patient identifiers stay out of logs); keep the record, drop the body."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (isinstance(record.msg, str) and record.msg.startswith("Published message was returned")
                and isinstance(record.args, tuple) and record.args):
            record.args = (*record.args[:-1], "<body redacted>")
        return True


_REDACTOR: Final = _RedactReturnedBody()


def _install_redactor() -> None:
    # At first connect rather than import time; addFilter ignores a filter already added.
    logging.getLogger("pika.adapters.blocking_connection").addFilter(_REDACTOR)


def coalesce_writes(connection: pika.BlockingConnection) -> bool:
    """Make the connection send its buffered frames with one ``send()`` instead of one each.

    pika writes every frame with its own ``send()``, three per message (method, header, body),
    and on loopback those syscalls were the largest client cost: joining the buffered frames
    raised the batch rate by about 45 % on the 2-core test machine. This touches pika internals
    (checked against 1.3 and 1.4), so it only applies to the plain-TCP transport it knows and
    does nothing otherwise; the order and content of the bytes are unchanged.
    """
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    produce = getattr(transport, "_produce", None)
    if (transport is None or type(transport).__name__ != "_AsyncPlaintextTransport"
            or produce is None or not isinstance(buffers, deque)):
        log.debug("pika transport not recognised; frames are sent one by one")
        return False

    def produce_joined() -> None:
        if len(buffers) > 1:
            chunk = b"".join(buffers)
            buffers.clear()
            buffers.append(chunk)
        produce()

    transport._produce = produce_joined
    return True


def connection_parameters(url: str, *, connect_timeout: float, name: str,
                          tls: BrokerTLS | None = None) -> list[pika.URLParameters]:
    """pika parameters for each broker address of ``url`` (comma-separated URLs) with our
    timeouts; one attempt each (we retry ourselves). ``amqps://`` is TLS with the broker's
    certificate verified (``eeszt_gw.amqp``).

    Raises:
        ProducerError: a URL is not an AMQP URL (the message does not repeat it), the URLs
            mix amqp:// and amqps://, or the TLS files cannot be used with them.
    """
    try:
        # A blocked connection (broker memory or disk alarm) is closed after 60 s, which the
        # publishers treat like any other connection loss.
        return broker_addresses(url, tls, connection_attempts=1, socket_timeout=connect_timeout,
                                stack_timeout=connect_timeout * 2,
                                blocked_connection_timeout=60.0,
                                client_properties={"connection_name": name})
    except BrokerConfigError as exc:
        raise ProducerError(str(exc)) from None


def _describe(exc: BaseException) -> str:
    """One line for a connect error; pika's str() is often empty, its first arg says why."""
    detail = str(exc) or (repr(exc.args[0]) if exc.args else "")
    return f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__


def refused_by_broker(exc: BaseException) -> bool:
    """True if the broker itself closed the connection during the login (403 ACCESS_REFUSED for
    the credentials, 530 NOT_ALLOWED for the vhost): retrying cannot help. pika raises the same
    ``Probable...Error`` types when the socket is merely reset during the handshake, which a
    RabbitMQ node does while it restarts; those are worth retrying."""
    return "ConnectionClosedByBroker" in str(exc)


def connect(
    url: str | Sequence[str],
    *,
    connect_timeout: float = 5.0,
    retry_attempts: int = 5,
    retry_backoff: float = 0.2,
    name: str = "eeszt-producer",
    tls: BrokerTLS | None = None,
) -> pika.BlockingConnection:
    """Open a blocking connection, trying at most ``retry_attempts`` times; each attempt tries
    every address of ``url`` (comma-separated URLs) once, bounded by ``connect_timeout``.

    Called by the publishers and the reply listener on start and after every connection loss.

    Raises:
        BrokerUnavailable: every attempt failed, or the broker refused the credentials or the
            TLS handshake failed (retrying those cannot help, so it stops at once; a TLS
            connection the broker closed without an alert is retried, as it may be a node going
            down).
        ProducerError: ``url`` is not an AMQP URL, or ``tls`` cannot be used with it.
    """
    url = url if isinstance(url, str) else ",".join(url)
    params = connection_parameters(url, connect_timeout=connect_timeout, name=name, tls=tls)
    _install_redactor()
    attempts = max(1, retry_attempts)
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            return open_connection(params)
        except BrokerTLSError as exc:
            if exc.reason != TLS_EOF:
                raise BrokerUnavailable(str(exc), attempts=attempt) from None
            # A close without a word: a refused client certificate, or a node going down
            # mid-handshake. Retried like a lost connection; the last message says which to
            # check.
            last = str(exc)
        except (pika.exceptions.ProbableAuthenticationError,
                pika.exceptions.ProbableAccessDeniedError) as exc:
            if refused_by_broker(exc):
                raise BrokerUnavailable(
                    f"broker {safe_url(url)} refused the login ({exc.__class__.__name__}); "
                    "check the user, password and vhost", attempts=attempt) from None
            # The connection dropped mid-handshake (a broker still starting up resets it), which
            # pika also reports as a probable denial: retried like any connection failure.
            last = _describe(exc)
        except BrokerUnreachable as exc:
            last = (describe_error(exc.failures[0][1]) if len(exc.failures) == 1
                    else str(exc))
        except CONNECTION_ERRORS as exc:
            last = _describe(exc)
        log.warning("connect to %s failed (attempt %d of %d): %s",
                    safe_url(url), attempt, attempts, last)
        if attempt < attempts:
            time.sleep(retry_delay(attempt, retry_backoff))
    raise BrokerUnavailable(
        f"broker {safe_url(url)} unreachable after {attempts} attempt{'s' * (attempts > 1)} "
        f"({last})", attempts=attempts
    )
