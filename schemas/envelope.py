"""The request envelope: who asks, on whose behalf, where to reply, by when, and the payload.

A HIS publishes one :class:`RequestEnvelope` per business action. The envelope is frozen and
forbids unknown fields. :meth:`RequestEnvelope.from_json` is the one place where bytes from the
broker become a typed request; it raises ``pydantic.ValidationError`` with a ``loc`` per problem
(see :func:`schemas.replies.describe_validation_error` for turning that into a reply). It
refuses what one JSON reader could read differently from another (``schemas.strict_json``:
nesting deeper than ``MAX_DEPTH``, a key twice in one object) and a ``created_at`` more than
:data:`MAX_CLOCK_SKEW` ahead of the reader's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schemas.payloads import Payload, require_tag
from schemas.strict_json import MAX_DEPTH, DuplicateKey, duplicate_key, too_deep
from schemas.validators import (
    DoctorUserId,
    IdempotencyKey,
    InstitutionId,
    ReplyRoutingKey,
    WorkstationId,
    ensure_after,
)

__all__ = [
    "DEFAULT_LIFETIME",
    "IDENTITY_KINDS",
    "MAX_CLOCK_SKEW",
    "DoctorIdentity",
    "Identity",
    "InstitutionIdentity",
    "RequestEnvelope",
]

#: How long a request may wait for EESZT when the HIS gives no deadline.
DEFAULT_LIFETIME: Final = timedelta(hours=24)
#: How far ahead of the gateway's clock a ``created_at`` may be (HIS clocks drift); beyond it
#: the request is refused, instead of getting a deadline that far away.
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _drop_default(schema: dict[str, Any]) -> None:
    # The None marker is not a value a HIS may rely on; the description gives the real default.
    schema.pop("default", None)


#: Both identity kinds: closed, immutable, their input kept out of error texts, tagged by kind.
_IDENTITY_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              json_schema_extra=require_tag("kind"))


class DoctorIdentity(BaseModel):
    """A doctor acts: the worker needs this doctor's token, obtained through the card bridge of
    ``workstation`` (the workstation where the doctor is sitting)."""

    model_config = _IDENTITY_CONFIG

    kind: Literal["doctor"] = "doctor"
    user_id: DoctorUserId
    workstation: WorkstationId

    @property
    def stamp_number(self) -> str:
        """The doctor's stamp number (the user id without its leading ``O``)."""
        return self.user_id[1:]


class InstitutionIdentity(BaseModel):
    """The institution acts as itself (certificate token), e.g. for overnight batches."""

    model_config = _IDENTITY_CONFIG

    kind: Literal["institution"] = "institution"


Identity = Annotated[DoctorIdentity | InstitutionIdentity, Field(discriminator="kind")]
IDENTITY_KINDS: Final = frozenset({"doctor", "institution"})


class RequestEnvelope(BaseModel):
    """One request from a HIS to the gateway.

    ``deadline`` defaults to ``created_at`` + :data:`DEFAULT_LIFETIME`; a given deadline must be
    after ``created_at``, else ``ValidationError`` on ``deadline``. ``reply_to`` is the HIS's
    routing key on the replies exchange; ``None`` means the HIS wants no replies.
    """

    # hide_input_in_errors: str(ValidationError) would otherwise print patient data to logs.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    message_id: UUID = Field(default_factory=uuid4)
    idempotency_key: IdempotencyKey
    institution: InstitutionId
    acting: Identity
    reply_to: ReplyRoutingKey | None = None
    created_at: AwareDatetime = Field(default_factory=_utcnow)
    # Default is None only as a marker: the validator below replaces it before type checking,
    # because the default depends on created_at (works on every pydantic 2.x).
    deadline: AwareDatetime = Field(
        default=None,
        validate_default=True,
        description="Give up after this time; defaults to created_at + 24 hours.",
        json_schema_extra=_drop_default,
    )
    payload: Payload

    @field_validator("created_at")
    @classmethod
    def _not_in_the_future(cls, created_at: datetime, info: ValidationInfo) -> datetime:
        # The reader's clock (the worker's, in tests a fake one) comes as context "now".
        now = (info.context or {}).get("now") or _utcnow()
        if created_at > now + MAX_CLOCK_SKEW:
            raise PydanticCustomError(
                "created_at_in_future",
                "created_at ({created_at}) is more than {skew} minutes ahead of the gateway's "
                "clock ({now}); check the HIS's clock",
                {"created_at": created_at.isoformat(), "now": now.isoformat(timespec="seconds"),
                 "skew": int(MAX_CLOCK_SKEW.total_seconds() // 60)},
            )
        return created_at

    @field_validator("deadline", mode="before")
    @classmethod
    def _default_deadline(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        created_at = info.data.get("created_at")
        # created_at failed validation: its own error is reported; keep this field quiet.
        base = created_at if isinstance(created_at, datetime) else _utcnow()
        return base + DEFAULT_LIFETIME

    @field_validator("deadline")
    @classmethod
    def _after_created(cls, deadline: datetime, info: ValidationInfo) -> datetime:
        return ensure_after(deadline, info.data.get("created_at"), code="deadline_not_after_created",
                            name="deadline", earlier_name="created_at")

    @property
    def message_type(self) -> str:
        """The payload's ``type``, e.g. ``"erecept.submit"``."""
        return self.payload.type

    def to_json(self) -> bytes:
        """Serialise for the broker (UTF-8 JSON)."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str, *, now: datetime | None = None) -> RequestEnvelope:
        """Parse a message body strictly; ``now`` is the reader's clock (default: the system's).

        Refused, each with its own error: a body that is not UTF-8 (``loc`` ``body``), nested
        deeper than ``MAX_DEPTH`` (``body``), with a key twice in one object (the key's path,
        e.g. ``payload.taj``), that the standard library cannot read as JSON although pydantic
        can (``body``), and every field problem of the model.

        Raises:
            pydantic.ValidationError: not JSON, or not a valid request; each error's ``loc``
                names the field.
        """
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _refusal("body_not_utf8", "body is not UTF-8 ({detail} at byte {at})",
                               ("body",), detail=exc.reason, at=exc.start) from None
        if too_deep(data):
            raise _refusal("json_too_deep", "JSON nested deeper than {limit} levels; a request "
                           "needs far fewer", ("body",), limit=MAX_DEPTH)
        unreadable = ""
        try:
            duplicate_key(data)
        except DuplicateKey as exc:
            raise _refusal("json_duplicate_key", "key '{key}' appears more than once in one "
                           "object; each key may appear once", exc.loc, key=exc.key) from None
        except ValueError as exc:
            unreadable = str(exc)[:200]  # pydantic's parser names the problem below
        request = cls.model_validate_json(data, context=None if now is None else {"now": now})
        if unreadable:  # the two parsers disagree: refuse rather than pick one
            raise _refusal("json_invalid", "body is not JSON that every reader accepts: "
                           "{detail}", ("body",), detail=unreadable)
        return request


def _refusal(kind: str, template: str, loc: tuple[str | int, ...], **ctx: Any) -> ValidationError:
    return ValidationError.from_exception_data(
        RequestEnvelope.__name__,
        [{"type": PydanticCustomError(kind, template, ctx), "loc": loc, "input": None}],
        hide_input=True)
