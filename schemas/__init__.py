"""The message contract of eeszt-gateway: pydantic models, domain validators, JSON Schema export.

Pydantic only; nothing here does I/O. Every other package imports from here, never the other
way round. Submodules:

- :mod:`schemas.validators`: TAJ, BNO, stamp number and identifier types (``Annotated`` str types)
- :mod:`schemas.payloads`: the business payloads, a union discriminated on ``type``
- :mod:`schemas.envelope`: :class:`RequestEnvelope` and the acting identity
- :mod:`schemas.replies`: replies to the HIS and validation-error descriptions
- :mod:`schemas.export`: :func:`json_schemas`
- :mod:`schemas.soap`: the SOAP contract (namespaces, services, WSDL/XSD files)

Invalid input raises ``pydantic.ValidationError`` whose errors name the field and the reason.
"""

from schemas.envelope import (
    DEFAULT_LIFETIME,
    IDENTITY_KINDS,
    DoctorIdentity,
    Identity,
    InstitutionIdentity,
    RequestEnvelope,
)
from schemas.export import envelope_model_for, json_schemas
from schemas.payloads import (
    BATCH_TYPES,
    INTERACTIVE_TYPES,
    MAX_DOCUMENT_BYTES,
    MAX_REFERRAL_DAYS,
    PAYLOAD_TYPES,
    BloodType,
    CareEventEnd,
    CareEventStart,
    CareEventType,
    DocumentType,
    EhrDocumentSubmit,
    MimeType,
    Payload,
    PrescriptionItem,
    PrescriptionRevoke,
    PrescriptionSubmit,
    ProfileUpdate,
    ReferralSubmit,
)
from schemas.replies import (
    FINAL_KINDS,
    REPLY_ADAPTER,
    REPLY_KINDS,
    Accepted,
    Failed,
    FieldProblem,
    Rejected,
    Reply,
    StatusState,
    StatusUpdate,
    describe_validation_error,
    field_path,
    is_final,
    reply_fields,
    validation_problems,
)
from schemas.validators import (
    BnoCode,
    DoctorUserId,
    IdempotencyKey,
    InstitutionId,
    LocalId,
    ReplyRoutingKey,
    StampNumber,
    Taj,
    TttCode,
    WorkstationId,
    is_valid_bno,
    is_valid_taj,
    make_taj,
    mask_taj,
    normalize_bno,
    taj_check_digit,
)

__all__ = [
    "BATCH_TYPES",
    "DEFAULT_LIFETIME",
    "FINAL_KINDS",
    "IDENTITY_KINDS",
    "INTERACTIVE_TYPES",
    "MAX_DOCUMENT_BYTES",
    "MAX_REFERRAL_DAYS",
    "PAYLOAD_TYPES",
    "REPLY_ADAPTER",
    "REPLY_KINDS",
    "Accepted",
    "BloodType",
    "BnoCode",
    "CareEventEnd",
    "CareEventStart",
    "CareEventType",
    "DoctorIdentity",
    "DoctorUserId",
    "DocumentType",
    "EhrDocumentSubmit",
    "Failed",
    "FieldProblem",
    "IdempotencyKey",
    "Identity",
    "InstitutionId",
    "InstitutionIdentity",
    "LocalId",
    "MimeType",
    "Payload",
    "PrescriptionItem",
    "PrescriptionRevoke",
    "PrescriptionSubmit",
    "ProfileUpdate",
    "ReferralSubmit",
    "Rejected",
    "Reply",
    "ReplyRoutingKey",
    "RequestEnvelope",
    "StampNumber",
    "StatusState",
    "StatusUpdate",
    "Taj",
    "TttCode",
    "WorkstationId",
    "describe_validation_error",
    "envelope_model_for",
    "field_path",
    "is_final",
    "is_valid_bno",
    "is_valid_taj",
    "json_schemas",
    "make_taj",
    "mask_taj",
    "normalize_bno",
    "reply_fields",
    "taj_check_digit",
    "validation_problems",
]
