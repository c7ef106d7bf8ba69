"""Tenants: a request may have its replies sent only to its publisher's own keys (no broker).

The publisher is the AMQP user_id, which RabbitMQ validates; here it is set on ``Incoming`` the
way ``workers/broker.py`` sets it from a delivery. The real broker's side (403s, a forged
user_id refused) is in tests/integration/test_tenants.py.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pika
import pytest
from pydantic import ValidationError

from schemas.replies import Accepted, Rejected
from schemas.wire import H_CODE, H_MESSAGE_ID, H_REASON, INTERACTIVE_QUEUE
from tests import samples
from workers.middleware.audit import MemoryAuditLog
from workers.broker import wrap_delivery
from workers.errors import ServiceUnavailable
from workers.client.fakes import FakeEeszt
from workers.outbox import MemoryOutbox, plain_user
from workers.pipeline import Incoming, Pipeline, internal_error
from workers.retry import RetryPolicy
from workers.runtime import Runtime
from workers.settings import WorkerSettings
from schemas.replies import GW_TENANT
from workers.tenants import refusal
from tests.bridges import logged_in
from workers.logins.tokens import TokenManager

FAST = RetryPolicy(call_attempts=1, call_wait_min_s=0.001, call_wait_max_s=0.002)


def make(tenants: str = "his-users"):
    fake = FakeEeszt()
    outbox, audit = MemoryOutbox(), MemoryAuditLog()
    tokens = TokenManager(sts=fake)
    logged_in(tokens, fake, "O10001")  # the doctor logged in at the workstation, before
    fake.sts_calls.clear()
    pipeline = Pipeline(client=fake, tokens=tokens, outbox=outbox, institution="H100200",
                        policy=FAST, audit=audit, tenants=tenants)
    return fake, outbox, audit, pipeline


def request_to(reply_to: str | None):
    return samples.prescription().model_copy(update={"reply_to": reply_to})


def delivery(request, user_id: str | None, **kw) -> Incoming:
    return Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE,
                    message_type=request.message_type, user_id=user_id, **kw)


# --- the rule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, user_id, reply_to, allowed", [
    ("his-users", "his-medsol", "his.medsol", True),
    ("his-users", "his-medsol", "his.medsol.ward-3", True),
    ("his-users", "his-medsol", None, True),               # no replies asked: nothing to misroute
    ("his-users", "his-medsol", "his.other", False),
    ("his-users", "his-medsol", "his.medsolx", False),     # a prefix is not a namespace
    ("his-users", "his-medsol", "his", False),
    ("his-users", "his-medsol", "audit.medsol", False),
    ("his-users", "his-a.b", "his.a.b", False),            # dots would nest namespaces
    ("his-users", "his-", "his.", False),
    ("his-users", None, "his.other", True),                # unknown publisher: only strict refuses
    ("his-users", "guest", "his.other", True),             # operator / the gateway's own user
    ("strict", None, "his.medsol", False),
    ("strict", "", None, False),
    ("strict", "eeszt-worker", "his.medsol", True),
    ("strict", "his-medsol", "his.medsol", True),
    ("strict", "his-medsol", "his.other", False),
    ("off", "his-medsol", "his.other", True),
    ("off", None, "his.other", True),
])
def test_reply_to_belongs_to_the_his_user_that_published(mode, user_id, reply_to, allowed):
    assert (refusal(mode, user_id, reply_to) is None) is allowed


def test_the_reason_names_the_field_the_his_and_what_would_be_allowed():
    why = refusal("his-users", "his-medsol", "his.b")
    assert why is not None and why.own_key == "his.medsol"
    assert why.reason == ("reply_to his.b is not HIS medsol's: it must be his.medsol or "
                          "his.medsol.*")
    anonymous = refusal("strict", None, "his.b")
    assert anonymous is not None and anonymous.own_key is None and "user_id" in anonymous.reason


# --- the pipeline -------------------------------------------------------------------------------
def test_a_foreign_reply_to_is_not_sent_to_eeszt_nor_answered_there_and_goes_to_the_dlq():
    fake, outbox, audit, p = make()
    request = request_to("his.b")
    assert p.handle(delivery(request, "his-a")) == "refused"
    assert fake.submits == 0 and sum(fake.sts_calls.values()) == 0
    assert outbox.replies.get("his.b", []) == []
    (body, headers), = outbox.dead
    assert body == request.to_json() and headers[H_CODE] == GW_TENANT
    assert headers[H_MESSAGE_ID] == str(request.message_id)
    assert "reply_to his.b is not HIS a's: it must be his.a or his.a.*" in headers[H_REASON]
    assert "his-a" in headers[H_REASON]
    # the sender hears why, on its own key
    (told,) = outbox.replies["his.a"]
    assert isinstance(told, Rejected) and told.code == GW_TENANT and told.field == "reply_to"
    assert told.message_id == request.message_id and "his.b" in told.reason
    kinds = [e.event.value for e in audit.story(str(request.message_id))]
    assert kinds == ["received", "dead_lettered"]
    assert GW_TENANT in audit.story(str(request.message_id))[-1].detail


def test_the_refusal_log_masks_a_taj_hidden_in_the_reply_to(caplog):
    _, _, _, p = make()
    with caplog.at_level("WARNING", logger="eeszt_gw.pipeline"):
        assert p.handle(delivery(request_to(f"his.b.{samples.TAJ}"), "his-a")) == "refused"
    assert "refused message" in caplog.text and "his-a" in caplog.text
    assert samples.TAJ not in caplog.text and samples.TAJ[-3:] in caplog.text


def test_own_keys_pass_and_the_worker_goes_on_after_a_refusal():
    fake, outbox, _, p = make()
    assert p.handle(delivery(request_to("his.b"), "his-a")) == "refused"
    assert p.handle(delivery(request_to("his.a"), "his-a")) == "accepted"
    assert p.handle(delivery(request_to("his.a.ward-3"), "his-a")) == "accepted"
    assert p.handle(delivery(request_to(None), "his-a")) == "accepted"
    assert fake.submits == 3
    assert [type(r) for r in outbox.replies["his.a.ward-3"]] == [Accepted]


def test_his_users_mode_lets_an_unnamed_publisher_through_and_strict_does_not():
    fake, outbox, _, lenient = make("his-users")
    assert lenient.handle(delivery(request_to("his.b"), None)) == "accepted"
    fake, outbox, _, strict = make("strict")
    assert strict.handle(delivery(request_to("his.b"), None)) == "refused"
    assert fake.submits == 0 and not outbox.all_replies()  # nobody to tell: the DLQ is all
    (_, headers), = outbox.dead
    assert headers[H_CODE] == GW_TENANT and "no user_id" in headers[H_REASON]
    # a copy the gateway republished itself (retry, park, login wait) carries its own user
    assert strict.handle(delivery(request_to("his.b"), "eeszt-worker")) == "accepted"


def test_off_mode_checks_nothing():
    fake, outbox, _, p = make("off")
    assert p.handle(delivery(request_to("his.b"), "his-a")) == "accepted"
    assert len(outbox.replies["his.b"]) == 1


def test_an_invalid_message_with_a_foreign_reply_to_is_not_rejected_there_either():
    fake, outbox, _, p = make()
    data = json.loads(request_to("his.b").to_json())
    data["payload"]["taj"] = "123456780"  # wrong check digit
    body = json.dumps(data).encode()
    assert p.handle(Incoming(body=body, queue=INTERACTIVE_QUEUE, user_id="his-a")) == "refused"
    assert outbox.replies.get("his.b", []) == []
    (kept, headers), = outbox.dead
    assert kept == body and headers[H_CODE] == GW_TENANT
    assert "payload.taj" in headers[H_REASON]  # and why it was invalid, for the operator
    (told,) = outbox.replies["his.a"]
    assert told.field == "reply_to" and str(told.message_id) == data["message_id"]
    # the same invalid message with its own key is rejected there, as before
    data["reply_to"] = "his.a"
    assert p.handle(Incoming(body=json.dumps(data).encode(), queue=INTERACTIVE_QUEUE,
                             user_id="his-a")) == "rejected"
    assert outbox.replies["his.a"][-1].field == "payload.taj"


def test_a_retried_request_keeps_being_answered_at_its_own_key():
    fake, outbox, _, p = make("strict")
    fake.script.append(ServiceUnavailable("outage", service="eRecept"))
    request = request_to("his.a")
    assert p.handle(delivery(request, "his-a")) == "retrying"
    queue, body, headers, _ = outbox.retries[0]
    # RabbitOutbox stamps its own broker user on the copy (plain_user); the body is unchanged
    copy = Incoming(body=body, queue=queue, headers=headers, user_id="guest")
    assert p.handle(copy) == "accepted"
    assert [r.kind for r in outbox.replies["his.a"]] == ["status", "accepted"]


def test_a_bug_does_not_make_the_gateway_answer_at_a_foreign_key():
    _, outbox, _, p = make()
    msg = delivery(request_to("his.b"), "his-a")
    internal_error(p, msg, RuntimeError("boom"))
    assert outbox.replies.get("his.b", []) == [] and len(outbox.dead) == 1
    internal_error(p, delivery(request_to("his.a"), "his-a"), RuntimeError("boom"))
    assert [r.kind for r in outbox.replies["his.a"]] == ["failed"]


# --- plumbing: delivery -> worker, settings, outbox, dead-letter replay ---------------------
def test_the_delivery_user_id_reaches_the_pipeline():
    fake, outbox, _, p = make()
    runtime = Runtime(broker=None, pipeline=p, client=fake, tokens=p.tokens, outbox=outbox,
                      share=None)
    request = request_to("his.b")
    for user_id, expected_dead in ((None, 0), ("his-a", 1)):
        message = wrap_delivery(queue=INTERACTIVE_QUEUE, body=request.to_json(),
                                routing_key=request.message_type, user_id=user_id)
        runtime.handle(*message.args)
        assert len(outbox.dead) == expected_dead


def test_worker_setting_default_env_and_bad_value(monkeypatch):
    monkeypatch.delenv("EESZT_TENANTS", raising=False)
    assert WorkerSettings().tenants == "his-users"
    monkeypatch.setenv("EESZT_TENANTS", "strict")
    assert WorkerSettings().tenants == "strict"
    with pytest.raises(ValidationError):
        WorkerSettings(tenants="everyone")
    with pytest.raises(ValueError, match="tenants"):
        make("everyone")


def test_the_outbox_republishes_as_its_own_broker_user():
    url = "amqp://eeszt-worker:pw@broker:5672/%2F"
    assert plain_user(pika.URLParameters(url)) == "eeszt-worker"
    assert plain_user(pika.URLParameters("amqp://his%2Dx:pw@broker/")) == "his-x"


def test_a_dead_letter_refused_for_its_reply_to_is_not_replayed():
    from eeszt_gw.ops.dead_letters import DeadLetter
    from eeszt_gw.ops.dlq import replay_problem

    request = request_to("his.b")
    props = pika.BasicProperties(message_id=str(request.message_id), delivery_mode=2)
    dl = DeadLetter(1, request.to_json(), props, {"eeszt-type": request.message_type,
                                                  H_CODE: GW_TENANT})
    assert "another HIS" in replay_problem(dl, datetime.now(timezone.utc))
    dl.headers[H_CODE] = "GW-FAILED"
    assert replay_problem(dl, datetime.now(timezone.utc)) is None


def test_reply_listener_explains_404_and_403():
    from producers.replies import _refusal

    missing = pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'his.a.replies'")
    text = _refusal("his.a.replies", missing, declared=False)
    assert "'his.a.replies'" in text and "404" in text and "does not exist" in text
    refused = pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - access to queue")
    assert "403" in _refusal("his.b.replies", refused, declared=False)
    assert "--no-declare" in _refusal("his.b.replies", refused, declared=True)


def test_wrap_delivery_meta_carries_the_user_id_only_as_given():
    m = wrap_delivery(queue=INTERACTIVE_QUEUE, body=b"{}", user_id="his-a")
    assert m.args[1]["user_id"] == "his-a"
    assert base64.b64decode(m.args[0]) == b"{}"
    assert wrap_delivery(queue=INTERACTIVE_QUEUE, body=b"{}").args[1]["user_id"] is None
