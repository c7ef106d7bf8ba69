"""The request envelope: who asks, on whose behalf, where to reply, by when, and the payload.

A HIS publishes one :class:`RequestEnvelope` per business action. The envelope is frozen and
forbids unknown fields. :meth:`RequestEnvelope.from_json` is the one place where bytes from the
broker become a typed request; it raises ``pydantic.ValidationError`` with a ``loc`` per problem
(see :func:`schemas.replies.describe_validation_error` for turning that into a reply).
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
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schemas.payloads import Payload, require_tag
from schemas.validators import (
    DoctorUserId,
    IdempotencyKey,
    InstitutionId,
    ReplyRoutingKey,
    WorkstationId,
)

__all__ = [
    "DEFAULT_LIFETIME",
    "IDENTITY_KINDS",
    "DoctorIdentity",
    "Identity",
    "InstitutionIdentity",
    "RequestEnvelope",
]

#: How long a request may wait for EESZT when the HIS gives no deadline.
DEFAULT_LIFETIME: Final = timedelta(hours=24)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _drop_default(schema: dict[str, Any]) -> None:
    # The None marker is not a value a HIS may rely on; the description gives the real default.
    schema.pop("default", None)


class DoctorIdentity(BaseModel):
    """A doctor acts: the worker needs this doctor's token, obtained through the card bridge of
    ``workstation`` (the workstation where the doctor is sitting)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        json_schema_extra=require_tag("kind"),
    )

    kind: Literal["doctor"] = "doctor"
    user_id: DoctorUserId
    workstation: WorkstationId

    @property
    def stamp_number(self) -> str:
        """The doctor's stamp number (the user id without its leading ``O``)."""
        return self.user_id[1:]


class InstitutionIdentity(BaseModel):
    """The institution acts as itself (certificate token), e.g. for overnight batches."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        json_schema_extra=require_tag("kind"),
    )

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
        created_at = info.data.get("created_at")
        if created_at is not None and deadline <= created_at:
            raise PydanticCustomError(
                "deadline_not_after_created",
                "deadline ({deadline}) must be after created_at ({created_at})",
                {"deadline": deadline.isoformat(), "created_at": created_at.isoformat()},
            )
        return deadline

    @property
    def message_type(self) -> str:
        """The payload's ``type``, e.g. ``"erecept.submit"``."""
        return self.payload.type

    def to_json(self) -> bytes:
        """Serialise for the broker (UTF-8 JSON)."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RequestEnvelope:
        """Parse a message body.

        Raises:
            pydantic.ValidationError: not JSON, or not a valid request; each error's ``loc``
                names the field.
        """
        return cls.model_validate_json(data)
