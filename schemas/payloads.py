"""Business payloads: what a HIS asks the gateway to send to one EESZT service.

:data:`Payload` is a union discriminated on ``type``; each payload type maps to one SOAP
operation (``schemas.soap.OPERATION_OF``). Every model is frozen and forbids unknown fields, so a
misspelt field name is a validation error rather than silently dropped data.

Validation errors are ``pydantic.ValidationError``; cross-field rules (referral validity, end
after start) put their error on the later field, so ``loc`` names the field to fix.
"""

from __future__ import annotations

import base64
import binascii
import enum
from datetime import date
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.validators import (
    BnoCode,
    InstitutionId,
    LocalId,
    StampNumber,
    Taj,
    TttCode,
    ensure_after,
)

__all__ = [
    "BATCH_TYPES",
    "INTERACTIVE_TYPES",
    "MAX_DOCUMENT_BYTES",
    "MAX_REFERRAL_DAYS",
    "PAYLOAD_TYPES",
    "BloodType",
    "CareEventEnd",
    "CareEventStart",
    "CareEventType",
    "DocumentType",
    "EhrDocumentSubmit",
    "MimeType",
    "Payload",
    "PrescriptionItem",
    "PrescriptionRevoke",
    "PrescriptionSubmit",
    "ProfileUpdate",
    "ReferralSubmit",
]

#: A referral is valid for at most this many days after it is issued.
MAX_REFERRAL_DAYS: Final = 90
#: Largest EHR document accepted, after base64 decoding.
MAX_DOCUMENT_BYTES: Final = 10 * 1024 * 1024

# Free text is stripped so that a name of blanks fails min_length instead of reaching EESZT.
Text64 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text300 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
Text500 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


def require_tag(field: str) -> Any:
    """``json_schema_extra`` hook: list the discriminator ``field`` as required.

    The tag has a default so that Python callers need not repeat it, which would make JSON
    Schema call it optional; but a JSON message without its tag cannot be routed.
    """

    def hook(schema: dict[str, Any]) -> None:
        required = schema.setdefault("required", [])
        if field not in required:
            required.insert(0, field)

    return hook


class _Payload(BaseModel):
    # hide_input_in_errors: str(ValidationError) would otherwise print the TAJ and diagnosis.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        json_schema_extra=require_tag("type"),
    )


# --- eRecept ------------------------------------------------------------------------------------


class PrescriptionItem(BaseModel):
    """One medicine on a prescription."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    product_code: TttCode
    product_name: Text200
    # strict: a JSON true or "2" is a bug in the HIS, not a quantity.
    quantity: int = Field(ge=1, le=99, strict=True)
    dosage: Text200 = Field(examples=["1x1 tabletta"])


class PrescriptionSubmit(_Payload):
    """Record a new ePrescription (a recorded one cannot be corrected, only revoked)."""

    type: Literal["erecept.submit"] = "erecept.submit"
    taj: Taj
    patient_name: Text200
    bno: BnoCode
    items: list[PrescriptionItem] = Field(min_length=1, max_length=10)
    valid_until: date | None = None


class PrescriptionRevoke(_Payload):
    """Revoke a recorded ePrescription by its EESZT id."""

    type: Literal["erecept.revoke"] = "erecept.revoke"
    taj: Taj
    prescription_id: Text64
    reason: Text500


# --- eBeutaló -----------------------------------------------------------------------------------


class ReferralSubmit(_Payload):
    """Record an eReferral.

    Raises ``ValidationError`` on ``valid_until`` unless it is after ``issued_on`` and at most
    :data:`MAX_REFERRAL_DAYS` days after it.
    """

    type: Literal["ebeutalo.submit"] = "ebeutalo.submit"
    taj: Taj
    patient_name: Text200
    referrer_stamp: StampNumber
    referring_institution: InstitutionId
    target_institution: InstitutionId
    bno: BnoCode
    diagnosis_text: Text500
    issued_on: date
    valid_until: date

    @field_validator("valid_until")
    @classmethod
    def _within_validity(cls, valid_until: date, info: ValidationInfo) -> date:
        issued_on = info.data.get("issued_on")
        if issued_on is None:  # issued_on itself failed; its own error says why
            return valid_until
        days = (valid_until - issued_on).days
        if days <= 0:
            raise PydanticCustomError(
                "referral_validity",
                "valid_until ({valid_until}) must be after issued_on ({issued_on})",
                {"valid_until": valid_until.isoformat(), "issued_on": issued_on.isoformat()},
            )
        if days > MAX_REFERRAL_DAYS:
            raise PydanticCustomError(
                "referral_validity",
                "referral may be valid for at most {max_days} days after issued_on "
                "({issued_on}); got {days} days",
                {"max_days": MAX_REFERRAL_DAYS, "issued_on": issued_on.isoformat(), "days": days},
            )
        return valid_until


# --- event catalogue ----------------------------------------------------------------------------


class CareEventType(enum.StrEnum):
    """Kind of care event, as the event catalogue classifies it."""

    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    GP = "gp"
    IMAGING = "imaging"
    AMBULANCE = "ambulance"
    EMERGENCY = "emergency"


class CareEventStart(_Payload):
    """Report the start of a care event (mostly uploaded in overnight batches)."""

    type: Literal["event.start"] = "event.start"
    taj: Taj
    event_id: LocalId = Field(description="The HIS's case number for this event.")
    event_type: CareEventType
    started_at: AwareDatetime
    bno: BnoCode | None = None


class CareEventEnd(_Payload):
    """Report the end of a care event.

    Raises ``ValidationError`` on ``ended_at`` unless it is after ``started_at``.
    """

    type: Literal["event.end"] = "event.end"
    taj: Taj
    event_id: LocalId = Field(description="The HIS's case number for this event.")
    event_type: CareEventType
    started_at: AwareDatetime
    ended_at: AwareDatetime
    bno: BnoCode | None = None

    @field_validator("ended_at")
    @classmethod
    def _after_start(cls, ended_at: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        return ensure_after(ended_at, info.data.get("started_at"), code="end_before_start",
                            name="ended_at", earlier_name="started_at")


# --- EHR ----------------------------------------------------------------------------------------


class DocumentType(enum.StrEnum):
    """Kind of EHR document."""

    DISCHARGE_SUMMARY = "discharge_summary"
    LAB_RESULT = "lab_result"
    IMAGING_REPORT = "imaging_report"
    OUTPATIENT_REPORT = "outpatient_report"
    OTHER = "other"


MimeType = Literal["text/plain", "application/pdf", "application/xml", "text/html"]

# Longest base64 text that can decode to MAX_DOCUMENT_BYTES; checked before decoding so an
# oversized message is refused without allocating its decoded copy.
_MAX_BASE64_CHARS: Final = 4 * -(-MAX_DOCUMENT_BYTES // 3)


def _check_base64(value: str) -> str:
    if len(value) > _MAX_BASE64_CHARS:
        raise PydanticCustomError(
            "content_too_large",
            "document is larger than {max_bytes} bytes after decoding",
            {"max_bytes": MAX_DOCUMENT_BYTES},
        )
    try:
        # validate=True: stray characters (line breaks included) are an error, not skipped.
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError(
            "base64_invalid",
            "content is not valid standard base64 (no line breaks): {detail}",
            {"detail": str(exc)},
        ) from exc
    if not decoded:
        raise PydanticCustomError("content_empty", "document content is empty")
    if len(decoded) > MAX_DOCUMENT_BYTES:
        raise PydanticCustomError(
            "content_too_large",
            "document is {size} bytes after decoding; the limit is {max_bytes}",
            {"size": len(decoded), "max_bytes": MAX_DOCUMENT_BYTES},
        )
    return value


class EhrDocumentSubmit(_Payload):
    """Submit a document to the EHR (eHT), keyed by TAJ, case number and document id."""

    type: Literal["ehr.submit"] = "ehr.submit"
    taj: Taj
    case_number: LocalId
    document_id: LocalId
    document_type: DocumentType
    title: Text300
    mime_type: MimeType
    content_base64: Annotated[str, AfterValidator(_check_base64)] = Field(
        description=f"Document in standard base64; at most {MAX_DOCUMENT_BYTES} bytes decoded.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    authored_at: AwareDatetime

    def content(self) -> bytes:
        """The decoded document. Never raises: the content was checked at validation."""
        return base64.b64decode(self.content_base64, validate=True)


# --- eProfil ------------------------------------------------------------------------------------


class BloodType(enum.StrEnum):
    """ABO and Rh blood type, written the Hungarian way (0, not O)."""

    O_POS = "0+"
    O_NEG = "0-"
    A_POS = "A+"
    A_NEG = "A-"
    B_POS = "B+"
    B_NEG = "B-"
    AB_POS = "AB+"
    AB_NEG = "AB-"


class ProfileUpdate(_Payload):
    """Update the patient's eProfil summary.

    A field left out (``None``) is not changed; an empty list is given and means "none known".
    Raises ``ValidationError`` (on the payload itself) when all three fields are left out.
    """

    type: Literal["eprofil.update"] = "eprofil.update"
    taj: Taj
    allergies: Annotated[list[Text200], Field(max_length=50)] | None = None
    chronic_conditions: Annotated[list[BnoCode], Field(max_length=50)] | None = None
    blood_type: BloodType | None = None

    @model_validator(mode="after")
    def _something_given(self) -> ProfileUpdate:
        if self.allergies is None and self.chronic_conditions is None and self.blood_type is None:
            raise PydanticCustomError(
                "profile_empty",
                "at least one of allergies, chronic_conditions or blood_type must be given",
            )
        return self


# --- the union ----------------------------------------------------------------------------------

Payload = Annotated[
    PrescriptionSubmit
    | PrescriptionRevoke
    | ReferralSubmit
    | CareEventStart
    | CareEventEnd
    | EhrDocumentSubmit
    | ProfileUpdate,
    Field(discriminator="type"),
]

#: payload ``type`` -> model class
PAYLOAD_TYPES: Final[dict[str, type[BaseModel]]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        PrescriptionSubmit,
        PrescriptionRevoke,
        ReferralSubmit,
        CareEventStart,
        CareEventEnd,
        EhrDocumentSubmit,
        ProfileUpdate,
    )
}

#: Types a doctor sends from the clinical UI: they need the doctor's token (eSZIG login).
INTERACTIVE_TYPES: Final = frozenset(
    {"erecept.submit", "erecept.revoke", "ebeutalo.submit", "eprofil.update"}
)
#: Types the institution uploads, mostly overnight, with its own certificate token.
BATCH_TYPES: Final = frozenset({"event.start", "event.end", "ehr.submit"})
