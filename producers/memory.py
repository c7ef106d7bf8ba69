"""The transport seam: what the HIS side needs from a broker, and an in-memory implementation.

Code that publishes requests depends on :class:`RequestPublisher` (one confirmed request at a
time) or :class:`BatchRequestPublisher` (pipelined), and code that reads replies on
:class:`ReplySource`. :class:`~producers.Publisher`, :class:`~producers.BatchPublisher` and
:class:`~producers.ReplyListener` implement them over RabbitMQ; :class:`MemoryPublisher` and
:class:`MemoryReplies` implement them in memory for the embedded demo and unit tests, so
nothing needs patching (as httpx's ``MockTransport`` or dramatiq's ``StubBroker``).

``MemoryPublisher`` builds exactly what the real publishers put on the wire (routing key, body,
headers, message id) and hands it to a ``sink`` callable; a sink that raises plays a broker that
refused the message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, cast, runtime_checkable

from producers.errors import PublishFailed
from producers.replies import parse_reply
from schemas.envelope import RequestEnvelope
from schemas.replies import Reply
from schemas.wire import H_IDEMPOTENCY_KEY, H_TYPE

__all__ = [
    "BatchRequestPublisher",
    "BatchSummary",
    "FailedMessage",
    "MemoryPublisher",
    "MemoryReplies",
    "ReplySource",
    "RequestPublisher",
    "Sink",
    "to_wire",
]

log = logging.getLogger(__name__)

#: ``sink(routing_key, body, headers, message_id)``: receives each published message.
Sink = Callable[[str, bytes, dict[str, Any], str], object]


def to_wire(request: RequestEnvelope) -> tuple[str, bytes, dict[str, Any], str]:
    """``(routing_key, body, headers, message_id)`` of ``request`` as every publisher sends it."""
    headers = {H_TYPE: request.message_type, H_IDEMPOTENCY_KEY: request.idempotency_key}
    return request.message_type, request.to_json(), headers, str(request.message_id)


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """A message the broker did not take, and why."""

    message_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What happened to the messages published since the previous :meth:`BatchPublisher.flush`.

    ``unconfirmed`` lists messages still waiting for their confirm when ``flush`` timed out;
    they stay tracked and a later ``flush`` reports them.
    """

    confirmed: int
    failed: tuple[FailedMessage, ...] = ()
    unconfirmed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every message was confirmed."""
        return not self.failed and not self.unconfirmed


@runtime_checkable
class RequestPublisher(Protocol):
    """Publishes one request and returns once it is safely stored (confirmed).

    ``submit`` raises :class:`~producers.errors.BrokerUnavailable` or
    :class:`~producers.errors.PublishFailed`; it never returns for a message that was dropped.
    """

    def submit(self, request: RequestEnvelope, *, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchRequestPublisher(Protocol):
    """Publishes many requests without waiting for each; ``flush`` reports the outcome."""

    def publish(self, request: RequestEnvelope, *, timeout: float = 60.0) -> None: ...

    def flush(self, timeout: float = 60.0) -> BatchSummary: ...

    def close(self) -> None: ...


@runtime_checkable
class ReplySource(Protocol):
    """Where a HIS reads its replies: ``get`` one (``None`` on timeout) or iterate."""

    def get(self, timeout: float | None = None) -> Reply | None: ...

    def __iter__(self) -> Iterator[Reply]: ...

    def close(self) -> None: ...


class MemoryPublisher:
    """In-memory :class:`RequestPublisher` and :class:`BatchRequestPublisher`.

    Each message goes to ``sink`` at once (``publish`` included), so ``flush`` only reports.
    With no sink the messages are kept in :attr:`sent` as ``(routing_key, body, headers,
    message_id)``. Thread-safe.
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any], str]] = []
        self._sink: Sink = sink or (lambda *message: self.sent.append(message))  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._confirmed = 0
        self._failed: list[FailedMessage] = []

    def submit(self, request: RequestEnvelope, *, timeout: float = 10.0) -> None:
        """Hand ``request`` to the sink. Raises PublishFailed if the sink raises."""
        self._deliver(*to_wire(request))

    def submit_raw(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None,
                   message_id: str | None = None, *, timeout: float = 10.0) -> str:
        """Hand arbitrary bytes to the sink; returns the message id. Raises as :meth:`submit`."""
        mid = message_id or str(uuid.uuid4())
        self._deliver(routing_key, body, dict(headers or {}), mid)
        return mid

    def publish(self, request: RequestEnvelope, *, timeout: float = 60.0) -> None:
        """Hand ``request`` to the sink; a failure is reported by :meth:`flush`, not raised."""
        try:
            self._deliver(*to_wire(request))
        except PublishFailed as exc:
            with self._lock:
                self._failed.append(FailedMessage(exc.message_id, exc.reason))
        else:
            with self._lock:
                self._confirmed += 1

    def flush(self, timeout: float = 60.0) -> BatchSummary:
        """Report (and reset) what :meth:`publish` did since the previous flush."""
        with self._lock:
            summary = BatchSummary(self._confirmed, tuple(self._failed))
            self._confirmed, self._failed = 0, []
            return summary

    def close(self) -> None:
        """Nothing to release; present for the protocol."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _deliver(self, routing_key: str, body: bytes, headers: dict[str, Any],
                 message_id: str) -> None:
        try:
            with self._lock:
                self._sink(routing_key, body, headers, message_id)
        except Exception as exc:
            raise PublishFailed(message_id, f"sink refused it ({exc.__class__.__name__}: "
                                f"{exc})") from exc


_CLOSED = object()


class MemoryReplies:
    """In-memory :class:`ReplySource`: whatever is ``deliver``-ed comes out of ``get``.

    With ``routing_key`` set, deliveries for other keys are ignored, as a bound queue would.
    Unparseable bodies are logged (not their content) and skipped, as the real listener does.
    Iteration ends after :meth:`close`. Thread-safe.
    """

    def __init__(self, routing_key: str | None = None) -> None:
        self.routing_key = routing_key
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = threading.Event()

    def deliver(self, routing_key: str, body: bytes) -> bool:
        """Offer a reply body; returns whether it was queued (the routing key matched)."""
        if self._closed.is_set() or (self.routing_key is not None
                                     and routing_key != self.routing_key):
            return False
        self._queue.put((routing_key, body))
        return True

    def get(self, timeout: float | None = None) -> Reply | None:
        """The next parseable reply, or ``None`` after ``timeout`` seconds or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if item is _CLOSED:
                self._queue.put(_CLOSED)  # wake every other reader too
                return None
            routing_key, body = cast(tuple[str, bytes], item)
            reply = parse_reply(body, routing_key=routing_key)
            if reply is not None:
                return reply

    def __iter__(self) -> Iterator[Reply]:
        """Yield replies until :meth:`close`."""
        while (reply := self.get()) is not None:
            yield reply

    def listen(self, callback: Callable[[Reply], object], *,
               stop: threading.Event | None = None) -> None:
        """Call ``callback`` for each reply until ``stop`` is set or the source is closed."""
        while not self._closed.is_set() and (stop is None or not stop.is_set()):
            reply = self.get(timeout=0.1)
            if reply is not None:
                callback(reply)

    def close(self) -> None:
        """Stop: readers get ``None`` once the replies already delivered are consumed."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(_CLOSED)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
