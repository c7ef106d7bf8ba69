"""The HIS-side subcommands of ``eeszt-gw``: ``publish``, ``replies`` and ``generate``.

:func:`register` adds them to an ``argparse`` subparsers object; each handler returns an exit
code. The flags of ``publish`` and ``replies`` come from their settings classes
(:mod:`producers.settings`, :func:`eeszt_gw.config.add_settings`); a bad flag, environment
variable or file raises :class:`~eeszt_gw.config.UsageError`, which ``eeszt-gw`` prints (exit
status 2). Other errors are printed as one line without a traceback; broker URLs are printed
with the password masked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from eeszt_gw.config import ENV_NOTE, UsageError, add_settings, load
from producers.generate import MALFORMED_KINDS
from producers.settings import PublishSettings, RepliesSettings

__all__ = ["add_commands", "register"]

_FMT = argparse.RawDescriptionHelpFormatter


def _text(*paragraphs: str) -> str:
    """Help text for RawDescriptionHelpFormatter: paragraphs wrapped, indented lines kept."""
    return "\n\n".join(p if p.startswith("  ") else textwrap.fill(p, 88) for p in paragraphs)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _quiet_stdout() -> None:
    # Python would report the broken pipe again when it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _quiet_pika() -> None:
    # pika logs every failed connect at ERROR with a traceback; the commands report the
    # outcome themselves in one line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


# --- publish ------------------------------------------------------------------------------------


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def _publish(ns: argparse.Namespace) -> int:
    from producers.batch import BatchPublisher
    from producers.errors import BrokerUnavailable, InvalidRequest, ProducerError
    from producers.publisher import parse_line

    settings = load(PublishSettings, ns, "publish")
    broker = settings.connection()
    try:
        source: IO[str] = sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")
    except OSError as exc:
        raise UsageError(str(exc)) from None
    _quiet_pika()
    total = None if ns.file == "-" else _count_lines(Path(ns.file))
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    read = invalid = handed = 0
    line_of: dict[str, int] = {}
    started = time.monotonic()
    progress = Progress(TextColumn("publishing"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} msg/s"), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=ns.no_progress, transient=True)
    try:
        with source, progress, BatchPublisher(url=settings.broker_url,
                                              max_in_flight=settings.max_in_flight,
                                              declare_topology=not ns.no_declare,
                                              set_user_id=not ns.no_user_id,
                                              **broker) as publisher:
            task = progress.add_task("publish", total=total, rate="-")
            for lineno, line in enumerate(source, 1):
                read += 1
                if line.strip():
                    try:
                        request = parse_line(line, lineno)
                    except InvalidRequest as exc:
                        invalid += 1
                        print(exc, file=sys.stderr)
                    else:
                        publisher.publish(request)
                        line_of[str(request.message_id)] = lineno
                        handed += 1
                if lineno % 500 == 0:
                    rate = handed / max(time.monotonic() - started, 1e-9)
                    progress.update(task, completed=lineno, rate=f"{rate:,.0f}")
            progress.update(task, completed=read)
            summary = publisher.flush(settings.confirm_timeout_s)
    except BrokerUnavailable as exc:
        if handed:
            _err(f"{exc.reason}; {len(exc.unconfirmed)} of the {handed} messages handed over "
                 "were not confirmed (publish the file again: the gateway dedupes)")
        else:
            _err(exc.reason)
        return 2
    except (ProducerError, UnicodeDecodeError, OSError) as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err(f"interrupted after {read} lines; messages not confirmed may be missing")
        return 2
    elapsed = max(time.monotonic() - started, 1e-9)
    for failure in summary.failed:
        print(f"line {line_of.get(failure.message_id, '?')}: message {failure.message_id} not "
              f"published: {failure.reason}", file=sys.stderr)
    for message_id in summary.unconfirmed:
        print(f"line {line_of.get(message_id, '?')}: message {message_id} not confirmed within "
              f"{settings.confirm_timeout_s:g} s", file=sys.stderr)
    failed = len(summary.failed) + len(summary.unconfirmed)
    print(f"lines read: {read}, published: {summary.confirmed}, invalid: {invalid}, "
          f"failed: {failed}, {summary.confirmed / elapsed:,.0f} msgs/s ({elapsed:.2f} s)")
    return 0 if failed == 0 else 1


# --- replies ------------------------------------------------------------------------------------


def _describe(reply: Any) -> str:
    """One readable line for a :class:`schemas.replies.Reply`."""
    head = f"{reply.at:%H:%M:%S} {reply.kind:<8} {reply.message_type:<15} {reply.idempotency_key}"
    match reply.kind:
        case "accepted":
            return f"{head}  eeszt_id={reply.eeszt_id} version={reply.version}"
        case "rejected":
            where = f" field={reply.field}" if reply.field else ""
            return f"{head}  {reply.code}{where}: {reply.reason}"
        case "failed":
            return f"{head}  {reply.reason} (kept in {reply.kept_in})"
        case _:
            attempt = f" attempt {reply.attempt}" if reply.attempt else ""
            return f"{head}  {reply.state.value}{attempt} {reply.detail}".rstrip()


def _replies(ns: argparse.Namespace) -> int:
    from producers.errors import ProducerError
    from producers.replies import ReplyListener
    from schemas.replies import is_final

    settings = load(RepliesSettings, ns, "replies")
    if ns.no_declare and ns.transient:
        raise UsageError("--transient declares a queue; --no-declare declares nothing")
    broker = settings.connection()
    key = settings.reply_routing_key
    _quiet_pika()
    tally: Counter[str] = Counter()
    finals = 0
    try:
        with ReplyListener(settings.broker_url, routing_key=key, queue=settings.reply_queue,
                           durable=not ns.transient, declare=not ns.no_declare,
                           **broker) as listener:
            listener.open()
            print(f"listening on queue {listener.queue!r} (routing key {key!r})", file=sys.stderr)
            try:
                while ns.count is None or finals < ns.count:
                    reply = listener.get(timeout=ns.timeout)
                    if reply is None:
                        break
                    tally[reply.kind] += 1
                    finals += is_final(reply)
                    print(reply.model_dump_json() if ns.json else _describe(reply), flush=True)
            except KeyboardInterrupt:
                pass  # a normal stop: what was printed gets acked on the way out
    except ProducerError as exc:
        _err(str(exc))
        return 2
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (e.g. `| head`); the unprinted reply stays queued
        return 0
    parts = ", ".join(f"{kind} {tally[kind]}" for kind in ("accepted", "rejected", "failed",
                                                           "status"))
    print(f"replies: {sum(tally.values())} ({parts})", file=sys.stderr)
    return 1 if ns.count is not None and finals < ns.count else 0


# --- generate -----------------------------------------------------------------------------------

_COUNTS = {
    "prescriptions": "eRecept submits (1-2 medicines that fit a real BNO diagnosis)",
    "revokes": "eRecept revokes; they name --revoke-ids, else ids that do not exist (rejected)",
    "referrals": "eBeutaló referrals to another institution, valid 14-90 days",
    "profiles": "eProfil updates (allergies, chronic conditions, blood type)",
    "events": "care events; each writes a start line and a later end line (2 lines)",
    "documents": "EHR documents with a small plain-text report in base64",
    "invalid": "valid-looking requests EESZT refuses with a field: revokes of unknown "
               "prescriptions (prescriptionId) and eRecepts acted by the institution (acting)",
    "malformed": f"lines that fail local validation, each on a different field "
                 f"({len(MALFORMED_KINDS)} kinds, then they repeat)",
}


def _generate(ns: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from producers.generate import generate
    from schemas.replies import describe_validation_error

    counts = {name: getattr(ns, name) for name in _COUNTS}
    try:
        ids = Path(ns.revoke_ids).read_text(encoding="utf-8").split() if ns.revoke_ids else []
        lines = generate(**counts, doctors=ns.doctors, institution=ns.institution,
                         reply_to=ns.reply_to, seed=ns.seed, prescription_ids=ids)
    except ValidationError as exc:
        field, reason = describe_validation_error(exc)
        raise UsageError(f"{field}: {reason}") from None
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    written = 0
    try:
        out: IO[str] = sys.stdout if ns.out == "-" else open(ns.out, "w", encoding="utf-8")
        try:
            for line in lines:
                out.write(line + "\n")
                written += 1
        finally:
            if out is sys.stdout:
                out.flush()
            else:
                out.close()
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except OSError as exc:
        _err(str(exc))
        return 2
    detail = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    print(f"wrote {written} lines to {'stdout' if ns.out == '-' else ns.out}"
          f"{': ' + detail if detail else ''}", file=sys.stderr)
    return 0


# --- the parsers --------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``publish``, ``replies`` and ``generate`` to ``subparsers`` (from
    ``ArgumentParser.add_subparsers``); each sets ``func`` to a handler returning an exit code."""
    p = subparsers.add_parser(
        "publish", formatter_class=_FMT, help="validate a JSONL file and publish it, confirmed",
        description=_text(
            "Validate each line of FILE (one request envelope as JSON per line) and publish the "
            "valid ones to the eeszt.requests exchange with publisher confirms, many in flight. "
            "Invalid lines are listed on stderr and skipped; blank lines are ignored:",
            "  line 17: payload.taj: TAJ check digit is 3, expected 8",
            "A summary follows on stdout: lines read, published (confirmed by the broker), "
            "invalid, failed, messages/s. If the broker connection breaks, unconfirmed lines are "
            "published again, marked so that the workers ask EESZT before sending them: a "
            "reconnect never creates a second record. Publishing the same file twice, however, "
            "sends each request twice; only an EESZT that deduplicates by idempotency key makes "
            "that harmless.",
            "Each message carries the broker user of --broker-url as its user_id property "
            "(RabbitMQ checks it). A HIS user made by deploy/rabbitmq/add-his-user NAME (his-NAME) may "
            "only ask for replies on his.NAME or his.NAME.*: the gateway refuses a request with "
            "another reply_to (it goes to eeszt.dlq, code GW-TENANT, and his.NAME gets a "
            "rejected reply naming reply_to). Such a user may configure nothing: use "
            "--no-declare.", ENV_NOTE),
        epilog="exit status: 0 every valid line was confirmed; 1 some were nacked, returned or "
               "not confirmed in time (listed on stderr with their line); 2 usage error, or the "
               "broker is unreachable.")
    p.add_argument("file", metavar="FILE.jsonl", help="UTF-8 JSON lines; - reads stdin")
    p.add_argument("--no-declare", action="store_true",
                   help="do not declare the exchanges and work queues first (when the broker "
                        "user may not configure them; they must then exist)")
    p.add_argument("--no-user-id", action="store_true",
                   help="do not set the user_id property. By default every message carries the "
                        "broker user of --broker-url as user_id (RabbitMQ refuses a publish whose "
                        "user_id is not the connection's user); the gateway uses it to check "
                        "that broker user his-NAME asks for replies only on his.NAME or "
                        "his.NAME.* (other reply_to values are refused), and a gateway running "
                        "with --tenants strict refuses requests without it. Only for a broker "
                        "whose login name differs from the URL's user (OAuth 2, EXTERNAL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_settings(p, PublishSettings, title="settings")
    p.set_defaults(func=_publish)

    r = subparsers.add_parser(
        "replies", formatter_class=_FMT, help="print the gateway's replies to a HIS",
        description=_text(
            "Consume the replies sent to a HIS routing key on exchange eeszt.replies and print "
            "one line per reply (or JSON lines with --json); a tally by kind follows on stderr. "
            "The queue is declared durable and bound to the key, so replies that arrive while "
            "nobody listens wait in it; with --no-declare (a HIS broker user that may only read "
            "its own queue) it must exist already. A printed reply is acknowledged (removed "
            "from the queue); Ctrl-C stops cleanly.", ENV_NOTE),
        epilog="exit status: 0 done; 1 --count was given and fewer final replies arrived before "
               "--timeout; 2 usage error, or the broker is unreachable.")
    r.add_argument("--count", type=int, metavar="N",
                   help="stop after N final replies (accepted, rejected or failed; status "
                        "updates do not count) (default: run until --timeout or Ctrl-C)")
    r.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds without a reply (default: wait for ever)")
    r.add_argument("--json", action="store_true",
                   help="print each reply as one JSON line instead of a readable line")
    r.add_argument("--transient", action="store_true",
                   help="declare a queue that disappears when this command ends (for "
                        "watching by hand; replies sent while nobody listens are lost)")
    r.add_argument("--no-declare", action="store_true",
                   help="declare and bind nothing, only consume the queue, which must exist: "
                        "for a HIS broker user made by deploy/rabbitmq/add-his-user (it may read "
                        "only his.NAME.replies and configure nothing). A missing queue (404) or "
                        "one this user may not read (403) is an error naming the queue")
    add_settings(r, RepliesSettings, title="settings")
    r.set_defaults(func=_replies)

    g = subparsers.add_parser(
        "generate", formatter_class=_FMT, help="write realistic synthetic requests as JSONL",
        description=_text(
            "Write a shuffled mix of realistic requests as JSON lines for `publish`: valid TAJ "
            "numbers, Hungarian patient names, real BNO codes, medicines with TTT codes and "
            "dosages, doctors O10001.. at workstations WS-01.., care events as start/end "
            "pairs. Lines carry no created_at or deadline: they are set when a line is "
            "published. A summary goes to stderr."),
        epilog="exit status: 0 success; 2 bad arguments, or the output cannot be written.")
    for name, text in _COUNTS.items():
        g.add_argument(f"--{name}", type=int, default=0, metavar="N",
                       help=f"{text} (default: 0)")
    g.add_argument("--doctors", type=int, default=10, metavar="N",
                   help="doctors to spread the doctor requests over (default: %(default)s)")
    g.add_argument("--institution", default="H100200", metavar="ID",
                   help="the sending institution (default: %(default)s)")
    g.add_argument("--reply-to", default="his.demo", metavar="KEY",
                   help="routing key for the replies (default: %(default)s)")
    g.add_argument("--revoke-ids", metavar="FILE",
                   help="EESZT prescription ids for --revokes, whitespace separated (e.g. the "
                        "eeszt_id of accepted replies)")
    g.add_argument("--seed", type=int, metavar="N",
                   help="random seed: the same seed on the same day gives the same lines")
    g.add_argument("--out", default="-", metavar="FILE",
                   help="where to write; - is stdout (default: %(default)s)")
    g.set_defaults(func=_generate)


#: The former name of :func:`register`.
add_commands = register
