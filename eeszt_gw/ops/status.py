"""``eeszt-gw status``: what the gateway holds and does right now, per EESZT service.

Everything comes over plain AMQP 0-9-1, so it works from an ops laptop without the management
plugin: ready counts by passive ``queue_declare``; per-service breakdowns and ages by browsing a
queue (``basic_get`` without ack up to a cap, then one ``basic_nack(multiple, requeue)``); the
requests in flight and the circuit breakers' states by a status request on the fanout
exchange ``eeszt.control``, answered by every worker process (``workers.middleware.control``). The
doctors' wait queues cannot be listed over AMQP: their names come from ``rabbitmqctl`` when it
works on this host for the broker's own node, else from the workers' answers. Certificates are
read from ``--pki-dir``.

Browsing a work queue marks its messages redelivered, and a worker asks EESZT by idempotency
key before sending a redelivered request, so the work queues are browsed only on request
(``browse_work_queues``); retry tiers, parked, wait and dead-letter queues are always browsed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pika.exceptions

from schemas.audit import mask_text
from eeszt_gw.amqp import BrokerTLS, safe_url
from schemas.soap import SERVICES
from schemas.wire import (
    BINDINGS,
    DEAD_LETTER_QUEUE,
    RETRY_TIERS_S,
    login_wait_queue,
    parked_queue,
    retry_queue,
)

from .status_broker import (
    UNKNOWN,
    BrokerUnreachable,
    BrokerView,
    describe_error,
    message_facts,
    rabbitmqctl_queue_names,
)
from .settings import StatusSettings
from .status_certs import BAD_STATES, check_certificates
from .status_cluster import cluster_attention, cluster_view

WAIT_PREFIX = login_wait_queue("")
COUNTERS = ("queued", "in_flight", "over_time_limit", "retrying", "parked", "waiting_login",
            "dead_letters")
#: circuit states that need a person: requests of that service are being parked
CIRCUIT_WARN = ("open", "half-open")


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
    rabbitmq_node: str | None = None  # rabbitmqctl -n
    broker_tls: BrokerTLS | None = None  # amqps:// (eeszt_gw.amqp)


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
    """Counters per service, and the queue figures behind them."""

    def __init__(self, broker: BrokerView, opts: StatusOptions, now: float) -> None:
        self.broker, self.opts, self.now = broker, opts, now
        self.services: dict[str, dict[str, Any]] = {name: self._blank() for name in SERVICES}
        self.queues: dict[str, int | None] = {}
        self.truncated: list[dict[str, Any]] = []

    @staticmethod
    def _blank() -> dict[str, Any]:
        return {c: 0 for c in COUNTERS} | {"oldest_waiting_s": None}

    def row(self, service: str) -> dict[str, Any]:
        return self.services.setdefault(service, self._blank())

    def older(self, service: str, age: float | None) -> None:
        if age is not None:
            row = self.row(service)
            row["oldest_waiting_s"] = max(row["oldest_waiting_s"] or 0.0, age)

    def depth(self, queue: str) -> int:
        self.queues[queue] = ready = self.broker.depth(queue)
        return ready or 0

    def browse(self, queue: str, ready: int, counter: str | None, *, head_only: bool = False
               ) -> list[tuple[str, float | None, str | None]]:
        """(service, age, code) of up to the cap of ``queue``'s messages, counted under
        ``counter`` per service (ages count as waiting unless it is None)."""
        if not ready:
            return []
        seen = self.broker.browse(queue, 1 if head_only else self.opts.browse_cap)
        if len(seen) < ready and not head_only:
            self.truncated.append({"queue": queue, "ready": ready, "browsed": len(seen)})
        facts = [message_facts(props, body, self.now) for props, body in seen]
        for service, age, _code in facts:
            if counter:
                self.row(service)[counter] += 1
                self.older(service, age)
        return facts

    def work_retry_parked(self) -> None:
        for work in BINDINGS:
            ready = self.depth(work)
            if self.opts.browse_work_queues:
                self.browse(work, ready, "queued")
            for tier in RETRY_TIERS_S:
                name = retry_queue(work, tier)
                self.browse(name, self.depth(name), "retrying")
        for service in SERVICES:
            name = parked_queue(service)
            ready = self.depth(name)
            self.row(service)["parked"] += ready
            # The name gives the service, and the head is the oldest. One message only: a
            # release that drains the queue meanwhile would not see what a browse holds.
            for _s, age, _c in self.browse(name, ready, None, head_only=True):
                self.older(service, age)

    def dead_letters(self) -> dict[str, Any]:
        total = self.depth(DEAD_LETTER_QUEUE)
        by_service: Counter[str] = Counter()
        by_code: Counter[str] = Counter()
        oldest = None
        for service, age, code in self.browse(DEAD_LETTER_QUEUE, total, None):
            self.row(service)["dead_letters"] += 1
            by_service[service] += 1
            by_code[mask_text(code) if code else UNKNOWN] += 1  # any header text: no TAJ out
            if age is not None:
                oldest = max(oldest or 0.0, age)
        return {"total": total, "by_service": dict(by_service), "by_code": dict(by_code),
                "oldest_s": oldest}

    def login_waits(self, workers: list[dict[str, Any]]) -> dict[str, Any] | str:
        names = (rabbitmqctl_queue_names(self.opts.broker_url) if self.opts.use_rabbitmqctl
                 else None)
        if names is not None:
            source = "rabbitmqctl"
            users = {n.removeprefix(WAIT_PREFIX) for n in names if n.startswith(WAIT_PREFIX)}
        elif any("login_waits" in w for w in workers):
            source = "workers"  # only the logins that live processes started
            users = {str(u).removeprefix(WAIT_PREFIX) for w in workers
                     for u in (w.get("login_waits") or [])}
        else:
            return "unknown (no rabbitmqctl here)"
        doctors: dict[str, dict[str, Any]] = {}
        for user in sorted(users):
            name = login_wait_queue(user)
            ready = self.broker.depth(name)
            if ready is None:
                continue  # released and gone since
            ages = [a for _s, a, _c in self.browse(name, ready, "waiting_login") if a is not None]
            doctors[user] = {"waiting": ready, "oldest_s": max(ages, default=None)}
        return {"source": source, "doctors": doctors}

    def in_flight(self, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for w in workers:
            for item in w.get("in_flight") or []:
                if not isinstance(item, dict):
                    continue
                started = _started_at(item.get("started_at"))
                age = self.now - started if started is not None else None
                over = age is not None and age > self.opts.time_limit_s
                service = item.get("service") if item.get("service") in SERVICES else UNKNOWN
                self.row(service)["in_flight"] += 1
                self.row(service)["over_time_limit"] += int(over)
                out.append({**item, "service": service, "age_s": age, "over_time_limit": over,
                            "pid": w.get("pid"), "host": w.get("host")})
        return sorted(out, key=lambda i: -(i["age_s"] or 0))


def circuits(workers: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Every circuit breaker the worker processes reported, open and half-open ones first.

    Each entry is the worker's (``workers.breaker.CircuitBreaker.snapshot``) plus ``for_s``
    (seconds in this state), ``pid`` and ``host``. A garbled entry is skipped.
    """
    out = []
    for w in workers:
        for b in w.get("breakers") or []:
            if not isinstance(b, dict) or not isinstance(b.get("service"), str):
                continue
            since = _started_at(b.get("since"))
            out.append({**b, "state": str(b.get("state") or UNKNOWN),
                        "for_s": max(0.0, now - since) if since is not None else None,
                        "pid": w.get("pid"), "host": w.get("host")})
    return sorted(out, key=lambda c: (c["state"] not in CIRCUIT_WARN, c["service"],
                                      str(c["host"]), str(c["pid"])))


def collect(opts: StatusOptions, *, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """The whole status report as plain data. Raises :class:`BrokerUnreachable`."""
    with BrokerView(opts.broker_url, tls=opts.broker_tls) as broker:
        workers = broker.ask_workers(opts.wait_s)
        t = now()
        tally = _Tally(broker, opts, t)
        tally.work_retry_parked()
        dead = tally.dead_letters()
        waits = tally.login_waits(workers)
    in_flight = tally.in_flight(workers)
    services = {k: v for k, v in tally.services.items()
                if k in SERVICES or any(v[c] for c in COUNTERS)}
    q = tally.queues
    totals = {c: sum(r[c] for r in services.values()) for c in COUNTERS}
    # ready counts are exact where a capped browse is not
    totals.update(
        queued=sum(q[w] or 0 for w in BINDINGS),
        retrying=sum(v or 0 for name, v in q.items() if ".retry." in name),
        parked=sum(q[parked_queue(s)] or 0 for s in SERVICES), dead_letters=dead["total"],
        waiting_login=sum(d["waiting"] for d in waits["doctors"].values())
        if isinstance(waits, dict) else totals["waiting_login"],
        oldest_waiting_s=max((r["oldest_waiting_s"] for r in services.values()
                              if r["oldest_waiting_s"] is not None), default=None))
    if not opts.browse_work_queues:
        for row in services.values():
            row["queued"] = None
    certs = check_certificates(opts.pki_dir, now=datetime.fromtimestamp(t, timezone.utc),
                               warn_days=opts.cert_warn_days)
    notes = []
    if opts.pki_dir is not None and not certs:
        notes.append(f"certificates not checked: no folder {opts.pki_dir}")
    if not workers:
        notes.append(f"no worker process answered within {opts.wait_s:g}s: in-flight unknown")
    elif not all("breakers" in w for w in workers):
        silent = sum("breakers" not in w for w in workers)
        notes.append(f"{silent} worker process(es) did not report their circuit breakers "
                     "(an older version, or an error): their circuits are unknown")
    if not opts.browse_work_queues:
        notes.append("work queues counted, not broken down by service (--browse-work-queues)")
    notes += [f"breakdown of {tr['queue']} covers {tr['browsed']} of {tr['ready']} messages "
              "(--browse-cap)" for tr in tally.truncated]
    report = {
        "broker": safe_url(opts.broker_url),
        "at": datetime.fromtimestamp(t, timezone.utc).isoformat(),
        "time_limit_s": opts.time_limit_s, "cert_warn_days": opts.cert_warn_days,
        "services": services, "totals": totals, "queues": q, "truncated": tally.truncated,
        "workers": [{k: v for k, v in w.items() if k not in ("in_flight", "breakers")}
                    for w in workers],
        "in_flight": in_flight, "circuits": circuits(workers, t), "login_waits": waits,
        "dead_letters": dead, "certificates": certs, "notes": notes,
        "cluster": (cluster_view(opts.broker_url.split(",")[0], opts.rabbitmq_node)
                    if opts.use_rabbitmqctl else None),
    }
    report["attention"] = attention(report)
    report["healthy"] = not report["attention"]
    return report


def attention(report: dict[str, Any]) -> list[str]:
    """What needs a person: dead letters, requests over their time limit, certificates inside
    the warning window (or unreadable), parked work, open circuits. Empty when healthy."""
    out, totals = [], report["totals"]
    if report["dead_letters"]["total"]:
        out.append(f"{report['dead_letters']['total']} dead letter(s) in {DEAD_LETTER_QUEUE}")
    if totals["over_time_limit"]:
        out.append(f"{totals['over_time_limit']} request(s) in flight longer than "
                   f"{report['time_limit_s']:g}s")
    if totals["parked"]:
        out.append(f"{totals['parked']} parked request(s)")
    open_circuits: dict[str, list[dict[str, Any]]] = {}
    for c in report.get("circuits") or []:
        if c["state"] in CIRCUIT_WARN:
            open_circuits.setdefault(c["service"], []).append(c)
    for service, open_ in open_circuits.items():
        longest = max((c["for_s"] for c in open_ if c["for_s"] is not None), default=None)
        out.append(f"circuit of {service} open in {len(open_)} worker process(es)"
                   + (f" for up to {longest:.0f}s" if longest is not None else "")
                   + f": its requests are parked (see {parked_queue(service)})")
    for c in report["certificates"]:
        if c["state"] in BAD_STATES:
            left = (f"since {c['revoked_at']}" if c["state"] == "revoked"
                    else f"{c['days_left']:.1f} days left" if c.get("days_left") is not None
                    else c["state"])
            out.append(f"certificate {c['file']}: {c['state']} ({left})")
    return out + cluster_attention(report.get("cluster"))


def exit_code(report: dict[str, Any]) -> int:
    return 0 if report["healthy"] else 1


def command(settings: StatusSettings, tls: BrokerTLS | None, ns: argparse.Namespace) -> int:
    """``eeszt-gw status``: the settings and this run's switches (``--browse-work-queues``,
    ``--json``) as :class:`StatusOptions`, then :func:`run`."""
    opts = StatusOptions(
        broker_url=settings.broker_url, broker_tls=tls, pki_dir=settings.pki_dir,
        wait_s=settings.wait_s, time_limit_s=settings.time_limit_s,
        cert_warn_days=settings.cert_warn_days, browse_cap=settings.browse_cap,
        browse_work_queues=ns.browse_work_queues, use_rabbitmqctl=settings.rabbitmqctl,
        rabbitmq_node=settings.rabbitmq_node)
    return run(opts, as_json=ns.json)


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
