"""Unit tests of the message contract (``schemas``): payloads, envelope, replies, export."""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from schemas import (
    BATCH_TYPES,
    DEFAULT_LIFETIME,
    INTERACTIVE_TYPES,
    MAX_DOCUMENT_BYTES,
    PAYLOAD_TYPES,
    REPLY_ADAPTER,
    Accepted,
    DoctorIdentity,
    EhrDocumentSubmit,
    Failed,
    InstitutionIdentity,
    Rejected,
    RequestEnvelope,
    StatusState,
    StatusUpdate,
    describe_validation_error,
    field_path,
    is_final,
    is_valid_taj,
    json_schemas,
    make_taj,
    mask_taj,
    normalize_bno,
    reply_fields,
    taj_check_digit,
    validation_problems,
)
from schemas.soap import OPERATION_OF

pytestmark = pytest.mark.filterwarnings("error")

TAJ = make_taj("12345678")  # "123456788"
CONTENT = base64.b64encode(b"%PDF-1.7 discharge summary").decode()

SAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "erecept.submit": {
        "type": "erecept.submit",
        "taj": TAJ,
        "patient_name": "Kiss Anna",
        "bno": "J069",
        "items": [
            {
                "product_code": "204957123",
                "product_name": "Aspirin Protect 100 mg",
                "quantity": 2,
                "dosage": "1x1 tabletta",
            }
        ],
        "valid_until": "2025-04-01",
    },
    "erecept.revoke": {
        "type": "erecept.revoke",
        "taj": TAJ,
        "prescription_id": "a1b2c3d4-0001",
        "reason": "wrong dosage",
    },
    "ebeutalo.submit": {
        "type": "ebeutalo.submit",
        "taj": TAJ,
        "patient_name": "Kiss Anna",
        "referrer_stamp": "12345",
        "referring_institution": "H100200",
        "target_institution": "H300400",
        "bno": "I10",
        "diagnosis_text": "essential hypertension",
        "issued_on": "2025-03-01",
        "valid_until": "2025-05-30",
    },
    "event.start": {
        "type": "event.start",
        "taj": TAJ,
        "event_id": "2025/000123",
        "event_type": "inpatient",
        "started_at": "2025-03-01T08:00:00+01:00",
        "bno": "K359",
    },
    "event.end": {
        "type": "event.end",
        "taj": TAJ,
        "event_id": "2025/000123",
        "event_type": "inpatient",
        "started_at": "2025-03-01T08:00:00+01:00",
        "ended_at": "2025-03-05T14:30:00+01:00",
    },
    "ehr.submit": {
        "type": "ehr.submit",
        "taj": TAJ,
        "case_number": "2025/000123",
        "document_id": "DOC-77",
        "document_type": "discharge_summary",
        "title": "Zárójelentés",
        "mime_type": "application/pdf",
        "content_base64": CONTENT,
        "authored_at": "2025-03-05T15:00:00+01:00",
    },
    "eprofil.update": {
        "type": "eprofil.update",
        "taj": TAJ,
        "allergies": ["penicillin"],
        "chronic_conditions": ["E11.9", "I10"],
        "blood_type": "AB-",
    },
}

DOCTOR = {"kind": "doctor", "user_id": "O12345", "workstation": "WS-01"}


def envelope_dict(message_type: str = "erecept.submit", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "idempotency_key": f"his-7/{message_type}/0001",
        "institution": "H100200",
        "acting": dict(DOCTOR) if message_type in INTERACTIVE_TYPES else {"kind": "institution"},
        "reply_to": "his.h100200",
        "created_at": "2025-03-01T09:00:00Z",
        "payload": copy.deepcopy(SAMPLE_PAYLOADS[message_type]),
    }
    data.update(overrides)
    return data


def set_at(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """Return a deep copy of ``data`` with the value at ``path`` replaced."""
    result = copy.deepcopy(data)
    target: Any = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return result


def errors_of(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(ValidationError) as info:
        RequestEnvelope.model_validate(data)
    return [(field_path(e["loc"]), e["type"], e["msg"]) for e in info.value.errors()]


# --- contract coverage --------------------------------------------------------------------------


def test_samples_cover_every_payload_type() -> None:
    assert set(SAMPLE_PAYLOADS) == set(PAYLOAD_TYPES)


def test_classification_partitions_the_payload_types_and_matches_the_soap_contract() -> None:
    assert INTERACTIVE_TYPES.isdisjoint(BATCH_TYPES)
    assert INTERACTIVE_TYPES | BATCH_TYPES == set(PAYLOAD_TYPES) == set(OPERATION_OF)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", sorted(SAMPLE_PAYLOADS))
def test_every_payload_round_trips_through_json(message_type: str) -> None:
    # Given a valid request of this type
    envelope = RequestEnvelope.model_validate(envelope_dict(message_type))
    # When it goes over the wire and back
    again = RequestEnvelope.from_json(envelope.to_json())
    # Then nothing is lost or changed
    assert again == envelope
    assert again.message_type == message_type
    assert isinstance(again.payload, PAYLOAD_TYPES[message_type])
    assert RequestEnvelope.from_json(envelope.to_json().decode()) == envelope


def test_envelope_defaults() -> None:
    # Given an envelope built in Python with only the required fields
    before = datetime.now(UTC)
    envelope = RequestEnvelope(
        idempotency_key="k-1",
        institution="H100200",
        acting=InstitutionIdentity(),
        payload=EhrDocumentSubmit.model_validate(SAMPLE_PAYLOADS["ehr.submit"]),
    )
    # Then id, timestamps and deadline are filled in
    assert isinstance(envelope.message_id, UUID)
    assert envelope.message_id != RequestEnvelope.model_validate(envelope_dict()).message_id
    assert before <= envelope.created_at <= datetime.now(UTC)
    assert (
        envelope.deadline
        == envelope.created_at + DEFAULT_LIFETIME
        == envelope.created_at + timedelta(hours=24)
    )
    assert envelope.reply_to is None


def test_envelope_is_frozen_and_forbids_unknown_fields() -> None:
    envelope = RequestEnvelope.model_validate(envelope_dict())
    with pytest.raises(ValidationError):
        envelope.institution = "H999"  # type: ignore[misc]
    assert ("priority", "extra_forbidden") in [
        (f, t) for f, t, _ in errors_of(envelope_dict(priority=1))
    ]
    assert ("payload.colour", "extra_forbidden") in [
        (f, t) for f, t, _ in errors_of(set_at(envelope_dict(), ("payload", "colour"), "red"))
    ]


def test_identities() -> None:
    doctor = RequestEnvelope.model_validate(envelope_dict()).acting
    assert isinstance(doctor, DoctorIdentity)
    assert doctor.stamp_number == "12345"
    institution = RequestEnvelope.model_validate(envelope_dict("event.start")).acting
    assert isinstance(institution, InstitutionIdentity)
    assert [f for f, _, _ in errors_of(envelope_dict(acting={"user_id": "O12345"}))] == ["acting"]


def test_bno_dot_is_normalised_away() -> None:
    envelope = RequestEnvelope.model_validate(set_at(envelope_dict(), ("payload", "bno"), "J06.9"))
    assert envelope.payload.bno == "J069"  # type: ignore[union-attr]
    profile = RequestEnvelope.model_validate(envelope_dict("eprofil.update")).payload
    assert profile.chronic_conditions == ["E119", "I10"]  # type: ignore[union-attr]
    assert normalize_bno("I10.H0") == "I10H0"
    with pytest.raises(ValueError, match="capital letter"):
        normalize_bno("j06.9")


# --- each validator names its field -------------------------------------------------------------


def path_of(field: str) -> tuple[str | int, ...]:
    """``"payload.items[0].quantity"`` -> ``("payload", "items", 0, "quantity")``."""
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", field))


# message type -> (field, bad value, expected error type); each row breaks exactly one field
BAD_VALUES: dict[str, list[tuple[str, Any, str]]] = {
    "erecept.submit": [
        ("payload.taj", "123456789", "taj_check_digit"),
        ("payload.taj", "12345678", "taj_format"),
        ("payload.taj", "1234 5678", "taj_format"),
        ("payload.taj", 123456788, "string_type"),  # a number loses leading zeros
        ("payload.bno", "j069", "bno_format"),
        ("payload.bno", "J0", "bno_format"),
        ("payload.bno", "J06.", "bno_format"),
        ("payload.bno", "J06.9XY", "bno_format"),
        ("payload.patient_name", "   ", "string_too_short"),
        ("payload.patient_name", "x" * 201, "string_too_long"),
        ("payload.items", [], "too_short"),
        ("payload.items[0].product_code", "12345678", "ttt_code"),
        ("payload.items[0].quantity", 0, "greater_than_equal"),
        ("payload.items[0].quantity", 100, "less_than_equal"),
        ("payload.items[0].quantity", "2", "int_type"),
        ("payload.items[0].dosage", "", "string_too_short"),
        ("acting.user_id", "012345", "doctor_user_id"),
        ("acting.user_id", "O00000", "doctor_user_id"),
        ("acting.user_id", "O1234", "doctor_user_id"),
        ("acting.workstation", "-WS01", "workstation_id"),
        ("acting.workstation", "WS 01", "workstation_id"),
        ("institution", "h100200", "institution_id"),
        ("institution", "H1", "institution_id"),
        ("institution", "H" * 17, "institution_id"),
        ("idempotency_key", "", "idempotency_key"),
        ("idempotency_key", "a b", "idempotency_key"),
        ("idempotency_key", "k" * 129, "idempotency_key"),
        ("reply_to", "-his", "reply_routing_key"),
        ("reply_to", "his queue", "reply_routing_key"),
        ("message_id", "not-a-uuid", "uuid_parsing"),
        ("created_at", "2025-03-01T09:00:00", "timezone_aware"),
    ],
    "erecept.revoke": [
        ("payload.prescription_id", "x" * 65, "string_too_long"),
        ("payload.reason", "", "string_too_short"),
    ],
    "ebeutalo.submit": [
        ("payload.referrer_stamp", "00000", "stamp_number"),
        ("payload.referrer_stamp", "1234a", "stamp_number"),
        ("payload.target_institution", "H-1", "institution_id"),
    ],
    "event.start": [
        ("payload.event_id", "case 12", "local_id"),
        ("payload.event_type", "dental", "enum"),
        ("payload.started_at", "2025-03-01T08:00:00", "timezone_aware"),
    ],
    "ehr.submit": [
        ("payload.content_base64", "not base64!", "base64_invalid"),
        ("payload.content_base64", "", "content_empty"),
        ("payload.mime_type", "image/png", "literal_error"),
        ("payload.document_type", "x-ray", "enum"),
        ("payload.case_number", "", "local_id"),
    ],
    "eprofil.update": [
        ("payload.blood_type", "O+", "enum"),
        ("payload.allergies", ["x"] * 51, "too_long"),
        ("payload.chronic_conditions[1]", "E11.", "bno_format"),
    ],
}


@pytest.mark.parametrize(
    ("message_type", "field", "value", "error_type"),
    [(message_type, *row) for message_type, rows in BAD_VALUES.items() for row in rows],
)
def test_bad_value_is_rejected_naming_the_field(
    message_type: str, field: str, value: Any, error_type: str
) -> None:
    # Given a valid request with one bad value
    data = set_at(envelope_dict(message_type), path_of(field), value)
    # When it is validated, then the one error names that field and says why
    errors = errors_of(data)
    assert [(f, t) for f, t, _ in errors] == [(field, error_type)]
    assert errors[0][2]  # a non-empty, human-readable reason


def test_unknown_payload_type_is_rejected_on_payload() -> None:
    data = set_at(envelope_dict(), ("payload", "type"), "erecept.unknown")
    [(field, error_type, message)] = errors_of(data)
    assert (field, error_type) == ("payload", "union_tag_invalid")
    assert "erecept.submit" in message  # the reason lists the known types


def test_taj_error_says_which_check_digit() -> None:
    [(_, _, message)] = errors_of(set_at(envelope_dict(), ("payload", "taj"), "123456783"))
    assert message == "TAJ check digit is 3, expected 8"


def test_errors_never_echo_patient_data() -> None:
    # Given a request with a wrong TAJ and a wrong diagnosis
    data = set_at(envelope_dict(), ("payload", "taj"), "987654321")
    data = set_at(data, ("payload", "bno"), "zz999")
    # When validation fails, then neither the message text nor problems repeat them
    with pytest.raises(ValidationError) as info:
        RequestEnvelope.model_validate(data)
    text = str(info.value) + repr(validation_problems(info.value))
    assert "987654321" not in text and "zz999" not in text


# --- cross-field rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "ok"), [(1, True), (90, True), (91, False), (0, False), (-3, False)]
)
def test_referral_is_valid_for_at_most_90_days(days: int, ok: bool) -> None:
    issued = date(2025, 3, 1)
    data = set_at(
        envelope_dict("ebeutalo.submit"),
        ("payload", "valid_until"),
        str(issued + timedelta(days=days)),
    )
    if ok:
        RequestEnvelope.model_validate(data)
        return
    [(field, error_type, message)] = errors_of(data)
    assert (field, error_type) == ("payload.valid_until", "referral_validity")
    if days > 0:
        assert (
            message
            == "referral may be valid for at most 90 days after issued_on (2025-03-01); got 91 days"
        )
    else:
        assert "must be after issued_on (2025-03-01)" in message


@pytest.mark.parametrize(
    "ended_at",
    [
        "2025-03-01T08:00:00+01:00",  # equal to the start
        "2025-03-01T07:59:59+01:00",
        "2025-03-01T08:30:00+02:00",  # later wall clock, earlier instant
    ],
)
def test_event_must_end_after_it_started(ended_at: str) -> None:
    data = set_at(envelope_dict("event.end"), ("payload", "ended_at"), ended_at)
    [(field, error_type, message)] = errors_of(data)
    assert (field, error_type) == ("payload.ended_at", "end_before_start")
    assert "must be after started_at" in message


@pytest.mark.parametrize(
    "deadline", ["2025-03-01T09:00:00Z", "2025-03-01T08:00:00Z", "2025-03-01T10:00:00+02:00"]
)
def test_deadline_must_be_after_created_at(deadline: str) -> None:
    [(field, error_type, _)] = errors_of(envelope_dict(deadline=deadline))
    assert (field, error_type) == ("deadline", "deadline_not_after_created")


def test_given_deadline_is_kept_and_missing_one_defaults_to_24_hours() -> None:
    given = RequestEnvelope.model_validate(envelope_dict(deadline="2025-03-01T09:00:01Z"))
    assert given.deadline == datetime(2025, 3, 1, 9, 0, 1, tzinfo=UTC)
    default = RequestEnvelope.model_validate(envelope_dict())
    assert default.deadline == datetime(2025, 3, 2, 9, 0, tzinfo=UTC)


def test_profile_update_needs_at_least_one_field() -> None:
    data = envelope_dict("eprofil.update")
    for key in ("allergies", "chronic_conditions", "blood_type"):
        del data["payload"][key]
    [(field, error_type, message)] = errors_of(data)
    assert (field, error_type) == ("payload", "profile_empty")
    assert all(name in message for name in ("allergies", "chronic_conditions", "blood_type"))
    # an empty list is an answer ("no known allergies"), not a missing field
    RequestEnvelope.model_validate(set_at(data, ("payload", "allergies"), []))


def test_ehr_content_limits() -> None:
    payload = RequestEnvelope.model_validate(envelope_dict("ehr.submit")).payload
    assert isinstance(payload, EhrDocumentSubmit)
    assert payload.content() == b"%PDF-1.7 discharge summary"
    # exactly at the limit is fine; one byte more is not
    at_limit = base64.b64encode(bytes(MAX_DOCUMENT_BYTES)).decode()
    RequestEnvelope.model_validate(
        set_at(envelope_dict("ehr.submit"), ("payload", "content_base64"), at_limit)
    )
    too_big = base64.b64encode(bytes(MAX_DOCUMENT_BYTES + 1)).decode()
    [(field, error_type, _)] = errors_of(
        set_at(envelope_dict("ehr.submit"), ("payload", "content_base64"), too_big)
    )
    assert (field, error_type) == ("payload.content_base64", "content_too_large")
    wrapped = CONTENT[:8] + "\n" + CONTENT[8:]  # MIME line breaks are not standard base64
    [(_, error_type, _)] = errors_of(
        set_at(envelope_dict("ehr.submit"), ("payload", "content_base64"), wrapped)
    )
    assert error_type == "base64_invalid"


# --- replies ------------------------------------------------------------------------------------


def _replies() -> list[Accepted | Rejected | Failed | StatusUpdate]:
    envelope = RequestEnvelope.model_validate(envelope_dict())
    common = reply_fields(envelope)
    return [
        Accepted(**common, eeszt_id="RX-2025-000001", version=1),
        Rejected(
            **common,
            code="BIZ-001",
            field="payload.items[0].product_code",
            reason="unknown product",
        ),
        Failed(**common, reason="deadline passed", kept_in="dead-letter store eeszt.dlq"),
        StatusUpdate(
            **common, state=StatusState.RETRYING, attempt=2, next_attempt_at=datetime.now(UTC)
        ),
    ]


def test_reply_fields_correlate_with_the_request() -> None:
    envelope = RequestEnvelope.model_validate(envelope_dict())
    accepted = Accepted(**reply_fields(envelope), eeszt_id="RX-1", version=1)
    assert (accepted.message_id, accepted.idempotency_key) == (
        envelope.message_id,
        envelope.idempotency_key,
    )
    assert (accepted.service, accepted.message_type) == ("eRecept", "erecept.submit")


@pytest.mark.parametrize("reply", _replies(), ids=lambda r: r.kind)
def test_every_reply_round_trips_and_knows_if_it_is_final(reply: Any) -> None:
    again = REPLY_ADAPTER.validate_json(REPLY_ADAPTER.dump_json(reply))
    assert again == reply
    assert is_final(again) == (reply.kind != "status")


def test_reply_parsing_tolerates_newer_fields_but_checks_known_ones() -> None:
    data = json.loads(REPLY_ADAPTER.dump_json(_replies()[0]))
    # Given a reply from a newer gateway with a field this version does not know
    newer = {**data, "added_in_v2": True}
    # Then it still parses to the same reply (a final reply must never be dropped)
    assert REPLY_ADAPTER.validate_python(newer) == REPLY_ADAPTER.validate_python(data)
    with pytest.raises(ValidationError) as info:
        REPLY_ADAPTER.validate_python({**data, "version": 0})
    assert describe_validation_error(info.value).field == "version"


# --- describe_validation_error ------------------------------------------------------------------


def test_describe_drops_union_tags_and_keeps_real_fields() -> None:
    data = set_at(envelope_dict(), ("payload", "taj"), "123456780")
    with pytest.raises(ValidationError) as info:
        RequestEnvelope.model_validate(data)
    assert info.value.errors()[0]["loc"] == ("payload", "erecept.submit", "taj")
    assert describe_validation_error(info.value) == (
        "payload.taj",
        "TAJ check digit is 0, expected 8",
    )


def test_describe_counts_further_problems_and_handles_non_json() -> None:
    data = set_at(envelope_dict(), ("payload", "taj"), "1")
    data = set_at(data, ("institution",), "x")
    with pytest.raises(ValidationError) as info:
        RequestEnvelope.model_validate(data)
    field, reason = describe_validation_error(info.value)
    assert field == "institution" and reason.endswith("(and 1 more problem)")
    assert [p.field for p in validation_problems(info.value)] == ["institution", "payload.taj"]
    with pytest.raises(ValidationError) as info:
        RequestEnvelope.from_json(b"{not json")
    assert describe_validation_error(info.value).field == ""


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("payload", "erecept.submit", "items", 0, "quantity"), "payload.items[0].quantity"),
        (("acting", "doctor", "user_id"), "acting.user_id"),
        (("acting", "institution"), "acting"),
        (("institution",), "institution"),  # a field, although "institution" is also a tag
        (("accepted", "version"), "version"),
        (("payload", "event.start", "bno", "function-after[_check_bno(), str]"), "payload.bno"),
        ((0, "taj"), "[0].taj"),
        ((), ""),
    ],
)
def test_field_path(loc: tuple[str | int, ...], expected: str) -> None:
    assert field_path(loc) == expected


# --- plain helpers ------------------------------------------------------------------------------


def test_taj_helpers() -> None:
    assert taj_check_digit("12345678") == 8
    assert make_taj("00000000") == "000000000"
    assert is_valid_taj(TAJ) and not is_valid_taj("123456787") and not is_valid_taj(123456788)
    full_width = "".join(chr(0xFF10 + int(d)) for d in TAJ)  # digits to str.isdigit, not 0-9
    assert not is_valid_taj(full_width)
    with pytest.raises(ValueError, match="8 digits"):
        make_taj("1234567")
    assert mask_taj("123456789") == "******789"
    assert mask_taj("12") == "**"


# --- JSON Schema export -------------------------------------------------------------------------


def test_json_schemas_has_one_entry_per_message() -> None:
    schemas = json_schemas()
    reply_names = {"reply.accepted", "reply.rejected", "reply.failed", "reply.status"}
    assert set(schemas) == {"request", "reply"} | set(PAYLOAD_TYPES) | reply_names
    ids = [s["$id"] for s in schemas.values()]
    assert len(set(ids)) == len(ids)
    for schema in schemas.values():
        assert schema["title"] and schema["$schema"].startswith("https://json-schema.org/")
    json.dumps(schemas)  # plain JSON data, ready for the CLI to write


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


@pytest.mark.parametrize("message_type", sorted(SAMPLE_PAYLOADS))
def test_per_type_schema_describes_its_sample(message_type: str) -> None:
    schema = json_schemas()[message_type]
    sample = envelope_dict(message_type)
    # the envelope: every required field present in the sample, no unknown sample field
    assert set(schema["required"]) <= set(sample) <= set(schema["properties"])
    # the payload: only this type, its tag required, the sample fits
    payload_schema = _resolve(schema, schema["properties"]["payload"])
    assert payload_schema["properties"]["type"]["const"] == message_type
    assert payload_schema["required"][0] == "type"
    assert payload_schema["additionalProperties"] is False
    assert (
        set(payload_schema["required"])
        <= set(sample["payload"])
        <= set(payload_schema["properties"])
    )
    other_payloads = {cls.__name__ for t, cls in PAYLOAD_TYPES.items() if t != message_type}
    assert other_payloads.isdisjoint(schema["$defs"])


def test_request_and_reply_schemas_are_discriminated_unions() -> None:
    schemas = json_schemas()
    payload = schemas["request"]["properties"]["payload"]
    assert set(payload["discriminator"]["mapping"]) == set(PAYLOAD_TYPES)
    assert "deadline" not in schemas["request"]["required"]
    assert set(schemas["reply"]["discriminator"]["mapping"]) == {
        "accepted",
        "rejected",
        "failed",
        "status",
    }
    # a HIS receives every reply field, defaults included
    assert {"kind", "at", "detail", "attempt"} <= set(schemas["reply.status"]["required"])


def test_message_ids_are_uuids_in_json() -> None:
    envelope = RequestEnvelope.model_validate(envelope_dict(message_id=str(uuid4())))
    assert UUID(json.loads(envelope.to_json())["message_id"]) == envelope.message_id
