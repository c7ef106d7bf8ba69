"""WS-Security verification of incoming SOAP 1.1 envelopes (simulator side).

:class:`WsseVerifier` checks what :class:`workers.client.wsse.WsseSigner` writes, in this order
(cheap checks before the RSA operation), and raises :class:`WsseError` with a stable
:class:`~schemas.soap.FaultCode`:

1. one ``wsse:Security`` header ............................ SECURITY_HEADER_MISSING
2. a ``wsu:Timestamp`` with Created and Expires ............ TIMESTAMP_MISSING
3. now <= Expires + skew and Created <= now + skew, and
   Expires - Created at most the maximum lifetime (15 min) .. TIMESTAMP_STALE
4. one ``ds:Signature`` in the Security header ............. SIGNATURE_MISSING
5. the signed references resolve, each to exactly one
   element, and cover the Envelope's own soap:Body and the
   header's Timestamp; only exc-c14n transforms ............. SIGNATURE_SCOPE
6. the BinarySecurityToken chains to a trusted CA .......... CERT_UNTRUSTED
7. the certificate is within its validity period ........... CERT_EXPIRED
   and not on its CA's CRL (``revoked_at``) ................ CERT_REVOKED
8. xmlsec verifies SignedInfo and every digest ............. SIGNATURE_INVALID

Step 5 is the defence against XML signature wrapping (:mod:`simulator.wsse_scope`): the
verifier resolves every Reference itself and only then lets xmlsec resolve the same Ids (it
registers exactly those nodes), so "the signed element" and "the element the service reads"
cannot differ.

Each distinct certificate is parsed and chain-checked once; the result (certificate, xmlsec
key, institution id) is kept in a bounded LRU cache keyed by the SHA-256 of its DER bytes.
The validity period and the revocation status (``revoked_at``, which reads the CRLs) are
checked on every call, cache hit or not. Failed certificates are not cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from lxml import etree

from schemas.soap import DS_NS, SAML2_NS, SOAP11_NS, WSSE_NS, WSU_NS, FaultCode
from simulator.lru import Lru

from .wsse_scope import WsseError, check_scope, split_clark as _split

__all__ = ["VerifiedMessage", "WsseError", "WsseVerifier", "utcnow"]

_ENVELOPE = f"{{{SOAP11_NS}}}Envelope"
_HEADER = f"{{{SOAP11_NS}}}Header"
_BODY = f"{{{SOAP11_NS}}}Body"
_SECURITY = f"{{{WSSE_NS}}}Security"
_BST = f"{{{WSSE_NS}}}BinarySecurityToken"
_STR_REFERENCE = f"{{{DS_NS}}}KeyInfo/{{{WSSE_NS}}}SecurityTokenReference/{{{WSSE_NS}}}Reference"
_TIMESTAMP = f"{{{WSU_NS}}}Timestamp"
_CREATED = f"{{{WSU_NS}}}Created"
_EXPIRES = f"{{{WSU_NS}}}Expires"
_WSU_ID = f"{{{WSU_NS}}}Id"
_SIGNATURE = f"{{{DS_NS}}}Signature"
_ASSERTION = f"{{{SAML2_NS}}}Assertion"

_C = xmlsec.constants
# xmlsec counts digest methods as reference transforms once the list is explicit.
_REFERENCE_TRANSFORMS = (
    _C.TransformExclC14N,
    _C.TransformSha256,
    _C.TransformSha384,
    _C.TransformSha512,
)
_CACHE_SIZE = 1024
_MAX_CHAIN = 5


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC). The default clock of the verifiers."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """What a verified envelope proves: who signed it, and the signed Body.

    ``assertion`` is the ``saml2:Assertion`` found in the Security header, *not yet* checked
    (that is :class:`simulator.saml.AssertionVerifier`'s job), or None.
    """

    signer_cert: x509.Certificate
    institution_id: str | None
    body: etree._Element
    assertion: etree._Element | None
    created: datetime
    expires: datetime


@dataclass(frozen=True, slots=True)
class _TrustedCert:
    cert: x509.Certificate
    key: xmlsec.Key
    institution_id: str | None
    not_before: datetime
    not_after: datetime


def parse_instant(text: str | None) -> datetime | None:
    """An xs:dateTime as an aware UTC datetime (UTC when it names no zone); None if unusable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _institution_id(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _load_pems(pems: Sequence[bytes]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for pem in pems:
        certs.extend(x509.load_pem_x509_certificates(pem))
    return certs


class WsseVerifier:
    """Verifies signed SOAP envelopes against a set of trusted CAs.

    Built once per server process. ``trusted_ca_pems`` are the trust anchors (PEM, one or more
    certificates each); ``intermediate_pems`` optional CA certificates that may sit between an
    anchor and the signer. ``clock`` returns an aware datetime. ``revoked_at`` (optional) returns
    when a certificate was revoked, or None when it is not. Thread-safe.
    """

    def __init__(
        self,
        *,
        trusted_ca_pems: Sequence[bytes],
        max_skew_seconds: float = 300,
        clock: Callable[[], datetime] = utcnow,
        intermediate_pems: Sequence[bytes] = (),
        cache_size: int = _CACHE_SIZE,
        revoked_at: Callable[[x509.Certificate], datetime | None] | None = None,
    ) -> None:
        self._revoked_at = revoked_at
        self._anchors = _load_pems(trusted_ca_pems)
        if not self._anchors:
            raise ValueError("at least one trusted CA certificate is required")
        self._intermediates = [c for c in _load_pems(intermediate_pems) if _is_ca(c)]
        self._skew = timedelta(seconds=max_skew_seconds)
        self._clock = clock
        self._cache: Lru[bytes, _TrustedCert] = Lru(cache_size)

    @property
    def max_skew_seconds(self) -> float:
        """Allowed clock skew for Timestamps; the admin endpoint changes it at run time."""
        return self._skew.total_seconds()

    @max_skew_seconds.setter
    def max_skew_seconds(self, seconds: float) -> None:
        self._skew = timedelta(seconds=seconds)

    #: the longest Timestamp lifetime (Expires - Created) accepted: a message signed to stay
    #: valid for hours could be replayed for hours
    _max_lifetime = timedelta(minutes=15)

    @property
    def max_lifetime_seconds(self) -> float:
        """Longest accepted Timestamp lifetime; the simulator's rules set it."""
        return self._max_lifetime.total_seconds()

    @max_lifetime_seconds.setter
    def max_lifetime_seconds(self, seconds: float) -> None:
        self._max_lifetime = timedelta(seconds=seconds)

    # --- public -------------------------------------------------------------------------------
    def verify(self, envelope: etree._Element) -> VerifiedMessage:
        """Verify ``envelope`` (a parsed SOAP 1.1 Envelope); raise :class:`WsseError` if bad."""
        if envelope.tag != _ENVELOPE:
            raise WsseError(FaultCode.SCHEMA_INVALID, "not a SOAP 1.1 Envelope")
        header, body = self._header_and_body(envelope)
        security = self._security(header)
        timestamp, created, expires = self._timestamp(security)
        self._check_freshness(created, expires)

        signatures = security.findall(_SIGNATURE)
        if not signatures:
            raise WsseError(FaultCode.SIGNATURE_MISSING, "the Security header has no ds:Signature")
        if len(signatures) > 1:
            raise WsseError(FaultCode.SIGNATURE_SCOPE, "more than one ds:Signature in the header")
        signature = signatures[0]
        targets = self._check_scope(envelope, signature, body, timestamp)

        trusted = self._certificate(security, signature)
        ctx = xmlsec.SignatureContext()
        ctx.key = trusted.key
        ctx.enable_signature_transform(_C.TransformExclC14N)
        ctx.enable_signature_transform(_C.TransformRsaSha256)
        for transform in _REFERENCE_TRANSFORMS:
            ctx.enable_reference_transform(transform)
        try:
            for element, attr_name in targets:
                local, ns = _split(attr_name)
                ctx.register_id(element, local, ns)
            ctx.verify(signature)
        except xmlsec.VerificationError:
            raise WsseError(FaultCode.SIGNATURE_INVALID, "the signature does not verify") from None
        except xmlsec.Error as exc:
            raise WsseError(
                FaultCode.SIGNATURE_INVALID, f"the signature cannot be processed ({exc})"
            ) from None

        assertions = security.findall(_ASSERTION)
        if len(assertions) > 1:
            raise WsseError(FaultCode.TOKEN_INVALID, "more than one SAML assertion in the header")
        return VerifiedMessage(
            signer_cert=trusted.cert,
            institution_id=trusted.institution_id,
            body=body,
            assertion=assertions[0] if assertions else None,
            created=created,
            expires=expires,
        )

    # --- steps --------------------------------------------------------------------------------
    @staticmethod
    def _header_and_body(envelope: etree._Element) -> tuple[etree._Element, etree._Element]:
        headers = [c for c in envelope if c.tag == _HEADER]
        bodies = [c for c in envelope if c.tag == _BODY]
        if len(bodies) != 1:
            raise WsseError(
                FaultCode.SIGNATURE_SCOPE if bodies else FaultCode.SCHEMA_INVALID,
                f"the Envelope must have exactly one soap:Body, found {len(bodies)}",
            )
        if not headers:
            raise WsseError(FaultCode.SECURITY_HEADER_MISSING, "the Envelope has no soap:Header")
        if len(headers) > 1:
            raise WsseError(FaultCode.SIGNATURE_SCOPE, "the Envelope has more than one soap:Header")
        return headers[0], bodies[0]

    @staticmethod
    def _security(header: etree._Element) -> etree._Element:
        found = header.findall(_SECURITY)
        if not found:
            raise WsseError(FaultCode.SECURITY_HEADER_MISSING, "no wsse:Security header")
        if len(found) > 1:
            raise WsseError(FaultCode.SIGNATURE_SCOPE, "more than one wsse:Security header")
        return found[0]

    @staticmethod
    def _timestamp(security: etree._Element) -> tuple[etree._Element, datetime, datetime]:
        found = security.findall(_TIMESTAMP)
        if not found:
            raise WsseError(FaultCode.TIMESTAMP_MISSING, "no wsu:Timestamp in the Security header")
        if len(found) > 1:
            raise WsseError(FaultCode.SIGNATURE_SCOPE, "more than one wsu:Timestamp")
        timestamp = found[0]
        created = parse_instant(timestamp.findtext(_CREATED))
        expires = parse_instant(timestamp.findtext(_EXPIRES))
        if created is None or expires is None:
            raise WsseError(
                FaultCode.TIMESTAMP_MISSING, "wsu:Timestamp needs a valid Created and Expires"
            )
        return timestamp, created, expires

    def _check_freshness(self, created: datetime, expires: datetime) -> None:
        now = self._clock()
        if expires < created:
            raise WsseError(FaultCode.TIMESTAMP_STALE, "the Timestamp expires before it is created")
        if expires - created > self._max_lifetime:
            raise WsseError(
                FaultCode.TIMESTAMP_STALE,
                f"the Timestamp lives {(expires - created).total_seconds():.0f} s from Created to "
                f"Expires, longer than the {self._max_lifetime.total_seconds():.0f} s allowed",
            )
        if created > now + self._skew:
            raise WsseError(
                FaultCode.TIMESTAMP_STALE,
                f"the Timestamp is created in the future ({created.isoformat()}, now "
                f"{now.isoformat()})",
            )
        if now > expires + self._skew:
            raise WsseError(
                FaultCode.TIMESTAMP_STALE,
                f"the Timestamp expired at {expires.isoformat()} (now {now.isoformat()})",
            )

    @staticmethod
    def _check_scope(
        envelope: etree._Element,
        signature: etree._Element,
        body: etree._Element,
        timestamp: etree._Element,
    ) -> list[tuple[etree._Element, str]]:
        """Resolve every Reference (:func:`simulator.wsse_scope.check_scope`)."""
        return check_scope(envelope, signature, body, timestamp)

    def _certificate(self, security: etree._Element, signature: etree._Element) -> _TrustedCert:
        tokens = security.findall(_BST)
        reference = signature.find(_STR_REFERENCE)
        if reference is not None:
            wanted = (reference.get("URI") or "").removeprefix("#")
            tokens = [t for t in tokens if t.get(_WSU_ID) == wanted]
        if len(tokens) != 1:
            raise WsseError(
                FaultCode.CERT_UNTRUSTED, "no (unambiguous) BinarySecurityToken for the signature"
            )
        try:
            der = base64.b64decode("".join((tokens[0].text or "").split()), validate=True)
        except (binascii.Error, ValueError):
            raise WsseError(
                FaultCode.CERT_UNTRUSTED, "the BinarySecurityToken is not base64"
            ) from None
        if not der:
            raise WsseError(FaultCode.CERT_UNTRUSTED, "the BinarySecurityToken is empty")

        trusted = self._trusted(der)
        now = self._clock()
        if not trusted.not_before <= now <= trusted.not_after:
            raise WsseError(
                FaultCode.CERT_EXPIRED,
                f"the signing certificate is valid from {trusted.not_before.isoformat()} to "
                f"{trusted.not_after.isoformat()}",
            )
        revoked = self._revoked_at(trusted.cert) if self._revoked_at is not None else None
        if revoked is not None:
            raise WsseError(
                FaultCode.CERT_REVOKED,
                f"the signing certificate (serial {trusted.cert.serial_number:x}) was revoked by "
                f"its CA at {revoked.isoformat()}",
            )
        return trusted

    def _trusted(self, der: bytes) -> _TrustedCert:
        fingerprint = hashlib.sha256(der).digest()
        hit = self._cache.get(fingerprint)
        if hit is not None:
            return hit
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise WsseError(
                FaultCode.CERT_UNTRUSTED, "the BinarySecurityToken is not an X.509 certificate"
            ) from None
        if not self._chains(cert):
            raise WsseError(
                FaultCode.CERT_UNTRUSTED,
                f"the certificate of {cert.subject.rfc4514_string()!r} does not chain to a "
                "trusted CA",
            )
        try:
            # The bare public key: a key with the certificate attached costs ~45 us to copy
            # into every SignatureContext.
            key = xmlsec.Key.from_memory(
                cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
                _C.KeyDataFormatPem,
                None,
            )
        except (xmlsec.Error, ValueError, TypeError):
            raise WsseError(
                FaultCode.CERT_UNTRUSTED, "the certificate's key is not usable"
            ) from None
        entry = _TrustedCert(
            cert=cert,
            key=key,
            institution_id=_institution_id(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        return self._cache.put(fingerprint, entry)

    def _chains(self, cert: x509.Certificate) -> bool:
        current = cert
        now = self._clock()
        for _ in range(_MAX_CHAIN):
            for anchor in self._anchors:
                if anchor.subject == current.issuer and _issued_by(current, anchor):
                    return True
            for inter in self._intermediates:
                if (
                    inter.subject == current.issuer
                    and inter is not current
                    and inter.not_valid_before_utc <= now <= inter.not_valid_after_utc
                    and _issued_by(current, inter)
                ):
                    current = inter
                    break
            else:
                return False
        return False
