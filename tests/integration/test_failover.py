"""Several broker addresses against the real RabbitMQ on 127.0.0.1:5672: a dead node first.

The dead node is a closed loopback port (refused at once) or a socket that accepts and never
speaks (a hung node, bounded by the connect timeouts). Everything runs in the session's vhost
(the ``broker_url`` fixture); what a test declares has a unique name and is deleted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pika
import pytest

from eeszt_gw.amqp import BrokerUnreachable, broker_addresses, open_connection
from producers import BrokerUnavailable, Publisher, ReplyListener
from schemas import Accepted
from schemas.wire import REPLIES_EXCHANGE
from simulator.pki import init_pki
from tests import samples
from tests.conftest import ROOT, free_port, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def dead_url(broker_url: str, port: int | None = None) -> str:
    """``broker_url`` (same user and vhost) on a loopback port nobody listens on."""
    return broker_url.replace("127.0.0.1:5672", f"127.0.0.1:{port or free_port()}")


def unique(prefix: str) -> str:
    return f"test.failover.{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(broker_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def silent_node() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a hung node)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_publisher_skips_a_dead_first_node(broker_url, admin) -> None:
    # Given a temporary exchange and queue, and a dead node listed before the live one
    exchange, queue = unique("x"), unique("q")
    admin.exchange_declare(exchange, "topic", durable=True)
    admin.queue_declare(queue, durable=True)
    admin.queue_bind(queue, exchange, routing_key="#")
    dead = dead_url(broker_url)
    try:
        # When a request is published through both
        with Publisher(url=f"{dead},{broker_url}", declare_topology=False, exchange=exchange,
                       retry_attempts=1, connect_timeout=2) as publisher:
            publisher.submit(samples.event_start())
        # Then the live node has it
        assert admin.queue_declare(queue, passive=True).method.message_count == 1
    finally:
        admin.queue_delete(queue)
        admin.exchange_delete(exchange)


def test_a_reply_listener_skips_a_dead_first_node(broker_url, admin) -> None:
    key = unique("his")
    admin.exchange_declare(REPLIES_EXCHANGE, "topic", durable=True)
    try:
        with ReplyListener([dead_url(broker_url), broker_url], routing_key=key,
                           retry_attempts=1, connect_timeout=2) as listener:
            listener.open()  # declares and binds its queue on the live node
            reply = Accepted(message_id=uuid.uuid4(), idempotency_key="fo-1", service="eRecept",
                             message_type="erecept.submit", eeszt_id="RX-fo-1", version=1)
            admin.basic_publish(REPLIES_EXCHANGE, key, reply.model_dump_json().encode())
            got = listener.get(timeout=10)
        assert got is not None and got.idempotency_key == "fo-1"
    finally:
        admin.queue_delete(f"{key}.replies")


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "status", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_status_with_a_dead_and_a_live_url_reports_the_live_broker(broker_url, tmp_path) -> None:
    pki = init_pki(tmp_path / "pki", days=365)
    dead = dead_url(broker_url)
    done = status("--json", "--broker-url", dead, "--broker-url", broker_url, "--pki-dir",
                  str(pki.directory), "--wait-s", "0.3", "--no-rabbitmqctl")
    # 2 would be "broker unreachable"
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["broker"] == ",".join(u.replace("guest:guest@", "guest:***@")
                                        for u in (dead, broker_url))


def test_status_with_only_dead_urls_names_both_in_one_line(broker_url, tmp_path) -> None:
    first, second = dead_url(broker_url), dead_url(broker_url)
    done = status("--broker-url", first, "--broker-url", second, "--pki-dir", str(tmp_path),
                  "--no-rabbitmqctl")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: broker unreachable at ")
    for url in (first, second):
        port = url.split("127.0.0.1:", 1)[1].split("/", 1)[0]
        assert lines[0].count(f"127.0.0.1:{port}") == 2  # in the setting and in the error
    assert "guest:guest" not in done.stderr


def test_a_worker_started_with_a_dead_and_a_live_url_serves_requests(broker_url, simulator,
                                                                     tmp_path) -> None:
    # Given a worker whose first --broker-url is a dead node and whose second is the live one
    simulator.reset(duplicates="naive")
    dead = dead_url(broker_url)
    pool = start_workers(broker_url=dead, sim=simulator, workdir=tmp_path, processes=1,
                         threads=2, queues="batch", workstations={},
                         extra=("--broker-url", broker_url))
    key = unique("his")
    try:
        # When a HIS publishes a care event through both as well
        with ReplyListener(f"{dead},{broker_url}", routing_key=key, durable=False,
                           retry_attempts=1) as listener:
            listener.open()
            request = samples.event_start().model_copy(update={"reply_to": key})
            with Publisher(url=f"{dead},{broker_url}", retry_attempts=1) as publisher:
                publisher.submit(request)
            finals = []
            while (reply := listener.get(timeout=60)) is not None:
                if reply.kind != "status":
                    finals.append(reply)
                    break
            # Then the worker (consumer, outbox) answered through the live node
            assert [r.idempotency_key for r in finals] == [request.idempotency_key]
            # and its control responder answers `eeszt-gw status` given the same two URLs
            pki = init_pki(tmp_path / "pki", days=365)
            done = status("--json", "--broker-url", dead, "--broker-url", broker_url,
                          "--pki-dir", str(pki.directory), "--wait-s", "1.5",
                          "--no-rabbitmqctl")
            assert done.returncode in (0, 1), done.stderr
            assert len(json.loads(done.stdout)["workers"]) == 1
    finally:
        pool.stop()
    # and the worker did try the dead node first, and said so with the password masked
    port = dead.split("127.0.0.1:", 1)[1].split("/", 1)[0]
    assert any(f"guest:***@127.0.0.1:{port}/" in line and "did not answer" in line
               for line in pool.log_path.read_text().splitlines())


def test_only_dead_addresses_give_the_typed_error_within_the_connect_timeouts(
        broker_url, silent_node) -> None:
    # Given a refused port and a node that accepts and never answers
    refused, hung = dead_url(broker_url), dead_url(broker_url, silent_node)
    params = broker_addresses(f"{refused},{hung}", socket_timeout=1, stack_timeout=2)
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            open_connection(params).close()
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            outcome.append(exc)

    # When a client connects with a 2 s stack timeout
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a bound far above the timeouts, so never flaky; not a measurement
    # Then it has given up (not hung) with the typed error naming both, password masked
    assert not worker.is_alive(), "the connect to a silent node was not bounded"
    assert len(outcome) == 1 and isinstance(outcome[0], BrokerUnreachable), outcome
    text = str(outcome[0])
    assert [a.split("@", 1)[1].split("/", 1)[0] for a in outcome[0].addresses] == [
        refused.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{silent_node}"]
    assert "guest:***@" in text and "guest:guest" not in text


def test_a_publisher_given_only_dead_addresses_gives_up_after_its_attempts(broker_url,
                                                                           silent_node) -> None:
    first, hung = dead_url(broker_url), dead_url(broker_url, silent_node)
    with Publisher(url=f"{first},{hung}", retry_attempts=2, retry_backoff=0.01,
                   connect_timeout=0.5) as publisher:
        with pytest.raises(BrokerUnavailable) as exc:
            publisher.submit(samples.event_start())
    assert exc.value.attempts == 2
    assert "unreachable after 2 attempts" in str(exc.value)
    assert f"127.0.0.1:{silent_node}" in str(exc.value) and "guest:guest" not in str(exc.value)
