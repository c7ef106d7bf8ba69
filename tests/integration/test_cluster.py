"""A local three-node RabbitMQ cluster (:mod:`tests.cluster`): it forms, a quorum queue on it
has a member on every node, and losing the node that leads the queue loses no confirmed message.

The main node on 127.0.0.1:5672 is left alone: the cluster's nodes have their own names, ports,
folders and cookie, and are stopped at the end, also when a test fails. Each scenario prints one
``cluster: ...`` line with its figures (wall-clock figures are printed, never asserted).
"""

from __future__ import annotations

import time
import uuid

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.cluster import ClusterError

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.cluster]
# ``cluster``: the session's three-node cluster (tests/conftest.py)

N = 3
MESSAGES = 100  # published with confirms before the leader's node is stopped
QUORUM = {"x-queue-type": "quorum"}


def _channel(url: str) -> tuple[pika.BlockingConnection, BlockingChannel]:
    params = pika.URLParameters(url)
    params.connection_attempts, params.socket_timeout, params.blocked_connection_timeout = 1, 5, 30
    conn = pika.BlockingConnection(params)
    return conn, conn.channel()


def _short(node: str) -> str:
    return node.split("-")[1]  # eeszt-c2-1a2b3c4d@localhost -> c2


def _publish_confirmed(url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` persistently with publisher confirms; raises unless each is confirmed."""
    conn, ch = _channel(url)
    try:
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2),
                             mandatory=True)
    finally:
        conn.close()


def _drain(url: str, queue: str, expected: int, timeout: float = 60) -> list[bytes]:
    """Get (and ack) messages from ``queue`` until ``expected`` arrived, reconnecting through
    the errors a queue without a leader gives; at most ``timeout`` seconds."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        try:
            conn, ch = _channel(url)
            try:
                while len(got) < expected:
                    method, _props, body = ch.basic_get(queue)
                    if method is None:
                        break
                    ch.basic_ack(method.delivery_tag)
                    got.append(body)
            finally:
                if conn.is_open:
                    conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass  # that node is down or went down: try again through the next one
        if len(got) < expected:
            time.sleep(0.1)
    return got


def _wait_for(what: str, condition, timeout: float = 90) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails after ``timeout``."""
    t0 = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - t0
        except (ClusterError, KeyError):
            pass  # a node that is (re)starting may not answer yet
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def _quorum_queue(url: str, prefix: str) -> str:
    """Declare a fresh quorum queue through the node at ``url``; its name."""
    queue = f"{prefix}.{uuid.uuid4().hex[:8]}"
    conn, ch = _channel(url)
    try:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    finally:
        conn.close()
    return queue


def test_three_nodes_run_and_a_quorum_queue_has_a_member_on_each(cluster):
    names = sorted(node.name for node in cluster.nodes)
    # Given the cluster, every node sees the same three running nodes,
    for i in range(N):
        assert cluster.running_nodes(i) == names
    # and guest logs in to every node on its own loopback port (guest is loopback-only).
    assert len(set(cluster.urls)) == N
    for url in cluster.urls:
        conn, _ch = _channel(url)
        assert conn.is_open
        conn.close()
    assert cluster.url_list.split(",") == cluster.urls
    # When a quorum queue is declared through one node,
    queue = _quorum_queue(cluster.urls[1], "cluster.members")
    # Then it has a member on each of the three nodes, all online, one of them its leader.
    row = cluster.queues()[queue]
    assert row["type"] == "quorum"
    assert cluster.members_of(queue) == names
    assert sorted(row["online"]) == names
    leader = cluster.leader_of(queue)
    assert leader in names
    print(f"cluster: {N} nodes formed in {cluster.formed_in_s:.1f} s; quorum queue leader "
          f"{_short(leader)}, members {', '.join(_short(m) for m in cluster.members_of(queue))}")
    cluster.ctl(0, "delete_queue", queue)


def test_stopping_the_leaders_node_moves_the_leader_and_loses_no_confirmed_message(cluster):
    names = sorted(node.name for node in cluster.nodes)
    # Given a quorum queue with 100 messages published with confirms,
    queue = _quorum_queue(cluster.urls[0], "cluster.failover")
    before = [f"before-{k}".encode() for k in range(MESSAGES)]
    _publish_confirmed(cluster.urls[0], queue, before)
    old_leader = cluster.leader_of(queue)
    down = cluster.node_index(old_leader)
    survivors = [i for i in range(N) if i != down]
    # When the node that leads the queue dies (its Erlang VM is killed),
    t_kill = time.monotonic()
    cluster.stop_node(down, hard=True)
    assert cluster.running() == survivors
    # Then every message confirmed before the stop is consumed through a surviving node,
    got = _drain(cluster.urls[survivors[1]], queue, MESSAGES)
    drained_s = time.monotonic() - t_kill
    assert got == before
    # and another node leads the queue,
    new = {}

    def moved() -> bool:
        new["leader"] = cluster.leader_of(queue, i=survivors[0])
        return new["leader"] not in ("", old_leader) and new["leader"] in names

    _wait_for(f"a new leader for {queue} after {old_leader} stopped", moved)
    leader_after_s = time.monotonic() - t_kill
    assert cluster.node_index(new["leader"]) in survivors
    # and it still takes confirmed messages (two of three members are a majority).
    _publish_confirmed(cluster.urls[survivors[1]], queue, [b"during"])
    # When the stopped node starts again with its data,
    t_start = time.monotonic()
    cluster.start_node(down)
    # Then it rejoins: three running nodes, its queue member back online,
    _wait_for("three running nodes again", lambda: cluster.running_nodes(down) == names)
    _wait_for(f"{queue} online on all three nodes",
              lambda: cluster.online_of(queue) == names)
    rejoin_s = time.monotonic() - t_start
    assert cluster.members_of(queue) == names
    # and the message published while it was down is consumed through it.
    assert _drain(cluster.urls[down], queue, 1) == [b"during"]
    print(f"cluster: leader {_short(old_leader)} killed; {len(got)}/{MESSAGES} confirmed "
          f"messages consumed {drained_s:.2f} s after the kill; new leader "
          f"{_short(new['leader'])} seen by rabbitmqctl {leader_after_s:.1f} s after it; "
          f"{_short(old_leader)} restarted and rejoined (3 running, queue online 3/3) in "
          f"{rejoin_s:.1f} s")
    cluster.ctl(0, "delete_queue", queue)
