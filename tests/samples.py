"""Valid sample requests for tests: one builder per payload type."""

from __future__ import annotations

import base64
import uuid
from datetime import date, datetime, timedelta, timezone

from schemas.envelope import DoctorIdentity, InstitutionIdentity, RequestEnvelope
from schemas.payloads import (
    CareEventEnd,
    CareEventStart,
    EhrDocumentSubmit,
    PrescriptionItem,
    PrescriptionRevoke,
    PrescriptionSubmit,
    ProfileUpdate,
    ReferralSubmit,
)
from schemas.validators import make_taj

INSTITUTION = "H100200"
TAJ = make_taj("12345678")


def _key(prefix: str) -> str:
    """A unique idempotency key that never holds 9 digits in a row: logs and ``dlq show`` mask
    such a run as a possible TAJ, and a random hex key has one about once in ten."""
    h = uuid.uuid4().hex[:16]
    return f"{prefix}-" + "k".join(h[i:i + 4] for i in range(0, 16, 4))


def doctor(user_id: str = "O10001", workstation: str = "WS-01") -> DoctorIdentity:
    return DoctorIdentity(kind="doctor", user_id=user_id, workstation=workstation)


def prescription(*, key: str | None = None, user_id: str = "O10001", taj: str = TAJ,
                 patient_name: str = "Teszt Elek") -> RequestEnvelope:
    return RequestEnvelope(
        idempotency_key=key or _key("rx"), institution=INSTITUTION, acting=doctor(user_id),
        reply_to="his.demo",
        payload=PrescriptionSubmit(
            taj=taj, patient_name=patient_name, bno="J069",
            items=[PrescriptionItem(product_code="123456789", product_name="Algopyrin 500 mg tabletta",
                                    quantity=1, dosage="szükség esetén 1 tabletta")]))


def revoke(prescription_id: str, *, key: str | None = None) -> RequestEnvelope:
    return RequestEnvelope(
        idempotency_key=key or _key("rv"), institution=INSTITUTION, acting=doctor(),
        payload=PrescriptionRevoke(taj=TAJ, prescription_id=prescription_id, reason="téves adag"))


def referral(*, key: str | None = None, days: int = 90) -> RequestEnvelope:
    issued = date.today()
    return RequestEnvelope(
        idempotency_key=key or _key("ref"), institution=INSTITUTION, acting=doctor(),
        payload=ReferralSubmit(
            taj=TAJ, patient_name="Teszt Elek", referrer_stamp="10001",
            referring_institution=INSTITUTION, target_institution="H200300", bno="I10H0",
            diagnosis_text="magasvérnyomás-betegség", issued_on=issued,
            valid_until=issued + timedelta(days=days)))


def event_start(*, key: str | None = None, event_id: str = "CASE-1") -> RequestEnvelope:
    return RequestEnvelope(
        idempotency_key=key or _key("ev"), institution=INSTITUTION,
        acting=InstitutionIdentity(kind="institution"),
        payload=CareEventStart(taj=TAJ, event_id=event_id, event_type="outpatient",
                               started_at=datetime.now(timezone.utc) - timedelta(hours=1)))


def event_end(*, key: str | None = None, event_id: str = "CASE-1") -> RequestEnvelope:
    now = datetime.now(timezone.utc)
    return RequestEnvelope(
        idempotency_key=key or _key("ev"), institution=INSTITUTION,
        acting=InstitutionIdentity(kind="institution"),
        payload=CareEventEnd(taj=TAJ, event_id=event_id, event_type="outpatient",
                             started_at=now - timedelta(hours=1), ended_at=now))


def ehr_document(*, key: str | None = None) -> RequestEnvelope:
    return RequestEnvelope(
        idempotency_key=key or _key("doc"), institution=INSTITUTION,
        acting=InstitutionIdentity(kind="institution"),
        payload=EhrDocumentSubmit(
            taj=TAJ, case_number="CASE-1", document_id="DOC-1", document_type="lab_result",
            title="Vérkép", mime_type="text/plain",
            content_base64=base64.b64encode("Hgb 140 g/l".encode()).decode(),
            authored_at=datetime.now(timezone.utc)))


def profile_update(*, key: str | None = None) -> RequestEnvelope:
    return RequestEnvelope(
        idempotency_key=key or _key("pr"), institution=INSTITUTION, acting=doctor(),
        payload=ProfileUpdate(taj=TAJ, allergies=["penicillin"], chronic_conditions=["E119"],
                              blood_type="A+"))
