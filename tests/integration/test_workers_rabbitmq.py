"""The worker pool on a real RabbitMQ against the real simulator: tokens and queue isolation."""

from __future__ import annotations

import json
import time

import pika
import pytest

from tests import samples
from tests.bridges import demo_workstations
from tests.conftest import start_workers

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def publish(broker_url: str, requests) -> None:
    """Publish with confirms (the way producers do); returns once all are confirmed."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.confirm_delivery()
    for r in requests:
        ch.basic_publish("eeszt.requests", r.message_type, r.to_json(),
                         pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                              message_id=str(r.message_id)), mandatory=True)
    conn.close()


def declare(broker_url: str) -> None:
    from workers.process import declare_topology

    declare_topology(broker_url)


def collect_final(broker_url: str, routing_key: str, count: int, timeout_s: float = 120):
    """Bind a reply queue first, then call the returned function to wait for ``count`` finals."""
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    queue = f"{routing_key}.replies"
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "eeszt.replies", routing_key=routing_key)

    def wait(stop_when=None) -> list[dict]:
        finals: list[dict] = []
        deadline = time.monotonic() + timeout_s
        for method, props, body in ch.consume(queue, inactivity_timeout=1):
            if method is not None:
                ch.basic_ack(method.delivery_tag)
                reply = json.loads(body)
                if reply["kind"] != "status":
                    finals.append(reply)
                    if stop_when and stop_when(reply):
                        break
            if len(finals) >= count or time.monotonic() > deadline:
                break
        ch.cancel()
        ch.queue_delete(queue)
        conn.close()
        return finals

    return wait


def test_thousand_requests_from_ten_doctors_need_at_most_ten_tokens_per_process(
        broker_url, simulator, pki, demo_users, tmp_path):
    # Given ten doctors at their workstations: five log in with the eSZIG card, five with
    # MobilToken (the workstations' bridge setting; the workers hold no doctor's secret),
    mobiltoken = [u["workstation"] for u in demo_users[5:]]
    simulator.reset(duplicates="naive")
    declare(broker_url)
    wait = collect_final(broker_url, "his.tokens", 1000)
    processes = 2
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path,
                         processes=processes, threads=8, queues="interactive",
                         workstations=demo_workstations(demo_users, mobiltoken=mobiltoken))
    try:
        # When 1,000 prescriptions arrive, 100 per doctor, each from the doctor's workstation,
        requests = [samples.prescription(user_id=u["user_id"]).model_copy(update={
            "reply_to": "his.tokens", "acting": samples.doctor(u["user_id"], u["workstation"])})
            for u in (demo_users[i % 10] for i in range(1000))]
        publish(broker_url, requests)
        finals = wait()
    finally:
        pool.stop()
    # Then every one is accepted, with at most one login per doctor per worker process.
    assert sorted({f["kind"] for f in finals}) == ["accepted"] and len(finals) == 1000
    stats = simulator.stats()
    by_subject = {s: n for s, n in stats["sts_issues_by_subject"].items() if s.startswith("O")}
    assert set(by_subject) == {u["user_id"] for u in demo_users}
    assert all(n <= processes for n in by_subject.values()), by_subject
    assert sum(by_subject.values()) <= 10 * processes
    assert stats["sts_issues"].get("mobiltoken", 0) >= 5 and stats["sts_issues"].get("eszig", 0) >= 5
    assert "password" not in stats["sts_issues"]
    print(f"STS issues for 1,000 requests from 10 doctors on {processes} processes: {by_subject}")


def test_prescription_overtakes_a_queued_overnight_batch(broker_url, simulator, tmp_path):
    # Given 10,000 care events already queued before any worker runs,
    simulator.reset(duplicates="naive")
    declare(broker_url)
    events = [samples.event_start(event_id=f"NIGHT-{i}").model_copy(update={"reply_to": None})
              for i in range(10_000)]
    publish(broker_url, events)
    # and a prescription published after them,
    rx = samples.prescription().model_copy(update={"reply_to": "his.priority"})
    wait = collect_final(broker_url, "his.priority", 1, timeout_s=120)
    publish(broker_url, [rx])
    # When the workers start on both queues,
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=1,
                         threads=8)
    try:
        finals = wait()
        # Count the events the simulator stored before the prescription (records keep order).
        rows = simulator.admin("GET", "/admin/records?limit=20000")["records"]
        position = next(i for i, r in enumerate(rows) if r["service"] == "eRecept")
        events_done = sum(1 for r in rows[:position] if r["service"] == "esemenyKatalogus")
    finally:
        pool.stop()
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        conn.channel().queue_purge("eeszt.batch")
        conn.close()
    # Then the prescription is accepted before a tenth of the batch is done (counted, not timed).
    assert finals and finals[0]["kind"] == "accepted"
    assert finals[0]["message_id"] == str(rx.message_id)
    assert events_done < 1_000, events_done
    print(f"prescription accepted after {events_done} of 10,000 queued events")


def test_a_worker_process_opens_its_connections_to_eeszt_before_it_consumes(
        broker_url, simulator, tmp_path):
    declare(broker_url)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=1,
                         threads=4, queues="batch", extra=("--warm-connections", "3"))
    try:
        log_text = pool.log_path.read_text()  # the heartbeat is written after the warm-up
    finally:
        pool.stop()
    assert "opened 3 of 3 connections to EESZT" in log_text, log_text[-2000:]
