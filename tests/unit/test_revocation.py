"""Revocation in the test PKI: the three qualified CAs, CRL files, `pki revoke`, the CRL lookup,
the OCSP responder's answers, the worker's OCSP check, the WS-Security and channel checks,
the metrics and `eeszt-gw status` rows. No network but loopback refusals."""

from __future__ import annotations

import shutil
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from lxml import etree
from prometheus_client import CollectorRegistry, generate_latest

from eeszt_gw.cli import main as cli_main
from eeszt_gw.ops.status import attention
from eeszt_gw.ops.status_certs import check_certificates
from schemas.soap import FaultCode
from simulator.channel import ChannelChecks
from simulator.ocsp import respond
from simulator.pki import QUALIFIED_CAS, PkiPaths, init_pki, issue_certificate, make_ca, write_pem
from simulator.revocation import (
    AlreadyRevoked,
    CrlStore,
    UnknownIssuer,
    build_crl,
    crl_number,
    load_crl,
    revoke_certificate,
    write_crl,
)
from simulator.soapio import SoapFault
from simulator.wsse import WsseError, WsseVerifier
from tests import samples
from workers.cert_status import CertificateWatch, check_certificate, parse_answer
from workers.middleware.metrics import CertificateStatusCollector
from workers.client.soap import build_call
from workers.client.wsse import WsseSigner

def now() -> datetime:
    """The time of the call: a test may run minutes after this module was imported."""
    return datetime.now(timezone.utc)


@pytest.fixture()
def pki(tmp_path: Path) -> PkiPaths:
    """A fresh PKI per test: the tests revoke its certificates."""
    return init_pki(tmp_path / "pki", institution_id="H100200", institution_name="Teszt Kórház")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ca(pki: PkiPaths, stem: str):
    d = pki.directory
    return (load_pem_private_key((d / f"{stem}.key").read_bytes(), password=None),
            _cert(d / f"{stem}.pem"))


def _signer(key, cert) -> WsseSigner:
    return WsseSigner(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM))


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
                  ) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


# --- the PKI -----------------------------------------------------------------------------------
def test_init_pki_makes_three_simulated_qualified_cas_each_with_an_empty_signed_crl(pki):
    # Given a fresh PKI
    names = [_cert(ca.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
             for ca in pki.qualified_cas()]
    # Then the three qualified CAs are named after the real three, marked simulated,
    assert names == ["NISZ GovCA (simulated)", "Netlock (simulated)", "Microsec (simulated)"]
    assert [stem for stem, _ in QUALIFIED_CAS] == ["qualified-ca", "netlock-ca", "microsec-ca"]
    # and every revoking CA (WAF + the three) has a DER CRL it signed, number 1, nothing on it
    for ca in pki.revoking_cas():
        data = ca.crl.read_bytes()
        assert not data.startswith(b"-----")
        crl = load_crl(data)
        assert crl.is_signature_valid(_cert(ca.cert).public_key())
        assert crl.issuer == _cert(ca.cert).subject
        assert crl_number(crl) == 1 and len(crl) == 0
        assert crl.next_update_utc > now()


def test_institution_and_access_certificates_name_the_ocsp_responder_and_crl(tmp_path):
    # Given a PKI made for a revocation service on another address
    pki = init_pki(tmp_path / "p", institution_id="H123456", revocation_url="http://10.1.2.3:9000/")
    # Then institution.pem comes from NISZ GovCA (qualified-ca.pem) and names OCSP + its CRL
    inst, access = _cert(pki.institution_cert), _cert(pki.access_cert)
    inst.verify_directly_issued_by(_cert(pki.qualified_ca_cert))
    for cert, crl_name in ((inst, "qualified-ca.crl"), (access, "waf-ca.crl")):
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert [(d.access_method, d.access_location.value) for d in aia] == [
            (AuthorityInformationAccessOID.OCSP, "http://10.1.2.3:9000/ocsp")]
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert cdp[0].full_name[0].value == f"http://10.1.2.3:9000/crl/{crl_name}"
    # and the access certificate carries the institution id, tying it to the signer
    assert access.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value == (
        "H123456")


# --- pki revoke --------------------------------------------------------------------------------
def test_revoke_adds_the_serial_bumps_the_number_and_re_signs(pki):
    # Given the institution certificate
    cert = _cert(pki.institution_cert)
    # When it is revoked for key compromise
    done = revoke_certificate(pki.revoking_cas(), cert, reason=x509.ReasonFlags.key_compromise)
    # Then its CA's CRL lists it, with the reason, number 2, still signed by the CA
    assert done.ca.name == "qualified-ca" and done.crl_number == 2 and done.entries == 1
    crl = load_crl(pki.qualified_ca_crl.read_bytes())
    assert crl.is_signature_valid(_cert(pki.qualified_ca_cert).public_key())
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise)
    assert crl_number(crl) == 2
    # and the other CRLs are untouched
    assert len(load_crl(pki.waf_ca_crl.read_bytes())) == 0


def test_revoke_refuses_an_already_revoked_an_unknown_issuer_and_a_ca_itself(pki, tmp_path):
    cert = _cert(pki.access_cert)
    revoke_certificate(pki.revoking_cas(), cert)
    with pytest.raises(AlreadyRevoked, match="already on waf-ca.crl"):
        revoke_certificate(pki.revoking_cas(), cert)
    assert crl_number(load_crl(pki.waf_ca_crl.read_bytes())) == 2  # not bumped again
    foreign_key, foreign_ca = make_ca("Foreign Qualified CA")
    _, foreign = issue_certificate(foreign_key, foreign_ca, common_name="Foreign HIS")
    with pytest.raises(UnknownIssuer, match="no CA in the PKI folder issued"):
        revoke_certificate(pki.revoking_cas(), foreign)
    with pytest.raises(UnknownIssuer, match="cannot revoke itself"):
        revoke_certificate(pki.revoking_cas(), _cert(pki.netlock_ca_cert))


def test_cli_pki_revoke_prints_what_it_did_and_names_the_problem(pki, capsys):
    # When the command revokes the institution certificate
    rc = cli_main(["pki", "revoke", str(pki.institution_cert), "--pki-dir", str(pki.directory),
                   "--reason", "superseded"])
    out = capsys.readouterr().out
    # Then it says which CRL, which serial, which number
    assert rc == 0
    assert "qualified-ca.crl" in out and "CRL number 2" in out and "superseded" in out
    assert f"{_cert(pki.institution_cert).serial_number:x}" in out
    # And a second time is refused with exit 1, an unknown issuer and a non-certificate with 2
    assert cli_main(["pki", "revoke", str(pki.institution_cert), "--pki-dir",
                     str(pki.directory)]) == 1
    assert "already revoked" in capsys.readouterr().err
    assert cli_main(["pki", "revoke", str(pki.server_cert), "--pki-dir", str(pki.directory)]) == 2
    assert "CERT: no CA in the PKI folder issued" in capsys.readouterr().err
    assert cli_main(["pki", "revoke", str(pki.readme), "--pki-dir", str(pki.directory)]) == 2
    assert "is not a PEM certificate" in capsys.readouterr().err


def test_cli_pki_revoke_takes_the_pki_folder_from_the_gateways_setting(pki, monkeypatch, capsys):
    # Given the PKI folder only in the environment, as the worker reads it
    monkeypatch.delenv("EESZT_CONFIG", raising=False)
    monkeypatch.setenv("EESZT_PKI_DIR", str(pki.directory))
    # When the command revokes the access certificate / Then it finds the WAF CA there
    assert cli_main(["pki", "revoke", str(pki.access_cert)]) == 0
    assert "waf-ca.crl" in capsys.readouterr().out
    # And a folder that is not there is named, with exit 2
    monkeypatch.setenv("EESZT_PKI_DIR", str(pki.directory / "missing"))
    assert cli_main(["pki", "revoke", str(pki.access_cert)]) == 2
    assert "error: --pki-dir: no folder" in capsys.readouterr().err


# --- the CRL lookup ----------------------------------------------------------------------------
def test_crl_store_sees_a_revocation_without_being_rebuilt(pki):
    # Given a store over the PKI's CRLs and a good certificate
    store = CrlStore(pki.revoking_cas())
    cert = _cert(pki.institution_cert)
    assert store.status(cert).status == "good"
    # When `pki revoke` rewrites the CRL file
    revoke_certificate(pki.revoking_cas(), cert)
    # Then the same store answers revoked, with the time
    status = store.status(cert)
    assert status.revoked and status.ca == "qualified-ca" and status.revoked_at is not None


def test_crl_store_is_unknown_without_a_usable_crl(pki):
    cert = _cert(pki.access_cert)
    # Given a WAF CRL signed by another key
    other_key, _ = make_ca("EESZT WAF access CA")
    write_crl(pki.waf_ca_crl, build_crl(other_key, _cert(pki.waf_ca_cert), number=9))
    store = CrlStore(pki.revoking_cas())
    # Then the status is unknown, not good
    assert store.status(cert).status == "unknown"
    # And a missing CRL is unknown too
    pki.waf_ca_crl.unlink()
    assert store.status(cert).status == "unknown"
    # And a certificate of no known CA is unknown
    assert store.status(_cert(pki.server_cert)).status == "unknown"


# --- the OCSP responder ------------------------------------------------------------------------
def test_ocsp_answers_good_then_revoked_signed_by_the_issuing_ca_with_the_nonce(pki):
    store = CrlStore(pki.revoking_cas())
    cert, issuer = _cert(pki.institution_cert), _cert(pki.qualified_ca_cert)
    # When asked about a good certificate
    der, outcome = respond(_ocsp_request(cert, issuer, b"n" * 16), store)
    answer = ocsp.load_der_ocsp_response(der)
    # Then it is good, about that serial, signed by the CA, with the nonce echoed
    assert outcome == "good"
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.serial_number == cert.serial_number
    issuer.public_key().verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(),
                               answer.signature_hash_algorithm)
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    # When the certificate is revoked
    revoke_certificate(pki.revoking_cas(), cert, reason=x509.ReasonFlags.cessation_of_operation)
    answer = ocsp.load_der_ocsp_response(respond(_ocsp_request(cert, issuer), store)[0])
    # Then the next answer says revoked, with the reason
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.cessation_of_operation


def test_ocsp_answers_unknown_unauthorized_and_malformed(pki):
    store = CrlStore(pki.revoking_cas())
    # a CA of the PKI whose CRL is gone: unknown
    netlock_key, netlock = _ca(pki, "netlock-ca")
    _, leaf = issue_certificate(netlock_key, netlock, common_name="Netlock HIS",
                                organization_identifier="H100200")
    pki.netlock_ca_crl.unlink()
    der, outcome = respond(_ocsp_request(leaf, netlock), store)
    assert outcome == "unknown"
    assert ocsp.load_der_ocsp_response(der).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    # a foreign CA: unauthorized (no key to answer for it)
    f_key, f_ca = make_ca("Foreign CA")
    _, foreign = issue_certificate(f_key, f_ca, common_name="x")
    der, outcome = respond(_ocsp_request(foreign, f_ca), store)
    assert outcome == "unauthorized"
    assert ocsp.load_der_ocsp_response(der).response_status is (
        ocsp.OCSPResponseStatus.UNAUTHORIZED)
    # bytes that are no request: malformed
    der, outcome = respond(b"\x30\x03garbage", store)
    assert outcome == "malformed"
    assert ocsp.load_der_ocsp_response(der).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST)


# --- the worker's check ------------------------------------------------------------------------
def test_worker_parses_good_and_revoked_and_distrusts_a_forged_or_foreign_answer(pki):
    store = CrlStore(pki.revoking_cas())
    cert, issuer = _cert(pki.access_cert), _cert(pki.waf_ca_cert)
    nonce = b"k" * 16
    good = respond(_ocsp_request(cert, issuer, nonce), store)[0]
    assert parse_answer(good, cert, issuer, nonce=nonce, now=now())[0] == "good"
    revoke_certificate(pki.revoking_cas(), cert, reason=x509.ReasonFlags.key_compromise)
    revoked = respond(_ocsp_request(cert, issuer, nonce), store)[0]
    status, at, detail = parse_answer(revoked, cert, issuer, nonce=nonce, now=now())
    assert (status, detail) == ("revoked", "key_compromise") and at is not None
    # another request's nonce: not trusted
    with pytest.raises(Exception, match="another request's nonce"):
        parse_answer(revoked, cert, issuer, nonce=b"x" * 16, now=now())
    # an answer about the institution certificate does not answer for the access certificate
    other = respond(_ocsp_request(_cert(pki.institution_cert), _cert(pki.qualified_ca_cert)),
                    store)[0]
    with pytest.raises(Exception, match="another certificate"):
        parse_answer(other, cert, issuer, nonce=None, now=now())
    # an answer "good" signed by a key that is not the issuer's: not trusted
    forger_key, forger = make_ca("EESZT WAF access CA")  # the same name, another key
    forged = (ocsp.OCSPResponseBuilder()
              .add_response(cert=cert, issuer=issuer, algorithm=hashes.SHA1(),
                            cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now(),
                            next_update=now() + timedelta(hours=1), revocation_time=None,
                            revocation_reason=None)
              .responder_id(ocsp.OCSPResponderEncoding.HASH, forger).certificates([forger])
              .sign(forger_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(Exception, match="not signed by the certificate's issuer"):
        parse_answer(forged, cert, issuer, nonce=None, now=now())


def test_worker_check_is_unknown_not_fatal_when_the_responder_is_unreachable(pki):
    # Given a port nobody listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # When the worker checks its certificates there
    watch = CertificateWatch(pki.directory, ocsp_url=f"http://127.0.0.1:{port}/ocsp",
                             timeout_s=2)
    results = watch.check_now()
    # Then both are unknown, each saying why, and nothing raised
    assert set(results) == {"institution.pem", "access.pem"}
    assert {r.status for r in results.values()} == {"unknown"}
    assert all("unreachable" in r.detail for r in results.values())


def test_worker_check_without_an_issuer_or_url_is_unknown(pki, tmp_path):
    # Given only the institution certificate, without its CA, in a folder
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(pki.institution_cert, lonely / "institution.pem")
    result = check_certificate(lonely / "institution.pem", lonely,
                               ocsp_url="http://127.0.0.1:9/ocsp")
    assert result.status == "unknown" and "issuer" in result.detail
    # And a certificate without AIA and no URL set
    key, ca = _ca(pki, "qualified-ca")
    _, bare = issue_certificate(key, ca, common_name="bare")
    write_pem(lonely / "bare.pem", bare)
    result = check_certificate(lonely / "bare.pem", pki.directory)
    assert result.status == "unknown" and "no OCSP URL" in result.detail


def test_metrics_expose_revoked_and_the_ocsp_status_per_certificate():
    # Given a watch that found one certificate revoked and one unknown
    watch = SimpleNamespace(results=lambda: {
        "institution.pem": SimpleNamespace(status="revoked"),
        "access.pem": SimpleNamespace(status="unknown")})
    registry = CollectorRegistry()
    registry.register(CertificateStatusCollector(watch))
    text = generate_latest(registry).decode()
    # Then the gauges say so
    assert 'eeszt_certificate_revoked{certificate="institution.pem"} 1.0' in text
    assert 'eeszt_certificate_revoked{certificate="access.pem"} 0.0' in text
    assert 'eeszt_certificate_ocsp_status{certificate="access.pem",status="unknown"} 1.0' in text
    assert 'eeszt_certificate_ocsp_status{certificate="access.pem",status="good"} 0.0' in text


# --- the simulator's checks --------------------------------------------------------------------
def test_wsse_refuses_a_revoked_signer_even_when_its_chain_is_cached(pki):
    # Given a verifier trusting the three CAs, with the CRL lookup
    store = CrlStore(pki.revoking_cas())
    verifier = WsseVerifier(trusted_ca_pems=[c.cert.read_bytes() for c in pki.qualified_cas()],
                            revoked_at=lambda c: store.status(c).revoked_at)
    key = load_pem_private_key(pki.institution_key.read_bytes(), password=None)
    signer = _signer(key, _cert(pki.institution_cert))

    def message() -> etree._Element:
        return etree.fromstring(signer.sign_to_bytes(build_call(samples.prescription()).envelope))

    assert verifier.verify(message()).institution_id == "H100200"  # chain now cached
    # When the certificate is revoked
    revoke_certificate(pki.revoking_cas(), _cert(pki.institution_cert))
    # Then the next message is refused CERT_REVOKED
    with pytest.raises(WsseError) as info:
        verifier.verify(message())
    assert info.value.code is FaultCode.CERT_REVOKED
    assert "revoked" in info.value.message


def test_channel_checks_tie_the_access_certificate_to_the_signer(pki):
    store = CrlStore(pki.revoking_cas())
    checks = ChannelChecks(store)
    der = _cert(pki.access_cert).public_bytes(serialization.Encoding.DER)
    ssl_object = SimpleNamespace(getpeercert=lambda binary_form: der)
    transport = SimpleNamespace(get_extra_info=lambda name: ssl_object if name == "ssl_object"
                                else None)
    send = SimpleNamespace(__self__=SimpleNamespace(transport=transport))
    # Given the request's peer certificate (access.pem of H100200)
    peer = checks.enter(send)
    assert peer.institution_id == "H100200"
    checks.check_revoked()
    checks.check_signer("H100200")
    # Then a signer of another institution is refused TLS-002
    with pytest.raises(SoapFault) as info:
        checks.check_signer("H999999")
    assert info.value.code is FaultCode.ACCESS_CERT_INSTITUTION_MISMATCH
    assert "H100200" in info.value.message and "H999999" in info.value.message
    # And once the access certificate is revoked, TLS-001
    revoke_certificate(pki.revoking_cas(), _cert(pki.access_cert))
    with pytest.raises(SoapFault) as info:
        checks.check_revoked()
    assert info.value.code is FaultCode.ACCESS_CERT_REVOKED


# --- eeszt-gw status ---------------------------------------------------------------------------
def test_status_marks_a_revoked_certificate_as_needing_attention(pki):
    # Given the PKI folder after `pki revoke access.pem`
    revoke_certificate(pki.revoking_cas(), _cert(pki.access_cert))
    certs = check_certificates(pki.directory, now=now(), warn_days=30)
    rows = {c["file"]: c for c in certs}
    # Then access.pem is revoked, institution.pem is not
    assert rows["access.pem"]["state"] == "revoked" and rows["access.pem"]["revoked_at"]
    assert rows["institution.pem"]["state"] == "ok"
    # And the report needs attention because of it
    report = {"dead_letters": {"total": 0}, "totals": {"over_time_limit": 0, "parked": 0},
              "certificates": certs, "time_limit_s": 600, "circuits": []}
    notes = attention(report)
    assert len(notes) == 1 and notes[0].startswith("certificate access.pem: revoked (since ")
