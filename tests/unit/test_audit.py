"""The audit trail without a broker: masking, the event model, the in-memory log, and how the
RabbitMQ writer behaves when it cannot reach a broker (bounded, never raises, never blocks)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eeszt_gw.config import UsageError
from eeszt_gw.ops.when import parse_when
from schemas.audit import AuditEvent, AuditKind, AuditStep, mask_text
from tests.samples import TAJ
from workers.middleware.audit import (
    MemoryAuditLog,
    RabbitAuditLog,
    StreamRetention,
    audit_event,
    decode_batch,
    encode_batch,
)

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def event(**kw) -> AuditEvent:
    fields = dict(message_id="m-1", event=AuditKind.RECEIVED, at=NOW, actor="worker pid 1 on h")
    return AuditEvent(**{**fields, **kw})


# --- mask_text ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    (f"taj {TAJ} rejected", f"taj ******{TAJ[-3:]} rejected"),
    ("123 456 789 and 123-456-789", "******789 and ******789"),
    (f"a{TAJ}b", f"a******{TAJ[-3:]}b"),
    ("epoch ms 1795681463123 and 12345678", "epoch ms 1795681463123 and 12345678"),
    ("no digits", "no digits"),
])
def test_mask_text_masks_every_taj_and_nothing_else(text, expected):
    # Given a text, When it is masked, Then every 9-digit run keeps only its last 3 digits
    assert mask_text(text) == expected


def test_mask_text_is_idempotent():
    once = mask_text(f"{TAJ} {TAJ}")
    assert mask_text(once) == once
    assert TAJ not in once


# --- AuditEvent ---------------------------------------------------------------------------------
def test_event_masks_its_detail_so_no_taj_can_be_stored():
    # Given a detail with a raw TAJ, When an event is built, Then the stored detail is masked
    e = event(detail=f"rejected: TAJ {TAJ} has a wrong check digit")
    assert TAJ not in e.detail and f"******{TAJ[-3:]}" in e.detail
    # and also after a JSON round trip
    assert TAJ not in e.model_dump_json()
    assert AuditEvent.model_validate_json(e.model_dump_json()) == e


def test_event_refuses_a_naive_time_and_an_unknown_kind():
    with pytest.raises(ValidationError):
        event(at=datetime(2026, 11, 26, 8, 0))
    with pytest.raises(ValidationError):
        event(event="teleported")


def test_event_is_frozen():
    e = event()
    with pytest.raises(ValidationError):
        e.detail = f"{TAJ}"  # type: ignore[misc]


def test_audit_event_helper_fills_time_and_actor():
    before = datetime.now(timezone.utc)
    e = audit_event("retried", message_id="m-9", idempotency_key="rx-1", service="eRecept",
                    attempt=2, detail="SRV-001 outage")
    assert e.event is AuditKind.RETRIED and e.attempt == 2
    assert before <= e.at <= datetime.now(timezone.utc)
    assert e.actor.startswith("worker pid ") and " on " in e.actor
    assert audit_event(AuditKind.REPLAYED, message_id="m-9", actor="ops-anna").actor == "ops-anna"


# --- AuditStep: the workers' event, the same JSON as the model ---------------------------------------
_text = st.text(alphabet=st.sampled_from("0123456789 -aé\"\\\n\u2028{}"), max_size=40) | \
    st.builds(lambda a, b: f"{a} {TAJ} {b}", st.text(max_size=8), st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(message_id=_text, key=_text, service=_text, detail=_text, actor=_text,
       kind=st.sampled_from(list(AuditKind)), attempt=st.none() | st.integers(0, 10**6),
       at=st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=1)),
                                                   timezone(timedelta(hours=-3, minutes=-30))])))
def test_a_step_writes_the_json_of_the_event_it_stands_for(message_id, key, service, detail,
                                                           actor, kind, attempt, at):
    fields = dict(message_id=message_id, idempotency_key=key, service=service, event=kind, at=at,
                  actor=actor, attempt=attempt, detail=detail)
    step, model = AuditStep(**fields), AuditEvent(**fields)
    assert step.to_json() == model.model_dump_json()
    assert step.to_event() == model == AuditEvent.model_validate_json(step.to_json())
    assert TAJ not in step.detail + step.actor


def test_a_step_masks_and_refuses_what_the_model_refuses():
    step = AuditStep(message_id="m", event=AuditKind.FAILED, at=NOW, actor=f"ops {TAJ}",
                     detail=f"taj {TAJ}")
    assert TAJ not in step.detail and TAJ not in step.actor and step.detail.endswith(TAJ[-3:])
    with pytest.raises(ValueError, match="at: .*timezone-aware"):
        AuditStep(message_id="m", event=AuditKind.FAILED, at=datetime(2026, 1, 1), actor="a")
    with pytest.raises(TypeError, match="event: 'failed' is not an AuditKind"):
        AuditStep(message_id="m", event="failed", at=NOW, actor="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        audit_event("teleported", message_id="m")


def test_memory_log_and_batches_take_steps_as_events():
    step = audit_event("answered", message_id="m-2", idempotency_key="rx-2", detail=f"t {TAJ}")
    log = MemoryAuditLog()
    log.record(step)
    assert log.events == [step.to_event()] and isinstance(log.events[0], AuditEvent)
    assert list(decode_batch(encode_batch([step, event()]))) == [step.to_event(), event()]
    # the step keeps its detail as given and masks it on the way out: nothing unmasked leaves
    assert TAJ not in step.detail and TAJ.encode() not in encode_batch([step])
    assert TAJ not in step.to_json() and TAJ not in step.to_event().detail and TAJ not in repr(step)


def test_batches_are_json_lines_and_a_bad_line_is_skipped():
    events = [event(attempt=i) for i in range(3)]
    body = encode_batch(events)
    assert body.count(b"\n") == 3
    assert list(decode_batch(body + b"not json\n\n")) == events


# --- MemoryAuditLog -----------------------------------------------------------------------------
def test_memory_log_keeps_the_order_and_tells_one_story():
    log = MemoryAuditLog()
    log.record(event(message_id="a", event=AuditKind.RECEIVED))
    log.record(event(message_id="b", idempotency_key="rx-b", event=AuditKind.RECEIVED))
    log.record(event(message_id="a", event=AuditKind.ANSWERED))
    assert [e.event for e in log.story("a")] == [AuditKind.RECEIVED, AuditKind.ANSWERED]
    assert [e.message_id for e in log.story("rx-b")] == ["b"]


def test_memory_log_is_thread_safe():
    log = MemoryAuditLog()

    def write(n: int) -> None:
        for i in range(500):
            log.record(event(message_id=f"t{n}", attempt=i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.events) == 4000
    assert [e.attempt for e in log.story("t3")] == list(range(500))


# --- RabbitAuditLog without a broker ---------------------------------------------------------
def test_rabbit_log_without_a_broker_never_blocks_nor_raises_and_keeps_a_bounded_buffer():
    # Given a writer whose broker refuses connections, with room for 10 events
    log = RabbitAuditLog("amqp://guest:guest@127.0.0.1:1/%2F", max_buffer=10,
                         flush_interval_s=30)
    try:
        # When 25 events are recorded
        started = time.monotonic()
        for i in range(25):
            log.record(event(attempt=i))
        # Then recording took no I/O time, the 15 oldest were dropped and counted
        assert time.monotonic() - started < 0.5
        assert log.dropped == 15
        assert log.pending == 10
        assert log.flush(timeout_s=0.3) is False
    finally:
        started = time.monotonic()
        log.close(timeout_s=0.5)
    # and close() gives up within its timeout, counting what it could not write
    assert time.monotonic() - started < 5
    assert log.dropped == 25


def test_stream_retention_defaults_and_validation(monkeypatch):
    assert StreamRetention().arguments() == {"x-queue-type": "stream", "x-max-age": "30D",
                                             "x-max-length-bytes": 5_000_000_000}
    monkeypatch.setenv("EESZT_AUDIT_MAX_AGE", "90D")
    assert StreamRetention().max_age == "90D"
    with pytest.raises(ValidationError):
        StreamRetention(max_age="30 days")


# --- time flags shared by `audit` and `dlq` ------------------------------------------------------
def test_parse_when_reads_durations_and_iso_times():
    assert parse_when("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_when("30d", now=NOW) == NOW - timedelta(days=30)
    assert parse_when("15m", now=NOW) == NOW - timedelta(minutes=15)
    assert parse_when("2026-11-26T08:00:00Z") == NOW
    assert parse_when("2026-11-26T08:00:00") == NOW  # naive means UTC
    with pytest.raises(UsageError):
        parse_when("yesterday")


# --- dead-letter helpers (eeszt_gw.ops.dlq, eeszt_gw.ops.dead_letters) without a broker ------------------
def dead(request, *, age_s: int = 60, **headers):
    import pika

    from eeszt_gw.ops.dead_letters import DeadLetter

    props = pika.BasicProperties(message_id=str(request.message_id), delivery_mode=2,
                                 timestamp=int(NOW.timestamp()) - age_s)
    base = {"eeszt-type": request.message_type, "eeszt-message-id": str(request.message_id),
            "eeszt-idempotency-key": request.idempotency_key}
    return DeadLetter(1, request.to_json(), props, {**base, **headers})


def test_a_dead_letter_is_replayable_even_past_its_deadline_but_not_a_reply():
    from eeszt_gw.ops.dlq import replay_problem
    from tests import samples

    fresh = samples.prescription()
    assert replay_problem(dead(fresh), NOW - timedelta(days=1000)) is None
    # A past deadline is no obstacle: the worker gives a replayed request a day from the replay
    assert replay_problem(dead(fresh), fresh.deadline + timedelta(seconds=1)) is None
    # but an undeliverable reply is not a request
    assert "reply" in replay_problem(dead(fresh, **{"eeszt-kind": "accepted"}), NOW)


def test_a_replayed_request_past_its_deadline_is_sent_not_failed():
    from schemas.wire import H_REPLAYED, H_REPLAYED_AT
    from tests import samples
    from workers.client.fakes import FakeEeszt
    from workers.outbox import MemoryOutbox
    from workers.pipeline import Incoming, Pipeline
    from workers.logins.tokens import TokenManager

    fake = FakeEeszt()
    outbox = MemoryOutbox()
    p = Pipeline(client=fake, tokens=TokenManager(sts=fake), outbox=outbox, institution="H100200")
    created = datetime.now(timezone.utc) - timedelta(days=3)
    old = samples.event_start().model_copy(update={"created_at": created,
                                                   "deadline": created + timedelta(days=1)})
    headers = {H_REPLAYED: "ops", H_REPLAYED_AT: int(datetime.now(timezone.utc).timestamp() * 1000),
               "eeszt-ambiguous": 1}
    assert p.handle(Incoming(body=old.to_json(), queue="eeszt.batch", headers=headers)) == "accepted"
    assert len(fake.records) == 1


def test_selector_and_show_work_on_the_headers_and_mask_the_taj():
    from eeszt_gw.ops.dead_letters import Selector, render, summary
    from tests import samples

    dl = dead(samples.event_start(), age_s=3 * 86400, **{
        "eeszt-reason": f"rejected: TAJ {TAJ}", "eeszt-code": "BIZ-001"})
    assert dl.service == "esemenyKatalogus" and dl.message_type == "event.start"
    assert Selector(service="ESEMENYKATALOGUS", code="biz-001", reason="taj").matches(dl)
    assert not Selector(service="eRecept").matches(dl)
    assert Selector(until=NOW - timedelta(days=2)).matches(dl)
    assert not Selector(since=NOW - timedelta(days=2)).matches(dl)
    assert summary(dl, NOW)["age"] == "3d"
    assert TAJ not in summary(dl, NOW)["reason"]
    shown = render(dl, NOW)
    assert TAJ not in shown and f"******{TAJ[-3:]}" in shown and '"event_id": "CASE-1"' in shown
