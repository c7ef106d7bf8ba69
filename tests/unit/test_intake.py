"""Ambiguous input is refused, not guessed: deep nesting, duplicate keys, a created_at in the
future, and AMQP facts (message_id property, eeszt-type header, routing key) that contradict
the body. Each refusal is a GW-VALIDATION reply naming the field, or (without a reply address)
a dead letter with the original bytes; the worker goes on with the next message.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas.envelope import MAX_CLOCK_SKEW, RequestEnvelope
from schemas.replies import Accepted, Rejected, describe_validation_error
from schemas.strict_json import MAX_DEPTH, read_object, too_deep, top_level_strings
from schemas.wire import (BATCH_QUEUE, H_CODE, H_TYPE, INTERACTIVE_QUEUE, REQUESTS_EXCHANGE,
                          UNROUTED_EXCHANGE)
from tests import samples
from workers.broker import wrap_delivery
from workers.client.fakes import FakeEeszt
from workers.intake import NIL, Incoming, Invalid, read, salvage
from workers.outbox import MemoryOutbox
from workers.pipeline import Pipeline
from workers.logins.tokens import TokenManager

REPLY_TO = "his.demo"


def event(**update) -> RequestEnvelope:
    """A valid care event (the institution acts: no doctor's login needed) with a reply address."""
    return samples.event_start().model_copy(update={"reply_to": REPLY_TO, **update})


def body_of(request: RequestEnvelope) -> str:
    return request.to_json().decode()


def with_extra(text: str, raw: str) -> str:
    """``text`` (a JSON object) with ``raw`` inserted as its last member."""
    return text[:-1] + "," + raw + "}"


def make():
    fake = FakeEeszt()
    outbox = MemoryOutbox()
    pipeline = Pipeline(client=fake, tokens=TokenManager(sts=fake), outbox=outbox,
                        institution="H100200")
    return fake, outbox, pipeline


def delivery(body: bytes | str, **kw) -> Incoming:
    data = body.encode() if isinstance(body, str) else body
    return Incoming(body=data, queue=kw.pop("queue", BATCH_QUEUE), **kw)


def only_rejection(outbox: MemoryOutbox) -> Rejected:
    (reply,) = outbox.replies[REPLY_TO]
    assert isinstance(reply, Rejected) and reply.code == "GW-VALIDATION"
    return reply


DEEP = "[" * 5000 + "]" * 5000


# --- 1. nesting ------------------------------------------------------------------------------
def test_both_parsers_fail_on_5000_levels_differently_and_the_scan_refuses_first():
    # Given a request with a 5,000-deep array in an unknown field
    text = with_extra(body_of(event()), f'"x":{DEEP}')
    # Then the standard library's parser would raise RecursionError, pydantic's its own error
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(ValidationError) as pyd:
        RequestEnvelope.model_validate_json(text)
    assert "recursion limit" in str(pyd.value)
    # and the strict reader refuses before either parser, naming the body and the limit
    with pytest.raises(ValidationError) as strict:
        RequestEnvelope.from_json(text)
    problem = describe_validation_error(strict.value)
    assert problem.field == "body" and f"deeper than {MAX_DEPTH}" in problem.reason
    # and the never-raising reader of the operator tools says why
    assert read_object(text.encode()) == (None, f"JSON nested deeper than {MAX_DEPTH} levels")


def test_depth_scan_counts_only_real_nesting():
    # Brackets inside strings (escaped quotes too) are no nesting; the limit itself is allowed
    assert not too_deep('{"a": "' + "[" * 100 + '\\"{{{{"}')
    assert not too_deep("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert too_deep("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    # and a request with many items is not mistaken for a deep one
    assert RequestEnvelope.from_json(samples.prescription().to_json()).payload.items


def test_a_5000_deep_request_gets_a_validation_reply_not_an_internal_error():
    fake, outbox, p = make()
    request = event()
    # When the body nests 5,000 levels (the reply address comes after the deep part)
    text = '{"x":' + DEEP + "," + body_of(request)[1:]
    assert p.handle(delivery(text)) == "rejected"
    # Then the HIS hears why, correlated with its message_id, and nothing was sent
    reply = only_rejection(outbox)
    assert reply.field == "body" and "deeper than" in reply.reason
    assert reply.message_id == request.message_id and reply.message_type == "event.start"
    assert fake.submits == 0 and not outbox.dead


def test_a_deep_body_without_reply_address_is_kept_with_a_validation_code():
    fake, outbox, p = make()
    text = with_extra(body_of(samples.event_start()), f'"x":{DEEP}')
    assert p.handle(delivery(text)) == "dead-lettered"
    (kept, headers), = outbox.dead
    assert kept == text.encode() and headers[H_CODE] == "GW-VALIDATION"
    assert "deeper than" in headers["eeszt-reason"] and not outbox.all_replies()


# --- 2. created_at ---------------------------------------------------------------------------
def test_created_at_a_year_ahead_is_refused_naming_the_field():
    fake, outbox, p = make()
    ahead = datetime.now(timezone.utc) + timedelta(days=365)
    request = event(created_at=ahead, deadline=ahead + timedelta(days=1))
    assert p.handle(delivery(request.to_json())) == "rejected"
    reply = only_rejection(outbox)
    assert reply.field == "created_at" and "ahead of the gateway's clock" in reply.reason
    assert fake.submits == 0


def test_created_at_within_the_skew_is_accepted_and_the_worker_clock_decides():
    fake, outbox, p = make()
    soon = datetime.now(timezone.utc) + MAX_CLOCK_SKEW - timedelta(minutes=1)
    assert p.handle(delivery(event(created_at=soon).to_json())) == "accepted"
    assert isinstance(outbox.replies[REPLY_TO][0], Accepted)
    # and the same body read with a clock 10 minutes behind is refused
    with pytest.raises(ValidationError) as exc:
        RequestEnvelope.from_json(event(created_at=soon).to_json(),
                                  now=datetime.now(timezone.utc) - timedelta(minutes=10))
    assert describe_validation_error(exc.value).field == "created_at"


# --- 3. message_id property ------------------------------------------------------------------
def test_message_id_property_that_differs_from_the_body_is_refused():
    fake, outbox, p = make()
    request = event()
    other = "0e924869-2bd9-49f8-837a-0966d6512b2a"
    assert p.handle(delivery(request.to_json(), message_id=other)) == "rejected"
    reply = only_rejection(outbox)
    assert reply.field == "message_id" and other in reply.reason
    assert str(request.message_id) in reply.reason and reply.message_id == request.message_id
    assert fake.submits == 0


def test_message_id_property_equal_to_the_body_in_any_case_is_accepted():
    fake, outbox, p = make()
    request = event()
    upper = str(request.message_id).upper()
    assert p.handle(delivery(request.to_json(), message_id=upper)) == "accepted"


# --- 4. duplicate keys -----------------------------------------------------------------------
@pytest.mark.parametrize("where, field", [("top", "institution"), ("payload", "payload.taj")])
def test_duplicate_key_is_refused_naming_its_path(where: str, field: str):
    fake, outbox, p = make()
    text = body_of(event())
    if where == "top":
        text = with_extra(text, '"institution":"H999999"')
    else:
        text = text.replace('"payload":{', '"payload":{"taj":"111222337",', 1)
    assert p.handle(delivery(text)) == "rejected"
    reply = only_rejection(outbox)
    assert reply.field == field and "appears more than once" in reply.reason
    assert fake.submits == 0


def test_duplicate_key_in_a_list_item_names_the_item():
    text = body_of(samples.prescription()).replace('"quantity":1', '"quantity":1,"quantity":9', 1)
    with pytest.raises(ValidationError) as exc:
        RequestEnvelope.from_json(text)
    assert describe_validation_error(exc.value).field == "payload.items[0].quantity"


def test_two_different_reply_addresses_get_no_reply_and_the_message_is_kept():
    fake, outbox, p = make()
    text = with_extra(body_of(event()), '"reply_to":"his.other"')
    assert p.handle(delivery(text)) == "dead-lettered"
    assert not outbox.all_replies() and outbox.dead[0][0] == text.encode()
    # the same address twice is still a duplicate, but the reply can go there
    fake, outbox, p = make()
    twice = with_extra(body_of(event()), f'"reply_to":"{REPLY_TO}"')
    assert p.handle(delivery(twice)) == "rejected"
    assert only_rejection(outbox).field == "reply_to"


# --- 5. and 6. routing key and eeszt-type ----------------------------------------------------
def test_valid_body_under_an_unknown_routing_key_is_refused():
    fake, outbox, p = make()
    request = event()
    # As the consumer wraps it: published to eeszt.requests, routed by the alternate exchange
    meta = wrap_delivery(queue=INTERACTIVE_QUEUE, body=request.to_json(), routing_key="foo.bar",
                         exchange=REQUESTS_EXCHANGE).args[1]
    msg = delivery(request.to_json(), queue=INTERACTIVE_QUEUE, exchange=meta["exchange"],
                   routing_key=meta["routing_key"], message_type=meta["type"])
    assert p.handle(msg) == "rejected"
    reply = only_rejection(outbox)
    assert reply.field == "routing_key" and "'foo.bar'" in reply.reason
    assert "'event.start'" in reply.reason and fake.submits == 0


@pytest.mark.parametrize("header, routing_key, field", [
    ("erecept.submit", "event.start", "eeszt-type"),
    ("event.start", "event.end", "routing_key"),
    (7, "event.start", "eeszt-type"),
])
def test_a_contradiction_between_header_routing_key_and_body_is_refused(header, routing_key, field):
    fake, outbox, p = make()
    msg = delivery(event().to_json(), headers={H_TYPE: header}, exchange=REQUESTS_EXCHANGE,
                   routing_key=routing_key)
    assert p.handle(msg) == "rejected"
    reply = only_rejection(outbox)
    assert reply.field == field and "payload.type ('event.start')" in reply.reason


def test_agreeing_header_and_a_copy_the_gateway_moved_are_accepted():
    fake, outbox, p = make()
    # a HIS that sets the header right
    assert p.handle(delivery(event().to_json(), headers={H_TYPE: "event.start"},
                             exchange=REQUESTS_EXCHANGE, routing_key="event.start")) == "accepted"
    # a retry copy: dead-lettered back through the default exchange under the queue's name
    assert p.handle(delivery(event().to_json(), headers={H_TYPE: "event.start"}, exchange="",
                             routing_key=BATCH_QUEUE)) == "accepted"
    # an empty header is no claim
    assert p.handle(delivery(event().to_json(), headers={H_TYPE: ""},
                             exchange=REQUESTS_EXCHANGE, routing_key="event.start")) == "accepted"
    assert fake.submits == 3


def test_the_consumer_passes_exchange_and_routing_key_along():
    message = wrap_delivery(queue=INTERACTIVE_QUEUE, body=b"{}", routing_key="x.y",
                            exchange=UNROUTED_EXCHANGE)
    body_b64, meta = message.args
    assert base64.b64decode(body_b64) == b"{}"
    assert (meta["exchange"], meta["routing_key"]) == (UNROUTED_EXCHANGE, "x.y")


# --- salvage and the worker going on ---------------------------------------------------------
def test_salvage_reads_top_level_fields_of_any_body_and_never_raises():
    request = event()
    deep_first = '{"x":' + DEEP + "," + body_of(request)[1:]
    info = salvage(deep_first.encode())
    assert info["reply_to"] == REPLY_TO and info["message_id"] == request.message_id
    assert info["type"] == "event.start"
    # a nested reply_to is not the message's; binary and garbage give nothing usable
    assert "reply_to" not in salvage(b'{"payload":{"reply_to":"his.x"}}')
    assert salvage(b"\xff\xfe\x00" + bytes(range(256))) == {"message_id": NIL}
    assert top_level_strings("[" * 100, frozenset({("reply_to",)})) == {}


def test_the_worker_goes_on_after_every_hostile_message_and_loses_none():
    fake, outbox, p = make()
    good = event()
    hostile = [
        with_extra(body_of(event()), f'"x":{DEEP}').encode(),
        event(created_at=datetime.now(timezone.utc) + timedelta(days=365),
              deadline=datetime.now(timezone.utc) + timedelta(days=400)).to_json(),
        with_extra(body_of(event()), '"idempotency_key":"ev-other"').encode(),
        b"\xff\xfe" + b"{" * 10_000, b"[1,2,3]", b"42", b"",
        with_extra(body_of(samples.event_start()), f'"x":{DEEP}').encode(),
    ]
    outcomes = [p.handle(delivery(body)) for body in hostile]
    outcomes.append(p.handle(delivery(good.to_json(), message_id=str(good.message_id))))
    # Then each hostile one was answered or kept, and the good one still went through
    assert outcomes[:3] == ["rejected"] * 3 and outcomes[-1] == "accepted"
    assert set(outcomes[3:-1]) == {"dead-lettered"}
    answered = [r for r in outbox.replies[REPLY_TO] if isinstance(r, Rejected)]
    assert len(answered) + len(outbox.dead) == len(hostile) and fake.submits == 1


def test_read_returns_the_request_or_why_not():
    request = event()
    assert read(delivery(request.to_json())) == request
    refused = read(delivery(b"not json"))
    assert isinstance(refused, Invalid) and refused.info == {"message_id": NIL}
