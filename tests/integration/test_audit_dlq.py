"""The audit stream and the dead-letter tools on a real RabbitMQ (and, for replays, the real
simulator and worker pool). The `eeszt-gw` commands run as subprocesses, as an operator runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pika
import pytest

from schemas.wire import (
    DEAD_LETTER_QUEUE,
    H_ATTEMPT,
    H_CODE,
    H_FIRST_SEEN,
    H_IDEMPOTENCY_KEY,
    H_KIND,
    H_MESSAGE_ID,
    H_REASON,
    H_TYPE,
)
from tests import samples
from tests.bridges import card_token
from tests.conftest import ROOT, start_workers
from workers.middleware.audit import AUDIT_QUEUE, RabbitAuditLog, audit_event
from workers.middleware.audit_reader import read_audit
from workers.client.client import ClientFiles, EesztClient
from workers.outbox import RabbitOutbox
from workers.process import declare_topology

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

OUTAGE = "EESZT stayed unavailable until the deadline (last error: SRV-001 service unavailable)"
REPLY_KEY = "his.audit"


def cli(broker_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", *args, "--broker-url", broker_url],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def listed(broker_url: str, *filters: str) -> list[dict]:
    res = cli(broker_url, "dlq", "list", "--json", *filters)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def dead_letter(outbox: RabbitOutbox, request, *, reason: str, code: str) -> str:
    """What workers/pipeline.py does when a request fails: the original bytes, the reason."""
    headers = {H_ATTEMPT: 6, H_FIRST_SEEN: int(time.time() * 1000) - 86_400_000,
               H_REASON: reason, H_CODE: code, H_MESSAGE_ID: str(request.message_id),
               H_IDEMPOTENCY_KEY: request.idempotency_key, H_TYPE: request.message_type}
    outbox.dead_letter(request.to_json(), headers, str(request.message_id))
    return str(request.message_id)


def dlq_depth(broker_url: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        return conn.channel().queue_declare(DEAD_LETTER_QUEUE, passive=True).method.message_count
    finally:
        conn.close()


def purge_dlq(broker_url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    conn.channel().queue_purge(DEAD_LETTER_QUEUE)
    conn.close()


@pytest.fixture()
def outbox(broker_url):
    """A clean eeszt.dlq in this session's own vhost (before and after), and the workers'
    outbox to fill it."""
    declare_topology(broker_url)
    purge_dlq(broker_url)
    box = RabbitOutbox(url=broker_url)
    yield box
    box.close()
    purge_dlq(broker_url)


def for_replies(request):
    return request.model_copy(update={"reply_to": REPLY_KEY})


# --- the audit stream ------------------------------------------------------------------------------
def test_a_thousand_events_are_written_to_the_stream_and_one_story_read_back_in_order(
        broker_url, rabbit_vhost):
    # Given 1,000 events about 10 requests, recorded through the batching writer
    run = uuid.uuid4().hex[:8]
    log = RabbitAuditLog(broker_url, max_batch=300)
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    for i in range(1000):
        log.record(audit_event("retried", message_id=f"{run}-{i % 10}",
                               idempotency_key=f"rx-{run}-{i % 10}", service="eRecept",
                               attempt=i, detail=f"SRV-001 for TAJ {samples.TAJ}"))
    log.close()
    assert log.dropped == 0
    # When the story of one of them is read back, by message id and by idempotency key
    story = list(read_audit(broker_url, message_id=f"{run}-3"))
    by_key = list(read_audit(broker_url, message_id=f"rx-{run}-3", since=started))
    # Then exactly its 100 events come back, in the order they were recorded, TAJ masked
    assert [e.attempt for e in story] == list(range(3, 1000, 10))
    assert by_key == story
    assert all(samples.TAJ not in e.detail for e in story)
    assert list(read_audit(broker_url, message_id=f"{run}-3",
                           since=datetime.now(timezone.utc) + timedelta(hours=1))) == []
    # and the stream is declared durable, as a stream, with its retention arguments
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", rabbit_vhost, "name", "type",
                          "durable", "arguments", "--formatter", "json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    queue = next(q for q in json.loads(out) if q["name"] == AUDIT_QUEUE)
    args = {name: value for name, _type, value in queue["arguments"]}
    assert queue["type"] == "stream" and queue["durable"] is True
    assert args == {"x-queue-type": "stream", "x-max-age": "30D",
                    "x-max-length-bytes": 5_000_000_000}


def test_audit_command_exits_1_when_nothing_is_found(broker_url):
    res = cli(broker_url, "audit", f"nobody-{uuid.uuid4()}")
    assert res.returncode == 1
    assert "no audit events" in res.stderr


# --- dlq list / show -------------------------------------------------------------------------------
def test_list_filters_by_service_reason_code_and_time_and_changes_nothing(broker_url, outbox):
    # Given dead letters as the workers leave them: two prescriptions and a care event that
    # failed in an outage, a rejected event with no reply address, and one from three days ago
    rx1 = dead_letter(outbox, samples.prescription(), reason=OUTAGE, code="GW-FAILED")
    rx2 = dead_letter(outbox, samples.prescription(), reason=OUTAGE, code="GW-FAILED")
    ev1 = dead_letter(outbox, samples.event_start(), reason=OUTAGE, code="GW-FAILED")
    ev2 = dead_letter(outbox, samples.event_end(), code="BIZ-001",
                      reason=f"rejected: no care event started for TAJ {samples.TAJ}")
    old = samples.referral()
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", DEAD_LETTER_QUEUE, old.to_json(), pika.BasicProperties(
        delivery_mode=2, message_id=str(old.message_id),
        timestamp=int(time.time()) - 3 * 86400, headers={
            H_REASON: "internal error (KeyError); the message is kept for replay",
            H_CODE: "GW-INTERNAL", H_MESSAGE_ID: str(old.message_id), H_TYPE: old.message_type,
            H_IDEMPOTENCY_KEY: old.idempotency_key}), mandatory=True)
    conn.close()

    # When and Then: each filter selects what it names
    everything = listed(broker_url)
    assert [r["message_id"] for r in everything] == [rx1, rx2, ev1, ev2, str(old.message_id)]
    assert {r["message_id"] for r in listed(broker_url, "--service", "eRecept")} == {rx1, rx2}
    assert {r["message_id"] for r in listed(broker_url, "--service", "esemenyKatalogus")} == {ev1, ev2}
    assert {r["message_id"] for r in listed(broker_url, "--reason", "unavailable")} == {rx1, rx2, ev1}
    assert {r["message_id"] for r in listed(broker_url, "--reason", "UNAVAILABLE",
                                            "--service", "eRecept", "--limit", "1")} == {rx1}
    assert [r["message_id"] for r in listed(broker_url, "--code", "GW-INTERNAL")] == [str(old.message_id)]
    assert [r["message_id"] for r in listed(broker_url, "--older-than", "2d")] == [str(old.message_id)]
    assert {r["message_id"] for r in listed(broker_url, "--since", "1d")} == {rx1, rx2, ev1, ev2}
    assert listed(broker_url, "--since", "4d", "--until", "2d")[0]["service"] == "eBeutalo"
    # the reason with a TAJ is masked, in JSON and in the table
    biz = listed(broker_url, "--code", "BIZ-001")[0]
    assert samples.TAJ not in biz["reason"] and f"******{samples.TAJ[-3:]}" in biz["reason"]
    table = cli(broker_url, "dlq", "list")
    assert table.returncode == 0, table.stderr
    assert samples.TAJ not in table.stdout
    assert all(mid in table.stdout for mid in (rx1, rx2, ev1, ev2, str(old.message_id)))
    assert "3d" in table.stdout  # the age of the old one
    # and listing took nothing away
    assert dlq_depth(broker_url) == 5


def test_show_prints_headers_and_body_with_the_taj_masked(broker_url, outbox):
    # Given a dead prescription whose body holds a TAJ
    request = samples.prescription()
    mid = dead_letter(outbox, request, reason=OUTAGE, code="GW-FAILED")
    # When an operator shows it
    res = cli(broker_url, "dlq", "show", mid)
    # Then headers and body are there, and the raw TAJ is not
    assert res.returncode == 0, res.stderr
    assert samples.TAJ not in res.stdout
    assert f"******{samples.TAJ[-3:]}" in res.stdout
    for text in (request.idempotency_key, "erecept.submit", "GW-FAILED", "eeszt-reason",
                 '"patient_name"', "eRecept"):
        assert text in res.stdout
    # and an unknown id is an error, exit 1
    assert cli(broker_url, "dlq", "show", str(uuid.uuid4())).returncode == 1
    assert dlq_depth(broker_url) == 1


# --- dlq replay --------------------------------------------------------------------------------------
def collect_replies(broker_url: str):
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    queue = f"{REPLY_KEY}.replies"
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, "eeszt.replies", routing_key=REPLY_KEY)

    def wait(count: int, timeout_s: float = 120) -> dict[str, dict]:
        finals: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        for method, _props, body in ch.consume(queue, inactivity_timeout=1):
            if method is not None:
                ch.basic_ack(method.delivery_tag)
                reply = json.loads(body)
                if reply["kind"] != "status":
                    finals[reply["message_id"]] = reply
            if len(finals) >= count or time.monotonic() > deadline:
                break
        ch.cancel()
        ch.queue_delete(queue)
        conn.close()
        return finals

    return wait


def test_replay_after_the_cause_is_fixed_lands_each_request_exactly_once(
        broker_url, outbox, simulator, pki, demo_users, tmp_path):
    # Given three prescriptions that failed in an outage and sit in the DLQ,
    simulator.reset(duplicates="naive")  # EESZT itself would store a repeated key twice
    requests = [for_replies(samples.prescription()) for _ in range(3)]
    # one of which had in fact landed before it was dead-lettered
    doctor = next(u for u in demo_users if u["user_id"] == "O10001")
    client = EesztClient(base_url=simulator.base_url, files=ClientFiles.from_pki_dir(pki.directory))
    try:
        token = card_token(client, pki_dir=pki.directory, eid_url=simulator.eid_url,
                           user_id=doctor["user_id"], workstation=doctor["workstation"])
        landed = client.submit(requests[0], token)
    finally:
        client.close()
    assert simulator.stats()["total_records"] == 1
    ids = [dead_letter(outbox, r, reason=OUTAGE, code="GW-FAILED") for r in requests]
    wait = collect_replies(broker_url)
    # and the cause is fixed: EESZT answers and the workers run
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=1,
                         threads=4, queues="interactive")
    try:
        # When the operator replays them
        res = cli(broker_url, "dlq", "replay", "--all-matching", "--service", "eRecept",
                  "--why", "EESZT outage over", "--who", "ops-anna")
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.count("replayed ") == 3
        finals = wait(3)
    finally:
        pool.stop()
    # Then each request is accepted, and EESZT holds exactly one record per key
    assert {mid: r["kind"] for mid, r in finals.items()} == {mid: "accepted" for mid in ids}
    assert finals[ids[0]]["eeszt_id"] == landed.eeszt_id  # found, not sent again
    stats = simulator.stats()
    assert stats["total_records"] == 3
    assert stats["repeated_keys"] == 0
    # and the DLQ is empty
    assert dlq_depth(broker_url) == 0
    # and the audit trail tells who replayed it and why
    story = cli(broker_url, "audit", ids[0])
    assert story.returncode == 0, story.stderr
    assert "replayed" in story.stdout and "ops-anna" in story.stdout
    assert "EESZT outage over" in story.stdout
    by_key = cli(broker_url, "audit", requests[1].idempotency_key, "--json")
    events = [json.loads(line) for line in by_key.stdout.splitlines() if line.strip()]
    event = next(e for e in events if e["event"] == "replayed")
    # the workers' own entries tell the rest of the story: received, submitted, answered
    assert {"received", "answered"} <= {e["event"] for e in events}
    assert (event["event"], event["actor"], event["message_id"]) == ("replayed", "ops-anna", ids[1])


def test_replay_keeps_what_cannot_be_replayed_and_dry_run_changes_nothing(broker_url, outbox):
    # Given a request, a body with no type at all, and an undeliverable reply in the DLQ
    good = dead_letter(outbox, samples.prescription(), reason=OUTAGE, code="GW-FAILED")
    outbox.dead_letter(b"\x00not json", {H_REASON: "invalid message (body: body is not UTF-8)",
                                         H_CODE: "GW-VALIDATION"}, "raw-1")
    outbox.dead_letter(b'{"kind": "accepted"}', {H_KIND: "accepted", H_MESSAGE_ID: "reply-1",
                                                 H_REASON: "undeliverable reply for his.gone"},
                       "reply-1:accepted")
    # When the operator tries a dry run of everything
    dry = cli(broker_url, "dlq", "replay", "--all-matching", "--why", "test", "--dry-run")
    # Then it says what it would do and what it cannot, and nothing moves
    assert dry.returncode == 1, dry.stdout
    assert f"would be replayed {good}" in dry.stdout
    assert "raw-1 (no type): it has no message type" in dry.stdout
    assert "undeliverable reply" in dry.stdout
    assert dlq_depth(broker_url) == 3
    # and replay without a selector is refused
    refused = cli(broker_url, "dlq", "replay", "--why", "test")
    assert refused.returncode == 2 and "--all-matching" in refused.stderr
    # and the unreplayable ones stay when replayed by id, with a clear message
    res = cli(broker_url, "dlq", "replay", "raw-1", "--why", "test", "--who", "ops-bela")
    assert res.returncode == 1
    assert "kept" in res.stdout and "raw-1" in res.stdout
    assert dlq_depth(broker_url) == 3


# --- dlq purge -----------------------------------------------------------------------------------------
def test_purge_removes_only_the_selected_and_records_each(broker_url, outbox):
    # Given four dead letters
    rx = [dead_letter(outbox, samples.prescription(), reason=OUTAGE, code="GW-FAILED")
          for _ in range(2)]
    ev = dead_letter(outbox, samples.event_start(), reason=OUTAGE, code="GW-FAILED")
    bad = dead_letter(outbox, samples.event_end(), reason="rejected: BIZ", code="BIZ-001")
    # When purge is called without any selector, Then it refuses
    refused = cli(broker_url, "dlq", "purge", "--why", "retention")
    assert refused.returncode == 2 and "--all" in refused.stderr
    # When a dry run selects by service, Then nothing is removed
    dry = cli(broker_url, "dlq", "purge", "--service", "eRecept", "--why", "x", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would be purged") == 2
    assert dlq_depth(broker_url) == 4
    # When one is purged by id and the others by code
    one = cli(broker_url, "dlq", "purge", rx[0], "--why", "duplicate of a paper prescription",
              "--who", "ops-anna")
    by_code = cli(broker_url, "dlq", "purge", "--code", "BIZ-001", "--why", "HIS resubmitted",
                  "--who", "ops-anna")
    assert one.returncode == 0 and by_code.returncode == 0, one.stdout + by_code.stdout
    # Then exactly those are gone
    assert {r["message_id"] for r in listed(broker_url)} == {rx[1], ev}
    # and retention (--older-than) removes nothing younger
    keep = cli(broker_url, "dlq", "purge", "--older-than", "30d", "--why", "retention")
    assert keep.returncode == 0 and "0 purged" in keep.stdout
    assert dlq_depth(broker_url) == 2
    # and a purged message's story says who purged it and why
    story = cli(broker_url, "audit", rx[0])
    assert story.returncode == 0, story.stderr
    assert "purged" in story.stdout and "ops-anna" in story.stdout
    assert "duplicate of a paper prescription" in story.stdout
    assert cli(broker_url, "audit", bad).returncode == 0
    # and a purge of an unknown id says so
    missing = cli(broker_url, "dlq", "purge", "no-such-id", "--why", "x")
    assert missing.returncode == 1 and "not found no-such-id" in missing.stdout
