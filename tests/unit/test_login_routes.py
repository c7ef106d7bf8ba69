"""Doctors log in only at their workstation: what the worker does with answers and with no route.

The login runs in memory (:class:`tests.bridges.FakeBridges`); the checks on the gateway's own
code (no doctor secret in its settings, no OTP library, no users file) read the source.
"""

from __future__ import annotations

import ast
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.card import CardAnswer
from schemas.replies import Accepted, Rejected, StatusUpdate
from schemas.wire import H_AMBIGUOUS, INTERACTIVE_QUEUE
from tests import samples
from tests.bridges import FakeBridges, finals
from workers.client.fakes import FakeEeszt
from workers.logins.coordinator import (
    challenge_id_key,
    challenge_sent_at,
    challenged,
    new_challenge_id,
)
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from workers.settings import WorkerSettings
from workers.logins.tokens import TokenManager, doctor_identity

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(call_attempts=1, call_wait_min_s=0.001, call_wait_max_s=0.002)


def harness(answer=None, **kw) -> FakeBridges:
    fake, outbox = FakeEeszt(), MemoryOutbox()
    tokens = TokenManager(sts=fake)
    bridges = FakeBridges(fake=fake, tokens=tokens, outbox=outbox, answer=answer, **kw)
    bridges.pipeline = Pipeline(client=fake, tokens=tokens, outbox=outbox, institution="H100200",
                                policy=FAST, logins=bridges.logins)
    return bridges


def at(user: str, workstation: str):
    request = samples.prescription(user_id=user)
    return request.model_copy(update={"acting": samples.doctor(user, workstation)})


def handle(bridges: FakeBridges, request) -> str:
    return bridges.pipeline.handle(Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE,
                                            message_type=request.message_type))


def answer_json(user: str, workstation: str, challenge_id=None, **fields) -> bytes:
    return CardAnswer(challenge_id=challenge_id or uuid.uuid4(), user_id=user,
                      workstation=workstation, at=datetime.now(timezone.utc),
                      **fields).model_dump_json().encode()


# --- answers from the wrong place change nothing ---------------------------------------------------
@pytest.mark.parametrize("fields", [{"outcome": "error", "error": "refused"},
                                    {"outcome": "rid", "rid_package": "rid:O10002"}],
                         ids=["refused", "rid"])
def test_an_answer_from_another_workstations_bridge_changes_nothing(fields):
    # Given O10002 waiting for a login at WS-02, whose bridge has not answered yet,
    bridges = harness(answer=lambda ch: None)
    assert handle(bridges, at("O10002", "WS-02")) == "waiting"
    sent_before = list(bridges.outbox.replies["his.demo"])
    sts_before = dict(bridges.fake.sts_calls)
    # When WS-01's bridge answers O10002's challenge (refused, or even with an rID),
    challenge_id = bridges.challenges[0].challenge_id
    bridges.logins.on_event(answer_json("O10002", "WS-01", challenge_id, **fields), {})
    # then nothing happened: no status to the HIS, no login started or ended, no token.
    assert bridges.outbox.replies["his.demo"] == sent_before
    assert dict(bridges.fake.sts_calls) == sts_before and len(bridges.challenges) == 1
    assert bridges.backend.pending("O10002")
    assert bridges.tokens.usable(doctor_identity("O10002")) is None


def test_a_bridge_user_answers_only_for_its_own_workstation():
    # Given O10002 waiting for a login at WS-02,
    bridges = harness(answer=lambda ch: None)
    handle(bridges, at("O10002", "WS-02"))
    rid = {"outcome": "rid", "rid_package": "rid:O10002",
           "challenge_id": bridges.challenges[0].challenge_id}
    # When WS-01's broker user sends an answer that claims to come from WS-02,
    bridges.logins.on_event(answer_json("O10002", "WS-02", **rid), {}, user_id="bridge-WS-01")
    # then it is ignored (RabbitMQ vouches for the user, not for the body);
    assert bridges.tokens.usable(doctor_identity("O10002")) is None
    assert bridges.fake.sts_calls["eszig"] == 0
    # and when WS-02's own user answers, the doctor is logged in.
    bridges.logins.on_event(answer_json("O10002", "WS-02", **rid), {}, user_id="bridge-WS-02")
    assert bridges.tokens.usable(doctor_identity("O10002")) is not None


@pytest.mark.parametrize("event", ["sweep", "window-expired"])
def test_a_bridge_cannot_end_or_expire_another_doctors_login(event):
    # Given O10002 waiting for a login at WS-02,
    bridges = harness(answer=lambda ch: None)
    handle(bridges, at("O10002", "WS-02"))
    sent_before = list(bridges.outbox.replies["his.demo"])
    # When WS-01's bridge publishes the workers' own login event for O10002,
    body = json.dumps({"event": event, "user_id": "O10002"}).encode()
    bridges.logins.on_event(body, {}, user_id="bridge-WS-01")
    # then the login is still pending and the HIS was told nothing;
    assert bridges.backend.pending("O10002")
    assert bridges.outbox.replies["his.demo"] == sent_before
    # and with --bridge-users, an event without the workers' own user is ignored as well.
    bridges.logins.bridge_users = True
    bridges.outbox.user_id = "eeszt-worker"
    bridges.logins.on_event(body, {}, user_id=None)
    assert bridges.backend.pending("O10002")
    # (the workers' own event still ends it)
    bridges.logins.on_event(json.dumps({"event": "sweep", "user_id": "O10002"}).encode(), {},
                            user_id="eeszt-worker")
    assert not bridges.backend.pending("O10002")


def test_with_bridge_users_required_a_shared_user_cannot_answer():
    bridges = harness(answer=lambda ch: None)
    bridges.logins.bridge_users = True
    handle(bridges, at("O10002", "WS-02"))
    rid = {"outcome": "rid", "rid_package": "rid:O10002",
           "challenge_id": bridges.challenges[0].challenge_id}
    bridges.logins.on_event(answer_json("O10002", "WS-02", **rid), {}, user_id="guest")
    bridges.logins.on_event(answer_json("O10002", "WS-02", **rid), {})
    assert bridges.tokens.usable(doctor_identity("O10002")) is None
    assert bridges.fake.sts_calls["eszig"] == 0
    bridges.logins.on_event(answer_json("O10002", "WS-02", **rid), {}, user_id="bridge-WS-02")
    assert bridges.tokens.usable(doctor_identity("O10002")) is not None


def test_an_answer_to_a_challenge_the_gateway_did_not_send_is_ignored():
    # Given O10003 waiting for a login at WS-03,
    bridges = harness(answer=lambda ch: None)
    handle(bridges, at("O10003", "WS-03"))
    # When an answer from WS-03 names a challenge id the gateway never issued,
    bridges.logins.on_event(answer_json("O10003", "WS-03", outcome="rid",
                                        rid_package="rid:O10003"), {})
    # then it is ignored;
    assert bridges.fake.sts_calls["eszig"] == 0
    assert bridges.tokens.usable(doctor_identity("O10003")) is None
    # and the genuine one logs the doctor in.
    bridges.logins.on_event(answer_json("O10003", "WS-03", bridges.challenges[0].challenge_id,
                                        outcome="rid", rid_package="rid:O10003"), {})
    assert bridges.tokens.usable(doctor_identity("O10003")) is not None


def test_a_challenge_id_is_bound_to_its_doctor_and_workstation():
    key = challenge_id_key(Ed25519PrivateKey.generate())
    cid = new_challenge_id(key, "O10001", "WS-01", now=1_800_000_000)
    assert challenged(key, cid, "O10001", "WS-01")
    assert not challenged(key, cid, "O10001", "WS-02")
    assert not challenged(key, cid, "O10002", "WS-01")
    other_gateway = challenge_id_key(Ed25519PrivateKey.generate())
    assert not challenged(other_gateway, cid, "O10001", "WS-01")
    assert new_challenge_id(key, "O10001", "WS-01", now=1_800_000_000) != cid
    assert challenge_sent_at(cid) == 1_800_000_000


def test_a_login_whose_challenge_died_with_its_process_is_asked_again_by_a_returning_copy():
    # Given a doctor's login begun by a worker process that died before its challenge went out,
    bridges = harness()
    assert bridges.backend.begin("O10007", marker=b'{"event": "window-expired"}')
    # When a new request of the doctor comes, it only waits (a login is pending);
    assert handle(bridges, at("O10007", "WS-07")) == "waiting" and bridges.challenges == []
    # but when the dead process's request comes back (redelivered, then flagged ambiguous),
    request = at("O10007", "WS-07")
    outcome = bridges.pipeline.handle(Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE,
                                               headers={H_AMBIGUOUS: 1}))
    # then the workstation is asked again, once, and every waiting request goes through.
    assert outcome == "waiting" and len(bridges.challenges) == 1
    bridges.drain(10, until=lambda: len(finals(bridges.outbox)) >= 2)
    assert [type(r) for r in finals(bridges.outbox)] == [Accepted, Accepted]
    assert len(bridges.challenges) == 1


# --- no route: a clear, final GW-LOGIN -------------------------------------------------------------
def test_a_workstation_without_a_card_bridge_gets_a_final_gw_login_naming_it():
    # Given a workstation where no card bridge listens,
    bridges = harness(answer=lambda ch: {"outcome": "rid", "rid_package": f"rid:{ch.user_id}"})
    bridges.backend.deliver_challenge = lambda ch: False
    # When three requests of a doctor sitting there come,
    outcomes = [handle(bridges, at("O10004", "WS-09")) for _ in range(3)]
    # then each is rejected at once with GW-LOGIN, naming the workstation and what to do,
    replies = bridges.outbox.replies["his.demo"]
    assert outcomes == ["rejected"] * 3 and len(replies) == 3
    for reply in replies:
        assert isinstance(reply, Rejected) and (reply.code, reply.field) == (
            "GW-LOGIN", "acting.workstation")
        assert "WS-09" in reply.reason and "card bridge" in reply.reason
    # with no "waiting" status first, nothing left waiting and no login pending.
    assert not any(isinstance(r, StatusUpdate) for r in replies)
    assert bridges.backend.waiting("O10004") == [] and not bridges.backend.pending("O10004")


def test_requests_from_another_workstation_move_back_and_log_in_there():
    # Given a doctor with a request waiting at WS-02 (its bridge has not answered yet),
    asked: list[str] = []
    bridges = harness(answer=lambda ch: (asked.append(ch.workstation) or None))
    assert handle(bridges, at("O10005", "WS-02")) == "waiting"
    # When a later login of that doctor goes to WS-09, where nobody listens,
    bridges.logins.backend.end("O10005")
    bridges.backend.deliver_challenge = lambda ch: (asked.append(ch.workstation), False)[1]
    assert handle(bridges, at("O10005", "WS-09")) == "rejected"
    # then the WS-02 request is not rejected: it went back to its work queue.
    rejected = [r for r in finals(bridges.outbox) if isinstance(r, Rejected)]
    assert len(rejected) == 1 and "WS-09" in rejected[0].reason
    assert bridges.work.qsize() == 1 and asked == ["WS-02", "WS-09"]


def test_a_doctor_request_without_a_workstation_is_a_gw_login_rejection():
    bridges = harness()
    data = json.loads(samples.prescription(user_id="O10001").to_json())
    del data["acting"]["workstation"]
    outcome = bridges.pipeline.handle(Incoming(body=json.dumps(data).encode(),
                                               queue=INTERACTIVE_QUEUE))
    (reply,) = bridges.outbox.replies["his.demo"]
    assert outcome == "rejected" and isinstance(reply, Rejected)
    assert (reply.code, reply.field) == ("GW-LOGIN", "acting.workstation")
    assert "workstation" in reply.reason and "card bridge" in reply.reason
    assert bridges.challenges == []


def test_without_interactive_logins_a_doctor_is_rejected_with_gw_login():
    fake, outbox = FakeEeszt(), MemoryOutbox()
    tokens = TokenManager(sts=fake, interactive_logins=False)
    pipeline = Pipeline(client=fake, tokens=tokens, outbox=outbox, institution="H100200",
                        policy=FAST)
    request = samples.prescription(user_id="O10001")
    pipeline.handle(Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE))
    (reply,) = outbox.replies["his.demo"]
    assert (reply.code, reply.field) == ("GW-LOGIN", "acting.user_id")
    assert "card bridge" in reply.reason and sum(fake.sts_calls.values()) == 0


def test_a_released_request_goes_through_after_the_login():
    bridges = harness()
    assert handle(bridges, at("O10006", "WS-06")) == "waiting"
    bridges.drain(10, until=lambda: finals(bridges.outbox))
    assert [type(r) for r in finals(bridges.outbox)] == [Accepted]


# --- nothing on the gateway's side ----------------------------------------------------------------
SECRET_WORDS = ("password", "passwd", "totp", "otp", "credential", "secret", "pin", "mobiltoken")


def test_worker_settings_have_no_doctor_credential_field():
    names = [n.lower() for n in WorkerSettings.model_fields]
    assert not [n for n in names if any(w in n.split("_") or w in n for w in SECRET_WORDS)], names
    # (the challenge key signs challenges, token_key encrypts shared tokens: neither is a
    # doctor's; both are named for what they are)
    assert {"challenge_key", "token_key"} <= set(names)


OTP_LIBRARIES = {"pyotp", "onetimepass", "otp", "mintotp", "oath"}
#: names and strings that would read a doctor's credential
FORBIDDEN_NAMES = {"totp_secret", "credentials_file", "load_credentials", "Credential"}
FORBIDDEN_STRINGS = ("users.json", "totp_secret")


def credential_readers(tree: ast.AST, where: str) -> list[str]:
    """What in ``tree`` imports an OTP library, names a doctor credential, or logs a doctor in
    with a secret (a password or one-time code login)."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OTP_LIBRARIES:
                    problems.append(f"{where}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in OTP_LIBRARIES:
                problems.append(f"{where}:{node.lineno} imports from {node.module}")
            problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                         if a.name in FORBIDDEN_NAMES]
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in FORBIDDEN_NAMES:
                problems.append(f"{where}:{node.lineno} uses {name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(s in node.value for s in FORBIDDEN_STRINGS):
                problems.append(f"{where}:{node.lineno} names {node.value!r}")
        elif isinstance(node, ast.Call):
            method = next((k.value.value for k in node.keywords if k.arg == "method"
                           and isinstance(k.value, ast.Constant)), None)
            if method in ("password", "mobiltoken"):
                problems.append(f"{where}:{node.lineno} logs in with method {method}")
    return problems


def test_no_gateway_module_imports_an_otp_library_or_reads_a_doctor_credential():
    modules = sorted(p for d in ("workers", "producers") for p in (ROOT / d).rglob("*.py"))
    assert len(modules) > 20
    problems = [problem for path in modules for problem in credential_readers(
        ast.parse(path.read_text(), filename=str(path)), str(path.relative_to(ROOT)))]
    assert problems == []


def test_the_ast_check_would_catch_a_credential_reader():
    # The walk above is only worth something if it flags what it looks for.
    source = ("import pyotp\nfrom workers.logins.tokens import Credential\n"
              "code = pyotp.TOTP(cred.totp_secret).now()\n"
              "sts.issue_token(method='password', user_id=u)\nopen('pki/users.json')\n")
    problems = credential_readers(ast.parse(source), "x.py")
    assert sorted(p.split(" ", 1)[0] for p in problems) == ["x.py:1", "x.py:2", "x.py:3", "x.py:4",
                                                      "x.py:5"], problems
