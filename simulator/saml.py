"""SAML 2.0 assertions issued and checked by the simulated STS.

:class:`AssertionIssuer` builds an assertion and signs it (enveloped signature, exc-c14n,
rsa-sha256, sha256) with the STS key, loaded once. :class:`AssertionVerifier` checks the STS
signature and the time window and returns a :class:`SamlToken`; it raises :class:`SamlError`
with ``FaultCode.TOKEN_INVALID`` (bad signature, malformed, not yet valid) or
``FaultCode.TOKEN_EXPIRED``.

Layout of an issued assertion (``ds:Signature`` right after ``Issuer``, as SAML requires)::

    <saml2:Assertion ID="_…" IssueInstant="…" Version="2.0">
      <saml2:Issuer>urn:eeszt-gateway:sim:sts</saml2:Issuer>
      <ds:Signature>… Reference URI="#_…" (enveloped-signature, exc-c14n) …</ds:Signature>
      <saml2:Subject><saml2:NameID>O12345</saml2:NameID></saml2:Subject>
      <saml2:Conditions NotBefore="…" NotOnOrAfter="…"/>
      <saml2:AuthnStatement AuthnInstant="…"><saml2:AuthnContext>
        <saml2:AuthnContextClassRef>…:X509 | :Password | :TimeSyncToken | :Smartcard</…>
      </saml2:AuthnContext></saml2:AuthnStatement>
      <saml2:AttributeStatement> role, institution, workstation (optional) </…>
    </saml2:Assertion>

A SAML assertion is a bearer credential: nothing here logs it.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lxml import etree

from schemas.soap import DS_NS, EXC_C14N, SAML2_NS, FaultCode
from simulator.lru import Lru
from simulator.soapio import CodedError
from simulator.wsse import parse_instant, utcnow

__all__ = [
    "AUTHN_CONTEXT",
    "AssertionIssuer",
    "AssertionVerifier",
    "SamlError",
    "SamlToken",
]

_C = xmlsec.constants
_NSMAP = {"saml2": SAML2_NS}
_ASSERTION = f"{{{SAML2_NS}}}Assertion"
_ISSUER = f"{{{SAML2_NS}}}Issuer"
_SUBJECT = f"{{{SAML2_NS}}}Subject"
_NAME_ID = f"{{{SAML2_NS}}}NameID"
_CONDITIONS = f"{{{SAML2_NS}}}Conditions"
_AUTHN_STATEMENT = f"{{{SAML2_NS}}}AuthnStatement"
_AUTHN_CONTEXT = f"{{{SAML2_NS}}}AuthnContext"
_AUTHN_CLASS_REF = f"{{{SAML2_NS}}}AuthnContextClassRef"
_ATTRIBUTE_STATEMENT = f"{{{SAML2_NS}}}AttributeStatement"
_ATTRIBUTE = f"{{{SAML2_NS}}}Attribute"
_ATTRIBUTE_VALUE = f"{{{SAML2_NS}}}AttributeValue"
_SIGNATURE = f"{{{DS_NS}}}Signature"
_SIGNED_INFO = f"{{{DS_NS}}}SignedInfo"
_REFERENCE = f"{{{DS_NS}}}Reference"
_TRANSFORMS = f"{{{DS_NS}}}Transforms"
_TRANSFORM = f"{{{DS_NS}}}Transform"
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_NAME_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
_CACHE_SIZE = 4096
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)

_AC = "urn:oasis:names:tc:SAML:2.0:ac:classes:"
#: authentication method -> AuthnContextClassRef
AUTHN_CONTEXT: dict[str, str] = {
    "x509": _AC + "X509",
    "password": _AC + "Password",
    "mobiltoken": _AC + "TimeSyncToken",
    "eszig": _AC + "Smartcard",
}
_METHOD_OF = {ref: method for method, ref in AUTHN_CONTEXT.items()}


def _instant(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"




@dataclass(frozen=True, slots=True)
class SamlToken:
    """The facts a verified assertion vouches for."""

    assertion_id: str
    subject: str
    role: str  # "institution" | "doctor" | other
    institution: str
    method: str  # "x509" | "password" | "mobiltoken" | "eszig"
    not_before: datetime
    not_on_or_after: datetime
    workstation: str | None = None


class SamlError(CodedError):
    """An assertion was rejected. ``code`` is TOKEN_INVALID or TOKEN_EXPIRED."""


class AssertionIssuer:
    """Issues signed SAML 2.0 assertions with the STS key (loaded once; never exposed).

    Raises :class:`ValueError` at construction when the key or certificate cannot be loaded.
    """

    __slots__ = ("_key", "_issuer")

    def __init__(
        self, *, key_pem: bytes, cert_pem: bytes, issuer: str = "urn:eeszt-gateway:sim:sts"
    ) -> None:
        try:
            key = xmlsec.Key.from_memory(key_pem, _C.KeyDataFormatPem, None)
        except xmlsec.Error:
            raise ValueError(
                "cannot load the STS signing key (expected an unencrypted PEM key)"
            ) from None
        try:
            key.load_cert_from_memory(cert_pem, _C.KeyDataFormatCertPem)
        except xmlsec.Error:
            raise ValueError("cannot load the STS certificate") from None
        self._key = key
        self._issuer = issuer

    def __repr__(self) -> str:
        return f"AssertionIssuer(issuer={self._issuer!r})"

    def issue(
        self,
        *,
        subject: str,
        role: str,
        institution: str,
        method: str,
        lifetime: timedelta,
        workstation: str | None = None,
        now: datetime | None = None,
    ) -> etree._Element:
        """A new signed ``saml2:Assertion`` valid from ``now`` for ``lifetime``.

        Raises :class:`ValueError` for an unknown ``method`` or a non-positive lifetime.
        """
        if method not in AUTHN_CONTEXT:
            raise ValueError(
                f"unknown authentication method {method!r}; expected one of {sorted(AUTHN_CONTEXT)}"
            )
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        now = now if now is not None else utcnow()
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        assertion_id = f"_{uuid.uuid4().hex}"
        issued = _instant(now)

        assertion = etree.Element(
            _ASSERTION, {"ID": assertion_id, "IssueInstant": issued, "Version": "2.0"}, nsmap=_NSMAP
        )
        etree.SubElement(assertion, _ISSUER).text = self._issuer
        subject_el = etree.SubElement(assertion, _SUBJECT)
        etree.SubElement(subject_el, _NAME_ID).text = subject
        etree.SubElement(
            assertion,
            _CONDITIONS,
            {"NotBefore": issued, "NotOnOrAfter": _instant(now + lifetime)},
        )
        authn = etree.SubElement(assertion, _AUTHN_STATEMENT, {"AuthnInstant": issued})
        context = etree.SubElement(authn, _AUTHN_CONTEXT)
        etree.SubElement(context, _AUTHN_CLASS_REF).text = AUTHN_CONTEXT[method]
        attributes = etree.SubElement(assertion, _ATTRIBUTE_STATEMENT)
        for name, value in (
            ("role", role),
            ("institution", institution),
            ("workstation", workstation),
        ):
            if value is None:
                continue
            attr = etree.SubElement(
                attributes, _ATTRIBUTE, {"Name": name, "NameFormat": _NAME_FORMAT}
            )
            etree.SubElement(attr, _ATTRIBUTE_VALUE).text = value

        signature = xmlsec.template.create(
            assertion, _C.TransformExclC14N, _C.TransformRsaSha256, ns="ds"
        )
        assertion.insert(1, signature)  # right after Issuer
        ref = xmlsec.template.add_reference(signature, _C.TransformSha256, uri=f"#{assertion_id}")
        xmlsec.template.add_transform(ref, _C.TransformEnveloped)
        xmlsec.template.add_transform(ref, _C.TransformExclC14N)
        key_info = xmlsec.template.ensure_key_info(signature)
        xmlsec.template.add_x509_data(key_info)

        ctx = xmlsec.SignatureContext()
        ctx.key = self._key
        ctx.register_id(assertion, "ID")
        ctx.sign(signature)
        # Nodes that xmlsec creates itself are invisible to lxml's find()/findall() (their
        # names are not in the document's dictionary); a copy re-creates them properly.
        return copy.deepcopy(assertion)


class AssertionVerifier:
    """Checks assertions signed by the STS certificate ``cert_pem``.

    Signature checks are cached (bounded LRU keyed by the SHA-256 of the assertion's exc-c14n
    form); the time window is checked on every call. Thread-safe.
    """

    def __init__(
        self,
        *,
        cert_pem: bytes,
        clock: Callable[[], datetime] = utcnow,
        max_skew_seconds: float = 60,
        cache_size: int = _CACHE_SIZE,
    ) -> None:
        try:
            public_pem = (
                x509.load_pem_x509_certificate(cert_pem)
                .public_key()
                .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            )
            # the bare public key: one with the certificate attached costs ~45 us per context
            self._key = xmlsec.Key.from_memory(public_pem, _C.KeyDataFormatPem, None)
        except (ValueError, TypeError, xmlsec.Error):
            raise ValueError("cannot load the STS certificate") from None
        self._clock = clock
        self._skew = timedelta(seconds=max_skew_seconds)
        self._cache: Lru[bytes, SamlToken] = Lru(cache_size)

    def verify(self, assertion: etree._Element) -> SamlToken:
        """Return the token ``assertion`` vouches for; raise :class:`SamlError` if unusable."""
        if not isinstance(assertion, etree._Element) or assertion.tag != _ASSERTION:
            raise SamlError(FaultCode.TOKEN_INVALID, "not a saml2:Assertion")
        canonical = etree.tostring(assertion, method="c14n", exclusive=True)
        digest = hashlib.sha256(canonical).digest()
        token = self._cache.get(digest) or self._cache.put(digest,
                                                           self._verify_signature(canonical))
        self._check_window(token)
        return token

    def _check_window(self, token: SamlToken) -> None:
        now = self._clock()
        if now < token.not_before - self._skew:
            raise SamlError(
                FaultCode.TOKEN_INVALID,
                f"the token is not valid before {token.not_before.isoformat()}",
            )
        if now >= token.not_on_or_after:
            raise SamlError(
                FaultCode.TOKEN_EXPIRED, f"the token expired at {token.not_on_or_after.isoformat()}"
            )

    def _verify_signature(self, canonical: bytes) -> SamlToken:
        # Verify (and read) a private re-parse of the canonical form: the reference can only
        # resolve inside the assertion, whatever Ids the envelope carries, and comments (which
        # the signature does not cover) are gone, so a comment inside NameID cannot truncate
        # the subject that is read back.
        try:
            assertion = etree.fromstring(canonical, _PARSER)
        except etree.XMLSyntaxError:
            raise SamlError(FaultCode.TOKEN_INVALID, "the assertion cannot be parsed") from None
        assertion_id = assertion.get("ID")
        if not assertion_id:
            raise SamlError(FaultCode.TOKEN_INVALID, "the assertion has no ID")
        signatures = assertion.findall(_SIGNATURE)
        if len(signatures) != 1:
            raise SamlError(
                FaultCode.TOKEN_INVALID, "the assertion must carry exactly one ds:Signature"
            )
        signature = signatures[0]
        references = signature.findall(f"{_SIGNED_INFO}/{_REFERENCE}")
        if len(references) != 1 or references[0].get("URI") != f"#{assertion_id}":
            raise SamlError(
                FaultCode.TOKEN_INVALID, "the signature does not reference the assertion itself"
            )
        transforms = [
            t.get("Algorithm") for t in references[0].iterfind(f"{_TRANSFORMS}/{_TRANSFORM}")
        ]
        if transforms not in ([_ENVELOPED, EXC_C14N], [_ENVELOPED]):
            raise SamlError(
                FaultCode.TOKEN_INVALID, "unexpected transforms in the assertion signature"
            )

        ctx = xmlsec.SignatureContext()
        ctx.key = self._key
        ctx.enable_signature_transform(_C.TransformExclC14N)
        ctx.enable_signature_transform(_C.TransformRsaSha256)
        for transform in (_C.TransformEnveloped, _C.TransformExclC14N, _C.TransformSha256):
            ctx.enable_reference_transform(transform)
        try:
            ctx.register_id(assertion, "ID")
            ctx.verify(signature)
        except xmlsec.VerificationError:
            raise SamlError(FaultCode.TOKEN_INVALID, "the STS signature does not verify") from None
        except xmlsec.Error as exc:
            raise SamlError(
                FaultCode.TOKEN_INVALID, f"the STS signature cannot be processed ({exc})"
            ) from None
        return _read_token(assertion, assertion_id)


def _read_token(assertion: etree._Element, assertion_id: str) -> SamlToken:
    subject = (assertion.findtext(f"{_SUBJECT}/{_NAME_ID}") or "").strip()
    conditions = assertion.find(_CONDITIONS)
    not_before = parse_instant(conditions.get("NotBefore")) if conditions is not None else None
    not_after = parse_instant(conditions.get("NotOnOrAfter")) if conditions is not None else None
    class_ref = (
        assertion.findtext(f"{_AUTHN_STATEMENT}/{_AUTHN_CONTEXT}/{_AUTHN_CLASS_REF}") or ""
    ).strip()
    attributes: dict[str, str] = {}
    for attr in assertion.iterfind(f"{_ATTRIBUTE_STATEMENT}/{_ATTRIBUTE}"):
        name = attr.get("Name")
        if name and name not in attributes:
            attributes[name] = (attr.findtext(_ATTRIBUTE_VALUE) or "").strip()
    missing = [
        label
        for label, value in (
            ("NameID", subject),
            ("NotBefore", not_before),
            ("NotOnOrAfter", not_after),
            ("role", attributes.get("role")),
            ("institution", attributes.get("institution")),
        )
        if not value
    ]
    if missing:
        raise SamlError(FaultCode.TOKEN_INVALID, f"the assertion lacks {', '.join(missing)}")
    method = _METHOD_OF.get(class_ref)
    if method is None:
        raise SamlError(FaultCode.TOKEN_INVALID, f"unknown AuthnContextClassRef {class_ref!r}")
    assert not_before is not None and not_after is not None
    return SamlToken(
        assertion_id=assertion_id,
        subject=subject,
        role=attributes["role"],
        institution=attributes["institution"],
        method=method,
        not_before=not_before,
        not_on_or_after=not_after,
        workstation=attributes.get("workstation") or None,
    )
