"""eSZIG card logins through the real stack.

The workers run as `eeszt-gw worker` processes on a real RabbitMQ against the real simulator
(STS + eID server over HTTPS). The card bridge runs in this process (so that a scripted doctor
can type the PIN), but it reaches the card the way a workstation does: pyscard → libpcsclite →
pcscd → the vpcd driver → a virtual eSZIG card speaking the vpcd protocol over TCP.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pika
import pika.exceptions
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from card_bridge.card import PcscReader
from card_bridge.challenge import ChallengeVerifier, load_pinned_key
from card_bridge.daemon import Bridge, BridgeService
from card_bridge.eid import EidServer
from card_bridge.login import LocalCardClient, MobilTokenClient
from card_bridge.presence import PresenceMonitor
from card_bridge.prompt import ScriptedPrompt
from schemas.card import CARD_EXCHANGE, CardChallenge, LoginMethod
from schemas.wire import LOGIN_ANSWER_KEY, LOGIN_EXCHANGE
from simulator.card.files import load_card
from simulator.card.vpcd import VpcdCard
from tests import samples
from tests.conftest import ROOT, forget_logins, start_workers
from tests.pcsc_support import READER, ensure_pcscd, stop_our_pcscd
from workers.logins.coordinator import sign_challenge

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.pcsc]
WS = "WS-01"
WS_MOBILTOKEN = "WS-MT"  # a workstation whose bridge is set up for MobilToken


@pytest.fixture(scope="module")
def pcscd():
    return ensure_pcscd()


@pytest.fixture(scope="module")
def cards(pki, demo_users):
    """Each doctor's card secrets, read from the card's own file (as the doctor knows them)."""
    return {u["user_id"]: json.loads((pki.directory / "cards" / f"{u['user_id']}.json").read_text())
            for u in demo_users}


@pytest.fixture(scope="module")
def gateway(pcscd, broker_url, simulator, pki, demo_users, tmp_path_factory):
    simulator.reset(duplicates="naive")
    forget_logins(broker_url)  # no marker or challenge left by an earlier test's workers
    work = tmp_path_factory.mktemp("cardlogin")
    # The workers get no doctor's secret: every doctor logs in at WS-01's bridge (the card,
    # through PC/SC), or at WS-MT's (MobilToken), both run here.
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=work, processes=2,
                         threads=8, queues="interactive", workstations={},
                         extra=("--login-window-s", "60"))
    prompt = ScriptedPrompt()
    bridge = Bridge(
        workstation=WS,
        verifier=ChallengeVerifier(key=load_pinned_key(pki.challenge_cert), workstation=WS,
                                   used_file=work / "used-challenges-WS-01.json"),
        card_client=LocalCardClient(reader=PcscReader(READER), card_wait_s=20, prompt_timeout_s=10,
                                    eid=EidServer(url=simulator.eid_url, ca_file=pki.server_ca_cert)),
        prompt=prompt, prompt_timeout_s=10)
    presence = PresenceMonitor(reader=READER).start()
    service = BridgeService(bridge=bridge, url=broker_url, heartbeat_dir=work / "hb", presence=presence)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not service.connected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.connected, "the bridge did not connect"
    mt_prompt = ScriptedPrompt()
    mt_bridge = Bridge(
        workstation=WS_MOBILTOKEN, method=LoginMethod.MOBILTOKEN, prompt=mt_prompt,
        prompt_timeout_s=10,
        verifier=ChallengeVerifier(key=load_pinned_key(pki.challenge_cert),
                                   workstation=WS_MOBILTOKEN),
        card_client=MobilTokenClient(eid=EidServer(url=simulator.eid_url,
                                                   ca_file=pki.server_ca_cert)))
    mt_service = BridgeService(bridge=mt_bridge, url=broker_url, heartbeat_dir=work / "hb")
    mt_thread = threading.Thread(target=mt_service.run, daemon=True)
    mt_thread.start()
    while not mt_service.connected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mt_service.connected, "the MobilToken bridge did not connect"
    yield {"pool": pool, "bridge": bridge, "prompt": prompt, "service": service,
           "presence": presence, "work": work, "mt_prompt": mt_prompt}
    for svc in (service, mt_service):
        svc.stop_event.set()
    thread.join(10)
    mt_thread.join(10)
    presence.stop()
    pool.stop()


class Card:
    """A virtual card in vpcd slot 0, counting the APDUs it receives."""

    def __init__(self, pki, user_id: str) -> None:
        self.applet = load_card(pki.directory, user_id)
        self.apdus = 0
        original = self.applet.process

        def counting(apdu: bytes) -> bytes:
            self.apdus += 1
            return original(apdu)

        self.applet.process = counting
        self.vpcd = VpcdCard(self.applet)

    def __enter__(self) -> "Card":
        self.vpcd.start()
        assert self.vpcd.wait_connected(10), "pcscd did not take the virtual card"
        return self

    def __exit__(self, *exc) -> None:
        self.vpcd.stop()
        time.sleep(0.5)  # pcscd notices the removal on its next 400 ms poll


class His:
    """A HIS's reply queue, bound before publishing."""

    def __init__(self, broker_url: str) -> None:
        self.key = f"his.card.{uuid.uuid4().hex[:8]}"
        self.conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.ch.queue_declare(self.key, exclusive=True)
        self.ch.queue_bind(self.key, "eeszt.replies", routing_key=self.key)
        self.replies: list[dict] = []

    def publish(self, requests) -> None:
        for r in requests:
            r = r.model_copy(update={"reply_to": self.key})
            self.ch.basic_publish("eeszt.requests", r.message_type, r.to_json(),
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)

    def finals(self, n: int, timeout_s: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        for method, _props, body in self.ch.consume(self.key, inactivity_timeout=0.5):
            if method is not None:
                self.ch.basic_ack(method.delivery_tag)
                self.replies.append(json.loads(body))
            if sum(r["kind"] != "status" for r in self.replies) >= n or time.monotonic() > deadline:
                break
        self.ch.cancel()
        return [r for r in self.replies if r["kind"] != "status"]

    def statuses(self) -> list[str]:
        return [r["detail"] for r in self.replies if r["kind"] == "status"]

    def close(self) -> None:
        self.conn.close()


def prescriptions(user: str, n: int, workstation: str = WS, **update):
    acting = samples.doctor(user, workstation)
    return [samples.prescription(user_id=user).model_copy(update={"acting": acting, **update})
            for _ in range(n)]


def sts_eszig(simulator) -> int:
    return simulator.stats()["sts_issues"].get("eszig", 0)


def test_twenty_prescriptions_need_one_challenge_one_pin_one_login(gateway, broker_url, simulator,
                                                                     pki, cards):
    user = "O10003"
    bridge, prompt = gateway["bridge"], gateway["prompt"]
    handled, eszig_before = bridge.handled, sts_eszig(simulator)
    prompt.asked.clear()
    prompt.answers[:] = [cards[user]["pin"]]
    his = His(broker_url)
    with Card(pki, user):
        his.publish(prescriptions(user, 20))
        finals = his.finals(20)
    his.close()
    assert [f["kind"] for f in finals] == ["accepted"] * 20, [f.get("reason") for f in finals]
    assert bridge.handled - handled == 1, "exactly one challenge"
    assert prompt.count("pin") == 1 and prompt.asked == [("pin", 3)]
    assert sts_eszig(simulator) - eszig_before == 1
    records = [r for r in simulator.admin("GET", "/admin/records?service=eRecept&limit=10000")["records"]
               if r["subject"] == user]
    assert len(records) == 20 and len({r["idempotency_key"] for r in records}) == 20
    # Requests that arrived before the token was there were told "waiting for login", once each;
    # the rest found the token and went straight through.
    waiting = [r["message_id"] for r in his.replies if r["kind"] == "status"
               and r["state"] == "waiting_for_login"]
    assert 1 <= len(waiting) <= 20 and len(waiting) == len(set(waiting))


def test_wrong_pin_twice_then_the_can_then_the_pin(gateway, broker_url, pki, cards):
    user = "O10004"
    prompt = gateway["prompt"]
    prompt.asked.clear()
    prompt.answers[:] = ["000000", "000001", cards[user]["can"], cards[user]["pin"]]
    his = His(broker_url)
    with Card(pki, user):
        his.publish(prescriptions(user, 1))
        (final,) = his.finals(1)
    his.close()
    statuses = his.statuses()
    assert any("wrong PIN: 2 tries left" in s for s in statuses), statuses
    assert any("wrong PIN: 1 try left" in s and "CAN" in s for s in statuses), statuses
    assert [k for k, _ in prompt.asked] == ["pin", "pin", "can", "pin"]
    assert final["kind"] == "accepted"


def test_a_blocked_pin_says_how_to_unblock_and_the_request_fails_at_its_deadline(
        gateway, broker_url, pki, cards):
    user = "O10005"
    prompt = gateway["prompt"]
    prompt.asked.clear()
    prompt.answers[:] = ["000000", "000001", cards[user]["can"], "000002"]
    his = His(broker_url)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=12)
    with Card(pki, user):
        his.publish(prescriptions(user, 1, deadline=deadline))
        (final,) = his.finals(1, timeout_s=60)
    his.close()
    assert any("blocked" in s and "PUK" in s for s in his.statuses()), his.statuses()
    assert final["kind"] == "failed" and "login not completed" in final["reason"]


def test_card_removed_mid_login_is_a_typed_error_and_the_next_login_works(
        gateway, broker_url, pki, cards):
    user = "O10006"
    prompt = gateway["prompt"]
    prompt.asked.clear()
    his = His(broker_url)
    with Card(pki, user) as card:
        def remove_while_typing(kind: str) -> str:
            card.vpcd.remove()  # the doctor pulls the card out while typing the PIN
            threading.Timer(2.0, card.vpcd.insert).start()  # ... and puts it back
            return cards[user]["pin"]

        prompt.answers[:] = [remove_while_typing, cards[user]["pin"]]
        his.publish(prescriptions(user, 1))
        (final,) = his.finals(1)
    his.close()
    assert any("insert the eSZIG card" in s for s in his.statuses()), his.statuses()
    assert final["kind"] == "accepted" and prompt.count("pin") == 2


def test_the_bridge_survives_a_pcscd_restart(gateway, broker_url, pki, cards):
    user = "O10007"
    prompt, presence = gateway["prompt"], gateway["presence"]
    restarts = presence.restarts
    with Card(pki, user):
        assert presence.wait_for(lambda p: p.card, 10)
        stop_our_pcscd()
        assert presence.wait_for(lambda p: not p.service, 10)
        ensure_pcscd()
        assert presence.wait_for(lambda p: p.service and p.card, 20), presence.state
        prompt.asked.clear()
        prompt.answers[:] = [cards[user]["pin"]]
        his = His(broker_url)
        his.publish(prescriptions(user, 1))
        (final,) = his.finals(1)
        his.close()
    assert presence.restarts > restarts
    assert final["kind"] == "accepted"


def test_a_challenge_signed_by_a_foreign_key_is_refused_without_touching_the_card(
        gateway, broker_url, pki):
    bridge = gateway["bridge"]
    handled = bridge.handled
    now = datetime.now(timezone.utc)
    forged = sign_challenge(Ed25519PrivateKey.generate(), CardChallenge(
        challenge_id=uuid.uuid4(), user_id="O10003", workstation=WS,
        institution="H100200", purpose="a forged login", eid_package="x.y",
        created_at=now, expires_at=now + timedelta(minutes=1)))
    with Card(pki, "O10003") as card:
        conn = pika.BlockingConnection(pika.URLParameters(broker_url))
        ch = conn.channel()
        ch.basic_publish(CARD_EXCHANGE, WS, forged.model_dump_json().encode())
        deadline = time.monotonic() + 10
        while ch.queue_declare(f"eeszt.card.{WS}", passive=True).method.message_count and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        conn.close()
        assert card.apdus == 0
    assert bridge.handled == handled


def test_no_pin_and_no_private_key_on_the_broker_or_in_the_logs(gateway, broker_url, rabbit_vhost,
                                                                 pki, cards, simulator):
    user = "O10008"
    secrets = {"PIN": cards[user]["pin"], "CAN": cards[user]["can"], "PUK": cards[user]["puk"]}
    for name in ("cards/O10008.key", "institution.key", "challenge.key", "access.key", "sts.key"):
        body = "".join((pki.directory / name).read_text().splitlines()[1:-1])
        secrets[name] = body[len(body) // 3: len(body) // 3 + 40]
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            captured.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    subprocess.run(["rabbitmqctl", "-q", "trace_on", "-p", rabbit_vhost], check=True, timeout=60)
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    trace = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(trace, "amq.rabbitmq.trace", routing_key="#")
    try:
        gateway["prompt"].answers[:] = [cards[user]["pin"]]
        his = His(broker_url)
        with Card(pki, user):
            his.publish(prescriptions(user, 3))
            finals = his.finals(3)
        his.close()
        time.sleep(1)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "trace_off", "-p", rabbit_vhost], timeout=60)
        root.removeHandler(handler)
        root.setLevel(old_level)
    messages = []
    while True:
        method, props, body = ch.basic_get(trace, auto_ack=True)
        if method is None:
            break
        messages.append(body.decode("utf-8", "replace") + json.dumps(props.headers, default=str))
    conn.close()
    assert [f["kind"] for f in finals] == ["accepted"] * 3
    assert any("eeszt.card" in m or "challenge_id" in m for m in messages), "the trace saw the login"
    logs = "\n".join(captured) + gateway["pool"].log_path.read_text() + simulator.log_path.read_text()
    haystack = "\n".join(messages) + logs
    import re

    for name, value in secrets.items():
        pattern = rf"(?<!\d){re.escape(value)}(?!\d)" if value.isdigit() else re.escape(value)
        assert not re.search(pattern, haystack), f"the {name} leaked"
    assert "PRIVATE KEY" not in haystack


def test_mobiltoken_code_through_the_bridge(gateway, broker_url, demo_users, simulator):
    user = "O10009"
    secret = next(u["totp_secret"] for u in demo_users if u["user_id"] == user)
    prompt = gateway["mt_prompt"]
    prompt.asked.clear()
    typed: list[str] = []
    prompt.answers[:] = [lambda kind: typed.append(pyotp.TOTP(secret).now()) or typed[-1]]
    before = simulator.stats()["sts_issues"].get("mobiltoken", 0)
    # (a copy of every bridge answer, to see what travels on the broker)
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    copy = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(copy, LOGIN_EXCHANGE, routing_key=LOGIN_ANSWER_KEY)
    his = His(broker_url)
    his.publish(prescriptions(user, 2, workstation=WS_MOBILTOKEN))
    finals = his.finals(2)
    his.close()
    answers = []
    while (got := ch.basic_get(copy, auto_ack=True))[0] is not None:
        answers.append(json.loads(got[2]))
    conn.close()
    assert [f["kind"] for f in finals] == ["accepted"] * 2
    assert prompt.asked == [("otp", None)]
    assert simulator.stats()["sts_issues"].get("mobiltoken", 0) - before == 1
    # The bridge answered with the eID server's rID; the typed code never went on the broker.
    assert [(a["outcome"], a["method"]) for a in answers] == [("rid", "mobiltoken")]
    assert typed and not any(typed[0] in json.dumps(a) for a in answers)


def test_a_bridge_user_cannot_read_another_workstations_queue(gateway, broker_url, rabbit_vhost):
    script = ROOT / "deploy" / "rabbitmq" / "add-bridge-user"
    for ws in ("WS-01", "WS-02"):
        subprocess.run([str(script), ws, f"pw-{ws}", rabbit_vhost], check=True, timeout=60,
                       capture_output=True)
    admin = pika.BlockingConnection(pika.URLParameters(broker_url))
    for ws in ("WS-01", "WS-02"):  # the gateway declares them with the first challenge
        admin.channel().queue_declare(f"eeszt.card.{ws}", durable=True)
    admin.close()
    try:
        as_ws1 = pika.BlockingConnection(pika.URLParameters(
            f"amqp://bridge-WS-01:pw-WS-01@127.0.0.1:5672/{rabbit_vhost}"))
        own = as_ws1.channel()
        own.basic_consume("eeszt.card.WS-01", lambda *a: None)  # allowed
        other = as_ws1.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            other.basic_consume("eeszt.card.WS-02", lambda *a: None)
        assert refused.value.reply_code == 403
        answers = as_ws1.channel()
        answers.confirm_delivery()
        answers.basic_publish("eeszt.login", "answer", b"{}")  # its answers: allowed
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as wrong_key:
            answers.basic_publish("eeszt.login", "something-else", b"{}")
        assert wrong_key.value.reply_code == 403
        as_ws1.close()
    finally:
        for ws in ("WS-01", "WS-02"):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", f"bridge-{ws}"], timeout=60)
