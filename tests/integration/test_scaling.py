"""Ops scale the batch pool mid-run: a worker is added, then one is taken away.

Each worker here is a separate `eeszt-gw worker --processes 1` (as a Kubernetes replica or a
systemd instance would be) with its own heartbeat folder and its own /metrics port. A few
thousand care-event requests (starts and ends, all on `eeszt.batch`) are published, two workers
start, and:

- once a third of the requests are stored in EESZT, a **third** worker starts; its own
  `eeszt_requests_total{service="esemenyKatalogus",outcome="accepted"}` counter (what
  Prometheus would scrape) shows that it takes work;
- once it has, and half of the requests are stored, one of the original two is stopped:
  **SIGTERM** to its supervisor (a pod's termination, `systemctl stop`): the supervisor stops
  its process gracefully (in-flight work finishes; what it had prefetched goes back to the
  queue), or, in the second test, **SIGKILL** to the supervisor and its process at once (a node
  or a container lost).

Then nothing may be lost and nothing sent twice, counted as the fault suite counts it, with the
simulator in **naive** mode (a request sent twice is stored twice): every published request has
exactly one final reply (accepted), every idempotency key is stored exactly once, and nothing is
left in the work queue or the dead-letter queue. The simulator's latency paces the run (at most
``THREADS / LATENCY`` calls per second per worker), so that "mid-run" is mid-run on a fast
machine too; no assertion is about time.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pytest

from producers.generate import generate
from schemas.envelope import RequestEnvelope
from schemas.wire import (
    BATCH_QUEUE,
    DEAD_LETTER_QUEUE,
    INTERACTIVE_QUEUE,
    RETRY_TIERS_S,
    retry_queue,
)
from tests.conftest import WorkerPool, free_port, start_workers
from tests.fault.support import Replies, children, kill9, publish, purge, queue_count
from tests.integration.test_metrics_endpoint import sample, scrape

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

SERVICE = "esemenyKatalogus"  # care events: event.start and event.end
THREADS = 2
LATENCY_MS = 40
#: a redelivered request waits this long, then asks EESZT first (60 s by default)
REPUBLISH_DELAY_S = 2


@dataclass
class Replica:
    """One `eeszt-gw worker --processes 1`: a supervisor and its one worker process."""

    name: str
    pool: WorkerPool
    metrics_port: int
    accepted_seen: float = 0.0  # the last value scraped from its /metrics

    def accepted(self) -> float:
        """Its accepted care events so far (the last value seen once it is gone)."""
        try:
            value = sample(scrape(self.metrics_port), "eeszt_requests_total", service=SERVICE,
                           outcome="accepted")
        except (OSError, urllib.error.URLError):
            return self.accepted_seen
        self.accepted_seen = max(self.accepted_seen, value or 0.0)
        return self.accepted_seen

    def heartbeats(self) -> list:
        return list(self.pool.heartbeat_dir.glob("worker-*.json"))

    def log(self) -> str:
        return self.pool.log_path.read_text(errors="replace")[-4000:]


def start_replica(name: str, broker_url: str, simulator, tmp_path) -> Replica:
    port = free_port()
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=1,
                         threads=THREADS, queues="batch",
                         extra=("--metrics-port", str(port),
                                "--republish-delay-s", str(REPUBLISH_DELAY_S)))
    return Replica(name, pool, port)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.3)


def stored(simulator) -> int:
    return simulator.stats()["total_records"]


@pytest.fixture()
def clean(broker_url, simulator):
    from workers.process import declare_topology

    declare_topology(broker_url)
    # the session's vhost is shared: nothing of an earlier test may flow into this run
    purge(broker_url, INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE,
          *(retry_queue(BATCH_QUEUE, tier) for tier in RETRY_TIERS_S))
    simulator.reset(duplicates="naive", latency_ms=LATENCY_MS)
    yield
    simulator.reset()


def scale_out_then_in(broker_url, simulator, tmp_path, *, events: int, seed: int,
                      stop: Callable[[Replica], None]) -> dict:
    """Publish, run two replicas, add a third at 1/3 stored, ``stop`` the first at 1/2 once the
    third has taken work, wait for every final reply. Returns what was seen."""
    key = f"his.scale.{uuid.uuid4().hex[:6]}"
    requests = [RequestEnvelope.from_json(line)
                for line in generate(events=events, reply_to=key, seed=seed)]
    n = len(requests)
    keys = {r.idempotency_key for r in requests}
    assert n == 2 * events and len(keys) == n and {r.message_type for r in requests} == {
        "event.start", "event.end"}
    replies = Replies(broker_url, key)
    replicas: list[Replica] = []
    try:
        publish(broker_url, requests)
        assert queue_count(broker_url, BATCH_QUEUE) == n
        replicas += [start_replica("first", broker_url, simulator, tmp_path),
                     start_replica("second", broker_url, simulator, tmp_path)]
        first = replicas[0]
        wait_until(lambda: stored(simulator) >= n // 3, "a third of the requests stored")
        # Scale out: ops start one more worker
        third = start_replica("third", broker_url, simulator, tmp_path)
        replicas.append(third)
        wait_until(lambda: third.accepted() > 0, "the added worker accepts a request")
        wait_until(lambda: stored(simulator) >= n // 2, "half of the requests stored")
        # Scale in: one of the original two goes away while work remains
        assert first.accepted() > 0
        stored_at_stop = stored(simulator)
        first_pids = worker_pids(first)
        assert len(first_pids) == 1, first_pids
        stop(first)
        replies.wait(n, timeout_s=180)
        accepted = {r.name: r.accepted() for r in replicas}
    finally:
        for r in replicas:
            r.pool.stop()
        replies.stop()
    return {"n": n, "keys": keys, "replies": replies, "replicas": replicas,
            "stored_at_stop": stored_at_stop, "first_pids": first_pids, "accepted": accepted}


def assert_nothing_lost_nothing_twice(seen: dict, broker_url, simulator) -> None:
    n, keys, replies = seen["n"], seen["keys"], seen["replies"]
    # every request answered once, accepted, with one outcome
    assert not replies.conflicts, replies.conflicts[:2]
    kinds = Counter(f["kind"] for f in replies.finals.values())
    assert len(replies.finals) == n, f"lost {n - len(replies.finals)}; {kinds}"
    assert kinds == {"accepted": n}
    # every idempotency key stored exactly once in EESZT (naive: a resend would be a 2nd record)
    records = simulator.admin("GET", f"/admin/records?service={SERVICE}&limit={10 * n}")["records"]
    by_key = Counter(r["idempotency_key"] for r in records if r["idempotency_key"] in keys)
    assert set(by_key) == keys, f"{len(keys - set(by_key))} keys never stored"
    assert [k for k, c in by_key.items() if c > 1] == []
    stats = simulator.stats()
    assert (stats["repeated_keys"], stats["extra_records_from_repeats"]) == (0, 0)
    # and nothing left behind
    assert queue_count(broker_url, BATCH_QUEUE) == 0
    assert queue_count(broker_url, DEAD_LETTER_QUEUE) == 0
    # the EESZT ids in the replies are the stored ones
    assert {f["eeszt_id"] for f in replies.finals.values()} == {
        r["eeszt_id"] for r in records if r["idempotency_key"] in keys}


def test_added_worker_takes_work_and_a_gracefully_stopped_one_loses_nothing(
        clean, broker_url, simulator, tmp_path):
    def graceful(replica: Replica) -> None:
        replica.pool.proc.send_signal(signal.SIGTERM)  # the supervisor, as Kubernetes does
        assert replica.pool.proc.wait(timeout=90) == 0, replica.log()

    seen = scale_out_then_in(broker_url, simulator, tmp_path, events=1250, seed=31, stop=graceful)
    first = seen["replicas"][0]
    print(f"\nscale out + SIGTERM: {seen['n']} requests, stopped at {seen['stored_at_stop']} "
          f"stored; accepted per worker {seen['accepted']}; "
          f"queries {simulator.stats()['attempts']['by_outcome'].get('query', 0)}")
    # The stop came mid-run, and the added worker and both originals did part of the work
    assert seen["stored_at_stop"] < seen["n"]
    assert seen["accepted"]["third"] > 0
    assert seen["accepted"]["first"] > 0 and seen["accepted"]["second"] > 0
    # The stopped worker went the graceful way: its process removed its heartbeat on the way
    # out (a killed one cannot), and it is gone
    assert first.heartbeats() == [], first.log()
    assert not any(_proc_alive(pid) for pid in seen["first_pids"])
    assert_nothing_lost_nothing_twice(seen, broker_url, simulator)


def test_added_worker_takes_work_and_a_killed_one_loses_nothing(
        clean, broker_url, simulator, tmp_path):
    def sigkill(replica: Replica) -> None:
        # A lost node or container: the supervisor and its process die at once, with whatever
        # the process had prefetched and in flight still unacknowledged
        (pid,) = worker_pids(replica)
        kill9(replica.pool.proc.pid)
        kill9(pid)
        assert replica.pool.proc.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: not _proc_alive(pid), "the killed worker process is gone", 30)

    seen = scale_out_then_in(broker_url, simulator, tmp_path, events=500, seed=32, stop=sigkill)
    first = seen["replicas"][0]
    queries = simulator.stats()["attempts"]["by_outcome"].get("query", 0)
    print(f"\nscale out + SIGKILL: {seen['n']} requests, killed at {seen['stored_at_stop']} "
          f"stored; accepted per worker {seen['accepted']}; queries {queries}")
    assert seen["stored_at_stop"] < seen["n"]
    assert seen["accepted"]["third"] > 0 and seen["accepted"]["second"] > 0
    # The kill was abrupt (no heartbeat cleanup), and what the dead process held came back to
    # the others, who asked EESZT by idempotency key before sending it again
    assert first.heartbeats(), "a SIGKILLed process cannot remove its heartbeat"
    assert queries > 0
    assert_nothing_lost_nothing_twice(seen, broker_url, simulator)


def worker_pids(replica: Replica) -> list[int]:
    """The worker processes of a replica's supervisor (not multiprocessing's resource tracker)."""
    out = []
    for pid in children(replica.pool.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(pid)
        except OSError:
            pass  # the process ended between listing and reading: not a worker any more
    return out


def _proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
