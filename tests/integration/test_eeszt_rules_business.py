"""Who may write what, over real HTTPS: the permission table, two factors, whose record it is,
and idempotency keys that belong to one institution.

Given a real `eeszt-gw simulator` subprocess holding doctors of H100200 and H100300, when each
institution's gateway sends what a rule forbids, then the answer carries the rule's own code and
names the field; nothing is stored.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.permissions import Access, Role, is_allowed, writer_role
from schemas.soap import FaultCode
from tests import samples
from tests.integration.rules_support import (  # noqa: F401  (rules, world: fixtures)
    OTHER,
    as_other,
    post_envelope,
    refusal,
    rules,
    world,
)
from workers.client.soap import build_call

pytestmark = pytest.mark.integration


def _doctor(world, i=0):
    return world.home_doctors[i]


# --- the permission table: who may not write ----------------------------------------------------
@pytest.mark.parametrize("make,role", [
    (samples.ehr_document, "doctor"),       # eht: institutions write, doctors read
    (samples.profile_update, "institution"),  # eProfil: only a doctor writes
    (samples.referral, "institution"),      # eBeutalo: only a doctor refers
])
def test_a_role_the_permission_table_does_not_let_write_is_refused(rules, make, role):
    # Given a token of the role the table does not allow to write to the service
    token = (rules.institution_token(rules.home) if role == "institution"
             else rules.two_factor_token(rules.home, _doctor(rules)))
    # When it writes
    err = refusal(lambda: rules.home.submit(make(), token))
    # Then it is refused by the permission table
    assert err.code == FaultCode.PERMISSION_DENIED.value
    assert f"a {role} token may not write" in str(err)
    assert rules.sim.stats()["total_records"] == 0


def test_the_table_lets_only_doctors_write_eprofil():
    assert writer_role("eProfil") is Role.DOCTOR
    assert not is_allowed("eProfil", Access.WRITE, Role.INSTITUTION.value)


# --- two factors ----------------------------------------------------------------------------------
PATIENT_DATA = [samples.prescription, samples.referral, samples.profile_update,
                lambda: samples.revoke("6f1c1c8e-0000-4000-8000-000000000000")]


@pytest.mark.parametrize("make", PATIENT_DATA, ids=["eRecept", "eBeutalo", "eProfil", "revoke"])
def test_a_password_token_may_not_write_patient_data(rules, make):
    # Given a doctor logged in with a password only (one factor)
    token = rules.password_token(_doctor(rules))
    # When the doctor writes patient data
    err = refusal(lambda: rules.home.submit(make(), token))
    # Then it is refused, saying why, and nothing is stored
    assert (err.code, err.field) == (FaultCode.TWO_FACTOR_REQUIRED.value, "AuthenticationMethod")
    assert "39/2016 EMMI" in str(err) and "password" in str(err)
    assert rules.sim.stats()["total_records"] == 0


@pytest.mark.parametrize("make", PATIENT_DATA[:3], ids=["eRecept", "eBeutalo", "eProfil"])
def test_a_two_factor_token_writes_patient_data(rules, make):
    # Given the same doctor logged in with MobilToken
    token = rules.two_factor_token(rules.home, _doctor(rules))
    # When the doctor writes, then it lands
    assert rules.home.submit(make(), token).eeszt_id
    assert rules.sim.stats()["total_records"] == 1


def test_a_password_token_may_still_query_by_key(rules):
    # Given a prescription that landed with a two-factor token
    request = samples.prescription()
    landed = rules.home.submit(request, rules.two_factor_token(rules.home, _doctor(rules)))
    # When the doctor asks by its key with a password token: a query is not a write
    found = rules.home.query("eRecept", request.idempotency_key,
                             rules.password_token(_doctor(rules)))
    # Then the answer comes
    assert [r.eeszt_id for r in found] == [landed.eeszt_id]


def test_the_two_factor_rule_can_be_turned_off(rules):
    # Given the rule is turned off on the admin port
    assert rules.sim.admin("PATCH", "/admin/rules", {"require_two_factor": False}) == {
        "require_two_factor": False, "max_timestamp_lifetime_s": 900.0}
    # When a password token writes a prescription, then it lands
    assert rules.home.submit(samples.prescription(), rules.password_token(_doctor(rules))).eeszt_id


# --- whose record it is ---------------------------------------------------------------------------
def test_revoking_an_unknown_prescription_is_not_found(rules):
    token = rules.two_factor_token(rules.home, _doctor(rules))
    err = refusal(lambda: rules.home.submit(
        samples.revoke("6f1c1c8e-0000-4000-8000-000000000000"), token))
    assert (err.code, err.field) == (FaultCode.NOT_FOUND.value, "prescriptionId")
    assert rules.sim.stats()["total_records"] == 0


def test_only_the_prescribing_institution_may_revoke(rules):
    # Given a prescription of H100300's doctor
    other_doctor = rules.other_doctors[0]
    other_token = rules.two_factor_token(rules.other, other_doctor)
    rx = rules.other.submit(as_other(samples.prescription(user_id=other_doctor["user_id"])),
                            other_token)
    # When H100200's doctor revokes it
    err = refusal(lambda: rules.home.submit(
        samples.revoke(rx.eeszt_id), rules.two_factor_token(rules.home, _doctor(rules))))
    # Then it is refused: it is another institution's record
    assert (err.code, err.field) == (FaultCode.RECORD_OF_ANOTHER_INSTITUTION.value,
                                     "prescriptionId")
    assert rules.sim.stats()["records"] == {"eRecept": {"receptRogzites": 1}}
    # And the prescribing institution may
    assert rules.other.submit(as_other(samples.revoke(rx.eeszt_id)), other_token).eeszt_id


def test_a_referral_in_another_doctors_name_is_refused(rules):
    # Given a referral stamped by O10001 and O10002's token
    token = rules.two_factor_token(rules.home, _doctor(rules, 1))
    # When O10002 sends it
    err = refusal(lambda: rules.home.submit(samples.referral(), token))
    # Then it is refused: a doctor refers in their own name
    assert (err.code, err.field) == (FaultCode.REFERRER_NOT_TOKEN_DOCTOR.value, "referrerStamp")
    assert rules.sim.stats()["total_records"] == 0


def test_a_header_institution_that_is_not_the_callers_is_refused(rules):
    # Given H100200's institution token and a call whose header names H100300
    request = as_other(samples.event_start())
    err = refusal(lambda: post_envelope(rules.home, request, build_call(request).envelope,
                                        rules.institution_token(rules.home)))
    assert (err.code, err.field) == (FaultCode.BUSINESS_RULE.value, "institution")
    assert rules.sim.stats()["total_records"] == 0


# --- idempotency keys belong to one institution -----------------------------------------------------
@pytest.mark.parametrize("mode", ["dedupe", "naive"])
def test_two_institutions_may_use_the_same_key(rules, mode):
    rules.sim.set_faults(duplicates=mode)
    home_token = rules.institution_token(rules.home)
    other_token = rules.institution_token(rules.other)
    # Given both institutions send a care event under the same idempotency key
    mine = samples.event_start()
    theirs = as_other(mine)
    key = mine.idempotency_key
    first = rules.home.submit(mine, home_token)
    second = rules.other.submit(theirs, other_token)
    # Then each gets its own record and id
    assert first.eeszt_id != second.eeszt_id
    records = rules.sim.admin("GET", f"/admin/records?key={key}")["records"]
    assert sorted((r["institution"], r["eeszt_id"]) for r in records) == sorted(
        [("H100200", first.eeszt_id), (OTHER, second.eeszt_id)])
    assert [r["eeszt_id"] for r in rules.sim.admin(
        "GET", f"/admin/records?key={key}&institution={OTHER}")["records"]] == [second.eeszt_id]
    # And the key is not counted as repeated: each institution sent it once
    stats = rules.sim.stats()
    assert stats["repeated_keys"] == 0 and stats["records_by_institution"] == {"H100200": 1,
                                                                                OTHER: 1}
    assert stats["attempts"]["keys_received_more_than_once"] == 0
    # And neither sees the other's record when it asks by the key
    assert [r.eeszt_id for r in rules.home.query("esemenyKatalogus", key, home_token)] == [
        first.eeszt_id]
    assert [r.eeszt_id for r in rules.other.query("esemenyKatalogus", key, other_token)] == [
        second.eeszt_id]


def test_dedupe_still_answers_an_institutions_own_repeat_with_its_first_id(rules):
    rules.sim.set_faults(duplicates="dedupe")
    home_token = rules.institution_token(rules.home)
    mine = samples.event_start()
    first = rules.home.submit(mine, home_token)
    rules.other.submit(as_other(mine), rules.institution_token(rules.other))
    # When H100200 repeats its request, then it gets its own first id, not H100300's
    assert rules.home.submit(mine, home_token).eeszt_id == first.eeszt_id
    assert rules.sim.stats()["total_records"] == 2


# --- content rules the HIS-side validation would catch first: sent here as raw XML ---------------
def _set_text(env, local_name: str, text: str) -> None:
    next(e for e in env.iter() if isinstance(e.tag, str) and e.tag.endswith("}" + local_name)
         ).text = text


def test_a_referral_valid_for_more_than_90_days_is_refused(rules):
    # Given a referral of O10001 whose validUntil lies 91 days after issuedOn
    request = samples.referral()
    env = build_call(request).envelope
    _set_text(env, "validUntil", (request.payload.issued_on + timedelta(days=91)).isoformat())
    # When it is sent with O10001's two-factor token
    err = refusal(lambda: post_envelope(rules.home, request, env,
                                        rules.two_factor_token(rules.home, _doctor(rules))))
    # Then it is refused on validUntil
    assert (err.code, err.field) == (FaultCode.BUSINESS_RULE.value, "validUntil")
    assert "90 days" in str(err)
    assert rules.sim.stats()["total_records"] == 0


def test_a_care_event_that_ends_before_it_starts_is_refused(rules):
    # Given an event end whose endedAt lies before its startedAt
    request = samples.event_end()
    env = build_call(request).envelope
    _set_text(env, "endedAt", "2020-01-01T00:00:00Z")
    # When it is sent
    err = refusal(lambda: post_envelope(rules.home, request, env,
                                        rules.institution_token(rules.home)))
    # Then it is refused on endedAt
    assert (err.code, err.field) == (FaultCode.BUSINESS_RULE.value, "endedAt")
    assert rules.sim.stats()["total_records"] == 0
