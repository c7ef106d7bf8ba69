"""The broker topology is declared once, as data (schemas.wire), and applied unchanged by the
workers (workers/topology.py) and the producers (producers/topology.py)."""

from __future__ import annotations

from typing import Any

import pytest

from producers.topology import declare_replies_exchange, declare_topology
from schemas.card import LOGIN_ANSWERS_QUEUE
from schemas.wire import (
    BINDINGS,
    DEAD_LETTER_QUEUE,
    REPLIES_EXCHANGE,
    REQUEST_PATH,
    REQUESTS_EXCHANGE,
    RETRY_TIERS_S,
    WORKER_TOPOLOGY,
    Binding,
    Exchange,
    Queue,
    declaration_calls,
    retry_queue,
    work_queue_arguments,
)
from workers.topology import declare


class CallLog:
    """A channel that records every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str):
        return lambda *a, **kw: self.calls.append((name, a, kw))


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_workers_and_producers_apply_the_same_data(queue_type):
    # Given a channel for the workers and one for a producer
    workers, producer = CallLog(), CallLog()
    # When each declares its topology
    declare(workers, queue_type)
    declare_topology(producer, queue_type)
    # Then each made exactly the calls the data says, and the producer's are the workers' first
    assert workers.calls == declaration_calls(WORKER_TOPOLOGY, queue_type)
    assert producer.calls == declaration_calls(REQUEST_PATH, queue_type)
    assert workers.calls[:len(producer.calls)] == producer.calls


def test_the_data_holds_every_work_queue_binding_retry_tier_and_the_login_queues():
    # Given the workers' topology
    queues = {d.name: d for d in WORKER_TOPOLOGY if isinstance(d, Queue)}
    bindings = {(d.queue, d.exchange, d.routing_key) for d in WORKER_TOPOLOGY
                if isinstance(d, Binding)}
    exchanges = {d.name for d in WORKER_TOPOLOGY if isinstance(d, Exchange)}
    # Then every work queue is there with its bindings and retry tiers dead-lettering back to it
    for queue, patterns in BINDINGS.items():
        assert queues[queue].arguments("quorum") == work_queue_arguments(queue, "quorum")
        assert {(queue, REQUESTS_EXCHANGE, p) for p in patterns} <= bindings
        for tier in RETRY_TIERS_S:
            assert queues[retry_queue(queue, tier)].dead_letters_to == queue
    # and the dead-letter queue, the login answers (consumed by dramatiq) and the exchanges
    assert DEAD_LETTER_QUEUE in queues and queues[LOGIN_ANSWERS_QUEUE].work
    assert {REQUESTS_EXCHANGE, REPLIES_EXCHANGE} <= exchanges
    # and nothing is declared twice
    names = [(type(d).__name__, d.name) for d in WORKER_TOPOLOGY if not isinstance(d, Binding)]
    assert len(names) == len(set(names))


def test_an_unknown_queue_type_is_refused_naming_it():
    # Given a queue type that is neither classic nor quorum
    # When the calls are asked for
    with pytest.raises(ValueError) as err:
        declaration_calls(REQUEST_PATH, "stream")
    # Then the error names the value and the choices
    assert "'stream'" in str(err.value) and "classic or quorum" in str(err.value)


def test_the_replies_exchange_alone_is_declared_as_in_the_request_path():
    # Given a channel
    ch = CallLog()
    # When only the replies exchange is declared (a consumer of replies)
    declare_replies_exchange(ch)
    # Then it is the same call as in the request path
    assert ch.calls == [("exchange_declare", (REPLIES_EXCHANGE, "topic"), {"durable": True})]
    assert ch.calls[0] in declaration_calls(REQUEST_PATH)
