"""Replies from the gateway to a HIS, and turning validation errors into readable reasons.

Every request ends in exactly one *final* reply (:class:`Accepted`, :class:`Rejected` or
:class:`Failed`: nothing is lost). :class:`StatusUpdate` replies may come before it and are
informational. :data:`REPLY_ADAPTER` parses any reply; it raises ``pydantic.ValidationError``.

Replies ignore unknown fields (requests forbid them): a HIS-side listener one version behind
must still read the final reply of a newer gateway rather than drop it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NamedTuple
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas.envelope import IDENTITY_KINDS, RequestEnvelope
from schemas.payloads import PAYLOAD_TYPES, require_tag
from schemas.soap import OPERATION_OF

__all__ = [
    "FINAL_KINDS",
    "GW_INSTITUTION",
    "GW_LOGIN",
    "GW_TENANT",
    "GW_VALIDATION",
    "REPLY_ADAPTER",
    "REPLY_KINDS",
    "Accepted",
    "Failed",
    "FieldProblem",
    "Rejected",
    "Reply",
    "StatusState",
    "StatusUpdate",
    "describe_validation_error",
    "field_path",
    "is_final",
    "reply_fields",
    "validation_problems",
]

# --- the gateway's own rejection codes (EESZT's fault codes pass through unchanged) ----------
#: the request failed the gateway's checks (``field`` names which one)
GW_VALIDATION: Final = "GW-VALIDATION"
#: the request names an institution this gateway does not serve
GW_INSTITUTION: Final = "GW-INSTITUTION"
#: the doctor could not log in (no card bridge, login window over)
GW_LOGIN: Final = "GW-LOGIN"
#: refused for its reply address (dead letters and the HIS's reply)
GW_TENANT: Final = "GW-TENANT"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _ReplyBase(BaseModel):
    # serialization_defaults_required: in the exported schema every field a HIS receives is
    # present, defaults included.
    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra=require_tag("kind"),
        json_schema_serialization_defaults_required=True,
    )

    message_id: UUID
    # Plain strings, not the request's validated types: a Rejected reply must be able to echo a
    # malformed idempotency key or an unknown message type back to the HIS.
    idempotency_key: str
    service: str = Field(description="EESZT service name, e.g. eRecept; empty if unknown.")
    message_type: str = Field(description="The request's payload type, e.g. erecept.submit.")
    at: AwareDatetime = Field(default_factory=_utcnow)


class Accepted(_ReplyBase):
    """Final: EESZT stored the request under ``eeszt_id`` (at ``version``)."""

    kind: Literal["accepted"] = "accepted"
    eeszt_id: str = Field(min_length=1)
    version: int = Field(ge=1, strict=True)


class Rejected(_ReplyBase):
    """Final: the request is wrong and resending it unchanged cannot help.

    ``code`` is a stable code (a SOAP fault code such as ``BIZ-001``, or ``SCHEMA-001`` for a
    message the gateway could not validate); ``field`` is the dotted path of the culprit.
    """

    kind: Literal["rejected"] = "rejected"
    code: str = Field(min_length=1)
    field: str | None = None
    reason: str


class Failed(_ReplyBase):
    """Final: the gateway gave up (deadline passed, retries exhausted) and kept the message."""

    kind: Literal["failed"] = "failed"
    reason: str
    kept_in: str = Field(examples=["dead-letter store eeszt.dlq"])


class StatusState(enum.StrEnum):
    """Why a request is not answered yet."""

    WAITING_FOR_LOGIN = "waiting_for_login"  # the doctor must log in with the eSZIG card
    RETRYING = "retrying"  # EESZT answered with a transient error
    PARKED = "parked"  # EESZT is down; the request waits durably in the broker


class StatusUpdate(_ReplyBase):
    """Not final: where a request stands while it waits."""

    kind: Literal["status"] = "status"
    state: StatusState
    detail: str = ""
    attempt: int | None = Field(default=None, ge=1, strict=True)
    next_attempt_at: AwareDatetime | None = None


Reply = Annotated[Accepted | Rejected | Failed | StatusUpdate, Field(discriminator="kind")]
REPLY_ADAPTER: Final[TypeAdapter[Accepted | Rejected | Failed | StatusUpdate]] = TypeAdapter(Reply)
REPLY_KINDS: Final = frozenset({"accepted", "rejected", "failed", "status"})
FINAL_KINDS: Final = frozenset({"accepted", "rejected", "failed"})


def is_final(reply: Accepted | Rejected | Failed | StatusUpdate) -> bool:
    """True for the replies that end a request (accepted, rejected, failed)."""
    return reply.kind in FINAL_KINDS


def reply_fields(envelope: RequestEnvelope) -> dict[str, Any]:
    """The correlation fields every reply to ``envelope`` carries.

    Use as ``Accepted(**reply_fields(env), eeszt_id=..., version=1)``. ``service`` is the
    EESZT service name from ``schemas.soap``, or ``""`` if the type has no operation there.
    """
    operation = OPERATION_OF.get(envelope.message_type)
    return {
        "message_id": envelope.message_id,
        "idempotency_key": envelope.idempotency_key,
        "service": operation[0].name if operation else "",
        "message_type": envelope.message_type,
    }


# --- validation errors -> (field, reason) -------------------------------------------------------


class FieldProblem(NamedTuple):
    """One validation problem: dotted ``field`` path ("" = the message as a whole) and why."""

    field: str
    reason: str


# Pydantic puts the chosen member's tag into ``loc`` (payload.erecept.submit.taj); a HIS knows
# no such field. Tags are dropped only right after the field that holds the union, or first in
# loc when a union itself was validated (REPLY_ADAPTER), so the envelope field "institution" is
# never mistaken for the identity tag "institution".
_UNION_TAGS: Final[dict[str | None, frozenset[str]]] = {
    None: frozenset(PAYLOAD_TYPES) | REPLY_KINDS,
    "payload": frozenset(PAYLOAD_TYPES),
    "acting": IDENTITY_KINDS,
}
# Labels pydantic uses for members of undiscriminated unions, e.g. "function-after[f(), str]".
_MEMBER_LABEL: Final = re.compile(r"[a-z][a-z-]*\[.*\]")


def field_path(loc: Sequence[int | str]) -> str:
    """Dotted path of a pydantic error ``loc`` without union tags: ``payload.items[0].quantity``."""
    parts: list[str] = []
    owner: str | None = None  # the field just before this segment; None at the start of loc
    for segment in loc:
        if isinstance(segment, int):
            if parts:
                parts[-1] += f"[{segment}]"
            else:
                parts.append(f"[{segment}]")
            owner = ""
            continue
        tags = _UNION_TAGS.get(owner, frozenset())
        if segment in tags or _MEMBER_LABEL.fullmatch(segment):
            owner = ""  # our unions do not nest: nothing after a tag is a tag
            continue
        parts.append(segment)
        owner = segment
    return ".".join(parts)


def validation_problems(exc: ValidationError) -> list[FieldProblem]:
    """All problems of ``exc`` as ``(field path, reason)``, in pydantic's order. Never raises.

    Reasons are pydantic's messages, which never include the input value.
    """
    return [FieldProblem(field_path(err["loc"]), err["msg"]) for err in exc.errors()]


def describe_validation_error(exc: ValidationError) -> FieldProblem:
    """The first problem of ``exc`` as ``(field path, reason)``, for a :class:`Rejected` reply.

    A ``ValidationError`` always holds at least one error; the path is ``""`` when the message
    as a whole is wrong (e.g. not JSON). When there are more errors, the reason says how many.
    """
    problems = validation_problems(exc)
    first = problems[0]
    if len(problems) > 1:
        more = len(problems) - 1
        return FieldProblem(
            first.field, f"{first.reason} (and {more} more problem{'s' * (more > 1)})"
        )
    return first
