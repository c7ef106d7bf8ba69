"""A card bridge whose broker connection dies while the doctor types (its node died): the login
goes on, its answer is sent on the next connection, and the challenge's copy that the broker
delivers again is acknowledged without asking the doctor a second time."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone

import pika.exceptions

import card_bridge.daemon as daemon
from card_bridge.daemon import BridgeService
from schemas.card import CardAnswer


class Conn:
    """One broker connection: delivers ``deliveries``, records publishes and acks; with
    ``dies``, its pumping fails as a connection to a node that went down does."""

    def __init__(self, deliveries: list[tuple[int, bytes]], *, dies: bool) -> None:
        self.deliveries, self.dies = deliveries, dies
        self.published: list[bytes] = []
        self.acked: list[int] = []
        self.is_open = True
        self.stop = threading.Event()

    def channel(self) -> "Conn":
        return self

    def queue_declare(self, *a, **kw) -> None: return None
    def queue_bind(self, *a, **kw) -> None: return None
    def confirm_delivery(self) -> None: return None
    def basic_qos(self, **kw) -> None: return None
    def cancel(self) -> None: return None

    def consume(self, _queue: str, inactivity_timeout: float):
        for tag, body in self.deliveries:
            yield type("M", (), {"delivery_tag": tag})(), None, body
        while True:
            self.stop.wait(inactivity_timeout)
            yield None, None, None

    def process_data_events(self, time_limit: float = 0) -> None:
        if self.dies:
            raise pika.exceptions.StreamLostError("Stream connection lost")
        self.stop.wait(min(time_limit, 0.05))

    def basic_publish(self, _exchange, _key, body, _props, mandatory) -> None:
        self.published.append(body)

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def close(self) -> None:
        self.is_open = False


class TypingDoctor:
    """The bridge's handler: the doctor types (waits for ``typed``), then the rID comes."""

    workstation = "WS-01"

    def __init__(self) -> None:
        self.typed = threading.Event()
        self.handled = 0

    def handle(self, body: bytes) -> CardAnswer:
        self.handled += 1
        assert self.typed.wait(30)
        cid = json.loads(body)["challenge_id"]
        return CardAnswer(challenge_id=cid, user_id="O10001", workstation="WS-01",
                          outcome="rid", rid_package="rid:O10001", at=datetime.now(timezone.utc))


def test_an_answer_outlives_the_connection_it_was_asked_on(monkeypatch, tmp_path):
    body = json.dumps({"challenge_id": str(uuid.uuid4())}).encode()
    first = Conn([(1, body)], dies=True)        # the node dies while the doctor types
    second = Conn([(7, body)], dies=False)      # the unacknowledged challenge comes back
    conns = iter([first, second])
    doctor = TypingDoctor()

    def connect(_params):
        conn = next(conns)
        if conn is second:
            doctor.typed.set()  # the doctor finishes typing once the bridge has reconnected
        return conn

    monkeypatch.setattr(daemon, "open_connection", connect)
    service = BridgeService(bridge=doctor, url="amqp://guest:guest@127.0.0.1:1/",
                            heartbeat_dir=tmp_path)
    service.stop_event.wait = lambda timeout=None: threading.Event().wait(0.01)  # no 2 s pause
    t = threading.Thread(target=service.run, daemon=True)
    t.start()
    pause = threading.Event()
    for _ in range(300):  # a bound, not a timing
        if second.acked:
            break
        pause.wait(0.05)
    service.stop_event.set()
    second.stop.set()
    t.join(10)

    # The doctor was asked once; the answer went out on the second connection, and the copy
    # of the challenge delivered there was acknowledged without a second prompt.
    assert doctor.handled == 1
    assert first.published == [] and len(second.published) == 1
    answer = json.loads(second.published[0])
    assert answer["challenge_id"] == json.loads(body)["challenge_id"]
    assert answer["outcome"] == "rid"
    assert second.acked == [7]
