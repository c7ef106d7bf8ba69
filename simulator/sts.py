"""The STS: issues SAML 2.0 assertions for the four login routes.

Every Issue request is WS-Security signed with an institution certificate: the HIS system
identifies itself first. The authentication method then says whose token is asked for:

- ``x509``: the institution itself (the signer is the subject)
- ``password``: a sector user of that institution, by user id and password
- ``mobiltoken``: a sector user, by user id and a MobilToken one-time code (TOTP, RFC 6238)
- ``eszig``: a sector user, by user id and an rID package from the eID server (``RidPackage``:
  base64 of the rID string's UTF-8 bytes; :meth:`simulator.eid.EidServer.redeem_rid`). The rID
  records how the doctor proved who they are at the workstation: the card (``eszig``) or a
  MobilToken code checked by the eID server (``mobiltoken``); the assertion's AuthnContext and
  the issue statistics take that method (Smartcard or TimeSyncToken)

The ``password`` and ``mobiltoken`` routes serve the simulator's own tests and tools: the
gateway's workers log doctors in only through the workstation's card bridge (an rID).

``EidPackageRequest`` (same signing) asks, in the name of a sector user of the signer's
institution, for an eID authentication request package: the first step of the eSZIG login.
"""

from __future__ import annotations

import base64
import binascii
import time
from datetime import datetime, timedelta, timezone

from lxml import etree

from schemas.soap import STS_NS, FaultCode, SAML2_TOKEN_TYPE, contract_path

from .eid import EidServer, RidRefused, UsedSet
from .saml import AssertionIssuer
from .soapio import SoapFault
from .users import UserRegistry

_S = f"{{{STS_NS}}}"
RST_TAG = f"{_S}RequestSecurityToken"
EID_PACKAGE_TAG = f"{_S}EidPackageRequest"


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StsHandler:
    def __init__(self, *, issuer: AssertionIssuer, users: UserRegistry,
                 eid: EidServer | None = None, used: UsedSet | None = None) -> None:
        self.issuer = issuer
        self.users = users
        self.eid = eid  # None: the eszig method and EidPackageRequest are not served
        self.used = used
        self.schema = etree.XMLSchema(etree.parse(str(contract_path("sts.xsd"))))

    def _validate(self, op: etree._Element) -> None:
        if not self.schema.validate(op):
            err = self.schema.error_log.last_error
            raise SoapFault(FaultCode.SCHEMA_INVALID, f"schema: {err.message if err else 'invalid'}")

    def eid_package(self, op: etree._Element, *, signer_institution: str) -> bytes:
        """EidPackageRequest: a signed eID request package for a user of the signer's institution.

        Raises SoapFault AUTH_FAILED (unknown user or another institution's: one message, no
        enumeration), SCHEMA_INVALID or AUTH_METHOD_UNSUPPORTED (no eID server configured).
        """
        if op.tag != EID_PACKAGE_TAG:
            raise SoapFault(FaultCode.UNKNOWN_OPERATION, f"the STS has no operation {op.tag}")
        self._validate(op)
        if self.eid is None:
            raise SoapFault(FaultCode.AUTH_METHOD_UNSUPPORTED, "this STS has no eID server")
        user_id = op.findtext(f"{_S}UserId")
        workstation = op.findtext(f"{_S}Workstation")
        user = self.users.get(user_id)
        if user is None or user.institution != signer_institution:
            raise SoapFault(FaultCode.AUTH_FAILED, f"no eID package for {user_id}",
                            field="UserId")
        package, claims = self.eid.issue_package(user_id=user.user_id,
                                                 institution=signer_institution,
                                                 workstation=workstation)
        return (
            f'<sts:EidPackageResponse xmlns:sts="{STS_NS}">'
            f"<sts:Package>{package}</sts:Package>"
            f"<sts:ExpiresAt>{_iso(claims.expires_at)}</sts:ExpiresAt>"
            f"</sts:EidPackageResponse>"
        ).encode()

    def issue(self, op: etree._Element, *, signer_institution: str, lifetime: timedelta
              ) -> tuple[bytes, str, str]:
        """Authenticate and issue. Returns (response XML, subject, method).

        Raises SoapFault with AUTH_FAILED (wrong secret, unknown user, wrong institution),
        AUTH_METHOD_UNSUPPORTED or SCHEMA_INVALID.
        """
        if op.tag != RST_TAG:
            raise SoapFault(FaultCode.UNKNOWN_OPERATION, f"the STS has no operation {op.tag}")
        self._validate(op)
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
        elif method == "eszig" and self.eid is not None and self.used is not None:
            if not user_id:
                raise SoapFault(FaultCode.SCHEMA_INVALID, "eszig needs a UserId", field="UserId")
            rid_b64 = (op.findtext(f"{_S}RidPackage") or "").strip()
            if not rid_b64:
                raise SoapFault(FaultCode.SCHEMA_INVALID, "eszig needs a RidPackage",
                                field="RidPackage")
            try:
                rid = base64.b64decode(rid_b64).decode("utf-8")
            except (binascii.Error, ValueError):
                raise SoapFault(FaultCode.AUTH_FAILED, "the rID package is invalid: not base64 "
                                "of a UTF-8 rID", field="RidPackage") from None
            try:
                claims = self.eid.redeem_rid(rid, user_id=user_id, institution=signer_institution,
                                             used=self.used)
            except RidRefused as exc:
                raise SoapFault(FaultCode.AUTH_FAILED, exc.message, field="RidPackage") from None
            user = self.users.get(claims.user_id)
            subject, role, workstation = claims.user_id, user.role, claims.workstation
            method = claims.method  # eszig (card) or mobiltoken (code checked by the eID server)
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
