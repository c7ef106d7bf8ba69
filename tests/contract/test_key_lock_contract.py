"""The request lock (``Outbox.key_lock``): the in-memory outbox and RabbitMQ agree.

One copy of a request may hold it; another copy (another thread, another worker process) is
told it is taken; leaving the block frees it. On RabbitMQ the lock is an exclusive queue, so a
holder whose connection dies frees it too.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from workers.outbox import MemoryOutbox, RabbitOutbox, key_lock_queue


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=[pytest.mark.integration,
                                                                    pytest.mark.rabbitmq])])
def outbox(request):
    if request.param == "memory":
        yield MemoryOutbox()
        return
    ob = RabbitOutbox(url=request.getfixturevalue("broker_url"), attempts=2, backoff_s=0.05)
    yield ob
    ob.close()


def in_thread(fn):
    """Run ``fn`` on another thread (for RabbitMQ: another connection) and return its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def other_copy_holds(outbox, key) -> bool:
    def attempt():
        try:
            with outbox.key_lock("H100200", "eRecept", key) as held:
                return held
        finally:
            getattr(outbox, "close", lambda: None)()  # RabbitMQ: this thread's connection
    return in_thread(attempt)


def test_one_copy_holds_the_lock_and_frees_it(outbox):
    key = f"k-{uuid.uuid4()}"
    with outbox.key_lock("H100200", "eRecept", key) as held:
        assert held
        assert other_copy_holds(outbox, key) is False
        with outbox.key_lock("H100200", "eBeutalo", key) as other_service:
            assert other_service  # the lock is per service and key
    assert other_copy_holds(outbox, key) is True


def test_different_requests_do_not_block_each_other(outbox):
    with outbox.key_lock("H100200", "eRecept", f"k-{uuid.uuid4()}") as held:
        assert held
        assert other_copy_holds(outbox, f"k-{uuid.uuid4()}") is True


@pytest.mark.integration
@pytest.mark.rabbitmq
def test_a_holder_whose_connection_dies_frees_the_lock(broker_url):
    key = f"k-{uuid.uuid4()}"
    holder, other = (RabbitOutbox(url=broker_url, attempts=2, backoff_s=0.05) for _ in range(2))
    try:
        lock = holder.key_lock("H100200", "eRecept", key)
        assert lock.__enter__()
        assert other_copy_holds(other, key) is False
        holder._drop()  # the worker process's connection is gone (crash, network)
        assert other_copy_holds(other, key) is True
    finally:
        holder.close()
        other.close()


def test_lock_names_are_bounded_and_distinct():
    long_key = "x" * 400
    name = key_lock_queue("H100200", "esemenyKatalogus", long_key)
    assert len(name.encode()) <= 255
    assert name != key_lock_queue("H100200", "esemenyKatalogus", long_key + "y")
    assert name != key_lock_queue("H100200", "eht", long_key)


def test_the_same_key_of_another_institution_is_another_lock(outbox):
    # Given institution H100200 holds the lock of its request under a key,
    key = f"k-{uuid.uuid4()}"
    with outbox.key_lock("H100200", "eRecept", key) as held:
        assert held
        # When H100300 sends a request with the same key to the same service,
        with outbox.key_lock("H100300", "eRecept", key) as other_institution:
            # Then it is not blocked: the key belongs to each institution separately
            assert other_institution
        assert other_copy_holds(outbox, key) is False


def test_lock_names_name_the_institution_and_differ_per_institution():
    name = key_lock_queue("H100200", "eRecept", "same-key")
    assert ".H100200." in name
    assert name != key_lock_queue("H100300", "eRecept", "same-key")
    # the institution and the key cannot be shifted into each other
    assert key_lock_queue("H1", "eRecept", "00200") != key_lock_queue("H100200", "eRecept", "")
