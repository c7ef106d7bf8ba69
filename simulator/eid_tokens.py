"""The eID server's signed tokens: eID request packages and rID packages (no I/O, no state).

Both are ``base64url(JSON) + "." + base64url(signature)``, ECDSA P-256 with SHA-256 by the eID
server key, over the JSON bytes; ``"typ"`` keeps one from passing for the other. See
:mod:`simulator.eid` for the login they serve.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

NONCE_BYTES = 32
PACKAGE_TYP = "eid-package"
RID_TYP = "rid"
MAX_TOKEN_CHARS = 8192
_ECDSA = ec.ECDSA(hashes.SHA256())
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
#: how the doctor proved who they are, as an rID records it
RID_METHODS = ("eszig", "mobiltoken")


# --- encoding and signing -------------------------------------------------------------------------
def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Unpadded or padded base64url. Raises ValueError on anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise TokenInvalid(f"{name} is missing")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TokenInvalid(f"{name} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise TokenInvalid(f"{name} has no time zone")
    return moment.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TokenInvalid(ValueError):
    """A package or rID that is malformed, of the wrong type, or not signed by the eID key."""


class EidKey:
    """The eID server's ECDSA P-256 key: signs and verifies packages and rIDs. Thread-safe."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the eID server key must be an ECDSA P-256 key")
        self._key = key
        self._public = key.public_key()

    @classmethod
    def from_pem(cls, key_pem: bytes) -> "EidKey":
        try:
            key = load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise ValueError("cannot load the eID server key (expected an unencrypted PEM key)") from None
        return cls(key)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return "EidKey(ECDSA P-256)"

    def sign(self, claims: dict[str, Any]) -> str:
        """``base64url(JSON) + "." + base64url(DER signature over the JSON bytes)``."""
        body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        return f"{b64url_encode(body)}.{b64url_encode(self._key.sign(body, _ECDSA))}"

    def verify(self, token: str, *, typ: str) -> dict[str, Any]:
        """The claims of a token signed by this key with ``"typ": typ``. Raises TokenInvalid."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid("not a signed package")
        parts = token.strip().split(".")
        if len(parts) != 2:
            raise TokenInvalid("not a signed package (expected two base64url parts)")
        try:
            body, signature = b64url_decode(parts[0]), b64url_decode(parts[1])
        except ValueError:
            raise TokenInvalid("not a signed package (not base64url)") from None
        try:
            self._public.verify(signature, body, _ECDSA)
        except InvalidSignature:
            raise TokenInvalid("the signature is not the eID server's") from None
        try:
            claims = json.loads(body)
        except ValueError:
            raise TokenInvalid("the signed part is not JSON") from None
        if not isinstance(claims, dict) or claims.get("typ") != typ:
            raise TokenInvalid(f"not an {typ} package")
        return claims


def _str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TokenInvalid(f"{name} is missing")
    return value


@dataclass(frozen=True, slots=True)
class EidPackage:
    """The claims of an eID request package. ``nonce`` is a secret: not in repr."""

    package_id: str
    user_id: str
    institution: str
    workstation: str
    nonce: bytes
    issued_at: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return (f"EidPackage(package_id={self.package_id!r}, user_id={self.user_id!r}, "
                f"institution={self.institution!r}, workstation={self.workstation!r}, "
                f"expires_at={self.expires_at.isoformat()})")

    def claims(self) -> dict[str, Any]:
        return {"typ": PACKAGE_TYP, "package_id": self.package_id, "user_id": self.user_id,
                "institution": self.institution, "workstation": self.workstation,
                "nonce": base64.b64encode(self.nonce).decode("ascii"),
                "issued_at": _iso(self.issued_at), "expires_at": _iso(self.expires_at)}

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> "EidPackage":
        try:
            nonce = base64.b64decode(_str(claims, "nonce"), validate=True)
        except (binascii.Error, ValueError):
            raise TokenInvalid("nonce is not base64") from None
        if len(nonce) != NONCE_BYTES:
            raise TokenInvalid(f"nonce is not {NONCE_BYTES} bytes")
        return cls(package_id=_str(claims, "package_id"), user_id=_str(claims, "user_id"),
                   institution=_str(claims, "institution"),
                   workstation=_str(claims, "workstation"), nonce=nonce,
                   issued_at=_parse_time(claims.get("issued_at"), "issued_at"),
                   expires_at=_parse_time(claims.get("expires_at"), "expires_at"))


@dataclass(frozen=True, slots=True)
class RidClaims:
    """The claims of an rID package. ``method``: ``eszig`` (the card signed the nonce; then
    ``card_serial`` names the card) or ``mobiltoken`` (the doctor typed the phone's code; no
    card). An rID without ``method`` is an eszig one."""

    rid_id: str
    user_id: str
    institution: str
    package_id: str
    card_serial: str | None
    workstation: str
    issued_at: datetime
    expires_at: datetime
    method: str = "eszig"

    def claims(self) -> dict[str, Any]:
        out = {"typ": RID_TYP, "rid_id": self.rid_id, "user_id": self.user_id,
               "institution": self.institution, "package_id": self.package_id,
               "workstation": self.workstation, "method": self.method,
               "issued_at": _iso(self.issued_at), "expires_at": _iso(self.expires_at)}
        if self.card_serial:
            out["card_serial"] = self.card_serial
        return out

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> "RidClaims":
        method = claims.get("method", "eszig")
        if method not in RID_METHODS:
            raise TokenInvalid(f"method must be one of {', '.join(RID_METHODS)}")
        return cls(rid_id=_str(claims, "rid_id"), user_id=_str(claims, "user_id"),
                   institution=_str(claims, "institution"),
                   package_id=_str(claims, "package_id"),
                   card_serial=_str(claims, "card_serial") if method == "eszig" else None,
                   workstation=_str(claims, "workstation"),
                   issued_at=_parse_time(claims.get("issued_at"), "issued_at"),
                   expires_at=_parse_time(claims.get("expires_at"), "expires_at"),
                   method=method)


def card_serial_of(cert: x509.Certificate) -> str | None:
    """The card serial: the certificate subject's serialNumber attribute."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


