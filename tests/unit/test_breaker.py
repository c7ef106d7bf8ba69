"""Circuit breaking: an outage parks requests durably, a probe closes it, the backlog goes back."""

from __future__ import annotations

from schemas.replies import Accepted, StatusUpdate
from schemas.wire import H_AMBIGUOUS, H_PARKED, INTERACTIVE_QUEUE
from tests import samples
from workers.breaker import Breakers, CircuitBreaker
from workers.fakes import FakeEeszt
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from workers.tokens import Credential, TokenManager


def test_breaker_opens_after_the_threshold_and_closes_on_success():
    t = [0.0]
    b = CircuitBreaker("eRecept", failure_threshold=3, clock=lambda: t[0])
    b.record_failure()
    b.record_failure()
    assert not b.is_open
    b.record_failure()
    assert b.is_open and b.openings == 1
    assert not b.probe_due(10)  # just opened
    t[0] = 11
    assert b.probe_due(10) and not b.probe_due(10)  # one probe per interval
    assert b.record_success() and not b.is_open


def make():
    fake = FakeEeszt(passwords={"O10001": "pw"})
    outbox = MemoryOutbox()
    redelivered: list[Incoming] = []
    outbox.on_retry = lambda q, body, headers, delay, mid: redelivered.append(
        Incoming(body=body, queue=q, headers=headers))
    breakers = Breakers(failure_threshold=2, probe_interval_s=60)
    breakers.on_close = lambda service: outbox.release_parked(service, INTERACTIVE_QUEUE, rate_per_s=0)
    pipeline = Pipeline(client=fake, tokens=TokenManager(sts=fake, credentials={
        "O10001": Credential(user_id="O10001", password="pw")}), outbox=outbox,
        institution="H100200", breakers=breakers,
        policy=RetryPolicy(call_attempts=2, call_wait_min_s=0.001, call_wait_max_s=0.002))
    return fake, outbox, pipeline, breakers, redelivered


def test_an_outage_parks_requests_without_sending_them_and_tells_the_his_once():
    fake, outbox, pipeline, breakers, redelivered = make()
    fake.unavailable(4)  # two requests x two in-call attempts
    outcomes = [pipeline.handle(Incoming(body=samples.prescription().to_json(), queue=INTERACTIVE_QUEUE))
                for _ in range(2)]
    assert outcomes == ["retrying", "parked"] and breakers.get("eRecept").is_open
    submits = fake.submits
    for _ in range(5):
        assert pipeline.handle(Incoming(body=samples.prescription().to_json(),
                                        queue=INTERACTIVE_QUEUE)) == "parked"
    assert fake.submits == submits, "nothing is sent while the circuit is open"
    parked = outbox.parked["eRecept"]
    assert len(parked) == 6 and all(h[H_PARKED] for _, _, h, _ in parked)
    statuses = [r for r in outbox.replies["his.demo"] if isinstance(r, StatusUpdate) and r.state == "parked"]
    assert len(statuses) == 6  # one per parked request
    # Parking an already-parked request again does not repeat the status.
    _, body, headers, _ = parked[0]
    pipeline.handle(Incoming(body=body, queue=INTERACTIVE_QUEUE, headers=headers))
    assert len([r for r in outbox.replies["his.demo"] if getattr(r, "state", "") == "parked"]) == 6


def test_service_back_closes_the_circuit_and_releases_the_backlog_exactly_once():
    fake, outbox, pipeline, breakers, redelivered = make()
    fake.unavailable(4)
    for _ in range(5):
        pipeline.handle(Incoming(body=samples.prescription().to_json(), queue=INTERACTIVE_QUEUE))
    assert breakers.get("eRecept").is_open
    # The prober's answer: the service is back.
    assert breakers.get("eRecept").record_success()
    breakers.closed("eRecept")
    assert not outbox.parked.get("eRecept")
    parked_again = [m for m in redelivered if m.headers.get(H_PARKED)]
    for m in parked_again:
        assert m.headers.get(H_AMBIGUOUS) in (None, 1)
        assert pipeline.handle(m) == "accepted"
    accepted = {r.message_id for r in outbox.replies["his.demo"] if isinstance(r, Accepted)}
    assert len(fake.records) == len(accepted) and fake.repeated_keys() == 0
