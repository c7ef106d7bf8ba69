"""Doctors logging in at their workstations, for tests: the gateway holds no doctor's secret.

- :class:`WorkstationBridges`: real card bridges in this process, on RabbitMQ, one per
  workstation (``BridgeService`` + ``Bridge``), set up for the eSZIG card (each doctor puts
  their own virtual card into an in-process reader and types its PIN) or for MobilToken (each
  doctor types the code off their "phone": the TOTP secret in the simulator's users file). The
  cards count the APDUs they receive.
- :class:`FakeBridges`: for unit tests, the worker side of a login in memory (login
  coordinator, memory backend, a fake bridge answering ``rid:<user>``, the form
  :class:`workers.client.fakes.FakeEeszt` accepts), with a loop that handles the released requests.
- :func:`logged_in`: a doctor who has just logged in at the workstation (a token obtained with
  an rID), for unit tests that are not about the login itself.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import pyotp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from card_bridge.card import InProcessReader
from card_bridge.challenge import ChallengeVerifier, load_pinned_key
from card_bridge.daemon import Bridge, BridgeService
from card_bridge.eid import EidServer
from card_bridge.login import LocalCardClient, MobilTokenClient
from card_bridge.errors import NoCard
from card_bridge.prompt import ScriptedPrompt
from schemas.card import CARD_EXCHANGE, CardAnswer, LoginMethod, workstation_queue
from eeszt_gw.amqp import broker_addresses, open_connection
from schemas.replies import is_final
from schemas.wire import LOGIN_EXCHANGE, queue_arguments
from simulator.card import InProcessCard
from simulator.card.files import load_card
from workers.logins.coordinator import LoginCoordinator
from workers.logins.backends import MemoryLoginBackend
from workers.pipeline import Incoming, Pipeline
from workers.logins.tokens import TokenManager, doctor_identity


# --- real bridges on RabbitMQ -----------------------------------------------------------------------
#: The last code each doctor's phone showed and the doctor typed, across every bridge pool of
#: the session: one phone per doctor, whichever test's bridge asks (a code is accepted once).
_TYPED: dict[tuple[str, str], str] = {}
_TYPED_LOCK = threading.Lock()


class Doctors:
    """The doctors at a workstation, answering its bridge's prompt: each types their own card's
    PIN (or CAN), or the code their phone's MobilToken app shows. A phone shows a new code every
    30 s, and a code is accepted once: a doctor asked again within the same step waits for the
    next code, as a doctor would. ``script``: answers a test wants typed first (as
    :class:`ScriptedPrompt` takes them); ``asked`` records (kind, user, tries_left)."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = Path(pki_dir)
        users = json.loads((self.pki_dir / "users.json").read_text())["users"]
        self._secrets = {u["user_id"]: u.get("totp_secret") for u in users}
        self._lock = threading.Lock()
        self.asked: list[tuple[str, str, int | None]] = []
        self.script: list[Any] = []

    def card_file(self, user_id: str) -> dict[str, Any]:
        return json.loads((self.pki_dir / "cards" / f"{user_id}.json").read_text())

    def phone_code(self, user_id: str) -> str:
        totp = pyotp.TOTP(self._secrets[user_id])
        phone = (str(self.pki_dir), user_id)
        with _TYPED_LOCK:
            code = totp.now()
            while code == _TYPED.get(phone):
                time.sleep(totp.interval - time.time() % totp.interval + 0.05)
                code = totp.now()
            _TYPED[phone] = code
        return code

    def ask(self, kind: str, info: Any, *, tries_left: int | None, timeout_s: float) -> str | None:
        with self._lock:
            self.asked.append((kind, info.user_id, tries_left))
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            if isinstance(scripted, BaseException):
                raise scripted
            return scripted(kind) if callable(scripted) else scripted
        if kind == "otp":
            return self.phone_code(info.user_id)
        return self.card_file(info.user_id)["pin" if kind == "pin" else "can"]

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.asked if k == kind)


class OwnCards:
    """A workstation's card reader into which each doctor puts their own (virtual) card: a
    card client per doctor, each card counting the APDUs it receives (``apdus``)."""

    def __init__(self, pki_dir: Path, eid: EidServer) -> None:
        self.pki_dir, self.eid = Path(pki_dir), eid
        self.cards: dict[str, InProcessCard] = {}
        self.apdus: list[bytes] = []

    def card(self, user_id: str) -> InProcessCard:
        if user_id not in self.cards:
            self.cards[user_id] = _counting(
                InProcessCard(load_card(self.pki_dir / "cards", user_id)), self.apdus)
        return self.cards[user_id]

    def login(self, challenge: Any, prompt: Any) -> str:
        try:
            card = self.card(challenge.user_id)
        except (FileNotFoundError, ValueError):
            raise NoCard(f"{challenge.user_id} has no card here") from None
        client = LocalCardClient(reader=InProcessReader(card), eid=self.eid, card_wait_s=5,
                                 prompt_timeout_s=10)
        return client.login(challenge, prompt)


@dataclass
class Workstation:
    """One workstation's card bridge and the doctors who sit at it."""

    name: str
    method: LoginMethod
    bridge: Bridge
    doctors: Doctors
    service: BridgeService
    thread: threading.Thread
    cards: OwnCards | None = None


def _counting(card: InProcessCard, apdus: list[bytes]) -> InProcessCard:
    original = card.transmit

    def transmit(apdu: bytes):
        apdus.append(bytes(apdu))
        return original(apdu)

    card.transmit = transmit  # type: ignore[method-assign]
    return card


class WorkstationBridges:
    """Card bridges on RabbitMQ for ``workstations`` (``{workstation: "eszig" | "mobiltoken"}``,
    the bridges' ``--login-method``), in this process; stop them with :meth:`stop`."""

    def __init__(self, *, broker_url: str, pki_dir: Path, eid_url: str,
                 workstations: dict[str, str], state_dir: Path, queue_type: str = "classic",
                 tls: Any = None) -> None:
        self.tls = tls  # eeszt_gw.amqp.BrokerTLS for an amqps:// broker_url
        self.pki_dir = Path(pki_dir)
        self.broker_url, self.eid_url, self.state_dir = broker_url, eid_url, Path(state_dir)
        self._declare(workstations, queue_type)
        self.stations = {ws: self._start(ws, LoginMethod(m)) for ws, m in workstations.items()}
        deadline = time.monotonic() + 30
        while not all(s.service.connected for s in self.stations.values()):
            assert time.monotonic() < deadline, "a card bridge did not connect"
            time.sleep(0.05)

    def _declare(self, workstations: dict[str, str], queue_type: str) -> None:
        """The exchanges and workstation queues the bridges use, as the workers declare them
        (workers/topology.py, workers/logins/backends.py, the workers' ``queue_type``), so that
        bridges may start before the workers in a fresh vhost."""
        conn = open_connection(broker_addresses(self.broker_url, self.tls))
        try:
            ch = conn.channel()
            ch.exchange_declare(CARD_EXCHANGE, "direct", durable=True)
            ch.exchange_declare(LOGIN_EXCHANGE, "topic", durable=True)
            for ws in workstations:
                ch.queue_declare(workstation_queue(ws), durable=True,
                                 arguments=queue_arguments(queue_type))
                ch.queue_bind(workstation_queue(ws), CARD_EXCHANGE, routing_key=ws)
        finally:
            conn.close()

    def _start(self, ws: str, method: LoginMethod) -> Workstation:
        eid = EidServer(url=self.eid_url, ca_file=self.pki_dir / "server-ca.pem")
        doctors = Doctors(self.pki_dir)
        cards = None
        if method is LoginMethod.MOBILTOKEN:
            client: Any = MobilTokenClient(eid=eid, prompt_timeout_s=60)
        else:
            client = cards = OwnCards(self.pki_dir, eid)
        bridge = Bridge(workstation=ws, prompt=doctors, card_client=client, method=method,
                        prompt_timeout_s=60,
                        verifier=ChallengeVerifier(
                            key=load_pinned_key(self.pki_dir / "challenge.pem"), workstation=ws,
                            used_file=self.state_dir / f"used-challenges-{ws}.json"))
        service = BridgeService(bridge=bridge, url=self.broker_url, tls=self.tls,
                                heartbeat_dir=self.state_dir / "hb")
        thread = threading.Thread(target=service.run, name=f"bridge-{ws}", daemon=True)
        thread.start()
        return Workstation(ws, method, bridge, doctors, service, thread, cards)

    def __getitem__(self, ws: str) -> Workstation:
        return self.stations[ws]

    def challenges(self) -> int:
        return sum(s.bridge.handled for s in self.stations.values())

    def stop(self) -> None:
        for s in self.stations.values():
            s.service.stop_event.set()
        for s in self.stations.values():
            s.thread.join(10)


def card_token(client: Any, *, pki_dir: Path, eid_url: str, user_id: str, workstation: str):
    """A doctor's SAML assertion, the way the doctor gets one at a workstation: an eID package
    from the STS, the doctor's virtual card and PIN, the eID server's rID, redeemed at the STS.
    For tests that need a record written as a doctor outside the workers."""
    from uuid import uuid4

    from schemas.card import CardChallenge
    from workers.client.soap import encode_rid_package

    package, _ = client.request_eid_package(user_id=user_id, workstation=workstation)
    now = datetime.now(timezone.utc)
    challenge = CardChallenge(challenge_id=uuid4(), user_id=user_id, workstation=workstation,
                              institution="H100200", purpose="test", eid_package=package,
                              created_at=now, expires_at=now + timedelta(minutes=2))
    pki_dir = Path(pki_dir)
    pin = Doctors(pki_dir).card_file(user_id)["pin"]
    card = InProcessCard(load_card(pki_dir / "cards", user_id))
    rid = LocalCardClient(reader=InProcessReader(card), card_wait_s=5, eid=EidServer(
        url=eid_url, ca_file=pki_dir / "server-ca.pem")).login(challenge, ScriptedPrompt([pin]))
    return client.issue_token(method="eszig", user_id=user_id, workstation=workstation,
                              rid_package=encode_rid_package(rid)).assertion


def demo_workstations(users: Iterable[dict[str, Any]], *, mobiltoken: Iterable[str] = ()
                      ) -> dict[str, str]:
    """``{workstation: method}`` for the workstations of the demo doctors (users.json): card,
    unless the workstation is listed in ``mobiltoken``."""
    mt = set(mobiltoken)
    return {u["workstation"]: "mobiltoken" if u["workstation"] in mt else "eszig" for u in users}


# --- unit tests: the login in memory ----------------------------------------------------------------
def rid_of(user_id: str) -> str:
    """The rID :class:`workers.client.fakes.FakeEeszt` accepts for ``user_id``."""
    return f"rid:{user_id}"


def logged_in(tokens: TokenManager, fake: Any, *users: str) -> None:
    """``users`` have just logged in at their workstations: their tokens are in ``tokens``."""
    for user in users:
        issued = fake.issue_token(method="eszig", user_id=user, workstation="WS-01",
                                  rid_package=base64.b64encode(rid_of(user).encode()).decode())
        tokens.put(doctor_identity(user), issued, reason="login")


class FakeBridges:
    """A pipeline's doctor logins in memory: each challenge is answered by a fake bridge at the
    challenge's workstation (``answer(challenge) -> CardAnswer fields | None``; default: an rID
    by card). Requests released after a login land in ``work``; :meth:`drain` handles them."""

    def __init__(self, *, fake: Any, tokens: TokenManager, outbox: Any, window_s: float = 30.0,
                 answer: Callable[[Any], dict[str, Any] | None] | None = None,
                 delay_s: float = 0.05) -> None:
        self.fake, self.tokens, self.outbox = fake, tokens, outbox
        self.answer = answer or (lambda ch: {"outcome": "rid", "rid_package": rid_of(ch.user_id)})
        self.delay_s = delay_s
        self.work: queue.Queue = queue.Queue()
        self.challenges: list = []
        self.outcomes: list[str] = []
        self.pipeline: Pipeline | None = None
        self.backend = MemoryLoginBackend(
            requeue=lambda q, body, headers, mid: self.work.put(
                Incoming(body=body, queue=q, headers=headers, message_id=mid)),
            deliver_challenge=self._bridge,
            deliver_event=lambda body: self.logins.on_event(body, {}), window_s=window_s)
        self.logins = LoginCoordinator(backend=self.backend, eeszt=fake, tokens=tokens,
                                       outbox=outbox, challenge_key=Ed25519PrivateKey.generate(),
                                       institution="H100200")

    def _bridge(self, challenge) -> bool:
        self.challenges.append(challenge)
        fields = self.answer(challenge)
        if fields is None:
            return True  # the bridge listens, but nobody answers

        def later() -> None:
            time.sleep(self.delay_s)
            answer = CardAnswer(challenge_id=challenge.challenge_id, user_id=challenge.user_id,
                                workstation=challenge.workstation, at=datetime.now(timezone.utc),
                                **fields)
            self.logins.on_event(answer.model_dump_json().encode(), {})

        threading.Thread(target=later, daemon=True).start()
        return True

    def drain(self, seconds: float = 2.0, until: Callable[[], bool] | None = None) -> None:
        """Handle released requests for ``seconds``, or until ``until()`` is true (a bound,
        not a timing: a loaded machine just takes longer)."""
        assert self.pipeline is not None, "attach a pipeline first"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            try:
                self.outcomes.append(self.pipeline.handle(self.work.get(timeout=0.05)))
            except queue.Empty:
                pass


def finals(outbox: Any, key: str = "his.demo") -> list:
    """The final replies (not status updates) ``outbox`` sent to ``key``."""
    return [r for r in outbox.replies.get(key, []) if is_final(r)]


__all__ = ["card_token", "Doctors", "FakeBridges", "OwnCards", "Workstation", "WorkstationBridges",
           "demo_workstations", "finals", "logged_in", "rid_of"]
