"""The scope of a WS-Security signature: what exactly it signs (the defence against XML
signature wrapping), and the error every WS-Security check raises.

:func:`check_scope` resolves every ``ds:Reference`` of the SignedInfo itself: each must be a
same-document ``#id`` that matches exactly one element of the Envelope (any attribute XML
signature processors treat as an Id counts), use only exc-c14n transforms and a SHA-2 digest,
and together they must cover the Envelope's own soap:Body and the Security header's Timestamp.
:class:`simulator.wsse.WsseVerifier` then lets xmlsec resolve exactly those nodes.
"""

from __future__ import annotations

from lxml import etree

from schemas.soap import DS_NS, EXC_C14N, FaultCode
from simulator.soapio import CodedError

__all__ = ["WsseError", "check_scope", "split_clark"]

_SIGNED_INFO = f"{{{DS_NS}}}SignedInfo"
_C14N_METHOD = f"{{{DS_NS}}}CanonicalizationMethod"
_SIGNATURE_METHOD = f"{{{DS_NS}}}SignatureMethod"
_REFERENCE = f"{{{DS_NS}}}Reference"
_TRANSFORMS = f"{{{DS_NS}}}Transforms"
_TRANSFORM = f"{{{DS_NS}}}Transform"
_DIGEST_METHOD = f"{{{DS_NS}}}DigestMethod"

_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
_DIGESTS = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)

#: Every attribute that XML signature processors treat as an Id (wsu:Id, Id, ID, xml:id).
_ID_ATTRIBUTES = etree.XPath("//@*[local-name()='Id' or local-name()='ID' or local-name()='id']")


class WsseError(CodedError):
    """A message failed WS-Security checks. ``code`` is the fault code to return."""


def check_scope(
    envelope: etree._Element,
    signature: etree._Element,
    body: etree._Element,
    timestamp: etree._Element,
) -> list[tuple[etree._Element, str]]:
    """Resolve every Reference; return (element, Id attribute name) for each target."""
    signed_info = signature.find(_SIGNED_INFO)
    if signed_info is None:
        raise WsseError(FaultCode.SIGNATURE_INVALID, "ds:Signature has no SignedInfo")
    c14n = signed_info.find(_C14N_METHOD)
    method = signed_info.find(_SIGNATURE_METHOD)
    if c14n is None or c14n.get("Algorithm") != EXC_C14N:
        raise WsseError(FaultCode.SIGNATURE_INVALID, "SignedInfo must use exc-c14n")
    if method is None or method.get("Algorithm") != _RSA_SHA256:
        raise WsseError(FaultCode.SIGNATURE_INVALID, "the signature method must be rsa-sha256")

    ids: dict[str, list[tuple[etree._Element, str]]] = {}
    for attr in _ID_ATTRIBUTES(envelope):
        ids.setdefault(str(attr), []).append((attr.getparent(), attr.attrname))

    targets: list[tuple[etree._Element, str]] = []
    for ref in signed_info.iterfind(_REFERENCE):
        uri = ref.get("URI") or ""
        if not uri.startswith("#") or len(uri) < 2:
            raise WsseError(
                FaultCode.SIGNATURE_SCOPE,
                f"only same-document #id references are accepted: {uri!r}",
            )
        holders = ids.get(uri[1:], [])
        if len(holders) != 1:
            raise WsseError(
                FaultCode.SIGNATURE_SCOPE,
                f"reference {uri!r} matches {len(holders)} elements (must be exactly one)",
            )
        transforms = ref.find(_TRANSFORMS)
        algorithms = (
            [t.get("Algorithm") for t in transforms.iterfind(_TRANSFORM)]
            if transforms is not None
            else []
        )
        if any(a != EXC_C14N for a in algorithms):
            raise WsseError(
                FaultCode.SIGNATURE_SCOPE,
                f"reference {uri!r}: only exc-c14n transforms are accepted",
            )
        digest = ref.find(_DIGEST_METHOD)
        if digest is None or digest.get("Algorithm") not in _DIGESTS:
            raise WsseError(
                FaultCode.SIGNATURE_INVALID, f"reference {uri!r}: unsupported digest"
            )
        if holders[0] in targets:
            raise WsseError(FaultCode.SIGNATURE_SCOPE, f"reference {uri!r} is listed twice")
        targets.append(holders[0])

    signed = [element for element, _ in targets]
    if not any(e is body for e in signed):
        raise WsseError(FaultCode.SIGNATURE_SCOPE, "the signature does not cover the soap:Body")
    if not any(e is timestamp for e in signed):
        raise WsseError(FaultCode.SIGNATURE_SCOPE, "the signature does not cover the Timestamp")
    return targets


def split_clark(clark: str) -> tuple[str, str | None]:
    """``{ns}local`` -> (local, ns); a bare name -> (name, None)."""
    if clark.startswith("{"):
        ns, _, local = clark[1:].partition("}")
        return local, ns
    return clark, None
