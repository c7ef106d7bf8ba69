"""The broker side of interactive logins: RabbitMQ, and in memory for the demo and unit tests."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import pika
import pika.exceptions

from schemas.card import CARD_EXCHANGE, LOGIN_ANSWERS_QUEUE, CardChallenge, workstation_queue
from schemas.wire import (
    H_LOGIN_RELEASED,
    H_WAITING_LOGIN,
    INTERACTIVE_QUEUE,
    LOGIN_DELAY_QUEUE,
    dead_letter_to,
    login_marker_queues,
    login_wait_queue,
    queue_arguments,
)

from eeszt_gw.amqp import CONNECTION_ERRORS

from ..outbox import BrokerError, RabbitOutbox

WAIT_QUEUE_IDLE_MS = 8 * 24 * 3600 * 1000  # an unused wait queue disappears after 8 days

log = logging.getLogger("eeszt_gw.login")


def node_down(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    """Whether RabbitMQ refused because the queue's node is down (a classic queue lives on one
    node: "home node ... of durable queue ... is down or inaccessible")."""
    return exc.reply_code == 404 and "down or inaccessible" in str(exc.reply_text)


class MarkerNodeDown(Exception):
    """The node that holds a login marker queue is down."""


def broker_op(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A login-state operation of RabbitLoginBackend: a lost connection is a BrokerError, so
    that the message being handled goes back to its queue (not an internal error, which would
    answer it), and the next operation connects again."""
    @functools.wraps(fn)
    def op(self: "RabbitLoginBackend", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except CONNECTION_ERRORS as exc:  # the connection, not the broker's answer
            self.outbox._drop()
            raise BrokerError(f"login state ({fn.__name__}): the broker connection was lost "
                              f"({type(exc).__name__})") from None
    return op


class RabbitLoginBackend:
    """Login state kept in RabbitMQ itself, so that every worker process sees the same."""

    def __init__(self, *, outbox: RabbitOutbox, window_s: float, challenge_ttl_s: float,
                 bridge_grace_s: float = 3.0) -> None:
        self.outbox = outbox  # its per-thread confirmed channels are reused here
        self.window_ms = int(window_s * 1000)
        self.challenge_ttl_ms = int(challenge_ttl_s * 1000)
        #: how long a workstation queue may go without a consumer before "no card bridge
        #: listens" (a bridge reconnects within 2 s after losing the broker)
        self.bridge_grace_s = bridge_grace_s
        self._declared: set[str] = set()
        self._lock = threading.Lock()

    def _ch(self):
        return self.outbox._channel()

    def _declare(self, name: str, arguments: dict[str, Any]) -> None:
        if name in self._declared:
            return
        with self._lock:
            self._ch().queue_declare(name, durable=True, arguments=arguments)
            self._declared.add(name)

    @broker_op
    def park(self, user_id: str, *, queue: str, body: bytes, headers: dict[str, Any],
             ttl_ms: int, message_id: str | None) -> None:
        name = login_wait_queue(user_id)
        # When a request's TTL (its deadline) runs out, it goes back to its work queue, where
        # the worker answers "login not completed".
        self._declare(name, queue_arguments(self.outbox.queue_type, {
            **dead_letter_to(queue), "x-expires": WAIT_QUEUE_IDLE_MS}))
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     headers=headers, message_id=message_id, expiration=str(ttl_ms),
                                     user_id=self.outbox.user_id)  # workers/tenants.py
        self.outbox._publish("", name, body, props, mandatory=True)

    @broker_op
    def begin(self, user_id: str, *, marker: bytes) -> bool:
        """Put the doctor's login marker; False when a login is already in progress.

        The marker queue is classic (below), so it lives on one node. While that node is down,
        the marker goes to the spare queue (login_marker_queues), which RabbitMQ creates on a
        live node: a doctor can still log in, at the cost of one more login (one more PIN
        prompt) when one was in progress on the lost node. With both nodes down, no login
        starts (the cluster has lost its majority anyway) and the requests wait.
        """
        for name in login_marker_queues(user_id):
            try:
                return self._mark(name, marker)
            except MarkerNodeDown:
                log.warning("the node holding %s is down; trying the next marker queue", name)
        return False

    @broker_op
    def begin_spare(self, user_id: str, *, marker: bytes, ttl_s: float) -> bool:
        """Put a marker for ``ttl_s`` in the doctor's spare queue only: a challenge asked again
        after a crash, at most once per ``ttl_s`` across all processes. False when the spare is
        taken (by such a marker, or by a login while the marker's node is down), or its node is
        down too."""
        try:
            return self._mark(login_marker_queues(user_id)[1], marker, ttl_ms=int(ttl_s * 1000))
        except MarkerNodeDown:
            return False

    def _mark(self, name: str, marker: bytes, ttl_ms: int | None = None) -> bool:
        # Always classic: this queue is a lock, and only a classic queue enforces x-max-length
        # at once. A quorum queue applies it lazily (RabbitMQ 3.10.8 confirmed a second marker
        # in a row, and up to four concurrent ones): two logins, two PIN prompts. The marker's
        # expiry (the window-expired event) is then dead-lettered at most once; were it lost,
        # the waiting requests still get their final reply at their deadline.
        arguments = queue_arguments("classic", {
            "x-max-length": 1, "x-overflow": "reject-publish", "x-message-ttl": self.window_ms,
            **dead_letter_to(LOGIN_ANSWERS_QUEUE), "x-expires": self.window_ms * 4})
        for _ in range(2):
            try:
                self._declare(name, arguments)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._declared.discard(name)  # the broker closed the channel only
                if node_down(exc):
                    raise MarkerNodeDown(name) from None
                raise
            try:
                self.outbox._publish("", name, marker, pika.BasicProperties(
                    delivery_mode=2, user_id=self.outbox.user_id,  # an event of the workers
                    expiration=str(ttl_ms) if ttl_ms else None),  # else the window
                                     mandatory=True, nack_is_answer=True)
            except pika.exceptions.NackError:
                return False  # a login of this doctor is already in progress
            except pika.exceptions.UnroutableError:
                # Declared earlier by this process, and since expired (x-expires) or its node
                # went down: declare it again, which tells the two apart.
                self._declared.discard(name)
                continue
            return True
        raise MarkerNodeDown(name)

    @broker_op
    def pending(self, user_id: str) -> bool | None:
        """Whether a login of the doctor is in progress; None when no reachable marker queue
        holds a marker and one of them is on a node that is down (nobody can tell)."""
        unknown = False
        for name in login_marker_queues(user_id):
            try:
                ok = self._ch().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._declared.discard(name)  # the broker closed the channel only
                unknown = unknown or node_down(exc)
                continue
            if ok.method.message_count > 0:
                return True
        return None if unknown else False

    @broker_op
    def end(self, user_id: str) -> None:
        for name in login_marker_queues(user_id):
            try:
                self._ch().queue_purge(name)
            except pika.exceptions.ChannelClosedByBroker:  # no such queue, or its node is down
                continue  # the broker closed the channel only: the next call opens another

    def _listened(self, queue: str) -> bool:
        """Whether a consumer (the workstation's bridge) reads ``queue``, within the grace."""
        deadline = time.monotonic() + self.bridge_grace_s
        while True:
            try:
                ok = self._ch().queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                self.outbox._drop()
                self._declared.discard(queue)
                return False
            if ok.method.consumer_count > 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)

    @broker_op
    def send_challenge(self, challenge: CardChallenge) -> bool:
        # The workstation's queue exists before its first challenge, so that a bridge started
        # later still finds it; a bridge's own broker user may only read it.
        queue = workstation_queue(challenge.workstation)
        if queue not in self._declared:
            with self._lock:
                ch = self._ch()
                try:
                    ch.queue_declare(queue, durable=True,
                                     arguments=queue_arguments(self.outbox.queue_type))
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 406:
                        raise
                    # A bridge declared it first, with its vhost's default queue type: it
                    # holds no state of ours, so use it as it is.
                    self.outbox._drop()
                    ch = self._ch()
                ch.queue_bind(queue, CARD_EXCHANGE, routing_key=challenge.workstation)
                self._declared.add(queue)
        if not self._listened(queue):
            return False  # no card bridge: a challenge would only wait there, unanswered
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=str(challenge.challenge_id),
                                     expiration=str(self.challenge_ttl_ms))
        try:
            self.outbox._publish(CARD_EXCHANGE, challenge.workstation,
                                 challenge.model_dump_json().encode(), props, mandatory=True)
        except pika.exceptions.UnroutableError:
            return False
        return True

    @broker_op
    def waiting(self, user_id: str) -> list[tuple[bytes, dict[str, Any]]]:
        """Look at the waiting requests without taking them (they are requeued)."""
        ch = self._ch()
        out, last = [], None
        try:
            while len(out) < 10_000:
                method, props, body = ch.basic_get(login_wait_queue(user_id), auto_ack=False)
                if method is None:
                    break
                out.append((body, dict(props.headers or {})))
                last = method.delivery_tag
        except pika.exceptions.ChannelClosedByBroker:
            self.outbox._drop()
            return out
        if last is not None:
            ch.basic_nack(last, multiple=True, requeue=True)
        return out

    @broker_op
    def take(self, user_id: str, select: Callable[[bytes], bool],
             handle: Callable[[bytes, dict[str, Any]], None]) -> int:
        """Take the waiting requests ``select`` picks: ``handle`` each (it answers them,
        confirmed), then acknowledge it. The others stay waiting."""
        ch = self._ch()
        taken, kept = 0, []
        try:
            while True:
                method, props, body = ch.basic_get(login_wait_queue(user_id), auto_ack=False)
                if method is None:
                    break
                if select(body):
                    handle(body, dict(props.headers or {}))
                    ch.basic_ack(method.delivery_tag)
                    taken += 1
                else:
                    kept.append(method.delivery_tag)
        except pika.exceptions.ChannelClosedByBroker:
            self.outbox._drop()
            return taken
        for tag in kept:
            ch.basic_nack(tag, requeue=True)
        return taken

    @broker_op
    def release(self, user_id: str) -> int:
        """Move every waiting request of ``user_id`` back to its work queue (confirmed)."""
        ch = self._ch()
        moved = nacked = 0
        while True:
            try:
                method, props, body = ch.basic_get(login_wait_queue(user_id), auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker:
                self.outbox._drop()
                return moved
            if method is None:
                return moved
            headers = {k: v for k, v in (props.headers or {}).items() if k != H_WAITING_LOGIN}
            headers[H_LOGIN_RELEASED] = 1
            out = pika.BasicProperties(delivery_mode=2, content_type=props.content_type,
                                       headers=headers, message_id=props.message_id,
                                       user_id=self.outbox.user_id)
            try:
                ch.basic_publish("", INTERACTIVE_QUEUE, body, out, mandatory=True)
            except pika.exceptions.NackError:
                # Not stored now (the work queue is between leaders). On a new connection (a
                # channel nacked so goes on being nacked), where the request, unacknowledged
                # on the old one, is waiting again; after a while the event itself goes back.
                nacked += 1
                if nacked > 10:
                    raise BrokerError(f"the broker did not take {user_id}'s released requests "
                                      f"({moved} moved)") from None
                self.outbox._drop()
                time.sleep(0.5)
                ch = self._ch()
                continue
            ch.basic_ack(method.delivery_tag)
            moved += 1

    @broker_op
    def schedule(self, event: dict[str, Any], delay_s: float) -> None:
        props = pika.BasicProperties(delivery_mode=2, expiration=str(max(1, int(delay_s * 1000))),
                                     user_id=self.outbox.user_id)  # an event of the workers
        self.outbox._publish("", LOGIN_DELAY_QUEUE, json.dumps(event).encode(), props,
                             mandatory=True)


class MemoryLoginBackend:
    """The same operations in memory, with timers, for the embedded demo and unit tests.

    ``requeue(queue, body, headers, message_id)`` puts a request back on a work queue;
    ``deliver_challenge(challenge) -> bool`` hands a challenge to a workstation;
    ``deliver_event(body)`` hands a login event back to the coordinator.
    """

    def __init__(self, *, requeue: Callable[[str, bytes, dict[str, Any], str | None], None],
                 deliver_challenge: Callable[[CardChallenge], bool],
                 deliver_event: Callable[[bytes], None], window_s: float) -> None:
        self.requeue = requeue
        self.deliver_challenge = deliver_challenge
        self.deliver_event = deliver_event
        self.window_s = window_s
        self._waiting: dict[str, list[tuple[str, bytes, dict[str, Any], str | None, threading.Timer]]] = defaultdict(list)
        self._pending: dict[str, threading.Timer] = {}
        self._spare: dict[str, float] = {}  # user -> monotonic time its spare marker expires
        self._lock = threading.RLock()
        self.challenges: list[CardChallenge] = []

    def _timer(self, delay_s: float, fn: Callable[[], None]) -> threading.Timer:
        t = threading.Timer(delay_s, fn)
        t.daemon = True
        t.start()
        return t

    def park(self, user_id: str, *, queue: str, body: bytes, headers: dict[str, Any],
             ttl_ms: int, message_id: str | None) -> None:
        entry: list = [queue, body, dict(headers), message_id, None]

        def expire() -> None:
            with self._lock:
                items = self._waiting.get(user_id, [])
                if entry_t in items:
                    items.remove(entry_t)
                else:
                    return
            self.requeue(queue, body, dict(headers), message_id)

        with self._lock:
            entry[4] = self._timer(ttl_ms / 1000, expire)
            entry_t = tuple(entry)
            self._waiting[user_id].append(entry_t)

    def begin(self, user_id: str, *, marker: bytes) -> bool:
        with self._lock:
            if user_id in self._pending:
                return False

            def expired() -> None:
                with self._lock:
                    self._pending.pop(user_id, None)
                self.deliver_event(marker)

            self._pending[user_id] = self._timer(self.window_s, expired)
            return True

    def begin_spare(self, user_id: str, *, marker: bytes, ttl_s: float) -> bool:
        with self._lock:
            if self._spare.get(user_id, 0.0) > time.monotonic():
                return False
            self._spare[user_id] = time.monotonic() + ttl_s
            return True

    def pending(self, user_id: str) -> bool:
        with self._lock:
            return user_id in self._pending

    def end(self, user_id: str) -> None:
        with self._lock:
            self._spare.pop(user_id, None)
            timer = self._pending.pop(user_id, None)
        if timer:
            timer.cancel()

    def send_challenge(self, challenge: CardChallenge) -> bool:
        self.challenges.append(challenge)
        return self.deliver_challenge(challenge)

    def waiting(self, user_id: str) -> list[tuple[bytes, dict[str, Any]]]:
        with self._lock:
            return [(body, headers) for _, body, headers, _, _ in self._waiting.get(user_id, [])]

    def take(self, user_id: str, select: Callable[[bytes], bool],
             handle: Callable[[bytes, dict[str, Any]], None]) -> int:
        with self._lock:
            items = self._waiting.get(user_id, [])
            chosen = [item for item in items if select(item[1])]
            self._waiting[user_id] = [item for item in items if item not in chosen]
        for _queue, body, headers, _mid, timer in chosen:
            timer.cancel()
            handle(body, dict(headers))
        return len(chosen)

    def release(self, user_id: str) -> int:
        with self._lock:
            items = self._waiting.pop(user_id, [])
        for queue, body, headers, message_id, timer in items:
            timer.cancel()
            headers = {k: v for k, v in headers.items() if k != H_WAITING_LOGIN}
            headers[H_LOGIN_RELEASED] = 1
            self.requeue(queue, body, headers, message_id)
        return len(items)

    def schedule(self, event: dict[str, Any], delay_s: float) -> None:
        self._timer(delay_s, lambda: self.deliver_event(json.dumps(event).encode()))
