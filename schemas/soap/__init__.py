"""The project's own SOAP contract: namespaces, services, operations and fault codes.

This is *not* the official EESZT interface (which is not public). It is the contract that the
workers (client side) and the simulator (server side) share, named the way EESZT names things,
and kept behind one seam so that the official WSDLs can replace it.

The WSDL and XSD files beside this module are package data; :func:`contract_path` finds them.
Nothing here does network I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from schemas.services import GW_NS_ROOT, SERVICE_TABLE, ServiceRow

# --- namespaces -------------------------------------------------------------------------------
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
WST_NS = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
SAML2_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
X509_TOKEN_TYPE = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
)
BASE64_ENCODING = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
SAML2_TOKEN_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0"

COMMON_NS = f"{GW_NS_ROOT}:common"
STS_NS = f"{GW_NS_ROOT}:sts"


@dataclass(frozen=True, slots=True)
class Service:
    """One business service of the contract.

    ``name`` is the URL path segment (``/services/<name>``) and the WSDL file stem.
    ``operations`` maps the payload type (``schemas`` message type) to the SOAP operation name.
    """

    name: str
    namespace: str
    wsdl: str
    operations: dict[str, str]
    query_operation: str = "lekerdezesKulcsAlapjan"


def services_of(rows: Iterable[ServiceRow]) -> dict[str, Service]:
    """The contract's services of rows of the table of services, by name."""
    return {row.name: Service(name=row.name, namespace=row.namespace, wsdl=row.wsdl,
                              operations=dict(row.operations))
            for row in rows}


#: the contract's services, from the one table of services (``schemas.services``)
SERVICES: dict[str, Service] = services_of(SERVICE_TABLE)

#: payload type -> (service, operation)
OPERATION_OF: dict[str, tuple[Service, str]] = {
    ptype: (svc, op) for svc in SERVICES.values() for ptype, op in svc.operations.items()
}


class FaultCode(str, enum.Enum):
    """Stable fault codes carried in ``detail/gw:Fault/gw:Code``.

    Each code is either a client fault (``soap:Client``: the request itself is wrong; resending
    it unchanged cannot help) or a server fault (``soap:Server``: the service could not answer;
    the same request may succeed later). :attr:`is_client` tells which.
    """

    # channel / message security (client)
    SECURITY_HEADER_MISSING = "WSSE-001"
    SIGNATURE_MISSING = "WSSE-002"
    SIGNATURE_INVALID = "WSSE-003"
    SIGNATURE_SCOPE = "WSSE-004"  # Body or Timestamp not covered by the signature
    CERT_UNTRUSTED = "WSSE-005"  # signing certificate not from the qualified CA
    CERT_EXPIRED = "WSSE-006"
    TIMESTAMP_MISSING = "WSSE-007"
    TIMESTAMP_STALE = "WSSE-008"  # outside the allowed clock skew, expired, or too long-lived
    CERT_REVOKED = "WSSE-009"  # the signing certificate is on its CA's revocation list
    # channel: the mutual-TLS access certificate (client)
    ACCESS_CERT_REVOKED = "TLS-001"
    ACCESS_CERT_INSTITUTION_MISMATCH = "TLS-002"  # access certificate of another institution
    # tokens (client; a client refreshes its token once on these)
    TOKEN_MISSING = "SAML-001"
    TOKEN_INVALID = "SAML-002"  # bad STS signature, malformed
    TOKEN_EXPIRED = "SAML-003"
    TOKEN_INSTITUTION_MISMATCH = "SAML-004"
    # STS authentication (client)
    AUTH_FAILED = "STS-001"  # wrong password, wrong one-time code, unknown user
    AUTH_METHOD_UNSUPPORTED = "STS-002"
    # authorisation and content (client)
    PERMISSION_DENIED = "AUTHZ-001"
    TWO_FACTOR_REQUIRED = "AUTHZ-002"  # a doctor token without two factors writes patient data
    RECORD_OF_ANOTHER_INSTITUTION = "AUTHZ-003"  # e.g. revoking another institution's prescription
    REFERRER_NOT_TOKEN_DOCTOR = "AUTHZ-004"  # a referral's referrer stamp is not the token's doctor
    SCHEMA_INVALID = "SCHEMA-001"
    UNKNOWN_OPERATION = "SCHEMA-002"
    BUSINESS_RULE = "BIZ-001"
    NOT_FOUND = "BIZ-002"  # the record a request refers to does not exist
    # server side (retryable)
    SERVICE_UNAVAILABLE = "SRV-001"  # outage window / maintenance
    INTERNAL_ERROR = "SRV-002"

    @property
    def is_client(self) -> bool:
        return not self.value.startswith("SRV-")

    @property
    def is_token_problem(self) -> bool:
        return self.value.startswith("SAML-")


def contract_path(filename: str) -> Path:
    """Filesystem path of one WSDL/XSD file shipped with this package."""
    path = Path(str(resources.files(__name__).joinpath(filename)))
    if not path.is_file():
        raise FileNotFoundError(f"contract file {filename!r} is not shipped in schemas/soap")
    return path
