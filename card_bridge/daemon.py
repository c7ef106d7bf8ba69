"""The bridge loop: take a challenge from this workstation's queue, answer it, acknowledge it.

Challenges are handled one at a time (a workstation has one card) on a helper thread, while the
broker connection keeps pumping heartbeats. The answer is published (confirmed) before the
challenge is acknowledged, so a crash mid-login leads to the challenge coming back, not to a
lost answer. When only the broker connection is lost mid-login (its node died), the login goes
on and its answer is sent on the next connection; the challenge's copy that comes back is then
acknowledged without asking the doctor again. Nothing secret is logged: not the PIN, not the package, not the rID.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pika
import pika.exceptions
from pydantic import ValidationError

from schemas.card import (
    CARD_EXCHANGE,
    CardAnswer,
    CardChallenge,
    LoginMethod,
    workstation_queue,
)
from eeszt_gw.amqp import (BrokerTLS, BrokerTLSError, BrokerUnreachable, broker_addresses,
                           open_connection)
from schemas.wire import LOGIN_ANSWER_KEY, LOGIN_EXCHANGE

from .challenge import ChallengeVerifier, ForgedChallenge
from .errors import CardError, ChallengeRefused
from .login import CardClient
from .metrics import BridgeMetrics
from .presence import PresenceMonitor
from .prompt import Prompt

log = logging.getLogger("eeszt_gw.card_bridge")


class Bridge:
    """Answers challenges with ``card_client``: the eSZIG card (:class:`LocalCardClient`) or
    MobilToken (:class:`MobilTokenClient`), as the workstation is set up (``method``)."""

    def __init__(self, *, workstation: str, verifier: ChallengeVerifier, card_client: CardClient,
                 prompt: Prompt, prompt_timeout_s: float = 120.0,
                 metrics: BridgeMetrics | None = None,
                 method: LoginMethod = LoginMethod.ESZIG) -> None:
        self.workstation = workstation
        self.verifier = verifier
        self.card_client = card_client
        self.prompt = prompt
        self.prompt_timeout_s = prompt_timeout_s
        self.metrics = metrics
        self.method = LoginMethod(method)
        self.handled = 0

    def handle(self, body: bytes) -> CardAnswer | None:
        """Answer one challenge; None when it must not be answered at all (forged, unreadable)."""
        answer = self._handle(body)
        if self.metrics is not None:
            self.metrics.answered(answer)
        return answer

    def _handle(self, body: bytes) -> CardAnswer | None:
        try:
            challenge = CardChallenge.model_validate_json(body)
        except ValidationError:
            log.warning("dropped a message that is not a card challenge")
            return None
        try:
            self.verifier.verify(challenge)
        except ForgedChallenge as exc:
            log.warning("refused a challenge without touching the card: %s", exc.message)
            return None
        except ChallengeRefused as exc:
            log.warning("refused challenge %s: %s", challenge.challenge_id, exc.message)
            return self._answer(challenge, "error", error=exc.code, message=exc.message)
        self.handled += 1
        log.info("login challenge %s for %s (%s)", challenge.challenge_id, challenge.user_id,
                 self.method.value)
        try:
            rid = self.card_client.login(challenge, self.prompt)
        except CardError as exc:
            log.info("login %s for %s: %s", challenge.challenge_id, challenge.user_id, exc.code.value)
            return self._answer(challenge, "error", error=exc.code, tries_left=exc.tries_left,
                                message=exc.message)
        return self._answer(challenge, "rid", rid_package=rid, method=self.method)

    def _answer(self, challenge: CardChallenge, outcome: str, **fields) -> CardAnswer:
        return CardAnswer(challenge_id=challenge.challenge_id, user_id=challenge.user_id,
                          workstation=self.workstation, outcome=outcome,
                          at=datetime.now(timezone.utc), **fields)


class BridgeService:
    """Connects a :class:`Bridge` to RabbitMQ; reconnects; writes a heartbeat for ``--check``."""

    def __init__(self, *, bridge: Bridge, url: str, heartbeat_dir: Path,
                 presence: PresenceMonitor | None = None, tls: BrokerTLS | None = None) -> None:
        self.bridge = bridge
        # every broker address of url (comma-separated), tried in turn on each connect;
        # amqps://: verified TLS
        self.params = broker_addresses(url, tls, heartbeat=30)
        creds = self.params[0].credentials  # the same user at every address
        self.broker_user = creds.username if isinstance(creds, pika.PlainCredentials) else None
        self.queue = workstation_queue(bridge.workstation)
        self.heartbeat = heartbeat_dir / f"bridge-{bridge.workstation}.json"
        self.presence = presence
        self.connected = False
        #: a login that outlived its broker connection (the node died while the doctor typed):
        #: (challenge id, handler thread, its result); then its answer until confirmed; then
        #: the id of the challenge last answered, whose copy comes back unacknowledged
        self._login: tuple[str | None, threading.Thread, list] | None = None
        self._unsent: tuple[str | None, CardAnswer] | None = None
        self._answered: str | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        while not self.stop_event.is_set():
            try:
                self._serve()
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.connected = False
                self._beat()
                log.warning("broker connection lost (%s); reconnecting",
                            exc if isinstance(exc, (BrokerTLSError, BrokerUnreachable))
                            else type(exc).__name__)
                self.stop_event.wait(2.0)
        self.heartbeat.unlink(missing_ok=True)

    def _serve(self) -> None:
        conn = open_connection(self.params)
        try:
            ch = conn.channel()
            try:
                # With a development user the bridge sets up its own queue. A production user
                # (deploy/rabbitmq/add-bridge-user) may only read this queue: then the gateway
                # declares it, with the first challenge for this workstation. 406: the gateway
                # declared (and bound) it already with an x-queue-type other than the vhost's
                # default (its --queue-type): consume it as it is.
                ch.queue_declare(self.queue, durable=True)
                ch.queue_bind(self.queue, CARD_EXCHANGE, routing_key=self.bridge.workstation)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code not in (403, 406):
                    raise
                ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_qos(prefetch_count=1)
            self.connected = True
            self._finish_carried(conn, ch)
            log.info("card bridge for %s listening on %s", self.bridge.workstation, self.queue)
            last_beat = 0.0
            for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.5):
                if time.monotonic() - last_beat > 2:
                    self._beat()
                    last_beat = time.monotonic()
                if self.stop_event.is_set():
                    break
                if method is None:
                    continue
                cid = challenge_id_of(body)
                if cid is None or cid != self._answered:
                    answer = self._handle_pumping(conn, body, cid)
                    if answer is not None:
                        self._unsent = (cid, answer)
                        self._send(ch, cid, answer)
                # else: a challenge answered on the connection before, whose ack that connection
                # took with it (_finish_carried): acknowledge it, do not ask the doctor again
                ch.basic_ack(method.delivery_tag)
            ch.cancel()
        finally:
            self.connected = False
            if conn.is_open:
                conn.close()

    def _send(self, ch, cid: str | None, answer: CardAnswer) -> None:
        # user_id: RabbitMQ checks it is this connection's user, so the workers know which
        # bridge answered (deploy/rabbitmq/add-bridge-user: bridge-<WS>).
        ch.basic_publish(LOGIN_EXCHANGE, LOGIN_ANSWER_KEY, answer.model_dump_json().encode(),
                         pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                              user_id=self.broker_user),
                         mandatory=True)
        self._unsent, self._answered = None, cid

    def _handle_pumping(self, conn: pika.BlockingConnection, body: bytes,
                        cid: str | None) -> CardAnswer | None:
        """Run the (slow: the doctor types a PIN) handler while the connection stays alive.
        When the connection dies meanwhile, the login goes on and _finish_carried sends it."""
        result: list[CardAnswer | None] = []
        t = threading.Thread(target=lambda: result.append(self.bridge.handle(body)),
                             name="challenge", daemon=True)
        t.start()
        self._login = (cid, t, result)
        while t.is_alive():
            conn.process_data_events(time_limit=0.2)
        self._login = None
        return result[0] if result else None

    def _finish_carried(self, conn: pika.BlockingConnection, ch) -> None:
        """On a new connection, send the answer of a login the lost one could not: the doctor
        is not asked twice because a broker node died while they typed."""
        if self._login is not None:
            cid, t, result = self._login
            while t.is_alive():
                conn.process_data_events(time_limit=0.2)
            self._login = None
            if result and result[0] is not None:
                self._unsent = (cid, result[0])
        if self._unsent is not None:
            cid, answer = self._unsent
            self._send(ch, cid, answer)
            log.info("answered challenge %s after the broker connection came back", cid)

    def _beat(self) -> None:
        p = self.presence.state if self.presence else None
        tmp = self.heartbeat.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(), "at": time.time(), "workstation": self.bridge.workstation,
            "broker": self.connected, "pcsc": p.service if p else None,
            "readers": list(p.readers) if p else None, "card": p.card if p else None,
            "handled": self.bridge.handled}))
        tmp.replace(self.heartbeat)


def challenge_id_of(body: bytes) -> str | None:
    """The ``challenge_id`` of a challenge's body, None when it has none (never raises)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    cid = data.get("challenge_id") if isinstance(data, dict) else None
    return str(cid) if cid is not None else None


def check(heartbeat_dir: Path, workstation: str, *, stale_s: float = 30.0) -> int:
    path = heartbeat_dir / f"bridge-{workstation}.json"
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"unhealthy: no heartbeat at {path}")
        return 1
    age = time.time() - beat.get("at", 0)
    if age > stale_s or not beat.get("broker"):
        print(f"unhealthy: heartbeat {age:.0f}s old, broker connected: {beat.get('broker')}")
        return 1
    print(f"healthy: bridge {workstation} (pid {beat['pid']}), broker connected, "
          f"pcscd {'up' if beat.get('pcsc') else 'down'}, readers {beat.get('readers')}, "
          f"card {'present' if beat.get('card') else 'absent'}")
    return 0
