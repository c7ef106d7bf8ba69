"""A whole gateway (workers + a HIS-side publisher and reply source) inside one process.

:class:`EmbeddedGateway` runs on dramatiq's in-memory StubBroker (the demo's default and the
unit tests'); :class:`RabbitGateway` runs the same workers on a real RabbitMQ with the real
producers. Both have the same small interface, so the broker contract tests run the same cases
against each.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dramatiq

from card_bridge.card import InProcessReader
from card_bridge.challenge import ChallengeVerifier, load_pinned_key
from card_bridge.daemon import Bridge
from card_bridge.eid import EidServer
from card_bridge.login import LocalCardClient, MobilTokenClient
from card_bridge.prompt import ScriptedPrompt
from schemas.card import LOGIN_ANSWERS_QUEUE, CardChallenge, LoginMethod
from schemas.envelope import RequestEnvelope
from schemas.wire import INTERACTIVE_QUEUE, LOGIN_ANSWER_KEY, LOGIN_EXCHANGE, queue_for_type
from simulator.card import InProcessCard
from simulator.card.files import load_card
from workers.broker import rabbit_broker, stub_broker, wrap_delivery
from workers.logins.backends import MemoryLoginBackend, RabbitLoginBackend
from workers.outbox import MemoryOutbox, RabbitOutbox
from workers.runtime import build_runtime
from workers.settings import WorkerSettings


class DemoPhone:
    """The doctors' phones in the demo: the MobilToken app's current code, computed from the
    doctor's secret in the simulator's users file (which only the simulator and, here, the
    doctor's phone know; the workers never read it)."""

    def __init__(self, users_file: Path) -> None:
        self.users_file = users_file

    def code(self, user_id: str) -> str | None:
        import pyotp

        users = json.loads(self.users_file.read_text()).get("users", [])
        secret = next((u.get("totp_secret") for u in users if u.get("user_id") == user_id), None)
        return pyotp.TOTP(secret).now() if secret else None


@dataclass
class Workstations:
    """Doctors' workstations in this process, one card bridge each, answering as a doctor would.

    A card workstation has the doctor's virtual card in an in-process reader, and the doctor
    types the card's PIN (from the card's own file, ``cards/<user>.json``, standing in for the
    doctor's memory; it goes from the prompt to the card, as on a real workstation). A
    MobilToken workstation (``mobiltoken``: workstation ids) asks the doctor for the code, and
    the doctor reads it off the phone (:class:`DemoPhone`); the bridge posts it to the eID
    server. Either way the answer carries only the eID server's rID.
    """

    cards_dir: Path
    eid_url: str
    eid_ca: Path
    challenge_cert: Path
    answer: Callable[[bytes], None]
    mobiltoken: frozenset[str] = frozenset()
    phone: DemoPhone | None = None
    challenges: int = 0
    pin_prompts: int = 0
    code_prompts: int = 0
    _cards: dict[str, InProcessCard] = field(default_factory=dict)
    _verifiers: dict[str, ChallengeVerifier] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def card(self, user_id: str) -> InProcessCard:
        with self._lock:
            if user_id not in self._cards:
                self._cards[user_id] = InProcessCard(load_card(self.cards_dir, user_id))
            return self._cards[user_id]

    def _verifier(self, workstation: str) -> ChallengeVerifier:
        with self._lock:
            if workstation not in self._verifiers:
                self._verifiers[workstation] = ChallengeVerifier(
                    key=load_pinned_key(self.challenge_cert), workstation=workstation)
            return self._verifiers[workstation]

    def _bridge(self, challenge: CardChallenge) -> tuple[Bridge, ScriptedPrompt] | None:
        eid = EidServer(url=self.eid_url, ca_file=self.eid_ca)
        user, ws = challenge.user_id, challenge.workstation
        if ws in self.mobiltoken:
            if self.phone is None:
                return None
            prompt = ScriptedPrompt([lambda _kind: self.phone.code(user)])
            return Bridge(workstation=ws, verifier=self._verifier(ws), prompt=prompt,
                          card_client=MobilTokenClient(eid=eid),
                          method=LoginMethod.MOBILTOKEN), prompt
        try:
            card = self.card(user)
            pin = json.loads((self.cards_dir / f"{user}.json").read_text())["pin"]
        except (FileNotFoundError, ValueError, KeyError):
            return None  # no such workstation (no card for this doctor) here
        prompt = ScriptedPrompt([pin])
        return Bridge(workstation=ws, verifier=self._verifier(ws), prompt=prompt,
                      card_client=LocalCardClient(reader=InProcessReader(card), card_wait_s=5,
                                                  eid=eid)), prompt

    def deliver(self, challenge: CardChallenge) -> bool:
        """Hand ``challenge`` to its workstation's bridge; False when none listens here."""
        built = self._bridge(challenge)
        if built is None:
            return False
        bridge, prompt = built

        def run() -> None:
            answer = bridge.handle(challenge.model_dump_json().encode())
            with self._lock:
                self.challenges += 1
                self.pin_prompts += prompt.count("pin")
                self.code_prompts += prompt.count("otp")
            if answer is not None:
                self.answer(answer.model_dump_json().encode())

        threading.Thread(target=run, name=f"bridge-{challenge.workstation}", daemon=True).start()
        return True


class EmbeddedGateway:
    """Workers on dramatiq's in-memory StubBroker; replies through an in-memory outbox."""

    description = "the embedded in-memory broker"

    def __init__(self, settings: WorkerSettings, *, reply_key: str,
                 eid_url: str | None = None, mobiltoken: frozenset[str] = frozenset()) -> None:
        from producers.memory import MemoryPublisher, MemoryReplies

        self.broker = stub_broker()
        self.replies = MemoryReplies(reply_key)
        outbox = MemoryOutbox(
            on_reply=lambda rk, reply: self.replies.deliver(rk, reply.model_dump_json().encode()),
            on_retry=lambda queue, body, headers, delay_s, mid: self.broker.enqueue(
                wrap_delivery(queue=queue, body=body, headers=headers, message_id=mid),
                delay=int(delay_s * 1000)))
        self.outbox = outbox
        self.workstations = None
        login_backend = None
        if eid_url:
            pki = Path(settings.pki_dir)
            self.workstations = Workstations(
                cards_dir=pki / "cards", eid_url=eid_url, eid_ca=pki / "server-ca.pem",
                challenge_cert=pki / "challenge.pem", answer=self._login_event,
                mobiltoken=mobiltoken, phone=DemoPhone(pki / "users.json"))
            login_backend = MemoryLoginBackend(
                requeue=lambda queue, body, headers, mid: self.broker.enqueue(
                    wrap_delivery(queue=queue, body=body, headers=headers, message_id=mid)),
                deliver_challenge=self.workstations.deliver, deliver_event=self._login_event,
                window_s=settings.login_window_s)
        self.runtime = build_runtime(settings, broker=self.broker, outbox=outbox,
                                     login_backend=login_backend)
        self.publisher = MemoryPublisher(sink=self._deliver)
        self.worker = dramatiq.Worker(self.broker, worker_threads=settings.threads, worker_timeout=100)
        self.worker.start()

    def _deliver(self, routing_key: str, body: bytes, headers: dict[str, Any],
                 message_id: str | None) -> None:
        queue = queue_for_type(routing_key) or INTERACTIVE_QUEUE
        self.broker.enqueue(wrap_delivery(queue=queue, body=body, routing_key=routing_key,
                                          headers=headers, message_id=message_id))

    def _login_event(self, body: bytes) -> None:
        self.broker.enqueue(wrap_delivery(queue=LOGIN_ANSWERS_QUEUE, body=body))

    def publish(self, request: RequestEnvelope) -> None:
        self.publisher.submit(request)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        self._deliver(routing_key, body, {}, None)

    def flush(self) -> None:
        pass

    def next_reply(self, timeout: float):
        return self.replies.get(timeout=timeout)

    def logins_by_service(self) -> Counter:
        return self.runtime.tokens.logins_by_reason

    def dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        return list(self.outbox.dead)

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.runtime.close()


class RabbitGateway:
    """The same workers, in this process, on a real RabbitMQ; the HIS uses the real producers."""

    def __init__(self, url: str, settings: WorkerSettings, *, reply_key: str,
                 eid_url: str | None = None, mobiltoken: frozenset[str] = frozenset()) -> None:
        from producers.batch import BatchPublisher
        from producers.publisher import Publisher
        from producers.replies import ReplyListener
        from workers.process import declare_topology
        from workers.logins.token_share import RabbitTokenShare, new_key

        self.description = f"RabbitMQ at {url.split('@')[-1]}"
        qt = settings.queue_type  # EESZT_QUEUE_TYPE: classic, or quorum
        declare_topology(url, queue_type=qt)
        self.broker = rabbit_broker(url, queue_type=qt)
        share = RabbitTokenShare(url=url, key_b64=new_key())
        outbox = RabbitOutbox(url=url, queue_type=qt)
        self.workstations = None
        login_backend = None
        if eid_url:
            pki = Path(settings.pki_dir)
            self._answers = Publisher(url=url, declare_topology=False, exchange=LOGIN_EXCHANGE)
            self.workstations = Workstations(
                cards_dir=pki / "cards", eid_url=eid_url, eid_ca=pki / "server-ca.pem",
                challenge_cert=pki / "challenge.pem", answer=self._answer,
                mobiltoken=mobiltoken, phone=DemoPhone(pki / "users.json"))
            login_backend = _RabbitWithLocalWorkstations(
                outbox=outbox, window_s=settings.login_window_s,
                challenge_ttl_s=settings.challenge_ttl_s, workstations=self.workstations)
        self.runtime = build_runtime(settings, broker=self.broker, outbox=outbox, share=share,
                                     login_backend=login_backend)
        self.listener = ReplyListener(url, routing_key=reply_key, queue_type=qt)
        self.publisher = BatchPublisher(url=url, queue_type=qt)
        self.raw = Publisher(url=url, queue_type=qt)
        self.worker = dramatiq.Worker(self.broker, worker_threads=settings.threads, worker_timeout=100)
        self.worker.start()

    def _answer(self, body: bytes) -> None:
        self._answers.submit_raw(LOGIN_ANSWER_KEY, body)  # as a bridge answers

    def publish(self, request: RequestEnvelope) -> None:
        self.publisher.publish(request)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        self.publisher.flush(timeout=60)
        self.raw.submit_raw(routing_key, body)

    def flush(self) -> None:
        self.publisher.flush(timeout=120)

    def next_reply(self, timeout: float):
        return self.listener.get(timeout=timeout)

    def logins_by_service(self) -> Counter:
        return self.runtime.tokens.logins_by_reason

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.publisher.close()
        self.raw.close()
        if self.workstations is not None:
            self._answers.close()
        self.listener.close()
        self.runtime.close()


class _RabbitWithLocalWorkstations(RabbitLoginBackend):
    """Challenges go to the in-process workstations of the demo instead of real bridges."""

    def __init__(self, *, workstations: Workstations, **kw: Any) -> None:
        super().__init__(**kw)
        self.workstations = workstations

    def send_challenge(self, challenge: CardChallenge) -> bool:
        return self.workstations.deliver(challenge)
