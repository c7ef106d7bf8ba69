"""Certificate revocation in the test PKI: CRL files, ``pki revoke``, and the status lookup that
the simulator's WS-Security and mutual-TLS checks and its OCSP responder share.

Each CA of the test PKI that revokes (the WAF access CA and the three simulated qualified CAs)
has a CRL next to its certificate: ``<ca>.crl``, **DER** (the form served over HTTP at
``/crl/<ca>.crl``, RFC 5280 section 5), signed by the CA itself, with a CRL number and a next
update :data:`CRL_DAYS` days ahead. :func:`revoke_certificate` adds an entry, bumps the number
and re-signs the whole list; the file is replaced atomically.

:class:`CrlStore` answers "is this certificate revoked?" from those files. It looks at a CRL
file's mtime and size on every lookup and re-reads it when they change, so a ``pki revoke``
takes effect without a restart. A CRL that is missing, unreadable or not signed by its CA makes
the status ``unknown`` (logged once per change); the simulator then soft-fails and accepts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .certs import PrivateKey, write_bytes

__all__ = [
    "CRL_DAYS",
    "REASONS",
    "AlreadyRevoked",
    "CaFiles",
    "CertStatus",
    "CrlStore",
    "RevokeResult",
    "UnknownIssuer",
    "build_crl",
    "load_crl",
    "revoke_certificate",
]

log = logging.getLogger("eeszt_gw.simulator.revocation")

#: a CRL's nextUpdate is this many days after its thisUpdate
CRL_DAYS = 7
#: the revocation reasons ``pki revoke --reason`` accepts (RFC 5280 CRLReason names)
REASONS: dict[str, x509.ReasonFlags] = {
    flag.name: flag for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CaFiles:
    """One revoking CA of the test PKI: a short name and its certificate, key and CRL files."""

    name: str
    cert: Path
    key: Path
    crl: Path


@dataclass(frozen=True)
class CertStatus:
    """``status`` is good, revoked or unknown; the rest is set when it is revoked."""

    status: str
    ca: str | None = None
    serial: int | None = None
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"


@dataclass(frozen=True)
class RevokeResult:
    ca: CaFiles
    subject: str
    serial: int
    reason: x509.ReasonFlags
    crl_number: int
    next_update: datetime
    entries: int


class UnknownIssuer(LookupError):
    """No CA of the PKI folder issued the certificate."""


class AlreadyRevoked(ValueError):
    """The certificate is on its CA's CRL already."""


# --- building and reading CRLs ----------------------------------------------------------------
def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def build_crl(ca_key: PrivateKey, ca_cert: x509.Certificate,
              entries: Iterable[x509.RevokedCertificate] = (), *, number: int = 1,
              now: datetime | None = None, days: float = CRL_DAYS
              ) -> x509.CertificateRevocationList:
    """A CRL of ``ca_cert`` holding ``entries``, numbered ``number``, valid ``days``."""
    now = now or _utcnow()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, _hash_for(ca_key))


def revoked_entry(serial: int, *, when: datetime | None = None,
                  reason: x509.ReasonFlags = x509.ReasonFlags.unspecified
                  ) -> x509.RevokedCertificate:
    builder = (x509.RevokedCertificateBuilder().serial_number(serial)
               .revocation_date(when or _utcnow()))
    if reason is not x509.ReasonFlags.unspecified:  # RFC 5280: omit reasonCode "unspecified"
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes. Raises ValueError."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def entry_reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> Path:
    return write_bytes(path, crl.public_bytes(serialization.Encoding.DER), mode=0o644)


def _load_key(path: Path) -> PrivateKey:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)  # type: ignore[return-value]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def revoke_certificate(cas: Sequence[CaFiles], cert: x509.Certificate, *,
                       reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
                       now: datetime | None = None) -> RevokeResult:
    """Put ``cert`` on the CRL of the CA in ``cas`` that issued it; re-sign that CRL with the
    next number. Raises :class:`UnknownIssuer` or :class:`AlreadyRevoked`."""
    now = now or _utcnow()
    for ca in cas:
        if not ca.cert.is_file():
            continue
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        if not _issued_by(cert, ca_cert):
            continue
        if cert.fingerprint(hashes.SHA256()) == ca_cert.fingerprint(hashes.SHA256()):
            raise UnknownIssuer(f"{ca.cert.name} is the CA's own certificate: a CA cannot "
                                "revoke itself")
        ca_key = _load_key(ca.key)
        old = load_crl(ca.crl.read_bytes()) if ca.crl.is_file() else None
        entries = list(old) if old is not None else []
        if any(e.serial_number == cert.serial_number for e in entries):
            raise AlreadyRevoked(f"serial {cert.serial_number:x} is already on {ca.crl.name}")
        entries.append(revoked_entry(cert.serial_number, when=now, reason=reason))
        number = (crl_number(old) if old is not None else 0) + 1
        crl = build_crl(ca_key, ca_cert, entries, number=number, now=now)
        write_crl(ca.crl, crl)
        return RevokeResult(ca=ca, subject=cert.subject.rfc4514_string(),
                            serial=cert.serial_number, reason=reason, crl_number=number,
                            next_update=crl.next_update_utc, entries=len(entries))
    raise UnknownIssuer(f"no CA in the PKI folder issued {cert.subject.rfc4514_string()!r} "
                        f"(issuer {cert.issuer.rfc4514_string()!r}); the CAs that revoke are "
                        + ", ".join(ca.cert.name for ca in cas))


# --- the status lookup ------------------------------------------------------------------------
def _key_bits(public_key) -> bytes:
    """The subjectPublicKey BIT STRING's contents: what an OCSP CertID's issuerKeyHash hashes."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.PKCS1)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class _Ca:
    """A loaded CA and the state of its CRL file."""

    def __init__(self, files: CaFiles, cert: x509.Certificate) -> None:
        self.files = files
        self.cert = cert
        self.name_der = cert.subject.public_bytes()
        self.key_bits = _key_bits(cert.public_key())
        try:
            self.ski: bytes | None = cert.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            self.ski = None
        self.stamp: tuple[int, int, int] | None = None
        self.crl: x509.CertificateRevocationList | None = None
        self.revoked: dict[int, x509.RevokedCertificate] = {}
        self._key: PrivateKey | None = None

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            self._key = _load_key(self.files.key)
        return self._key

    def hashes_match(self, name_hash: bytes, key_hash: bytes, algorithm: hashes.HashAlgorithm
                     ) -> bool:
        name = hashlib.new(algorithm.name, self.name_der).digest()
        key = hashlib.new(algorithm.name, self.key_bits).digest()
        return name == name_hash and key == key_hash


class CrlStore:
    """The revoking CAs of a PKI folder and their CRLs. Thread-safe.

    A CA whose certificate file is missing is left out (an older PKI folder).
    """

    def __init__(self, cas: Sequence[CaFiles]) -> None:
        self._cas: list[_Ca] = []
        for files in cas:
            if files.cert.is_file():
                self._cas.append(_Ca(files, x509.load_pem_x509_certificate(files.cert.read_bytes())))
        self._lock = threading.Lock()

    @property
    def ca_names(self) -> list[str]:
        return [ca.files.name for ca in self._cas]

    def issuer_of(self, cert: x509.Certificate) -> _Ca | None:
        """The CA whose name (and key identifier, when both carry one) issued ``cert``."""
        try:
            aki = cert.extensions.get_extension_for_class(
                x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        for ca in self._cas:
            if ca.cert.subject == cert.issuer and (aki is None or ca.ski is None or aki == ca.ski):
                return ca
        return None

    def ca_by_hash(self, name_hash: bytes, key_hash: bytes, algorithm: hashes.HashAlgorithm
                   ) -> _Ca | None:
        return next((ca for ca in self._cas if ca.hashes_match(name_hash, key_hash, algorithm)),
                    None)

    def status(self, cert: x509.Certificate) -> CertStatus:
        """good, revoked, or unknown (no CA of the folder issued it, or its CRL is unusable)."""
        ca = self.issuer_of(cert)
        if ca is None:
            return CertStatus("unknown")
        return self.serial_status(ca, cert.serial_number)

    def serial_status(self, ca: _Ca, serial: int) -> CertStatus:
        with self._lock:
            usable = self._refresh(ca)
            entry = ca.revoked.get(serial)
        if entry is not None:
            return CertStatus("revoked", ca.files.name, serial, entry.revocation_date_utc,
                              entry_reason(entry))
        return CertStatus("good" if usable else "unknown", ca.files.name, serial)

    def next_update(self, ca: _Ca) -> datetime | None:
        with self._lock:
            self._refresh(ca)
            return ca.crl.next_update_utc if ca.crl is not None else None

    def _refresh(self, ca: _Ca) -> bool:
        """Re-read the CA's CRL when its file changed; True when a valid CRL is loaded."""
        try:
            st = os.stat(ca.files.crl)
        except OSError:
            if ca.stamp != (0, 0, 0):
                log.warning("no CRL for %s at %s: its certificates' status is unknown",
                            ca.files.name, ca.files.crl)
            ca.stamp, ca.crl, ca.revoked = (0, 0, 0), None, {}
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == ca.stamp:
            return ca.crl is not None
        ca.stamp, ca.crl, ca.revoked = stamp, None, {}
        try:
            crl = load_crl(ca.files.crl.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("the CRL %s is unreadable (%s): status unknown", ca.files.crl, exc)
            return False
        if crl.issuer != ca.cert.subject or not crl.is_signature_valid(ca.cert.public_key()):
            log.warning("the CRL %s is not signed by %s: status unknown", ca.files.crl,
                        ca.files.name)
            return False
        ca.crl = crl
        ca.revoked = {e.serial_number: e for e in crl}
        log.info("loaded CRL %s: number %d, %d revoked", ca.files.crl.name, crl_number(crl),
                 len(ca.revoked))
        return True
