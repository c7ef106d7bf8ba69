"""The simulator over real HTTPS with mutual TLS: every check it makes, end to end.

Given a real `eeszt-gw simulator` subprocess and a fresh test PKI, when the gateway's own client
(signer + mTLS transport + SOAP templates) talks to it, then each refusal carries its own code.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pyotp
import pytest
from lxml import etree

from schemas.soap import DS_NS, FaultCode
from simulator.pki import issue_certificate, make_ca
from simulator.saml import AssertionIssuer
from tests import samples
from workers.client.client import ClientFiles, EesztClient
from workers.errors import AmbiguousOutcome, ServiceRejected, ServiceUnavailable, TokenRejected
from workers.client.soap import build_call, parse_submit
from workers.client.transport import Timeouts
from workers.client.wsse import WsseSigner

pytestmark = pytest.mark.integration


@pytest.fixture()
def sim(simulator):
    simulator.reset(duplicates="naive")
    # These tests write patient data with password tokens; the two-factor rule that refuses
    # them by default is tested in test_eeszt_rules.py.
    simulator.admin("PATCH", "/admin/rules", {"require_two_factor": False})
    return simulator


@pytest.fixture(scope="module")
def client(simulator, pki):
    c = EesztClient(base_url=simulator.base_url, files=ClientFiles.from_pki_dir(pki.directory),
                    timeouts=Timeouts(connect=5, read=10))
    yield c
    c.close()


def doctor_token(client, users, i=0):
    u = users[i]
    return client.issue_token(method="password", user_id=u["user_id"], password=u["password"],
                              workstation=u["workstation"]).assertion


def institution_token(client):
    return client.issue_token(method="x509").assertion


def code_of(excinfo) -> str:
    return excinfo.value.code


# --- accepted ---------------------------------------------------------------------------------
def test_signed_request_with_valid_doctor_token_is_accepted(sim, client, demo_users):
    token = doctor_token(client, demo_users)
    request = samples.prescription()
    result = client.submit(request, token)
    assert result.version == 1 and len(result.eeszt_id) >= 32
    records = sim.admin("GET", f"/admin/records?key={request.idempotency_key}")["records"]
    assert [r["eeszt_id"] for r in records] == [result.eeszt_id]
    assert records[0]["subject"] == demo_users[0]["user_id"]
    assert records[0]["message_id"] == str(request.message_id)


@pytest.mark.parametrize("make", [samples.event_start, samples.event_end, samples.ehr_document])
def test_institution_token_may_write_batch_services(sim, client, make):
    assert client.submit(make(), institution_token(client)).eeszt_id


@pytest.mark.parametrize("make", [samples.referral, samples.profile_update])
def test_doctor_token_may_write_referrals_and_profiles(sim, client, demo_users, make):
    assert client.submit(make(), doctor_token(client, demo_users)).eeszt_id


def test_revoke_refers_to_a_recorded_prescription(sim, client, demo_users):
    token = doctor_token(client, demo_users)
    rx = client.submit(samples.prescription(), token)
    assert client.submit(samples.revoke(rx.eeszt_id), token).eeszt_id
    with pytest.raises(ServiceRejected) as again:
        client.submit(samples.revoke(rx.eeszt_id), token)
    assert (again.value.code, again.value.field) == (FaultCode.BUSINESS_RULE.value, "prescriptionId")


# --- refused, each with its own code ------------------------------------------------------------
def _signed_bytes(client, request, token) -> bytes:
    return client.signer.sign_to_bytes(build_call(request).envelope, assertion=token)


def _post_raw(client, request, body: bytes):
    call = build_call(request)
    resp = client.transport.post(call.path, body, soap_action=call.soap_action)
    return parse_submit(resp.status, resp.body, service=call.service.name)


def test_tampered_body_is_refused(sim, client, demo_users):
    request = samples.prescription(patient_name="Teszt Elek")
    body = _signed_bytes(client, request, doctor_token(client, demo_users))
    tampered = body.replace(b"Teszt Elek", b"Teszt Elemer")
    assert tampered != body
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, tampered)
    assert code_of(exc) == FaultCode.SIGNATURE_INVALID.value
    assert sim.stats()["total_records"] == 0


def test_missing_signature_is_refused(sim, client, demo_users):
    request = samples.prescription()
    env = etree.fromstring(_signed_bytes(client, request, doctor_token(client, demo_users)))
    for sig in env.iter(f"{{{DS_NS}}}Signature"):
        if sig.getparent().tag.endswith("Security"):
            sig.getparent().remove(sig)
            break
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, etree.tostring(env))
    assert code_of(exc) == FaultCode.SIGNATURE_MISSING.value


def test_expired_timestamp_is_refused(sim, client, demo_users):
    request = samples.prescription()
    token = doctor_token(client, demo_users)
    stale = client.signer.sign_to_bytes(build_call(request).envelope, assertion=token,
                                        now=datetime.now(timezone.utc) - timedelta(hours=2))
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, stale)
    assert code_of(exc) == FaultCode.TIMESTAMP_STALE.value


def test_certificate_from_a_foreign_ca_is_refused(sim, client, demo_users, tmp_path):
    token = doctor_token(client, demo_users)
    ca_key, ca_cert = make_ca("Foreign Qualified CA")
    key, cert = issue_certificate(ca_key, ca_cert, common_name="Demo Kórház HIS",
                                  organization="Demo Kórház", organization_identifier="H100200")
    from cryptography.hazmat.primitives import serialization

    foreign = WsseSigner(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM))
    request = samples.prescription()
    body = foreign.sign_to_bytes(build_call(request).envelope, assertion=token)
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, body)
    assert code_of(exc) == FaultCode.CERT_UNTRUSTED.value


def test_expired_token_is_refused_as_a_token_problem(sim, client, pki):
    issuer = AssertionIssuer(key_pem=pki.sts_key.read_bytes(), cert_pem=pki.sts_cert.read_bytes())
    expired = issuer.issue(subject="O10001", role="doctor", institution="H100200", method="password",
                           lifetime=timedelta(minutes=10),
                           now=datetime.now(timezone.utc) - timedelta(hours=1))
    with pytest.raises(TokenRejected) as exc:
        client.submit(samples.prescription(), expired)
    assert code_of(exc) == FaultCode.TOKEN_EXPIRED.value


def test_token_not_signed_by_the_sts_is_refused(sim, client, pki):
    key, cert = make_ca("Not the STS")
    from cryptography.hazmat.primitives import serialization

    forger = AssertionIssuer(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM))
    forged = forger.issue(subject="O10001", role="doctor", institution="H100200",
                          method="password", lifetime=timedelta(minutes=10))
    with pytest.raises(TokenRejected) as exc:
        client.submit(samples.prescription(), forged)
    assert code_of(exc) == FaultCode.TOKEN_INVALID.value


def test_institution_token_may_not_write_erecept(sim, client):
    with pytest.raises(ServiceRejected) as exc:
        client.submit(samples.prescription(), institution_token(client))
    assert code_of(exc) == FaultCode.PERMISSION_DENIED.value
    assert sim.stats()["total_records"] == 0


def test_doctor_token_may_not_write_the_event_catalogue(sim, client, demo_users):
    with pytest.raises(ServiceRejected) as exc:
        client.submit(samples.event_start(), doctor_token(client, demo_users))
    assert code_of(exc) == FaultCode.PERMISSION_DENIED.value


def test_request_without_token_is_refused(sim, client):
    with pytest.raises(TokenRejected) as exc:
        client.submit(samples.event_start(), None)
    assert code_of(exc) == FaultCode.TOKEN_MISSING.value


def test_schema_invalid_body_names_the_field(sim, client, demo_users):
    request = samples.prescription()
    env = build_call(request).envelope
    bno = next(e for e in env.iter() if isinstance(e.tag, str) and e.tag.endswith("}bno"))
    bno.text = "not-a-bno"
    body = client.signer.sign_to_bytes(env, assertion=doctor_token(client, demo_users))
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, body)
    assert (code_of(exc), exc.value.field) == (FaultCode.SCHEMA_INVALID.value, "bno")


def test_wrong_taj_check_digit_is_a_business_rule_on_taj(sim, client, demo_users):
    request = samples.prescription()
    env = build_call(request).envelope
    taj = next(e for e in env.iter() if isinstance(e.tag, str) and e.tag.endswith("}taj"))
    taj.text = taj.text[:-1] + str((int(taj.text[-1]) + 1) % 10)
    body = client.signer.sign_to_bytes(env, assertion=doctor_token(client, demo_users))
    with pytest.raises(ServiceRejected) as exc:
        _post_raw(client, request, body)
    assert (code_of(exc), exc.value.field) == (FaultCode.BUSINESS_RULE.value, "taj")


def test_each_refusal_has_a_distinct_stable_code():
    codes = [c.value for c in FaultCode]
    assert len(codes) == len(set(codes))
    assert all(c.is_client for c in FaultCode if not c.value.startswith("SRV-"))
    assert not FaultCode.SERVICE_UNAVAILABLE.is_client


# --- the channel --------------------------------------------------------------------------------
def _raw_tls(sim, pki, *, cert=None, key=None, max_version=None):
    """Open TLS by hand and send one HTTP request; return what came back."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    if max_version:
        ctx.maximum_version = max_version
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    port = int(sim.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /contract/common.xsd HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(100)


CHANNEL_ERRORS = (ssl.SSLError, ConnectionResetError, BrokenPipeError)


def test_no_client_certificate_fails_the_handshake_tls12(sim, pki):
    # TLS 1.2: the server's refusal happens inside the handshake itself.
    with pytest.raises(CHANNEL_ERRORS):
        _raw_tls(sim, pki, max_version=ssl.TLSVersion.TLSv1_2)


def test_no_client_certificate_gets_no_answer_tls13(sim, pki):
    # TLS 1.3: the client finishes its half first; the server aborts the handshake on the
    # missing certificate, so no HTTP answer ever comes back.
    try:
        answer = _raw_tls(sim, pki)
    except CHANNEL_ERRORS:
        answer = b""
    assert answer == b""


def test_gateway_transport_without_access_certificate_is_refused(sim, pki):
    import urllib3

    pool = urllib3.PoolManager(ssl_context=ssl.create_default_context(cafile=str(pki.server_ca_cert)),
                               retries=False)
    with pytest.raises(urllib3.exceptions.HTTPError):
        pool.request("GET", sim.base_url + "/contract/common.xsd", timeout=5)


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_2, None])
def test_client_certificate_from_another_ca_fails_the_handshake(sim, pki, tmp_path, max_version):
    from simulator.pki import write_pem

    ca_key, ca_cert = make_ca("Some Other CA")
    key, cert = issue_certificate(ca_key, ca_cert, common_name="intruder", client=True)
    write_pem(tmp_path / "c.pem", cert)
    write_pem(tmp_path / "c.key", key)
    try:
        answer = _raw_tls(sim, pki, cert=tmp_path / "c.pem", key=tmp_path / "c.key",
                          max_version=max_version)
    except CHANNEL_ERRORS:
        answer = b""
    assert answer == b""


def test_access_certificate_opens_the_channel(sim, pki):
    assert _raw_tls(sim, pki, cert=pki.access_cert, key=pki.access_key).startswith(b"HTTP/1.1 200")


# --- the STS ------------------------------------------------------------------------------------
def test_sts_issues_for_password_x509_and_mobiltoken(sim, client, demo_users):
    u = demo_users[1]
    pw = client.issue_token(method="password", user_id=u["user_id"], password=u["password"])
    otp = client.issue_token(method="mobiltoken", user_id=u["user_id"],
                             otp=pyotp.TOTP(u["totp_secret"]).now())
    inst = client.issue_token(method="x509")
    for token in (pw, otp, inst):
        assert token.expires > token.created
    saml = "urn:oasis:names:tc:SAML:2.0:assertion"
    assert pw.assertion.findtext(f"{{{saml}}}Subject/{{{saml}}}NameID") == u["user_id"]
    assert inst.assertion.findtext(f"{{{saml}}}Subject/{{{saml}}}NameID") == "H100200"
    conditions = pw.assertion.find(f"{{{saml}}}Conditions")
    assert conditions.get("NotBefore") and conditions.get("NotOnOrAfter")
    stats = sim.stats()
    assert stats["sts_issues"] == {"password": 1, "mobiltoken": 1, "x509": 1}


def test_sts_refuses_a_wrong_password_and_a_reused_one_time_code(sim, client, demo_users):
    u = demo_users[2]
    with pytest.raises(ServiceRejected) as exc:
        client.issue_token(method="password", user_id=u["user_id"], password="wrong")
    assert code_of(exc) == FaultCode.AUTH_FAILED.value
    code = pyotp.TOTP(u["totp_secret"]).now()
    client.issue_token(method="mobiltoken", user_id=u["user_id"], otp=code)
    with pytest.raises(ServiceRejected) as reused:
        client.issue_token(method="mobiltoken", user_id=u["user_id"], otp=code)
    assert code_of(reused) == FaultCode.AUTH_FAILED.value


def test_token_lifetime_is_configurable_at_run_time(sim, client):
    sim.set_faults(token_lifetime_s=120)
    token = client.issue_token(method="x509")
    assert abs((token.expires - token.created).total_seconds() - 120) < 1


# --- duplicates ---------------------------------------------------------------------------------
def test_naive_mode_stores_a_repeated_key_twice(sim, client, demo_users):
    token = doctor_token(client, demo_users)
    request = samples.prescription()
    first = client.submit(request, token)
    second = client.submit(request, token)
    assert first.eeszt_id != second.eeszt_id
    stats = sim.stats()
    assert stats["total_records"] == 2 and stats["repeated_keys"] == 1


def test_dedupe_mode_returns_the_first_id(sim, client, demo_users):
    sim.set_faults(duplicates="dedupe")
    token = doctor_token(client, demo_users)
    request = samples.prescription()
    first = client.submit(request, token)
    second = client.submit(request, token)
    assert second.eeszt_id == first.eeszt_id
    stats = sim.stats()
    assert stats["total_records"] == 1 and stats["repeated_keys"] == 0


def test_query_by_idempotency_key_tells_whether_a_request_landed(sim, client, demo_users):
    token = doctor_token(client, demo_users)
    request = samples.prescription()
    assert client.query("eRecept", request.idempotency_key, token) == []
    landed = client.submit(request, token)
    assert [r.eeszt_id for r in client.query("eRecept", request.idempotency_key, token)] == [landed.eeszt_id]


# --- faults -------------------------------------------------------------------------------------
def test_injected_errors_are_server_faults_and_store_nothing(sim, client):
    token = institution_token(client)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ServiceUnavailable) as exc:
        client.submit(samples.event_start(), token)
    assert code_of(exc) == FaultCode.INTERNAL_ERROR.value
    assert not isinstance(exc.value, AmbiguousOutcome)
    assert sim.stats()["total_records"] == 0


def test_outage_window_answers_503_until_it_ends(sim, client):
    token = institution_token(client)
    now = datetime.now(timezone.utc)
    sim.set_faults(outages=[{"start": (now - timedelta(seconds=1)).isoformat(),
                             "end": (now + timedelta(seconds=60)).isoformat()}])
    with pytest.raises(ServiceUnavailable) as exc:
        client.submit(samples.event_start(), token)
    assert code_of(exc) == FaultCode.SERVICE_UNAVAILABLE.value
    sim.set_faults(outages=[])
    assert client.submit(samples.event_start(), token).eeszt_id


def test_reset_before_processing_stores_nothing(sim, client):
    token = institution_token(client)
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(ServiceUnavailable):
        client.submit(samples.event_start(), token)
    sim.set_faults(reset_rate=0.0)
    assert sim.stats()["total_records"] == 0
    assert sim.stats()["injected"] == {"reset": 1}


def test_ambiguous_fault_stores_the_record_but_loses_the_answer(sim, client):
    token = institution_token(client)
    request = samples.event_start()
    sim.set_faults(ambiguous_rate=1.0)
    with pytest.raises(AmbiguousOutcome):
        client.submit(request, token)
    sim.set_faults(ambiguous_rate=0.0)
    assert len(client.query("esemenyKatalogus", request.idempotency_key, token)) == 1


def test_hang_times_out_as_an_ambiguous_outcome(sim, pki):
    sim.set_faults(hang_rate=1.0, hang_s=5)
    c = EesztClient(base_url=sim.base_url, files=ClientFiles.from_pki_dir(pki.directory),
                    timeouts=Timeouts(connect=2, read=0.5))
    try:
        with pytest.raises(AmbiguousOutcome):
            c.submit(samples.event_start(), None)
    finally:
        c.close()
        sim.set_faults(hang_rate=0.0)


def test_latency_is_added(sim, client):
    token = institution_token(client)
    sim.set_faults(latency_ms=300)
    t0 = time.monotonic()
    client.submit(samples.event_start(), token)
    # A lower bound only: injected latency can make a call slower, never faster.
    assert time.monotonic() - t0 >= 0.3


# --- admin --------------------------------------------------------------------------------------
def test_admin_rejects_an_invalid_fault_setting_naming_the_field(sim):
    with pytest.raises(urllib.error.HTTPError) as exc:
        sim.set_faults(error_rate=2.0)
    assert exc.value.code == 422
    body = json.loads(exc.value.read())
    assert body["errors"][0]["field"] == "error_rate"


def test_stats_report_counts_and_cpu_time(sim, client, demo_users):
    token = doctor_token(client, demo_users)
    for _ in range(3):
        client.submit(samples.prescription(), token)
    stats = sim.stats()
    assert stats["records"] == {"eRecept": {"receptRogzites": 3}}
    assert stats["sts_issues"] == {"password": 1}
    assert stats["cpu_us_per_request"]["services"] > 0
    assert stats["duplicates_mode"] == "naive"


def test_wsdl_is_served(sim, pki):
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    ctx.load_cert_chain(str(pki.access_cert), str(pki.access_key))
    with urllib.request.urlopen(sim.base_url + "/services/eRecept?wsdl", context=ctx, timeout=5) as r:
        assert b"receptRogzites" in r.read()
