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
from schemas.audit import mask_text
from schemas.replies import (
    GW_LOGIN,
    GW_TENANT,
    GW_VALIDATION,
    Accepted,
    Failed,
    Rejected,
    StatusState,
    StatusUpdate,
    reply_fields,
)
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
from .intake import NIL, Incoming
from .middleware.audit import AuditLog, audit_event
from .outbox import Outbox
from .retry import RetryPolicy
from .tenants import Refusal

log = logging.getLogger("eeszt_gw.pipeline")

KEPT_IN = f"dead-letter queue {DEAD_LETTER_QUEUE}"


class Observer(Protocol):
    """Told about every outcome (metrics, the demo's table). All hooks are optional no-ops."""

    def outcome(self, service: str, kind: str, request: RequestEnvelope | None) -> None: ...


class _NullObserver:
    def outcome(self, service: str, kind: str, request: RequestEnvelope | None) -> None:
        """Nobody is watching (no metrics, no demo table): the outcome is only settled."""


class Outcomes:
    """Settling outcomes, mixed into :class:`workers.pipeline.Pipeline`, which sets these."""

    outbox: Outbox
    policy: RetryPolicy
    observer: Observer
    audit: AuditLog
    _no_audit: bool
    clock: Callable[[], datetime]
    _rng: random.Random
    republish_delay_s: float

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

    # --- steps and outcomes of a valid request --------------------------------------------------
    def _received(self, msg: Incoming, request: RequestEnvelope) -> None:
        self._audit("received", request, msg, detail=f"from queue {msg.queue}"
                    + (" (redelivered)" if msg.redelivered else ""))

    def _submitted(self, request: RequestEnvelope, token: Any, try_number: int) -> None:
        # One event for three steps (token, signing, sending): fewer events per request.
        self._audit("submitted", request, detail=f"with the token of {token.identity}, "
                    f"signed (WS-Security) and sent over mutual TLS, try {try_number} in "
                    "this call")

    def _accept(self, msg: Incoming, request: RequestEnvelope, result: Any) -> str:
        service = OPERATION_OF[request.message_type][0].name
        self._reply(request, Accepted, eeszt_id=result.eeszt_id, version=result.version)
        self._audit("answered", request, msg, detail=f"accepted as {result.eeszt_id} "
                                                     f"version {result.version}")
        self.observer.outcome(service, "accepted", request)
        return "accepted"

    def _waiting(self, msg: Incoming, request: RequestEnvelope, exc: Any, outcome: str) -> str:
        """Held in the doctor's wait queue (``workers.logins``) until the login completes."""
        self._audit("waiting_for_login", request, msg,
                    detail=f"{exc.user_id} logs in at {request.acting.workstation} ({exc.route})")
        self.observer.outcome(OPERATION_OF[request.message_type][0].name, "waiting", request)
        return outcome

    def _defer_twin(self, msg: Incoming, request: RequestEnvelope) -> str:
        """A copy that may have a twin being processed right now waits, then asks first.

        Two cases: a redelivered message (its first delivery may still be finishing on a worker
        whose broker connection died) and a copy a publisher sent again after a lost confirm
        (the first copy may be ahead of it in the queue). After ``republish_delay_s`` the twin
        has finished its attempt; this copy then asks EESZT before sending (the ambiguous
        flag), so only one record can come of the two.
        """
        headers = {**msg.headers, H_TYPE: request.message_type, H_AMBIGUOUS: 1}
        self.outbox.retry(msg.queue, msg.body, headers, self.republish_delay_s,
                          str(request.message_id))
        self._audit("retried", request, msg, detail=f"a twin may be in flight: asked again in "
                                                    f"{self.republish_delay_s:g} s, EESZT first")
        return "deferred"

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

    # --- refusals before processing ----------------------------------------------------------
    def _refuse_invalid(self, msg: Incoming, field_name: str, reason: str, *,
                        info: dict[str, Any]) -> str:
        """Refused before processing (``workers.intake``): a reply where ``info`` holds a
        usable ``reply_to``, else the original bytes go to the dead-letter queue."""
        service = ""
        mtype = info.get("type") or msg.message_type or ""
        if mtype in OPERATION_OF:
            service = OPERATION_OF[mtype][0].name
        reply_to = info.get("reply_to")
        self._audit("rejected" if reply_to else "dead_lettered", None, msg, service=service,
                    message_id=str(info.get("message_id") or msg.message_id or NIL),
                    idempotency_key=str(info.get("idempotency_key", "")),
                    detail=f"invalid message: {field_name or 'body'}: {reason}")
        log.info("rejected an invalid message %s on %s: %s: %s", msg.message_id or "-", msg.queue,
                 field_name or "body", reason)
        code = GW_VALIDATION
        if field_name == "acting.workstation" and reason == "Field required":
            # A doctor logs in only at a workstation's card bridge: without one, no login.
            code, reason = GW_LOGIN, ("a doctor's request must name the workstation where the "
                                      "doctor sits: doctors log in only there, through its card "
                                      "bridge (eSZIG card or MobilToken)")
        if reply_to:
            self.outbox.reply(reply_to, Rejected(
                message_id=info.get("message_id") or NIL, idempotency_key=info.get("idempotency_key", ""),
                service=service, message_type=mtype, code=code, field=field_name or None,
                reason=reason))
            self.observer.outcome(service, "rejected", None)
            return "rejected"
        self._dead_letter(msg, reason=f"invalid message ({field_name or 'body'}: {reason})",
                          code=code)
        self.observer.outcome(service, "dead-lettered", None)
        return "dead-lettered"

    def _refuse_tenant(self, msg: Incoming, refused: Refusal, request: RequestEnvelope | None, *,
                       info: dict[str, Any] | None = None, invalid: str = "") -> str:
        """Never sent to EESZT, never answered at its ``reply_to``: kept in ``eeszt.dlq``, and
        a HIS sender hears why on its own key (``his.NAME``)."""
        reason = refused.reason + (f"; the message is also invalid ({invalid})" if invalid else "")
        if request is not None:
            mtype, message_id, key = (request.message_type, request.message_id,
                                      request.idempotency_key)
        else:
            info = info or {}
            mtype = info.get("type") or msg.message_type or ""
            message_id, key = info.get("message_id") or NIL, info.get("idempotency_key", "")
        service = OPERATION_OF[mtype][0].name if mtype in OPERATION_OF else ""
        publisher = msg.user_id or "unknown"
        self._audit("dead_lettered", request, msg, service=service, message_id=str(message_id),
                    idempotency_key=key, detail=f"refused, {GW_TENANT} reply_to (publisher "
                    f"{publisher}): {reason}; kept in {DEAD_LETTER_QUEUE}")
        log.warning("refused message %s on %s from broker user %s: %s", message_id, msg.queue,
                    publisher, mask_text(reason))  # a reply_to may hold digits
        self._dead_letter(msg, reason=f"refused (publisher {publisher}): {reason}",
                          code=GW_TENANT, request=request)
        if refused.own_key:
            self.outbox.reply(refused.own_key, Rejected(
                message_id=message_id, idempotency_key=key, service=service, message_type=mtype,
                code=GW_TENANT, field="reply_to", reason=reason))
        self.observer.outcome(service, "dead-lettered", request)
        return "refused"
