"""Checking a challenge before anything touches the card."""

from __future__ import annotations

import base64
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.card import CardChallenge

from .errors import ChallengeRefused


def load_pinned_key(path: Path) -> Ed25519PublicKey:
    """The gateway's challenge key, from a certificate or a public key PEM."""
    data = Path(path).read_bytes()
    if b"CERTIFICATE" in data:
        key = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: the pinned challenge key must be Ed25519")
    return key


class ForgedChallenge(ChallengeRefused):
    """The signature is not the gateway's: the challenge is dropped without an answer."""


class ChallengeVerifier:
    """Signature by the pinned key, this workstation, not expired, never seen before."""

    def __init__(self, *, key: Ed25519PublicKey, workstation: str, max_skew_s: float = 60,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.key = key
        self.workstation = workstation
        self.skew = timedelta(seconds=max_skew_s)
        self.clock = clock
        self._seen: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def verify(self, challenge: CardChallenge) -> None:
        """Raises ForgedChallenge (bad signature) or ChallengeRefused (wrong place, stale, replay)."""
        try:
            self.key.verify(base64.b64decode(challenge.signature), challenge.signing_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise ForgedChallenge(f"challenge {challenge.challenge_id} is not signed by the "
                                  f"gateway's key ({type(exc).__name__})") from None
        now = self.clock()
        if challenge.workstation != self.workstation:
            raise ChallengeRefused(f"challenge for {challenge.workstation}, this is {self.workstation}")
        if challenge.expires_at <= now:
            raise ChallengeRefused("the challenge expired")
        if challenge.created_at > now + self.skew:
            raise ChallengeRefused("the challenge is dated in the future")
        key = str(challenge.challenge_id)
        with self._lock:
            self._seen = {k: exp for k, exp in self._seen.items() if exp > now - self.skew}
            if key in self._seen:
                raise ChallengeRefused("the challenge was already used (replay)")
            self._seen[key] = challenge.expires_at
