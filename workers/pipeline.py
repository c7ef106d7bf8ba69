"""What happens to one request: validate, token, sign, submit, classify, reply.

:meth:`Pipeline.handle` never raises for a bad or failed request: every request ends in a reply
(or, with no reply address, in the dead-letter queue), or is parked durably for a later attempt.
It raises only when the broker itself cannot take what the request produced (BrokerError); the
request is then not acknowledged and comes back. The pipeline decides; every outcome (and every
audit event) is settled by one method of :class:`workers.outcomes.Outcomes`: the reply, the audit
event, the dead letter, the retry or park, the metrics.
"""

from __future__ import annotations

import contextlib
import logging
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Protocol

from schemas.envelope import RequestEnvelope
from schemas.permissions import Role, writer_role
from schemas.replies import GW_INSTITUTION, GW_LOGIN, Failed
from schemas.soap import OPERATION_OF, FaultCode
from schemas.wire import (
    H_AMBIGUOUS,
    H_ATTEMPT,
    H_LOGIN_RELEASED,
    H_PARKED,
    H_REPLAYED,
    H_REPLAYED_AT,
    H_REPUBLISHED,
    H_WAITING_LOGIN,
)

from .errors import AmbiguousOutcome, LoginFailed, ServiceRejected, ServiceUnavailable, TokenRejected
from .intake import Incoming, Invalid, read as read_delivery
from .middleware.audit import AuditLog, NullAuditLog
from .outbox import Outbox
from .outcomes import KEPT_IN, Observer, Outcomes, _NullObserver
from .retry import RetryPolicy
from .client.soap import SubmitResult
from .tenants import MODES as TENANT_MODES, Refusal, refusal as tenant_refusal
from .logins.tokens import (
    LoginRequired,
    NoLoginRoute,
    Token,
    TokenManager,
    doctor_identity,
    institution_identity,
)

log = logging.getLogger("eeszt_gw.pipeline")


class _TwinInFlight(Exception):
    """Another copy of this request holds its lock (``Pipeline._one_copy``)."""


_NO_LOCK = contextlib.nullcontext()  # reusable: it keeps no state


class ServiceClient(Protocol):
    def submit(self, request: RequestEnvelope, assertion: Any) -> SubmitResult: ...
    def query(self, service: str, idempotency_key: str, assertion: Any) -> list[SubmitResult]: ...


class Pipeline(Outcomes):
    def __init__(self, *, client: ServiceClient, tokens: TokenManager, outbox: Outbox,
                 institution: str, policy: RetryPolicy = RetryPolicy(),
                 observer: Observer | None = None, logins: Any = None, breakers: Any = None,
                 republish_delay_s: float = 60.0, audit: AuditLog | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 tenants: str = "his-users") -> None:
        if tenants not in TENANT_MODES:
            raise ValueError(f"tenants: {tenants!r} is not one of {', '.join(TENANT_MODES)}")
        self.client = client
        self.tokens = tokens
        self.outbox = outbox
        self.institution = institution
        self.policy = policy
        self.observer = observer or _NullObserver()
        #: a workers.logins.coordinator.LoginCoordinator, or None: no interactive logins
        self.logins = logins
        self.breakers = breakers  # a workers.breaker.Breakers, or None: no circuit breaking
        self.republish_delay_s = republish_delay_s
        self.audit = audit or NullAuditLog()
        self._no_audit = isinstance(self.audit, NullAuditLog)
        self.clock = clock
        self.tenants = tenants  # workers.tenants: whose reply_to a request may name
        self._rng = random.Random()

    # --- entry --------------------------------------------------------------------------------
    def handle(self, msg: Incoming) -> str:
        """Process one delivery; return the outcome kind (for metrics and tests)."""
        request = read_delivery(msg, now=self.clock())  # workers/intake.py
        if isinstance(request, Invalid):
            reply_to = request.info.get("reply_to")
            if refused := self._tenant_refusal(msg, reply_to):
                return self._refuse_tenant(msg, refused, None, info=request.info,
                                           invalid=f"{request.field or 'body'}: {request.reason}")
            return self._refuse_invalid(msg, request.field, request.reason, info=request.info)
        self._received(msg, request)
        if refused := self._tenant_refusal(msg, request.reply_to):
            return self._refuse_tenant(msg, refused, request)
        return self._process(msg, request)

    def _tenant_refusal(self, msg: Incoming, reply_to: str | None) -> Refusal | None:
        if self.tenants == "off":
            return None
        return tenant_refusal(self.tenants, msg.user_id, reply_to)


    # --- valid envelopes ------------------------------------------------------------------------
    def _process(self, msg: Incoming, request: RequestEnvelope) -> str:
        service, _ = OPERATION_OF[request.message_type]
        if request.institution != self.institution:
            return self._reject(request, GW_INSTITUTION, "institution",
                                f"this gateway signs for institution {self.institution}, "
                                f"not {request.institution}")
        needed = writer_role(service.name)
        if needed is Role.DOCTOR and request.acting.kind != "doctor":
            return self._reject(request, FaultCode.PERMISSION_DENIED.value, "acting",
                                f"{service.name} writes need a doctor's token; the request acts "
                                f"as the institution")
        if needed is Role.INSTITUTION and request.acting.kind != "institution":
            return self._reject(request, FaultCode.PERMISSION_DENIED.value, "acting",
                                f"{service.name} writes need the institution's token; the request "
                                f"acts as a doctor")
        now = self.clock()
        if msg.headers.get(H_REPLAYED):
            # The operator replayed it after fixing the cause: a day from the replay, not the
            # original deadline.
            at = msg.headers.get(H_REPLAYED_AT)
            replayed_at = (datetime.fromtimestamp(at / 1000, timezone.utc)
                           if isinstance(at, (int, float)) else now)
            request = request.model_copy(update={"deadline": max(
                request.deadline, replayed_at + timedelta(days=1))})
        if now >= request.deadline:
            if msg.headers.get(H_PARKED):
                return self._fail(msg, request, f"EESZT {service.name} was unavailable until the "
                                                "request's deadline")
            if msg.headers.get(H_WAITING_LOGIN):
                return self._fail(msg, request, f"login not completed: {msg.headers[H_WAITING_LOGIN]} "
                                                "did not log in before the request's deadline")
            return self._fail(msg, request, "the deadline passed before the request could be sent")
        if (msg.redelivered or msg.headers.get(H_REPUBLISHED)) and not msg.headers.get(H_AMBIGUOUS):
            return self._defer_twin(msg, request)
        identity = (doctor_identity(request.acting.user_id) if request.acting.kind == "doctor"
                    else institution_identity(self.institution))
        # Ask EESZT before sending whenever any worker handled this message before: after a
        # crash a copy may sit in a retry, park or wait queue while the original comes back
        # redelivered, and only one of them may create the record.
        ambiguous = msg.redelivered or any(msg.headers.get(h) for h in (
            H_AMBIGUOUS, H_ATTEMPT, H_PARKED, H_LOGIN_RELEASED, H_WAITING_LOGIN))
        released = bool(msg.headers.get(H_LOGIN_RELEASED))
        breaker = self.breakers.get(service.name) if self.breakers is not None else None
        if breaker is not None and breaker.is_open:
            return self._park(msg, request, f"EESZT {service.name} is unavailable", ambiguous)
        started = breaker.clock() if breaker is not None else 0.0
        try:
            with self._one_copy(ambiguous, service.name, request):
                result = self._submit(request, service.name, identity, ambiguous, released)
        except _TwinInFlight:
            return self._defer_twin(msg, request)
        except LoginRequired as exc:
            if self.logins is None:
                return self._reject(request, GW_LOGIN, "acting.user_id",
                                    f"{exc}, but interactive logins are not enabled here")
            outcome = self.logins.wait(queue=msg.queue, body=msg.body, headers=msg.headers,
                                       message_id=msg.message_id, request=request,
                                       route=exc.route)
            if outcome == "ready":  # the doctor's token arrived meanwhile: send now
                return self._process(msg, request)
            if outcome == "rejected":  # no card bridge at the workstation: GW-LOGIN, final
                return outcome
            return self._waiting(msg, request, exc, outcome)
        except (NoLoginRoute, LoginFailed) as exc:
            return self._reject(request, GW_LOGIN if isinstance(exc, NoLoginRoute) else exc.code or GW_LOGIN,
                                "acting.user_id", str(exc))
        except ServiceRejected as exc:
            self._answered(breaker)
            return self._reject(request, exc.code or "REJECTED", exc.field, str(exc))
        except ServiceUnavailable as exc:
            if breaker is not None:
                breaker.record_failure(str(exc), started=started)
                if breaker.is_open:
                    return self._park(msg, request, str(exc),
                                      ambiguous or isinstance(exc, AmbiguousOutcome))
            return self._retry_later(msg, request, exc)
        self._answered(breaker)
        return self._accept(msg, request, result)

    def _one_copy(self, ambiguous: bool, service: str,
                  request: RequestEnvelope) -> contextlib.AbstractContextManager[None]:
        """A copy that must ask EESZT first holds the request's lock while it asks and sends.

        Two such copies can come back at the same moment (a redelivered original and the
        retry-queue copy the outbox published twice when its confirm was lost in a broker
        restart); without the lock both ask, both hear "not there", and both send. The copy
        that finds the lock taken is deferred again and then finds the record. A first,
        unflagged delivery takes no lock: nothing was sent for it before.
        """
        return self._locked(service, request) if ambiguous else _NO_LOCK

    @contextlib.contextmanager
    def _locked(self, service: str, request: RequestEnvelope) -> Iterator[None]:
        with self.outbox.key_lock(request.institution, service, request.idempotency_key) as held:
            if not held:
                raise _TwinInFlight
            yield

    def _submit(self, request: RequestEnvelope, service: str, identity: str,
                ambiguous: bool, released: bool = False) -> SubmitResult:
        """Send (or find) the request. Raises the error tree; refreshes a refused token once."""
        refreshed = False
        ambiguous_sends = 0
        while True:
            token = self.tokens.get(identity, reason=service, expect_shared=released)
            try:
                if ambiguous:
                    found = self._landed(service, request, token)
                    if found:
                        return found
                    ambiguous = False
                return self._send_with_retries(request, token)
            except TokenRejected:
                if refreshed:
                    raise
                refreshed = True
                self.tokens.invalidate(identity, token)
            except AmbiguousOutcome:
                ambiguous_sends += 1
                if ambiguous_sends >= 2:
                    raise  # the broker-side retry asks again, later
                ambiguous = True

    def _answered(self, breaker) -> None:
        if breaker is not None and breaker.record_success():
            self.breakers.closed(breaker.service)

    def _landed(self, service: str, request: RequestEnvelope, token: Token) -> SubmitResult | None:
        """What the service holds under the request's key. Raises AmbiguousOutcome if it cannot
        tell, so that the ambiguity travels with the request to its next attempt."""
        try:
            found = self.client.query(service, request.idempotency_key, token.assertion)
        except AmbiguousOutcome:
            raise
        except ServiceUnavailable as exc:
            raise AmbiguousOutcome(f"could not ask {service} whether the request landed: {exc}",
                                   service=service, code=exc.code) from exc
        return found[0] if found else None

    def _send_with_retries(self, request: RequestEnvelope, token: Token) -> SubmitResult:
        def send(try_number: int) -> SubmitResult:
            self._submitted(request, token, try_number)
            return self.client.submit(request, token.assertion)

        return self.policy.call(send)


def internal_error(pipeline: Pipeline, msg: Incoming, exc: BaseException) -> None:
    """Last resort for a bug: keep the message and tell the HIS, instead of crashing."""
    reason = f"internal error ({type(exc).__name__}); the message is kept for replay"
    pipeline._dead_letter(msg, reason=reason, code="GW-INTERNAL")
    try:
        request = RequestEnvelope.from_json(msg.body)
    except ValueError:  # pydantic's ValidationError included
        return
    if tenant_refusal(pipeline.tenants, msg.user_id, request.reply_to):
        return  # not its sender's reply address: the dead letter is all
    pipeline._reply(request, Failed, reason=reason, kept_in=KEPT_IN)
