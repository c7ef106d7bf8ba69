"""``eeszt-gw``: one command, with a subcommand per job.

Each subcommand imports its package lazily, so ``eeszt-gw --help`` is fast and a worker host
does not need the simulator's dependencies loaded. Flags override ``EESZT_*`` environment
variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

ENV_NOTE = "Every flag can also be set as an environment variable (shown as [env: NAME])."


def _add(p: argparse.ArgumentParser, flag: str, env: str, help: str, **kw) -> None:
    p.add_argument(flag, default=argparse.SUPPRESS, help=f"{help} [env: {env}]", **kw)


def _given(ns: argparse.Namespace, *skip: str) -> dict:
    return {k: v for k, v in vars(ns).items() if k not in {"func", "cmd", "sub", *skip}}


def _add_broker_tls(p: argparse.ArgumentParser, prefix: str = "EESZT_") -> None:
    """TLS to RabbitMQ: the files for an amqps:// --broker-url (schemas/connection.py)."""
    _add(p, "--broker-ca", prefix + "BROKER_CA", "amqps:// only: CA file (PEM) of the broker's "
         "certificate; the certificate and its host name are always verified (default: the "
         "system's CAs)")
    _add(p, "--broker-cert", prefix + "BROKER_CERT", "amqps:// only: client certificate (PEM), "
         "for a broker that requires one (default: none)")
    _add(p, "--broker-key", prefix + "BROKER_KEY", "amqps:// only: the private key (PEM) of "
         "--broker-cert (default: inside --broker-cert)")


def _broker_config_error(url: str, tls) -> str | None:
    """Why the broker URL and TLS files cannot be used (one line), or None when they can."""
    from schemas.connection import BrokerConfigError, broker_parameters

    try:
        broker_parameters(url, tls)
    except BrokerConfigError as exc:
        return str(exc)
    return None


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


# --- schema -------------------------------------------------------------------------------------
def _schema_export(ns: argparse.Namespace) -> int:
    from schemas.export import json_schemas

    out = Path(ns.dir)
    out.mkdir(parents=True, exist_ok=True)
    schemas = json_schemas()
    for name, schema in schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False))
    print(f"wrote {len(schemas)} JSON Schemas to {out}")
    return 0


def _add_schema(sub) -> None:
    p = sub.add_parser("schema", help="the message contract as JSON Schema",
                       description="Work with the message contract.")
    psub = p.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    exp = psub.add_parser(
        "export", help="write a JSON Schema per message type into DIR",
        description="Write one JSON Schema per message type (the request envelope, each payload "
                    "type inside the envelope, the reply and each reply kind) into DIR, so that "
                    "a HIS in Java or C# can generate or validate its messages.")
    exp.add_argument("dir", metavar="DIR", help="folder to write (created if missing)")
    exp.set_defaults(func=_schema_export)


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


# --- worker -------------------------------------------------------------------------------------
def _worker(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from workers.process import check, supervise
    from workers.settings import WorkerSettings

    run_check = getattr(ns, "check", False)
    try:
        settings = WorkerSettings(**_given(ns, "check"))
        settings.queue_classes()
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        for e in errors:
            print(f"error: {'.'.join(map(str, e['loc'])) or 'queues'}: {e['msg']}", file=sys.stderr)
        return 2
    if run_check:
        return check(settings)
    from schemas.connection import BrokerConfigError

    try:
        problem = _broker_config_error(settings.broker_url, settings.broker_tls())
    except BrokerConfigError as exc:
        problem = str(exc)
    if problem:
        print(f"error: broker: {problem}", file=sys.stderr)
        return 2
    return supervise(settings)


def _add_worker(sub) -> None:
    p = sub.add_parser(
        "worker", help="run the worker pool (consumes RabbitMQ, submits to EESZT)",
        description=(
            "Run a pool of worker processes. Each consumes the gateway's queues on RabbitMQ, "
            "gets SAML tokens from the STS, signs each request with WS-Security and submits it "
            "over mutual TLS, then replies to the HIS. Interactive work (eRecept, eBeutaló, "
            "eProfil) and batch work (events, EHR) have their own queues; --queues picks which "
            "this pool serves. A dead process is restarted. " + ENV_NOTE))
    E = "EESZT_"
    _add(p, "--broker-url", E + "BROKER_URL", "RabbitMQ URL, amqp:// or amqps:// (TLS) "
         "(default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p, E)
    _add(p, "--eeszt-url", E + "EESZT_URL", "EESZT base URL (default: https://localhost:8443)")
    _add(p, "--pki-dir", E + "PKI_DIR", "folder with access.pem/.key (mutual TLS), server-ca.pem, "
         "institution.pem/.key (signing) (default: pki)")
    _add(p, "--processes", E + "PROCESSES", "worker processes (default: 2)", type=int)
    _add(p, "--threads", E + "THREADS", "threads per process; in flight per process, so it hides "
         "EESZT's latency (default: 16)", type=int)
    _add(p, "--queues", E + "QUEUES", "queue classes to serve: interactive, batch, or "
         "interactive,batch (default: interactive,batch)")
    _add(p, "--queue-type", E + "QUEUE_TYPE", "type of the durable queues the gateway declares: "
         "classic, or quorum on a RabbitMQ cluster; every worker and producer of a vhost must "
         "use the same (default: classic)", choices=("classic", "quorum"))
    _add(p, "--connect-timeout-s", E + "CONNECT_TIMEOUT_S", "TCP+TLS connect timeout (default: 5)", type=float)
    _add(p, "--max-handshakes", E + "MAX_HANDSHAKES", "new TLS connections to EESZT a process "
         "opens at a time; the rest wait their turn, so a cold start does not time out (default: 4)",
         type=int)
    _add(p, "--warm-connections", E + "WARM_CONNECTIONS", "TLS connections to EESZT a process "
         "opens at start, paced by --max-handshakes, before it consumes; one that fails is left "
         "to the first request (default: one per thread; 0: none)", type=int)
    _add(p, "--read-timeout-s", E + "READ_TIMEOUT_S", "answer timeout per call (default: 30)", type=float)
    _add(p, "--transport", E + "TRANSPORT", "HTTP client to EESZT: curl (libcurl through "
         "pycurl: about a third of urllib3's CPU per request) or urllib3 (default: curl)",
         choices=("curl", "urllib3"))
    _add(p, "--call-attempts", E + "CALL_ATTEMPTS", "tries inside one call for a transient error (default: 3)", type=int)
    _add(p, "--retry-base-s", E + "RETRY_BASE_S", "first broker-side retry delay; doubles each time, with jitter (default: 1)", type=float)
    _add(p, "--retry-cap-s", E + "RETRY_CAP_S", "longest broker-side retry delay (default: 3600)", type=float)
    _add(p, "--challenge-key", E + "CHALLENGE_KEY", "Ed25519 key that signs card login challenges "
         "(default: PKI_DIR/challenge.key)")
    _add(p, "--login-window-s", E + "LOGIN_WINDOW_S", "how long a doctor has to complete a card or "
         "MobilToken login before the HIS is told (default: 120)", type=float)
    _add(p, "--challenge-ttl-s", E + "CHALLENGE_TTL_S", "lifetime of one login challenge (default: 120)", type=float)
    p.add_argument("--bridge-users", action="store_true", default=argparse.SUPPRESS,
                   help="accept a doctor's login answer only from the workstation's own broker "
                        "user bridge-<WS> (deploy/rabbitmq/add-bridge-user); without it the "
                        "answer's workstation must be the challenge's [env: EESZT_BRIDGE_USERS]")
    _add(p, "--breaker-failures", E + "BREAKER_FAILURES", "transient failures in a row that open "
         "a service's circuit: its requests are then parked in the broker (default: 5)", type=int)
    _add(p, "--probe-interval-s", E + "PROBE_INTERVAL_S", "while a circuit is open, one probe per "
         "this many seconds per worker process (default: 10)", type=float)
    _add(p, "--release-rate", E + "RELEASE_RATE", "parked requests moved back per second once "
         "the service answers again (default: 20)", type=float)
    _add(p, "--republish-delay-s", E + "REPUBLISH_DELAY_S", "a copy that a publisher sent again "
         "after a lost confirm waits this long, then EESZT is asked before it is sent (default: 60)",
         type=float)
    _add(p, "--tenants", E + "TENANTS", "whose reply_to a request may name. his-users: a request "
         "published by broker user his-NAME (its user_id, which RabbitMQ validates) must have "
         "reply_to his.NAME or his.NAME.*, or it goes to eeszt.dlq (code GW-TENANT) and HIS NAME "
         "gets a rejected reply on his.NAME; requests without a user_id pass. strict: the same, "
         "and a request without a user_id is refused too (every HIS must set it; other users, "
         "such as this worker's own and operators', are trusted). off: no check "
         "(default: his-users)", choices=("off", "his-users", "strict"))
    _add(p, "--metrics-port", E + "METRICS_PORT", "Prometheus /metrics port of the first worker "
         "process; the process in slot i of --processes listens on this port + i, so N processes "
         "use N consecutive ports; 0 disables metrics (default: 12100)", type=int)
    _add(p, "--metrics-host", E + "METRICS_HOST", "address the /metrics endpoints listen on; "
         "0.0.0.0 in a container or Kubernetes pod (default: 127.0.0.1)")
    _add(p, "--ocsp-url", E + "OCSP_URL", "OCSP responder asked about institution.pem and "
         "access.pem at start and every --cert-check-interval-s; an unreachable responder makes "
         "the status unknown, never stops the worker (default: each certificate's AIA URL)")
    _add(p, "--cert-check-interval-s", E + "CERT_CHECK_INTERVAL_S",
         "seconds between OCSP checks of the worker's certificates (default: 3600)", type=float)
    _add(p, "--heartbeat-dir", E + "HEARTBEAT_DIR", "where processes write heartbeats for --check (default: /tmp/eeszt-gw-worker)")
    _add(p, "--log-level", E + "LOG_LEVEL", "debug, info, warning or error (default: info)")
    p.add_argument("--check", action="store_true",
                   help="health probe: exit 0 if a worker process beat within 30 s, else 1")
    p.set_defaults(func=_worker)


# --- demo ---------------------------------------------------------------------------------------
def _demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(prescriptions=ns.prescriptions, referrals=ns.referrals, profiles=ns.profiles,
                    revokes=ns.revokes, events=ns.events, documents=ns.documents,
                    invalid=ns.invalid, doctors=ns.doctors, threads=ns.threads,
                    latency_ms=ns.latency_ms, broker_url=ns.broker, seed=ns.seed,
                    timeout_s=ns.timeout_s)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the whole gateway in one process on an embedded broker",
        description=(
            "Run the gateway end to end in one process: a temporary test PKI, the EESZT simulator "
            "on a loopback port (HTTPS, mutual TLS, WS-Security, STS), the worker pool on an "
            "embedded in-memory broker (or on RabbitMQ with --broker), and a synthetic HIS that "
            "publishes a realistic mix and follows its replies. Ends with a table per service."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prescriptions", type=int, default=300, help="eRecept submissions")
    p.add_argument("--revokes", type=int, default=0, help="eRecept revocations of earlier ones")
    p.add_argument("--referrals", type=int, default=150, help="eBeutaló submissions")
    p.add_argument("--profiles", type=int, default=50, help="eProfil updates")
    p.add_argument("--events", type=int, default=500,
                   help="care events; each is a start and an end message")
    p.add_argument("--documents", type=int, default=100, help="EHR documents")
    p.add_argument("--invalid", type=int, default=8,
                   help="requests that pass local validation but are refused (each names a field)")
    p.add_argument("--doctors", type=int, default=10, help="distinct doctors")
    p.add_argument("--threads", type=int, default=16, help="worker threads")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulated EESZT latency")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="run against RabbitMQ (amqp://...) instead of the embedded broker")
    p.add_argument("--seed", type=int, default=7, help="random seed of the synthetic HIS")
    p.add_argument("--timeout-s", type=float, default=600, help="give up waiting for replies after this")
    p.set_defaults(func=_demo)


# --- card bridge ----------------------------------------------------------------------------------
def _card_bridge(ns: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import CollectorRegistry
    from pydantic import ValidationError

    from card_bridge.card import PcscReader
    from card_bridge.challenge import ChallengeVerifier, load_pinned_key
    from card_bridge.daemon import Bridge, BridgeService, check
    from card_bridge.eid import EidServer
    from card_bridge.login import LocalCardClient, MobilTokenClient
    from card_bridge.metrics import BridgeMetrics
    from card_bridge.presence import PresenceMonitor
    from card_bridge.prompt import TerminalPrompt
    from card_bridge.settings import BridgeSettings
    from workers.middleware.metrics import serve_quietly

    try:
        settings = BridgeSettings(**_given(ns, "check"))
    except ValidationError as exc:
        for e in exc.errors():
            print(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    if getattr(ns, "check", False):
        return check(settings.heartbeat_dir, settings.workstation)
    from schemas.connection import BrokerConfigError

    try:
        broker_tls = settings.broker_tls()
        problem = _broker_config_error(settings.broker_url, broker_tls)
    except BrokerConfigError as exc:
        problem = str(exc)
    if problem:
        print(f"error: broker: {problem}", file=sys.stderr)
        return 2
    try:
        key = load_pinned_key(settings.challenge_key)
    except (OSError, ValueError) as exc:
        print(f"error: challenge_key: {exc}", file=sys.stderr)
        return 2
    eid = EidServer(url=settings.eid_url, ca_file=settings.eid_ca, timeout_s=settings.eid_timeout_s)
    if settings.login_method == "mobiltoken":
        client = MobilTokenClient(eid=eid, prompt_timeout_s=settings.prompt_timeout_s)
    else:
        client = LocalCardClient(reader=PcscReader(settings.reader), eid=eid,
                                 card_wait_s=settings.card_wait_s,
                                 prompt_timeout_s=settings.prompt_timeout_s)
    presence = PresenceMonitor(reader=settings.reader).start()
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry, workstation=settings.workstation, presence=presence)
    bridge = Bridge(workstation=settings.workstation, verifier=ChallengeVerifier(
        key=key, workstation=settings.workstation, used_file=settings.used_challenges_file()),
        card_client=client, prompt=TerminalPrompt(), prompt_timeout_s=settings.prompt_timeout_s,
        metrics=metrics, method=settings.login_method)
    server = serve_quietly(settings.metrics_port, registry, what="card bridge")
    service = BridgeService(bridge=bridge, url=settings.broker_url, tls=broker_tls,
                            heartbeat_dir=settings.heartbeat_dir, presence=presence)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop_event.set())
    t = threading.Thread(target=service.run, name="bridge", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    presence.stop()
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0


def _add_card_bridge(sub) -> None:
    p = sub.add_parser(
        "card-bridge", help="the workstation daemon: eSZIG card and MobilToken logins",
        description=(
            "Run the card bridge of one workstation. It consumes only this workstation's queue "
            "(eeszt.card.<WS>), accepts only challenges signed by the gateway's pinned challenge "
            "key, shows who asks and why, and logs the doctor in the way this workstation is set "
            "up (--login-method): the PIN, and the eSZIG card through PC/SC; or the code of the "
            "MobilToken app, posted straight to the eID server. It answers on the broker with "
            "the eID server's rID: the PIN and the code never leave this process except to the "
            "card and the eID server. " + ENV_NOTE))
    E = "EESZT_BRIDGE_"
    _add(p, "--workstation", E + "WORKSTATION", "this workstation's id, as HIS requests name it (required)")
    _add(p, "--broker-url", E + "BROKER_URL", "RabbitMQ URL; in production a user that may read "
         "only this workstation's queue; amqps:// for TLS "
         "(default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p, E)
    _add(p, "--challenge-key", E + "CHALLENGE_KEY", "the gateway's challenge public key or "
         "certificate, pinned (default: pki/challenge.pem)")
    _add(p, "--eid-url", E + "EID_URL", "the eID server (default: https://localhost:8445)")
    _add(p, "--eid-ca", E + "EID_CA", "CA file of the eID server's certificate (default: pki/server-ca.pem)")
    _add(p, "--login-method", E + "LOGIN_METHOD", "how doctors log in here: eszig (card and "
         "PIN) or mobiltoken (the code of the MobilToken app) (default: eszig)",
         choices=("eszig", "mobiltoken"))
    _add(p, "--reader", E + "READER", "use the first PC/SC reader whose name contains this (default: the first)")
    _add(p, "--card-wait-s", E + "CARD_WAIT_S", "how long to wait for a card (default: 30)", type=float)
    _add(p, "--prompt-timeout-s", E + "PROMPT_TIMEOUT_S", "how long to wait for the PIN (default: 120)", type=float)
    _add(p, "--metrics-port", E + "METRICS_PORT", "Prometheus /metrics port on 127.0.0.1: logins "
         "by outcome, card present, pcscd up; 0 disables it (default: 12099)", type=int)
    _add(p, "--heartbeat-dir", E + "HEARTBEAT_DIR", "heartbeat for --check (default: /tmp/eeszt-gw-bridge)")
    _add(p, "--used-challenges", E + "USED_CHALLENGES", "file of the challenge ids already used, "
         "kept until they expire so that a replay is refused after a restart too (default: "
         "HEARTBEAT_DIR/used-challenges-WORKSTATION.json)")
    _add(p, "--log-level", E + "LOG_LEVEL", "debug, info, warning or error (default: info)")
    p.add_argument("--check", action="store_true",
                   help="health probe: exit 0 if this workstation's bridge beat within 30 s and "
                        "is connected to the broker")
    p.set_defaults(func=_card_bridge)


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


# --- bench ----------------------------------------------------------------------------------------
BENCH_EXTRA = "eeszt-gw bench needs the bench extra: pip install -e '.[bench]'"
#: What `eeszt-gw bench` needs beside the product: the top-level `benchmarks` package of the
#: repository (installed with the project, not part of the product) and the bench extra.
BENCH_MODULES = ("benchmarks", "psutil", "matplotlib")


def _bench(ns: argparse.Namespace) -> int:
    """Hand `eeszt-gw bench ...` to the benchmarks package, which owns the scenarios' flags.

    The only place the product imports `benchmarks`, and only when `eeszt-gw bench` runs."""
    import importlib.util

    try:
        missing = [m for m in BENCH_MODULES if importlib.util.find_spec(m) is None]
    except (ImportError, ValueError):
        missing = list(BENCH_MODULES)
    if missing:
        print(f"{BENCH_EXTRA} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        from benchmarks.cli import register
    except ImportError as exc:
        print(f"{BENCH_EXTRA} ({exc})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="eeszt-gw")
    register(parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND"))
    inner = parser.parse_args(["bench", *ns.bench_args])
    return int(inner.func(inner) or 0)


def _add_bench(sub) -> None:
    # No flags of its own: every argument, --help included, goes to benchmarks/cli.py (a prefix
    # character no argument starts with makes argparse take them all as plain values).
    p = sub.add_parser("bench", add_help=False, prefix_chars="\0",
                       help="benchmarks that print figures measured in one run (needs the bench "
                            "extra; `eeszt-gw bench --help` lists the scenarios)")
    p.add_argument("bench_args", nargs="*", metavar="SCENARIO ...")
    p.set_defaults(func=_bench)


# --- status ---------------------------------------------------------------------------------------
STATUS_EXIT_CODES = ("exit codes: 0 healthy; 1 something needs attention (dead letters in eeszt.dlq, "
                     "requests in flight longer than --time-limit-s, a certificate within "
                     "--cert-warn-days, expired or revoked, parked requests); 2 the broker is "
                     "unreachable.")


def _status(ns: argparse.Namespace) -> int:
    import os

    from .audit_cli import UsageError, broker_tls
    from .status import StatusOptions, run

    if ns.wait_s <= 0 or ns.browse_cap < 1 or ns.time_limit_s <= 0:
        print("error: --wait-s and --time-limit-s must be positive, --browse-cap at least 1",
              file=sys.stderr)
        return 2
    url = (getattr(ns, "broker_url", None) or os.environ.get("EESZT_BROKER_URL")
           or "amqp://guest:guest@127.0.0.1:5672/%2F")
    try:
        tls = broker_tls(ns)
        problem = _broker_config_error(url, tls)
    except UsageError as exc:
        problem = str(exc)
    if problem:
        print(f"error: broker: {problem}", file=sys.stderr)
        return 2
    opts = StatusOptions(
        broker_url=url, broker_tls=tls,
        pki_dir=Path(getattr(ns, "pki_dir", None) or os.environ.get("EESZT_PKI_DIR") or "pki"),
        wait_s=ns.wait_s, time_limit_s=ns.time_limit_s, cert_warn_days=ns.cert_warn_days,
        browse_cap=ns.browse_cap, browse_work_queues=ns.browse_work_queues,
        use_rabbitmqctl=not ns.no_rabbitmqctl)
    return run(opts, as_json=ns.json)


def _add_status(sub) -> None:
    p = sub.add_parser(
        "status", help="what the gateway holds and does now, per service; exit 0/1/2",
        description=(
            "Show, per EESZT service and in total: ready requests, requests in flight (and those "
            "over their time limit), retrying and parked requests with the oldest waiting age, "
            "requests waiting for a doctor's login (per doctor), dead letters, and the "
            "certificates in --pki-dir that expire soon or are revoked (on their CA's CRL in "
            "--pki-dir: critical). Needs only AMQP (no management "
            "plugin): queue depths by passive declare, breakdowns by browsing queues (messages "
            "are put back), in-flight work by asking the worker processes on the fanout "
            "exchange eeszt.control. The doctors' wait queues are listed with rabbitmqctl when "
            "it works on this host for a local broker, else from the workers' answers. "
            + STATUS_EXIT_CODES + " " + ENV_NOTE),
        epilog=STATUS_EXIT_CODES,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    E = "EESZT_"
    _add(p, "--broker-url", E + "BROKER_URL", "RabbitMQ URL, amqp:// or amqps:// (TLS) "
         "(default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p, E)
    _add(p, "--pki-dir", E + "PKI_DIR", "folder with access.pem, institution.pem, server-ca.pem, "
         "sts.pem, challenge.pem (default: pki)")
    p.add_argument("--wait-s", type=float, default=1.5,
                   help="how long to wait for the worker processes' answers")
    p.add_argument("--time-limit-s", type=float, default=600.0,
                   help="a request in flight longer than this is flagged (the workers' dramatiq "
                        "TimeLimit is 10 min)")
    p.add_argument("--cert-warn-days", type=float, default=30.0,
                   help="flag certificates that expire within this many days")
    p.add_argument("--browse-cap", type=int, default=10_000,
                   help="messages looked at per queue for the per-service breakdown and ages; "
                        "the output says when it cut a breakdown short")
    p.add_argument("--browse-work-queues", action="store_true",
                   help="also break the work queues down by service; this marks their messages "
                        "redelivered, so a worker asks EESZT by key before sending each of them")
    p.add_argument("--no-rabbitmqctl", action="store_true",
                   help="do not ask rabbitmqctl for the doctors' wait queues; use the workers' answers")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_status)


# --- audit --------------------------------------------------------------------------------------
def _audit(ns: argparse.Namespace) -> int:
    from .audit_cli import run

    return run(ns)


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit", help="the story of one request, from the audit trail",
        description=_paras(
            "Print every audit event of one request in time order, one line each: when (local "
            "time with its UTC offset), what (received, token, submitted, answered, rejected, "
            "retried, parked, released, waiting_for_login, dead_lettered, failed, replayed, "
            "purged), which service, which attempt, who acted (a worker process, or the "
            "operator of a replay or purge) and the detail. Events come from the RabbitMQ stream "
            "eeszt.audit (append-only; kept for its x-max-age, default 30 days). TAJs are masked. "
            "Exit status: 0 found, 1 nothing found, 2 a wrong flag or an unreachable broker.",
            _BROKER_NOTE), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("id", metavar="MESSAGE_ID_OR_KEY",
                   help="the request's message_id, or the HIS's idempotency_key (shows every "
                        "message published under that key)")
    _add(p, "--broker-url", "EESZT_BROKER_URL",
         "RabbitMQ URL, amqp:// or amqps:// (default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p)
    p.add_argument("--since", metavar="WHEN",
                   help="only events from WHEN on: a duration ago (90s, 15m, 2h, 3d, 1w) or an "
                        "ISO-8601 time (UTC unless it names a zone); also starts reading the "
                        "stream there instead of at its beginning, which is faster")
    p.add_argument("--until", metavar="WHEN", help="only events up to WHEN (same forms as --since)")
    p.add_argument("--json", action="store_true",
                   help="print the events as JSON lines (one AuditEvent per line) instead of text")
    p.set_defaults(func=_audit)


# --- dlq ----------------------------------------------------------------------------------------
def _dlq(ns: argparse.Namespace) -> int:
    from .dlq import run

    return run(ns)


def _paras(*paragraphs: str) -> str:
    import textwrap

    return "\n\n".join(textwrap.fill(p, 88) for p in paragraphs)


_BROKER_NOTE = "--broker-url wins over the environment variable EESZT_BROKER_URL."
_DLQ_ABOUT = (
    "Dead letters are the requests the workers could not answer (invalid with no reply address, "
    "failed after their deadline, internal errors), kept with the reason in the durable queue "
    "eeszt.dlq. Nothing in it expires by itself: retention is an explicit purge, run from cron "
    "or a Kubernetes CronJob, e.g. `eeszt-gw dlq purge --older-than 30d --why retention`. "
    "Browsing takes messages with basic.get and puts back what is not acted on, so `list` and "
    "`show` change nothing. TAJs are masked in every output.")
_RAW = argparse.RawDescriptionHelpFormatter


def _dlq_flags(p: argparse.ArgumentParser, *, filters: bool = True) -> None:
    _add(p, "--broker-url", "EESZT_BROKER_URL",
         "RabbitMQ URL, amqp:// or amqps:// (default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p)
    g = p.add_argument_group("filters (all given filters must match)")
    g.add_argument("--service", help="EESZT service, from the eeszt-type header: eRecept, "
                                     "eBeutalo, eProfil, esemenyKatalogus, eht")
    g.add_argument("--reason", metavar="TEXT",
                   help="the eeszt-reason header contains TEXT (case-insensitive)")
    g.add_argument("--code", help="the eeszt-code header, e.g. GW-FAILED, GW-VALIDATION, BIZ-001")
    g.add_argument("--since", metavar="WHEN",
                   help="dead-lettered at or after WHEN: a duration ago (90s, 15m, 2h, 3d, 1w) "
                        "or an ISO-8601 time (UTC unless it names a zone)")
    g.add_argument("--until", metavar="WHEN", help="dead-lettered at or before WHEN (same forms)")
    g.add_argument("--older-than", metavar="AGE",
                   help="dead-lettered more than AGE ago (30d, 12h); the same as --until AGE")
    g.add_argument("--limit", type=int, metavar="N",
                   help="act on at most the first N matching dead letters (queue order)")


def _dlq_change_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--why", required=True, metavar="TEXT",
                   help="why (required): written to the audit trail with each message")
    p.add_argument("--who", metavar="NAME",
                   help="who does it, for the audit trail (default: $SUDO_USER, else $USER)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be done, change nothing, write no audit event")


def _add_dlq(sub) -> None:
    p = sub.add_parser("dlq", help="list, show, replay or purge dead letters (eeszt.dlq)",
                       description=_paras(_DLQ_ABOUT, _BROKER_NOTE), formatter_class=_RAW)
    psub = p.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    ls = psub.add_parser(
        "list", help="a table of the dead letters",
        description=_paras("Print message id, service, type, code, reason and age of each "
                           "matching dead letter, in queue order (oldest first).", _DLQ_ABOUT,
                           _BROKER_NOTE), formatter_class=_RAW)
    _dlq_flags(ls)
    ls.add_argument("--json", action="store_true",
                    help="print one JSON object per dead letter instead of the table")
    show = psub.add_parser(
        "show", help="one dead letter: headers and body",
        description=_paras("Print the properties, the headers and the body (pretty-printed "
                           "JSON; long strings such as base64 documents shortened) of the "
                           "dead letter(s) with this message id. Exit 1 if none.", _DLQ_ABOUT,
                           _BROKER_NOTE), formatter_class=_RAW)
    show.add_argument("message_id", metavar="MESSAGE_ID")
    _dlq_flags(show)
    replay = psub.add_parser(
        "replay", help="send dead letters back to the workers, safely",
        formatter_class=_RAW, description=_paras(
            "Republish each selected dead letter's body unchanged (same idempotency key) to "
            "eeszt.requests with routing key = its eeszt-type, persistent and confirmed, with "
            "the headers eeszt-ambiguous: 1 (the worker asks EESZT whether it already landed "
            "before sending, so a replay never creates a second record) and eeszt-replayed: "
            "WHO. Only after the broker confirmed is it removed from eeszt.dlq, and a `replayed` "
            "audit event (WHO, WHY) is written. Dead letters that cannot be replayed (no type, "
            "an undeliverable reply, an invalid body, a passed deadline) stay, with the reason "
            "printed. Run it once the cause is fixed. Exit 1 if anything selected stayed or "
            "was not found.", _DLQ_ABOUT, _BROKER_NOTE))
    replay.add_argument("ids", nargs="*", metavar="MESSAGE_ID", help="dead letters to replay")
    replay.add_argument("--all-matching", action="store_true",
                        help="replay every dead letter that matches the filters (all of them "
                             "without filters) instead of naming message ids")
    _dlq_change_flags(replay)
    _dlq_flags(replay)
    purge = psub.add_parser(
        "purge", help="delete dead letters, with an audit event each",
        formatter_class=_RAW, description=_paras(
            "Remove the selected dead letters for good and write a `purged` audit event (WHO, "
            "WHY) for each. Select by MESSAGE_IDs and/or filters; with no selector at all it "
            "refuses unless --all is given. Retention, from cron: "
            "`eeszt-gw dlq purge --older-than 30d --why retention`.", _DLQ_ABOUT, _BROKER_NOTE))
    purge.add_argument("ids", nargs="*", metavar="MESSAGE_ID", help="dead letters to purge")
    purge.add_argument("--all", action="store_true",
                       help="purge every dead letter (needed when no MESSAGE_ID or filter is given)")
    _dlq_change_flags(purge)
    _dlq_flags(purge)
    p.set_defaults(func=_dlq)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eeszt-gw",
        description="eeszt-gateway: a queue-based gateway between HIS systems and an EESZT-style "
                    "SOAP service space. It speaks the project's own contract and ships a "
                    "simulator; it is not the official EESZT interface.")
    parser.add_argument("--version", action="version", version=f"eeszt-gw {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_pki(sub)
    _add_schema(sub)
    _add_simulator(sub)
    _add_worker(sub)
    _add_demo(sub)
    _add_card_bridge(sub)
    _add_virtual_card(sub)
    _add_bench(sub)
    _add_audit(sub)
    _add_dlq(sub)
    _add_status(sub)
    try:
        from producers.cli import add_commands
    except ImportError:  # pragma: no cover - producers are part of the same distribution
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
