"""parse_submit on the answers a service can give: a record, a fault, something else."""

from __future__ import annotations

import pytest

from schemas.soap import COMMON_NS, SOAP11_NS, FaultCode
from workers.errors import AmbiguousOutcome, ServiceRejected, ServiceUnavailable, TokenRejected
from workers.client.soap import parse_submit


def _answer(inner: str, header: str = "") -> bytes:
    return (f'<soap:Envelope xmlns:soap="{SOAP11_NS}">{header}<soap:Body>{inner}</soap:Body>'
            "</soap:Envelope>").encode()


def _record(*fields: str) -> bytes:
    return _answer(f'<tns:valasz xmlns:tns="urn:x" xmlns:c="{COMMON_NS}">{"".join(fields)}'
                   "</tns:valasz>")


def _fault(code: str, faultcode: str = "soap:Client") -> bytes:
    return _answer(f"<soap:Fault><faultcode>{faultcode}</faultcode><faultstring>no</faultstring>"
                   f'<detail><c:fault xmlns:c="{COMMON_NS}"><c:code>{code}</c:code>'
                   "<c:field>taj</c:field><c:message>bad taj</c:message></c:fault></detail>"
                   "</soap:Fault>")


ID = "<c:eesztId>EV-1</c:eesztId>"
VERSION = "<c:version>2</c:version>"
STORED = "<c:storedAt>2026-01-05T08:00:00Z</c:storedAt>"


def test_a_record_is_read_whatever_the_order_of_its_fields_and_a_header():
    for body in (_record(ID, VERSION, STORED), _record(STORED, VERSION, ID),
                 _answer(f'<tns:v xmlns:tns="urn:x" xmlns:c="{COMMON_NS}">{ID}{VERSION}{STORED}'
                         "</tns:v>", header="<soap:Header/>")):
        result = parse_submit(200, body, service="eRecept")
        assert (result.eeszt_id, result.version, result.stored_at) == \
               ("EV-1", 2, "2026-01-05T08:00:00Z")


@pytest.mark.parametrize("fields", [(VERSION, STORED), (ID, STORED),
                                    (ID, "<c:version>two</c:version>", STORED)])
def test_a_200_without_an_id_or_a_version_is_ambiguous(fields):
    with pytest.raises(AmbiguousOutcome, match="eRecept: the answer carries no EESZT id"):
        parse_submit(200, _record(*fields), service="eRecept")


def test_faults_become_the_error_tree():
    client = next(c for c in FaultCode if c.is_client and not c.is_token_problem)
    with pytest.raises(ServiceRejected) as rejected:
        parse_submit(500, _fault(client.value), service="eRecept")
    assert (rejected.value.code, rejected.value.field) == (client.value, "taj")
    token = next(c for c in FaultCode if c.is_client and c.is_token_problem)
    with pytest.raises(TokenRejected):
        parse_submit(500, _fault(token.value), service="eRecept")
    server = next(c for c in FaultCode if not c.is_client)
    with pytest.raises(ServiceUnavailable):
        parse_submit(500, _fault(server.value, "soap:Server"), service="eRecept")


@pytest.mark.parametrize("status,body,error", [
    (502, b"<html>bad gateway</html>", ServiceUnavailable),
    (503, b"not xml at all", ServiceUnavailable),
    (400, b"not xml at all", ServiceRejected),
    (200, _answer(""), ServiceRejected),  # an empty Body
    (200, b'<other xmlns="urn:x"><Body/></other>', ServiceRejected),
])
def test_non_soap_answers_are_classified_by_status(status, body, error):
    with pytest.raises(error):
        parse_submit(status, body, service="eRecept")
