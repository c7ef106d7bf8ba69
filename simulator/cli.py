"""The simulator's commands: ``simulator``, ``pki`` and ``virtual-card``."""

from __future__ import annotations

import argparse
import json  # noqa: F401
import logging  # noqa: F401
import sys
from pathlib import Path  # noqa: F401

from eeszt_gw._legacy_flags import ENV_NOTE, _add, _add_broker_tls, _broker_config_error, _given  # noqa: F401


# --- pki ----------------------------------------------------------------------------------------
def _pki_init(ns: argparse.Namespace) -> int:
    from simulator.pki import init_pki
    from simulator.users import write_demo_users

    directory = Path(ns.dir)
    try:
        init_pki(directory, institution_id=ns.institution, institution_name=ns.name,
                 days=ns.days, server_hosts=tuple(ns.host), overwrite=ns.force,
                 revocation_url=ns.revocation_url)
    except FileExistsError as exc:
        print(f"error: {exc} (use --force to replace the PKI)", file=sys.stderr)
        return 2
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


def _pki_revoke(ns: argparse.Namespace) -> int:
    import os

    from cryptography import x509

    from simulator.pki import PkiPaths
    from simulator.revocation import REASONS, AlreadyRevoked, UnknownIssuer, revoke_certificate

    directory = Path(getattr(ns, "pki_dir", None) or os.environ.get("EESZT_PKI_DIR") or "pki")
    if not directory.is_dir():
        print(f"error: --pki-dir: no folder {directory}", file=sys.stderr)
        return 2
    try:
        cert = x509.load_pem_x509_certificate(Path(ns.cert).read_bytes())
    except OSError as exc:
        print(f"error: CERT: cannot read {ns.cert}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: CERT: {ns.cert} is not a PEM certificate ({exc})", file=sys.stderr)
        return 2
    try:
        done = revoke_certificate(PkiPaths.in_dir(directory).revoking_cas(), cert,
                                  reason=REASONS[ns.reason])
    except UnknownIssuer as exc:
        print(f"error: CERT: {exc}", file=sys.stderr)
        return 2
    except AlreadyRevoked as exc:
        print(f"error: CERT: {ns.cert} is already revoked: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {done.subject} (serial {done.serial:x}, reason {done.reason.name}) on "
          f"{done.ca.crl}: CRL number {done.crl_number}, {done.entries} revoked, next update "
          f"{done.next_update.isoformat()}")
    return 0


def _add_pki(sub) -> None:
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
    revoke = psub.add_parser(
        "revoke",
        help="revoke a certificate of the test PKI",
        description=(
            "Put CERT (a PEM certificate file) on the revocation list of the CA in --pki-dir that "
            "issued it: the WAF access CA (waf-ca.crl) or one of the three qualified CAs "
            "(qualified-ca.crl, netlock-ca.crl, microsec-ca.crl). The CRL is re-signed with the "
            "next CRL number and a next update 7 days ahead. A running simulator reads the "
            "changed CRL on its next request: its WS-Security check refuses a revoked signing "
            "certificate (WSSE-009), its mutual-TLS check a revoked access certificate (TLS-001), "
            "and its OCSP responder answers revoked."),
    )
    revoke.add_argument("cert", metavar="CERT", help="PEM certificate file to revoke")
    _add(revoke, "--pki-dir", "EESZT_PKI_DIR", "folder written by `eeszt-gw pki init` (default: pki)")
    revoke.add_argument("--reason", default="unspecified", choices=REVOCATION_REASONS,
                        help="RFC 5280 revocation reason (default: %(default)s)")
    revoke.set_defaults(func=_pki_revoke)


def _default_hosts(ns: argparse.Namespace) -> argparse.Namespace:
    if not ns.host:
        ns.host = ["localhost", "127.0.0.1"]
    return ns


# --- simulator ----------------------------------------------------------------------------------
def _simulator(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from simulator.server import serve
    from simulator.settings import SimulatorSettings

    try:
        settings = SimulatorSettings(**_given(ns))
    except ValidationError as exc:
        for e in exc.errors():
            print(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_simulator(sub) -> None:
    p = sub.add_parser(
        "simulator", help="serve the EESZT stand-in (HTTPS, mutual TLS)",
        description=(
            "Serve the EESZT simulator: the STS at /sts and the business services at "
            "/services/<name> over HTTPS that requires a client certificate from the WAF access "
            "CA, and a JSON admin API on 127.0.0.1 (GET /admin/stats, GET|PATCH|PUT /admin/faults, "
            "GET /admin/records, GET|PATCH /admin/rules, POST /admin/reset). Fault and rule flags are "
            "the start values; PATCH /admin/faults and /admin/rules change them at run time. "
            + ENV_NOTE),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    E = "EESZT_SIM_"
    _add(p, "--pki-dir", E + "PKI_DIR", "folder written by `eeszt-gw pki init` (default: pki)")
    _add(p, "--host", E + "HOST", "address of the HTTPS service port (default: 127.0.0.1)")
    _add(p, "--port", E + "PORT", "HTTPS service port (default: 8443)", type=int)
    _add(p, "--admin-port", E + "ADMIN_PORT", "admin port, bound to 127.0.0.1 only (default: 8444)", type=int)
    _add(p, "--ocsp-port", E + "OCSP_PORT",
         "plain-HTTP port of the OCSP responder (POST /ocsp, GET /ocsp/<base64>) and the CRLs "
         "(GET /crl/<ca>.crl), bound to --host; answers from the CRL files in --pki-dir, re-read "
         "when they change; 0 disables it (default: 8446)", type=int)
    _add(p, "--eid-port", E + "EID_PORT",
         "HTTPS port of the eID server (POST /eid/authenticate, GET /eid/health), bound to "
         "--host, server-auth TLS only: no client certificate (default: 8445)", type=int)
    _add(p, "--eid-package-ttl-s", E + "EID_PACKAGE_TTL_S",
         "lifetime of an eID request package in seconds (default: 120)", type=int)
    _add(p, "--rid-ttl-s", E + "RID_TTL_S", "lifetime of an rID package in seconds (default: 60)", type=int)
    _add(p, "--db", E + "DB", "SQLite file that records what was accepted (default: var/simulator.sqlite)")
    _add(p, "--users-file", E + "USERS_FILE", "sector users JSON (default: PKI_DIR/users.json)")
    _add(p, "--duplicates", E + "DUPLICATES",
         "what a repeated idempotency key does: dedupe returns the first record's id, naive "
         "stores a second record (default: dedupe)", choices=["dedupe", "naive"])
    _add(p, "--token-lifetime-s", E + "TOKEN_LIFETIME_S", "SAML token lifetime in seconds (default: 3600)", type=int)
    _add(p, "--max-skew-s", E + "MAX_SKEW_S", "allowed WS-Security Timestamp clock skew in seconds (default: 300)", type=float)
    _add(p, "--max-timestamp-lifetime-s", E + "MAX_TIMESTAMP_LIFETIME_S",
         "longest WS-Security Timestamp lifetime (Expires - Created) accepted, in seconds; a longer "
         "one is refused WSSE-008 (default: 900)", type=float)
    _add(p, "--require-two-factor", E + "REQUIRE_TWO_FACTOR",
         "refuse, with AUTHZ-002, doctor tokens from a password login that write patient data to "
         "eRecept, eBeutalo or eProfil (decree 39/2016 EMMI asks a multi-factor login); "
         "--no-require-two-factor turns the rule off (default: on)",
         action=argparse.BooleanOptionalAction)
    _add(p, "--latency-ms", E + "LATENCY_MS", "added latency per call (default: 0)", type=float)
    _add(p, "--jitter-ms", E + "JITTER_MS", "uniform random jitter on top of the latency (default: 0)", type=float)
    _add(p, "--error-rate", E + "ERROR_RATE", "share of calls answered HTTP 500, fault SRV-002, nothing stored (default: 0)", type=float)
    _add(p, "--reset-rate", E + "RESET_RATE", "share of calls whose connection is reset before processing (default: 0)", type=float)
    _add(p, "--hang-rate", E + "HANG_RATE", "share of calls that get no answer for --hang-s, then a reset (default: 0)", type=float)
    _add(p, "--hang-s", E + "HANG_S", "how long a hung call hangs (default: 30)", type=float)
    _add(p, "--ambiguous-rate", E + "AMBIGUOUS_RATE",
         "share of calls that are processed and stored, then reset: the client cannot know the outcome (default: 0)", type=float)
    _add(p, "--outage", E + "OUTAGE",
         "outage window START/END (ISO-8601 or +SECONDS from now); repeatable; calls in it get HTTP 503, fault SRV-001",
         action="append")
    _add(p, "--faults-on-sts", E + "FAULTS_ON_STS", "inject the faults into the STS too (default: off)", action="store_true")
    _add(p, "--seed", E + "SEED", "random seed of the fault injector, for reproducible runs", type=int)
    _add(p, "--keep-alive-s", E + "KEEP_ALIVE_S", "idle keep-alive of client connections (default: 120)", type=int)
    _add(p, "--log-level", E + "LOG_LEVEL", "debug, info, warning or error (default: info)")
    p.set_defaults(func=_simulator)


def _virtual_card(ns: argparse.Namespace) -> int:
    from simulator.card.vpcd import run_virtual_card

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_virtual_card(Path(ns.cards_dir), ns.user, host=ns.host, port=ns.port)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_virtual_card(sub) -> None:
    p = sub.add_parser(
        "virtual-card", help="insert a virtual eSZIG card into pcscd (vpcd), for tests and demos",
        description=(
            "Connect a virtual eSZIG card to pcscd's vpcd driver (connecting is inserting it; "
            "stopping this command removes it) and serve its applet: SELECT, VERIFY PIN (CAN "
            "after 2 wrong tries, then blocked), PUK unblock, INTERNAL AUTHENTICATE, the "
            "certificate and the document data. The card's files come from `eeszt-gw pki init` "
            "(PKI_DIR/cards/<user>.*). Never install vpcd on a production workstation: it "
            "listens without authentication."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--user", required=True, help="whose card, e.g. O10001")
    p.add_argument("--cards-dir", default="pki/cards", help="folder with <user>.key/.pem/.json")
    p.add_argument("--host", default="127.0.0.1", help="where pcscd's vpcd listens")
    p.add_argument("--port", type=int, default=35963, help="vpcd slot port (35963 = reader 00 00, 35964 = 00 01)")
    p.set_defaults(func=_virtual_card)


def register(sub) -> None:
    _add_pki(sub)
    _add_simulator(sub)
    _add_virtual_card(sub)
