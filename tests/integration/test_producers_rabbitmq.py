"""The producers against a real RabbitMQ on 127.0.0.1:5672.

Requests go to a temporary exchange bound to a temporary queue (``exchange=``), so nothing lands
in the real work queues that other tests and workers consume; the one test that uses the real
``eeszt.requests`` publishes with a routing key that no work queue binds. Everything declared
here has a unique name and is deleted afterwards.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest

from producers import (
    BatchPublisher,
    BrokerUnavailable,
    Publisher,
    PublishFailed,
    ReplyListener,
    declare_topology,
)
from schemas import Accepted, Rejected, RequestEnvelope
from schemas.wire import (
    BATCH_QUEUE,
    DEAD_LETTER_QUEUE,
    H_IDEMPOTENCY_KEY,
    H_REPUBLISHED,
    H_TYPE,
    INTERACTIVE_QUEUE,
    REPLIES_EXCHANGE,
    REQUESTS_EXCHANGE,
    UNROUTED_EXCHANGE,
    work_queue_arguments,
)
from tests.samples import TAJ, event_start, prescription

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/%2F"

def _unique(prefix: str) -> str:
    return f"test.producers.{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A plain pika channel for setting up and inspecting the broker."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


@dataclass
class Route:
    exchange: str
    queue: str


@pytest.fixture
def route(admin) -> Iterator[Route]:
    """A temporary topic exchange whose every message lands in one temporary queue."""
    r = Route(_unique("x"), _unique("q"))
    admin.exchange_declare(r.exchange, "topic", durable=True)
    admin.queue_declare(r.queue, durable=True)
    admin.queue_bind(r.queue, r.exchange, routing_key="#")
    yield r
    admin.queue_delete(r.queue)
    admin.exchange_delete(r.exchange)


@pytest.fixture
def full_route(admin, route) -> Iterator[tuple[Route, str]]:
    """``route``, but its messages land in a queue that refuses publishes (nacks them) once it
    holds one message; yields the route and that queue."""
    full = _unique("full")
    admin.queue_declare(full, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    admin.queue_unbind(route.queue, route.exchange, routing_key="#")
    admin.queue_bind(full, route.exchange, routing_key="#")
    yield route, full
    admin.queue_delete(full)


def _drain(channel, queue: str, expected: int) -> list[tuple[object, object, bytes]]:
    got = []
    for method, props, body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        got.append((method, props, body))
        if len(got) == expected:
            break
    channel.cancel()
    return got


def _break_socket(publisher: Publisher | BatchPublisher) -> None:
    # A fault injection: cut the TCP connection under pika as a network failure would.
    publisher._engine._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)


# --- Publisher ----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_submit_returns_after_confirm_with_routing_properties_and_headers(admin, route) -> None:
    # Given a publisher on the temporary exchange
    request = prescription()
    with Publisher(url=URL, exchange=route.exchange, declare_topology=False) as publisher:
        # When a request is submitted
        publisher.submit(request)

    # Then it sits in the queue with the wire format's routing key, properties and headers
    ((method, props, body),) = _drain(admin, route.queue, 1)
    assert (method.exchange, method.routing_key) == (route.exchange, "erecept.submit")
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.message_id == str(request.message_id)
    assert props.headers == {H_TYPE: "erecept.submit",
                             H_IDEMPOTENCY_KEY: request.idempotency_key}
    assert RequestEnvelope.from_json(body) == request


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_default_publisher_declares_the_topology_and_publishes_to_eeszt_requests(admin) -> None:
    # Given a queue bound to eeszt.requests with a key that no work queue binds (an unbound
    # key would go to the alternate exchange, and so into the real interactive queue)
    key, queue = _unique("key"), _unique("q")
    declare_topology(admin)
    admin.queue_declare(queue, durable=False, auto_delete=False)
    admin.queue_bind(queue, REQUESTS_EXCHANGE, routing_key=key)
    with Publisher(url=URL) as publisher:
        try:
            # When raw bytes are submitted with that key
            mid = publisher.submit_raw(key, b'{"probe": true}', {"h": "v"})

            # Then they arrive through eeszt.requests
            ((method, props, body),) = _drain(admin, queue, 1)
            assert (method.exchange, props.message_id, body) == (REQUESTS_EXCHANGE, mid,
                                                                 b'{"probe": true}')
        finally:
            admin.queue_delete(queue)

    # And the exchanges and work queues exist with the shared arguments (passive re-declare)
    for name, kind in ((REQUESTS_EXCHANGE, "topic"), (UNROUTED_EXCHANGE, "fanout"),
                       (REPLIES_EXCHANGE, "topic")):
        admin.exchange_declare(name, kind, passive=True)
    for q in (INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE):
        admin.queue_declare(q, passive=True)


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_declare_topology_is_idempotent(admin) -> None:
    # When the topology is declared twice, then the broker accepts both (same arguments)
    declare_topology(admin)
    declare_topology(admin)
    # And the work queues carry the arguments every declarer must use
    for q in (INTERACTIVE_QUEUE, BATCH_QUEUE):
        admin.queue_declare(q, durable=True, arguments=work_queue_arguments(q))


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_unroutable_submit_raises_publish_failed(admin) -> None:
    # Given an exchange that routes nothing and has no alternate exchange
    exchange = _unique("x")
    admin.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
    try:
        with Publisher(url=URL, exchange=exchange, declare_topology=False) as publisher:
            request = prescription()
            # When a request is submitted, then the broker's return is reported
            with pytest.raises(PublishFailed) as caught:
                publisher.submit(request)
            assert caught.value.message_id == str(request.message_id)
            assert "unroutable" in caught.value.reason and "NO_ROUTE" in caught.value.reason
    finally:
        admin.exchange_delete(exchange)


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_nacked_submit_raises_publish_failed(full_route) -> None:
    # Given a queue that refuses publishes once it holds one message
    route, _full = full_route
    with Publisher(url=URL, exchange=route.exchange, declare_topology=False,
                   retry_attempts=2, retry_backoff=0.05) as publisher:
        publisher.submit(prescription())
        # When a second one is submitted, then it is sent again after each nack, and the
        # last nack is reported
        with pytest.raises(PublishFailed, match="nacked by the broker 3 times"):
            publisher.submit(prescription())


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_nack_that_passes_is_ridden_through(admin, full_route) -> None:
    # Given a queue that refuses publishes for a while (as a quorum queue does while it
    # elects a leader): it holds one message, with reject-publish
    route, full = full_route
    with BatchPublisher(url=URL, exchange=route.exchange, declare_topology=False,
                        retry_attempts=8, retry_backoff=0.1) as publisher:
        publisher.publish(prescription())
        second = prescription()
        publisher.publish(second)
        # When room is made after the second one was nacked at least once
        deadline = time.monotonic() + 10
        while publisher.in_flight and time.monotonic() < deadline:
            publisher._engine.pump(0.05)
            if publisher._engine.nacked:
                admin.queue_purge(full)
        summary = publisher.flush(timeout=20)
        # Then it is confirmed: nothing failed, and it is in the queue, marked as maybe a twin
        assert summary.ok and summary.confirmed == 2, summary
        method, props, body = admin.basic_get(full, auto_ack=True)
        assert json.loads(body)["message_id"] == str(second.message_id)
        assert props.headers.get(H_REPUBLISHED) == 1


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_missing_exchange_fails_the_message_and_the_next_submit_cleanly() -> None:
    # Given a publisher aimed at an exchange that does not exist
    with Publisher(url=URL, exchange=_unique("absent"), declare_topology=False) as publisher:
        # When two requests are submitted, then each fails with the broker's reason
        for _ in range(2):
            with pytest.raises(PublishFailed, match="NOT_FOUND"):
                publisher.submit(prescription())


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_submit_reconnects_after_the_connection_is_cut(admin, route) -> None:
    # Given a publisher whose connection is cut after a first submit
    with Publisher(url=URL, exchange=route.exchange, declare_topology=False,
                   retry_backoff=0.01) as publisher:
        publisher.submit(prescription())
        _break_socket(publisher)

        # When the next request is submitted
        second = prescription()
        publisher.submit(second)

    # Then it reconnected and both are in the queue
    ids = {p.message_id for _, p, _ in _drain(admin, route.queue, 2)}
    assert str(second.message_id) in ids and len(ids) == 2


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_connection_lost_while_idle_is_found_before_the_publish(admin, route,
                                                                  monkeypatch) -> None:
    # Given a publisher idle for longer than its probe interval, whose connection has died
    monkeypatch.setattr("producers.publisher.IDLE_PROBE_S", 0.05)
    with Publisher(url=URL, exchange=route.exchange, declare_topology=False,
                   retry_backoff=0.01) as publisher:
        publisher.submit(prescription())
        time.sleep(0.1)
        _break_socket(publisher)

        # When the next request is submitted
        second = prescription()
        publisher.submit(second)

    # Then the dead connection was found before the publish: the request went out once, on the
    # new connection, not as a republished possible twin
    got = {p.message_id: p for _, p, _ in _drain(admin, route.queue, 2)}
    assert set(got) >= {str(second.message_id)}
    assert H_REPUBLISHED not in (got[str(second.message_id)].headers or {})


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_submit_is_safe_from_many_threads(admin, route) -> None:
    # Given one publisher shared by 4 threads
    requests = [prescription() for _ in range(80)]
    with Publisher(url=URL, exchange=route.exchange, declare_topology=False) as publisher:
        threads = [threading.Thread(target=lambda part=requests[i::4]: [publisher.submit(r)
                                                                         for r in part])
                   for i in range(4)]
        # When they all submit at once
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    # Then every request arrived once
    got = [p.message_id for _, p, _ in _drain(admin, route.queue, 80)]
    assert sorted(got) == sorted(str(r.message_id) for r in requests)


@pytest.mark.integration
def test_broker_unavailable_after_bounded_retry() -> None:
    # Given a publisher aimed at a closed port, with 3 attempts
    # When a request is submitted, then it gives up, saying how often it tried
    with (Publisher(url=CLOSED_PORT_URL, retry_attempts=3, retry_backoff=0.01) as publisher,
          pytest.raises(BrokerUnavailable) as caught):
        publisher.submit(prescription())
    assert caught.value.attempts == 3
    assert "guest:***@" in caught.value.reason


# --- BatchPublisher -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_batch_of_5000_is_confirmed_and_present(admin, route) -> None:
    # Given 5,000 requests
    requests = [event_start(event_id=f"CASE-{i}") for i in range(5000)]

    # When they are published with 256 confirms in flight and flushed
    with BatchPublisher(url=URL, exchange=route.exchange, declare_topology=False) as publisher:
        for r in requests:
            publisher.publish(r)
        summary = publisher.flush(timeout=120)

    # Then all are confirmed and all are in the queue
    assert summary.ok and summary.confirmed == 5000
    got = {p.message_id for _, p, _ in _drain(admin, route.queue, 5000)}
    assert got == {str(r.message_id) for r in requests}


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_batch_reports_unroutable_messages_per_message(admin, route) -> None:
    # Given a route for event.* only, and no alternate exchange
    admin.queue_unbind(route.queue, route.exchange, routing_key="#")
    admin.queue_bind(route.queue, route.exchange, routing_key="event.*")
    routed = [event_start() for _ in range(3)]
    unrouted = [prescription() for _ in range(2)]

    # When both kinds are published in one batch
    with BatchPublisher(url=URL, exchange=route.exchange, declare_topology=False) as publisher:
        for r in (routed[0], unrouted[0], routed[1], unrouted[1], routed[2]):
            publisher.publish(r)
        summary = publisher.flush(timeout=30)

    # Then the unroutable ones are failed, by message id, and the others confirmed
    assert summary.confirmed == 3
    assert {f.message_id for f in summary.failed} == {str(r.message_id) for r in unrouted}
    assert all("unroutable" in f.reason for f in summary.failed)
    _drain(admin, route.queue, 3)


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_batch_republishes_unconfirmed_messages_after_a_cut(admin, route) -> None:
    # Given a batch whose connection is cut while messages are in flight
    requests = [event_start() for _ in range(2000)]
    with BatchPublisher(url=URL, exchange=route.exchange, declare_topology=False,
                        retry_backoff=0.01) as publisher:
        for r in requests[:1000]:
            publisher.publish(r)
        _break_socket(publisher)
        # When publishing goes on and the batch is flushed
        for r in requests[1000:]:
            publisher.publish(r)
        summary = publisher.flush(timeout=120)

    # Then every message is confirmed and present (some possibly twice: at-least-once)
    assert summary.ok and summary.confirmed == len(requests)
    got = [p.message_id for _, p, _ in _drain(admin, route.queue, 10_000)]
    assert set(got) == {str(r.message_id) for r in requests}


@pytest.mark.integration
def test_batch_broker_unavailable_after_bounded_retry() -> None:
    with (BatchPublisher(url=CLOSED_PORT_URL, retry_attempts=2, retry_backoff=0.01) as publisher,
          pytest.raises(BrokerUnavailable) as caught):
        publisher.publish(prescription())
    assert caught.value.attempts == 2 and caught.value.unconfirmed == ()


# --- ReplyListener ------------------------------------------------------------------------------


def _reply(key: str) -> Accepted:
    return Accepted(message_id=uuid.uuid4(), idempotency_key=key, service="eRecept",
                    message_type="erecept.submit", eeszt_id=f"RX-{key}", version=1)


@pytest.fixture
def reply_route(admin) -> Iterator[tuple[str, str]]:
    """A unique reply routing key and its queue name; the queue is deleted afterwards."""
    key = _unique("his")
    admin.exchange_declare(REPLIES_EXCHANGE, "topic", durable=True)
    yield key, f"{key}.replies"
    admin.queue_delete(f"{key}.replies")


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_listener_gets_its_replies_and_acks_garbage(admin, reply_route,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    key, queue = reply_route
    with ReplyListener(URL, routing_key=key) as listener:
        listener.open()  # declares and binds its durable queue
        # Given garbage (with a TAJ), two replies for this HIS and one for another
        publish = admin.basic_publish
        publish(REPLIES_EXCHANGE, key, f'{{"kind": "accepted", "taj": "{TAJ}"}}'.encode())
        publish(REPLIES_EXCHANGE, key, _reply("rx-1").model_dump_json().encode())
        publish(REPLIES_EXCHANGE, _unique("other"), _reply("rx-other").model_dump_json().encode())
        publish(REPLIES_EXCHANGE, key, Rejected(
            message_id=uuid.uuid4(), idempotency_key="rv-2", service="eRecept",
            message_type="erecept.revoke", code="BIZ-001", field="prescriptionId",
            reason="no prescription has this id").model_dump_json().encode())

        # When the listener is read until it is idle
        with caplog.at_level(logging.WARNING):
            got = [listener.get(timeout=5), listener.get(timeout=5), listener.get(timeout=0.5)]

    # Then it got its two replies in order, skipped the garbage without logging its body,
    # and acked everything (the durable queue is empty)
    assert [r and r.idempotency_key for r in got] == ["rx-1", "rv-2", None]
    assert "unparseable" in caplog.text and TAJ not in caplog.text
    assert admin.queue_declare(queue, passive=True).method.message_count == 0


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_reply_not_acked_is_delivered_again(admin, reply_route) -> None:
    key, _ = reply_route
    # Given a reply taken by a listener that then fails (leaves without acking)
    with ReplyListener(URL, routing_key=key) as first:
        first.open()
        admin.basic_publish(REPLIES_EXCHANGE, key, _reply("rx-again").model_dump_json().encode())
        assert first.get(timeout=5) is not None
        first.close(ack_last=False)

    # When a new listener reads the queue, then the reply comes again
    with ReplyListener(URL, routing_key=key) as second:
        again = second.get(timeout=5)
    assert again is not None and again.idempotency_key == "rx-again"


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_iteration_and_listen_deliver_in_order_and_stop(admin, reply_route) -> None:
    key, queue = reply_route
    with ReplyListener(URL, routing_key=key) as listener:
        listener.open()
        for n in range(4):
            admin.basic_publish(REPLIES_EXCHANGE, key, _reply(f"rx-{n}").model_dump_json().encode())

        # When two are taken by iteration and the rest by listen() until stopped
        taken = []
        for reply in listener:
            taken.append(reply.idempotency_key)
            if len(taken) == 2:
                break
        stop = threading.Event()

        def on_reply(reply) -> None:
            taken.append(reply.idempotency_key)
            if len(taken) == 4:
                stop.set()

        listener.listen(on_reply, stop=stop)

    # Then all four came in order and were acked
    assert taken == ["rx-0", "rx-1", "rx-2", "rx-3"]
    assert admin.queue_declare(queue, passive=True).method.message_count == 0


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_listener_reconnects_after_the_connection_is_cut(admin, reply_route) -> None:
    key, _ = reply_route
    with ReplyListener(URL, routing_key=key, retry_backoff=0.01) as listener:
        listener.open()
        admin.basic_publish(REPLIES_EXCHANGE, key, _reply("rx-before").model_dump_json().encode())
        assert listener.get(timeout=5).idempotency_key == "rx-before"
        # Given the connection is cut while that reply is still unacked
        listener._conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)
        admin.basic_publish(REPLIES_EXCHANGE, key, _reply("rx-after").model_dump_json().encode())

        # When reading on, then the listener reconnects and gets the new reply (and the
        # unacked one again: at-least-once)
        keys = []
        while (reply := listener.get(timeout=2)) is not None:
            keys.append(reply.idempotency_key)
    assert "rx-after" in keys and set(keys) <= {"rx-before", "rx-after"}
