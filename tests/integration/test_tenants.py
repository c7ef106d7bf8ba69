"""Tenants on a real RabbitMQ: a HIS reads only its own replies, and cannot make the gateway
deliver its replies to another HIS (no confused deputy).

Two HIS users are made with deploy/rabbitmq/add-his-user on the session's vhost (and deleted at
the end); the workers run as guest (the operator's user) with ``--tenants strict``, the mode
that also refuses requests without a user_id. The HIS side uses the project's producers and
``eeszt-gw publish`` / ``eeszt-gw replies --no-declare``, as a HIS user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pika.exceptions
import pytest

from producers import Publisher, ReplyListener
from schemas.wire import DEAD_LETTER_QUEUE, H_CODE, H_MESSAGE_ID, H_REASON, REPLIES_EXCHANGE
from tests import samples
from tests.conftest import RABBIT_HOST, ROOT, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


@dataclass(frozen=True)
class His:
    name: str
    url: str

    @property
    def user(self) -> str:
        return f"his-{self.name}"

    @property
    def key(self) -> str:
        return f"his.{self.name}"

    @property
    def queue(self) -> str:
        return f"his.{self.name}.replies"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def his(rabbit_vhost: str) -> Iterator[tuple[His, His]]:
    """HIS a and HIS b, as deploy/rabbitmq/add-his-user makes them (users are per broker, so the
    names carry the test process id)."""
    script = ROOT / "deploy" / "rabbitmq" / "add-his-user"
    both = tuple(His(name, f"amqp://his-{name}:pw-{name}@{RABBIT_HOST}/{rabbit_vhost}")
                 for name in (f"t{os.getpid()}a", f"t{os.getpid()}b"))
    try:
        for h in both:
            subprocess.run([str(script), h.name, f"pw-{h.name}", rabbit_vhost], check=True,
                           timeout=60, capture_output=True)
        yield both
    finally:
        for h in both:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", h.user], capture_output=True,
                           timeout=60)


@pytest.fixture(scope="module")
def gateway(his, broker_url, simulator, tmp_path_factory):
    from workers.process import declare_topology

    declare_topology(broker_url)
    simulator.reset(duplicates="naive")
    pool = start_workers(broker_url=broker_url, sim=simulator,
                         workdir=tmp_path_factory.mktemp("tenants"), processes=1, threads=4,
                         queues="interactive", extra=("--tenants", "strict"))
    yield pool
    pool.stop()


def as_user(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def queue_depth(broker_url: str, queue: str) -> int:
    conn = as_user(broker_url)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def dead_letter(broker_url: str, message_id: str, wait_s: float = 30) -> dict | None:
    """The headers of the dead letter of ``message_id`` (browsed, left in the queue), waiting
    up to ``wait_s`` for it to arrive."""
    deadline = time.monotonic() + wait_s
    while True:
        conn = as_user(broker_url)
        try:
            ch = conn.channel()
            while True:
                method, props, _ = ch.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
                if method is None:
                    break
                headers = props.headers or {}
                if headers.get(H_MESSAGE_ID) == message_id:
                    return headers
        finally:
            conn.close()  # unacked: everything browsed goes back to the queue
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def reply_for(listener: ReplyListener, message_id, timeout: float = 30):
    """The next reply to ``message_id``; replies to other requests are skipped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        reply = listener.get(timeout=left)
        if reply is not None and reply.message_id == message_id:
            return reply
    return None


def attempts_at_eeszt(simulator) -> int:
    return sum(simulator.stats()["attempts"]["by_outcome"].values())


def test_each_his_gets_its_own_replies_and_reads_them_without_declaring(
        gateway, his, broker_url, simulator, tmp_path):
    a, b = his
    # HIS a publishes with `eeszt-gw publish` as its own broker user (which may declare nothing),
    rx_a = samples.prescription().model_copy(update={"reply_to": a.key})
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(rx_a.to_json().decode() + "\n")
    published = cli("publish", "--no-declare", "--no-progress", "--broker-url", a.url, str(jsonl))
    assert published.returncode == 0, published.stderr
    # and HIS b through the library.
    rx_b = samples.prescription().model_copy(update={"reply_to": b.key})
    with Publisher(url=b.url, declare_topology=False) as pub:
        pub.submit(rx_b)
    # Each reads its answer from its own queue with `eeszt-gw replies --no-declare`.
    for h, rx in ((a, rx_a), (b, rx_b)):
        read = cli("replies", "--no-declare", "--broker-url", h.url, "--reply-routing-key", h.key,
                   "--count", "1", "--timeout", "30", "--json")
        assert read.returncode == 0, read.stderr
        finals = [json.loads(line) for line in read.stdout.splitlines()
                  if json.loads(line)["kind"] != "status"]
        assert [(f["kind"], f["message_id"]) for f in finals] == [("accepted", str(rx.message_id))]
        assert f"listening on queue '{h.queue}'" in read.stderr
    records = simulator.admin("GET", f"/admin/records?key={rx_a.idempotency_key}")["records"]
    assert len(records) == 1


def test_a_his_cannot_read_another_his_replies(gateway, his, broker_url):
    a, b = his
    read = cli("replies", "--no-declare", "--broker-url", a.url, "--reply-routing-key", b.key,
               "--timeout", "1")
    assert read.returncode == 2
    assert b.queue in read.stderr and "403" in read.stderr and "ACCESS_REFUSED" in read.stderr
    conn = as_user(a.url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().basic_consume(b.queue, lambda *args: None)
        assert refused.value.reply_code == 403
        conn.channel().basic_consume(a.queue, lambda *args: None)  # its own: allowed
    finally:
        conn.close()
    # a queue that does not exist is named, with its 404
    missing = cli("replies", "--no-declare", "--broker-url", broker_url, "--reply-queue",
                  "nobody.replies", "--timeout", "1")
    assert missing.returncode == 2
    assert "nobody.replies" in missing.stderr and "404" in missing.stderr


def test_a_his_cannot_publish_as_another_his_nor_publish_replies(gateway, his):
    a, b = his
    conn = as_user(a.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        rx = samples.prescription().model_copy(update={"reply_to": b.key})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as forged:
            ch.basic_publish("eeszt.requests", rx.message_type, rx.to_json(),
                             pika.BasicProperties(delivery_mode=2, user_id=b.user), mandatory=True)
        assert forged.value.reply_code == 406 and b.user in forged.value.reply_text
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as direct:
            ch.basic_publish(REPLIES_EXCHANGE, b.key, b"{}", pika.BasicProperties(user_id=a.user))
        assert direct.value.reply_code == 403
    finally:
        conn.close()


def test_a_reply_to_of_another_his_is_refused_before_eeszt_and_never_reaches_it(
        gateway, his, broker_url, simulator):
    a, b = his
    before = attempts_at_eeszt(simulator)
    depth_b = queue_depth(broker_url, b.queue)
    rx = samples.prescription().model_copy(update={"reply_to": b.key})
    with ReplyListener(a.url, routing_key=a.key, declare=False) as replies_a:
        replies_a.open()
        with Publisher(url=a.url, declare_topology=False) as pub:
            pub.submit(rx)
        # HIS a hears why, on its own key,
        told = replies_a.get(timeout=30)
    assert told is not None and told.kind == "rejected"
    assert told.message_id == rx.message_id and told.code == "GW-TENANT"
    assert told.field == "reply_to" and b.key in told.reason and a.key in told.reason
    # nothing went to HIS b nor to EESZT,
    assert queue_depth(broker_url, b.queue) == depth_b == 0
    assert attempts_at_eeszt(simulator) == before
    assert simulator.admin("GET", f"/admin/records?key={rx.idempotency_key}")["records"] == []
    # and the request waits in the dead-letter queue, with the reason.
    headers = dead_letter(broker_url, str(rx.message_id))
    assert headers is not None and headers[H_CODE] == "GW-TENANT"
    assert (f"reply_to {b.key} is not HIS {a.name}'s: it must be {a.key} or {a.key}.*"
            in headers[H_REASON])


def test_strict_refuses_a_request_without_user_id(gateway, his, broker_url, simulator):
    a, _ = his
    before = attempts_at_eeszt(simulator)
    rx = samples.prescription().model_copy(update={"reply_to": a.key})
    conn = as_user(broker_url)  # the operator's user, publishing without a user_id
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("eeszt.requests", rx.message_type, rx.to_json(),
                         pika.BasicProperties(delivery_mode=2, message_id=str(rx.message_id)),
                         mandatory=True)
    finally:
        conn.close()
    headers = dead_letter(broker_url, str(rx.message_id))
    assert headers is not None and headers[H_CODE] == "GW-TENANT"
    assert "no user_id" in headers[H_REASON]
    assert attempts_at_eeszt(simulator) == before
    assert queue_depth(broker_url, a.queue) == 0  # nobody to tell: the sender is unknown


def test_a_retried_request_is_still_answered_in_strict_mode(gateway, his, simulator):
    # The copies the workers park in retry queues carry the workers' own user (guest) as
    # user_id; without it strict mode would refuse the retried request.
    a, _ = his
    rx = samples.prescription().model_copy(update={"reply_to": a.key})
    simulator.set_faults(error_rate=1.0)
    try:
        with ReplyListener(a.url, routing_key=a.key, declare=False) as replies_a:
            replies_a.open()
            with Publisher(url=a.url, declare_topology=False) as pub:
                pub.submit(rx)
            status = reply_for(replies_a, rx.message_id)
            assert status is not None and status.kind == "status"
            assert status.state.value == "retrying"
            simulator.set_faults(error_rate=0.0)
            final = reply_for(replies_a, rx.message_id, timeout=40)
    finally:
        simulator.set_faults(error_rate=0.0)
    assert final is not None and final.kind == "accepted" and final.message_id == rx.message_id
