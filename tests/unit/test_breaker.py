"""Circuit breaking: an outage parks requests durably, a probe closes it, the backlog goes back."""

from __future__ import annotations

import threading
import time

import pytest

from schemas.replies import Accepted, StatusUpdate
from schemas.wire import H_AMBIGUOUS, H_PARKED, INTERACTIVE_QUEUE
from tests import samples
from workers.breaker import Breakers, CircuitBreaker
from workers.client.fakes import FakeEeszt
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from tests.bridges import logged_in
from workers.logins.tokens import TokenManager


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


def make(observer=None):
    fake = FakeEeszt()
    outbox = MemoryOutbox()
    redelivered: list[Incoming] = []
    outbox.on_retry = lambda q, body, headers, delay, mid: redelivered.append(
        Incoming(body=body, queue=q, headers=headers))
    breakers = Breakers(failure_threshold=2, probe_interval_s=60)
    breakers.on_close = lambda service: outbox.release_parked(service, INTERACTIVE_QUEUE, rate_per_s=0)
    tokens = TokenManager(sts=fake)
    logged_in(tokens, fake, "O10001")  # the doctor logged in at the workstation
    pipeline = Pipeline(client=fake, tokens=tokens, outbox=outbox,
        institution="H100200", breakers=breakers, observer=observer,
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


# --- what `eeszt-gw status` is told -------------------------------------------------------------
def test_snapshot_reports_state_since_when_failures_and_the_last_probe():
    t, wall = [0.0], [1_000.0]
    b = CircuitBreaker("eht", failure_threshold=2, clock=lambda: t[0], wall=lambda: wall[0])
    # Given a new breaker: closed since its creation
    assert b.snapshot() == {"service": "eht", "state": "closed", "since": 1_000.0, "failures": 0,
                            "openings": 0, "last_probe_at": None}
    # When it fails once, then still closed since then, one failure in a row
    wall[0] = 1_010.0
    b.record_failure()
    assert (b.snapshot()["state"], b.snapshot()["since"], b.snapshot()["failures"]) == (
        "closed", 1_000.0, 1)
    # When it opens, then open since the opening
    wall[0] = 1_020.0
    b.record_failure()
    snap = b.snapshot()
    assert (snap["state"], snap["since"], snap["openings"]) == ("open", 1_020.0, 1)
    # When a probe is due and in flight, then it is half-open, and requests still see it open
    t[0], wall[0] = 11.0, 1_031.0
    assert b.probe_due(10)
    b.probing = True
    assert b.snapshot()["state"] == "half-open" and b.is_open
    assert b.snapshot()["last_probe_at"] == 1_031.0 and b.snapshot()["since"] == 1_020.0
    # When the probe answers, then closed since then
    b.probing = False
    wall[0] = 1_032.0
    assert b.record_success()
    snap = b.snapshot()
    assert (snap["state"], snap["since"], snap["failures"]) == ("closed", 1_032.0, 0)


def test_the_prober_shows_half_open_while_its_probe_is_in_flight():
    entered, answer = threading.Event(), threading.Event()
    closed: list[str] = []

    def probe(service: str) -> bool:
        entered.set()
        assert answer.wait(10)
        return True

    breakers = Breakers(failure_threshold=1, probe_interval_s=0.05, probe=probe,
                        on_close=closed.append)
    breakers.get("eBeutalo")  # seen, never failed
    breakers.get("eRecept").record_failure()
    breakers.start()
    try:
        assert entered.wait(10), "no probe was sent"
        states = {s["service"]: s["state"] for s in breakers.snapshot()}
        assert states == {"eBeutalo": "closed", "eRecept": "half-open"}
        answer.set()
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closed == ["eRecept"]
        assert {s["service"]: s["state"] for s in breakers.snapshot()} == {
            "eBeutalo": "closed", "eRecept": "closed"}
    finally:
        answer.set()
        breakers.stop()


def test_an_outage_shows_in_the_status_answer_and_needs_attention():
    from prometheus_client import CollectorRegistry

    from eeszt_gw.ops.status import attention, circuits, exit_code
    from workers.middleware.control import ControlResponder
    from workers.middleware.metrics import MetricsObserver

    # Given a worker process whose pipeline counts outcomes in its metrics
    observer = MetricsObserver(CollectorRegistry())
    fake, outbox, pipeline, breakers, _ = make(observer)
    responder = ControlResponder("amqp://guest:guest@127.0.0.1:1/%2F", in_flight=list,
                                 breakers=lambda: breakers.snapshot(observer.parked_counts()))
    # When eRecept is down and five prescriptions come (two open the circuit, the rest is parked)
    fake.unavailable(4)
    for _ in range(5):
        pipeline.handle(Incoming(body=samples.prescription().to_json(), queue=INTERACTIVE_QUEUE))
    answer = responder.answer({"op": "status"})
    # Then the process reports the circuit open, with what it parked
    (erecept,) = [b for b in answer["breakers"] if b["service"] == "eRecept"]
    assert (erecept["state"], erecept["openings"], erecept["parked"]) == ("open", 1, 4)
    assert erecept["since"] == pytest.approx(time.time(), abs=60)
    # And `eeszt-gw status` lists it first and needs attention (exit code 1)
    now = time.time() + 90
    healthy_worker = {"pid": 2, "host": "gw-2", "breakers": [
        {"service": "eRecept", "state": "closed", "since": now - 900}]}
    listed = circuits([healthy_worker, answer], now)
    assert [(c["service"], c["state"], c["pid"]) for c in listed] == [
        ("eRecept", "open", answer["pid"]), ("eRecept", "closed", 2)]
    assert listed[0]["for_s"] == pytest.approx(90, abs=5)
    report = {"dead_letters": {"total": 0}, "totals": {"over_time_limit": 0, "parked": 0},
              "certificates": [], "time_limit_s": 600, "circuits": listed}
    (line,) = attention(report)
    assert line.startswith("circuit of eRecept open in 1 worker process(es) for up to 9")
    assert "eeszt.parked.eRecept" in line
    assert exit_code({**report, "healthy": not attention(report)}) == 1
    # When the service answers again, then the circuit is closed and nothing needs attention
    assert breakers.get("eRecept").record_success()
    answer = responder.answer({"op": "status"})
    assert {b["service"]: b["state"] for b in answer["breakers"]} == {"eRecept": "closed"}
    assert attention({**report, "circuits": circuits([answer], time.time())}) == []


def test_a_failure_of_a_call_that_began_before_the_last_answer_does_not_count():
    """64 calls in flight: some stuck behind a burst fail together just after others were
    answered. Those failures say less than the newer answer, so they must not open the
    circuit; failures of calls begun after the last answer do."""
    t = [0.0]
    b = CircuitBreaker("esemenyKatalogus", failure_threshold=3, clock=lambda: t[0])
    stuck_since = t[0]
    t[0] = 1.0
    b.record_success()  # another thread's call was answered
    t[0] = 5.0
    for _ in range(10):  # the calls begun at 0 s time out now
        b.record_failure("TLS handshake timed out", started=stuck_since)
    assert not b.is_open and b.failures == 0 and b.stale_failures == 10
    for _ in range(3):  # calls begun after the answer, failing: a real outage
        b.record_failure("refused", started=t[0])
    assert b.is_open and b.openings == 1


def test_the_opening_is_logged_with_the_last_failure_reason(caplog):
    b = CircuitBreaker("eRecept", failure_threshold=2)
    with caplog.at_level("WARNING", logger="eeszt_gw.breaker"):
        b.record_failure("could not connect to https://eeszt/services/eRecept: refused")
        b.record_failure("could not connect to https://eeszt/services/eRecept: refused")
    assert b.is_open
    assert "2 failures in a row" in caplog.text and "refused" in caplog.text


def test_the_opening_log_masks_a_taj_in_the_reason(caplog):
    b = CircuitBreaker("eRecept", failure_threshold=1)
    with caplog.at_level("WARNING", logger="eeszt_gw.breaker"):
        b.record_failure("eRecept: SRV-001 while storing taj 123456788")
    assert b.is_open and "123456788" not in caplog.text and "788" in caplog.text
