"""An in-memory EESZT for unit tests: the same interface as
:class:`~workers.client.client.EesztClient`.

It keeps the rules that matter to the pipeline (permission table, dedupe or naive duplicates,
query by key, token expiry) and lets a test script failures. ``tests/contract`` runs the same
cases against this fake and against the real simulator over HTTPS, so the two cannot drift.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from lxml import etree

from schemas.envelope import RequestEnvelope
from schemas.permissions import Access, is_allowed
from schemas.soap import OPERATION_OF, FaultCode

from ..errors import AmbiguousOutcome, ServiceRejected, ServiceUnavailable, TokenRejected
from .soap import IssuedToken, SubmitResult


@dataclass
class FakeEeszt:
    """Thread-safe. ``script`` holds failures to raise, in order, before normal answers."""

    institution: str = "H100200"
    passwords: dict[str, str] = field(default_factory=dict)
    duplicates: str = "naive"
    token_lifetime: timedelta = timedelta(hours=1)
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    script: deque = field(default_factory=deque)  # exceptions (or "ambiguous") for submit
    records: list[tuple[str, str, str, str]] = field(default_factory=list)  # service, key, id, subject
    sts_calls: Counter = field(default_factory=Counter)
    submits: int = 0
    _tokens: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- STS ----------------------------------------------------------------------------------
    def issue_token(self, *, method: str, user_id: str | None = None, workstation: str | None = None,
                    password: str | None = None, otp: str | None = None,
                    rid_package: str | None = None) -> IssuedToken:
        with self._lock:
            self.sts_calls[method] += 1
        if method == "x509":
            subject, role = self.institution, "institution"
        elif method == "password" and user_id and self.passwords.get(user_id) == password:
            subject, role = user_id, "doctor"
        elif method == "mobiltoken" and user_id and otp and otp.isdigit():
            subject, role = user_id, "doctor"
        elif method == "eszig" and user_id and rid_package and \
                base64.b64decode(rid_package).decode() == f"rid:{user_id}":
            subject, role = user_id, "doctor"
        else:
            raise ServiceRejected(f"authentication failed for {user_id}", service="sts",
                                  code=FaultCode.AUTH_FAILED.value)
        now = self.clock()
        token_id = uuid.uuid4().hex
        self._tokens[token_id] = (subject, role, now + self.token_lifetime)
        assertion = etree.Element("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion", ID=token_id)
        return IssuedToken(assertion=assertion, created=now, expires=now + self.token_lifetime)

    def request_eid_package(self, *, user_id: str, workstation: str) -> tuple[str, datetime]:
        """A stand-in package: the fake's "card" answers it with the rID ``rid:<user>``."""
        with self._lock:
            self.sts_calls["eid_package"] += 1
        return f"package:{user_id}:{workstation}", self.clock() + timedelta(minutes=2)

    def expire_all_tokens(self) -> None:
        past = self.clock() - timedelta(seconds=1)
        self._tokens = {k: (s, r, past) for k, (s, r, _) in self._tokens.items()}

    # --- services -----------------------------------------------------------------------------
    def _caller(self, assertion) -> tuple[str, str]:
        if assertion is None:
            raise TokenRejected("no token", code=FaultCode.TOKEN_MISSING.value)
        entry = self._tokens.get(assertion.get("ID"))
        if entry is None:
            raise TokenRejected("unknown token", code=FaultCode.TOKEN_INVALID.value)
        subject, role, expires = entry
        if self.clock() >= expires:
            raise TokenRejected("token expired", code=FaultCode.TOKEN_EXPIRED.value)
        return subject, role

    def submit(self, request: RequestEnvelope, assertion) -> SubmitResult:
        service = OPERATION_OF[request.message_type][0].name
        subject, role = self._caller(assertion)
        if not is_allowed(service, Access.WRITE, role):
            raise ServiceRejected(f"a {role} token may not write to {service}", service=service,
                                  code=FaultCode.PERMISSION_DENIED.value)
        with self._lock:
            self.submits += 1
            failure = self.script.popleft() if self.script else None
            land = failure == "ambiguous"
            if failure is not None and not land:
                raise failure
            if self.duplicates == "dedupe":
                for svc, key, eid, _ in self.records:
                    if svc == service and key == request.idempotency_key:
                        return SubmitResult(eeszt_id=eid, version=1, stored_at="")
            eid = str(uuid.uuid4())
            self.records.append((service, request.idempotency_key, eid, subject))
        if land:
            raise AmbiguousOutcome("connection reset after the request landed", service=service)
        return SubmitResult(eeszt_id=eid, version=1, stored_at="")

    def query(self, service: str, idempotency_key: str, assertion) -> list[SubmitResult]:
        self._caller(assertion)
        with self._lock:
            return [SubmitResult(eeszt_id=eid, version=1, stored_at="")
                    for svc, key, eid, _ in self.records if svc == service and key == idempotency_key]

    def repeated_keys(self) -> int:
        counts = Counter((svc, key) for svc, key, _, _ in self.records)
        return sum(1 for n in counts.values() if n > 1)

    def unavailable(self, times: int = 1) -> None:
        for _ in range(times):
            self.script.append(ServiceUnavailable("HTTP 503", code=FaultCode.SERVICE_UNAVAILABLE.value))

    def close(self) -> None:
        pass
