"""Parsing requests and writing responses and faults (SOAP 1.1) for the simulator."""

from __future__ import annotations

from xml.sax.saxutils import escape

from lxml import etree

from schemas.soap import COMMON_NS, SOAP11_NS, FaultCode

# No entities, no network, no huge trees: the request comes from outside.
PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=False
)

ENVELOPE_TAG = f"{{{SOAP11_NS}}}Envelope"
BODY_TAG = f"{{{SOAP11_NS}}}Body"


class CodedError(Exception):
    """A check failed with a stable fault ``code``; ``message`` says why in one line."""

    def __init__(self, code: FaultCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class SoapFault(Exception):
    """A fault the simulator answers with. ``code`` is stable; ``field`` is optional."""

    def __init__(self, code: FaultCode, message: str, *, field: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.http_status = http_status or (503 if code is FaultCode.SERVICE_UNAVAILABLE else 500)


def parse_envelope(data: bytes) -> etree._Element:
    """Parse and shape-check a SOAP 1.1 envelope. Raises SoapFault(SCHEMA_INVALID)."""
    try:
        root = etree.fromstring(data, PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapFault(FaultCode.SCHEMA_INVALID, f"request is not well-formed XML: {exc}") from None
    if root.tag != ENVELOPE_TAG:
        raise SoapFault(FaultCode.SCHEMA_INVALID, f"root element is {root.tag}, expected a SOAP 1.1 Envelope")
    return root


def body_of(envelope: etree._Element) -> etree._Element:
    body = envelope.find(BODY_TAG)
    if body is None:
        raise SoapFault(FaultCode.SCHEMA_INVALID, "SOAP Body is missing")
    return body


def operation_element(body: etree._Element) -> etree._Element:
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise SoapFault(FaultCode.SCHEMA_INVALID,
                        f"SOAP Body must hold exactly one operation element, found {len(children)}")
    return children[0]


_ENV_OPEN = f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
_ENV_CLOSE = "</soap:Body></soap:Envelope>"


def envelope_bytes(body_xml: str | bytes) -> bytes:
    if isinstance(body_xml, bytes):
        return _ENV_OPEN.encode() + body_xml + _ENV_CLOSE.encode()
    return (_ENV_OPEN + body_xml + _ENV_CLOSE).encode()


def fault_bytes(fault: SoapFault) -> bytes:
    faultcode = "soap:Client" if fault.code.is_client else "soap:Server"
    field = f"<c:field>{escape(fault.field)}</c:field>" if fault.field else ""
    return envelope_bytes(
        f"<soap:Fault><faultcode>{faultcode}</faultcode>"
        f"<faultstring>{escape(fault.code.value)}: {escape(fault.message)}</faultstring>"
        f'<detail><c:fault xmlns:c="{COMMON_NS}"><c:code>{fault.code.value}</c:code>{field}'
        f"<c:message>{escape(fault.message)}</c:message></c:fault></detail></soap:Fault>"
    )
