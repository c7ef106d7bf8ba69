"""The audit trail's record: one :class:`AuditEvent` per state change of one request. No I/O.

Events are written by the workers and by operator commands (``eeszt-gw dlq replay``) and read
back by ``eeszt-gw audit MESSAGE_ID_OR_KEY``; :mod:`workers.audit` stores them. An event is the
"who did what to which prescription, when" of one step, so it must never carry patient data:
:func:`mask_text` is applied to ``detail`` and ``actor`` by the model itself, so an unmasked TAJ
cannot be stored even by a caller that forgets (DESIGN invariant 4).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from schemas.validators import mask_taj

# A TAJ is 9 ASCII digits, often written in groups of three ("123 456 789", "123-456-789").
# Longer digit runs (epoch milliseconds, phone numbers) are not TAJs and are left alone.
_TAJ_RUN: Final = re.compile(r"(?<![0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{3}(?![0-9])")


def mask_text(text: str) -> str:
    """Replace every 9-digit run (a TAJ, also when grouped by spaces or dashes) with
    ``******`` and its last 3 digits. Never raises for a ``str``; idempotent."""
    return _TAJ_RUN.sub(lambda m: mask_taj(re.sub(r"[ -]", "", m.group(0))), text)


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
