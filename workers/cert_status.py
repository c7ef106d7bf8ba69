"""The worker's own certificates' revocation status, asked of the CA's OCSP responder.

A worker process checks ``institution.pem`` (WS-Security signing) and ``access.pem`` (mutual
TLS) in PKI_DIR when it starts and then every ``cert_check_interval_s`` (an hour by default):
RFC 6960 OCSP over plain HTTP (the answer is signed), POST of a DER request with a nonce, to
the URL in the certificate's Authority Information Access extension, or to ``ocsp_url``
(``EESZT_OCSP_URL``) when set. Every call has a timeout.

The outcome per certificate is ``good``, ``revoked`` or ``unknown``. Unknown covers everything
that is not a trustworthy answer: no responder URL, the issuer certificate not found (the file's
own bundle, then every ``*.pem`` in PKI_DIR), the responder unreachable or too slow, an answer
that is not ``successful``, not about this certificate, not signed by the issuer (or by a
responder certificate it issued for OCSP signing), with a wrong nonce, or stale. Unknown is
logged (a warning), never fatal; revoked is logged as an error. The results feed the worker's
metrics (:class:`workers.middleware.metrics.CertificateStatusCollector`).
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = ["CHECKED_FILES", "STATES", "CertCheck", "CertificateWatch", "check_certificate"]

log = logging.getLogger("eeszt_gw.worker.certs")

STATES: tuple[str, ...] = ("good", "revoked", "unknown")
#: the worker's own certificates, in PKI_DIR
CHECKED_FILES: tuple[str, ...] = ("institution.pem", "access.pem")
#: clock difference tolerated on an answer's thisUpdate / nextUpdate
_SKEW = timedelta(minutes=5)
_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class CertCheck:
    """One certificate's status. ``detail`` says why it is unknown, or the revocation reason."""

    certificate: str
    status: str
    detail: str = ""
    serial: int | None = None
    revoked_at: datetime | None = None
    url: str | None = None
    checked_at: datetime | None = None


class _Unknown(Exception):
    pass


def ocsp_url_of(cert: x509.Certificate) -> str | None:
    """The first OCSP responder URL of the certificate's Authority Information Access."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)):
            return desc.access_location.value
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _candidates(bundle: list[x509.Certificate], pki_dir: Path) -> Iterable[x509.Certificate]:
    yield from bundle[1:]
    for path in sorted(pki_dir.glob("*.pem")):
        try:
            yield from x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            continue


def find_issuer(cert: x509.Certificate, candidates: Iterable[x509.Certificate]
                ) -> x509.Certificate | None:
    return next((c for c in candidates if _issued_by(cert, c)), None)


def _verify_signature(response: ocsp.OCSPResponse, public_key) -> None:
    algorithm = response.signature_hash_algorithm
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                          algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    else:
        public_key.verify(response.signature, response.tbs_response_bytes)


def _check_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The answer is signed by the issuer, or by a certificate the issuer made for OCSP."""
    signers = [issuer]
    for delegated in response.certificates:
        try:
            eku = delegated.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku and _issued_by(delegated, issuer):
            signers.append(delegated)
    for signer in signers:
        try:
            _verify_signature(response, signer.public_key())
            return
        except (InvalidSignature, ValueError, TypeError):
            continue
    raise _Unknown("the OCSP answer is not signed by the certificate's issuer")


def parse_answer(data: bytes, cert: x509.Certificate, issuer: x509.Certificate, *,
                 nonce: bytes | None, now: datetime) -> tuple[str, datetime | None, str]:
    """(status, revoked_at, detail) from a DER OCSP response. Raises _Unknown."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as exc:
        raise _Unknown(f"the answer is not an OCSP response ({exc})") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Unknown(f"the responder answered {response.response_status.name.lower()}")
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, response.hash_algorithm) \
        .build()
    if (response.serial_number != cert.serial_number
            or response.issuer_name_hash != expected.issuer_name_hash
            or response.issuer_key_hash != expected.issuer_key_hash):
        raise _Unknown("the OCSP answer is about another certificate")
    _check_signer(response, issuer)
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed is not None and echoed != nonce:
            raise _Unknown("the OCSP answer carries another request's nonce")
    if response.this_update_utc > now + _SKEW:
        raise _Unknown("the OCSP answer is dated in the future")
    if response.next_update_utc is not None and response.next_update_utc < now - _SKEW:
        raise _Unknown("the OCSP answer is stale (past its next update)")
    status = response.certificate_status
    if status is ocsp.OCSPCertStatus.REVOKED:
        reason = response.revocation_reason
        return "revoked", response.revocation_time_utc, reason.name if reason else "unspecified"
    if status is ocsp.OCSPCertStatus.GOOD:
        return "good", None, ""
    return "unknown", None, "the responder does not know the certificate's status"


def _post(url: str, der: bytes, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, data=der, method="POST",
                                     headers={"Content-Type": "application/ocsp-request",
                                              "Accept": "application/ocsp-response"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.read(_MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        raise _Unknown(f"the responder answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Unknown(f"the responder {url} is unreachable ({reason})") from None


def check_certificate(path: Path, pki_dir: Path, *, ocsp_url: str | None = None,
                      timeout_s: float = 5.0, now: datetime | None = None) -> CertCheck:
    """The status of the (first) certificate in ``path``. Never raises."""
    now = now or datetime.now(timezone.utc)
    name = path.name
    try:
        bundle = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return CertCheck(name, "unknown", f"cannot read {path}: {exc}", checked_at=now)
    cert = bundle[0]
    url = ocsp_url or ocsp_url_of(cert)
    if not url:
        return CertCheck(name, "unknown", "no OCSP URL: the certificate has no Authority "
                         "Information Access and EESZT_OCSP_URL is not set", cert.serial_number,
                         checked_at=now)
    issuer = find_issuer(cert, _candidates(bundle, pki_dir))
    if issuer is None:
        return CertCheck(name, "unknown", f"the issuer of {name} is not in its file nor in "
                         f"{pki_dir}", cert.serial_number, url=url, checked_at=now)
    nonce = os.urandom(16)
    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
               .add_extension(x509.OCSPNonce(nonce), critical=False).build())
    try:
        data = _post(url, request.public_bytes(serialization.Encoding.DER), timeout_s)
        status, revoked_at, detail = parse_answer(data, cert, issuer, nonce=nonce, now=now)
    except _Unknown as exc:
        return CertCheck(name, "unknown", str(exc), cert.serial_number, url=url, checked_at=now)
    return CertCheck(name, status, detail, cert.serial_number, revoked_at, url, now)


class CertificateWatch:
    """Checks the worker's certificates at start and every ``interval_s`` on a daemon thread."""

    def __init__(self, pki_dir: Path, *, files: Iterable[str] = CHECKED_FILES,
                 ocsp_url: str | None = None, timeout_s: float = 5.0,
                 interval_s: float = 3600.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.pki_dir = Path(pki_dir)
        self.files = tuple(files)
        self.ocsp_url = ocsp_url
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.clock = clock
        self._results: dict[str, CertCheck] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def results(self) -> dict[str, CertCheck]:
        return dict(self._results)

    def check_now(self) -> dict[str, CertCheck]:
        """Check every file present in PKI_DIR now; log what changed."""
        for name in self.files:
            path = self.pki_dir / name
            if not path.exists():
                continue
            result = check_certificate(path, self.pki_dir, ocsp_url=self.ocsp_url,
                                       timeout_s=self.timeout_s, now=self.clock())
            before = self._results.get(name)
            self._results[name] = result  # one reference swap per file: readers never block
            if result.status == "revoked":
                log.error("certificate %s (serial %x) is REVOKED (%s, at %s): EESZT refuses "
                          "it; install a new one", name, result.serial or 0, result.detail,
                          result.revoked_at.isoformat() if result.revoked_at else "?")
            elif result.status == "unknown" and (before is None or before.status != "unknown"
                                                 or before.detail != result.detail):
                log.warning("certificate %s: revocation status unknown: %s", name, result.detail)
            elif result.status == "good" and (before is None or before.status != "good"):
                log.info("certificate %s: not revoked (OCSP %s)", name, result.url)
        return self.results()

    def start(self) -> CertificateWatch:
        self._thread = threading.Thread(target=self._run, name="cert-status", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                self.check_now()
            except Exception:  # a bug here must not kill the worker
                log.exception("certificate status check failed")
            if self._stop.wait(self.interval_s):
                return
