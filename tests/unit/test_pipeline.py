"""The pipeline with an in-memory EESZT and outbox: every outcome, without a broker."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from schemas.replies import Accepted, Failed, Rejected, StatusUpdate
from schemas.wire import H_AMBIGUOUS, H_ATTEMPT, H_CODE, H_STATUS_SENT, INTERACTIVE_QUEUE
from tests import samples
from workers.errors import ServiceRejected
from workers.client.fakes import FakeEeszt
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from workers.logins.tokens import TokenManager
from tests.bridges import FakeBridges, finals, logged_in

FAST = RetryPolicy(call_attempts=3, call_wait_min_s=0.001, call_wait_max_s=0.002)


def make(fake: FakeEeszt | None = None, *, doctors=("O10001", "O10002"), bridges=False, **kw):
    """O10001 and O10002 have logged in at their workstations; with ``bridges``, a doctor
    without a token logs in through a (fake) card bridge, and the 4th item handles what the
    login releases."""
    fake = fake or FakeEeszt()
    outbox = MemoryOutbox()
    tokens = TokenManager(sts=fake)
    logged_in(tokens, fake, *doctors)
    fb = FakeBridges(fake=fake, tokens=tokens, outbox=outbox) if bridges else None
    pipeline = Pipeline(client=fake, tokens=tokens, outbox=outbox, institution="H100200",
                        policy=kw.pop("policy", FAST), logins=fb.logins if fb else None, **kw)
    if fb is not None:
        fb.pipeline = pipeline
        return fake, outbox, pipeline, fb
    return fake, outbox, pipeline


def incoming(request, **kw) -> Incoming:
    return Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE,
                    message_type=request.message_type, **kw)


def test_accepted_request_gets_one_accepted_reply():
    fake, outbox, p = make()
    request = samples.prescription()
    assert p.handle(incoming(request)) == "accepted"
    (reply,) = outbox.replies["his.demo"]
    assert isinstance(reply, Accepted) and reply.message_id == request.message_id
    assert reply.idempotency_key == request.idempotency_key
    assert reply.eeszt_id == fake.records[0][2]


def test_invalid_field_is_rejected_naming_it_when_there_is_a_reply_address():
    fake, outbox, p = make()
    data = json.loads(samples.prescription().to_json())
    data["payload"]["taj"] = "123456780"
    assert p.handle(Incoming(body=json.dumps(data).encode(), queue=INTERACTIVE_QUEUE)) == "rejected"
    (reply,) = outbox.replies["his.demo"]
    assert isinstance(reply, Rejected) and reply.field == "payload.taj"
    assert "check digit" in reply.reason and fake.submits == 0


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00garbage", b"[]",
                                  json.dumps({"payload": {"type": "erecept.submit"}}).encode()])
def test_garbage_without_reply_address_goes_to_the_dead_letter_queue(body):
    fake, outbox, p = make()
    assert p.handle(Incoming(body=body, queue=INTERACTIVE_QUEUE)) == "dead-lettered"
    (kept, headers), = outbox.dead
    assert kept == body and headers[H_CODE] == "GW-VALIDATION"
    assert fake.submits == 0 and not outbox.all_replies()


def test_institution_acting_on_erecept_is_rejected_before_reaching_eeszt():
    fake, outbox, p = make()
    request = samples.prescription().model_copy(
        update={"acting": samples.event_start().acting})
    assert p.handle(incoming(request)) == "rejected"
    (reply,) = outbox.replies["his.demo"]
    assert (reply.code, reply.field) == ("AUTHZ-001", "acting") and fake.submits == 0


def test_other_institution_is_rejected():
    fake, outbox, p = make()
    request = samples.prescription().model_copy(update={"institution": "H999999"})
    p.handle(incoming(request))
    assert outbox.replies["his.demo"][0].code == "GW-INSTITUTION"


def test_business_rejection_is_passed_through_and_not_retried():
    fake, outbox, p = make()
    fake.script.append(ServiceRejected("no prescription has this id", code="BIZ-001",
                                       field="prescriptionId"))
    p.handle(incoming(samples.prescription()))
    (reply,) = outbox.replies["his.demo"]
    assert (reply.code, reply.field) == ("BIZ-001", "prescriptionId")
    assert fake.submits == 1 and not outbox.retries


def test_transient_failure_retries_in_call_then_parks_in_the_broker_once():
    fake, outbox, p = make()
    fake.unavailable(3)  # all three in-call attempts fail
    request = samples.prescription()
    assert p.handle(incoming(request)) == "retrying"
    assert fake.submits == 3
    (queue, body, headers, delay), = outbox.retries
    assert queue == INTERACTIVE_QUEUE and headers[H_ATTEMPT] == 1 and 0 < delay < 2
    (status,) = outbox.replies["his.demo"]
    assert isinstance(status, StatusUpdate) and status.state == "retrying"
    # The retried delivery fails again: a second park, but no second "retrying" status.
    fake.unavailable(3)
    assert p.handle(Incoming(body=body, queue=queue, headers=headers)) == "retrying"
    assert len(outbox.retries) == 2 and outbox.retries[1][2][H_ATTEMPT] == 2
    assert outbox.retries[1][2][H_STATUS_SENT] == "retrying"
    assert len(outbox.replies["his.demo"]) == 1
    # Third delivery succeeds.
    assert p.handle(Incoming(body=body, queue=queue, headers=outbox.retries[1][2])) == "accepted"
    assert isinstance(outbox.replies["his.demo"][-1], Accepted)
    assert len(fake.records) == 1


def test_retry_that_would_pass_the_deadline_fails_and_keeps_the_message():
    fake, outbox, p = make()
    fake.unavailable(3)
    now = datetime.now(timezone.utc)
    request = samples.prescription().model_copy(update={"deadline": now + timedelta(milliseconds=300)})
    assert p.handle(incoming(request)) == "failed"
    reply = outbox.replies["his.demo"][-1]
    assert isinstance(reply, Failed) and "deadline" in reply.reason and "eeszt.dlq" in reply.kept_in
    assert len(outbox.dead) == 1


def test_request_past_its_deadline_is_not_sent():
    fake, outbox, p = make()
    created = datetime.now(timezone.utc) - timedelta(hours=2)
    request = samples.prescription().model_copy(
        update={"created_at": created, "deadline": created + timedelta(hours=1)})
    assert p.handle(incoming(request)) == "failed" and fake.submits == 0


def test_expired_token_is_refreshed_once_and_the_request_goes_through():
    fake, outbox, p, bridges = make(doctors=("O10001",), bridges=True)
    p.handle(incoming(samples.prescription()))
    fake.expire_all_tokens()
    # A doctor's token is renewed only by the doctor: one login at the workstation.
    assert p.handle(incoming(samples.prescription())) == "waiting"
    bridges.drain(10, until=lambda: len(finals(outbox)) >= 2)
    assert bridges.outcomes == ["accepted"] and len(bridges.challenges) == 1
    assert fake.sts_calls["eszig"] == 2


def test_ambiguous_outcome_is_resolved_by_query_not_by_resending():
    fake, outbox, p = make()  # naive duplicates: a blind resend would store twice
    fake.script.append("ambiguous")
    assert p.handle(incoming(samples.prescription())) == "accepted"
    assert len(fake.records) == 1 and fake.repeated_keys() == 0


def test_redelivered_request_waits_for_its_twin_then_is_not_sent_again():
    fake, outbox, p = make()
    request = samples.prescription()
    p.handle(incoming(request))
    # The broker redelivers it (its first delivery may still be finishing elsewhere): it waits.
    assert p.handle(incoming(request, redelivered=True)) == "deferred"
    (queue, body, headers, delay), = outbox.retries
    assert p.handle(Incoming(body=body, queue=queue, headers=headers)) == "accepted"
    assert fake.submits == 1 and fake.repeated_keys() == 0
    first, second = outbox.replies["his.demo"]
    assert first.eeszt_id == second.eeszt_id and first.message_id == second.message_id


def test_ambiguous_flag_from_an_earlier_attempt_makes_the_worker_ask_first():
    fake, outbox, p = make()
    request = samples.prescription()
    p.handle(incoming(request))
    p.handle(incoming(request, headers={H_AMBIGUOUS: 1}))
    assert fake.submits == 1


def test_doctor_without_a_login_route_is_rejected_naming_the_user():
    fake, outbox, p = make()
    p.handle(incoming(samples.prescription(user_id="O10009")))
    reply = outbox.replies["his.demo"][0]
    assert (reply.code, reply.field) == ("GW-LOGIN", "acting.user_id")


def test_one_token_per_doctor_for_many_concurrent_requests():
    fake, outbox, p, bridges = make(doctors=(), bridges=True)
    requests = [samples.prescription(user_id=f"O1000{i % 10}") for i in range(1000)]
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda r: p.handle(incoming(r)), requests))
    assert set(outcomes) <= {"accepted", "waiting"}
    # the waiting ones go through once their doctor has logged in at the workstation
    bridges.drain(60, until=lambda: len(finals(outbox)) >= 1000)
    outcomes = [o for o in outcomes if o != "waiting"] + bridges.outcomes
    assert outcomes.count("accepted") == 1000
    assert fake.sts_calls["eszig"] == 10 and len(bridges.challenges) == 10


def test_logs_carry_no_taj(caplog):
    fake, outbox, p = make()
    caplog.set_level(logging.DEBUG)
    request = samples.prescription().model_copy(update={"acting": samples.event_start().acting})
    p.handle(incoming(request))
    assert caplog.records and samples.TAJ not in caplog.text


def test_a_republished_twin_waits_then_asks_and_never_duplicates():
    from schemas.wire import H_REPUBLISHED

    fake, outbox, p = make()  # naive: a second send would be a second record
    request = samples.prescription()
    original = incoming(request)
    twin = incoming(request, headers={H_REPUBLISHED: 1})
    assert p.handle(twin) == "deferred" and fake.submits == 0
    (queue, body, headers, delay), = outbox.retries
    assert headers[H_AMBIGUOUS] == 1 and delay == p.republish_delay_s
    assert p.handle(original) == "accepted"  # the twin ahead of it in the queue
    assert p.handle(Incoming(body=body, queue=queue, headers=headers)) == "accepted"
    assert len(fake.records) == 1 and fake.submits == 1


def test_two_copies_that_must_ask_first_never_both_send():
    """A redelivered original and a second retry-queue copy (the outbox published it again when
    its confirm was lost in a broker restart) come back at the same moment: without the
    request's lock both ask, both hear "not there", and both send."""
    fake, outbox, p = make()
    fake.duplicates = "naive"  # a service that stores a request sent twice twice
    request = samples.prescription()
    both_asking = threading.Barrier(2, timeout=1)
    asked = fake.query
    asked_alone: list[str] = []

    def slow_query(service, key, assertion):
        try:
            both_asking.wait()  # only passed by both copies if nothing serialises them
        except threading.BrokenBarrierError:  # the other copy never came to ask
            asked_alone.append(key)
        return asked(service, key, assertion)

    fake.query = slow_query
    copies = [incoming(request, redelivered=True, headers={H_AMBIGUOUS: 1}),
              incoming(request, headers={H_AMBIGUOUS: 1})]
    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(p.handle, copies))
    assert outcomes == ["accepted", "deferred"]
    assert fake.submits == 1 and fake.repeated_keys() == 0
    assert asked_alone == [request.idempotency_key]  # one copy asked, and it asked alone
    # the deferred copy comes back, asks, finds the record and does not send
    (queue, body, headers, _delay), = outbox.retries
    assert p.handle(Incoming(body=body, queue=queue, headers=headers)) == "accepted"
    assert fake.submits == 1 and fake.repeated_keys() == 0


def test_a_copy_that_finds_the_request_locked_is_deferred_without_asking():
    fake, outbox, p = make()
    request = samples.prescription()
    with outbox.key_lock(request.institution, "eRecept", request.idempotency_key) as held:
        assert held
        assert p.handle(incoming(request, headers={H_AMBIGUOUS: 1})) == "deferred"
        assert fake.submits == 0
    (queue, body, headers, _delay), = outbox.retries
    assert headers.get(H_AMBIGUOUS)
    assert p.handle(Incoming(body=body, queue=queue, headers=headers)) == "accepted"
    assert fake.submits == 1
