"""The audit trail's record: one :class:`AuditEvent` per state change of one request. No I/O.

Events are written by the workers and by operator commands (``eeszt-gw dlq replay``) and read
back by ``eeszt-gw audit MESSAGE_ID_OR_KEY``; :mod:`workers.middleware.audit` stores them. An
event is the "who did what to which prescription, when" of one step, so it must never carry
patient data: :func:`mask_text` is applied to ``detail`` and ``actor`` by the model itself, so an
unmasked TAJ cannot be stored even by a caller that forgets (patient identifiers stay out of logs).
"""

from __future__ import annotations

import enum
import functools
import re
from datetime import datetime, timezone
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator
from pydantic_core import to_json

from schemas.validators import mask_taj

# A TAJ is 9 ASCII digits, often written in groups of three ("123 456 789", "123-456-789").
# Longer digit runs (epoch milliseconds, phone numbers) are not TAJs and are left alone.
_TAJ_RUN: Final = re.compile(r"(?<![0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{3}(?![0-9])")


_SEPARATORS: Final = re.compile(r"[ -]")


def _mask_run(match: re.Match[str]) -> str:
    return mask_taj(_SEPARATORS.sub("", match.group(0)))


def mask_text(text: str) -> str:
    """Replace every 9-digit run (a TAJ, also when grouped by spaces or dashes) with
    ``******`` and its last 3 digits. Never raises for a ``str``; idempotent."""
    return _TAJ_RUN.sub(_mask_run, text)


class AuditKind(str, enum.Enum):
    """What happened to a request. The first group comes from the workers, the last three from
    operators."""

    RECEIVED = "received"
    TOKEN = "token"
    SUBMITTED = "submitted"
    ANSWERED = "answered"
    REJECTED = "rejected"
    RETRIED = "retried"
    PARKED = "parked"
    RELEASED = "released"
    WAITING_FOR_LOGIN = "waiting_for_login"
    DEAD_LETTERED = "dead_lettered"
    FAILED = "failed"
    REPLAYED = "replayed"
    PURGED = "purged"


class AuditEvent(BaseModel):
    """One step in the story of one request.

    ``actor`` is who acted: ``"worker pid 123 on host"`` for a worker, the operator's name for a
    replay or a purge. ``detail`` is free text (a fault code, the reason of a retry, an
    operator's "why"); it is TAJ-masked on validation. Raises ``pydantic.ValidationError`` for a
    naive ``at`` or an unknown ``event``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    message_id: str
    idempotency_key: str = ""
    service: str = ""
    event: AuditKind
    at: AwareDatetime
    actor: str
    attempt: int | None = None
    detail: str = ""

    @field_validator("detail", "actor")
    @classmethod
    def _masked(cls, value: str) -> str:
        return mask_text(value)

    def matches(self, message_id_or_key: str) -> bool:
        """True if this event is about the request with this message id or idempotency key."""
        return message_id_or_key in (self.message_id, self.idempotency_key)


#: actors are few (a worker process, an operator), so their masked form is kept
_masked_actor = functools.lru_cache(maxsize=256)(mask_text)


class AuditStep:
    """An :class:`AuditEvent` as the workers record it on their hot path: the same fields,
    ``detail`` and ``actor`` TAJ-masked, no pydantic validation.

    A worker records three events per request. Validating each into an :class:`AuditEvent`
    and serializing it again in the writer cost about 25 µs per event, as much as signing's
    own Python; a step costs a fraction of that. :meth:`to_json` writes exactly the JSON that
    ``AuditEvent.model_dump_json`` writes for the same fields, and :meth:`to_event` is that
    event (``tests/unit/test_audit.py`` holds the two to each other). ``event`` must be an
    :class:`AuditKind` and ``at`` timezone-aware; the constructor checks both.

    ``detail`` is masked when it is read or written out (:attr:`detail`, :meth:`to_json_bytes`,
    :meth:`to_event`), not when the step is made: the request's thread only keeps the text,
    and the audit writer masks a whole batch at once, where the code is warm. No unmasked
    ``detail`` leaves the object.
    """

    __slots__ = ("message_id", "idempotency_key", "service", "event", "at", "actor", "attempt",
                 "_detail")

    def __init__(self, *, message_id: str, idempotency_key: str = "", service: str = "",
                 event: AuditKind, at: datetime, actor: str, attempt: int | None = None,
                 detail: str = "") -> None:
        if not isinstance(event, AuditKind):
            raise TypeError(f"event: {event!r} is not an AuditKind")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at: the time of an audit event must be timezone-aware")
        self._fill(message_id, idempotency_key, service, event, at, actor, attempt, detail)

    @classmethod
    def now(cls, event: AuditKind, message_id: str, idempotency_key: str, service: str,
            attempt: int | None, detail: str, actor: str) -> "AuditStep":
        """A step that happens now (``at`` in UTC), for callers whose ``event`` is already an
        :class:`AuditKind` (``workers.middleware.audit.audit_event``): the constructor without its
        checks."""
        step = cls.__new__(cls)
        step._fill(message_id, idempotency_key, service, event, datetime.now(timezone.utc), actor,
                   attempt, detail)
        return step

    def _fill(self, message_id: str, idempotency_key: str, service: str, event: AuditKind,
              at: datetime, actor: str, attempt: int | None, detail: str) -> None:
        self.message_id = message_id
        self.idempotency_key = idempotency_key
        self.service = service
        self.event = event
        self.at = at
        self.actor = _masked_actor(actor)
        self.attempt = attempt
        self._detail = detail

    @property
    def detail(self) -> str:
        return mask_text(self._detail)

    def __repr__(self) -> str:
        return f"AuditStep({self.event.value} {self.message_id} at {self.at.isoformat()})"

    def to_json(self) -> str:
        """One line of the audit stream: ``AuditEvent.model_dump_json()`` of :meth:`to_event`."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8, written by pydantic's own serializer (``pydantic_core``),
        the one behind ``model_dump_json``: a quarter of the cost of ``json.dumps``."""
        return to_json({"message_id": self.message_id, "idempotency_key": self.idempotency_key,
                        "service": self.service, "event": self.event.value, "at": self.at,
                        "actor": self.actor, "attempt": self.attempt, "detail": self.detail})

    def to_event(self) -> AuditEvent:
        return AuditEvent(message_id=self.message_id, idempotency_key=self.idempotency_key,
                          service=self.service, event=self.event, at=self.at, actor=self.actor,
                          attempt=self.attempt, detail=self.detail)
