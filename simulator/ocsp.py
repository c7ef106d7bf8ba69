"""The simulator's revocation service: an OCSP responder (RFC 6960) and the CRLs, over plain HTTP
on their own port (``--ocsp-port``, default 8446, bound to ``--host``).

Routes:

- ``POST /ocsp`` (or ``POST /``), body an ``application/ocsp-request`` (DER) -> an
  ``application/ocsp-response``;
- ``GET /ocsp/<base64 request>`` (RFC 6960 appendix A.1, the request URL-encoded base64);
- ``GET /crl/<ca>.crl`` -> the CA's CRL file (DER, ``application/pkix-crl``);
- ``GET /health`` -> 200.

Answers come from the CRL files through :class:`~simulator.revocation.CrlStore`, which re-reads a
file when it changes: ``eeszt-gw pki revoke`` takes effect on the next request. Each response is
signed by the issuing CA itself (the CA is its own responder, RFC 6960 section 4.2.2.2) and
carries ``good`` (not on the CRL), ``revoked`` (with the time and reason) or ``unknown`` (the CA's
CRL is missing or unusable). A request about a CA this PKI does not hold gets the
``unauthorized`` response status (no CA key to sign with); an undecodable one ``malformedRequest``.
A request nonce is echoed.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .revocation import CrlStore

__all__ = ["RevocationApp", "respond"]

log = logging.getLogger("eeszt_gw.simulator.ocsp")

MAX_REQUEST = 64 * 1024
#: how long an OCSP answer may be cached when the CRL has no next update
RESPONSE_VALIDITY = timedelta(hours=1)
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_STATUS = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
           "unknown": ocsp.OCSPCertStatus.UNKNOWN}


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER)


def respond(request_der: bytes, store: CrlStore, *, now: datetime | None = None
            ) -> tuple[bytes, str]:
    """The DER OCSP response to ``request_der`` and a one-word outcome (good, revoked,
    unknown, unauthorized, malformed, error) for counting and logs. Never raises."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        algorithm = request.hash_algorithm
    except (ValueError, TypeError) as exc:
        log.debug("malformed OCSP request: %s", exc)
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST), "malformed"
    ca = store.ca_by_hash(request.issuer_name_hash, request.issuer_key_hash, algorithm)
    if ca is None:
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED), "unauthorized"
    status = store.serial_status(ca, request.serial_number)
    now = now or datetime.now(timezone.utc)
    this_update = now.replace(microsecond=0)
    next_update = store.next_update(ca) or this_update + RESPONSE_VALIDITY
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=request.issuer_name_hash, issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number, algorithm=algorithm,
        cert_status=_STATUS[status.status], this_update=this_update,
        next_update=max(next_update, this_update + timedelta(minutes=1)),
        revocation_time=status.revoked_at if status.revoked else None,
        revocation_reason=status.reason if status.revoked else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
        builder = builder.add_extension(nonce, critical=False)
    except x509.ExtensionNotFound:
        pass
    try:
        response = builder.sign(ca.key, hashes.SHA256())
    except (OSError, ValueError) as exc:  # the CA's key file is gone or unreadable
        log.error("cannot sign an OCSP answer as %s: %s", ca.files.name, exc)
        return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR), "error"
    return response.public_bytes(serialization.Encoding.DER), status.status


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": body})


class RevocationApp:
    """The ASGI app of the OCSP/CRL port. ``counts`` counts answers by outcome."""

    def __init__(self, store: CrlStore, crl_files: dict[str, Any]) -> None:
        self.store = store
        self.crl_files = dict(crl_files)  # file name -> Path
        self.counts: Counter = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in ("/", "/ocsp", "/ocsp/"):
            body = await self._body(receive)
            if body is None:
                await _respond(send, 413, b"request too large", b"text/plain")
                return
            await self._ocsp(send, body)
        elif method == "GET" and path.startswith("/ocsp/"):
            raw = (scope.get("raw_path") or path.encode()).decode("ascii", "replace")
            try:
                der = base64.b64decode(unquote(raw).removeprefix("/ocsp/"), validate=True)
            except (binascii.Error, ValueError):
                der = b""
            await self._ocsp(send, der)
        elif method == "GET" and path.startswith("/crl/"):
            await self._crl(send, path.removeprefix("/crl/"))
        elif method == "GET" and path == "/health":
            await _respond(send, 200, b"ok", b"text/plain")
        else:
            await _respond(send, 404, f"no route {method} {path}".encode(), b"text/plain")

    async def _ocsp(self, send: Send, der: bytes) -> None:
        body, outcome = respond(der, self.store)
        self.counts[outcome] += 1
        await _respond(send, 200, body, b"application/ocsp-response")

    async def _crl(self, send: Send, name: str) -> None:
        path = self.crl_files.get(name)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:
            data = None
        if data is None:
            await _respond(send, 404, f"no CRL {name!r}".encode(), b"text/plain")
            return
        await _respond(send, 200, data, b"application/pkix-crl")

    @staticmethod
    async def _body(receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b""
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_REQUEST:
                return None
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)
