"""``eeszt-gw dlq list | show | replay | purge``: the operator's tools for dead letters.

The dead-letter store is the durable queue ``eeszt.dlq`` with no TTL and no length limit:
nothing in it expires silently. Workers put there what they could not answer
(``workers/outbox.py``): the original request bytes, the headers ``eeszt-reason``,
``eeszt-code``, ``eeszt-message-id``, ``eeszt-idempotency-key``, ``eeszt-type``, and
``timestamp`` = when. Retention is an explicit purge, run from cron or a Kubernetes CronJob:
``eeszt-gw dlq purge --older-than 30d --why retention``.

Every command browses with ``basic_get`` without acknowledging and requeues what it did not act
on (``basic_nack(multiple, requeue)``), so listing changes nothing. A replay republishes the body
unchanged (same idempotency key) to ``eeszt.requests`` with ``eeszt-ambiguous: 1``: the worker
asks EESZT whether it already landed before sending, so a replay never makes a second record.
The dead letter is removed only after the broker confirmed the republish. Replays and purges go
to the audit trail (``eeszt.audit``) with the operator's name and reason. TAJs are masked in
everything printed.

Every command survives any message in the queue (it exists for the ones nothing else could
read): a body that is not UTF-8, not JSON, nested too deep or huge is listed with its size and
``unreadable: <why>``; a message without any id is named by ``sha256:<first 16 hex digits of
its body>``, which ``show``, ``replay`` and ``purge`` accept too; control characters in
headers are shown escaped and long values cut (:mod:`eeszt_gw.ops.dead_letters`: what a dead letter
is, which ones a command selects, and how it is printed).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import time
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pika
import pika.exceptions
from pydantic import ValidationError

from schemas.audit import AuditEvent, AuditKind, mask_text
from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection
from eeszt_gw.config import UsageError
from schemas.envelope import RequestEnvelope
from schemas.replies import GW_TENANT
from schemas.soap import OPERATION_OF
from schemas.wire import (DEAD_LETTER_QUEUE, H_AMBIGUOUS, H_CODE, H_IDEMPOTENCY_KEY, H_KIND,
                          H_MESSAGE_ID, H_TYPE, REQUESTS_EXCHANGE)

from .dead_letters import DeadLetter, Selector, _text, render, summary
from .settings import OpsSettings

from schemas.wire import H_REPLAYED, H_REPLAYED_AT  # noqa: E402  (kept importable from here)


class DeadLetterQueue:
    """A connection that browses ``eeszt.dlq``; :meth:`close` requeues what was not removed."""

    def __init__(self, url: str, tls: BrokerTLS | None = None) -> None:
        # every broker address of url (comma-separated), tried in turn
        params = broker_addresses(url, tls, socket_timeout=10, blocked_connection_timeout=10)
        self.conn = open_connection(params)
        self.channel = self.conn.channel()
        # replays carry the operator's broker user as user_id (RabbitMQ checks it): a worker
        # with --tenants strict refuses requests without one (workers/tenants.py)
        creds = params[0].credentials  # the same user at every address (eeszt_gw.amqp)
        self.user_id = creds.username if isinstance(creds, pika.PlainCredentials) else None
        self._publisher = None
        self._outstanding: set[int] = set()

    def __enter__(self) -> "DeadLetterQueue":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def browse(self, selector: Selector) -> list[DeadLetter]:
        """The matching dead letters in queue order (at most ``selector.limit``)."""
        try:
            self.channel.queue_declare(DEAD_LETTER_QUEUE, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            self.channel = self.conn.channel()
            return []
        found: list[DeadLetter] = []
        while selector.limit is None or len(found) < selector.limit:
            method, props, body = self.channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
            if method is None:
                break
            self._outstanding.add(method.delivery_tag)
            dl = DeadLetter(method.delivery_tag, body, props, dict(props.headers or {}))
            if selector.matches(dl):
                found.append(dl)
        return found

    def remove(self, dl: DeadLetter) -> None:
        self.channel.basic_ack(dl.tag)
        self._outstanding.discard(dl.tag)

    def republish(self, dl: DeadLetter, *, routing_key: str, who: str) -> None:
        """Publish the body unchanged to ``eeszt.requests``; returns once confirmed.
        Raises ``pika.exceptions.AMQPError`` (NackError, UnroutableError, ...)."""
        if self._publisher is None or self._publisher.is_closed:
            self._publisher = self.conn.channel()
            self._publisher.confirm_delivery()
        headers = {H_TYPE: routing_key, H_MESSAGE_ID: dl.message_id, H_AMBIGUOUS: 1,
                   H_REPLAYED: who, H_REPLAYED_AT: int(time.time() * 1000)}
        if dl.idempotency_key:
            headers[H_IDEMPOTENCY_KEY] = dl.idempotency_key
        props = pika.BasicProperties(delivery_mode=2, headers=headers,
                                     content_type=dl.props.content_type or "application/json",
                                     message_id=dl.props.message_id or dl.message_id or None,
                                     user_id=self.user_id)
        self._publisher.basic_publish(REQUESTS_EXCHANGE, routing_key, dl.body, props,
                                      mandatory=True)

    def close(self) -> None:
        """Requeue what was not removed. Closing the channel waits for the broker's CloseOk,
        which comes after it processed every ack sent before: the removals are then final."""
        try:
            if self._outstanding and self.channel.is_open:
                self.channel.basic_nack(max(self._outstanding), multiple=True, requeue=True)
            if self.channel.is_open:
                self.channel.close()
        finally:
            self._outstanding.clear()
            if self.conn.is_open:
                self.conn.close()


def replay_problem(dl: DeadLetter, now: datetime) -> str | None:
    """Why a dead letter cannot be replayed as it is, or None."""
    if dl.header(H_KIND):
        return "it is an undeliverable reply to a HIS, not a request"
    if dl.header(H_CODE) == GW_TENANT:
        return ("the gateway refused it for its reply_to (not its sender's key): a replay would "
                "send the replies to another HIS")
    if not dl.message_type:
        return "it has no message type (no eeszt-type header, no payload.type): nowhere to route it"
    if dl.message_type not in OPERATION_OF:
        return f"unknown message type {dl.message_type!r}"
    try:
        RequestEnvelope.from_json(dl.body)
    except ValidationError as exc:
        return f"its body is not a valid request ({exc.error_count()} errors): it would be rejected again"
    # A past deadline is no obstacle: a replayed request gets a day from the replay (the
    # operator decided it should still go), see workers/pipeline.py.
    return None


def operator(ns: argparse.Namespace) -> str:
    """``--who``, else the user behind sudo, else the login name."""
    return (getattr(ns, "who", None) or os.environ.get("SUDO_USER") or os.environ.get("USER")
            or getpass.getuser())


def _event(kind: AuditKind, dl: DeadLetter, who: str, why: str) -> AuditEvent:
    return AuditEvent(message_id=dl.message_id, idempotency_key=dl.idempotency_key,
                      service=dl.service, event=kind, at=datetime.now(timezone.utc), actor=who,
                      detail=why)


# --- what the commands and the console share ------------------------------------------------------
def list_dead_letters(url: str, tls: BrokerTLS | None, sel: Selector) -> list[dict]:
    """:func:`summary` (TAJ-masked) of each dead letter ``sel`` selects, in queue order."""
    now = datetime.now(timezone.utc)
    with DeadLetterQueue(url, tls) as dlq:
        return [summary(dl, now) for dl in dlq.browse(sel)]


def show_dead_letters(url: str, tls: BrokerTLS | None, sel: Selector) -> list[str]:
    """:func:`render` (TAJ-masked) of each dead letter ``sel`` selects; empty when none."""
    now = datetime.now(timezone.utc)
    with DeadLetterQueue(url, tls) as dlq:
        return [render(dl, now) for dl in dlq.browse(sel)]


# --- commands ------------------------------------------------------------------------------------
def cmd_list(url: str, tls: BrokerTLS | None, ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = list_dead_letters(url, tls, Selector.from_args(ns))
    if ns.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 200)
    if not rows:
        console.print("no dead letters match")
        return 0
    table = Table(title=f"{DEAD_LETTER_QUEUE}: {len(rows)} matching dead letters")
    for col in ("message id", "service", "type", "code", "reason", "age", "size", "body"):
        table.add_column(col, no_wrap=col not in ("reason", "body"), overflow="fold")
    for r in rows:
        table.add_row(*(Text(str(r[k])) for k in ("message_id", "service", "type", "code",
                                                   "reason", "age", "size", "body")))
    console.print(table)
    return 0


def cmd_show(url: str, tls: BrokerTLS | None, ns: argparse.Namespace) -> int:
    found = show_dead_letters(url, tls, Selector.from_args(ns))
    if not found:
        print(mask_text(f"no dead letter {ns.message_id} in {DEAD_LETTER_QUEUE}"), file=sys.stderr)
        return 1
    print("\n\n".join(found))
    return 0


def _select_for_change(ns: argparse.Namespace, kind: AuditKind) -> Selector:
    sel = Selector.from_args(ns)
    if kind is AuditKind.REPLAYED and not (sel.ids or ns.all_matching):
        raise UsageError("name the MESSAGE_IDs to replay, or use --all-matching (with filters)")
    if kind is AuditKind.PURGED and not (sel.ids or sel.has_filters or ns.all):
        raise UsageError("name MESSAGE_IDs or filters (--older-than, --service, ...) to purge, "
                         "or --all to purge every dead letter")
    return sel


@dataclass
class Outcome:
    """What a replay or purge did with one selected dead letter."""

    ref: str
    label: str  # the ref and its type, TAJ-masked
    state: str  # "done", "kept" (with ``problem``) or "would" (a dry run)
    problem: str = ""

    def line(self, verb: str) -> str:
        """The line ``dlq replay|purge`` prints for it."""
        if self.state == "kept":
            return f"kept     {self.label}: {self.problem}"
        return f"would be {verb} {self.label}" if self.state == "would" else f"{verb:<8} {self.label}"


@dataclass
class ChangeResult:
    """What one replay or purge did: each selected dead letter's outcome, the ids not found,
    and how many audit events could not be written."""

    kind: AuditKind
    who: str
    why: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    audit_dropped: int = 0

    @property
    def done(self) -> int:
        return sum(o.state != "kept" for o in self.outcomes)

    @property
    def kept(self) -> int:
        return sum(o.state == "kept" for o in self.outcomes)

    def summary(self) -> str:
        missing = f", {len(self.missing)} not found" if self.missing else ""
        return (f"{'dry run: ' if self.dry_run else ''}{self.done} {self.kind.value}, {self.kept} "
                f"kept in {DEAD_LETTER_QUEUE}{missing} (by {self.who}: {mask_text(self.why)})")


def change(url: str, tls: BrokerTLS | None, sel: Selector, kind: AuditKind, *, who: str,
           why: str, dry_run: bool = False,
           on_outcome: Callable[[Outcome], None] | None = None) -> ChangeResult:
    """Replay (``AuditKind.REPLAYED``) or purge (``AuditKind.PURGED``) the dead letters ``sel``
    selects, recording an audit event with ``who`` and ``why`` for each one done; the one
    function behind ``dlq replay|purge`` and the console. ``on_outcome`` hears each outcome as
    it happens. Raises ``pika.exceptions.AMQPError`` or ``OSError`` for a broker that fails."""
    from workers.middleware.audit import RabbitAuditLog

    result = ChangeResult(kind, who, why, dry_run)
    now = datetime.now(timezone.utc)

    def outcome(o: Outcome) -> None:
        result.outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)

    done: list[DeadLetter] = []
    audit = None if dry_run else RabbitAuditLog(url, tls=tls)
    try:
        dlq = DeadLetterQueue(url, tls)
        try:
            found = dlq.browse(sel)
            for dl in found:
                label = mask_text(f"{dl.ref} ({dl.message_type or 'no type'})")
                problem = replay_problem(dl, now) if kind is AuditKind.REPLAYED else None
                if problem or dry_run:
                    outcome(Outcome(dl.ref, label, "kept", mask_text(problem)) if problem
                            else Outcome(dl.ref, label, "would"))
                    continue
                if kind is AuditKind.REPLAYED:
                    try:
                        dlq.republish(dl, routing_key=dl.message_type, who=who)
                    except pika.exceptions.AMQPError as exc:
                        outcome(Outcome(dl.ref, label, "kept",
                                        "the broker did not confirm the republish "
                                        f"({type(exc).__name__}: {exc})"))
                        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
                            break  # e.g. no eeszt.requests: the others would fail the same way
                        continue
                    audit.record(_event(kind, dl, who, why))  # it happened once confirmed
                dlq.remove(dl)
                done.append(dl)
                outcome(Outcome(dl.ref, label, "done"))
        finally:
            dlq.close()  # returns once the broker has taken every ack
        if kind is AuditKind.PURGED and audit is not None:
            for dl in done:
                audit.record(_event(kind, dl, who, why))
    finally:
        if audit is not None:
            audit.close()
            result.audit_dropped = audit.dropped
    result.missing = [i for i in sel.ids if not any(
        i in (d.ref, d.digest, _text(d.props.message_id or "")) for d in found)]
    return result


def _act(url: str, tls: BrokerTLS | None, ns: argparse.Namespace, kind: AuditKind) -> int:
    who, why = operator(ns), ns.why.strip()
    if not why:
        raise UsageError("--why must say why (it goes into the audit trail)")
    sel = _select_for_change(ns, kind)
    verb = kind.value
    result = change(url, tls, sel, kind, who=who, why=why, dry_run=ns.dry_run,
                    on_outcome=lambda o: print(o.line(verb)))
    print("".join(f"not found {mid}\n" for mid in result.missing), end="")
    print(result.summary())
    if result.audit_dropped:
        print(f"error: {result.audit_dropped} audit events could not be written to the audit "
              "stream", file=sys.stderr)
        return 1
    return 0 if not result.kept and not result.missing else 1


def command(settings: OpsSettings, tls: BrokerTLS | None, ns: argparse.Namespace) -> int:
    """``eeszt-gw dlq list|show|replay|purge``: exit 0 done, 1 something not done; a wrong flag
    or an unreachable broker is exit 2 (:mod:`eeszt_gw.ops.cli`)."""
    url = settings.broker_url
    if ns.sub in ("list", "show"):
        return (cmd_list if ns.sub == "list" else cmd_show)(url, tls, ns)
    return _act(url, tls, ns, AuditKind.REPLAYED if ns.sub == "replay" else AuditKind.PURGED)
