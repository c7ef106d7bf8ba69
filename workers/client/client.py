"""One EESZT client per worker process: sign, send over mutual TLS, read the answer.

It joins the three seams: :class:`~workers.client.wsse.WsseSigner` (key loaded once),
a transport (keep-alive pool, explicit timeouts, paced handshakes): libcurl's
:class:`~workers.client.curl_transport.CurlTransport` by default, or urllib3's
:class:`~workers.client.transport.MtlsTransport` (``transport="urllib3"``), and the SOAP
templates of :mod:`workers.client.soap`. It does not retry: retry policy belongs to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lxml import etree

from schemas.envelope import RequestEnvelope

from .soap import (
    EID_PACKAGE_ACTION,
    IssuedToken,
    SoapCall,
    SubmitResult,
    build_call,
    build_eid_package_request,
    build_query,
    build_sts_request,
    parse_eid_package,
    parse_issue,
    parse_query,
    parse_submit,
)
from .transport import MtlsTransport, Timeouts, TlsFiles
from .wsse import WsseSigner

STS_ACTION = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue"


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """The files a gateway host needs to reach EESZT."""

    access_cert: Path  # WAF access certificate (mutual TLS)
    access_key: Path
    server_ca: Path  # CA of EESZT's server certificate
    institution_cert: Path  # qualified institution certificate (WS-Security signing)
    institution_key: Path

    @classmethod
    def from_pki_dir(cls, directory: Path | str) -> "ClientFiles":
        d = Path(directory)
        return cls(access_cert=d / "access.pem", access_key=d / "access.key",
                   server_ca=d / "server-ca.pem", institution_cert=d / "institution.pem",
                   institution_key=d / "institution.key")


def _curl(**kwargs):  # pycurl is imported only where the curl transport is chosen
    from .curl_transport import CurlTransport
    return CurlTransport(**kwargs)


#: ``transport`` names: the HTTP clients behind :class:`EesztClient` (the same contract)
TRANSPORTS = {"urllib3": MtlsTransport, "curl": _curl}


class EesztClient:
    """Sends signed SOAP calls. Thread-safe: share one per process."""

    def __init__(self, *, base_url: str, files: ClientFiles, timeouts: Timeouts = Timeouts(),
                 pool_size: int = 32, handshakes: int = 4, transport: str = "curl") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport: {transport!r} is not one of {', '.join(TRANSPORTS)}")
        self.signer = WsseSigner(key_pem=files.institution_key.read_bytes(),
                                 cert_pem=files.institution_cert.read_bytes())
        self.transport = TRANSPORTS[transport](
            base_url=base_url, timeouts=timeouts, maxsize=pool_size, handshakes=handshakes,
            tls=TlsFiles(client_cert=files.access_cert, client_key=files.access_key,
                         server_ca=files.server_ca))

    def warm(self, connections: int) -> int:
        """Open up to ``connections`` connections to EESZT before the first call; returns how
        many are open (the transport's ``warm``: best effort, never raises)."""
        return self.transport.warm(connections)

    def close(self) -> None:
        self.transport.close()

    def issue_token(self, *, method: str, user_id: str | None = None,
                    workstation: str | None = None, password: str | None = None,
                    otp: str | None = None, rid_package: str | None = None) -> IssuedToken:
        """Ask the STS for a SAML token. Raises the errors of :mod:`workers.errors`."""
        env = build_sts_request(method=method, user_id=user_id, workstation=workstation,
                                password=password, otp=otp, rid_package=rid_package)
        resp = self.transport.post("/sts", self.signer.sign_to_bytes(env), soap_action=STS_ACTION)
        return parse_issue(resp.status, resp.body)

    def request_eid_package(self, *, user_id: str, workstation: str) -> tuple[str, datetime]:
        """eSZIG step 1: ask the STS, in the name of ``user_id``, for an eID request package for
        the card client on ``workstation``. Returns (package, expires_at). Raises the errors of
        :mod:`workers.errors` (AUTH_FAILED: unknown user or not of this institution)."""
        env = build_eid_package_request(user_id=user_id, workstation=workstation)
        resp = self.transport.post("/sts", self.signer.sign_to_bytes(env),
                                   soap_action=EID_PACKAGE_ACTION)
        return parse_eid_package(resp.status, resp.body)

    def send(self, call: SoapCall, assertion: etree._Element | None) -> tuple[int, bytes]:
        body = self.signer.sign_operation(call.op_xml, assertion=assertion)
        resp = self.transport.post(call.path, body, soap_action=call.soap_action)
        return resp.status, resp.body

    def submit(self, request: RequestEnvelope, assertion: etree._Element) -> SubmitResult:
        call = build_call(request)
        status, body = self.send(call, assertion)
        return parse_submit(status, body, service=call.service.name)

    def query(self, service: str, idempotency_key: str,
              assertion: etree._Element) -> list[SubmitResult]:
        """What the service holds under this key (empty: it never landed)."""
        call = build_query(service, idempotency_key)
        status, body = self.send(call, assertion)
        return parse_query(status, body, service=service)
