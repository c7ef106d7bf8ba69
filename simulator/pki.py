"""A throw-away test PKI for the simulator, the demo and the test suites.

**This is a TEST PKI.** Every private key is written as unencrypted PKCS#8 PEM (mode 0600) so
that tests and the demo can start without a passphrase. Never use these keys or CAs for
anything real; production keys come from the operator (WAF access certificate) and a qualified
CA (institution certificate). The three qualified CAs are named after the Hungarian qualified
trust service providers, each clearly marked "(simulated)": they are stand-ins made here, not
those providers' CAs.

What :func:`init_pki` creates, and which side uses it:

==========================  ==========================================================
``waf-ca.pem/.key/.crl``    "EESZT WAF access CA": the simulator's mTLS server trusts it
``access.pem/.key``         the client access certificate (clientAuth) for mutual TLS;
                            organizationIdentifier=institution id ties it to the signer
``qualified-ca.pem/.key``   "NISZ GovCA (simulated)", a qualified CA: the WS-Security
``qualified-ca.crl``        verifier trusts it; it issues ``institution.pem``
``netlock-ca.pem/.key/.crl``   "Netlock (simulated)", a second trusted qualified CA
``microsec-ca.pem/.key/.crl``  "Microsec (simulated)", a third trusted qualified CA
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

The ``*.crl`` files are each CA's certificate revocation list (DER; see
:mod:`simulator.revocation`). ``access.pem`` and ``institution.pem`` name the simulator's OCSP
responder (Authority Information Access) and their CA's CRL (CRL distribution point) under
``revocation_url``.

The building blocks live in :mod:`simulator.certs` and are re-exported here
(:func:`new_rsa_key`, :func:`new_ec_key`, :func:`new_ed25519_key`, :func:`make_ca`,
:func:`issue_certificate`, :func:`issue_card_certificate`, :func:`write_pem`) so that tests can
mint foreign, expired or odd certificates.
RSA key generation (about 50 ms per key) dominates the cost; :func:`init_pki` takes about two
seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .certs import (
    CARD_DAYS,
    KeyOrCert,
    PrivateKey,
    cert_days_left,
    issue_card_certificate,
    issue_certificate,
    make_ca,
    new_ec_key,
    new_ed25519_key,
    new_rsa_key,
    write_pem,
)
from .revocation import CaFiles, build_crl, write_crl

# The certificate helpers of simulator.certs stay importable from here, as before.
__all__ = ["DEFAULT_REVOCATION_URL", "QUALIFIED_CAS", "PkiPaths", "init_pki"]

#: where the simulator's OCSP responder and CRLs are served by default (``--ocsp-port``)
DEFAULT_REVOCATION_URL = "http://127.0.0.1:8446"
#: the three simulated qualified CAs: (file stem, common name)
QUALIFIED_CAS: tuple[tuple[str, str], ...] = (
    ("qualified-ca", "NISZ GovCA (simulated)"),
    ("netlock-ca", "Netlock (simulated)"),
    ("microsec-ca", "Microsec (simulated)"),
)
WAF_CA_NAME = "EESZT WAF access CA"


@dataclass(frozen=True)
class PkiPaths:
    """Where each file of a test PKI lives. Building one does no I/O (see :meth:`in_dir`)."""

    directory: Path
    waf_ca_cert: Path
    waf_ca_key: Path
    waf_ca_crl: Path
    access_cert: Path
    access_key: Path
    qualified_ca_cert: Path
    qualified_ca_key: Path
    qualified_ca_crl: Path
    netlock_ca_cert: Path
    netlock_ca_key: Path
    netlock_ca_crl: Path
    microsec_ca_cert: Path
    microsec_ca_key: Path
    microsec_ca_crl: Path
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
            waf_ca_crl=d / "waf-ca.crl",
            access_cert=d / "access.pem",
            access_key=d / "access.key",
            qualified_ca_cert=d / "qualified-ca.pem",
            qualified_ca_key=d / "qualified-ca.key",
            qualified_ca_crl=d / "qualified-ca.crl",
            netlock_ca_cert=d / "netlock-ca.pem",
            netlock_ca_key=d / "netlock-ca.key",
            netlock_ca_crl=d / "netlock-ca.crl",
            microsec_ca_cert=d / "microsec-ca.pem",
            microsec_ca_key=d / "microsec-ca.key",
            microsec_ca_crl=d / "microsec-ca.crl",
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

    def qualified_cas(self) -> list[CaFiles]:
        """The three simulated qualified CAs (the WS-Security trust anchors)."""
        d = self.directory
        return [CaFiles(stem, d / f"{stem}.pem", d / f"{stem}.key", d / f"{stem}.crl")
                for stem, _ in QUALIFIED_CAS]

    def revoking_cas(self) -> list[CaFiles]:
        """Every CA with a CRL: the WAF access CA and the three qualified CAs."""
        return [CaFiles("waf-ca", self.waf_ca_cert, self.waf_ca_key, self.waf_ca_crl),
                *self.qualified_cas()]

    def exists(self) -> bool:
        """True when every file of the PKI is present."""
        return all(p.is_file() for p in self.files())


# --- the whole PKI ----------------------------------------------------------------------------
_README = """\
eeszt-gateway TEST PKI - generated {generated} for institution {institution_id} ({institution_name})

THIS IS A TEST PKI. The private keys (*.key) are unencrypted PKCS#8 PEM files (mode 0600).
Never use them outside development, tests and demos.

waf-ca.pem / waf-ca.key              "EESZT WAF access CA"; the simulator's mTLS server trusts it
access.pem / access.key              client access certificate for mutual TLS (clientAuth),
                                     CN "{institution_id} HIS access",
                                     organizationIdentifier={institution_id}, signed by the WAF CA
qualified-ca.pem / qualified-ca.key  "NISZ GovCA (simulated)": a simulated qualified CA, the
                                     WS-Security verifier trusts it; it issued institution.pem
netlock-ca.pem / netlock-ca.key      "Netlock (simulated)": a second trusted qualified CA
microsec-ca.pem / microsec-ca.key    "Microsec (simulated)": a third trusted qualified CA
waf-ca.crl, qualified-ca.crl,        each CA's certificate revocation list (DER, signed by the
netlock-ca.crl, microsec-ca.crl      CA, next update in 7 days); `eeszt-gw pki revoke CERT`
                                     adds a certificate; the simulator serves them at
                                     {revocation_url}/crl/<file> and answers OCSP at
                                     {revocation_url}/ocsp from them
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
    revocation_url: str = DEFAULT_REVOCATION_URL,
) -> PkiPaths:
    """Create the complete test PKI in ``directory`` (created if missing) and return its paths.

    Raises :class:`FileExistsError` naming the first file that already exists, before writing
    anything, unless ``overwrite`` is true. End-entity certificates are valid ``days`` days; the
    CAs ten years. ``revocation_url`` is the base of the OCSP responder (``/ocsp``) and CRL
    (``/crl/<ca>.crl``) URLs written into the access and institution certificates.
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

    base = revocation_url.rstrip("/")
    waf_key, waf_cert = make_ca(WAF_CA_NAME)

    def institutional(ca: tuple, common_name: str, crl: Path) -> tuple:
        """A certificate of the institution, naming the OCSP responder and its CA's CRL."""
        return issue_certificate(*ca, common_name=common_name, organization=institution_name,
                                 organization_identifier=institution_id, days=days,
                                 ocsp_url=f"{base}/ocsp", crl_url=f"{base}/crl/{crl.name}")

    access_key, access_cert = institutional((waf_key, waf_cert), f"{institution_id} HIS access",
                                            paths.waf_ca_crl)
    qualified = [make_ca(name) for _, name in QUALIFIED_CAS]
    q_key, q_cert = qualified[0]
    inst_key, inst_cert = institutional(qualified[0], f"{institution_name} HIS",
                                        paths.qualified_ca_crl)
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
        (paths.netlock_ca_key, qualified[1][0]),
        (paths.netlock_ca_cert, qualified[1][1]),
        (paths.microsec_ca_key, qualified[2][0]),
        (paths.microsec_ca_cert, qualified[2][1]),
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
    for ca_key, ca_cert, crl in ((waf_key, waf_cert, paths.waf_ca_crl),
                                 (q_key, q_cert, paths.qualified_ca_crl),
                                 (*qualified[1], paths.netlock_ca_crl),
                                 (*qualified[2], paths.microsec_ca_crl)):
        write_crl(crl, build_crl(ca_key, ca_cert, number=1))
    paths.readme.write_text(
        _README.format(
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
            institution_id=institution_id,
            institution_name=institution_name,
            hosts=", ".join(hosts) or "(none)",
            revocation_url=base,
        ),
        encoding="utf-8",
    )
    return paths
