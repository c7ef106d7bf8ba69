"""The business services: schema checks, business rules, and what gets recorded.

Called by the app after the channel, the WS-Security signature, the SAML token and the permission
table have been checked. Everything here runs on the request thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from xml.sax.saxutils import escape

from lxml import etree

from schemas.soap import COMMON_NS, SERVICES, FaultCode, Service, contract_path
from schemas.validators import is_valid_taj

from .faults import DuplicatesMode
from .rules import QUERY_OP, check_referrer
from .soapio import SoapFault
from .store import Record, Store

__all__ = ["QUERY_OP", "Caller", "ServiceHandler", "build_handlers"]
REFERRAL_MAX_DAYS = 90
_C = f"{{{COMMON_NS}}}"
_ELEMENT_IN_ERROR = re.compile(r"Element '(?:\{[^}]*\})?([^']+)'")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as established by the token and the signature."""

    subject: str
    role: str
    institution: str


class ServiceHandler:
    """One business service: validates an operation element and applies it to the store."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.ns = service.namespace
        self.schema = etree.XMLSchema(etree.parse(str(contract_path(f"{service.name}.xsd"))))
        self.write_operations = frozenset(service.operations.values())

    def operation_name(self, op: etree._Element) -> str:
        qname = etree.QName(op)
        if qname.namespace != self.ns or (
            qname.localname not in self.write_operations and qname.localname != QUERY_OP
        ):
            raise SoapFault(FaultCode.UNKNOWN_OPERATION,
                            f"{self.service.name} has no operation {op.tag}")
        return qname.localname

    def validate(self, op: etree._Element) -> None:
        if not self.schema.validate(op):
            err = self.schema.error_log.last_error
            m = _ELEMENT_IN_ERROR.search(err.message if err else "")
            raise SoapFault(FaultCode.SCHEMA_INVALID,
                            f"schema: {err.message if err else 'invalid'}",
                            field=m.group(1) if m else None)

    def key_of(self, op: etree._Element) -> str | None:
        node = op.find(f"{{{self.ns}}}header/{_C}idempotencyKey")
        if node is None:
            node = op.find(f"{_C}idempotencyKey")
        return node.text if node is not None else None

    def apply(self, op_name: str, op: etree._Element, *, caller: Caller, store: Store,
              duplicates: DuplicatesMode) -> tuple[bytes, Record | None]:
        """Run one validated operation; return the response element's XML and the record."""
        if op_name == QUERY_OP:
            return self._query(op, store, caller.institution), None
        ns = f"{{{self.ns}}}"
        key = op.findtext(f"{ns}header/{_C}idempotencyKey")
        message_id = op.findtext(f"{ns}header/{_C}messageId")
        institution = op.findtext(f"{ns}header/{_C}institution")
        if institution != caller.institution:
            raise SoapFault(FaultCode.BUSINESS_RULE,
                            f"header institution {institution} is not the caller's institution",
                            field="institution")
        if op_name == "beutaloRogzites":
            check_referrer(op, namespace=self.ns, subject=caller.subject)
        if duplicates is DuplicatesMode.DEDUPE:
            # an idempotency key is the institution's own: another's same key is another request
            earlier = store.find_by_key(caller.institution, self.service.name, key)
            if earlier:
                first = earlier[0]
                return self._result(op_name, first), Record(
                    first.eeszt_id, first.version, first.operation, first.stored_at, key, True)
        taj = op.findtext(f"{ns}taj")
        if taj is not None and not is_valid_taj(taj):
            raise SoapFault(FaultCode.BUSINESS_RULE, "TAJ check digit does not match", field="taj")
        target_id = self._business_rules(op_name, op, store, caller)
        version = 1
        if self.service.name == "eProfil" and taj:
            version = store.next_version(self.service.name, taj)
        record = store.insert(service=self.service.name, operation=op_name, key=key,
                              message_id=message_id, subject=caller.subject,
                              institution=caller.institution, taj=taj, target_id=target_id,
                              version=version)
        return self._result(op_name, record), record

    def _business_rules(self, op_name: str, op: etree._Element, store: Store,
                        caller: Caller) -> str | None:
        ns = f"{{{self.ns}}}"
        if op_name == "receptVisszavonas":
            target = op.findtext(f"{ns}prescriptionId")
            rows = store.find_by_eeszt_id(target)
            prescribed = [r for r in rows if r["operation"] == "receptRogzites"
                          and r["service"] == self.service.name]
            if not prescribed:
                raise SoapFault(FaultCode.NOT_FOUND, f"no prescription has the id {target}",
                                field="prescriptionId")
            if prescribed[0]["institution"] != caller.institution:
                raise SoapFault(FaultCode.RECORD_OF_ANOTHER_INSTITUTION,
                                "the prescription was recorded by another institution: only the "
                                "prescribing institution may revoke it", field="prescriptionId")
            if any(r["operation"] == "receptVisszavonas" for r in rows):
                raise SoapFault(FaultCode.BUSINESS_RULE, "the prescription is already revoked",
                                field="prescriptionId")
            return target
        if op_name == "beutaloRogzites":
            issued = date.fromisoformat(op.findtext(f"{ns}issuedOn"))
            valid = date.fromisoformat(op.findtext(f"{ns}validUntil"))
            if valid <= issued:
                raise SoapFault(FaultCode.BUSINESS_RULE, "validUntil must be after issuedOn",
                                field="validUntil")
            if valid - issued > timedelta(days=REFERRAL_MAX_DAYS):
                raise SoapFault(FaultCode.BUSINESS_RULE,
                                f"a referral is valid for at most {REFERRAL_MAX_DAYS} days",
                                field="validUntil")
        if op_name == "esemenyVeg":
            started = datetime.fromisoformat(op.findtext(f"{ns}startedAt").replace("Z", "+00:00"))
            ended = datetime.fromisoformat(op.findtext(f"{ns}endedAt").replace("Z", "+00:00"))
            if ended <= started:
                raise SoapFault(FaultCode.BUSINESS_RULE, "endedAt must be after startedAt",
                                field="endedAt")
        return None

    def _result(self, op_name: str, record: Record) -> bytes:
        return (
            f'<tns:{op_name}Valasz xmlns:tns="{self.ns}" xmlns:c="{COMMON_NS}">'
            f"<c:eesztId>{escape(record.eeszt_id)}</c:eesztId><c:version>{record.version}</c:version>"
            f"<c:storedAt>{record.stored_at}</c:storedAt></tns:{op_name}Valasz>"
        ).encode()

    def _query(self, op: etree._Element, store: Store, institution: str) -> bytes:
        """The caller's own records under the key: another institution's stay invisible."""
        key = op.findtext(f"{_C}idempotencyKey")
        rows = store.find_by_key(institution, self.service.name, key)
        recs = "".join(
            f"<c:record><c:eesztId>{escape(r.eeszt_id)}</c:eesztId><c:version>{r.version}</c:version>"
            f"<c:operation>{r.operation}</c:operation><c:storedAt>{r.stored_at}</c:storedAt></c:record>"
            for r in rows
        )
        return (
            f'<tns:{QUERY_OP}Valasz xmlns:tns="{self.ns}" xmlns:c="{COMMON_NS}">'
            f"<c:found>{'true' if rows else 'false'}</c:found>{recs}</tns:{QUERY_OP}Valasz>"
        ).encode()


def build_handlers() -> dict[str, ServiceHandler]:
    """Parse every service schema once (startup cost, not per request)."""
    return {name: ServiceHandler(svc) for name, svc in SERVICES.items()}
