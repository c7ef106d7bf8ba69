"""Building blocks of the test PKI: keys, CAs, end-entity and card certificates, PEM files.

**TEST PKI only** (see :mod:`simulator.pki`). Public so that tests can mint foreign, expired or
odd certificates; :mod:`simulator.pki` re-exports every name here.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

__all__ = [
    "CARD_DAYS",
    "KeyOrCert",
    "PrivateKey",
    "cert_days_left",
    "issue_card_certificate",
    "issue_certificate",
    "make_ca",
    "new_ec_key",
    "new_ed25519_key",
    "new_rsa_key",
    "write_bytes",
    "write_pem",
]

#: Backdating of ``notBefore`` so that a peer whose clock lags slightly still accepts a new cert.
_BACKDATE = timedelta(minutes=5)
_CA_DAYS = 3650

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KeyOrCert = PrivateKey | x509.Certificate
#: how long a virtual eSZIG card's certificate is valid
CARD_DAYS = 3 * 365

# --- building blocks --------------------------------------------------------------------------
def new_rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (about 50 ms)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (the eSZIG card's and the eID server's key type)."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ed25519_key() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 key (the gateway's card challenge key)."""
    return ed25519.Ed25519PrivateKey.generate()


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest to sign a certificate with: none for EdDSA keys, SHA-256 otherwise."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _name(
    common_name: str,
    *,
    organization: str | None = None,
    organization_identifier: str | None = None,
    serial_number: str | None = None,
) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "HU")]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if organization_identifier:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, organization_identifier))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if serial_number:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    return x509.Name(attrs)


def make_ca(
    common_name: str,
    *,
    days: int = _CA_DAYS,
    not_before: datetime | None = None,
    key: PrivateKey | None = None,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A CA certificate (``cA=TRUE``, keyCertSign + cRLSign), valid ``days`` from ``not_before``.

    Self-signed (a root) unless ``issuer`` = (key, cert) of a parent CA is given, which makes an
    intermediate CA.
    """
    key = key or new_rsa_key()
    start = not_before or (_utcnow() - _BACKDATE)
    name = _name(common_name)
    signing_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, name)
    cert = _base_builder(name, issuer_name, key, signing_key, start, start + timedelta(days=days),
                         ca=True, key_cert_sign=True, crl_sign=True).sign(
        signing_key, _hash_for(signing_key))
    return key, cert


_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
               "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")


def _base_builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, signer: PrivateKey,
                  start: datetime, end: datetime, *, ca: bool,
                  **usages: bool) -> x509.CertificateBuilder:
    """What every certificate here has: names, key, a random serial, validity, basic
    constraints, the key usages given as True (critical), and both key identifiers."""
    key_usage = x509.KeyUsage(**{u: usages.get(u, False) for u in _KEY_USAGES})
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                       critical=False)
    )


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate | None,
    *,
    common_name: str,
    key: PrivateKey | None = None,
    days: int = 365,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    client: bool = True,
    server_hosts: Sequence[str] = (),
    organization: str | None = None,
    organization_identifier: str | None = None,
    serial_number: str | None = None,
    ocsp_url: str | None = None,
    crl_url: str | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """An end-entity certificate signed by ``ca_key``/``ca_cert``.

    ``ca_cert=None`` makes the certificate self-signed (then ``ca_key`` must be ``key``'s pair,
    or ``key`` is omitted and ``ca_key`` is used). ``client`` adds the clientAuth EKU and
    ``server_hosts`` the serverAuth EKU plus a SAN per host (IP addresses become iPAddress
    entries). ``not_after`` overrides ``days``; a ``not_after`` in the past makes an expired
    certificate (``not_before`` then defaults to a day earlier). ``serial_number`` adds a
    subject serialNumber attribute (an eSZIG card's serial). ``key`` may be RSA, EC or Ed25519.
    ``ocsp_url`` adds an Authority Information Access extension naming the OCSP responder,
    ``crl_url`` a CRL distribution point.
    """
    if ca_cert is None:
        key = key or ca_key
    key = key or new_rsa_key()
    if not_after is not None:
        start = not_before or min(_utcnow() - _BACKDATE, not_after - timedelta(days=1))
        end = not_after
    else:
        start = not_before or (_utcnow() - _BACKDATE)
        end = start + timedelta(days=days)
    if end <= start:
        raise ValueError("not_after must be later than not_before")
    subject = _name(
        common_name,
        organization=organization,
        organization_identifier=organization_identifier,
        serial_number=serial_number,
    )
    issuer = subject if ca_cert is None else ca_cert.subject
    builder = _base_builder(subject, issuer, key, ca_key, start, end, ca=False,
                            digital_signature=True, key_encipherment=bool(server_hosts))
    usages = []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if server_hosts:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san_entry(h) for h in server_hosts]), critical=False
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if ocsp_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]),
            critical=False)
    if crl_url:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None,
            reasons=None, crl_issuer=None)]), critical=False)
    return key, builder.sign(ca_key, _hash_for(ca_key))


def issue_card_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    holder_name: str,
    card_serial: str,
    key: ec.EllipticCurvePrivateKey | None = None,
    days: int = CARD_DAYS,
    not_after: datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A virtual eSZIG card's authentication certificate: an EC P-256 key, subject CN = the
    holder's name and serialNumber = the card serial, digitalSignature + clientAuth."""
    return issue_certificate(  # type: ignore[return-value]
        ca_key,
        ca_cert,
        common_name=holder_name,
        key=key or new_ec_key(),
        days=days,
        not_after=not_after,
        client=True,
        serial_number=card_serial,
    )


def _pem_bytes(key_or_cert: KeyOrCert) -> bytes:
    if isinstance(key_or_cert, x509.Certificate):
        return key_or_cert.public_bytes(serialization.Encoding.PEM)
    return key_or_cert.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path: Path | str, key_or_cert: KeyOrCert) -> Path:
    """Write a certificate (mode 0644) or a private key (PKCS#8, unencrypted, mode 0600).

    The file is written to a temporary name and renamed, so a reader never sees half a key and
    a key file is never readable by others, whatever the umask.
    """
    is_key = not isinstance(key_or_cert, x509.Certificate)
    return write_bytes(path, _pem_bytes(key_or_cert), mode=0o600 if is_key else 0o644)


def write_bytes(path: Path | str, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary name, then a rename) with ``mode``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cert_days_left(cert_pem: bytes, now: datetime | None = None) -> float:
    """Days until the certificate's notAfter (negative once expired)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = now or _utcnow()
    return (cert.not_valid_after_utc - now).total_seconds() / 86400.0
