"""Interactive doctor logins: one eSZIG card (or MobilToken) login per doctor, many requests.

When a request needs a doctor's token and there is none, :meth:`LoginCoordinator.wait`:

1. parks the request durably in the doctor's wait queue (``eeszt.login.wait.<user>``, per-message
   TTL = the request's deadline) and acknowledges it: no worker thread waits;
2. starts **one** login for the doctor across all worker processes: a marker in
   ``eeszt.login.pending.<user>`` (max one message, overflow ``reject-publish``; the first
   publisher wins, the others see a nack). The marker's TTL is the login window;
3. the winner asks EESZT for an eID request package, signs a :class:`CardChallenge` with the
   gateway's challenge key and sends it to the doctor's workstation queue;
4. tells the HIS "waiting for login" once per request.

The bridge answers on ``eeszt.login.answers``; any worker process handles the answer
(:meth:`on_event`): it exchanges the rID (or the MobilToken code) for the doctor's SAML token at
the STS, shares the token with every process and moves the doctor's waiting requests back to
their work queue. The marker is cleared by a sweep ``sweep_after_s`` (2 s) later, once the token
has reached the other processes; until then a process that has no token yet parks a new request
of that doctor rather than start a second login, and the sweep releases it. A wrong PIN, a missing card and the like are reported to the
waiting requests' HIS, and the doctor is asked again while the window is open. When the window
closes without a login, the HIS is told; the requests wait until their own deadline, when their
TTL sends them back to the work queue and they fail with "login not completed".
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas.card import CardAnswer, CardChallenge, CardErrorCode, ChallengeKind
from schemas.envelope import RequestEnvelope
from schemas.replies import StatusState, StatusUpdate, reply_fields
from schemas.wire import H_STATUS_SENT, H_TYPE, H_WAITING_LOGIN

from .errors import GatewayError, ServiceError
from .outbox import Outbox
from .tokens import TokenManager, doctor_identity

log = logging.getLogger("eeszt_gw.login")

#: errors after which the doctor is asked again (while the login window is open)
RETRYABLE = {CardErrorCode.WRONG_PIN, CardErrorCode.CAN_REQUIRED, CardErrorCode.NO_CARD,
             CardErrorCode.TIMED_OUT, CardErrorCode.EID_UNREACHABLE, CardErrorCode.CARD_ERROR}

ERROR_TEXT = {
    CardErrorCode.NO_READER: "no card reader is connected to the workstation",
    CardErrorCode.NO_CARD: "insert the eSZIG card into the reader",
    CardErrorCode.WRONG_PIN: "wrong PIN",
    CardErrorCode.CAN_REQUIRED: "the card needs its CAN (printed on the card) before the last PIN try",
    CardErrorCode.PIN_BLOCKED: ("the PIN is blocked: unblock it with the PUK (eSzemélyi client, or "
                                "at a government office), then log in again"),
    CardErrorCode.CARD_NOT_ACTIVATED: "the card is not activated for EESZT (activate it on the sector portal)",
    CardErrorCode.EID_UNREACHABLE: "the eID server could not be reached",
    CardErrorCode.CANCELLED: "the doctor cancelled the login",
    CardErrorCode.TIMED_OUT: "nobody answered the login prompt in time",
    CardErrorCode.REFUSED: "the workstation refused the login challenge",
    CardErrorCode.CARD_ERROR: "the card reported an error",
}


class LoginBackend(Protocol):
    """The broker operations a login needs (RabbitMQ, or in memory for the demo)."""

    def park(self, user_id: str, *, queue: str, body: bytes, headers: dict[str, Any],
             ttl_ms: int, message_id: str | None) -> None: ...
    def begin(self, user_id: str, *, marker: bytes) -> bool: ...
    def pending(self, user_id: str) -> bool: ...
    def end(self, user_id: str) -> None: ...
    def send_challenge(self, challenge: CardChallenge) -> bool: ...
    def waiting(self, user_id: str) -> list[tuple[bytes, dict[str, Any]]]: ...
    def release(self, user_id: str) -> int: ...
    def schedule(self, event: dict[str, Any], delay_s: float) -> None: ...


class EidClient(Protocol):
    def request_eid_package(self, *, user_id: str, workstation: str) -> tuple[str, datetime]: ...
    def issue_token(self, **kwargs: Any) -> Any: ...


def sign_challenge(key: Ed25519PrivateKey, challenge: CardChallenge) -> CardChallenge:
    signature = base64.b64encode(key.sign(challenge.signing_bytes())).decode()
    return challenge.model_copy(update={"signature": signature})


class LoginCoordinator:
    def __init__(self, *, backend: LoginBackend, eeszt: EidClient, tokens: TokenManager,
                 outbox: Outbox, challenge_key: Ed25519PrivateKey, institution: str,
                 challenge_ttl_s: float = 120.0, sweep_after_s: float = 2.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.backend = backend
        self.eeszt = eeszt
        self.tokens = tokens
        self.outbox = outbox
        self.key = challenge_key
        self.institution = institution
        self.challenge_ttl = timedelta(seconds=challenge_ttl_s)
        self.started: set[str] = set()  # doctors whose logins this process started (for status)
        self.sweep_after_s = sweep_after_s
        self.clock = clock

    # --- a request that needs a login ---------------------------------------------------------
    def wait(self, *, queue: str, body: bytes, headers: dict[str, Any], message_id: str | None,
             request: RequestEnvelope, route: str) -> str:
        """Park ``request`` until its doctor logs in; start the login if nobody has.

        Returns "waiting", or "ready" when the doctor's token arrived meanwhile (the caller then
        sends the request at once instead).
        """
        user, workstation = request.acting.user_id, request.acting.workstation
        if self.tokens.usable(doctor_identity(user)) is not None:
            return "ready"
        headers = dict(headers)
        headers[H_TYPE] = request.message_type
        headers[H_WAITING_LOGIN] = user
        sent = set(filter(None, str(headers.get(H_STATUS_SENT, "")).split(",")))
        tell = "waiting_for_login" not in sent
        if tell:
            headers[H_STATUS_SENT] = ",".join(sorted(sent | {"waiting_for_login"}))
        ttl_ms = max(1, int((request.deadline - self.clock()).total_seconds() * 1000))
        self.backend.park(user, queue=queue, body=body, headers=headers, ttl_ms=ttl_ms,
                          message_id=message_id)
        marker = json.dumps({"event": "window-expired", "user_id": user,
                             "workstation": workstation, "route": route}).encode()
        started = self.backend.begin(user, marker=marker)
        if started and self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.end(user)  # a login completed just now: nothing to start
            started = False
        if started:
            self.started.add(user)
            log.info("login of %s started at workstation %s (%s)", user, workstation, route)
            self._challenge(user, workstation, route)
        if tell and request.reply_to:
            self.outbox.reply(request.reply_to, StatusUpdate(
                **reply_fields(request), state=StatusState.WAITING_FOR_LOGIN,
                detail=f"waiting for {user} to log in at {workstation}"))
        if self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.release(user)  # the login finished while we parked: do not strand it
        return "waiting"

    def _challenge(self, user: str, workstation: str, route: str) -> None:
        package = None
        try:
            if route == ChallengeKind.ESZIG.value:
                package, _ = self.eeszt.request_eid_package(user_id=user, workstation=workstation)
        except (ServiceError, GatewayError) as exc:
            log.warning("no eID package for %s: %s", user, exc)
            self._tell_waiting(user, f"EESZT did not hand out an eID login package ({exc}); "
                                     "the login is tried again with the next request")
            self.backend.end(user)
            return
        now = self.clock()
        challenge = sign_challenge(self.key, CardChallenge(
            challenge_id=uuid.uuid4(), kind=ChallengeKind(route), user_id=user,
            workstation=workstation, institution=self.institution,
            purpose=f"{self.institution} asks {user} to sign in to EESZT to send waiting requests",
            eid_package=package, created_at=now, expires_at=now + self.challenge_ttl))
        if not self.backend.send_challenge(challenge):
            self._tell_waiting(user, f"no card bridge listens for workstation {workstation}")

    # --- answers and login events ------------------------------------------------------------
    def on_event(self, body: bytes, headers: dict[str, Any]) -> None:
        """Handle one message of ``eeszt.login.answers``. Never raises for bad input."""
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("ignored an unreadable login event")
            return
        if isinstance(data, dict) and data.get("event") == "window-expired":
            self._window_expired(str(data.get("user_id")), int(data.get("round", 0) or 0))
            return
        if isinstance(data, dict) and data.get("event") == "sweep":
            user = str(data.get("user_id"))
            if self.tokens.usable(doctor_identity(user)) is not None:
                self.backend.end(user)
                self.backend.release(user)
            return
        try:
            answer = CardAnswer.model_validate(data)
        except ValidationError:
            log.warning("ignored an invalid card answer")
            return
        self._answer(answer)

    def _answer(self, answer: CardAnswer) -> None:
        user, identity = answer.user_id, doctor_identity(answer.user_id)
        if answer.outcome == "error":
            self._login_error(answer)
            return
        try:
            if answer.outcome == "rid":
                rid = base64.b64encode((answer.rid_package or "").encode()).decode()
                issued = self.eeszt.issue_token(method="eszig", user_id=user,
                                                workstation=answer.workstation, rid_package=rid)
            else:
                issued = self.eeszt.issue_token(method="mobiltoken", user_id=user,
                                                workstation=answer.workstation, otp=answer.otp)
        except (ServiceError, GatewayError) as exc:
            log.warning("the STS refused the login of %s: %s", user, exc)
            self._tell_waiting(user, f"the STS refused the login ({exc})")
            if self.backend.pending(user):
                self._challenge(user, answer.workstation, self._route(user))
            return
        self.tokens.stats["logins_by_method:" + ("eszig" if answer.outcome == "rid" else "mobiltoken")] += 1
        self.tokens.put(identity, issued, reason="login")
        self.started.discard(user)
        moved = self.backend.release(user)
        log.info("login of %s completed; %d waiting requests released", user, moved)
        # The login marker stays until this sweep: another worker process that has not yet
        # received the token (it travels on eeszt.tokens) parks a new request of this doctor
        # instead of starting a second login (a second PIN prompt); the sweep then ends the
        # marker and releases what such processes parked meanwhile.
        self.backend.schedule({"event": "sweep", "user_id": user}, self.sweep_after_s)

    def _login_error(self, answer: CardAnswer) -> None:
        code = answer.error or CardErrorCode.CARD_ERROR
        text = ERROR_TEXT.get(code, code.value)
        if code is CardErrorCode.WRONG_PIN and answer.tries_left is not None:
            text += f": {answer.tries_left} {'try' if answer.tries_left == 1 else 'tries'} left"
            if answer.tries_left == 1:
                text += " (the card will ask for its CAN first)"
        log.info("login of %s at %s: %s", answer.user_id, answer.workstation, code.value)
        self._tell_waiting(answer.user_id, text)
        if code in RETRYABLE and self.backend.pending(answer.user_id):
            self._challenge(answer.user_id, answer.workstation, self._route(answer.user_id))

    def _route(self, user: str) -> str:
        cred = self.tokens.credentials.get(user)
        return cred.interactive if cred is not None else ChallengeKind.ESZIG.value

    def _window_expired(self, user: str, _round: int) -> None:
        if self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.release(user)
            return
        log.info("login window of %s closed without a login", user)
        self._tell_waiting(user, "the login was not completed in time; the requests wait until "
                                 "their deadline, and the next request starts a new login")

    def _tell_waiting(self, user: str, detail: str) -> None:
        for body, _headers in self.backend.waiting(user):
            try:
                request = RequestEnvelope.model_validate_json(body)
            except ValidationError:
                continue
            if request.reply_to:
                self.outbox.reply(request.reply_to, StatusUpdate(
                    **reply_fields(request), state=StatusState.WAITING_FOR_LOGIN, detail=detail))
