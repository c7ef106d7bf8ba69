"""The operators' commands ``status``, ``audit`` and ``dlq``: their parsers, and the one handler
that runs them.

Each command's settings (the broker, and for ``status`` the PKI folder and the report's
thresholds) are a class of :mod:`eeszt_gw.ops.settings`, whose flags are generated; what is
asked of one run (``--json``, message ids, filters, ``--why``) is a plain flag here. The work is
done by ``command(settings, tls, ns)`` of :mod:`.status`, :mod:`.audit` or :mod:`.dlq`, imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable

from eeszt_gw.config import add_settings

from .settings import OpsSettings, StatusSettings
from .when import FORMS

_RAW = argparse.RawDescriptionHelpFormatter


def _paras(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(p, 88) for p in paragraphs)


def _handler(module: str) -> Callable[[argparse.Namespace], int]:
    """The handler of a command whose work is ``eeszt_gw.ops.<module>.command``.

    It loads the command's settings and checks the broker URL and TLS files before connecting
    (a wrong one: :class:`eeszt_gw.config.UsageError`, exit 2); a broker that cannot be reached
    or fails on the way is one line on stderr, exit 2."""

    def handle(ns: argparse.Namespace) -> int:
        import importlib
        import logging

        import pika.exceptions

        from eeszt_gw.amqp import safe_url
        from eeszt_gw.config import load

        settings = load(ns.settings_class, ns, ns.cmd)
        tls = settings.checked_broker_tls()
        run = importlib.import_module(f"{__package__}.{module}").command
        logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report failures in one line
        try:
            return run(settings, tls, ns)
        except BrokenPipeError:  # whoever read the output stopped (`| head`): no broker error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (pika.exceptions.AMQPError, OSError) as exc:
            print(f"error: broker {safe_url(settings.broker_url)}: {type(exc).__name__}: "
                  f"{str(exc) or 'cannot connect'}", file=sys.stderr)
            return 2

    return handle


# --- status ---------------------------------------------------------------------------------------
_STATUS_ABOUT = (
    "Show, per EESZT service and in total: ready requests, requests in flight (and those over "
    "their time limit), retrying and parked requests with the oldest waiting age, requests "
    "waiting for a doctor's login (per doctor), dead letters, and the certificates in --pki-dir "
    "that expire soon or are revoked (on their CA's CRL in --pki-dir: critical). Needs only AMQP "
    "(no management plugin): queue depths by passive declare, breakdowns by browsing queues "
    "(messages are put back), in-flight work by asking the worker processes on the fanout "
    "exchange eeszt.control. The doctors' wait queues are listed with rabbitmqctl when it works "
    "on this host for a local broker, else from the workers' answers.")
_STATUS_EXIT_CODES = (
    "Exit codes: 0 healthy; 1 something needs attention (dead letters in eeszt.dlq, requests in "
    "flight longer than --time-limit-s, a certificate within --cert-warn-days, expired or "
    "revoked, parked requests); 2 the broker is unreachable.")


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="what the gateway holds and does now, per service; exit 0/1/2",
                       description=_paras(_STATUS_ABOUT, _STATUS_EXIT_CODES), formatter_class=_RAW)
    add_settings(p, StatusSettings)
    p.add_argument("--browse-work-queues", action="store_true",
                   help="also break the work queues down by service; this marks their messages "
                        "redelivered, so a worker asks EESZT by key before sending each of them")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_handler("status"))


# --- audit --------------------------------------------------------------------------------------
_AUDIT_ABOUT = (
    "Print every audit event of one request in time order, one line each: when (local time with "
    "its UTC offset), what (received, token, submitted, answered, rejected, retried, parked, "
    "released, waiting_for_login, dead_lettered, failed, replayed, purged), which service, which "
    "attempt, who acted (a worker process, or the operator of a replay or purge) and the detail. "
    "Events come from the RabbitMQ stream eeszt.audit (append-only; kept for its x-max-age, "
    "default 30 days). TAJs are masked. Exit status: 0 found, 1 nothing found, 2 a wrong flag or "
    "an unreachable broker.")


def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="the story of one request, from the audit trail",
                       description=_paras(_AUDIT_ABOUT), formatter_class=_RAW)
    p.add_argument("id", metavar="MESSAGE_ID_OR_KEY",
                   help="the request's message_id, or the HIS's idempotency_key (shows every "
                        "message published under that key)")
    add_settings(p, OpsSettings)
    p.add_argument("--since", metavar="WHEN",
                   help=f"only events from WHEN on: {FORMS}; also starts reading the stream "
                        "there instead of at its beginning, which is faster")
    p.add_argument("--until", metavar="WHEN", help="only events up to WHEN (same forms as --since)")
    p.add_argument("--json", action="store_true",
                   help="print the events as JSON lines (one AuditEvent per line) instead of text")
    p.set_defaults(func=_handler("audit"))


# --- dlq ----------------------------------------------------------------------------------------
_DLQ_ABOUT = (
    "Dead letters are the requests the workers could not answer (invalid with no reply address, "
    "failed after their deadline, internal errors), kept with the reason in the durable queue "
    "eeszt.dlq. Nothing in it expires by itself: retention is an explicit purge, run from cron "
    "or a Kubernetes CronJob, e.g. `eeszt-gw dlq purge --older-than 30d --why retention`. "
    "Browsing takes messages with basic.get and puts back what is not acted on, so `list` and "
    "`show` change nothing. TAJs are masked in every output.")
_REPLAY = (
    "Republish each selected dead letter's body unchanged (same idempotency key) to "
    "eeszt.requests with routing key = its eeszt-type, persistent and confirmed, with the headers "
    "eeszt-ambiguous: 1 (the worker asks EESZT whether it already landed before sending, so a "
    "replay never creates a second record) and eeszt-replayed: WHO. Only after the broker "
    "confirmed is it removed from eeszt.dlq, and a `replayed` audit event (WHO, WHY) is written. "
    "Dead letters that cannot be replayed (no type, an undeliverable reply, an invalid body, a "
    "passed deadline) stay, with the reason printed. Run it once the cause is fixed. Exit 1 if "
    "anything selected stayed or was not found.")
_PURGE = (
    "Remove the selected dead letters for good and write a `purged` audit event (WHO, WHY) for "
    "each. Select by MESSAGE_IDs and/or filters; with no selector at all it refuses unless --all "
    "is given. Retention, from cron: `eeszt-gw dlq purge --older-than 30d --why retention`.")


def _dlq_command(psub, name: str, help: str, text: str) -> argparse.ArgumentParser:
    """A ``dlq`` subcommand with the settings' flags and the filters."""
    p = psub.add_parser(name, help=help, description=_paras(text, _DLQ_ABOUT),
                        formatter_class=_RAW)
    p.set_defaults(func=_handler("dlq"))
    add_settings(p, OpsSettings)
    g = p.add_argument_group("filters (all given filters must match)")
    g.add_argument("--service", help="EESZT service, from the eeszt-type header: eRecept, "
                                     "eBeutalo, eProfil, esemenyKatalogus, eht")
    g.add_argument("--reason", metavar="TEXT",
                   help="the eeszt-reason header contains TEXT (case-insensitive)")
    g.add_argument("--code", help="the eeszt-code header, e.g. GW-FAILED, GW-VALIDATION, BIZ-001")
    g.add_argument("--since", metavar="WHEN", help=f"dead-lettered at or after WHEN: {FORMS}")
    g.add_argument("--until", metavar="WHEN", help="dead-lettered at or before WHEN (same forms)")
    g.add_argument("--older-than", metavar="AGE",
                   help="dead-lettered more than AGE ago (30d, 12h); the same as --until AGE")
    g.add_argument("--limit", type=int, metavar="N",
                   help="act on at most the first N matching dead letters (queue order)")
    return p


def _dlq_change(psub, name: str, help: str, text: str, switch: str, switch_help: str) -> None:
    """``replay`` or ``purge``: by MESSAGE_IDs or ``switch``, with WHY and WHO for the audit."""
    p = _dlq_command(psub, name, help, text)
    p.add_argument("ids", nargs="*", metavar="MESSAGE_ID", help=f"dead letters to {name}")
    p.add_argument(switch, action="store_true", help=switch_help)
    p.add_argument("--why", required=True, metavar="TEXT",
                   help="why (required): written to the audit trail with each message")
    p.add_argument("--who", metavar="NAME",
                   help="who does it, for the audit trail (default: $SUDO_USER, else $USER)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be done, change nothing, write no audit event")


def _add_dlq(sub) -> None:
    p = sub.add_parser("dlq", help="list, show, replay or purge dead letters (eeszt.dlq)",
                       description=_paras(_DLQ_ABOUT), formatter_class=_RAW)
    psub = p.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    ls = _dlq_command(psub, "list", "a table of the dead letters",
                      "Print message id, service, type, code, reason and age of each matching "
                      "dead letter, in queue order (oldest first).")
    ls.add_argument("--json", action="store_true",
                    help="print one JSON object per dead letter instead of the table")
    show = _dlq_command(psub, "show", "one dead letter: headers and body",
                        "Print the properties, the headers and the body (pretty-printed JSON; "
                        "long strings such as base64 documents shortened) of the dead letter(s) "
                        "with this message id. Exit 1 if none.")
    show.add_argument("message_id", metavar="MESSAGE_ID")
    _dlq_change(psub, "replay", "send dead letters back to the workers, safely", _REPLAY,
                "--all-matching", "replay every dead letter that matches the filters (all of "
                "them without filters) instead of naming message ids")
    _dlq_change(psub, "purge", "delete dead letters, with an audit event each", _PURGE,
                "--all", "purge every dead letter (needed when no MESSAGE_ID or filter is given)")


def register(sub) -> None:
    _add_audit(sub)
    _add_dlq(sub)
    _add_status(sub)
