"""``eeszt-gw status``: what the gateway holds and does right now, per EESZT service.

Everything comes over plain AMQP 0-9-1, so it works from an ops laptop without the management
plugin: ready counts by passive ``queue_declare``; per-service breakdowns and ages by browsing a
queue (``basic_get`` without ack up to a cap, then one ``basic_nack(multiple, requeue)``); the
requests in flight by a status request on the fanout exchange ``eeszt.control``, answered by
every worker process (``workers.control``). The doctors' wait queues cannot be listed over
AMQP: their names come from ``rabbitmqctl`` when it works on this host for the broker's own
node, else from the workers' answers. Certificates are read from ``--pki-dir``.

Browsing a work queue marks its messages redelivered, and a worker asks EESZT by idempotency
key before sending a redelivered request, so the work queues are browsed only on request
(``browse_work_queues``); retry tiers, parked, wait and dead-letter queues are always browsed.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pika.exceptions

from schemas.soap import SERVICES
from schemas.wire import BINDINGS, DEAD_LETTER_QUEUE, RETRY_TIERS_S, login_wait_queue, retry_queue

from .status_broker import (
    UNKNOWN,
    BrokerUnreachable,
    BrokerView,
    describe_error,
    message_facts,
    rabbitmqctl_queue_names,
    safe_url,
)
from .status_certs import check_certificates

WAIT_PREFIX = login_wait_queue("")
COUNTERS = ("queued", "in_flight", "over_time_limit", "retrying", "parked", "waiting_login",
            "dead_letters")


def parked_queue(service: str) -> str:
    """A service's parked queue (EESZT is down for it; the requests wait durably)."""
    return f"eeszt.parked.{service}"


@dataclass(frozen=True)
class StatusOptions:
    """What ``eeszt-gw status`` was asked; built once by the CLI."""

    broker_url: str
    pki_dir: Path | None = None
    wait_s: float = 1.5
    time_limit_s: float = 600.0
    cert_warn_days: float = 30.0
    browse_cap: int = 10_000
    browse_work_queues: bool = False
    use_rabbitmqctl: bool = True


# --- putting it together -----------------------------------------------------------------------
def _started_at(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


class _Tally:
    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {
            name: {c: 0 for c in COUNTERS} | {"oldest_waiting_s": None} for name in SERVICES}

    def row(self, service: str) -> dict[str, Any]:
        if service not in self.services:
            self.services[service] = {c: 0 for c in COUNTERS} | {"oldest_waiting_s": None}
        return self.services[service]

    def add(self, service: str, counter: str, age: float | None = None, waiting: bool = True) -> None:
        row = self.row(service)
        row[counter] += 1
        if waiting and age is not None:
            row["oldest_waiting_s"] = max(row["oldest_waiting_s"] or 0.0, age)


def collect(opts: StatusOptions, *, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """The whole status report as plain data. Raises :class:`BrokerUnreachable`."""
    tally, queues, truncated, notes = _Tally(), {}, [], []
    with BrokerView(opts.broker_url) as broker:
        workers = broker.ask_workers(opts.wait_s)
        t = now()

        def browse(queue: str, counter: str, *, ready: int, waiting: bool = True,
                   into: Callable[[str, float | None, str | None], None] | None = None) -> None:
            if not ready:
                return
            seen = broker.browse(queue, opts.browse_cap)
            if len(seen) < ready:
                truncated.append({"queue": queue, "ready": ready, "browsed": len(seen)})
            for props, body in seen:
                service, age, code = message_facts(props, body, t)
                tally.add(service, counter, age, waiting)
                if into:
                    into(service, age, code)

        for work in BINDINGS:
            queues[work] = ready = broker.depth(work)
            if opts.browse_work_queues:
                browse(work, "queued", ready=ready or 0)
            for tier in RETRY_TIERS_S:
                name = retry_queue(work, tier)
                queues[name] = ready = broker.depth(name)
                browse(name, "retrying", ready=ready or 0)
        for service in SERVICES:
            name = parked_queue(service)
            queues[name] = ready = broker.depth(name)
            if ready:
                tally.row(service)["parked"] += ready
                for props, body in broker.browse(name, opts.browse_cap):
                    age = message_facts(props, body, t)[1]
                    if age is not None:
                        row = tally.row(service)
                        row["oldest_waiting_s"] = max(row["oldest_waiting_s"] or 0.0, age)

        dead = {"total": 0, "by_service": Counter(), "by_code": Counter(), "oldest_s": None}

        def dead_fact(service: str, age: float | None, code: str | None) -> None:
            dead["by_service"][service] += 1
            dead["by_code"][code or UNKNOWN] += 1
            if age is not None:
                dead["oldest_s"] = max(dead["oldest_s"] or 0.0, age)

        queues[DEAD_LETTER_QUEUE] = dead["total"] = broker.depth(DEAD_LETTER_QUEUE) or 0
        browse(DEAD_LETTER_QUEUE, "dead_letters", ready=dead["total"], waiting=False,
               into=dead_fact)

        names = rabbitmqctl_queue_names(opts.broker_url) if opts.use_rabbitmqctl else None
        if names is not None:
            source = "rabbitmqctl"
            users = {n.removeprefix(WAIT_PREFIX) for n in names if n.startswith(WAIT_PREFIX)}
        elif any("login_waits" in w for w in workers):
            source = "workers"
            users = {str(u).removeprefix(WAIT_PREFIX) for w in workers
                     for u in (w.get("login_waits") or [])}
        else:
            source, users = None, set()
        doctors: dict[str, dict[str, Any]] = {}
        for user in sorted(users):
            name = login_wait_queue(user)
            ready = broker.depth(name)
            if ready is None:
                continue
            doc = doctors[user] = {"waiting": ready, "oldest_s": None}

            def wait_fact(_s: str, age: float | None, _c: str | None, doc=doc) -> None:
                if age is not None:
                    doc["oldest_s"] = max(doc["oldest_s"] or 0.0, age)

            browse(name, "waiting_login", ready=ready, into=wait_fact)

    in_flight = []
    for w in workers:
        for item in w.get("in_flight") or []:
            if not isinstance(item, dict):
                continue
            started = _started_at(item.get("started_at"))
            age = t - started if started is not None else None
            over = age is not None and age > opts.time_limit_s
            service = item.get("service") if item.get("service") in SERVICES else UNKNOWN
            tally.add(service, "in_flight", waiting=False)
            if over:
                tally.row(service)["over_time_limit"] += 1
            in_flight.append({**item, "service": service, "age_s": age, "over_time_limit": over,
                              "pid": w.get("pid"), "host": w.get("host")})
    services = {k: v for k, v in tally.services.items()
                if k in SERVICES or any(v[c] for c in COUNTERS)}
    totals = {c: sum(r[c] for r in services.values()) for c in COUNTERS}
    # ready counts are exact where a capped browse is not
    totals["queued"] = sum(queues[q] or 0 for q in BINDINGS)
    totals["retrying"] = sum(v or 0 for q, v in queues.items() if ".retry." in q)
    totals["parked"] = sum(queues[parked_queue(s)] or 0 for s in SERVICES)
    totals["dead_letters"] = dead["total"]
    totals["waiting_login"] = sum(d["waiting"] for d in doctors.values())
    totals["oldest_waiting_s"] = max((r["oldest_waiting_s"] for r in services.values()
                                      if r["oldest_waiting_s"] is not None), default=None)
    for row in services.values():
        if not opts.browse_work_queues:
            row["queued"] = None
    certs = check_certificates(opts.pki_dir, now=datetime.fromtimestamp(t, timezone.utc),
                               warn_days=opts.cert_warn_days)
    if opts.pki_dir is not None and not certs:
        notes.append(f"certificates not checked: no folder {opts.pki_dir}")
    if not workers:
        notes.append(f"no worker process answered within {opts.wait_s:g}s: in-flight unknown")
    if not opts.browse_work_queues:
        notes.append("work queues counted, not broken down by service (--browse-work-queues)")
    for tr in truncated:
        notes.append(f"breakdown of {tr['queue']} covers {tr['browsed']} of {tr['ready']} "
                     f"messages (--browse-cap)")
    report = {
        "broker": safe_url(opts.broker_url), "at": datetime.fromtimestamp(t, timezone.utc).isoformat(),
        "time_limit_s": opts.time_limit_s, "cert_warn_days": opts.cert_warn_days,
        "services": services, "totals": totals, "queues": queues, "truncated": truncated,
        "workers": [{k: v for k, v in w.items() if k != "in_flight"} for w in workers],
        "in_flight": sorted(in_flight, key=lambda i: -(i["age_s"] or 0)),
        "login_waits": {"source": source, "doctors": doctors} if source else "unknown (no rabbitmqctl here)",
        "dead_letters": {**dead, "by_service": dict(dead["by_service"]),
                         "by_code": dict(dead["by_code"])},
        "certificates": certs, "notes": notes,
    }
    report["attention"] = attention(report)
    report["healthy"] = not report["attention"]
    return report


def attention(report: dict[str, Any]) -> list[str]:
    """What needs a person: dead letters, requests over their time limit, certificates inside
    the warning window (or unreadable), parked work. Empty when healthy."""
    out, totals = [], report["totals"]
    if report["dead_letters"]["total"]:
        out.append(f"{report['dead_letters']['total']} dead letter(s) in {DEAD_LETTER_QUEUE}")
    if totals["over_time_limit"]:
        out.append(f"{totals['over_time_limit']} request(s) in flight longer than "
                   f"{report['time_limit_s']:g}s")
    if totals["parked"]:
        out.append(f"{totals['parked']} parked request(s)")
    for c in report["certificates"]:
        if c["state"] in ("expiring", "expired", "unreadable"):
            left = f"{c['days_left']:.1f} days left" if c.get("days_left") is not None else c["state"]
            out.append(f"certificate {c['file']}: {c['state']} ({left})")
    return out


def exit_code(report: dict[str, Any]) -> int:
    return 0 if report["healthy"] else 1


def run(opts: StatusOptions, *, as_json: bool = False) -> int:
    """Collect, print (a table, or JSON with ``as_json``) and return the exit code:
    0 healthy, 1 something needs attention, 2 the broker is unreachable."""
    try:
        report = collect(opts)
    except (BrokerUnreachable, pika.exceptions.AMQPError, OSError) as exc:
        message = f"broker unreachable at {safe_url(opts.broker_url)}: {describe_error(exc)}"
        print(f"error: {message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"error": message, "healthy": False, "exit_code": 2}))
        return 2
    if as_json:
        print(json.dumps(report, indent=2, default=str, ensure_ascii=False))
    else:
        from .status_view import render

        render(report)
    return exit_code(report)
