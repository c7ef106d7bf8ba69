"""The mutual-TLS access certificate of a request, tied to the request's signer.

uvicorn does not put the TLS peer certificate in the ASGI scope; the transport does
(``send.__self__.transport.get_extra_info("ssl_object")``, as :func:`simulator.app._abort`
reaches it). :meth:`ChannelChecks.enter` reads the peer certificate of the request being served
(parsed once per distinct certificate, a bounded cache) into a context variable: each request is
its own asyncio task, so the synchronous handler that runs next sees its own peer.

The checks, each with its own fault code:

- the access certificate is on the WAF CA's CRL ................ ACCESS_CERT_REVOKED (TLS-001)
- it names another institution (organizationIdentifier) than the
  WS-Security signer, or none ................................... ACCESS_CERT_INSTITUTION_MISMATCH
  (TLS-002)

The CRL is consulted on every request (a ``stat`` of the CRL file; re-read when it changed).
A request not served over TLS (no transport, e.g. an in-process test harness) has no peer and
is not checked here; the real service port always requires a client certificate.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from schemas.soap import FaultCode

from .lru import Lru
from .revocation import CrlStore
from .soapio import SoapFault

__all__ = ["ChannelChecks", "PeerCert"]

_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class PeerCert:
    cert: x509.Certificate
    institution_id: str | None


_peer: ContextVar[PeerCert | None] = ContextVar("eeszt_sim_peer", default=None)


def _institution_id(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def peer_der(send: Any) -> bytes | None:
    """The DER peer certificate of the connection ``send`` answers on, or None."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


class ChannelChecks:
    """Access-certificate checks against the WAF CA's CRL and the signer's institution."""

    def __init__(self, store: CrlStore, *, cache_size: int = _CACHE_SIZE) -> None:
        self.store = store
        self._cache: Lru[bytes, PeerCert] = Lru(cache_size)

    def enter(self, send: Any) -> PeerCert | None:
        """Remember the peer certificate of the request being served (None without TLS)."""
        der = peer_der(send)
        peer = self._parse(der) if der else None
        _peer.set(peer)
        return peer

    @staticmethod
    def current() -> PeerCert | None:
        return _peer.get()

    def check_revoked(self) -> None:
        """Refuse a request whose access certificate is revoked (TLS-001)."""
        peer = _peer.get()
        if peer is None:
            return
        status = self.store.status(peer.cert)
        if status.revoked:
            raise SoapFault(FaultCode.ACCESS_CERT_REVOKED,
                            f"the access certificate (serial {peer.cert.serial_number:x}) was "
                            f"revoked at {status.revoked_at.isoformat() if status.revoked_at else '?'}")

    def check_signer(self, signer_institution: str | None) -> None:
        """Refuse a request whose access certificate is not the signer institution's (TLS-002)."""
        peer = _peer.get()
        if peer is None:
            return
        if peer.institution_id is None:
            raise SoapFault(FaultCode.ACCESS_CERT_INSTITUTION_MISMATCH,
                            "the access certificate names no institution (organizationIdentifier), "
                            "so it cannot be tied to the signer")
        if peer.institution_id != signer_institution:
            raise SoapFault(FaultCode.ACCESS_CERT_INSTITUTION_MISMATCH,
                            f"the access certificate belongs to institution {peer.institution_id}, "
                            f"the message is signed by {signer_institution or 'no institution'}")

    def _parse(self, der: bytes) -> PeerCert | None:
        hit = self._cache.get(der)
        if hit is not None:
            return hit
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        return self._cache.put(der, PeerCert(cert=cert, institution_id=_institution_id(cert)))
