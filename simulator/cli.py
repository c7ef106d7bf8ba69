"""The simulator's commands: ``simulator``, ``pki`` and ``virtual-card``.

The flags of ``simulator``, ``pki revoke`` and ``virtual-card`` are generated from their
settings classes (:mod:`simulator.settings`); ``pki init``, a one-shot tool, has its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path


# --- pki ----------------------------------------------------------------------------------------
def _pki_init(ns: argparse.Namespace) -> int:
    from eeszt_gw.config import UsageError
    from simulator.pki import init_pki
    from simulator.users import write_demo_users

    directory = Path(ns.dir)
    try:
        init_pki(directory, institution_id=ns.institution, institution_name=ns.name,
                 days=ns.days, server_hosts=tuple(ns.host), overwrite=ns.force,
                 revocation_url=ns.revocation_url)
    except FileExistsError as exc:
        raise UsageError(f"{exc} (use --force to replace the PKI)") from None
    users = directory / "users.json"
    write_demo_users(users, institution=ns.institution, count=ns.doctors)
    print(f"test PKI written to {directory} (institution {ns.institution}); see {directory}/README.txt")
    print(f"{ns.doctors} demo doctors for the simulator (passwords, MobilToken secrets, virtual "
          f"cards; the workers never read them): {users}")
    print("This is a TEST PKI: the private keys are unencrypted. Never use it in production.")
    return 0


#: RFC 5280 CRLReason names (simulator.revocation.REASONS; listed here to keep --help fast)
REVOCATION_REASONS = ("unspecified", "key_compromise", "ca_compromise", "affiliation_changed",
                      "superseded", "cessation_of_operation", "certificate_hold",
                      "privilege_withdrawn", "aa_compromise")


def _pki_revoke(settings, ns: argparse.Namespace) -> int:
    import sys

    from cryptography import x509

    from eeszt_gw.config import UsageError
    from simulator.pki import PkiPaths
    from simulator.revocation import REASONS, AlreadyRevoked, UnknownIssuer, revoke_certificate

    directory = settings.pki_dir
    if not directory.is_dir():
        raise UsageError(f"--pki-dir: no folder {directory}")
    try:
        cert = x509.load_pem_x509_certificate(Path(ns.cert).read_bytes())
    except OSError as exc:
        raise UsageError(f"CERT: cannot read {ns.cert}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"CERT: {ns.cert} is not a PEM certificate ({exc})") from None
    try:
        done = revoke_certificate(PkiPaths.in_dir(directory).revoking_cas(), cert,
                                  reason=REASONS[ns.reason])
    except UnknownIssuer as exc:
        raise UsageError(f"CERT: {exc}") from None
    except AlreadyRevoked as exc:  # not a usage error: nothing to do, exit 1
        print(f"error: CERT: {ns.cert} is already revoked: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {done.subject} (serial {done.serial:x}, reason {done.reason.name}) on "
          f"{done.ca.crl}: CRL number {done.crl_number}, {done.entries} revoked, next update "
          f"{done.next_update.isoformat()}")
    return 0


def _add_pki(sub) -> None:
    from eeszt_gw.config import add_command
    from simulator.settings import PkiRevokeSettings

    p = sub.add_parser("pki", help="create a test PKI, revoke its certificates",
                       description="Create a test PKI; revoke its certificates.")
    psub = p.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    init = psub.add_parser(
        "init",
        help="write a test PKI into DIR",
        description=(
            "Write a test PKI into DIR with `cryptography` (RSA-2048, SHA-256): the WAF access CA "
            "and a client access certificate carrying the institution id (mutual TLS), three "
            "simulated qualified CAs (NISZ GovCA, Netlock, Microsec; the first issues the "
            "institution authentication certificate for WS-Security signing and STS x509 login), "
            "a CRL per revoking CA (*.crl, DER), the STS signing "
            "key, the simulator's server certificate and its CA, a card CA for eSZIG, and "
            "users.json with demo doctors. Private keys are written unencrypted with mode 0600."
        ),
    )
    init.add_argument("dir", metavar="DIR", help="folder to write (created if missing)")
    init.add_argument("--institution", default="H100200",
                      help="institution id put in the institution certificate (default: %(default)s)")
    init.add_argument("--name", default="Demo Kórház",
                      help="institution name (default: %(default)s)")
    init.add_argument("--days", type=int, default=365,
                      help="validity of the issued certificates in days (default: %(default)s)")
    init.add_argument("--host", action="append", default=None,
                      help="name or IP for the server certificate; repeat for more "
                           "(default: localhost and 127.0.0.1)")
    init.add_argument("--doctors", type=int, default=10,
                      help="demo doctors to write into users.json (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace files that exist")
    init.add_argument("--revocation-url", default="http://127.0.0.1:8446",
                      help="base URL of the simulator's OCSP responder and CRLs, written into "
                           "the access and institution certificates as <URL>/ocsp and "
                           "<URL>/crl/<ca>.crl (default: %(default)s)")
    init.set_defaults(func=lambda ns: _pki_init(_default_hosts(ns)))
    revoke = add_command(
        psub, "revoke", PkiRevokeSettings, _pki_revoke, table="pki",
        help="revoke a certificate of the test PKI",
        description=(
            "Put CERT (a PEM certificate file) on the revocation list of the CA in --pki-dir that "
            "issued it: the WAF access CA (waf-ca.crl) or one of the three qualified CAs "
            "(qualified-ca.crl, netlock-ca.crl, microsec-ca.crl). The CRL is re-signed with the "
            "next CRL number and a next update 7 days ahead. A running simulator reads the "
            "changed CRL on its next request: its WS-Security check refuses a revoked signing "
            "certificate (WSSE-009), its mutual-TLS check a revoked access certificate (TLS-001), "
            "and its OCSP responder answers revoked."))
    revoke.add_argument("cert", metavar="CERT", help="PEM certificate file to revoke")
    revoke.add_argument("--reason", default="unspecified", choices=REVOCATION_REASONS,
                        help="RFC 5280 revocation reason (default: %(default)s)")


def _default_hosts(ns: argparse.Namespace) -> argparse.Namespace:
    if not ns.host:
        ns.host = ["localhost", "127.0.0.1"]
    return ns


# --- simulator and virtual-card ----------------------------------------------------------------
def _simulator(settings, ns: argparse.Namespace) -> int:
    from simulator.server import serve

    _log_at(settings.log_level)
    _usage_errors(serve, settings)
    return 0


def _virtual_card(settings, ns: argparse.Namespace) -> int:
    from simulator.card.vpcd import run_virtual_card

    _log_at("info")
    _usage_errors(run_virtual_card, settings.cards_dir, settings.user, host=settings.vpcd_host,
                  port=settings.vpcd_port)
    return 0


def _log_at(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _usage_errors(run, *args, **kwargs) -> None:
    """``run(...)``, with a missing file or a bad value turned into one ``error:`` line."""
    from eeszt_gw.config import UsageError

    try:
        run(*args, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def register(sub) -> None:
    from eeszt_gw.config import add_command
    from simulator.settings import SimulatorSettings, VirtualCardSettings

    _add_pki(sub)
    add_command(
        sub, "simulator", SimulatorSettings, _simulator,
        help="serve the EESZT stand-in (HTTPS, mutual TLS)",
        description=(
            "Serve the EESZT simulator: the STS at /sts and the business services at "
            "/services/<name> over HTTPS that requires a client certificate from the WAF access "
            "CA, and a JSON admin API on 127.0.0.1 (GET /admin/stats, GET|PATCH|PUT /admin/faults, "
            "GET /admin/records, GET|PATCH /admin/rules, POST /admin/reset). Fault and rule flags "
            "are the start values; PATCH /admin/faults and /admin/rules change them at run time."))
    add_command(
        sub, "virtual-card", VirtualCardSettings, _virtual_card,
        help="insert a virtual eSZIG card into pcscd (vpcd), for tests and demos",
        description=(
            "Connect a virtual eSZIG card to pcscd's vpcd driver (connecting is inserting it; "
            "stopping this command removes it) and serve its applet: SELECT, VERIFY PIN (CAN "
            "after 2 wrong tries, then blocked), PUK unblock, INTERNAL AUTHENTICATE, the "
            "certificate and the document data. The card's files come from `eeszt-gw pki init` "
            "(PKI_DIR/cards/<user>.*). Never install vpcd on a production workstation: it "
            "listens without authentication."))
