"""The operators' commands: ``status``, ``audit`` and ``dlq``."""

from __future__ import annotations

import argparse
import json  # noqa: F401
import logging  # noqa: F401
import sys
from pathlib import Path  # noqa: F401

from eeszt_gw._legacy_flags import ENV_NOTE, _add, _add_broker_tls, _broker_config_error, _given  # noqa: F401


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


def register(sub) -> None:
    _add_audit(sub)
    _add_dlq(sub)
    _add_status(sub)
