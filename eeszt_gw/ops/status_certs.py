"""Certificates the gateway depends on, and how long each has left.

Read with ``cryptography`` straight from the PKI folder (the ops side does not import the
simulator). A file may hold a bundle; its earliest ``notAfter`` counts.

Revocation is read from the CRL files in PKI_DIR (``*.crl``, DER or PEM, as ``eeszt-gw pki
revoke`` writes them), not over the network: a certificate whose serial is on a CRL of its issuer
(same issuer name, CRL signature verified when the issuer's certificate is in PKI_DIR) is
``revoked``, which needs attention like an expired one. The workers ask OCSP themselves (their
metrics).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

#: (file in PKI_DIR, what it is for)
CERT_FILES: tuple[tuple[str, str], ...] = (
    ("access.pem", "mTLS access"),
    ("institution.pem", "WS-Security signing"),
    ("server-ca.pem", "server CA (trust)"),
    ("sts.pem", "STS (trust)"),
    ("challenge.pem", "card challenges"),
)


#: the states that need a person (``eeszt-gw status`` lists them under attention)
BAD_STATES = ("expiring", "expired", "unreadable", "revoked")


def _crls(pki_dir: Path) -> list[x509.CertificateRevocationList]:
    """The readable CRLs in ``pki_dir`` whose signature checks out against an issuer
    certificate found there (a CRL without its issuer's certificate is taken as it is)."""
    cas: list[x509.Certificate] = []
    for pem in pki_dir.glob("*.pem"):
        try:
            cas.extend(x509.load_pem_x509_certificates(pem.read_bytes()))
        except (OSError, ValueError):
            continue
    out = []
    for path in sorted(pki_dir.glob("*.crl")):
        try:
            data = path.read_bytes()
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
                   else x509.load_der_x509_crl(data))
        except (OSError, ValueError):
            continue
        issuers = [c for c in cas if c.subject == crl.issuer]
        try:
            if issuers and not any(crl.is_signature_valid(c.public_key()) for c in issuers):
                continue
        except (TypeError, InvalidSignature):
            continue
        out.append(crl)
    return out


def _revoked(cert: x509.Certificate, crls: list[x509.CertificateRevocationList]
             ) -> x509.RevokedCertificate | None:
    for crl in crls:
        if crl.issuer == cert.issuer:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                return entry
    return None


def cert_state(path: Path, *, now: datetime, warn_days: float, role: str = "",
               crls: list[x509.CertificateRevocationList] = ()) -> dict[str, Any]:
    """One certificate file: ``state`` is ok, expiring (within ``warn_days``), expired,
    revoked (on a CRL of ``crls``), missing or unreadable; ``days_left`` is negative once
    expired. Never raises."""
    out: dict[str, Any] = {"file": path.name, "path": str(path), "role": role, "state": "missing",
                           "subject": None, "not_after": None, "days_left": None,
                           "revoked_at": None}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as exc:
        return {**out, "state": "unreadable", "error": str(exc)}
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        return {**out, "state": "unreadable", "error": f"not a PEM certificate: {exc}"}
    cert = min(certs, key=lambda c: c.not_valid_after_utc)
    left = (cert.not_valid_after_utc - now).total_seconds() / 86400.0
    state = "expired" if left <= 0 else "expiring" if left <= warn_days else "ok"
    revoked = next((e for c in certs if (e := _revoked(c, list(crls))) is not None), None)
    if revoked is not None:
        state = "revoked"
        out["revoked_at"] = revoked.revocation_date_utc.isoformat()
    return {**out, "state": state, "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(), "days_left": round(left, 2)}


def check_certificates(pki_dir: Path | None, *, now: datetime | None = None,
                       warn_days: float = 30.0) -> list[dict[str, Any]]:
    """Every file of :data:`CERT_FILES` in ``pki_dir``; empty when there is no such folder."""
    if pki_dir is None or not Path(pki_dir).is_dir():
        return []
    now = now or datetime.now(timezone.utc)
    crls = _crls(Path(pki_dir))
    return [cert_state(Path(pki_dir) / name, now=now, warn_days=warn_days, role=role, crls=crls)
            for name, role in CERT_FILES]
