"""The same cases through the embedded in-memory broker and through RabbitMQ.

The demo and the unit tests run on dramatiq's StubBroker; production runs on RabbitMQ. Each case
here runs on both, against the real simulator, so the in-memory path cannot drift.
"""

from __future__ import annotations

import json
import time

import pytest

from eeszt_gw.gateways import EmbeddedGateway, RabbitGateway
from tests import samples
from workers.settings import WorkerSettings

KEY = "his.contract"


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=[pytest.mark.integration,
                                                                      pytest.mark.rabbitmq])])
def gateway(request, simulator, pki):
    simulator.reset(duplicates="naive")
    settings = WorkerSettings(pki_dir=pki.directory, eeszt_url=simulator.base_url, threads=4,
                              retry_base_s=0.2)
    # Doctors log in at their workstations: in-process card bridges (eeszt_gw/gateways.py).
    if request.param == "embedded":
        gw = EmbeddedGateway(settings, reply_key=KEY, eid_url=simulator.eid_url)
    else:
        gw = RabbitGateway(request.getfixturevalue("broker_url"), settings, reply_key=KEY,
                           eid_url=simulator.eid_url)
    yield gw
    gw.close()


def finals(gw, n: int, timeout_s: float = 60) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        reply = gw.next_reply(0.5)
        if reply is not None and reply.kind != "status":
            out.append(reply)
    return out


def test_valid_request_is_accepted(gateway, simulator):
    request = samples.prescription().model_copy(update={"reply_to": KEY})
    gateway.publish(request)
    gateway.flush()
    (reply,) = finals(gateway, 1)
    assert reply.kind == "accepted" and reply.message_id == request.message_id
    assert simulator.stats()["total_records"] == 1


def test_invalid_raw_message_is_rejected_naming_the_field(gateway, simulator):
    data = json.loads(samples.event_start().model_copy(update={"reply_to": KEY}).to_json())
    data["payload"]["started_at"] = "yesterday"
    gateway.publish_raw("event.start", json.dumps(data).encode())
    (reply,) = finals(gateway, 1)
    assert (reply.kind, reply.field) == ("rejected", "payload.started_at")
    assert simulator.stats()["total_records"] == 0


def test_unknown_message_type_is_rejected(gateway):
    data = json.loads(samples.event_start().model_copy(update={"reply_to": KEY}).to_json())
    data["payload"]["type"] = "event.teleport"
    gateway.publish_raw("event.teleport", json.dumps(data).encode())
    (reply,) = finals(gateway, 1)
    assert reply.kind == "rejected" and reply.field == "payload"


def test_transient_failure_is_retried_through_the_broker(gateway, simulator):
    simulator.set_faults(error_rate=1.0)
    request = samples.event_start().model_copy(update={"reply_to": KEY})
    gateway.publish(request)
    gateway.flush()
    deadline = time.monotonic() + 30
    status = None
    while status is None and time.monotonic() < deadline:
        r = gateway.next_reply(0.5)
        if r is not None and r.kind == "status":
            status = r
    assert status is not None and status.state == "retrying"
    simulator.set_faults(error_rate=0.0)
    (reply,) = finals(gateway, 1)
    assert reply.kind == "accepted"
    assert simulator.stats()["total_records"] == 1
