"""One login per doctor for many waiting requests, with the in-memory login backend."""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.card import CardAnswer
from schemas.replies import Accepted, Failed, StatusUpdate
from schemas.wire import INTERACTIVE_QUEUE
from tests import samples
from workers.client.fakes import FakeEeszt
from workers.logins.coordinator import (
    LoginCoordinator,
    challenge_id_key,
    challenge_sent_at,
    new_challenge_id,
)
from workers.logins.backends import MemoryLoginBackend
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from workers.logins.tokens import TokenManager


class Harness:
    """Pipeline + coordinator + memory backend; a fake bridge answers challenges."""

    def __init__(self, answer=None, window_s: float = 30.0):
        self.fake = FakeEeszt()
        self.outbox = MemoryOutbox()
        self.tokens = TokenManager(sts=self.fake)
        self.work: queue.Queue = queue.Queue()
        self.answer = answer or (lambda ch: {"outcome": "rid", "rid_package": f"rid:{ch.user_id}"})
        self.backend = MemoryLoginBackend(
            requeue=lambda q, body, headers, mid: self.work.put(Incoming(body=body, queue=q, headers=headers)),
            deliver_challenge=self._bridge, deliver_event=lambda body: self.logins.on_event(body, {}),
            window_s=window_s)
        self.logins = LoginCoordinator(backend=self.backend, eeszt=self.fake, tokens=self.tokens,
                                       outbox=self.outbox, challenge_key=Ed25519PrivateKey.generate(),
                                       institution="H100200")
        self.pipeline = Pipeline(client=self.fake, tokens=self.tokens, outbox=self.outbox,
                                 institution="H100200", logins=self.logins,
                                 policy=RetryPolicy(call_wait_min_s=0.001, call_wait_max_s=0.002))
        self.challenges = []

    def _bridge(self, challenge) -> bool:
        self.challenges.append(challenge)
        fields = self.answer(challenge)
        if fields is False:
            return False  # no card bridge listens at this workstation
        if fields is None:
            return True  # nobody answers

        def later():
            time.sleep(0.05)
            answer = CardAnswer(challenge_id=challenge.challenge_id, user_id=challenge.user_id,
                                workstation=challenge.workstation, at=datetime.now(timezone.utc),
                                **fields)
            self.logins.on_event(answer.model_dump_json().encode(), {})

        threading.Thread(target=later, daemon=True).start()
        return True

    def drain(self, seconds: float = 2.0, until=None) -> None:
        """Handle requeued requests for ``seconds``, or until ``until()`` is true (a bound,
        not a timing: a loaded machine just takes longer)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            try:
                self.pipeline.handle(self.work.get(timeout=0.1))
            except queue.Empty:
                pass


def requests_for(user: str, n: int, **update):
    return [samples.prescription(user_id=user).model_copy(update=update) for _ in range(n)]


def test_twenty_requests_one_challenge_one_login():
    h = Harness()
    for r in requests_for("O10003", 20):
        assert h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE)) == "waiting"
    h.drain(30, until=lambda: sum(isinstance(r, Accepted)
                                  for r in h.outbox.replies.get("his.demo", [])) >= 20)
    h.drain(0.5)  # and nothing more happens (no second challenge, no second login)
    replies = h.outbox.replies["his.demo"]
    accepted = [r for r in replies if isinstance(r, Accepted)]
    waiting = [r for r in replies if isinstance(r, StatusUpdate) and r.state == "waiting_for_login"]
    assert len(accepted) == 20 and len(waiting) == 20
    assert len(h.challenges) == 1 and h.fake.sts_calls["eszig"] == 1
    assert h.fake.sts_calls["eid_package"] == 1 and len(h.fake.records) == 20


def test_wrong_pin_is_reported_with_tries_left_and_the_doctor_is_asked_again():
    answers = iter([{"outcome": "error", "error": "wrong_pin", "tries_left": 2},
                    {"outcome": "error", "error": "wrong_pin", "tries_left": 1}])
    h = Harness(answer=lambda ch: next(answers, {"outcome": "rid", "rid_package": f"rid:{ch.user_id}"}))
    (r,) = requests_for("O10004", 1)
    h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE))
    h.drain()
    details = [x.detail for x in h.outbox.replies["his.demo"] if isinstance(x, StatusUpdate)]
    assert any("2 tries left" in d for d in details) and any("1 try left" in d for d in details)
    assert len(h.challenges) == 3
    assert isinstance(h.outbox.replies["his.demo"][-1], Accepted)


def test_blocked_pin_says_how_to_unblock_and_the_request_fails_at_its_deadline():
    h = Harness(answer=lambda ch: {"outcome": "error", "error": "pin_blocked", "tries_left": 0})
    now = datetime.now(timezone.utc)
    (r,) = requests_for("O10005", 1, deadline=now + timedelta(seconds=1))
    h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE))
    h.drain(2.5)
    replies = h.outbox.replies["his.demo"]
    assert any("PUK" in x.detail for x in replies if isinstance(x, StatusUpdate))
    assert len(h.challenges) == 1  # a blocked PIN is not asked again
    final = replies[-1]
    assert isinstance(final, Failed) and "login not completed" in final.reason


def test_login_window_expiry_tells_the_his():
    h = Harness(answer=lambda ch: None, window_s=0.3)
    (r,) = requests_for("O10006", 1)
    h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE))
    h.drain(1.0)
    details = [x.detail for x in h.outbox.replies["his.demo"] if isinstance(x, StatusUpdate)]
    assert any("not completed in time" in d for d in details)


def test_a_mobiltoken_workstation_answers_with_an_rid_and_no_code_reaches_the_worker():
    # Given a workstation whose bridge logs doctors in with MobilToken (the bridge's setting),
    h = Harness(answer=lambda ch: {"outcome": "rid", "rid_package": f"rid:{ch.user_id}",
                                   "method": "mobiltoken"})
    (r,) = requests_for("O10007", 1)
    # When a request of its doctor comes,
    h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE))
    h.drain(5, until=lambda: isinstance((h.outbox.replies.get("his.demo") or [None])[-1], Accepted))
    # then the challenge carried an eID package like any other, the worker redeemed an rID, and
    # counted a MobilToken login.
    assert h.challenges[0].eid_package == "package:O10007:WS-01"
    assert h.fake.sts_calls["eszig"] == 1 and h.fake.sts_calls["mobiltoken"] == 0
    assert h.tokens.stats["logins_by_method:mobiltoken"] == 1
    assert isinstance(h.outbox.replies["his.demo"][-1], Accepted)


def test_while_the_markers_node_is_down_a_fresh_answer_logs_in_and_a_stale_one_does_not():
    # Given a login in progress whose marker queue is on a node that is down: nobody can tell
    # whether the login is still pending (the backend answers None).
    h = Harness(answer=lambda ch: None)  # the doctor answers by hand below
    (r,) = requests_for("O10007", 1)
    assert h.pipeline.handle(Incoming(body=r.to_json(), queue=INTERACTIVE_QUEUE)) == "waiting"
    (challenge,) = h.challenges
    h.backend.pending = lambda user_id: None
    user, ws = challenge.user_id, challenge.workstation

    def answer(challenge_id) -> bytes:
        return CardAnswer(challenge_id=challenge_id, user_id=user, workstation=ws,
                          at=datetime.now(timezone.utc), outcome="rid",
                          rid_package=f"rid:{user}").model_dump_json().encode()

    # an answer to a genuine challenge of this gateway, sent longer ago than a challenge lives,
    stale = new_challenge_id(challenge_id_key(h.logins.key), user, ws,
                             now=time.time() - h.logins.challenge_ttl.total_seconds() - 5)
    h.logins.on_event(answer(stale), {})
    assert h.fake.sts_calls["eszig"] == 0  # is ignored;
    # the answer to the challenge sent just now logs the doctor in, and the request goes.
    assert challenge_sent_at(challenge.challenge_id) == pytest.approx(time.time(), abs=5)
    h.logins.on_event(answer(challenge.challenge_id), {})
    assert h.fake.sts_calls["eszig"] == 1
    h.drain(10, until=lambda: any(isinstance(x, Accepted) for x in h.outbox.replies["his.demo"]))
    assert isinstance(h.outbox.replies["his.demo"][-1], Accepted)
