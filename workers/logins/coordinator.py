"""Doctors' logins at their workstation: one login per doctor, many requests.

The gateway holds no doctor's password, MobilToken secret or one-time code. A doctor logs in
only at the workstation named in the request, through its card bridge: with the eSZIG card (the
doctor types the PIN) or with MobilToken (the doctor types the code of the phone's app; the
bridge posts it to the eID server, never to the broker). Which of the two is the bridge's
setting. Either way the bridge answers with an rID, which a worker exchanges at the STS.

When a request needs a doctor's token and there is none, :meth:`LoginCoordinator.wait`:

1. parks the request durably in the doctor's wait queue (``eeszt.login.wait.<user>``, per-message
   TTL = the request's deadline) and acknowledges it: no worker thread waits;
2. starts **one** login for the doctor across all worker processes: a marker in
   ``eeszt.login.pending.<user>`` (max one message, overflow ``reject-publish``; the first
   publisher wins, the others see a nack). The marker's TTL is the login window;
3. the winner asks EESZT for an eID request package, signs a :class:`CardChallenge` with the
   gateway's challenge key and sends it to the doctor's workstation queue. When no card bridge
   listens there, the doctor's waiting requests from that workstation are rejected at once
   (``GW-LOGIN``, naming the workstation and what to do) instead of waiting to their deadline;
4. tells the HIS "waiting for login" once per request.

The bridge answers on ``eeszt.login.answers``; any worker process handles the answer
(:meth:`on_event`). An answer counts only when it comes from the workstation the challenge went
to, while the doctor's login is pending: the challenge id carries a MAC over the doctor and the
workstation (keyed from the challenge key, which every worker process holds: no shared state to
look up), so an answer naming another workstation than its challenge's is ignored; and its AMQP
``user_id`` (which RabbitMQ validates) must be that workstation's bridge user ``bridge-<WS>``
when it is a bridge user, or whenever ``bridge_users`` is set (with a shared development user,
the workstation check is what remains). Anything else changes nothing. The worker exchanges
the rID for the doctor's SAML token at the STS, shares the token with every process and moves
the doctor's waiting requests back to their work queue. The marker is cleared by a sweep
``sweep_after_s`` (2 s) later, once the token has reached the other processes; until then a
process that has no token yet parks a new request of that doctor rather than start a second
login, and the sweep releases it. A wrong PIN or code, a missing card and the like are reported
to the waiting requests' HIS, and the doctor is asked again while the window is open. When the
window closes without a login, the HIS is told; the requests wait until their own deadline,
when their TTL sends them back to the work queue and they fail with "login not completed".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import struct
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import ValidationError

from schemas.card import CardAnswer, CardChallenge, CardErrorCode
from schemas.envelope import RequestEnvelope
from schemas.replies import GW_LOGIN, Rejected, StatusState, StatusUpdate, reply_fields
from schemas.wire import (
    H_AMBIGUOUS,
    H_CODE,
    H_IDEMPOTENCY_KEY,
    H_MESSAGE_ID,
    H_REASON,
    H_STATUS_SENT,
    H_TYPE,
    H_WAITING_LOGIN,
)

from ..errors import GatewayError, ServiceError
from ..outbox import Outbox
from .tokens import TokenManager, doctor_identity

log = logging.getLogger("eeszt_gw.login")

#: a workstation's own broker user (deploy/rabbitmq/add-bridge-user)
BRIDGE_USER_PREFIX = "bridge-"

#: a challenge is asked again after a crash at most this often, across all worker processes
RECHALLENGE_EVERY_S = 20.0

#: errors after which the doctor is asked again (while the login window is open)
RETRYABLE = {CardErrorCode.WRONG_PIN, CardErrorCode.CAN_REQUIRED, CardErrorCode.NO_CARD,
             CardErrorCode.TIMED_OUT, CardErrorCode.EID_UNREACHABLE, CardErrorCode.CARD_ERROR,
             CardErrorCode.WRONG_CODE}

ERROR_TEXT = {
    CardErrorCode.NO_READER: "no card reader is connected to the workstation",
    CardErrorCode.NO_CARD: "insert the eSZIG card into the reader",
    CardErrorCode.WRONG_PIN: "wrong PIN",
    CardErrorCode.CAN_REQUIRED: "the card needs its CAN (printed on the card) before the last PIN try",
    CardErrorCode.PIN_BLOCKED: ("the PIN is blocked: unblock it with the PUK (eSzemélyi client, or "
                                "at a government office), then log in again"),
    CardErrorCode.CARD_NOT_ACTIVATED: "the card is not activated for EESZT (activate it on the sector portal)",
    CardErrorCode.WRONG_CODE: "the MobilToken code was not accepted (wrong, already used or too old)",
    CardErrorCode.MOBILTOKEN_NOT_ENROLLED: ("the doctor has no MobilToken: register one on the "
                                            "sector portal, or log in with the eSZIG card"),
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
    def begin_spare(self, user_id: str, *, marker: bytes, ttl_s: float) -> bool: ...
    def pending(self, user_id: str) -> bool | None: ...
    def end(self, user_id: str) -> None: ...
    def send_challenge(self, challenge: CardChallenge) -> bool: ...
    def waiting(self, user_id: str) -> list[tuple[bytes, dict[str, Any]]]: ...
    def take(self, user_id: str, select: Callable[[bytes], bool],
             handle: Callable[[bytes, dict[str, Any]], None]) -> int: ...
    def release(self, user_id: str) -> int: ...
    def schedule(self, event: dict[str, Any], delay_s: float) -> None: ...


class EidClient(Protocol):
    def request_eid_package(self, *, user_id: str, workstation: str) -> tuple[str, datetime]: ...
    def issue_token(self, **kwargs: Any) -> Any: ...


def challenge_id_key(key: Ed25519PrivateKey) -> bytes:
    """The MAC key of challenge ids, derived from the challenge key (every worker has it)."""
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return hashlib.sha256(b"eeszt-gw challenge id\0" + raw).digest()


def _id_mac(id_key: bytes, nonce: bytes, user: str, workstation: str) -> bytes:
    return hmac.new(id_key, nonce + f"{user}\0{workstation}".encode(), hashlib.sha256).digest()[:8]


def new_challenge_id(id_key: bytes, user: str, workstation: str, *, now: float) -> uuid.UUID:
    """When (4 bytes, unix seconds) and 4 random bytes, then 8 bytes of MAC binding them to the
    doctor and the workstation: any worker can tell where and when it was sent, unforged."""
    nonce = struct.pack(">I", int(now) & 0xFFFFFFFF) + os.urandom(4)
    return uuid.UUID(bytes=nonce + _id_mac(id_key, nonce, user, workstation))


def challenged(id_key: bytes, challenge_id: uuid.UUID, user: str, workstation: str) -> bool:
    """Whether this gateway sent challenge ``challenge_id`` to ``workstation`` for ``user``."""
    raw = challenge_id.bytes
    return hmac.compare_digest(raw[8:], _id_mac(id_key, raw[:8], user, workstation))


def challenge_sent_at(challenge_id: uuid.UUID) -> float:
    """When the challenge was sent (unix seconds); trust it only once :func:`challenged`."""
    return float(struct.unpack(">I", challenge_id.bytes[:4])[0])


def sign_challenge(key: Ed25519PrivateKey, challenge: CardChallenge) -> CardChallenge:
    signature = base64.b64encode(key.sign(challenge.signing_bytes())).decode()
    return challenge.model_copy(update={"signature": signature})


class LoginCoordinator:
    def __init__(self, *, backend: LoginBackend, eeszt: EidClient, tokens: TokenManager,
                 outbox: Outbox, challenge_key: Ed25519PrivateKey, institution: str,
                 challenge_ttl_s: float = 120.0, sweep_after_s: float = 2.0,
                 bridge_users: bool = False,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 reject: Callable[[RequestEnvelope, str, str | None, str], Any] | None = None,
                 ) -> None:
        self.backend = backend
        self.eeszt = eeszt
        self.tokens = tokens
        self.outbox = outbox
        self.key = challenge_key
        self._id_key = challenge_id_key(challenge_key)
        self.institution = institution
        self.challenge_ttl = timedelta(seconds=challenge_ttl_s)
        self.started: set[str] = set()  # doctors whose logins this process started (for status)
        self.sweep_after_s = sweep_after_s
        #: answers must come from the workstation's own broker user (bridge-<WS>)
        self.bridge_users = bridge_users
        self.clock = clock
        #: the pipeline's rejection (audit, metrics), given by workers.runtime. None: reply here.
        self.reject = reject

    # --- a request that needs a login ---------------------------------------------------------
    def wait(self, *, queue: str, body: bytes, headers: dict[str, Any], message_id: str | None,
             request: RequestEnvelope, route: str = "card bridge") -> str:
        """Park ``request`` until its doctor logs in; start the login if nobody has.

        Returns "waiting"; "ready" when the doctor's token arrived meanwhile (the caller then
        sends the request at once instead); "rejected" when no card bridge listens at the
        request's workstation (the request got its final GW-LOGIN rejection).
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
                             "workstation": workstation}).encode()
        started = self.backend.begin(user, marker=marker)
        if started and self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.end(user)  # a login completed just now: nothing to start
            started = False
        if started:
            self.started.add(user)
            log.info("login of %s started at workstation %s", user, workstation)
            if not self._challenge(user, workstation):
                return "rejected"
        elif headers.get(H_AMBIGUOUS) and self.backend.begin_spare(user, marker=json.dumps(
                {"event": "window-expired", "user_id": user, "workstation": workstation,
                 "spare": True}).encode(), ttl_s=RECHALLENGE_EVERY_S):
            # This copy came back after a crash: the process that began this doctor's login may
            # have died before its challenge went out, and the login would then hang until its
            # window closed. Ask the workstation again, at most once per RECHALLENGE_EVERY_S
            # across all worker processes: the spare marker holds one message. While the
            # marker's node is down, a login holds the spare for its whole window instead.
            log.info("login of %s at %s asked again after a crash", user, workstation)
            if not self._challenge(user, workstation):
                return "rejected"
        if tell and request.reply_to:
            self.outbox.reply(request.reply_to, StatusUpdate(
                **reply_fields(request), state=StatusState.WAITING_FOR_LOGIN,
                detail=f"waiting for {user} to log in at {workstation}"))
        if self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.release(user)  # the login finished while we parked: do not strand it
        return "waiting"

    def _challenge(self, user: str, workstation: str) -> bool:
        """Send one challenge; False when the doctor's requests there were rejected instead."""
        try:
            package, _ = self.eeszt.request_eid_package(user_id=user, workstation=workstation)
        except (ServiceError, GatewayError) as exc:
            log.warning("no eID package for %s: %s", user, exc)
            self._tell_waiting(user, f"EESZT did not hand out an eID login package ({exc}); "
                                     "the login is tried again with the next request")
            self.backend.end(user)
            return True
        now = self.clock()
        challenge = sign_challenge(self.key, CardChallenge(
            challenge_id=new_challenge_id(self._id_key, user, workstation,
                                          now=now.timestamp()), user_id=user,
            workstation=workstation,
            institution=self.institution,
            purpose=f"{self.institution} asks {user} to sign in to EESZT to send waiting requests",
            eid_package=package, created_at=now, expires_at=now + self.challenge_ttl))
        if self.backend.send_challenge(challenge):
            return True
        self._no_bridge(user, workstation)
        return False

    def _no_bridge(self, user: str, workstation: str) -> None:
        """No card bridge listens at ``workstation``: the doctor cannot log in there. Its waiting
        requests from there get their final answer now; those from another workstation go back
        to their work queue and start a login there."""
        reason = (f"{user} cannot log in: no card bridge listens for workstation {workstation}. "
                  f"Start the card bridge on {workstation} (eeszt-gw card-bridge --workstation "
                  f"{workstation}), or send the request naming the workstation where the doctor "
                  "is logged in; doctors log in only at a workstation, with the eSZIG card or "
                  "MobilToken")
        log.warning("login of %s: no card bridge listens for workstation %s", user, workstation)

        def here(body: bytes) -> bool:
            try:
                request = RequestEnvelope.model_validate_json(body)
            except ValidationError:
                return True  # cannot be sent anyway: answered here
            return getattr(request.acting, "workstation", None) == workstation

        rejected = self.backend.take(user, here, lambda body, _h: self._reject(body, reason))
        self.started.discard(user)
        self.backend.end(user)
        moved = self.backend.release(user)  # requests from other workstations try there
        log.info("login of %s: %d requests rejected (%s), %d moved back", user, rejected,
                 GW_LOGIN, moved)

    def _reject(self, body: bytes, reason: str) -> None:
        try:
            request = RequestEnvelope.model_validate_json(body)
        except ValidationError:
            self.outbox.dead_letter(body, {H_REASON: f"rejected: {reason}", H_CODE: GW_LOGIN}, None)
            return
        if self.reject is not None:
            self.reject(request, GW_LOGIN, "acting.workstation", reason)
        elif request.reply_to:
            self.outbox.reply(request.reply_to, Rejected(
                **reply_fields(request), code=GW_LOGIN, field="acting.workstation", reason=reason))
        else:
            self.outbox.dead_letter(request.to_json(), {
                H_REASON: f"rejected: {reason}", H_CODE: GW_LOGIN,
                H_MESSAGE_ID: str(request.message_id), H_IDEMPOTENCY_KEY: request.idempotency_key,
                H_TYPE: request.message_type}, str(request.message_id))

    # --- answers and login events ------------------------------------------------------------
    def on_event(self, body: bytes, headers: dict[str, Any], user_id: str | None = None) -> None:
        """Handle one message of ``eeszt.login.answers``. Never raises for bad input.

        ``user_id``: the delivery's AMQP user_id (validated by RabbitMQ), when it has one.
        """
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("ignored an unreadable login event")
            return
        if isinstance(data, dict) and "event" in data and not self._from_gateway(user_id):
            # Bridges may publish to this queue too: only the gateway ends a login.
            log.warning("ignored a %r login event sent by broker user %s", data.get("event"),
                        user_id or "-")
            return
        if isinstance(data, dict) and data.get("event") == "window-expired":
            self._window_expired(str(data.get("user_id")), spare=bool(data.get("spare")))
            return
        if isinstance(data, dict) and data.get("event") == "sweep":
            # The login is over: its marker goes and what waits is released. A process that
            # has no token (it started after the login, or the token never reached it) sends
            # the released requests into a new login rather than leave them behind a stale
            # marker until the window closes.
            user = str(data.get("user_id"))
            self.backend.end(user)
            self.backend.release(user)
            return
        try:
            answer = CardAnswer.model_validate(data)
        except ValidationError:
            log.warning("ignored an invalid card answer")
            return
        workstation = self._asked_at(answer, user_id)
        if workstation is not None:
            self._answer(answer, workstation)

    def _from_gateway(self, publisher: str | None) -> bool:
        """Whether a login event (sweep, window expired) comes from the workers themselves.

        The workers publish them with their own broker user; a bridge's user (``bridge-*``) never
        may, and with ``bridge_users`` only the workers' own user may (a bridge that leaves
        ``user_id`` out cannot pass for them)."""
        if publisher and str(publisher).startswith(BRIDGE_USER_PREFIX):
            return False
        own = getattr(self.outbox, "user_id", None)
        if self.bridge_users and own is not None:
            return publisher == own
        return True

    def _asked_at(self, answer: CardAnswer, publisher: str | None) -> str | None:
        """The workstation of the pending login ``answer`` answers, when it comes from there;
        None (and a log line) for an answer nobody asked that bridge for."""
        user, workstation = answer.user_id, answer.workstation
        why = None
        if not challenged(self._id_key, answer.challenge_id, user, workstation):
            why = "its challenge was not sent to that workstation for that doctor"
        elif (publisher and str(publisher).startswith(BRIDGE_USER_PREFIX) or self.bridge_users) \
                and publisher != BRIDGE_USER_PREFIX + workstation:
            why = f"it was sent by broker user {publisher or '-'}, not that workstation's bridge"
        elif (live := self.backend.pending(user)) is False:
            why = f"no login of {user} is pending"
        elif live is None:
            # The node that holds the doctor's login marker is down: the answer counts while its
            # challenge is within its lifetime (the challenge id says when it was sent, MACed).
            age = self.clock().timestamp() - challenge_sent_at(answer.challenge_id)
            if not 0 <= age <= self.challenge_ttl.total_seconds():
                why = (f"the login marker of {user} is on a node that is down, and the "
                       f"challenge was sent {age:.0f} s ago, outside its lifetime")
            else:
                log.info("the login marker of %s is on a node that is down; the answer's "
                         "challenge is %.0f s old, within its lifetime: it counts", user, age)
        if why is not None:
            log.warning("ignored an answer for %s from workstation %s: %s", user, workstation,
                        why)
            return None
        return workstation

    def _answer(self, answer: CardAnswer, workstation: str) -> None:
        user, identity = answer.user_id, doctor_identity(answer.user_id)
        if answer.outcome == "error":
            self._login_error(answer, workstation)
            return
        try:
            rid = base64.b64encode((answer.rid_package or "").encode()).decode()
            # The rID records how the doctor logged in (card or MobilToken): the STS reads it.
            issued = self.eeszt.issue_token(method="eszig", user_id=user,
                                            workstation=workstation, rid_package=rid)
        except (ServiceError, GatewayError) as exc:
            log.warning("the STS refused the login of %s: %s", user, exc)
            self._tell_waiting(user, f"the STS refused the login ({exc})")
            if self.backend.pending(user) is not False:  # None: its node is down
                self._challenge(user, workstation)
            return
        method = answer.method.value if answer.method is not None else "eszig"
        self.tokens.stats["logins_by_method:" + method] += 1
        self.tokens.put(identity, issued, reason="login")
        self.started.discard(user)
        moved = self.backend.release(user)
        log.info("login of %s completed (%s); %d waiting requests released", user, method, moved)
        # The login marker stays until this sweep: another worker process that has not yet
        # received the token (it travels on eeszt.tokens) parks a new request of this doctor
        # instead of starting a second login (a second PIN prompt); the sweep then ends the
        # marker and releases what such processes parked meanwhile.
        self.backend.schedule({"event": "sweep", "user_id": user}, self.sweep_after_s)

    def _login_error(self, answer: CardAnswer, workstation: str) -> None:
        code = answer.error or CardErrorCode.CARD_ERROR
        text = ERROR_TEXT.get(code, code.value)
        if code is CardErrorCode.WRONG_PIN and answer.tries_left is not None:
            text += f": {answer.tries_left} {'try' if answer.tries_left == 1 else 'tries'} left"
            if answer.tries_left == 1:
                text += " (the card will ask for its CAN first)"
        log.info("login of %s at %s: %s", answer.user_id, workstation, code.value)
        self._tell_waiting(answer.user_id, text)
        if code in RETRYABLE and self.backend.pending(answer.user_id) is not False:
            self._challenge(answer.user_id, workstation)

    def _window_expired(self, user: str, *, spare: bool = False) -> None:
        if self.tokens.usable(doctor_identity(user)) is not None:
            self.backend.release(user)
            return
        if spare:
            return  # the login's own marker tells the HIS (or its node is down: the deadline)
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
