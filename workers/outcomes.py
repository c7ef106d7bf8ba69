"""How a request's outcome is settled: the audit event, the reply to the HIS, the dead letter,
the retry or park in the broker, and the observer (metrics) told.

:class:`Outcomes` is the part of :class:`workers.pipeline.Pipeline` that records what happened
to a request; the pipeline decides what happens (validate, token, sign, submit, classify).
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from typing import Any, Callable, Protocol

from schemas.envelope import RequestEnvelope
from schemas.replies import Failed, Rejected, StatusState, StatusUpdate, reply_fields
from schemas.soap import OPERATION_OF
from schemas.validators import mask_taj
from schemas.wire import (
    DEAD_LETTER_QUEUE,
    H_AMBIGUOUS,
    H_ATTEMPT,
    H_CODE,
    H_FIRST_SEEN,
    H_IDEMPOTENCY_KEY,
    H_MESSAGE_ID,
    H_PARKED,
    H_REASON,
    H_STATUS_SENT,
    H_TYPE,
)

from .errors import AmbiguousOutcome, ServiceUnavailable
from .intake import Incoming
from .middleware.audit import AuditLog, audit_event
from .outbox import Outbox
from .retry import RetryPolicy

log = logging.getLogger("eeszt_gw.pipeline")

KEPT_IN = f"dead-letter queue {DEAD_LETTER_QUEUE}"


class Observer(Protocol):
    """Told about every outcome (metrics, the demo's table). All hooks are optional no-ops."""

    def outcome(self, service: str, kind: str, request: RequestEnvelope | None) -> None: ...


class _NullObserver:
    def outcome(self, service: str, kind: str, request: RequestEnvelope | None) -> None:
        pass


class Outcomes:
    """Settling outcomes, mixed into :class:`workers.pipeline.Pipeline`, which sets these."""

    outbox: Outbox
    policy: RetryPolicy
    observer: Observer
    audit: AuditLog
    _no_audit: bool
    clock: Callable[[], datetime]
    _rng: random.Random

    def _audit(self, kind: str, request: RequestEnvelope | None, msg: Incoming | None = None,
               detail: str = "", **known: Any) -> None:
        if self._no_audit:
            return
        if request is not None:
            known.setdefault("message_id", str(request.message_id))
            known.setdefault("idempotency_key", request.idempotency_key)
            op = OPERATION_OF.get(request.message_type)
            known.setdefault("service", op[0].name if op else "")
        if msg is not None:
            known.setdefault("message_id", msg.message_id or "")
            known.setdefault("attempt", msg.attempt or None)
        self.audit.record(audit_event(kind, detail=detail, **known))

    def _park(self, msg: Incoming, request: RequestEnvelope, detail: str, ambiguous: bool) -> str:
        """Hold the request durably while its service is down; tell the HIS once."""
        service = OPERATION_OF[request.message_type][0].name
        headers = dict(msg.headers)
        headers[H_TYPE] = request.message_type
        headers[H_PARKED] = 1
        headers.setdefault(H_FIRST_SEEN, int(time.time() * 1000))
        if ambiguous:
            headers[H_AMBIGUOUS] = 1
        sent = set(filter(None, str(headers.get(H_STATUS_SENT, "")).split(",")))
        tell = "parked" not in sent
        if tell:
            headers[H_STATUS_SENT] = ",".join(sorted(sent | {"parked"}))
        ttl_ms = max(1, int((request.deadline - self.clock()).total_seconds() * 1000))
        self.outbox.park(service, msg.queue, msg.body, headers, ttl_ms, str(request.message_id))
        self._audit("parked", request, msg, detail=f"{detail}; held in eeszt.parked.{service}")
        if tell:
            self._reply(request, StatusUpdate, state=StatusState.PARKED,
                        detail=f"{detail}; the request waits in the broker and is sent when "
                               "the service is back")
        self.observer.outcome(service, "parked", request)
        return "parked"

    def _reply(self, request: RequestEnvelope, kind: type, **fields: Any) -> None:
        """Send a ``kind`` reply (with the request's correlation fields) to the request's
        ``reply_to``; built only when there is one: most batch requests have none."""
        if request.reply_to:
            self.outbox.reply(request.reply_to, kind(**reply_fields(request), **fields))

    def _reject(self, request: RequestEnvelope, code: str, field_name: str | None, reason: str) -> str:
        service = OPERATION_OF[request.message_type][0].name
        self._audit("rejected", request, detail=f"{code} {field_name or ''}: {reason}")
        log.info("rejected %s (%s, taj %s): %s %s", request.message_id, request.message_type,
                 mask_taj(getattr(request.payload, "taj", "") or ""), code, field_name or "")
        if request.reply_to:
            self.outbox.reply(request.reply_to, Rejected(
                **reply_fields(request), code=code, field=field_name, reason=reason))
        else:
            self._dead_letter_request(request, reason=f"rejected: {reason}", code=code)
        self.observer.outcome(service, "rejected", request)
        return "rejected"

    def _fail(self, msg: Incoming, request: RequestEnvelope, reason: str) -> str:
        service = OPERATION_OF[request.message_type][0].name
        self._audit("failed", request, msg, detail=reason)
        self._audit("dead_lettered", request, msg, detail=f"kept in {DEAD_LETTER_QUEUE}")
        self._dead_letter(msg, reason=reason, code="GW-FAILED", request=request)
        self._reply(request, Failed, reason=reason, kept_in=KEPT_IN)
        self.observer.outcome(service, "failed", request)
        return "failed"

    def _retry_later(self, msg: Incoming, request: RequestEnvelope, exc: ServiceUnavailable) -> str:
        service = OPERATION_OF[request.message_type][0].name
        now = self.clock()
        attempt = msg.attempt + 1
        at = self.policy.next_attempt(attempt, now, request.deadline, self._rng)
        if at is None:
            return self._fail(msg, request, f"EESZT stayed unavailable until the deadline "
                                            f"(last error: {exc})")
        headers = dict(msg.headers)
        headers[H_TYPE] = request.message_type
        headers[H_ATTEMPT] = attempt
        headers.setdefault(H_FIRST_SEEN, int(time.time() * 1000))
        if isinstance(exc, AmbiguousOutcome):
            headers[H_AMBIGUOUS] = 1
        sent = set(filter(None, str(headers.get(H_STATUS_SENT, "")).split(",")))
        tell = "retrying" not in sent
        if tell:
            headers[H_STATUS_SENT] = ",".join(sorted(sent | {"retrying"}))
        self.outbox.retry(msg.queue, msg.body, headers, (at - now).total_seconds(),
                          str(request.message_id))
        self._audit("retried", request, attempt=attempt,
                    detail=f"{exc}; next attempt at {at.isoformat(timespec='seconds')}")
        if tell:  # the HIS hears "retrying" once, not once per attempt
            self._reply(request, StatusUpdate, state=StatusState.RETRYING, detail=str(exc),
                        attempt=attempt, next_attempt_at=at)
        self.observer.outcome(service, "retrying", request)
        return "retrying"

    def _dead_letter(self, msg: Incoming, *, reason: str, code: str,
                     request: RequestEnvelope | None = None) -> None:
        headers = {k: v for k, v in msg.headers.items() if isinstance(v, (str, int, float, bool))}
        headers.update({H_REASON: reason, H_CODE: code})
        if request is not None:
            headers.update({H_MESSAGE_ID: str(request.message_id),
                            H_IDEMPOTENCY_KEY: request.idempotency_key, H_TYPE: request.message_type})
        self.outbox.dead_letter(msg.body, headers, msg.message_id)

    def _dead_letter_request(self, request: RequestEnvelope, *, reason: str, code: str) -> None:
        self.outbox.dead_letter(request.to_json(), {
            H_REASON: reason, H_CODE: code, H_MESSAGE_ID: str(request.message_id),
            H_IDEMPOTENCY_KEY: request.idempotency_key, H_TYPE: request.message_type},
            str(request.message_id))
