"""Revocation and trust over real HTTPS: the simulator's three qualified CAs, its CRL and OCSP
checks after `eeszt-gw pki revoke`, the access certificate tied to the signer, and the worker's
own OCSP check (its metrics) and `eeszt-gw status`.

Each test module gets its own PKI and simulator: these tests revoke certificates.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import ocsp

from schemas.soap import FaultCode
from simulator.launch import ROOT, SimulatorProcess, start_simulator
from simulator.pki import PkiPaths, init_pki, issue_certificate, make_ca, write_pem
from simulator.revocation import load_crl
from simulator.users import write_demo_users
from tests import samples
from workers.cert_status import CertificateWatch
from workers.client.client import ClientFiles, EesztClient
from workers.errors import ServiceRejected
from workers.client.transport import Timeouts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rev_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    directory = tmp_path_factory.mktemp("rev") / "pki"
    paths = init_pki(directory, institution_id="H100200", institution_name="Teszt Kórház")
    write_demo_users(directory / "users.json", institution="H100200", count=2)
    return paths


@pytest.fixture(scope="module")
def sim(rev_pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[SimulatorProcess]:
    s = start_simulator(rev_pki.directory, tmp_path_factory.mktemp("rev-sim"))
    yield s
    s.stop()


def _ca(pki: PkiPaths, stem: str):
    d = pki.directory
    return (load_pem_private_key((d / f"{stem}.key").read_bytes(), password=None),
            x509.load_pem_x509_certificate((d / f"{stem}.pem").read_bytes()))


def gateway(pki: PkiPaths, directory: Path, *, signer_ca: str | None = "qualified-ca",
            signer_institution: str = "H100200", access_institution: str | None = None,
            foreign_signer: bool = False) -> ClientFiles:
    """The files of a gateway: a freshly minted signing certificate from ``signer_ca`` (or a
    foreign CA), and the PKI's access certificate, or a fresh one for ``access_institution``."""
    directory.mkdir(parents=True, exist_ok=True)
    if foreign_signer:
        ca_key, ca_cert = make_ca("Foreign Qualified CA")
    else:
        ca_key, ca_cert = _ca(pki, signer_ca)
    key, cert = issue_certificate(ca_key, ca_cert, common_name=f"{signer_institution} HIS",
                                  organization="Teszt Kórház",
                                  organization_identifier=signer_institution)
    write_pem(directory / "institution.key", key)
    write_pem(directory / "institution.pem", cert)
    if access_institution is None:
        shutil.copy(pki.access_key, directory / "access.key")
        shutil.copy(pki.access_cert, directory / "access.pem")
    else:
        waf_key, waf_cert = _ca(pki, "waf-ca")
        a_key, a_cert = issue_certificate(waf_key, waf_cert,
                                          common_name=f"{access_institution} HIS access",
                                          organization_identifier=access_institution)
        write_pem(directory / "access.key", a_key)
        write_pem(directory / "access.pem", a_cert)
    shutil.copy(pki.server_ca_cert, directory / "server-ca.pem")
    return ClientFiles.from_pki_dir(directory)


def client_of(sim: SimulatorProcess, files: ClientFiles) -> EesztClient:
    return EesztClient(base_url=sim.base_url, files=files, timeouts=Timeouts(connect=5, read=10))


def revoke(pki: PkiPaths, cert: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "pki", "revoke", str(cert),
                           "--pki-dir", str(pki.directory), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def refused(call) -> ServiceRejected:
    with pytest.raises(ServiceRejected) as info:
        call()
    return info.value


# --- trust ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ca", ["qualified-ca", "netlock-ca", "microsec-ca"])
def test_a_signing_certificate_from_each_qualified_ca_is_accepted(sim, rev_pki, tmp_path, ca):
    # Given a gateway whose institution certificate comes from this qualified CA
    client = client_of(sim, gateway(rev_pki, tmp_path / ca, signer_ca=ca))
    try:
        # When it logs in with it and writes an event
        token = client.issue_token(method="x509").assertion
        # Then both are accepted
        assert client.submit(samples.event_start(), token).eeszt_id
    finally:
        client.close()


def test_a_signing_certificate_from_a_foreign_ca_is_refused(sim, rev_pki, tmp_path):
    client = client_of(sim, gateway(rev_pki, tmp_path / "foreign", foreign_signer=True))
    try:
        assert refused(lambda: client.issue_token(method="x509")).code == (
            FaultCode.CERT_UNTRUSTED.value)
    finally:
        client.close()


# --- revocation, each with its own code ---------------------------------------------------------
def test_a_revoked_signing_certificate_is_refused_wsse_009(sim, rev_pki, tmp_path):
    # Given a gateway signing with a Netlock certificate, whose chain the simulator has cached
    files = gateway(rev_pki, tmp_path / "gw", signer_ca="netlock-ca")
    client = client_of(sim, files)
    try:
        token = client.issue_token(method="x509").assertion
        assert client.submit(samples.event_start(), token).eeszt_id
        # When `eeszt-gw pki revoke` puts it on Netlock's CRL (the simulator keeps running)
        done = revoke(rev_pki, files.institution_cert, "--reason", "key_compromise")
        assert "netlock-ca.crl" in done.stdout
        # Then the next call with the token it already has, and a new login, are refused
        assert refused(lambda: client.submit(samples.event_start(), token)).code == (
            FaultCode.CERT_REVOKED.value)
        assert refused(lambda: client.issue_token(method="x509")).code == (
            FaultCode.CERT_REVOKED.value)
    finally:
        client.close()


def test_a_revoked_access_certificate_is_refused_tls_001(sim, rev_pki, tmp_path):
    # Given a gateway with its own access certificate, connected and logged in
    files = gateway(rev_pki, tmp_path / "gw", access_institution="H100200")
    client = client_of(sim, files)
    try:
        token = client.issue_token(method="x509").assertion
        # When the access certificate is revoked at the WAF CA
        assert "waf-ca.crl" in revoke(rev_pki, files.access_cert).stdout
        # Then the next request on the same connection is refused TLS-001, and a login too
        fault = refused(lambda: client.submit(samples.event_start(), token))
        assert fault.code == FaultCode.ACCESS_CERT_REVOKED.value
        assert refused(lambda: client.issue_token(method="x509")).code == (
            FaultCode.ACCESS_CERT_REVOKED.value)
    finally:
        client.close()


def test_an_access_certificate_of_another_institution_is_refused_tls_002(sim, rev_pki, tmp_path):
    # Given H100200's signing certificate over H100300's access certificate
    client = client_of(sim, gateway(rev_pki, tmp_path / "gw", access_institution="H100300"))
    try:
        fault = refused(lambda: client.issue_token(method="x509"))
        assert fault.code == FaultCode.ACCESS_CERT_INSTITUTION_MISMATCH.value
        assert "H100300" in str(fault) and "H100200" in str(fault)
    finally:
        client.close()


# --- the OCSP responder and the CRLs over HTTP --------------------------------------------------
def _ask(url: str, cert: x509.Certificate, issuer: x509.Certificate, *, get: bool = False
         ) -> ocsp.OCSPResponse:
    der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build() \
        .public_bytes(serialization.Encoding.DER)
    if get:
        request = urllib.request.Request(url + "/" + base64.b64encode(der).decode())
    else:
        request = urllib.request.Request(url, data=der, method="POST",
                                         headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/ocsp-response"
        return ocsp.load_der_ocsp_response(resp.read())


def test_ocsp_responder_and_crls_follow_pki_revoke(sim, rev_pki, tmp_path):
    # Given a fresh Microsec certificate
    ca_key, ca_cert = _ca(rev_pki, "microsec-ca")
    _, cert = issue_certificate(ca_key, ca_cert, common_name="HIS", organization_identifier="H1")
    write_pem(tmp_path / "leaf.pem", cert)
    # Then OCSP (POST and GET) says good
    assert _ask(sim.ocsp_url, cert, ca_cert).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert _ask(sim.ocsp_url, cert, ca_cert, get=True).certificate_status is (
        ocsp.OCSPCertStatus.GOOD)
    # When it is revoked
    revoke(rev_pki, tmp_path / "leaf.pem", "--reason", "superseded")
    # Then OCSP says revoked, with the reason, without a restart
    answer = _ask(sim.ocsp_url, cert, ca_cert)
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.superseded
    # And the CRL served over HTTP lists it
    crl_url = sim.ocsp_url.removesuffix("/ocsp") + "/crl/microsec-ca.crl"
    with urllib.request.urlopen(crl_url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/pkix-crl"
        crl = load_crl(resp.read())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_worker_certificate_check_reports_revoked_after_pki_revoke(sim, rev_pki, tmp_path):
    # Given the worker's check of a gateway's own certificates, against the simulator's OCSP
    files = gateway(rev_pki, tmp_path / "gw", signer_ca="qualified-ca",
                    access_institution="H100200")
    shutil.copy(rev_pki.qualified_ca_cert, files.institution_cert.parent / "qualified-ca.pem")
    shutil.copy(rev_pki.waf_ca_cert, files.institution_cert.parent / "waf-ca.pem")
    watch = CertificateWatch(files.institution_cert.parent, ocsp_url=sim.ocsp_url, timeout_s=5)
    assert {n: r.status for n, r in watch.check_now().items()} == {
        "institution.pem": "good", "access.pem": "good"}
    # When the institution certificate is revoked
    revoke(rev_pki, files.institution_cert)
    # Then the next check says revoked for it, good for the access certificate
    after = watch.check_now()
    assert after["institution.pem"].status == "revoked"
    assert after["institution.pem"].revoked_at is not None
    assert after["access.pem"].status == "good"


# --- a real worker process: its metrics, and `eeszt-gw status` -----------------------------------
def _revocation_gauges(port: int) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, s.labels.get("certificate", "") + ":" + s.labels.get("status", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name in ("eeszt_certificate_revoked", "eeszt_certificate_ocsp_status")}


def _wait_for(port: int, key: tuple[str, str], log: Path) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + 60
    gauges: dict[tuple[str, str], float] = {}
    while time.monotonic() < deadline:
        gauges = _revocation_gauges(port)
        if gauges.get(key) == 1.0:
            return gauges
        time.sleep(0.2)
    raise AssertionError(f"{key} never became 1: {gauges}\n{log.read_text()[-3000:]}")


@pytest.mark.rabbitmq
def test_worker_metrics_and_status_show_the_revoked_institution_certificate(broker_url,
                                                                              tmp_path):
    from tests.conftest import free_port, start_workers
    from tests.integration.test_status import status_json

    # Given a PKI of its own (this test revokes its institution certificate), a simulator, and
    # a worker process asking the simulator's OCSP responder every second
    pki = init_pki(tmp_path / "pki", institution_id="H100200", institution_name="Teszt Kórház")
    write_demo_users(pki.directory / "users.json", institution="H100200", count=1)
    simulator = start_simulator(pki.directory, tmp_path)
    port = free_port()
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, threads=2,
                         queues="batch", workstations={},  # no doctor logs in here
                         extra=("--metrics-port", str(port), "--ocsp-url", simulator.ocsp_url,
                                "--cert-check-interval-s", "1"))
    try:
        # Then at start both certificates are good, and status finds nothing revoked
        gauges = _wait_for(port, ("eeszt_certificate_ocsp_status", "institution.pem:good"),
                           pool.log_path)
        assert gauges[("eeszt_certificate_revoked", "institution.pem:")] == 0.0
        _wait_for(port, ("eeszt_certificate_ocsp_status", "access.pem:good"), pool.log_path)
        _, report = status_json(broker_url, pki.directory, "--wait-s", "0.3", "--no-rabbitmqctl")
        assert {c["file"]: c["state"] for c in report["certificates"]}["institution.pem"] == "ok"
        assert not [a for a in report["attention"] if "institution.pem" in a]
        # When `eeszt-gw pki revoke` revokes the institution certificate
        revoke(pki, pki.institution_cert)
        # Then the worker's metrics say revoked (the access certificate stays good)
        gauges = _wait_for(port, ("eeszt_certificate_revoked", "institution.pem:"),
                           pool.log_path)
        assert gauges[("eeszt_certificate_ocsp_status", "institution.pem:revoked")] == 1.0
        assert gauges[("eeszt_certificate_revoked", "access.pem:")] == 0.0
        # And `eeszt-gw status` marks it revoked, needing attention (exit code 1)
        code, report = status_json(broker_url, pki.directory, "--wait-s", "0.3",
                                   "--no-rabbitmqctl")
        assert {c["file"]: c["state"] for c in report["certificates"]}["institution.pem"] == (
            "revoked")
        assert code == 1 and report["healthy"] is False
        assert [a for a in report["attention"] if a.startswith("certificate institution.pem: "
                                                                "revoked")]
        # And the worker logged it as an error, and kept running
        log = pool.log_path.read_text()
        assert "certificate institution.pem (serial" in log and "is REVOKED" in log
        assert pool.proc.poll() is None
    finally:
        pool.stop()
        simulator.stop()
