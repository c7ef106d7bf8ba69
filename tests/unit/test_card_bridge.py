"""The card bridge without PC/SC: challenge checks, the applet through the card seam, answers."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from card_bridge.card import EszigCard, InProcessReader
from card_bridge.challenge import ChallengeVerifier, ForgedChallenge
from card_bridge.daemon import Bridge
from card_bridge.errors import CanRequired, ChallengeRefused, NoCard, PinBlocked, WrongCode, WrongPin
from card_bridge.login import LocalCardClient, MobilTokenClient
from card_bridge.prompt import ScriptedPrompt
from pydantic import ValidationError

from schemas.card import CardAnswer, CardChallenge, LoginMethod
from simulator.card import InProcessCard
from tests.pcsc_support import CAN, PIN, issue_card
from workers.logins.coordinator import sign_challenge

KEY = Ed25519PrivateKey.generate()


def package(user_id: str = "O12345") -> str:
    """An eID package as the bridge reads it (its signature is the eID server's business)."""
    nonce = base64.b64encode(b"\x02" * 32).decode()
    head = base64.urlsafe_b64encode(json.dumps({"nonce": nonce, "user_id": user_id}).encode())
    return head.decode() + ".sig"


def challenge(*, workstation="WS-01", ttl_s=60, key=KEY, **kw) -> CardChallenge:
    now = datetime.now(timezone.utc)
    user = kw.get("user_id", "O12345")
    return sign_challenge(key, CardChallenge(
        challenge_id=kw.get("challenge_id") or uuid.uuid4(), user_id=user,
        workstation=workstation, institution="H100200", purpose="Demo Kórház asks O12345 to sign in",
        eid_package=kw.get("eid_package") or package(user), created_at=now - timedelta(seconds=1),
        expires_at=now + timedelta(seconds=ttl_s)))


def verifier(used_file=None) -> ChallengeVerifier:
    return ChallengeVerifier(key=KEY.public_key(), workstation="WS-01", used_file=used_file)


class FakeEid:
    """The eID server as the bridge sees it: records what it was sent, answers with an rID."""

    def __init__(self, refuse: Exception | None = None):
        self.codes: list[str] = []
        self.refuse = refuse

    def mobiltoken(self, *, package, otp):
        self.codes.append(otp)
        if self.refuse is not None:
            raise self.refuse
        return "rid-of-" + package[:8]

    def authenticate(self, *, package, certificate_der, signature):
        return "rid"


def mobiltoken_bridge(prompt, eid=None) -> Bridge:
    return Bridge(workstation="WS-01", verifier=verifier(), prompt=prompt,
                  card_client=MobilTokenClient(eid=eid or FakeEid()), method=LoginMethod.MOBILTOKEN)


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


def test_bridge_answers_a_mobiltoken_challenge_with_an_rid_not_the_typed_code():
    # Given a MobilToken workstation, when the doctor types the phone's code,
    prompt, eid = ScriptedPrompt(["123456"]), FakeEid()
    answer = mobiltoken_bridge(prompt, eid).handle(challenge().model_dump_json().encode())
    # then the code went to the eID server only, and the answer carries the eID server's rID.
    assert eid.codes == ["123456"] and prompt.asked == [("otp", None)]
    assert (answer.outcome, answer.method) == ("rid", "mobiltoken")
    assert answer.rid_package.startswith("rid-of-") and "123456" not in answer.model_dump_json()


def test_bridge_answers_a_cancelled_prompt_as_cancelled():
    bridge = mobiltoken_bridge(ScriptedPrompt([None]))
    answer = bridge.handle(challenge().model_dump_json().encode())
    assert (answer.outcome, answer.error) == ("error", "cancelled")


def test_a_refused_or_malformed_mobiltoken_code_is_a_wrong_code_answer():
    eid = FakeEid(refuse=WrongCode("otp_invalid: the code is wrong"))
    answers = [mobiltoken_bridge(ScriptedPrompt([code]), eid).handle(
        challenge().model_dump_json().encode()) for code in ("654321", "12ab")]
    assert [(a.outcome, a.error) for a in answers] == [("error", "wrong_code")] * 2
    assert eid.codes == ["654321"], "a code that is not 6 digits is not even sent"


def test_an_answer_cannot_carry_a_one_time_code():
    fields = dict(challenge_id=uuid.uuid4(), user_id="O12345", workstation="WS-01",
                  at=datetime.now(timezone.utc))
    with pytest.raises(ValidationError):
        CardAnswer(outcome="otp", **fields)
    with pytest.raises(ValidationError):
        CardAnswer(outcome="rid", rid_package="r", otp="123456", **fields)


def test_a_challenge_replayed_after_a_bridge_restart_never_reaches_the_card(card, tmp_path):
    # Given a card bridge that keeps its used challenge ids in its state folder,
    used = tmp_path / "state" / "used-challenges-WS-01.json"
    apdus: list[bytes] = []
    original = card.transmit
    card.transmit = lambda apdu: (apdus.append(apdu), original(apdu))[1]

    def bridge(prompt):
        return Bridge(workstation="WS-01", verifier=verifier(used_file=used), prompt=prompt,
                      card_client=LocalCardClient(reader=InProcessReader(card), eid=FakeEid(),
                                                  card_wait_s=1))

    captured = challenge().model_dump_json().encode()
    assert bridge(ScriptedPrompt([PIN])).handle(captured).outcome == "rid"
    assert apdus, "the first login used the card"
    assert stat.S_IMODE(os.stat(used).st_mode) == 0o600
    # When the captured challenge is replayed to a restarted bridge (a new Bridge and verifier
    # over the same file), within its lifetime,
    apdus.clear()
    prompt = ScriptedPrompt([PIN])
    answer = bridge(prompt).handle(captured)
    # then it is refused before the doctor is asked anything, and the card saw nothing.
    assert (answer.outcome, answer.error) == ("error", "refused") and "replay" in answer.message
    assert apdus == [] and prompt.asked == []


def test_the_used_challenges_file_forgets_expired_ids(tmp_path):
    # Given a bridge's verifier with its used-challenges file, and a clock the test moves,
    used, now = tmp_path / "used.json", [datetime.now(timezone.utc)]
    v = ChallengeVerifier(key=KEY.public_key(), workstation="WS-01", used_file=used,
                          clock=lambda: now[0])
    first = challenge(ttl_s=60)
    v.verify(first)
    assert list(json.loads(used.read_text())["used"]) == [str(first.challenge_id)]
    # When the first challenge is long expired and another one is used,
    now[0] += timedelta(seconds=200)
    later = challenge(ttl_s=400)
    v.verify(later)
    # then the file keeps only the one that can still be replayed.
    assert list(json.loads(used.read_text())["used"]) == [str(later.challenge_id)]
