"""Counting what a fault scenario did: published, answered, dead-lettered, lost, duplicated."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions

from eeszt_gw.amqp import broker_addresses, open_connection
from producers.generate import generate
from producers.batch import BatchPublisher
from schemas.envelope import RequestEnvelope
from schemas.wire import queue_arguments

SCALE = max(1, int(os.environ.get("EESZT_FAULT_SCALE", "1")))
RESULTS: list[str] = []


@dataclass
class Result:
    scenario: str
    published: int
    finals: dict[str, dict]
    dead_lettered: int
    duplicates: int
    statuses: Counter = field(default_factory=Counter)
    #: final replies delivered, when messages may share an id (unreadable garbage)
    finals_delivered: int | None = None

    @property
    def kinds(self) -> Counter:
        return Counter(f["kind"] for f in self.finals.values())

    @property
    def lost(self) -> int:
        answered = len(self.finals) if self.finals_delivered is None else self.finals_delivered
        return self.published - answered - self.dead_lettered

    def line(self) -> str:
        k = self.kinds
        return (f"{self.scenario:<38} published {self.published:>5}  accepted {k['accepted']:>5}  "
                f"rejected {k['rejected']:>4}  failed {k['failed']:>3}  dead-lettered "
                f"{self.dead_lettered:>4}  lost {self.lost:>3}  duplicates {self.duplicates:>3}")


def requests(n: int, reply_to: str, *, seed: int = 1) -> list[RequestEnvelope]:
    """A mix of valid requests: prescriptions, referrals, profiles, care events, documents."""
    per = max(1, n // 10)
    counts = dict(prescriptions=3 * per, referrals=per, profiles=per, events=2 * per,
                  documents=n - 3 * per - per - per - 4 * per)
    lines = list(generate(reply_to=reply_to, seed=seed, **counts))
    return [RequestEnvelope.from_json(line) for line in lines][:n]


class Replies:
    """Follows one HIS reply queue in a thread, reconnecting through broker restarts."""

    def __init__(self, url: str, key: str, queue_type: str | None = None) -> None:
        # url: one URL or several, comma-separated (a cluster's nodes); queue_type "quorum"
        # keeps the reply queue when the node that hosts a classic one dies (None: the
        # vhost's default type).
        self.url, self.key, self.queue_type = url, key, queue_type
        self.finals: dict[str, dict] = {}
        self.all_finals: list[dict] = []  # every final reply delivered, repeats included
        self.conflicts: list[tuple[dict, dict]] = []
        self.statuses: Counter = Counter()
        self.status_by_message: Counter = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "reply queue not ready"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = open_connection(broker_addresses(self.url))
                ch = conn.channel()
                ch.queue_declare(f"{self.key}.replies", durable=True,
                                 arguments=queue_arguments(self.queue_type)
                                 if self.queue_type else None)
                ch.queue_bind(f"{self.key}.replies", "eeszt.replies", routing_key=self.key)
                self._ready.set()
                for method, _p, body in ch.consume(f"{self.key}.replies", inactivity_timeout=0.5):
                    if self._stop.is_set():
                        break
                    if method is None:
                        continue
                    reply = json.loads(body)
                    if reply["kind"] == "status":
                        self.statuses[reply["state"]] += 1
                        self.status_by_message[(reply["message_id"], reply["state"])] += 1
                    else:
                        self.all_finals.append(reply)
                        earlier = self.finals.setdefault(reply["message_id"], reply)
                        if earlier["kind"] != reply["kind"]:
                            self.conflicts.append((earlier, reply))
                    ch.basic_ack(method.delivery_tag)
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.5)

    def wait(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.finals) < n and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def publish(url: str, reqs: list[RequestEnvelope], queue_type: str = "classic", *,
            retry_attempts: int = 5, retry_backoff: float = 0.2) -> None:
    """Publish ``reqs`` with confirms; ``retry_attempts`` and ``retry_backoff`` set how long the
    publisher keeps reconnecting (BatchPublisher's defaults), as a HIS would configure them."""
    with BatchPublisher(url=url, queue_type=queue_type, retry_attempts=retry_attempts,
                        retry_backoff=retry_backoff) as pub:
        for r in reqs:
            pub.publish(r)
        summary = pub.flush(timeout=120)
    assert summary.ok, summary


def queue_count(url: str, name: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(name, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def purge(url: str, *names: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    for name in names:
        ch = conn.channel()
        try:
            ch.queue_purge(name)
        except pika.exceptions.ChannelClosedByBroker:
            pass
    conn.close()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the worker processes of a supervisor)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
