"""Bulk publishing: :class:`BatchPublisher` keeps up to ``max_in_flight`` confirms outstanding.

It shares the confirming channel and the at-least-once delivery of :mod:`producers.publisher`
(see its docstring): ``publish()`` hands a request over and returns, ``flush()`` waits for the
outstanding confirms and reports them as a :class:`~producers.memory.BatchSummary`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from producers.errors import BrokerUnavailable
from producers.memory import BatchSummary, FailedMessage
from producers.publisher import _Base, _from_request, _outgoing, _Outgoing
from producers.topology import CONNECTION_ERRORS
from eeszt_gw.amqp import BrokerTLS
from schemas.envelope import RequestEnvelope
from schemas.wire import DEFAULT_QUEUE_TYPE, REQUESTS_EXCHANGE

__all__ = ["BatchPublisher", "BatchSummary", "FailedMessage"]

#: BatchPublisher sends buffered frames and reads confirms every this many publishes;
#: measured flat between 16 and 128, slower when every publish is flushed on its own.
PUMP_EVERY = 32


class BatchPublisher(_Base):
    """Publish many requests with up to ``max_in_flight`` confirms outstanding.

    Call :meth:`publish` for each request, then :meth:`flush` for the outcome of all of them.
    Confirms are tracked per delivery tag (``multiple`` acks included); after a connection loss
    every unconfirmed message is published again on the new connection. Meant for one thread
    (a lock makes misuse safe, not fast). Other parameters as for :class:`Publisher`.
    """

    def __init__(self, *, url: str | Sequence[str], max_in_flight: int = 256,
                 connect_timeout: float = 5.0, retry_attempts: int = 5, retry_backoff: float = 0.2,
                 declare_topology: bool = True, exchange: str = REQUESTS_EXCHANGE,
                 tls: BrokerTLS | None = None, set_user_id: bool = True,
                 queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        super().__init__(url=url, connect_timeout=connect_timeout, retry_attempts=retry_attempts,
                         retry_backoff=retry_backoff, declare_topology=declare_topology,
                         exchange=exchange, name="eeszt-batch-producer", on_done=self._done,
                         tls=tls, set_user_id=set_user_id, queue_type=queue_type)
        self._max_in_flight = max_in_flight
        self._since_pump = 0
        self._confirmed = 0
        self._failed: list[FailedMessage] = []

    @property
    def in_flight(self) -> int:
        """Messages handed over and not confirmed yet."""
        return self._engine.unsettled()

    def publish(self, request: RequestEnvelope, *, timeout: float = 60.0) -> None:
        """Hand ``request`` over; blocks only while ``max_in_flight`` confirms are outstanding.

        Raises:
            BrokerUnavailable: no broker after the bounded retry, or no confirm for
                ``timeout`` seconds with the window full (broker blocked); ``request`` was
                not handed over, and ``unconfirmed`` lists the ones that were.
            ProducerError: the broker refused the topology declaration.
        """
        self._publish(_from_request(request), timeout)

    def publish_raw(self, routing_key: str, body: bytes,
                    headers: Mapping[str, Any] | None = None, message_id: str | None = None,
                    *, timeout: float = 60.0) -> str:
        """Like :meth:`publish` for arbitrary bytes (tests, tools); returns the message id."""
        msg = _outgoing(routing_key, body, headers, message_id)
        self._publish(msg, timeout)
        return msg.message_id

    def _publish(self, msg: _Outgoing, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        engine = self._engine
        with self._lock:
            while True:
                try:
                    engine.open()  # after a loss this republishes msg too, if it was sent
                    if not msg.sent:
                        if not engine.wait_for(
                                lambda: len(engine.pending) < self._max_in_flight, deadline):
                            raise BrokerUnavailable(
                                f"no confirm for {timeout:g} s with {len(engine.pending)} "
                                "messages in flight (is the broker blocked by an alarm?)",
                                attempts=0, unconfirmed=engine.unconfirmed_ids())
                        engine.send(msg)
                        self._since_pump += 1
                    if self._since_pump >= PUMP_EVERY:
                        self._since_pump = 0
                        engine.pump(0)
                    return
                except CONNECTION_ERRORS as exc:
                    engine.lost(exc)

    def flush(self, timeout: float = 60.0) -> BatchSummary:
        """Wait up to ``timeout`` seconds for every outstanding confirm; report and reset.

        Raises:
            BrokerUnavailable: the broker went away and did not come back within the bounded
                retry; ``unconfirmed`` lists the messages to publish again later.
        """
        deadline = time.monotonic() + timeout
        engine = self._engine
        with self._lock:
            while engine.unsettled() and time.monotonic() < deadline:
                try:
                    engine.open()
                    engine.wait_for(lambda: not engine.unsettled(), deadline)
                except CONNECTION_ERRORS as exc:
                    engine.lost(exc)
            summary = BatchSummary(self._confirmed, tuple(self._failed),
                                   tuple(engine.unconfirmed_ids()))
            self._confirmed, self._failed = 0, []
            return summary

    def _done(self, msg: _Outgoing) -> None:
        if msg.outcome:
            self._failed.append(FailedMessage(msg.message_id, msg.outcome))
        else:
            self._confirmed += 1
