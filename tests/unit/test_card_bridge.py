"""The card bridge without PC/SC: challenge checks, the applet through the card seam, answers."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from card_bridge.card import EszigCard, InProcessReader
from card_bridge.challenge import ChallengeVerifier, ForgedChallenge
from card_bridge.daemon import Bridge
from card_bridge.errors import CanRequired, ChallengeRefused, NoCard, PinBlocked, WrongPin
from card_bridge.prompt import ScriptedPrompt
from schemas.card import CardChallenge, ChallengeKind
from simulator.card import InProcessCard
from tests.pcsc_support import CAN, PIN, issue_card
from workers.login import sign_challenge

KEY = Ed25519PrivateKey.generate()


def challenge(*, kind=ChallengeKind.ESZIG, workstation="WS-01", ttl_s=60, key=KEY, **kw) -> CardChallenge:
    now = datetime.now(timezone.utc)
    return sign_challenge(key, CardChallenge(
        challenge_id=uuid.uuid4(), kind=kind, user_id=kw.get("user_id", "O12345"),
        workstation=workstation, institution="H100200", purpose="Demo Kórház asks O12345 to sign in",
        eid_package=kw.get("eid_package"), created_at=now - timedelta(seconds=1),
        expires_at=now + timedelta(seconds=ttl_s)))


def verifier() -> ChallengeVerifier:
    return ChallengeVerifier(key=KEY.public_key(), workstation="WS-01")


def test_verifier_accepts_the_gateways_challenge_once():
    v, c = verifier(), challenge()
    v.verify(c)
    with pytest.raises(ChallengeRefused, match="replay"):
        v.verify(c)


def test_verifier_refuses_a_foreign_key_an_expired_and_another_workstation():
    v = verifier()
    with pytest.raises(ForgedChallenge):
        v.verify(challenge(key=Ed25519PrivateKey.generate()))
    with pytest.raises(ChallengeRefused, match="expired"):
        v.verify(challenge(ttl_s=-5))
    with pytest.raises(ChallengeRefused, match="WS-02"):
        v.verify(challenge(workstation="WS-02"))


def test_a_tampered_field_breaks_the_signature():
    c = challenge()
    forged = c.model_copy(update={"user_id": "O99999"})
    with pytest.raises(ForgedChallenge):
        verifier().verify(forged)


@pytest.fixture()
def card(tmp_path):
    return InProcessCard(issue_card(tmp_path / "cards").applet())


def test_pin_can_and_blocking_through_the_card_seam(card):
    eszig = EszigCard(InProcessReader(card).connect(timeout_s=1))
    eszig.select()
    assert eszig.pin_state() == (False, 3)
    with pytest.raises(WrongPin) as first:
        eszig.verify_pin("000000")
    assert first.value.tries_left == 2
    with pytest.raises(WrongPin) as second:
        eszig.verify_pin("000001")
    assert second.value.tries_left == 1
    with pytest.raises(CanRequired):
        eszig.pin_state()
    eszig.verify_can(CAN)
    with pytest.raises(PinBlocked):
        eszig.verify_pin("000002")


def test_internal_authenticate_and_files(card):
    eszig = EszigCard(InProcessReader(card).connect(timeout_s=1))
    eszig.select()
    eszig.verify_pin(PIN)
    assert len(eszig.internal_authenticate(b"\x01" * 32)) > 60
    assert eszig.certificate()[:1] == b"\x30"
    assert eszig.document()["card_serial"]


def test_removed_card_is_a_typed_error(card):
    eszig = EszigCard(InProcessReader(card).connect(timeout_s=1))
    card.remove()
    with pytest.raises(NoCard):
        eszig.select()


class RecordingClient:
    def __init__(self):
        self.calls = 0

    def login(self, challenge, prompt):
        self.calls += 1
        return "rid-package"


def test_bridge_drops_a_forged_challenge_without_touching_the_card():
    client = RecordingClient()
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=client,
                    prompt=ScriptedPrompt([PIN]))
    assert bridge.handle(challenge(key=Ed25519PrivateKey.generate()).model_dump_json().encode()) is None
    assert client.calls == 0 and bridge.handled == 0


def test_bridge_answers_a_refused_genuine_challenge_without_the_card():
    client = RecordingClient()
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=client, prompt=ScriptedPrompt())
    answer = bridge.handle(challenge(ttl_s=-1).model_dump_json().encode())
    assert answer.outcome == "error" and answer.error == "refused" and client.calls == 0


def test_bridge_answers_a_mobiltoken_challenge_with_the_typed_code():
    prompt = ScriptedPrompt(["123456"])
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=RecordingClient(), prompt=prompt)
    answer = bridge.handle(challenge(kind=ChallengeKind.MOBILTOKEN).model_dump_json().encode())
    assert (answer.outcome, answer.otp) == ("otp", "123456") and prompt.asked == [("otp", None)]


def test_bridge_answers_a_cancelled_prompt_as_cancelled():
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=RecordingClient(),
                    prompt=ScriptedPrompt([None]))
    answer = bridge.handle(challenge(kind=ChallengeKind.MOBILTOKEN).model_dump_json().encode())
    assert (answer.outcome, answer.error) == ("error", "cancelled")


def test_answers_never_carry_the_pin(card):
    from card_bridge.login import LocalCardClient

    class Eid:
        def authenticate(self, *, package, certificate_der, signature):
            return "rid"

    nonce = base64.b64encode(b"\x02" * 32).decode()
    head = base64.urlsafe_b64encode(f'{{"nonce": "{nonce}", "user_id": "O12345"}}'.encode()).decode()
    client = LocalCardClient(reader=InProcessReader(card), eid=Eid(), card_wait_s=1)
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=client,
                    prompt=ScriptedPrompt([PIN]))
    answer = bridge.handle(challenge(eid_package=head + ".sig").model_dump_json().encode())
    assert answer.outcome == "rid" and PIN not in answer.model_dump_json()
