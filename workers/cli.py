"""The ``worker`` command: the worker pool's flags and start."""

from __future__ import annotations

import argparse
import json  # noqa: F401
import logging  # noqa: F401
import sys
from pathlib import Path  # noqa: F401

from eeszt_gw._legacy_flags import ENV_NOTE, _add, _add_broker_tls, _broker_config_error, _given  # noqa: F401


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
    from eeszt_gw.amqp import BrokerConfigError

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


def register(sub) -> None:
    _add_worker(sub)
