"""The gateway on quorum queues: a fresh vhost whose default queue type is quorum, and
``eeszt-gw worker --queue-type quorum`` against the real simulator.

What RabbitMQ 3.10 does differently for quorum queues, and what this checks still works:

- message TTL (per queue and per message) and dead-lettering exist for quorum queues since
  3.10; the gateway dead-letters at least once (``x-dead-letter-strategy``): the retry tiers
  and the parked queue hand a request back to its work queue (delays);
- quorum queues refuse ``x-max-priority``: interactive work overtakes a batch backlog through
  separate queues and dramatiq's priorities among prefetched messages (priorities);
- quorum queues cannot be exclusive or auto-delete: those stay classic, as does the login lock
  (quorum queues enforce ``x-max-length`` only lazily); the audit log stays a stream.

Counted, never timed: the waits below have deadlines only so that a broken build fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from typing import Any, Callable

import pika
import pika.exceptions
import pytest

from producers.batch import BatchPublisher
from producers.publisher import Publisher
from schemas.wire import (
    BATCH_QUEUE,
    DEAD_LETTER_QUEUE,
    H_REASON,
    INTERACTIVE_QUEUE,
    RETRY_TIERS_S,
    login_pending_queue,
    login_wait_queue,
    parked_queue,
    queue_arguments,
    retry_queue,
)
from tests import samples
from tests.conftest import RABBIT_HOST, WorkerPool, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

QT = "quorum"
BACKLOG = 2_000  # care events queued before the workers start
CARD_DOCTOR = "O10002"  # logs in with the eSZIG card at WS-01: exercises the login queues


def rabbitmqctl(*args: str) -> str:
    res = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


class QuorumGateway:
    """A quorum-default vhost; the worker pool starts on first use and stops at the end."""

    def __init__(self, vhost: str, simulator, workdir) -> None:
        self.vhost = vhost
        self.url = f"amqp://guest:guest@{RABBIT_HOST}/{vhost}"
        self.simulator = simulator
        self.workdir = workdir
        self.pool: WorkerPool | None = None

    def start(self) -> None:
        if self.pool is None:
            self.pool = start_workers(
                broker_url=self.url, sim=self.simulator, workdir=self.workdir, processes=1,
                threads=8, extra=("--queue-type", QT,
                                  "--call-attempts", "1", "--breaker-failures", "3",
                                  "--probe-interval-s", "1", "--metrics-port", "0"))

    def channel(self):
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        return conn, conn.channel()

    def depth(self, queue: str) -> int:
        conn, ch = self.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.message_count
        finally:
            conn.close()

    def queues(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(rabbitmqctl("list_queues", "-p", self.vhost, "name", "type", "arguments",
                                      "durable", "exclusive", "auto_delete", "messages",
                                      "--formatter", "json"))
        for row in rows:
            row["arguments"] = {k: v for k, _t, v in row["arguments"]}
        return {row["name"]: row for row in rows}


@pytest.fixture(scope="module")
def gateway(simulator, demo_users, tmp_path_factory):
    vhost = f"eeszt-test-quorum-{os.getpid()}"
    rabbitmqctl("add_vhost", vhost, "--default-queue-type", QT)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    work = tmp_path_factory.mktemp("quorum")
    # (the doctors log in at WS-01's card bridge, which start_workers runs: tests/bridges.py)
    gw = QuorumGateway(vhost, simulator, work)
    try:
        listed = rabbitmqctl("list_vhosts", "name", "default_queue_type").split()
        assert listed[listed.index(vhost) + 1] == QT
        yield gw
    finally:
        if gw.pool is not None:
            gw.pool.stop()
        simulator.reset()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                       timeout=60)


class His:
    """A HIS's reply queue, declared the way a plain client does (no x-queue-type)."""

    def __init__(self, gw: QuorumGateway, key: str) -> None:
        self.key = key
        self.queue = f"{key}.replies"
        self.conn, self.ch = gw.channel()
        self.ch.queue_declare(self.queue, durable=True)
        self.ch.queue_bind(self.queue, "eeszt.replies", routing_key=key)
        self.replies: list[dict] = []

    def wait_for(self, wanted: Callable[[dict], bool], timeout_s: float = 45) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            method, _props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                self.conn.sleep(0.05)
                continue
            reply = json.loads(body)
            self.replies.append(reply)
            if wanted(reply):
                return reply
        raise AssertionError(f"no such reply on {self.key} within {timeout_s}s: {self.replies}")

    def close(self) -> None:
        self.conn.close()


def test_interactive_work_overtakes_a_batch_backlog(gateway, simulator):
    # Given 2,000 care events queued (through the producers, declaring the work queues as
    # quorum queues themselves) before any worker runs, and then a prescription,
    simulator.reset(duplicates="naive")
    rx = samples.prescription().model_copy(update={"reply_to": "his.quorum.priority"})
    with BatchPublisher(url=gateway.url, queue_type=QT) as pub:
        for i in range(BACKLOG):
            pub.publish(samples.event_start(event_id=f"QQ-NIGHT-{i}").model_copy(
                update={"reply_to": None}))
        pub.publish(rx)
        assert pub.flush(timeout=120).ok
    assert gateway.depth(BATCH_QUEUE) == BACKLOG
    his = His(gateway, "his.quorum.priority")  # replies come only once a worker runs
    # When the workers start on both queues,
    gateway.start()
    try:
        final = his.wait_for(lambda r: r["kind"] != "status")
        # the batch is being worked on meanwhile: wait until over a tenth of it is stored
        # (counting care events only: the prescription is among the records too)
        deadline = time.monotonic() + 60
        while True:
            rows = simulator.admin("GET", f"/admin/records?limit={BACKLOG + 10}")["records"]
            events = sum(1 for r in rows if r["service"] == "esemenyKatalogus")
            if events > BACKLOG // 10 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        his.close()
        conn, ch = gateway.channel()
        ch.queue_purge(BATCH_QUEUE)  # the rest of the backlog is of no further interest
        conn.close()
    # Then the prescription is accepted after a small part of the backlog (counted, not timed).
    assert final["kind"] == "accepted" and final["message_id"] == str(rx.message_id)
    position = next(i for i, r in enumerate(rows) if r["idempotency_key"] == rx.idempotency_key)
    events_done = sum(1 for r in rows[:position] if r["service"] == "esemenyKatalogus")
    events_after = sum(1 for r in rows[position:] if r["service"] == "esemenyKatalogus")
    print(f"quorum: prescription accepted after {events_done} of {BACKLOG} queued events")
    assert events_done + events_after > BACKLOG // 10  # the batch did flow
    assert events_done < BACKLOG // 4, events_done


def test_transient_failures_go_through_the_retry_tiers_and_the_parked_queue(gateway, simulator):
    gateway.start()
    his = His(gateway, "his.quorum.retry")
    errors_before = simulator.stats()["injected"].get("error", 0)
    # Given an EESZT that answers every call with HTTP 500,
    simulator.set_faults(error_rate=1.0)
    rx = samples.prescription().model_copy(update={"reply_to": his.key})
    try:
        with Publisher(url=gateway.url, queue_type=QT) as pub:
            pub.submit(rx)
        # When the request fails (one call per attempt), it waits in a retry tier and comes
        # back to its work queue (per-message TTL, dead-lettered at least once) until the
        # third failure in a row opens the circuit and parks it;
        retrying = his.wait_for(lambda r: r.get("state") == "retrying")
        his.wait_for(lambda r: r.get("state") == "parked")
        failed_calls = simulator.stats()["injected"].get("error", 0) - errors_before
        parked = gateway.depth(parked_queue("eRecept"))
        # and EESZT recovers,
        simulator.set_faults(error_rate=0.0)
        final = his.wait_for(lambda r: r["kind"] != "status")
    finally:
        simulator.set_faults(error_rate=0.0)
        his.close()
    # Then it went around the retry tiers twice, was parked, and was stored exactly once.
    assert retrying["attempt"] == 1
    assert failed_calls >= 3, failed_calls  # attempts 1, 2 (both back from a tier) and 3
    assert parked == 1
    assert final["kind"] == "accepted" and final["message_id"] == str(rx.message_id)
    stored = simulator.admin("GET", f"/admin/records?key={rx.idempotency_key}")["records"]
    assert len(stored) == 1
    assert [r["kind"] for r in his.replies] == ["status", "status", "accepted"]
    assert gateway.depth(parked_queue("eRecept")) == 0
    for tier in RETRY_TIERS_S:
        assert gateway.depth(retry_queue(INTERACTIVE_QUEUE, tier)) == 0


def test_an_invalid_message_still_reaches_the_dead_letter_queue(gateway):
    gateway.start()
    body = b"\x00 not json, and no reply address " + uuid.uuid4().hex.encode()
    with Publisher(url=gateway.url, queue_type=QT) as pub:
        pub.submit_raw("erecept.submit", body)
    conn, ch = gateway.channel()
    try:
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            method, props, got = ch.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
            if method is None:
                conn.sleep(0.1)
            elif got == body:
                found = props
                ch.basic_ack(method.delivery_tag)
            else:
                ch.basic_nack(method.delivery_tag, requeue=True)
    finally:
        conn.close()
    assert found is not None, "the invalid message did not reach eeszt.dlq"
    assert "invalid message" in found.headers[H_REASON]


def test_the_gateways_queues_are_quorum_except_those_that_cannot_be(gateway):
    gateway.start()
    # A prescription of a doctor who logs in with the card: the login queues appear.
    his = His(gateway, "his.quorum.login")
    rx = samples.prescription(user_id=CARD_DOCTOR).model_copy(update={"reply_to": his.key})
    try:
        with Publisher(url=gateway.url, queue_type=QT) as pub:
            pub.submit(rx)
        his.wait_for(lambda r: r.get("state") == "waiting_for_login")
    finally:
        his.close()
    queues = gateway.queues()
    quorum = {INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE, parked_queue("eRecept"),
              "eeszt.login.answers", "eeszt.login.delay", login_wait_queue(CARD_DOCTOR),
              "eeszt.card.WS-01"}
    quorum |= {f"{q}.{suffix}" for q in (INTERACTIVE_QUEUE, BATCH_QUEUE, "eeszt.login.answers")
               for suffix in ("DQ", "XQ")}  # dramatiq's own
    quorum |= {retry_queue(q, t) for q in (INTERACTIVE_QUEUE, BATCH_QUEUE) for t in RETRY_TIERS_S}
    missing = quorum - set(queues)
    assert not missing, missing
    for name in quorum:
        q = queues[name]
        assert q["type"] == "quorum" and q["arguments"]["x-queue-type"] == "quorum", q
        if "x-dead-letter-exchange" in q["arguments"]:  # hands messages on: never drops them
            assert q["arguments"]["x-dead-letter-strategy"] == "at-least-once", q
            assert q["arguments"]["x-overflow"] == "reject-publish", q
    # the login lock is classic by choice (an exact x-max-length 1), the audit log a stream
    lock = queues[login_pending_queue(CARD_DOCTOR)]
    assert lock["type"] == "classic" and lock["arguments"]["x-max-length"] == 1
    assert queues["eeszt.audit"]["type"] == "stream"
    # exclusive and auto-delete queues (token sharing, control replies) are classic whatever
    # the vhost's default; a durable queue a HIS declares without x-queue-type is quorum
    temporary = [q for q in queues.values() if q["exclusive"] or q["auto_delete"]]
    assert temporary and all(q["type"] == "classic" for q in temporary), temporary
    assert queues["his.quorum.login.replies"]["type"] == "quorum"
    assert not any("x-max-priority" in q["arguments"] for q in queues.values())
    # and nothing else of the gateway's is classic
    stray = {n for n, q in queues.items() if n.startswith("eeszt.") and q["type"] == "classic"
             and not q["exclusive"] and n != login_pending_queue(CARD_DOCTOR)
             and not n.startswith(login_pending_queue(""))}  # every doctor's login lock
    assert not stray, stray


def test_a_declarer_with_the_other_queue_type_is_refused(gateway):
    from workers.process import declare_topology

    # RabbitMQ refuses a redeclaration with other arguments: a worker or producer started with
    # --queue-type classic next to quorum queues fails at start-up instead of half-working.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        declare_topology(gateway.url, queue_type="classic")
    assert refused.value.reply_code == 406 and "inequivalent arg" in refused.value.reply_text
    conn, ch = gateway.channel()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=queue_arguments("classic"))
    finally:
        if conn.is_open:
            conn.close()
    assert refused.value.reply_code == 406
    assert "inequivalent arg 'x-queue-type'" in refused.value.reply_text
