"""``eeszt-gw audit MESSAGE_ID_OR_KEY``, and what the operator commands share with ``dlq``.

``audit`` reads ``eeszt.audit`` with :func:`workers.middleware.audit_reader.read_audit` and
prints one line per event in time order, or JSON lines with ``--json``. Exit status: 0 found,
1 nothing found, 2 a wrong flag or an unreachable broker. The helpers below (time flags, the
broker URL, error handling) are shared with :mod:`eeszt_gw.ops.dlq`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from schemas.audit import AuditEvent
from eeszt_gw.amqp import BrokerConfigError, BrokerTLS, safe_url

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|min|m|h|d|w)\s*$")


class UsageError(Exception):
    """A flag's value is wrong; the message says which and why."""


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``/``3d``/``90s``/``15m``/``1w`` ago, or an ISO-8601 time (UTC unless it names a
    zone). Raises :class:`UsageError`."""
    now = now or datetime.now(timezone.utc)
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is neither a duration (90s, 15m, 2h, 3d, 1w) nor an "
                         "ISO-8601 time (2026-11-26T08:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def broker_url(ns: argparse.Namespace) -> str:
    """``--broker-url``, else ``$EESZT_BROKER_URL``, else the local default."""
    return getattr(ns, "broker_url", None) or os.environ.get("EESZT_BROKER_URL") or DEFAULT_BROKER_URL


def broker_tls(ns: argparse.Namespace) -> BrokerTLS | None:
    """``--broker-ca/--broker-cert/--broker-key``, else ``$EESZT_BROKER_CA/_CERT/_KEY``.

    Raises:
        UsageError: a key without a certificate.
    """
    def pick(name: str) -> str | None:
        return getattr(ns, name, None) or os.environ.get(f"EESZT_{name.upper()}") or None

    try:
        return BrokerTLS.from_paths(pick("broker_ca"), pick("broker_cert"), pick("broker_key"))
    except BrokerConfigError as exc:
        raise UsageError(str(exc)) from None


def guarded(handler: Callable[[argparse.Namespace], int], ns: argparse.Namespace) -> int:
    """Run a command; a wrong flag or an unreachable broker is one line on stderr and exit 2."""
    import pika.exceptions

    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report failures in one line
    try:
        return handler(ns)
    except (UsageError, BrokerConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (pika.exceptions.AMQPError, OSError) as exc:
        print(f"error: broker {safe_url(broker_url(ns))}: {type(exc).__name__}: "
              f"{str(exc) or 'cannot connect'}", file=sys.stderr)
    return 2


def line(event: AuditEvent) -> str:
    """One readable line: time (local, with its offset), what, where, attempt, who, detail."""
    parts = [event.at.astimezone().isoformat(timespec="milliseconds"),
             f"{event.event.value:<17}"]
    if event.service:
        parts.append(event.service)
    if event.attempt is not None:
        parts.append(f"attempt {event.attempt}")
    parts.append(f"by {event.actor}")
    text = "  ".join(parts)
    return f"{text}: {event.detail}" if event.detail else text


def run(ns: argparse.Namespace) -> int:
    return guarded(_story, ns)


def _story(ns: argparse.Namespace) -> int:
    from workers.middleware.audit_reader import read_audit

    since = parse_when(ns.since) if ns.since else None
    until = parse_when(ns.until) if ns.until else None
    # a stable sort: events of the same instant keep the order they were written in
    events = sorted(read_audit(broker_url(ns), message_id=ns.id, since=since, until=until,
                               tls=broker_tls(ns)), key=lambda e: e.at)
    if not events:
        print(f"no audit events for {ns.id}", file=sys.stderr)
        return 1
    if ns.json:
        for event in events:
            print(json.dumps(event.model_dump(mode="json"), ensure_ascii=False))
        return 0
    ids = list(dict.fromkeys(e.message_id for e in events))
    keys = list(dict.fromkeys(e.idempotency_key for e in events if e.idempotency_key))
    services = list(dict.fromkeys(e.service for e in events if e.service))
    print(f"message {', '.join(ids)}" + (f"  key {', '.join(keys)}" if keys else "")
          + (f"  {', '.join(services)}" if services else "") + f"  ({len(events)} events)")
    for event in events:
        print("  " + line(event))
    return 0
