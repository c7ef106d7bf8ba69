"""Realistic synthetic requests as JSONL lines, for demos, load tests and the test suite.

Patients have valid TAJ numbers and Hungarian names, prescriptions carry real-looking medicines
(9-digit TTT codes, Hungarian dosage text) that fit the diagnosis (real BNO codes), referrals go
to other institutions, care events come as a start and a matching end, and EHR documents carry a
small plain-text report in base64. Who acts follows ``schemas.permissions``: a doctor (``O1000i``
at workstation ``WS-0i``) for eRecept, eBeutaló and eProfil; the institution for events and EHR.

Lines carry no ``created_at``/``deadline``: both are set when a line is parsed for publishing, so
a file generated yesterday is not already past its deadline. Clinical times are anchored at
``now`` (default: the start of the current UTC day), which keeps seeded output reproducible.

Two kinds of bad input:

- ``invalid``: passes local validation, refused by EESZT or the gateway with a field: a revoke
  of a prescription id that does not exist (``prescriptionId``), and an eRecept submit acted by
  the institution (``acting``); half each.
- ``malformed``: fails local validation, each line on a different field (:data:`MALFORMED_KINDS`,
  cycled when more are asked for).
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from schemas.envelope import DoctorIdentity, Identity, InstitutionIdentity, RequestEnvelope
from schemas.payloads import (
    BloodType,
    CareEventEnd,
    CareEventStart,
    CareEventType,
    DocumentType,
    EhrDocumentSubmit,
    Payload,
    PrescriptionItem,
    PrescriptionRevoke,
    PrescriptionSubmit,
    ProfileUpdate,
    ReferralSubmit,
)
from schemas.validators import make_taj

__all__ = ["MALFORMED_KINDS", "generate"]

_FAMILY: Final = ("Nagy", "Kovács", "Tóth", "Szabó", "Horváth", "Varga", "Kiss", "Molnár",
                  "Németh", "Farkas", "Balogh", "Papp", "Takács", "Juhász", "Lakatos",
                  "Mészáros", "Oláh", "Simon", "Rácz", "Fekete", "Szilágyi", "Török")
_GIVEN: Final = ("László", "István", "József", "János", "Zoltán", "Sándor", "Gábor", "Ferenc",
                 "Attila", "Péter", "Mária", "Erzsébet", "Katalin", "Éva", "Ilona", "Anna",
                 "Zsuzsanna", "Margit", "Judit", "Ágnes", "Eszter", "Dóra")

# TTT code, name, dosage texts. Codes are made up; names are products on the Hungarian market.
_DRUGS: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "algopyrin": ("204957123", "Algopyrin 500 mg tabletta",
                  ("szükség esetén 1 tabletta, naponta legfeljebb 3", "napi 3x1 tabletta")),
    "augmentin": ("207811045", "Augmentin 875 mg/125 mg filmtabletta",
                  ("napi 2x1 tabletta étkezés elején, 7 napig",)),
    "klacid": ("201344508", "Klacid 500 mg filmtabletta", ("napi 2x1 tabletta, 10 napig",)),
    "amlodipin": ("209460317", "Amlodipin-Teva 5 mg tabletta", ("napi 1x1 tabletta reggel",)),
    "concor": ("203377120", "Concor 5 mg filmtabletta", ("napi 1x1 tabletta reggel",)),
    "prestarium": ("205512986", "Prestarium Neo 5 mg filmtabletta", ("napi 1x1 tabletta",)),
    "metformin": ("208864402", "Metformin Sandoz 1000 mg filmtabletta",
                  ("napi 2x1 tabletta étkezés közben",)),
    "jardiance": ("210045731", "Jardiance 10 mg filmtabletta", ("napi 1x1 tabletta reggel",)),
    "cataflam": ("202291874", "Cataflam 50 mg bevont tabletta",
                 ("napi 2x1 tabletta étkezés után, legfeljebb 7 napig",)),
    "mydeton": ("206638015", "Mydeton 150 mg filmtabletta", ("napi 3x1 tabletta",)),
    "nolpaza": ("209913360", "Nolpaza 40 mg gyomornedv-ellenálló tabletta",
                ("napi 1x1 tabletta reggeli előtt",)),
    "controloc": ("204420679", "Controloc 20 mg gyomornedv-ellenálló tabletta",
                  ("napi 1x1 tabletta reggeli előtt",)),
    "berodual": ("203058841", "Berodual N inhalációs aeroszol",
                 ("szükség esetén 1-2 befújás, naponta legfeljebb 8",)),
    "seretide": ("207725196", "Seretide Diskus 50/250 mikrogramm/adag inhalációs por",
                 ("napi 2x1 belégzés",)),
    "atoris": ("205167432", "Atoris 20 mg filmtabletta", ("napi 1x1 tabletta este",)),
    "cipralex": ("206201958", "Cipralex 10 mg filmtabletta", ("napi 1x1 tabletta reggel",)),
    "euthyrox": ("208340277", "Euthyrox 50 mikrogramm tabletta",
                 ("napi 1x1 tabletta éhgyomorra",)),
}

# BNO code -> (Hungarian diagnosis text, medicines that fit it)
_DIAGNOSES: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "J069": ("Akut felső légúti fertőzés, k.m.n.", ("algopyrin", "augmentin", "klacid")),
    "I10H0": ("Esszenciális hypertonia, hypertoniás krízis nélkül",
              ("amlodipin", "concor", "prestarium")),
    "E119": ("Nem inzulin-dependens diabetes mellitus szövődmények nélkül",
             ("metformin", "jardiance")),
    "M5450": ("Deréktáji fájdalom, ágyéki szakasz", ("cataflam", "mydeton")),
    "K2190": ("Gastro-oesophagealis reflux betegség oesophagitis nélkül",
              ("nolpaza", "controloc")),
    "J4590": ("Asthma bronchiale, k.m.n.", ("berodual", "seretide")),
    "E7800": ("Tiszta hypercholesterinaemia", ("atoris",)),
    "F3290": ("Depressziós epizód, k.m.n.", ("cipralex",)),
    "E0390": ("Hypothyreosis, k.m.n.", ("euthyrox",)),
}
_ALLERGIES: Final = ("penicillin", "szulfonamidok", "acetilszalicilsav", "jódos kontrasztanyag",
                     "parlagfű pollen", "poratka", "földimogyoró", "laktóz", "méhméreg")
_TARGETS: Final = ("H200300", "H300400", "H410500", "H520100", "H630700")
_DEPARTMENTS: Final = ("Belgyógyászat", "Sebészet", "Kardiológia", "Neurológia", "Szemészet",
                       "Traumatológia")
_TITLES: Final = {DocumentType.DISCHARGE_SUMMARY: "Zárójelentés",
                  DocumentType.LAB_RESULT: "Laboratóriumi lelet",
                  DocumentType.IMAGING_REPORT: "Radiológiai lelet",
                  DocumentType.OUTPATIENT_REPORT: "Ambuláns lap",
                  DocumentType.OTHER: "Orvosi igazolás"}
# event type -> (shortest, longest) duration in minutes
_DURATIONS: Final = {CareEventType.OUTPATIENT: (10, 90), CareEventType.GP: (10, 30),
                     CareEventType.IMAGING: (15, 60), CareEventType.EMERGENCY: (60, 480),
                     CareEventType.AMBULANCE: (30, 120),
                     CareEventType.INPATIENT: (24 * 60, 10 * 24 * 60)}


@dataclass(frozen=True, slots=True)
class _Patient:
    taj: str
    name: str


class _Maker:
    """Builds the envelopes of one ``generate()`` call from one seeded random source."""

    def __init__(self, rng: random.Random, *, doctors: int, institution: str, reply_to: str,
                 now: datetime, patients: int, prescription_ids: Sequence[str]) -> None:
        self.rng, self.institution, self.reply_to, self.now = rng, institution, reply_to, now
        self.doctors = doctors
        self.prescription_ids = list(prescription_ids)
        self.patients = [self._patient() for _ in range(patients)]
        self.keys: set[str] = set()
        self.seq = rng.randrange(1, 500_000)

    def _patient(self) -> _Patient:
        rng = self.rng
        return _Patient(make_taj(f"{rng.randrange(10**8):08d}"),
                        f"{rng.choice(_FAMILY)} {rng.choice(_GIVEN)}")

    def key(self, prefix: str) -> str:
        while True:
            key = f"{prefix}-{self.rng.getrandbits(64):016x}"
            if key not in self.keys:
                self.keys.add(key)
                return key

    def local_id(self) -> str:
        self.seq += 1
        return f"{self.now.year}/{self.seq:06d}"

    def doctor(self) -> DoctorIdentity:
        i = self.rng.randint(1, self.doctors)
        return DoctorIdentity(user_id=f"O{10000 + i}", workstation=f"WS-{i:02d}")

    def envelope(self, prefix: str, acting: Identity, payload: Payload) -> RequestEnvelope:
        return RequestEnvelope(
            message_id=uuid.UUID(int=self.rng.getrandbits(128), version=4),
            idempotency_key=self.key(prefix), institution=self.institution, acting=acting,
            reply_to=self.reply_to, payload=payload)

    # --- one builder per request type -------------------------------------------------------

    def prescription(self, acting: Identity | None = None) -> RequestEnvelope:
        rng, patient = self.rng, self.rng.choice(self.patients)
        bno, (_, drugs) = rng.choice(list(_DIAGNOSES.items()))
        items = []
        for name in rng.sample(drugs, k=rng.randint(1, min(2, len(drugs)))):
            code, product, dosages = _DRUGS[name]
            items.append(PrescriptionItem(product_code=code, product_name=product,
                                          quantity=rng.choice((1, 1, 1, 2, 3)),
                                          dosage=rng.choice(dosages)))
        valid_until = self.now.date() + timedelta(days=rng.choice((30, 90, 180))) \
            if rng.random() < 0.3 else None
        return self.envelope("rx", acting or self.doctor(), PrescriptionSubmit(
            taj=patient.taj, patient_name=patient.name, bno=bno, items=items,
            valid_until=valid_until))

    def revoke(self, prescription_id: str | None = None) -> RequestEnvelope:
        if prescription_id is None:
            prescription_id = (self.prescription_ids[self.rng.randrange(len(self.prescription_ids))]
                               if self.prescription_ids else self._unknown_id())
        reason = self.rng.choice(("téves adagolás", "téves készítmény", "beteg kérésére",
                                  "allergiás reakció gyanúja"))
        return self.envelope("rv", self.doctor(), PrescriptionRevoke(
            taj=self.rng.choice(self.patients).taj, prescription_id=prescription_id,
            reason=reason))

    def _unknown_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def referral(self) -> RequestEnvelope:
        rng, patient, acting = self.rng, self.rng.choice(self.patients), self.doctor()
        bno, (text, _) = rng.choice(list(_DIAGNOSES.items()))
        issued = self.now.date() - timedelta(days=rng.randint(0, 3))
        return self.envelope("ref", acting, ReferralSubmit(
            taj=patient.taj, patient_name=patient.name, referrer_stamp=acting.stamp_number,
            referring_institution=self.institution,
            target_institution=rng.choice([t for t in _TARGETS if t != self.institution]),
            bno=bno, diagnosis_text=text, issued_on=issued,
            valid_until=issued + timedelta(days=rng.randint(14, 90))))

    def profile(self) -> RequestEnvelope:
        rng = self.rng
        fields: dict[str, Any] = {}
        if rng.random() < 0.6:
            fields["allergies"] = rng.sample(_ALLERGIES, k=rng.randint(0, 2))
        if rng.random() < 0.6:
            fields["chronic_conditions"] = rng.sample(list(_DIAGNOSES), k=rng.randint(1, 3))
        if not fields or rng.random() < 0.5:
            fields["blood_type"] = rng.choice(list(BloodType))
        return self.envelope("prof", self.doctor(), ProfileUpdate(
            taj=rng.choice(self.patients).taj, **fields))

    def event(self) -> tuple[RequestEnvelope, RequestEnvelope]:
        rng, patient, me = self.rng, self.rng.choice(self.patients), InstitutionIdentity()
        kind = rng.choice(list(CareEventType))
        shortest, longest = _DURATIONS[kind]
        ended = self.now - timedelta(minutes=rng.randint(60, 20 * 60))
        started = ended - timedelta(minutes=rng.randint(shortest, longest))
        event_id = self.local_id()
        bno = rng.choice(list(_DIAGNOSES)) if rng.random() < 0.8 else None
        start = CareEventStart(taj=patient.taj, event_id=event_id, event_type=kind,
                               started_at=started, bno=bno)
        end = CareEventEnd(taj=patient.taj, event_id=event_id, event_type=kind,
                           started_at=started, ended_at=ended, bno=bno)
        return self.envelope("evs", me, start), self.envelope("eve", me, end)

    def document(self) -> RequestEnvelope:
        rng, patient = self.rng, self.rng.choice(self.patients)
        doc_type = rng.choice(list(DocumentType))
        bno, (text, _) = rng.choice(list(_DIAGNOSES.items()))
        title = f"{_TITLES[doc_type]} – {rng.choice(_DEPARTMENTS)}"
        authored = self.now - timedelta(minutes=rng.randint(30, 48 * 60))
        content = (f"{title}\nBeteg: {patient.name}\nDiagnózis: {bno} {text}\n"
                   f"Kelt: {authored.date().isoformat()}\n").encode()
        case = self.local_id()
        return self.envelope("doc", InstitutionIdentity(), EhrDocumentSubmit(
            taj=patient.taj, case_number=case, document_id=f"DOC-{case.replace('/', '-')}",
            document_type=doc_type, title=title, mime_type="text/plain",
            content_base64=base64.b64encode(content).decode(), authored_at=authored))


# --- malformed lines: a valid request as a dict, broken in exactly one field -------------------


def _wrong_taj(d: dict[str, Any]) -> None:
    taj = d["payload"]["taj"]
    d["payload"]["taj"] = taj[:8] + str((int(taj[8]) + 5) % 10)


def _end_before_start(d: dict[str, Any]) -> None:
    started = datetime.fromisoformat(d["payload"]["started_at"])
    d["payload"]["ended_at"] = (started - timedelta(minutes=30)).isoformat()


def _referral_120_days(d: dict[str, Any]) -> None:
    issued = date.fromisoformat(d["payload"]["issued_on"])
    d["payload"]["valid_until"] = (issued + timedelta(days=120)).isoformat()


def _naive_start(d: dict[str, Any]) -> None:
    d["payload"]["started_at"] = d["payload"]["started_at"][:19]  # drop the UTC offset


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        parent, _, last = path.rpartition(".")
        target = d
        for part in parent.split(".") if parent else ():
            target = target[part]
        del target[last]
    return mutate


_RX, _EVS, _EVE, _REF, _DOC, _PROF = "prescription", "start", "end", "referral", "doc", "profile"

#: (field that fails, request it breaks, how): one malformed line each, in this order.
_MALFORMED: Final[tuple[tuple[str, str, Callable[[dict[str, Any]], None]], ...]] = (
    ("payload.taj", _RX, _wrong_taj),
    ("payload.bno", _RX, _set("payload.bno", "j069")),
    ("payload.ended_at", _EVE, _end_before_start),
    ("payload.valid_until", _REF, _referral_120_days),
    ("payload.patient_name", _RX, _drop("payload.patient_name")),
    ("acting.user_id", _RX, _set("acting.user_id", "010001")),
    ("payload.items[0].product_code", _RX, _set("payload.items.0.product_code", "20495712")),
    ("payload.items[0].quantity", _RX, _set("payload.items.0.quantity", 0)),
    ("payload.content_base64", _DOC, _set("payload.content_base64", "QmV0ZWc6\nIE5hZ3k=")),
    ("institution", _RX, _set("institution", "h100200")),
    ("acting.workstation", _REF, _set("acting.workstation", "WS 01")),
    ("idempotency_key", _RX, _set("idempotency_key", "rx 2025 0001")),
    ("reply_to", _RX, _set("reply_to", "his demo")),
    ("payload.blood_type", _PROF, _set("payload.blood_type", "O+")),
    ("payload.comment", _RX, _set("payload.comment", "sürgős")),
    ("payload.started_at", _EVS, _naive_start),
)
#: The field each malformed line fails on, in the order they are made.
MALFORMED_KINDS: Final[tuple[str, ...]] = tuple(f for f, _, _ in _MALFORMED)

_EXCLUDE: Final = {"created_at", "deadline"}


def _line(envelope: RequestEnvelope) -> str:
    return envelope.model_dump_json(exclude=_EXCLUDE)


def _malformed(maker: _Maker, index: int) -> str:
    _, base, mutate = _MALFORMED[index % len(_MALFORMED)]
    envelope = {_RX: maker.prescription, _EVS: lambda: maker.event()[0],
                _EVE: lambda: maker.event()[1], _REF: maker.referral, _DOC: maker.document,
                _PROF: maker.profile}[base]()
    data = envelope.model_dump(mode="json", exclude=_EXCLUDE)
    if base == _PROF:
        data["payload"]["blood_type"] = "0+"  # present, so that the mutation has a field to spoil
    mutate(data)
    return json.dumps(data, ensure_ascii=False)


def generate(*, prescriptions: int = 0, revokes: int = 0, referrals: int = 0, profiles: int = 0,
             events: int = 0, documents: int = 0, invalid: int = 0, malformed: int = 0,
             doctors: int = 10, institution: str = "H100200", reply_to: str = "his.demo",
             seed: int | None = None, prescription_ids: Sequence[str] = (),
             now: datetime | None = None) -> Iterator[str]:
    """JSONL request lines (without newlines) in a shuffled mix; all built before returning.

    ``events`` counts care events: each yields a start line and a later end line with the same
    ``event_id``, so there are ``2 * events`` event lines. Revokes name one of
    ``prescription_ids`` (EESZT ids from earlier Accepted replies); without them they name ids
    that do not exist and are rejected like the ``invalid`` kind. The same ``seed`` and ``now``
    give the same lines.

    Raises:
        ValueError: a negative count, ``doctors`` outside 1..89999, or an ``institution`` or
            ``reply_to`` that the contract refuses (``pydantic.ValidationError``).
    """
    counts = (prescriptions, revokes, referrals, profiles, events, documents, invalid, malformed)
    if min(counts) < 0:
        raise ValueError("counts must not be negative")
    if not 1 <= doctors <= 89_999:
        raise ValueError("doctors must be between 1 and 89999 (stamp numbers 10001..99999)")
    rng = random.Random(seed)
    anchor = now or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    total = sum(counts) + events
    maker = _Maker(rng, doctors=doctors, institution=institution, reply_to=reply_to, now=anchor,
                   patients=max(10, total // 3), prescription_ids=prescription_ids)
    lines: list[tuple[str, int | None, bool]] = []  # (line, event number, is the end)
    lines += [(_line(maker.prescription()), None, False) for _ in range(prescriptions)]
    lines += [(_line(maker.revoke()), None, False) for _ in range(revokes)]
    lines += [(_line(maker.referral()), None, False) for _ in range(referrals)]
    lines += [(_line(maker.profile()), None, False) for _ in range(profiles)]
    for number in range(events):
        start, end = maker.event()
        lines += [(_line(start), number, False), (_line(end), number, True)]
    lines += [(_line(maker.document()), None, False) for _ in range(documents)]
    for i in range(invalid):
        bad = maker.revoke(maker._unknown_id()) if i % 2 == 0 else \
            maker.prescription(acting=InstitutionIdentity())
        lines.append((_line(bad), None, False))
    lines += [(_malformed(maker, i), None, False) for i in range(malformed)]
    rng.shuffle(lines)
    # A HIS reports an end after its start: swap the pairs the shuffle put the other way round.
    first_seen: dict[int, int] = {}
    for position, (_, event, is_end) in enumerate(lines):
        if event is None:
            continue
        if event not in first_seen:
            first_seen[event] = position
        elif not is_end:
            other = first_seen[event]
            lines[other], lines[position] = lines[position], lines[other]
    return iter([line for line, _, _ in lines])
