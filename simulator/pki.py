"""A throw-away test PKI for the simulator, the demo and the test suites.

**This is a TEST PKI.** Every private key is written as unencrypted PKCS#8 PEM (mode 0600) so
that tests and the demo can start without a passphrase. Never use these keys or CAs for
anything real; production keys come from the operator (WAF access certificate) and a qualified
CA (institution certificate).

What :func:`init_pki` creates, and which side uses it:

==========================  ==========================================================
``waf-ca.pem/.key``         "EESZT WAF access CA": the simulator's mTLS server trusts it
``access.pem/.key``         the client access certificate (clientAuth) for mutual TLS
``qualified-ca.pem/.key``   a simulated qualified CA: the WS-Security verifier trusts it
``institution.pem/.key``    institution authentication certificate: signs SOAP messages
                            and STS requests; O=name, organizationIdentifier=institution id
``sts.pem/.key``            the simulated STS: signs SAML assertions (self-signed)
``server-ca.pem/.key``      the CA of the simulator's HTTPS certificate: clients trust it
``server.pem/.key``         the simulator's HTTPS server certificate (serverAuth + SANs)
``card-ca.pem/.key``        a simulated eSZIG card CA: the eID server trusts it; it signs
                            the virtual cards that :func:`simulator.users.write_demo_users`
                            writes into ``cards/``
``eid.pem/.key``            the simulated eID server: signs eID request packages and rID
                            packages (ECDSA P-256, SHA-256; self-signed)
``challenge.pem/.key``      the GATEWAY's card challenge key (Ed25519, self-signed): the
                            workers sign card challenges, the card bridge pins the cert
==========================  ==========================================================

The building blocks (:func:`new_rsa_key`, :func:`new_ec_key`, :func:`new_ed25519_key`,
:func:`make_ca`, :func:`issue_certificate`, :func:`issue_card_certificate`, :func:`write_pem`)
are public so that tests can mint foreign, expired or odd certificates.
RSA key generation (about 50 ms per key) dominates the cost; :func:`init_pki` takes well under
two seconds.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "PkiPaths",
    "cert_days_left",
    "init_pki",
    "issue_card_certificate",
    "issue_certificate",
    "make_ca",
    "new_ec_key",
    "new_ed25519_key",
    "new_rsa_key",
    "write_pem",
]

#: Backdating of ``notBefore`` so that a peer whose clock lags slightly still accepts a new cert.
_BACKDATE = timedelta(minutes=5)
_CA_DAYS = 3650

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KeyOrCert = PrivateKey | x509.Certificate
#: how long a virtual eSZIG card's certificate is valid
CARD_DAYS = 3 * 365


@dataclass(frozen=True)
class PkiPaths:
    """Where each file of a test PKI lives. Building one does no I/O (see :meth:`in_dir`)."""

    directory: Path
    waf_ca_cert: Path
    waf_ca_key: Path
    access_cert: Path
    access_key: Path
    qualified_ca_cert: Path
    qualified_ca_key: Path
    institution_cert: Path
    institution_key: Path
    sts_cert: Path
    sts_key: Path
    server_ca_cert: Path
    server_ca_key: Path
    server_cert: Path
    server_key: Path
    card_ca_cert: Path
    card_ca_key: Path
    eid_cert: Path
    eid_key: Path
    challenge_cert: Path
    challenge_key: Path
    readme: Path

    @classmethod
    def in_dir(cls, directory: Path | str) -> PkiPaths:
        """The standard file names inside ``directory``."""
        d = Path(directory)
        return cls(
            directory=d,
            waf_ca_cert=d / "waf-ca.pem",
            waf_ca_key=d / "waf-ca.key",
            access_cert=d / "access.pem",
            access_key=d / "access.key",
            qualified_ca_cert=d / "qualified-ca.pem",
            qualified_ca_key=d / "qualified-ca.key",
            institution_cert=d / "institution.pem",
            institution_key=d / "institution.key",
            sts_cert=d / "sts.pem",
            sts_key=d / "sts.key",
            server_ca_cert=d / "server-ca.pem",
            server_ca_key=d / "server-ca.key",
            server_cert=d / "server.pem",
            server_key=d / "server.key",
            card_ca_cert=d / "card-ca.pem",
            card_ca_key=d / "card-ca.key",
            eid_cert=d / "eid.pem",
            eid_key=d / "eid.key",
            challenge_cert=d / "challenge.pem",
            challenge_key=d / "challenge.key",
            readme=d / "README.txt",
        )

    def files(self) -> Iterator[Path]:
        """Every file of the PKI (not the directory)."""
        for f in dataclasses.fields(self):
            if f.name != "directory":
                yield getattr(self, f.name)

    def key_files(self) -> Iterator[Path]:
        """The private key files (the ones written with mode 0600)."""
        return (p for p in self.files() if p.suffix == ".key")

    def exists(self) -> bool:
        """True when every file of the PKI is present."""
        return all(p.is_file() for p in self.files())


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
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
        .sign(signing_key, _hash_for(signing_key))
    )
    return key, cert


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
) -> tuple[PrivateKey, x509.Certificate]:
    """An end-entity certificate signed by ``ca_key``/``ca_cert``.

    ``ca_cert=None`` makes the certificate self-signed (then ``ca_key`` must be ``key``'s pair,
    or ``key`` is omitted and ``ca_key`` is used). ``client`` adds the clientAuth EKU and
    ``server_hosts`` the serverAuth EKU plus a SAN per host (IP addresses become iPAddress
    entries). ``not_after`` overrides ``days``; a ``not_after`` in the past makes an expired
    certificate (``not_before`` then defaults to a day earlier). ``serial_number`` adds a
    subject serialNumber attribute (an eSZIG card's serial). ``key`` may be RSA, EC or Ed25519.
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
    signer_public = ca_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=bool(server_hosts),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False
        )
    )
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
    path = Path(path)
    is_key = not isinstance(key_or_cert, x509.Certificate)
    data = _pem_bytes(key_or_cert)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if is_key else 0o644)
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


# --- the whole PKI ----------------------------------------------------------------------------
_README = """\
eeszt-gateway TEST PKI - generated {generated} for institution {institution_id} ({institution_name})

THIS IS A TEST PKI. The private keys (*.key) are unencrypted PKCS#8 PEM files (mode 0600).
Never use them outside development, tests and demos.

waf-ca.pem / waf-ca.key              "EESZT WAF access CA"; the simulator's mTLS server trusts it
access.pem / access.key              client access certificate for mutual TLS (clientAuth),
                                     CN "{institution_id} HIS access", signed by the WAF CA
qualified-ca.pem / qualified-ca.key  simulated qualified CA; the WS-Security verifier trusts it
institution.pem / institution.key    institution authentication certificate (digitalSignature,
                                     clientAuth), O={institution_name},
                                     organizationIdentifier={institution_id}; signs SOAP
                                     messages and STS requests
sts.pem / sts.key                    simulated STS signing certificate (self-signed); signs SAML
                                     assertions, clients verify tokens with sts.pem
server-ca.pem / server-ca.key        CA of the simulator's HTTPS certificate; clients trust it
server.pem / server.key              simulator HTTPS server certificate (serverAuth), SANs:
                                     {hosts}
card-ca.pem / card-ca.key            simulated eSZIG card CA; the eID server trusts it, and it
                                     signs the virtual cards in cards/ (written with users.json)
eid.pem / eid.key                    simulated eID server (ECDSA P-256, self-signed); signs the
                                     eID request packages and the rID packages
challenge.pem / challenge.key        the GATEWAY's card challenge key (Ed25519, self-signed):
                                     the workers sign card challenges with challenge.key, the
                                     card bridge pins challenge.pem

cards/<user>.key, .pem, .json        (written by `eeszt-gw pki init` with users.json) one
                                     virtual eSZIG card per demo doctor: EC P-256 key, card
                                     certificate (serialNumber = card serial), PIN/CAN/PUK and
                                     document data. The PIN, CAN and PUK are test secrets.
"""


def init_pki(
    directory: Path,
    *,
    institution_id: str = "H100200",
    institution_name: str = "Demo Kórház",
    days: int = 365,
    server_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    overwrite: bool = False,
) -> PkiPaths:
    """Create the complete test PKI in ``directory`` (created if missing) and return its paths.

    Raises :class:`FileExistsError` naming the first file that already exists, before writing
    anything, unless ``overwrite`` is true. End-entity certificates are valid ``days`` days; the
    CAs ten years.
    """
    paths = PkiPaths.in_dir(directory)
    if not overwrite:
        for p in paths.files():
            if p.exists():
                raise FileExistsError(
                    f"{p} already exists; pass overwrite=True to replace the test PKI"
                )
    paths.directory.mkdir(parents=True, exist_ok=True)
    hosts = tuple(server_hosts)

    waf_key, waf_cert = make_ca("EESZT WAF access CA")
    access_key, access_cert = issue_certificate(
        waf_key,
        waf_cert,
        common_name=f"{institution_id} HIS access",
        organization=institution_name,
        days=days,
    )
    q_key, q_cert = make_ca("Simulated Qualified CA")
    inst_key, inst_cert = issue_certificate(
        q_key,
        q_cert,
        common_name=f"{institution_name} HIS",
        organization=institution_name,
        organization_identifier=institution_id,
        days=days,
    )
    sts_key, sts_cert = issue_certificate(
        new_rsa_key(), None, common_name="EESZT STS (simulated)", client=False, days=days
    )
    srv_ca_key, srv_ca_cert = make_ca("eeszt-gateway simulator server CA")
    srv_key, srv_cert = issue_certificate(
        srv_ca_key,
        srv_ca_cert,
        common_name=hosts[0] if hosts else "localhost",
        client=False,
        server_hosts=hosts,
        days=days,
    )
    card_key, card_cert = make_ca("Simulated eSZIG card CA")
    eid_key, eid_cert = issue_certificate(
        new_ec_key(), None, common_name="EESZT eID server (simulated)", client=False, days=days
    )
    challenge_key, challenge_cert = issue_certificate(
        new_ed25519_key(),
        None,
        common_name="eeszt-gateway card challenge signer",
        organization=institution_name,
        client=False,
        days=days,
    )

    for path, obj in (
        (paths.waf_ca_key, waf_key),
        (paths.waf_ca_cert, waf_cert),
        (paths.access_key, access_key),
        (paths.access_cert, access_cert),
        (paths.qualified_ca_key, q_key),
        (paths.qualified_ca_cert, q_cert),
        (paths.institution_key, inst_key),
        (paths.institution_cert, inst_cert),
        (paths.sts_key, sts_key),
        (paths.sts_cert, sts_cert),
        (paths.server_ca_key, srv_ca_key),
        (paths.server_ca_cert, srv_ca_cert),
        (paths.server_key, srv_key),
        (paths.server_cert, srv_cert),
        (paths.card_ca_key, card_key),
        (paths.card_ca_cert, card_cert),
        (paths.eid_key, eid_key),
        (paths.eid_cert, eid_cert),
        (paths.challenge_key, challenge_key),
        (paths.challenge_cert, challenge_cert),
    ):
        write_pem(path, obj)
    paths.readme.write_text(
        _README.format(
            generated=_utcnow().strftime("%Y-%m-%d %H:%M:%SZ"),
            institution_id=institution_id,
            institution_name=institution_name,
            hosts=", ".join(hosts) or "(none)",
        ),
        encoding="utf-8",
    )
    return paths
