"""A HIS in another language: it publishes with a plain AMQP client and no project code.

The HIS side of this test uses only pika, json and uuid, following the wire format in the
README. The gateway side is the real thing: `eeszt-gw worker` and `eeszt-gw simulator`.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pika
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


@pytest.fixture(scope="module")
def gateway(broker_url, simulator, tmp_path_factory):
    from tests.conftest import start_workers

    pool = start_workers(broker_url=broker_url, sim=simulator,
                         workdir=tmp_path_factory.mktemp("raw"), threads=4)
    yield
    pool.stop()


def taj_with_check_digit(first8: str) -> str:
    # As the README explains: weights 3,7,3,7,... on the first 8 digits, sum mod 10.
    return first8 + str(sum(int(d) * (3 if i % 2 == 0 else 7) for i, d in enumerate(first8)) % 10)


def test_plain_amqp_publish_gets_an_accepted_reply(gateway, broker_url, simulator, demo_users):
    simulator.reset(duplicates="naive")
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.confirm_delivery()
    reply_queue = ch.queue_declare("his.rawpika.replies", durable=True).method.queue
    ch.queue_bind(reply_queue, "eeszt.replies", routing_key="his.rawpika")
    message_id = str(uuid.uuid4())
    request = {
        "message_id": message_id,
        "idempotency_key": f"rawpika-{uuid.uuid4().hex}",
        "institution": "H100200",
        "acting": {"kind": "doctor", "user_id": demo_users[0]["user_id"], "workstation": "WS-01"},
        "reply_to": "his.rawpika",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "payload": {
            "type": "erecept.submit",
            "taj": taj_with_check_digit("11122233"),
            "patient_name": "Minta Mária",
            "bno": "J069",
            "items": [{"product_code": "200012345", "product_name": "Augmentin 875/125 mg",
                       "quantity": 1, "dosage": "2x1 tabletta"}],
        },
    }
    ch.basic_publish(
        exchange="eeszt.requests", routing_key="erecept.submit", body=json.dumps(request).encode(),
        properties=pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                        message_id=message_id),
        mandatory=True)
    replies = []
    for method, props, body in ch.consume(reply_queue, inactivity_timeout=30):
        assert method is not None, "no reply within 30 s"
        ch.basic_ack(method.delivery_tag)
        replies.append(json.loads(body))
        if replies[-1]["kind"] in ("accepted", "rejected", "failed"):
            break
    ch.cancel()
    ch.queue_delete(reply_queue)
    conn.close()
    final = replies[-1]
    assert final["kind"] == "accepted", final
    assert final["message_id"] == message_id
    assert final["idempotency_key"] == request["idempotency_key"]
    records = simulator.admin("GET", f"/admin/records?key={request['idempotency_key']}")["records"]
    assert [r["eeszt_id"] for r in records] == [final["eeszt_id"]]
