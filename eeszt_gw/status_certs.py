"""Certificates the gateway depends on, and how long each has left.

Read with ``cryptography`` straight from the PKI folder (the ops side does not import the
simulator). A file may hold a bundle; its earliest ``notAfter`` counts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

#: (file in PKI_DIR, what it is for)
CERT_FILES: tuple[tuple[str, str], ...] = (
    ("access.pem", "mTLS access"),
    ("institution.pem", "WS-Security signing"),
    ("server-ca.pem", "server CA (trust)"),
    ("sts.pem", "STS (trust)"),
    ("challenge.pem", "card challenges"),
)


def cert_state(path: Path, *, now: datetime, warn_days: float, role: str = "") -> dict[str, Any]:
    """One certificate file: ``state`` is ok, expiring (within ``warn_days``), expired,
    missing or unreadable; ``days_left`` is negative once expired. Never raises."""
    out: dict[str, Any] = {"file": path.name, "path": str(path), "role": role, "state": "missing",
                           "subject": None, "not_after": None, "days_left": None}
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
    return {**out, "state": state, "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(), "days_left": round(left, 2)}


def check_certificates(pki_dir: Path | None, *, now: datetime | None = None,
                       warn_days: float = 30.0) -> list[dict[str, Any]]:
    """Every file of :data:`CERT_FILES` in ``pki_dir``; empty when there is no such folder."""
    if pki_dir is None or not Path(pki_dir).is_dir():
        return []
    now = now or datetime.now(timezone.utc)
    return [cert_state(Path(pki_dir) / name, now=now, warn_days=warn_days, role=role)
            for name, role in CERT_FILES]
