"""Nothing lost, nothing sent twice: crashes, broker restarts, outages, poison, ambiguity.

Every scenario runs the real thing (RabbitMQ, `eeszt-gw worker` processes, the HTTPS simulator in
**naive** mode, where a request sent twice is stored twice) and counts: published, accepted,
rejected, failed, dead-lettered, lost, duplicates. `EESZT_FAULT_SCALE=5` runs the long variant.
The two crash scenarios (kill -9, broker restart) run twice: on classic queues and on quorum
queues (`--queue-type quorum` on a quorum-default vhost), whose redelivery and dead-lettering
differ.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pika
import pytest
from hypothesis import strategies as st

from schemas.wire import BATCH_QUEUE, DEAD_LETTER_QUEUE, INTERACTIVE_QUEUE
from tests import samples
from tests.conftest import forget_logins, start_workers
from tests.fault.support import (
    RESULTS,
    SCALE,
    Replies,
    Result,
    children,
    kill9,
    publish,
    purge,
    queue_count,
    requests,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.fault]


def stats_duplicates(simulator) -> int:
    s = simulator.stats()
    return s["repeated_keys"] + s["extra_records_from_repeats"]


@pytest.fixture()
def clean(broker_url, simulator):
    from workers.process import declare_topology

    declare_topology(broker_url)
    simulator.reset(duplicates="naive")
    purge(broker_url, INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE)
    yield
    simulator.reset(duplicates="naive")
    forget_logins(broker_url)  # a worker killed mid-login leaves its doctor's marker behind


@dataclass(frozen=True)
class FaultBroker:
    """Where a crash scenario runs: the session's classic vhost, or a quorum-default one with
    ``--queue-type quorum`` workers and producers (what a RabbitMQ cluster runs)."""

    url: str
    queue_type: str

    @property
    def worker_args(self) -> tuple[str, ...]:
        return ("--queue-type", self.queue_type)

    def label(self, name: str) -> str:
        return name if self.queue_type == "classic" else f"{name} [quorum queues]"


@pytest.fixture(scope="module")
def quorum_url():
    vhost = f"eeszt-test-fault-quorum-{os.getpid()}"
    for cmd in (["add_vhost", vhost, "--default-queue-type", "quorum"],
                ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *cmd], check=True, capture_output=True, timeout=60)
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture(params=["classic", "quorum"])
def fault_broker(request, broker_url, simulator):
    from workers.process import declare_topology

    fb = (FaultBroker(broker_url, "classic") if request.param == "classic"
          else FaultBroker(request.getfixturevalue("quorum_url"), "quorum"))
    declare_topology(fb.url, queue_type=fb.queue_type)
    simulator.reset(duplicates="naive")
    purge(fb.url, INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE)
    yield fb
    simulator.reset(duplicates="naive")
    forget_logins(fb.url)  # a worker killed mid-login leaves its doctor's marker behind


def finish(name: str, published: int, replies: Replies, broker_url, simulator, dead: int = 0,
           finals_delivered: int | None = None) -> Result:
    result = Result(name, published, dict(replies.finals), dead, stats_duplicates(simulator),
                    replies.statuses, finals_delivered)
    RESULTS.append(result.line())
    print(result.line())
    assert not replies.conflicts, f"a message got two different final replies: {replies.conflicts[:2]}"
    return result


# Its own wait for the replies is 600 s. A worker process takes about as long to start (8 TLS
# connections, certificate checks) as the 2-4 s between kills, so on a loaded 2-core machine a
# run can take longer than the suite's default 300 s while losing nothing.
@pytest.mark.timeout(660)
def test_kill_9_workers_every_few_seconds(fault_broker, simulator, tmp_path):
    broker_url = fault_broker.url
    n = 5000 * SCALE
    key = f"his.kill.{uuid.uuid4().hex[:6]}"
    replies = Replies(broker_url, key)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=2,
                         threads=8, extra=("--republish-delay-s", "5", *fault_broker.worker_args))
    stop = threading.Event()
    kills = []

    def killer():
        rng = random.Random(5)
        while not stop.wait(rng.uniform(2.0, 4.0)):
            pids = children(pool.proc.pid)
            if pids:
                victim = rng.choice(pids)
                kill9(victim)
                kills.append(victim)

    try:
        reqs = requests(n, key, seed=11)
        threading.Thread(target=killer, daemon=True).start()
        publish(broker_url, reqs, fault_broker.queue_type)
        replies.wait(n, timeout_s=600)
    finally:
        stop.set()
        pool.stop()
        replies.stop()
    result = finish(fault_broker.label(f"kill -9 every 2-4 s ({len(kills)} kills)"), n, replies,
                    broker_url, simulator)
    assert len(kills) >= 3
    assert result.lost == 0 and result.duplicates == 0
    assert result.kinds["accepted"] == n
    assert simulator.stats()["total_records"] == n


def test_rabbitmq_restart_during_publishing_and_processing(fault_broker, simulator, tmp_path):
    broker_url = fault_broker.url
    n = 3000 * SCALE
    key = f"his.restart.{uuid.uuid4().hex[:6]}"
    replies = Replies(broker_url, key)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=2,
                         threads=8, extra=("--republish-delay-s", "5", *fault_broker.worker_args))
    reqs = requests(n, key, seed=12)
    restarted = threading.Event()

    def restart_broker():
        time.sleep(2.0)
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, timeout=120)
        restarted.set()

    try:
        t = threading.Thread(target=restart_broker, daemon=True)
        t.start()
        for i in range(0, n, 200):  # publishing goes on before, during and after the restart
            # The default reconnect window (5 connects, about 3 s) is shorter than a node's
            # stop_app/start_app on a slow host (CI once took longer); a HIS that must ride
            # through a broker restart configures a window that covers it: here about 60 s.
            publish(broker_url, reqs[i:i + 200], fault_broker.queue_type,
                    retry_attempts=10, retry_backoff=0.5)
            time.sleep(0.15)
        t.join(180)
        replies.wait(n, timeout_s=600)
    finally:
        pool.stop()
        replies.stop()
    result = finish(fault_broker.label("RabbitMQ restart mid-run"), n, replies, broker_url,
                    simulator)
    assert restarted.is_set()
    assert result.lost == 0 and result.duplicates == 0


def test_outage_longer_than_the_consumer_timeout(clean, broker_url, simulator, tmp_path):
    n = 500 * SCALE
    outage_s, probe_s, processes, threads, failures, attempts = 25.0, 2.0, 2, 4, 3, 2
    key = f"his.outage.{uuid.uuid4().hex[:6]}"
    consumer_timeout_ms = 5000
    subprocess.run(["rabbitmqctl", "-q", "eval",
                    f"application:set_env(rabbit, consumer_timeout, {consumer_timeout_ms})."],
                   check=True, timeout=60)
    replies = Replies(broker_url, key)
    pool = None
    try:
        pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path,
                             processes=processes, threads=threads,
                             extra=("--breaker-failures", str(failures), "--probe-interval-s",
                                    str(probe_s), "--call-attempts", str(attempts),
                                    "--release-rate", "100"))
        now = datetime.now(timezone.utc)
        simulator.set_faults(outages=[{"start": now.isoformat(),
                                       "end": (now + timedelta(seconds=outage_s)).isoformat()}])
        publish(broker_url, requests(n, key, seed=13))
        time.sleep(outage_s + 1)
        seen_in_outage = simulator.stats()["injected"].get("outage", 0)
        replies.wait(n, timeout_s=300)
    finally:
        if pool:
            pool.stop()
        replies.stop()
        subprocess.run(["rabbitmqctl", "-q", "eval",
                        "application:set_env(rabbit, consumer_timeout, 1800000)."], timeout=60)
    result = finish(f"outage {outage_s:.0f} s > consumer timeout {consumer_timeout_ms // 1000} s",
                    n, replies, broker_url, simulator)
    # Each worker process has a breaker per service. Before a service's breaker opens, the
    # process sends the failures that open it (failures x attempts) and whatever its threads
    # have in flight on that service (threads x attempts); then one probe per probe interval.
    services = 5
    bound = processes * services * (failures * attempts + threads * attempts
                                    + outage_s / probe_s + 1)
    RESULTS.append(f"{'':38} EESZT saw {seen_in_outage} calls in the {outage_s:.0f} s outage "
                   f"(bound {bound:.0f}: {processes} processes x {services} services, "
                   f"1 probe / {probe_s:g} s each)")
    assert seen_in_outage <= bound
    assert result.lost == 0 and result.duplicates == 0 and result.kinds["accepted"] == n
    parked_twice = [m for (m, state), c in replies.status_by_message.items() if state == "parked" and c > 1]
    assert not parked_twice, "the HIS hears 'parked' once per request"
    assert replies.statuses["parked"] > 0


GOOD_KINDS = ["prescription", "event_start", "ehr_document", "referral"]
POISON_KINDS = ["json", "type", "missing", "huge", "unknown", "encoding", "headers", "nested"]


def ex(strategy):
    """One random value from a hypothesis strategy (not the shrunk minimal one)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return strategy.example()


def garbage(i: int, key: str) -> tuple[str, bytes, dict, bool]:
    """(routing key, body, headers, has_reply_address) for poison message ``i``.

    The kinds take turns so that each appears; their content comes from hypothesis strategies.
    """
    base = json.loads(getattr(samples, GOOD_KINDS[i % len(GOOD_KINDS)])()
                      .model_copy(update={"reply_to": key}).to_json())
    kind = POISON_KINDS[i % len(POISON_KINDS)]
    rk = base["payload"]["type"]
    reply = (i // len(POISON_KINDS)) % 2 == 0
    if not reply:
        base.pop("reply_to")
    headers: dict = {}
    if kind == "json":
        return rk, ex(st.binary(min_size=0, max_size=200)).replace(b"{", b"["), headers, False
    if kind == "type":
        # (not created_at: a number there is a valid Unix time)
        field = ex(st.sampled_from(["payload", "institution", "idempotency_key", "acting"]))
        base[field] = ex(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none(),
                                   st.floats(allow_nan=True)))
    elif kind == "missing":
        base.pop(ex(st.sampled_from(["idempotency_key", "institution", "acting", "payload"])), None)
    elif kind == "huge":
        field = "patient_name" if "patient_name" in base["payload"] else "taj"
        base["payload"][field] = ex(st.text(min_size=1, max_size=5)) * 60_000  # up to 300 kB
    elif kind == "unknown":
        base["payload"]["type"] = ex(st.text(min_size=1, max_size=20).filter(
            lambda t: t not in ("erecept.submit", "erecept.revoke", "ebeutalo.submit",
                                "eprofil.update", "event.start", "event.end", "ehr.submit")))
        rk = ex(st.sampled_from(["erecept.submit", "no.such.type", "event.start"]))
    elif kind == "encoding":
        body = json.dumps(base, ensure_ascii=False).encode(ex(st.sampled_from(["utf-16", "utf-32"])))
        return rk, body, headers, False
    elif kind == "headers":
        headers = {"eeszt-type": ex(st.text(max_size=10)), "eeszt-attempt": "not-a-number",
                   "eeszt-ambiguous": ex(st.text(max_size=5))}
        base["payload"]["taj"] = "123456780"  # and an invalid field, so it must be rejected
    elif kind == "nested":
        return rk, json.dumps([base]).encode(), headers, False
    return rk, json.dumps(base).encode(), headers, reply


def test_poison_messages_mixed_into_good_traffic(broker_url, simulator, tmp_path_factory):
    from workers.process import declare_topology

    declare_topology(broker_url)
    simulator.reset(duplicates="naive")
    purge(broker_url, INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE)
    n_bad = n_good = 1000 * SCALE
    key = f"his.poison.{uuid.uuid4().hex[:6]}"
    replies = Replies(broker_url, key)
    bad = [garbage(i, key) for i in range(n_bad)]
    good = requests(n_good, key, seed=14)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path_factory.mktemp("p"),
                         processes=2, threads=8)
    pids_before = sorted(children(pool.proc.pid))
    try:
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        ch = conn.channel()
        ch.confirm_delivery()
        mixed = [("bad", b) for b in bad] + [("good", g) for g in good]
        random.Random(3).shuffle(mixed)
        for kind, item in mixed:
            if kind == "good":
                ch.basic_publish("eeszt.requests", item.message_type, item.to_json(),
                                 pika.BasicProperties(delivery_mode=2))
            else:
                rk, body, headers, _ = item
                ch.basic_publish("eeszt.requests", rk, body,
                                 pika.BasicProperties(delivery_mode=2, headers=headers or None))
        conn.close()
        with_reply = sum(1 for b in bad if b[3])
        replies.wait(n_good + with_reply, timeout_s=300)
        deadline = time.monotonic() + 60
        while (queue_count(broker_url, INTERACTIVE_QUEUE) or queue_count(broker_url, BATCH_QUEUE)
               or queue_count(broker_url, DEAD_LETTER_QUEUE) < n_bad - with_reply) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        dead = queue_count(broker_url, DEAD_LETTER_QUEUE)
        pids_after = sorted(children(pool.proc.pid))
    finally:
        pool.stop()
        replies.stop()
    published = n_good + n_bad
    result = finish(f"poison: {n_bad} garbage + {n_good} good", published, replies, broker_url,
                    simulator, dead=dead,
                    finals_delivered=len([f for f in replies.all_finals]))
    assert pids_after == pids_before, "no worker process died"
    good_ids = {str(g.message_id) for g in good}
    assert all(result.finals[m]["kind"] == "accepted" for m in good_ids)
    # A garbage message may lack a readable message id (its rejection then carries the nil
    # UUID), so garbage is counted by delivered rejections, not by distinct ids.
    rejected = [f for f in replies.all_finals if f["message_id"] not in good_ids]
    assert len(rejected) == with_reply and dead == n_bad - with_reply
    assert result.duplicates == 0
    assert all(f["kind"] == "rejected" and f["field"] is not None for f in rejected)
    assert queue_count(broker_url, INTERACTIVE_QUEUE) == 0 and queue_count(broker_url, BATCH_QUEUE) == 0


def test_ambiguous_timeouts_on_ten_percent_of_calls(clean, broker_url, simulator, tmp_path):
    n = 1000 * SCALE
    key = f"his.ambiguous.{uuid.uuid4().hex[:6]}"
    simulator.set_faults(ambiguous_rate=0.1)
    replies = Replies(broker_url, key)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=2,
                         threads=8)
    try:
        publish(broker_url, requests(n, key, seed=15))
        replies.wait(n, timeout_s=300)
    finally:
        pool.stop()
        replies.stop()
    injected = simulator.stats()["injected"].get("ambiguous", 0)
    result = finish(f"ambiguous outcome on 10% ({injected} calls)", n, replies, broker_url, simulator)
    assert injected >= n * 0.05
    assert result.lost == 0 and result.duplicates == 0 and result.kinds["accepted"] == n
