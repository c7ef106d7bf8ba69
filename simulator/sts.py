"""The STS: issues SAML 2.0 assertions for the four login routes.

Every Issue request is WS-Security signed with an institution certificate: the HIS system
identifies itself first. The authentication method then says whose token is asked for:

- ``x509``: the institution itself (the signer is the subject)
- ``password``: a sector user of that institution, by user id and password
- ``mobiltoken``: a sector user, by user id and a MobilToken one-time code (TOTP, RFC 6238)
- ``eszig``: a sector user, by user id and an rID package from the eID server (not served yet)
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from lxml import etree

from schemas.soap import STS_NS, FaultCode, SAML2_TOKEN_TYPE, contract_path

from .saml import AssertionIssuer
from .soapio import SoapFault
from .users import UserRegistry

_S = f"{{{STS_NS}}}"
RST_TAG = f"{_S}RequestSecurityToken"


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StsHandler:
    def __init__(self, *, issuer: AssertionIssuer, users: UserRegistry) -> None:
        self.issuer = issuer
        self.users = users
        self.schema = etree.XMLSchema(etree.parse(str(contract_path("sts.xsd"))))

    def issue(self, op: etree._Element, *, signer_institution: str, lifetime: timedelta
              ) -> tuple[bytes, str, str]:
        """Authenticate and issue. Returns (response XML, subject, method).

        Raises SoapFault with AUTH_FAILED (wrong secret, unknown user, wrong institution),
        AUTH_METHOD_UNSUPPORTED or SCHEMA_INVALID.
        """
        if op.tag != RST_TAG:
            raise SoapFault(FaultCode.UNKNOWN_OPERATION, f"the STS has no operation {op.tag}")
        if not self.schema.validate(op):
            err = self.schema.error_log.last_error
            raise SoapFault(FaultCode.SCHEMA_INVALID, f"schema: {err.message if err else 'invalid'}")
        method = op.findtext(f"{_S}AuthenticationMethod")
        user_id = op.findtext(f"{_S}UserId")
        workstation = op.findtext(f"{_S}Workstation")
        if method == "x509":
            subject, role = signer_institution, "institution"
        elif method in ("password", "mobiltoken"):
            if not user_id:
                raise SoapFault(FaultCode.SCHEMA_INVALID, f"{method} needs a UserId", field="UserId")
            user = self.users.get(user_id)
            # One message for unknown user and wrong secret: no user enumeration.
            denied = SoapFault(FaultCode.AUTH_FAILED, f"authentication failed for {user_id}",
                               field="Password" if method == "password" else "OneTimePassword")
            if user is None or user.institution != signer_institution:
                raise denied
            if method == "password":
                ok = user.check_password(op.findtext(f"{_S}Password") or "")
            else:
                ok = user.check_totp(op.findtext(f"{_S}OneTimePassword") or "", at=time.time())
            if not ok:
                raise denied
            subject, role = user.user_id, user.role
        else:
            raise SoapFault(FaultCode.AUTH_METHOD_UNSUPPORTED,
                            f"authentication method {method!r} is not served by this STS yet",
                            field="AuthenticationMethod")
        now = datetime.now(timezone.utc)
        assertion = self.issuer.issue(subject=subject, role=role, institution=signer_institution,
                                      method=method, lifetime=lifetime, workstation=workstation,
                                      now=now)
        xml = (
            f'<sts:RequestSecurityTokenResponse xmlns:sts="{STS_NS}">'
            f"<sts:TokenType>{SAML2_TOKEN_TYPE}</sts:TokenType>"
            f"<sts:Lifetime><sts:Created>{_iso(now)}</sts:Created>"
            f"<sts:Expires>{_iso(now + lifetime)}</sts:Expires></sts:Lifetime>"
            f"<sts:RequestedSecurityToken>"
        ).encode() + etree.tostring(assertion) + (
            b"</sts:RequestedSecurityToken></sts:RequestSecurityTokenResponse>"
        )
        return xml, subject, method
