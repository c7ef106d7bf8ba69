"""`eeszt-gw status` against a real RabbitMQ: queue figures, the workers' in-flight answers,
doctors' wait queues, dead letters, certificates, and the exit codes.

The worker side is a real `workers.middleware.control.ControlResponder` in this process with a fake
in-flight list; the command runs as a subprocess, as ops would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pika
import pika.exceptions
import pytest

from schemas.soap import SERVICES
from schemas.wire import (
    BINDINGS,
    DEAD_LETTER_QUEUE,
    H_ATTEMPT,
    H_CODE,
    H_FIRST_SEEN,
    H_IDEMPOTENCY_KEY,
    H_MESSAGE_ID,
    H_REASON,
    H_STATUS_SENT,
    H_TYPE,
    H_WAITING_LOGIN,
    INTERACTIVE_QUEUE,
    RETRY_TIERS_S,
    login_wait_queue,
    parked_queue,
    retry_queue,
)
from simulator.pki import init_pki
from tests import samples
from tests.conftest import ROOT, free_port
from workers.breaker import Breakers
from workers.middleware.control import ControlResponder
from workers.logins.backends import WAIT_QUEUE_IDLE_MS
from workers.topology import declare

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

DOCTOR = "O10003"
WAIT_QUEUE = login_wait_queue(DOCTOR)
RETRY_QUEUE = retry_queue(INTERACTIVE_QUEUE, 600)


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "status", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def status_json(broker_url: str, pki_dir: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = status("--json", "--broker-url", broker_url, "--pki-dir", str(pki_dir), *extra)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _clean(conn, ch) -> None:
    # The session's vhost is shared: start from, and leave, empty queues for what we assert on.
    for q in (DEAD_LETTER_QUEUE, *(retry_queue(w, t) for w in BINDINGS for t in RETRY_TIERS_S)):
        ch.queue_purge(q)
    ch.queue_delete(WAIT_QUEUE)
    for service in SERVICES:  # parked queues exist once a worker parked something
        scratch = conn.channel()
        try:
            scratch.queue_purge(parked_queue(service))
            scratch.close()
        except pika.exceptions.ChannelClosedByBroker:
            pass


@pytest.fixture()
def channel(broker_url: str) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    declare(ch)
    _clean(conn, ch)
    ch.confirm_delivery()
    try:
        yield ch
    finally:
        _clean(conn, ch)
        conn.close()


@pytest.fixture()
def responder(broker_url: str) -> Iterator[Any]:
    started: list[ControlResponder] = []

    def start(in_flight: list[dict], login_waits: list[str] | None = None,
              breakers: Any = None) -> ControlResponder:
        r = ControlResponder(broker_url, in_flight=lambda: in_flight,
                             info={"queues": [INTERACTIVE_QUEUE], "threads": 4},
                             login_waits=(lambda: login_waits) if login_waits is not None else None,
                             breakers=breakers)
        started.append(r.start())
        assert r.ready.wait(10), "the control responder did not connect"
        return r

    yield start
    for r in started:
        r.stop()


def publish_dead_letter(ch, request, code: str, reason: str, first_seen_ms: int) -> None:
    # as workers/outcomes.py (_fail) and workers/outbox.py (dead_letter) do
    headers = {H_TYPE: request.message_type, H_ATTEMPT: 4, H_FIRST_SEEN: first_seen_ms,
               H_REASON: reason, H_CODE: code, H_MESSAGE_ID: str(request.message_id),
               H_IDEMPOTENCY_KEY: request.idempotency_key}
    ch.basic_publish("", DEAD_LETTER_QUEUE, request.to_json(), pika.BasicProperties(
        delivery_mode=2, message_id=str(request.message_id), headers=headers,
        timestamp=int(time.time())), mandatory=True)


def publish_retry(ch, request, first_seen_ms: int) -> None:
    # as workers/outcomes.py (_retry_later) and workers/outbox.py (retry) do; a long TTL, so it
    # never flows back to a work queue while this session runs
    headers = {H_TYPE: request.message_type, H_ATTEMPT: 3, H_FIRST_SEEN: first_seen_ms,
               H_STATUS_SENT: "retrying"}
    ch.basic_publish("", RETRY_QUEUE, request.to_json(), pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=str(request.message_id),
        headers=headers, expiration=str(600_000)), mandatory=True)


def park_for_login(ch, request) -> None:
    # as workers/logins/coordinator.py (wait) and workers/logins/backends.py
    # (RabbitLoginBackend.park) do
    ch.queue_declare(WAIT_QUEUE, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": INTERACTIVE_QUEUE,
        "x-expires": WAIT_QUEUE_IDLE_MS})
    headers = {H_TYPE: request.message_type, H_WAITING_LOGIN: DOCTOR,
               H_STATUS_SENT: "waiting_for_login"}
    ch.basic_publish("", WAIT_QUEUE, request.to_json(), pika.BasicProperties(
        delivery_mode=2, content_type="application/json", headers=headers,
        message_id=str(request.message_id), expiration=str(3_600_000)), mandatory=True)


def park_for_outage(ch, request, first_seen_ms: int) -> None:
    # as workers/outbox.py (RabbitOutbox.park) does while a service's circuit is open
    name = parked_queue("eProfil")
    ch.queue_declare(name, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": INTERACTIVE_QUEUE})
    headers = {H_TYPE: request.message_type, H_ATTEMPT: 2, H_FIRST_SEEN: first_seen_ms,
               H_STATUS_SENT: "parked"}
    ch.basic_publish("", name, request.to_json(), pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=str(request.message_id),
        headers=headers, expiration=str(3_600_000)), mandatory=True)


def depth(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def test_status_reports_in_flight_queues_login_waits_dead_letters_and_certificates(
        broker_url, channel, responder, tmp_path) -> None:
    now_ms = int(time.time() * 1000)
    # Given a worker process with two requests in flight, one for 20 minutes
    old_id, new_id = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    responder([
        {"message_id": old_id, "service": "eRecept", "message_type": "erecept.submit",
         "started_at": time.time() - 20 * 60},
        {"message_id": new_id, "service": "esemenyKatalogus", "message_type": "event.start",
         "started_at": time.time() - 5}])
    # And two dead letters, a referral retrying for 30 minutes, two prescriptions waiting for
    # O10003's login (created 2 minutes ago, never seen by a worker before)
    publish_dead_letter(channel, samples.prescription(), "GW-FAILED", "the deadline passed",
                        now_ms - 3_600_000)
    publish_dead_letter(channel, samples.ehr_document(), "GW-VALIDATION", "invalid message",
                        now_ms - 60_000)
    publish_retry(channel, samples.referral(), now_ms - 30 * 60_000)
    created = datetime.now(timezone.utc) - timedelta(minutes=2)
    for _ in range(2):
        park_for_login(channel, samples.prescription(user_id=DOCTOR).model_copy(
            update={"created_at": created}))
    # And a PKI whose certificates expire in 20 days
    pki = init_pki(tmp_path / "pki", days=20)

    # When ops run `eeszt-gw status --json`
    code, report = status_json(broker_url, pki.directory)

    # Then it needs attention
    assert code == 1, report
    assert report["healthy"] is False
    # And the old request is flagged as over its time limit, the new one is not
    flights = {i["message_id"]: i for i in report["in_flight"]}
    assert flights[old_id]["over_time_limit"] is True and flights[new_id]["over_time_limit"] is False
    assert flights[old_id]["age_s"] == pytest.approx(1200, abs=30)
    assert report["services"]["eRecept"]["in_flight"] == 1
    assert report["services"]["eRecept"]["over_time_limit"] == 1
    assert report["services"]["esemenyKatalogus"]["in_flight"] == 1
    assert report["totals"]["in_flight"] == 2 and report["totals"]["over_time_limit"] == 1
    assert [w["pid"] for w in report["workers"]] and report["workers"][0]["threads"] == 4
    # And the dead letters are counted by service and by code
    dead = report["dead_letters"]
    assert dead["total"] == 2
    assert dead["by_service"] == {"eRecept": 1, "eht": 1}
    assert dead["by_code"] == {"GW-FAILED": 1, "GW-VALIDATION": 1}
    assert report["services"]["eht"]["dead_letters"] == 1
    # And the retrying referral, with its age
    ebeutalo = report["services"]["eBeutalo"]
    assert ebeutalo["retrying"] == 1 and report["totals"]["retrying"] == 1
    assert ebeutalo["oldest_waiting_s"] == pytest.approx(1800, abs=60)
    assert report["queues"][RETRY_QUEUE] == 1
    # And the login waits per doctor, found with rabbitmqctl on this host
    waits = report["login_waits"]
    assert waits["source"] == "rabbitmqctl"
    assert waits["doctors"][DOCTOR]["waiting"] == 2
    assert waits["doctors"][DOCTOR]["oldest_s"] == pytest.approx(120, abs=60)
    assert report["services"]["eRecept"]["waiting_login"] == 2
    # And the parked queues not declared yet count as 0
    assert report["queues"][parked_queue("eRecept")] in (None, 0)
    assert report["totals"]["parked"] == 0
    # And the certificates inside the 30-day window
    certs = {c["file"]: c for c in report["certificates"]}
    assert certs["access.pem"]["state"] == "expiring"
    assert certs["access.pem"]["days_left"] == pytest.approx(20, abs=0.1)
    assert certs["institution.pem"]["state"] == "expiring"
    assert certs["server-ca.pem"]["state"] == "ok"  # a CA: ten years
    assert any("dead letter" in a for a in report["attention"])
    assert any("longer than 600s" in a for a in report["attention"])
    assert any("access.pem" in a for a in report["attention"])
    # And every browsed message is back where it was
    assert (depth(channel, DEAD_LETTER_QUEUE), depth(channel, RETRY_QUEUE),
            depth(channel, WAIT_QUEUE)) == (2, 1, 2)

    # When an eProfil update is parked during an outage (first seen 10 minutes ago)
    park_for_outage(channel, samples.profile_update(), now_ms - 10 * 60_000)
    code, report = status_json(broker_url, pki.directory, "--wait-s", "0.5")
    # Then it is counted for its service, with its age, and needs attention
    assert report["services"]["eProfil"]["parked"] == 1 and report["totals"]["parked"] == 1
    assert report["services"]["eProfil"]["oldest_waiting_s"] == pytest.approx(600, abs=60)
    assert "1 parked request(s)" in report["attention"] and code == 1
    assert depth(channel, parked_queue("eProfil")) == 1

    # When a cap cuts the dead-letter breakdown short, then the output says so
    _, capped = status_json(broker_url, pki.directory, "--browse-cap", "1", "--wait-s", "0.5")
    assert {"queue": DEAD_LETTER_QUEUE, "ready": 2, "browsed": 1} in capped["truncated"]
    assert capped["dead_letters"]["total"] == 2
    assert any("covers 1 of 2" in n for n in capped["notes"])

    # When the same is shown for a person, then the table and the verdict are there
    table = status("--broker-url", broker_url, "--pki-dir", str(pki.directory))
    assert table.returncode == 1
    for needle in ("eRecept", "esemenyKatalogus", "O10003 2", "GW-FAILED 1", "access.pem",
                   "ATTENTION", "in flight longer than 10m 0s"):
        assert needle in table.stdout, table.stdout


def test_login_waits_come_from_the_workers_without_rabbitmqctl(
        broker_url, channel, responder, tmp_path) -> None:
    park_for_login(channel, samples.prescription(user_id=DOCTOR))
    pki = init_pki(tmp_path / "pki", days=365)
    # Given a worker process that answers without a login_waits list, and no rabbitmqctl
    first = responder([])
    code, report = status_json(broker_url, pki.directory, "--no-rabbitmqctl")
    # Then the login waits are unknown, and nothing else needs attention
    assert report["login_waits"] == "unknown (no rabbitmqctl here)"
    assert (code, report["attention"]) == (0, [])
    first.stop()
    # When the worker process names the doctors whose logins it started
    responder([], login_waits=[DOCTOR])
    code, report = status_json(broker_url, pki.directory, "--no-rabbitmqctl")
    # Then their wait queues are counted
    assert report["login_waits"]["source"] == "workers"
    assert report["login_waits"]["doctors"][DOCTOR]["waiting"] == 1
    assert report["totals"]["waiting_login"] == 1
    assert code == 0


def test_an_open_circuit_in_a_worker_process_needs_attention(broker_url, channel, responder,
                                                             tmp_path) -> None:
    pki = init_pki(tmp_path / "pki", days=365)
    # Given a worker process whose eht circuit opened (it parked 7 requests) and whose eRecept
    # circuit is closed
    breakers = Breakers(failure_threshold=1)
    breakers.get("eRecept")
    breakers.get("eht").record_failure()
    responder([], breakers=lambda: breakers.snapshot({"eht": 7.0, "eRecept": 0.0}))
    # When ops run `eeszt-gw status`
    code, report = status_json(broker_url, pki.directory, "--no-rabbitmqctl")
    # Then the circuits are listed, the open one first, and it needs attention (exit code 1)
    assert code == 1 and report["healthy"] is False
    assert [(c["service"], c["state"], c.get("parked")) for c in report["circuits"]] == [
        ("eht", "open", 7), ("eRecept", "closed", 0)]
    assert report["circuits"][0]["for_s"] == pytest.approx(0, abs=60)
    assert report["circuits"][0]["pid"] == report["workers"][0]["pid"]
    assert [a for a in report["attention"] if a.startswith("circuit of eht open in 1 worker")]
    assert "breakers" not in report["workers"][0]
    table = status("--broker-url", broker_url, "--pki-dir", str(pki.directory),
                   "--no-rabbitmqctl")
    assert table.returncode == 1
    assert "circuits not closed: 1" in table.stdout and "eht open for" in table.stdout
    # When the service answers again, then the gateway is healthy (exit code 0)
    assert breakers.get("eht").record_success()
    code, report = status_json(broker_url, pki.directory, "--no-rabbitmqctl")
    assert (code, report["attention"]) == (0, [])
    assert {c["state"] for c in report["circuits"]} == {"closed"}


def test_healthy_gateway_exits_0_and_notes_that_no_worker_answered(broker_url, channel,
                                                                   tmp_path) -> None:
    pki = init_pki(tmp_path / "pki", days=365)
    code, report = status_json(broker_url, pki.directory, "--wait-s", "0.3")
    assert code == 0 and report["healthy"] is True
    assert report["workers"] == [] and report["in_flight"] == []
    assert any("no worker process answered" in n for n in report["notes"])
    assert {c["state"] for c in report["certificates"]} == {"ok"}


def test_unreachable_broker_exits_2_with_a_one_line_error(tmp_path) -> None:
    # Given a port nobody listens on
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/%2F"
    done = status("--broker-url", url, "--pki-dir", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: broker unreachable at ")
    assert "secret" not in done.stderr and done.stdout == ""
    # And with --json, machines get the error as JSON too
    done = status("--json", "--broker-url", url)
    assert done.returncode == 2 and json.loads(done.stdout)["exit_code"] == 2
