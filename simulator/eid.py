"""The simulated eID server: eID request packages, card checks, rID packages, the card registry.

The two-factor (eSZIG) login, as the project models it (the real formats are not public):

1. The STS issues, for a sector user and a workstation, an **eID request package** (operation
   ``EidPackageRequest``, WS-Security signed by the institution).
2. The card client has the card sign the package's nonce (ECDSA P-256, SHA-256, DER) and posts
   package, card certificate and signature to the eID server (``POST /eid/authenticate``). The
   eID server checks them (:meth:`EidServer.authenticate`) and answers with an **rID package**.
   With MobilToken instead of a card, the bridge posts the package and the code the doctor
   typed from the phone (``POST /eid/mobiltoken``); the eID server checks the code against the
   user's MobilToken secret, which only the simulator's users file holds (single use), and
   answers with an rID as well (:meth:`EidServer.mobiltoken`).
3. The STS exchanges the rID for a SAML token (``Issue`` with method ``eszig``;
   :meth:`EidServer.redeem_rid`). The rID records the method (``eszig`` or ``mobiltoken``); the
   STS writes it into the assertion's AuthnContext (Smartcard or TimeSyncToken).

Both packages are ``base64url(JSON) + "." + base64url(signature)``: the signature is ECDSA P-256
with SHA-256 (DER ``ECDSA-Sig-Value``) by the eID server key (``pki/eid.key``) over the JSON bytes
(the decoded first part); base64url is unpadded (padding is accepted on input). The JSON carries
``"typ": "eid-package"`` or ``"typ": "rid"`` so that one can never pass for the other.

Package JSON: ``typ, package_id, user_id, institution, workstation, nonce`` (standard base64 of 32
random bytes), ``issued_at, expires_at`` (ISO-8601 UTC). rID JSON: ``typ, rid_id, user_id,
institution, package_id, workstation, method, issued_at, expires_at`` and, for ``eszig``,
``card_serial``.

Single use: a package is spent by the first *successful* authentication, an rID by the first
successful redemption; both are recorded in SQLite (:class:`UsedSet`, the simulator's
:class:`~simulator.store.Store`), so a restart cannot replay them.

Secrets: nothing here logs a package, a nonce, an rID or a key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from .eid_tokens import (
    _ECDSA,
    MAX_TOKEN_CHARS,
    NONCE_BYTES,
    PACKAGE_TYP,
    RID_TYP,
    EidKey,
    EidPackage,
    RidClaims,
    TokenInvalid,
    _utcnow,
    b64url_decode,
    b64url_encode,
    card_serial_of,
)
from .users import User, UserRegistry

__all__ = [
    "EID_ERROR_STATUS",
    "MAX_TOKEN_CHARS",
    "CardEntry",
    "CardRegistry",
    "EidCounters",
    "EidError",
    "EidKey",
    "EidPackage",
    "EidServer",
    "RidClaims",
    "RidRefused",
    "TokenInvalid",
    "UsedSet",
    "b64url_decode",
    "b64url_encode",
    "card_serial_of",
]

log = logging.getLogger("eeszt_gw.simulator.eid")

#: eID server error code -> HTTP status. Stable: the card bridge maps them to its own errors.
EID_ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,  # not JSON, a field missing or of the wrong type
    "package_invalid": 400,  # not an eID package, or not signed by the eID server
    "package_expired": 403,
    "package_used": 403,  # already spent by a successful authentication
    "card_untrusted": 403,  # not a card certificate of the card CA, or outside its validity
    "bad_signature": 403,  # the signature over the nonce does not verify with the card's key
    "card_not_registered": 403,  # the card is unknown, or registered to another user
    "card_not_activated": 403,  # the user's card, but not activated for EESZT
    "otp_invalid": 403,  # the MobilToken code is wrong, already used, or out of its time step
    "mobiltoken_not_enrolled": 403,  # the user has no MobilToken (or is unknown)
}


# --- errors -----------------------------------------------------------------------------------------
class EidError(Exception):
    """A refusal of the eID server: a stable ``code`` (see :data:`EID_ERROR_STATUS`)."""

    def __init__(self, code: str, message: str) -> None:
        if code not in EID_ERROR_STATUS:
            raise ValueError(f"unknown eID error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return EID_ERROR_STATUS[self.code]

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class RidRefused(Exception):
    """The STS refuses an rID. ``reason``: invalid, expired, replayed, wrong_user,
    wrong_institution, unknown_user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- single use -----------------------------------------------------------------------------------
class UsedSet(Protocol):
    """Where spent packages and rIDs are remembered (the simulator's SQLite store)."""

    def is_used(self, kind: str, token_id: str) -> bool: ...

    def mark_used(self, kind: str, token_id: str) -> bool:
        """Record the id as spent; False when it already was (atomic)."""
        ...


# --- the card registry ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardEntry:
    card_serial: str
    user_id: str
    activated: bool

    def as_json(self) -> dict[str, Any]:
        return {"card_serial": self.card_serial, "user_id": self.user_id,
                "activated": self.activated}


class CardRegistry:
    """Which card belongs to which user, and whether it is activated for EESZT.

    The baseline comes from the users file (``card_serial``, ``card_activated``); the admin port
    changes activation at run time (:meth:`set_activated`). Thread-safe.
    """

    def __init__(self, users: UserRegistry | Iterable[User]) -> None:
        self._lock = threading.Lock()
        self._owner: dict[str, str] = {}
        self._baseline: dict[str, bool] = {}
        for user in users:
            if user.card_serial:
                self._owner[user.card_serial] = user.user_id
                self._baseline[user.card_serial] = bool(user.card_activated)
        self._activated = dict(self._baseline)

    def get(self, card_serial: str) -> CardEntry | None:
        with self._lock:
            owner = self._owner.get(card_serial)
            if owner is None:
                return None
            return CardEntry(card_serial, owner, self._activated[card_serial])

    def entries(self) -> list[CardEntry]:
        with self._lock:
            return [CardEntry(s, u, self._activated[s]) for s, u in sorted(self._owner.items(),
                                                                          key=lambda kv: kv[1])]

    def set_activated(self, card_serial: str, activated: bool) -> CardEntry | None:
        """Change one card's activation; None when no such card is registered."""
        with self._lock:
            if card_serial not in self._owner:
                return None
            self._activated[card_serial] = bool(activated)
            return CardEntry(card_serial, self._owner[card_serial], bool(activated))

    def apply(self, states: dict[str, bool]) -> None:
        """Apply stored activation changes (unknown serials are ignored)."""
        with self._lock:
            for serial, activated in states.items():
                if serial in self._owner:
                    self._activated[serial] = bool(activated)

    def reset(self) -> None:
        """Back to the users file's activation."""
        with self._lock:
            self._activated = dict(self._baseline)

    def __len__(self) -> int:
        return len(self._owner)


# --- counters -------------------------------------------------------------------------------------
class EidCounters:
    """Thread-safe: the STS thread and the eID server thread both count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter = Counter()
        self._failed: Counter = Counter()
        self._refused: Counter = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self._c[name] += 1

    def auth_failed(self, code: str) -> None:
        with self._lock:
            self._failed[code] += 1

    def rid_refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] += 1

    def reset(self) -> None:
        with self._lock:
            self._c.clear()
            self._failed.clear()
            self._refused.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "packages_issued": self._c["packages_issued"],
                "authentications": {"ok": self._c["auth_ok"], "failed": dict(self._failed)},
                "rids_redeemed": self._c["rids_redeemed"],
                "rids_refused": dict(self._refused),
            }


# --- the eID server ---------------------------------------------------------------------------------
class EidServer:
    """Issues packages, authenticates cards, signs and redeems rIDs. Holds no store: callers pass
    their own :class:`UsedSet` (each thread has its own SQLite connection). Thread-safe."""

    def __init__(self, *, key: EidKey, card_ca_pem: bytes, users: UserRegistry,
                 package_ttl: timedelta = timedelta(seconds=120),
                 rid_ttl: timedelta = timedelta(seconds=60),
                 clock: Callable[[], datetime] = _utcnow) -> None:
        if package_ttl <= timedelta(0) or rid_ttl <= timedelta(0):
            raise ValueError("the package and rID lifetimes must be positive")
        self.key = key
        self.card_cas = x509.load_pem_x509_certificates(card_ca_pem)
        if not self.card_cas:
            raise ValueError("no card CA certificate")
        self.users = users
        self.cards = CardRegistry(users)
        self.package_ttl = package_ttl
        self.rid_ttl = rid_ttl
        self.clock = clock
        self.counters = EidCounters()

    # --- step 1: the package (STS, EidPackageRequest) -------------------------------------------
    def issue_package(self, *, user_id: str, institution: str, workstation: str,
                      now: datetime | None = None) -> tuple[str, EidPackage]:
        """A signed package for a user already checked by the caller."""
        now = now or self.clock()
        package = EidPackage(package_id=str(uuid.uuid4()), user_id=user_id,
                             institution=institution, workstation=workstation,
                             nonce=os.urandom(NONCE_BYTES), issued_at=now,
                             expires_at=now + self.package_ttl)
        self.counters.add("packages_issued")
        return self.key.sign(package.claims()), package

    # --- step 2: the card (eID server, POST /eid/authenticate) ----------------------------------
    def authenticate(self, *, package: Any, card_certificate: Any, signature: Any,
                     used: UsedSet, now: datetime | None = None) -> tuple[str, RidClaims]:
        """Check package, card and nonce signature; return the signed rID and its claims.

        Raises :class:`EidError` with a stable code; the checks run in the order of
        :data:`EID_ERROR_STATUS`.
        """
        try:
            rid, claims = self._authenticate(package, card_certificate, signature, used,
                                             now or self.clock())
        except EidError as exc:
            self.counters.auth_failed(exc.code)
            log.info("eID authentication refused: %s", exc.code)
            raise
        self.counters.add("auth_ok")
        log.info("eID authentication ok for %s (card %s)", claims.user_id, claims.card_serial)
        return rid, claims

    def _authenticate(self, package_text: Any, cert_b64: Any, sig_b64: Any, used: UsedSet,
                      now: datetime) -> tuple[str, RidClaims]:
        for name, value in (("package", package_text), ("card_certificate", cert_b64),
                            ("signature", sig_b64)):
            if not isinstance(value, str) or not value:
                raise EidError("bad_request", f"{name} must be a non-empty string")
        package = self._valid_package(package_text, used, now)
        cert = self._trusted_card(cert_b64, now)
        serial = card_serial_of(cert)
        if not serial:
            raise EidError("card_untrusted", "the card certificate names no card serial")
        try:
            signature = base64.b64decode(sig_b64, validate=True)
            public = cert.public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            public.verify(signature, package.nonce, _ECDSA)
        except (binascii.Error, ValueError, InvalidSignature):
            raise EidError("bad_signature",
                           "the signature over the nonce does not verify with the card's key") from None

        entry = self.cards.get(serial)
        if entry is None or entry.user_id != package.user_id:
            raise EidError("card_not_registered",
                           f"card {serial} is not registered to {package.user_id}")
        if not entry.activated:
            raise EidError("card_not_activated", f"card {serial} is not activated for EESZT")
        if not used.mark_used("package", package.package_id):  # a concurrent twin won
            raise EidError("package_used", "the eID package was already used")
        rid = RidClaims(rid_id=str(uuid.uuid4()), user_id=package.user_id,
                        institution=package.institution, package_id=package.package_id,
                        card_serial=serial, workstation=package.workstation, issued_at=now,
                        expires_at=now + self.rid_ttl)
        return self.key.sign(rid.claims()), rid

    def _trusted_card(self, cert_b64: str, now: datetime) -> x509.Certificate:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(cert_b64, validate=True))
        except (binascii.Error, ValueError):
            raise EidError("card_untrusted", "card_certificate is not a base64 DER certificate") from None
        for ca in self.card_cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if not (ca.not_valid_before_utc <= now < ca.not_valid_after_utc):
                raise EidError("card_untrusted", "the card CA certificate is outside its validity")
            break
        else:
            raise EidError("card_untrusted", "the card certificate is not from the card CA")
        if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
            raise EidError("card_untrusted", "the card certificate is outside its validity")
        return cert

    # --- step 2, MobilToken instead of a card (eID server, POST /eid/mobiltoken) -------------
    def mobiltoken(self, *, package: Any, otp: Any, used: UsedSet,
                   now: datetime | None = None) -> tuple[str, RidClaims]:
        """Check the package and the doctor's one-time code; return an rID for ``mobiltoken``.

        The code is checked against the user's MobilToken secret (RFC 6238, single use).
        Raises :class:`EidError`: bad_request, package_*, mobiltoken_not_enrolled, otp_invalid.
        """
        try:
            rid, claims = self._mobiltoken(package, otp, used, now or self.clock())
        except EidError as exc:
            self.counters.auth_failed(exc.code)
            log.info("eID MobilToken authentication refused: %s", exc.code)
            raise
        self.counters.add("auth_ok")
        log.info("eID MobilToken authentication ok for %s", claims.user_id)
        return rid, claims

    def _mobiltoken(self, package_text: Any, otp: Any, used: UsedSet,
                    now: datetime) -> tuple[str, RidClaims]:
        if not isinstance(package_text, str) or not package_text:
            raise EidError("bad_request", "package must be a non-empty string")
        if not isinstance(otp, str) or len(otp) != 6 or not otp.isdigit():
            raise EidError("bad_request", "otp must be a string of 6 digits")
        package = self._valid_package(package_text, used, now)
        user = self.users.get(package.user_id)
        if user is None or not user.totp_secret:
            raise EidError("mobiltoken_not_enrolled",
                           f"{package.user_id} has no MobilToken registered")
        if not user.check_totp(otp, at=time.time()):
            raise EidError("otp_invalid", "the MobilToken code is wrong, already used or too old")
        if not used.mark_used("package", package.package_id):
            raise EidError("package_used", "the eID package was already used")
        rid = RidClaims(rid_id=str(uuid.uuid4()), user_id=package.user_id,
                        institution=package.institution, package_id=package.package_id,
                        card_serial=None, workstation=package.workstation, issued_at=now,
                        expires_at=now + self.rid_ttl, method="mobiltoken")
        return self.key.sign(rid.claims()), rid

    def _valid_package(self, package_text: str, used: UsedSet, now: datetime) -> EidPackage:
        try:
            package = EidPackage.from_claims(self.key.verify(package_text, typ=PACKAGE_TYP))
        except TokenInvalid as exc:
            raise EidError("package_invalid", f"the eID package is invalid: {exc}") from None
        if now >= package.expires_at:
            raise EidError("package_expired", "the eID package has expired")
        if used.is_used("package", package.package_id):
            raise EidError("package_used", "the eID package was already used")
        return package

    # --- step 3: the rID (STS, Issue with method eszig) -----------------------------------------
    def redeem_rid(self, rid_text: str, *, user_id: str, institution: str, used: UsedSet,
                   now: datetime | None = None) -> RidClaims:
        """Check an rID for ``user_id`` presented by ``institution`` and spend it.

        Raises :class:`RidRefused`; checks run: signature, expiry, user, institution, the user
        still registered there, replay.
        """
        try:
            claims = self._redeem(rid_text, user_id, institution, used, now or self.clock())
        except RidRefused as exc:
            self.counters.rid_refused(exc.reason)
            raise
        self.counters.add("rids_redeemed")
        return claims

    def _redeem(self, rid_text: str, user_id: str, institution: str, used: UsedSet,
                now: datetime) -> RidClaims:
        try:
            claims = RidClaims.from_claims(self.key.verify(rid_text, typ=RID_TYP))
        except TokenInvalid as exc:
            raise RidRefused("invalid", f"the rID package is invalid: {exc}") from None
        if now >= claims.expires_at:
            raise RidRefused("expired", "the rID package has expired")
        if claims.user_id != user_id:
            raise RidRefused("wrong_user", "the rID package was issued for another user (wrong user)")
        if claims.institution != institution:
            raise RidRefused("wrong_institution",
                             "the rID package was issued for another institution")
        user = self.users.get(user_id)
        if user is None or user.institution != institution:
            raise RidRefused("unknown_user", f"authentication failed for {user_id}")
        if not used.mark_used("rid", claims.rid_id):
            raise RidRefused("replayed", "the rID package was already redeemed (replayed)")
        return claims
