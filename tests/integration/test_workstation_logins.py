"""Doctors' logins on the real stack: no bridge, a bridge answering for another workstation,
and the MobilToken rID in the assertion.

The workers run as `eeszt-gw worker` processes on RabbitMQ against the simulator; the card
bridges run in this process (tests/bridges.py), with virtual cards or scripted MobilToken codes.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime, timezone

import pika
import pytest

from schemas.card import CardAnswer
from schemas.wire import LOGIN_ANSWER_KEY, LOGIN_EXCHANGE
from tests import samples
from tests.conftest import ROOT, start_workers
from tests.integration.test_card_login import His

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def at(user: str, workstation: str, n: int = 1):
    return [samples.prescription(user_id=user).model_copy(
        update={"acting": samples.doctor(user, workstation)}) for _ in range(n)]


@pytest.fixture(scope="module")
def pool(broker_url, simulator, tmp_path_factory):
    simulator.reset(duplicates="naive")
    pool = start_workers(broker_url=broker_url, sim=simulator,
                         workdir=tmp_path_factory.mktemp("wslogin"), processes=2, threads=4,
                         queues="interactive",
                         workstations={"WS-01": "eszig", "WS-06": "mobiltoken"})
    yield pool
    pool.stop()


def test_a_workstation_without_a_card_bridge_gets_gw_login_at_once(pool, broker_url):
    # Given a workstation where no card bridge runs,
    his = His(broker_url)
    # When a doctor there sends two prescriptions,
    his.publish(at("O10007", "WS-77", 2))
    finals = his.finals(2, timeout_s=60)
    his.close()
    # then both get a final GW-LOGIN rejection that names the workstation and what to do,
    # instead of waiting until their deadline.
    assert [(f["kind"], f["code"], f["field"]) for f in finals] == [
        ("rejected", "GW-LOGIN", "acting.workstation")] * 2
    assert all("WS-77" in f["reason"] and "card bridge" in f["reason"] for f in finals)


def test_a_mobiltoken_login_gives_a_timesynctoken_assertion(pool, broker_url, simulator):
    # Given WS-06, whose bridge is set up for MobilToken,
    before = simulator.stats()["sts_issues"]
    his = His(broker_url)
    his.publish(at("O10006", "WS-06", 3))
    finals = his.finals(3)
    his.close()
    after = simulator.stats()["sts_issues"]
    # then the doctor typed one code, and the STS issued one MobilToken assertion for it.
    assert [f["kind"] for f in finals] == ["accepted"] * 3
    assert pool.bridges["WS-06"].doctors.asked == [("otp", "O10006", None)]
    assert after.get("mobiltoken", 0) - before.get("mobiltoken", 0) == 1
    assert after.get("password", 0) == before.get("password", 0)


def test_the_sts_writes_the_rids_method_into_the_authn_context(pool, simulator, pki):
    # The rID of a MobilToken login, redeemed at the STS, gives a TimeSyncToken assertion.
    from card_bridge.eid import EidServer
    from tests.bridges import Doctors
    from workers.client.client import ClientFiles, EesztClient
    from workers.client.soap import encode_rid_package

    client = EesztClient(base_url=simulator.base_url, files=ClientFiles.from_pki_dir(pki.directory))
    package, _ = client.request_eid_package(user_id="O10008", workstation="WS-08")
    code = Doctors(pki.directory).phone_code("O10008")
    rid = EidServer(url=simulator.eid_url, ca_file=pki.server_ca_cert).mobiltoken(
        package=package, otp=code)
    issued = client.issue_token(method="eszig", user_id="O10008",
                                rid_package=encode_rid_package(rid))
    client.close()
    refs = [e.text for e in issued.assertion.iter() if isinstance(e.tag, str)
            and e.tag.endswith("AuthnContextClassRef")]
    assert len(refs) == 1 and refs[0].endswith(":TimeSyncToken")


def test_an_answer_from_another_workstations_bridge_changes_nothing(pool, broker_url,
                                                                    rabbit_vhost):
    # Given O10002 waiting for a login at WS-02, whose bridge takes the challenge but whose
    # doctor has not answered yet,
    admin = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = admin.channel()
    ch.queue_declare("eeszt.card.WS-02", durable=True)
    ch.queue_bind("eeszt.card.WS-02", "eeszt.card", routing_key="WS-02")
    taken: list[dict] = []
    ch.basic_consume("eeszt.card.WS-02", lambda c, m, p, body: taken.append(json.loads(body)),
                     auto_ack=True)
    his = His(broker_url)
    his.publish(at("O10002", "WS-02"))
    deadline = time.monotonic() + 30
    while not taken and time.monotonic() < deadline:
        admin.process_data_events(time_limit=0.2)
    assert taken, "the challenge reached WS-02"
    challenge_id = taken[0]["challenge_id"]
    # When WS-01's bridge (its own broker user) answers for it, claiming WS-01 and then WS-02,
    script = ROOT / "deploy" / "rabbitmq" / "add-bridge-user"
    subprocess.run([str(script), "WS-01", "pw-WS-01", rabbit_vhost], check=True, timeout=60,
                   capture_output=True)
    try:
        ws1 = pika.BlockingConnection(pika.URLParameters(
            f"amqp://bridge-WS-01:pw-WS-01@127.0.0.1:5672/{rabbit_vhost}"))
        out = ws1.channel()
        out.confirm_delivery()
        for workstation, fields in (("WS-01", {"outcome": "error", "error": "refused"}),
                                    ("WS-02", {"outcome": "error", "error": "no_reader"}),
                                    ("WS-02", {"outcome": "rid", "rid_package": "forged"})):
            answer = CardAnswer(challenge_id=uuid.UUID(challenge_id), user_id="O10002",
                                workstation=workstation, at=datetime.now(timezone.utc), **fields)
            out.basic_publish(LOGIN_EXCHANGE, LOGIN_ANSWER_KEY, answer.model_dump_json().encode(),
                              pika.BasicProperties(user_id="bridge-WS-01"), mandatory=True)
        ws1.close()
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", "bridge-WS-01"], timeout=60)
    # and then WS-02's own bridge answers (the card is not in the reader),
    genuine = CardAnswer(challenge_id=uuid.UUID(challenge_id), user_id="O10002",
                         workstation="WS-02", outcome="error", error="no_card",
                         at=datetime.now(timezone.utc))
    ch.basic_publish(LOGIN_EXCHANGE, LOGIN_ANSWER_KEY, genuine.model_dump_json().encode())
    deadline = time.monotonic() + 30
    while not any("insert the eSZIG card" in s for s in his.statuses()) and \
            time.monotonic() < deadline:
        his.finals(0, timeout_s=1)
    admin.close()
    his.close()
    # then only the genuine answer reached the HIS: nothing of WS-01's answers did.
    statuses = his.statuses()
    assert statuses == ["waiting for O10002 to log in at WS-02",
                        "insert the eSZIG card into the reader"], statuses
    assert not any(r["kind"] != "status" for r in his.replies), "no login happened"
