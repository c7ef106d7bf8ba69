"""Checking a challenge before anything touches the card.

Used challenge ids are kept until their challenge expires, in memory and, with a ``used_file``,
on disk (:class:`UsedChallenges`): a captured challenge replayed after the bridge restarts, still
inside its lifetime, is refused before the doctor is asked anything and before the card is
touched.
"""

from __future__ import annotations

import base64
import json
import logging
import os
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

log = logging.getLogger("eeszt_gw.card_bridge")


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


class UsedChallenges:
    """Challenge ids already used, each with its expiry; optionally kept in a file.

    The file (JSON ``{"used": {id: expires_at}}``) is written atomically (a 0600 temporary file,
    then a rename) after every new id, pruned of expired ids; a bridge restarted over the same
    file refuses what it used before. An unreadable file is logged and treated as empty: it
    holds no secret, and the signature and expiry checks still apply.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._seen: dict[str, datetime] = {}
        if self.path is not None:
            self._seen = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> dict[str, datetime]:
        try:
            data = json.loads(path.read_text())
            return {str(k): datetime.fromisoformat(v) for k, v in data.get("used", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("used challenges file %s is unreadable (%s); starting empty", path,
                        type(exc).__name__)
            return {}

    def add(self, challenge_id: str, expires_at: datetime, *, now: datetime,
            keep_after: timedelta) -> bool:
        """Record ``challenge_id``; False when it was used before (a replay)."""
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now - keep_after}
        if challenge_id in self._seen:
            return False
        self._seen[challenge_id] = expires_at
        if self.path is not None:
            self._save(self.path)
        return True

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"used": {k: v.isoformat() for k, v in self._seen.items()}}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def __contains__(self, challenge_id: str) -> bool:
        return challenge_id in self._seen


class ChallengeVerifier:
    """Signature by the pinned key, this workstation, not expired, never seen before.

    ``used_file``: where used challenge ids outlive a restart (see :class:`UsedChallenges`).
    """

    def __init__(self, *, key: Ed25519PublicKey, workstation: str, max_skew_s: float = 60,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 used_file: Path | None = None) -> None:
        self.key = key
        self.workstation = workstation
        self.skew = timedelta(seconds=max_skew_s)
        self.clock = clock
        self.used = UsedChallenges(used_file)
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
        with self._lock:
            if not self.used.add(str(challenge.challenge_id), challenge.expires_at, now=now,
                                 keep_after=self.skew):
                raise ChallengeRefused("the challenge was already used (replay)")
