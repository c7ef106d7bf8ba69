"""The simulator's ASGI applications: the EESZT service port and the loopback admin port (the
eID server's application is :class:`simulator.eid_app.EidServerApp`).

Both are plain ASGI callables (no framework): the request path is short, and the fault
injector needs uvicorn's transport to reset a connection the way a failing load balancer does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from schemas.soap import SERVICES, FaultCode, contract_path

from .eid import EidKey, EidServer
from .faults import FaultConfig, FaultInjector, Injection
from .pki import PkiPaths
from .rules import Rules, authorize
from .saml import AssertionIssuer, AssertionVerifier, SamlError
from .services import QUERY_OP, Caller, ServiceHandler, build_handlers
from .soapio import SoapFault, envelope_bytes, fault_bytes, operation_element, parse_envelope
from .store import Store
from .sts import EID_PACKAGE_TAG, StsHandler
from .users import UserRegistry
from .wsse import WsseError, WsseVerifier
from .channel import ChannelChecks
from .revocation import CrlStore

log = logging.getLogger("eeszt_gw.simulator")

MAX_BODY = 16 * 1024 * 1024
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def _not_http(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol (uvicorn runs with lifespan off; other servers may not)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


@dataclass
class Counters:
    """In-memory counters, written by the request thread, read by the admin thread."""

    requests: Counter = field(default_factory=Counter)  # by endpoint: "sts" / service name
    faults: Counter = field(default_factory=Counter)  # by fault code
    injected: Counter = field(default_factory=Counter)  # by Injection
    cpu_ns: Counter = field(default_factory=Counter)  # by endpoint kind: "sts" / "services"
    processed: Counter = field(default_factory=Counter)  # by endpoint kind
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        cpu = {
            kind: round(self.cpu_ns[kind] / self.processed[kind] / 1000, 1)
            for kind in list(self.processed)
            if self.processed[kind]
        }
        return {
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            "injected": dict(self.injected),
            "cpu_us_per_request": cpu,
            "uptime_s": round(time.time() - self.started_at, 1),
        }


async def _read_body(receive: Receive, limit: int = MAX_BODY) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _Gone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes,
                   content_type: bytes = b"text/xml; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _abort(send: Send) -> None:
    """Reset the TCP connection (RST), as a crashing load balancer would."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:  # not served by uvicorn: fall back to a truncated response
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1000")]})
        raise ConnectionAbortedError("simulated reset")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
    await asyncio.sleep(0)  # let uvicorn see the connection as lost before we return


async def json_response(send: Send, status: int, payload: Any) -> None:
    await _respond(send, status, json.dumps(payload, default=str).encode(), b"application/json")


class Simulator:
    """The EESZT service port: ``POST /sts`` and ``POST /services/<name>``."""

    def __init__(self, *, pki: PkiPaths, db_path: Path, users: UserRegistry,
                 faults: FaultConfig, seed: int | None = None, eid_package_ttl_s: float = 120,
                 rid_ttl_s: float = 60, rules: Rules | None = None) -> None:
        self.pki = pki
        self.db_path = db_path
        self.store = Store(db_path)
        # the three qualified CAs (a PKI made before them has only qualified-ca.pem); the CRLs
        # of those and of the WAF access CA, checked on every request
        self.revocation = CrlStore(pki.revoking_cas())
        self.channel = ChannelChecks(self.revocation)
        self.verifier = WsseVerifier(
            trusted_ca_pems=[ca.cert.read_bytes() for ca in pki.qualified_cas() if ca.cert.is_file()],
            max_skew_seconds=faults.max_skew_s,
            revoked_at=lambda cert: self.revocation.status(cert).revoked_at)
        self.saml = AssertionVerifier(cert_pem=pki.sts_cert.read_bytes())
        self.eid = EidServer(key=EidKey.from_pem(pki.eid_key.read_bytes()),
                             card_ca_pem=pki.card_ca_cert.read_bytes(), users=users,
                             package_ttl=timedelta(seconds=eid_package_ttl_s),
                             rid_ttl=timedelta(seconds=rid_ttl_s))
        self.eid.cards.apply(self.store.card_states())  # activations changed on the admin port
        self.sts = StsHandler(
            issuer=AssertionIssuer(key_pem=pki.sts_key.read_bytes(), cert_pem=pki.sts_cert.read_bytes()),
            users=users, eid=self.eid, used=self.store,
        )
        self.handlers: dict[str, ServiceHandler] = build_handlers()
        self.injector = FaultInjector(faults, seed=seed)
        self.counters = Counters()
        self.start_rules = rules or Rules()
        self.set_rules(self.start_rules)

    # --- run-time configuration (called from the admin thread) ----------------------------------
    @property
    def faults(self) -> FaultConfig:
        return self.injector.config

    def set_faults(self, config: FaultConfig) -> None:
        self.verifier.max_skew_seconds = config.max_skew_s
        self.injector.config = config  # one reference swap: readers see old or new, never a mix

    def set_rules(self, rules: Rules) -> None:
        self.verifier.max_lifetime_seconds = rules.max_timestamp_lifetime_s
        self.rules = rules  # one reference swap, as for the faults

    # --- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] == "GET":
            await self._get(path, scope.get("query_string", b""), send)
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b"method not allowed", b"text/plain")
            return
        try:
            data = await _read_body(receive)
        except _Gone:
            return
        except _TooLarge:
            await _respond(send, 413, fault_bytes(SoapFault(FaultCode.SCHEMA_INVALID,
                           f"request larger than {MAX_BODY} bytes")))
            return
        await self._post(path, data, send)

    async def _get(self, path: str, query: bytes, send: Send) -> None:
        name = path.removeprefix("/services/")
        if path.startswith("/services/") and name in SERVICES and b"wsdl" in query:
            await _respond(send, 200, contract_path(SERVICES[name].wsdl).read_bytes())
        elif path == "/sts" and b"wsdl" in query:
            await _respond(send, 200, contract_path("sts.wsdl").read_bytes())
        elif path.startswith("/contract/"):
            try:
                await _respond(send, 200, contract_path(path.removeprefix("/contract/")).read_bytes())
            except FileNotFoundError:
                await _respond(send, 404, b"no such contract file", b"text/plain")
        else:
            await _respond(send, 404, b"not found", b"text/plain")

    async def _post(self, path: str, data: bytes, send: Send) -> None:
        self.channel.enter(send)  # the access certificate, checked in _verify
        is_sts = path == "/sts"
        handler = None if is_sts else self.handlers.get(path.removeprefix("/services/"))
        if not is_sts and handler is None:
            await _respond(send, 404, fault_bytes(SoapFault(
                FaultCode.UNKNOWN_OPERATION, f"no service at {path}")))
            return
        endpoint = "sts" if is_sts else handler.service.name
        self.counters.requests[endpoint] += 1
        injection = self.injector.draw(datetime.now(timezone.utc), sts=is_sts)
        delay = self.injector.delay_s(sts=is_sts)
        if delay:
            await asyncio.sleep(delay)
        if injection is not Injection.NONE:
            self.counters.injected[injection.value] += 1
        if injection is Injection.OUTAGE:
            fault = SoapFault(FaultCode.SERVICE_UNAVAILABLE, "the service is in a maintenance window")
            self.counters.faults[fault.code.value] += 1
            await _respond(send, 503, fault_bytes(fault))
            return
        if injection is Injection.ERROR:
            fault = SoapFault(FaultCode.INTERNAL_ERROR, "internal error (injected)")
            self.counters.faults[fault.code.value] += 1
            await _respond(send, 500, fault_bytes(fault))
            return
        if injection is Injection.RESET:
            await _abort(send)
            return
        if injection is Injection.HANG:
            await asyncio.sleep(self.faults.hang_s)
            await _abort(send)
            return

        kind = "sts" if is_sts else "services"
        t0 = time.thread_time_ns()
        try:
            body = self._sts(data) if is_sts else self._service(handler, data)
            status = 200
        except SoapFault as fault:
            self.counters.faults[fault.code.value] += 1
            body, status = fault_bytes(fault), fault.http_status
            log.debug("fault %s on %s: %s", fault.code.value, endpoint, fault.message)
        self.counters.cpu_ns[kind] += time.thread_time_ns() - t0
        self.counters.processed[kind] += 1
        if injection is Injection.AMBIGUOUS:
            await _abort(send)  # processed (and maybe stored), but the answer never arrives
            return
        await _respond(send, status, body)

    def _verify(self, data: bytes):
        self.channel.check_revoked()  # a revoked access certificate: TLS-001, before parsing
        envelope = parse_envelope(data)
        try:
            verified = self.verifier.verify(envelope)
        except WsseError as exc:
            raise SoapFault(exc.code, str(exc)) from None
        if verified.institution_id:  # a signer naming none is refused by the caller
            self.channel.check_signer(verified.institution_id)  # TLS-002
        return verified

    def _sts(self, data: bytes) -> bytes:
        verified = self._verify(data)
        if not verified.institution_id:
            raise SoapFault(FaultCode.CERT_UNTRUSTED, "the signing certificate names no institution")
        op = operation_element(verified.body)
        if op.tag == EID_PACKAGE_TAG:
            return envelope_bytes(self.sts.eid_package(op, signer_institution=verified.institution_id))
        lifetime = timedelta(seconds=self.faults.token_lifetime_s)
        xml, subject, method = self.sts.issue(op, signer_institution=verified.institution_id,
                                              lifetime=lifetime)
        self.store.sts_issued(subject=subject, method=method, institution=verified.institution_id)
        return envelope_bytes(xml)

    def _service(self, handler: ServiceHandler, data: bytes) -> bytes:
        verified = self._verify(data)
        if verified.assertion is None:
            raise SoapFault(FaultCode.TOKEN_MISSING, "no SAML assertion in the Security header")
        try:
            token = self.saml.verify(verified.assertion)
        except SamlError as exc:
            raise SoapFault(exc.code, str(exc)) from None
        if token.institution != verified.institution_id:
            raise SoapFault(FaultCode.TOKEN_INSTITUTION_MISMATCH,
                            "the token was issued to another institution than the signer")
        op = operation_element(verified.body)
        op_name = handler.operation_name(op)
        key = handler.key_of(op)
        outcome = "error"
        try:
            authorize(service=handler.service.name, op_name=op_name, role=token.role,
                      method=token.method, rules=self.rules)
            handler.validate(op)
            caller = Caller(subject=token.subject, role=token.role, institution=token.institution)
            xml, record = handler.apply(op_name, op, caller=caller, store=self.store,
                                        duplicates=self.faults.duplicates)
            outcome = "query" if op_name == QUERY_OP else ("repeated" if record and record.repeated else "accepted")
            return envelope_bytes(xml)
        except SoapFault as fault:
            outcome = fault.code.value
            raise
        finally:
            self.store.attempt(service=handler.service.name, operation=op_name, key=key,
                               outcome=outcome, institution=token.institution)


from .admin import AdminApp  # noqa: E402  (the admin port; it reuses this module's helpers)

__all__ = ["AdminApp", "Counters", "Simulator", "json_response"]
