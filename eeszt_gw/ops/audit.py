"""``eeszt-gw audit MESSAGE_ID_OR_KEY``: the story of one request, from the audit trail.

Reads ``eeszt.audit`` with :func:`workers.middleware.audit_reader.read_audit` and prints one
line per event in time order, or JSON lines with ``--json``. Exit status: 0 found, 1 nothing
found, 2 a wrong flag or an unreachable broker (:mod:`eeszt_gw.ops.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from eeszt_gw.amqp import BrokerTLS
from schemas.audit import AuditEvent

from .settings import OpsSettings
from .when import parse_optional


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


def story(url: str, tls: BrokerTLS | None, message_id_or_key: str, *,
          since: datetime | None = None, until: datetime | None = None) -> list[AuditEvent]:
    """Every audit event of one request (by message id or idempotency key) in time order;
    ``detail`` and ``actor`` are TAJ-masked (:class:`AuditEvent`). The one reader behind
    ``eeszt-gw audit`` and the console."""
    from workers.middleware.audit_reader import read_audit

    # a stable sort: events of the same instant keep the order they were written in
    return sorted(read_audit(url, message_id=message_id_or_key, since=since, until=until,
                             tls=tls), key=lambda e: e.at)


def command(settings: OpsSettings, tls: BrokerTLS | None, ns: argparse.Namespace) -> int:
    """Print the events of ``ns.id`` (a message id or an idempotency key)."""
    since = parse_optional(ns.since, "--since")
    until = parse_optional(ns.until, "--until")
    events = story(settings.broker_url, tls, ns.id, since=since, until=until)
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
