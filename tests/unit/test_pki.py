"""The test PKI: files, permissions, certificate contents, refusal to overwrite."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulator.pki import (
    PkiPaths,
    cert_days_left,
    init_pki,
    issue_certificate,
    make_ca,
    new_rsa_key,
    write_pem,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(
        tmp_path_factory.mktemp("pki") / "pki",
        institution_id="H999000",
        institution_name="Teszt Kórház",
        server_hosts=("localhost", "127.0.0.1", "sim.example"),
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_pki_writes_every_file_with_private_keys_0600(pki: PkiPaths) -> None:
    # Given a freshly initialised PKI
    # Then every file exists, keys are owner-only and parse, certificates parse
    assert pki.exists()
    names = sorted(p.name for p in pki.directory.iterdir())
    assert names == sorted(p.name for p in pki.files())
    for path in pki.files():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
            assert b"BEGIN PRIVATE KEY" in path.read_bytes()  # PKCS#8, unencrypted
            load_pem_private_key(path.read_bytes(), password=None)
        elif path.suffix == ".pem":
            assert mode & 0o077 in (0o044, 0o004, 0o040, 0o000)
            _cert(path)


def test_readme_names_every_file_and_warns_that_it_is_a_test_pki(pki: PkiPaths) -> None:
    text = pki.readme.read_text(encoding="utf-8")
    assert "TEST PKI" in text
    for path in pki.files():
        if path != pki.readme:
            assert path.name in text


def test_each_certificate_is_issued_by_its_ca(pki: PkiPaths) -> None:
    # Given the PKI, When each leaf is checked against its CA, Then the signature verifies
    for leaf, ca in (
        (pki.access_cert, pki.waf_ca_cert),
        (pki.institution_cert, pki.qualified_ca_cert),
        (pki.server_cert, pki.server_ca_cert),
    ):
        _cert(leaf).verify_directly_issued_by(_cert(ca))
    sts = _cert(pki.sts_cert)
    sts.verify_directly_issued_by(sts)  # self-signed
    assert sts.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "EESZT STS (simulated)"
    )
    for ca in (pki.waf_ca_cert, pki.qualified_ca_cert, pki.server_ca_cert, pki.card_ca_cert):
        assert _cert(ca).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_institution_certificate_carries_the_institution_identity(pki: PkiPaths) -> None:
    cert = _cert(pki.institution_cert)
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value == "H999000"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Teszt Kórház"
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Teszt Kórház HIS"
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _eku(cert)


def test_access_and_server_certificates_have_the_right_usages(pki: PkiPaths) -> None:
    access = _cert(pki.access_cert)
    assert access.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "H999000 HIS access"
    )
    assert _eku(access) == {ExtendedKeyUsageOID.CLIENT_AUTH}

    server = _cert(pki.server_cert)
    assert _eku(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "sim.example"}
    assert san.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1")]


def test_init_pki_refuses_to_overwrite_unless_asked(pki: PkiPaths) -> None:
    # Given an existing PKI
    before = pki.institution_key.read_bytes()
    # When it is initialised again without overwrite, Then it refuses and names a file
    with pytest.raises(FileExistsError, match=r"waf-ca\.pem|already exists"):
        init_pki(pki.directory)
    assert pki.institution_key.read_bytes() == before


def test_init_pki_overwrites_when_asked(tmp_path: Path) -> None:
    # Given a PKI in which only one file exists
    paths = PkiPaths.in_dir(tmp_path)
    paths.sts_key.write_text("junk")
    with pytest.raises(FileExistsError, match="sts.key"):
        init_pki(tmp_path)
    # When overwrite=True, Then the whole PKI is (re)written
    init_pki(tmp_path, overwrite=True)
    assert paths.exists()
    assert b"BEGIN PRIVATE KEY" in paths.sts_key.read_bytes()


def test_cli_pki_init_refuses_an_existing_pki_with_exit_2(pki: PkiPaths, capsys) -> None:
    from eeszt_gw.cli import main

    # Given an existing PKI / When `pki init` is pointed at it without --force
    assert main(["pki", "init", str(pki.directory), "--doctors", "1"]) == 2
    # Then it says which file, and how to replace it
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use --force to replace the PKI" in err


def test_pki_paths_in_dir_does_no_io(tmp_path: Path) -> None:
    paths = PkiPaths.in_dir(tmp_path / "missing")
    assert not paths.directory.exists()
    assert not paths.exists()
    assert paths.institution_cert == tmp_path / "missing" / "institution.pem"
    assert {p.name for p in paths.key_files()} >= {"institution.key", "sts.key", "access.key"}


def test_write_pem_makes_keys_private_whatever_the_umask(tmp_path: Path) -> None:
    key = new_rsa_key()
    old = os.umask(0)
    try:
        path = write_pem(tmp_path / "k.key", key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_expired_certificates_can_be_minted_and_days_left_goes_negative() -> None:
    # Given a CA
    ca_key, ca_cert = make_ca("Test CA")
    # When a certificate is issued that expired yesterday
    now = datetime.now(timezone.utc)
    _, cert = issue_certificate(
        ca_key, ca_cert, common_name="old", not_after=now - timedelta(days=1)
    )
    # Then it is expired, and cert_days_left says so
    assert cert.not_valid_after_utc < now
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    pem = cert.public_bytes(Encoding.PEM)
    assert -1.01 < cert_days_left(pem, now) < -0.99


def test_cert_days_left_of_a_fresh_certificate(pki: PkiPaths) -> None:
    assert 364 < cert_days_left(pki.institution_cert.read_bytes()) <= 365


def test_intermediate_ca_chains_to_its_root() -> None:
    root_key, root = make_ca("Root")
    inter_key, inter = make_ca("Intermediate", issuer=(root_key, root))
    _, leaf = issue_certificate(inter_key, inter, common_name="leaf")
    inter.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(inter)
    assert inter.issuer == root.subject


def test_eid_server_key_is_ecdsa_p256_with_a_self_signed_certificate(pki: PkiPaths) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_pem_private_key(pki.eid_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert = _cert(pki.eid_cert)
    cert.verify_directly_issued_by(cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "EESZT eID server (simulated)"
    )
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_challenge_key_is_ed25519_with_a_self_signed_certificate(pki: PkiPaths) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = load_pem_private_key(pki.challenge_key.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    cert = _cert(pki.challenge_cert)
    cert.verify_directly_issued_by(cert)
    public = cert.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(key.sign(b"challenge"), b"challenge")  # the bridge pins this public key
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Teszt Kórház"


def test_new_pki_paths_are_listed_and_keys_private(pki: PkiPaths) -> None:
    names = {p.name for p in pki.files()}
    assert {"eid.pem", "eid.key", "challenge.pem", "challenge.key"} <= names
    assert {"eid.key", "challenge.key"} <= {p.name for p in pki.key_files()}
    text = pki.readme.read_text(encoding="utf-8")
    assert "Ed25519" in text and "P-256" in text


def test_card_certificates_carry_the_card_serial_and_an_ec_key(pki: PkiPaths) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from simulator.pki import issue_card_certificate

    ca_key = load_pem_private_key(pki.card_ca_key.read_bytes(), password=None)
    ca = _cert(pki.card_ca_cert)
    key, cert = issue_card_certificate(ca_key, ca, holder_name="Dr. Teszt Elek",
                                       card_serial="EK12345678")
    cert.verify_directly_issued_by(ca)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "EK12345678"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Dr. Teszt Elek"
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
