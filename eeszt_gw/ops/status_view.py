"""How ``eeszt-gw status`` prints its report for a person (rich tables)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .status_certs import BAD_STATES

COLUMNS = (("queued", "\nqueued"), ("in_flight", "in\nflight"), ("over_time_limit", "over\nlimit"),
           ("retrying", "retry-\ning"), ("parked", "\nparked"), ("waiting_login", "login\nwait"),
           ("dead_letters", "dead\nletters"))


def age(seconds: float | None) -> str:
    """``3d 4h``, ``25m 3s``, ``12s``; a dash for no age."""
    if seconds is None:
        return "—"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // subsize}{sub}"
    return f"{s}s"


def _cell(value: Any, warn: bool = False) -> str:
    if value is None:
        return "—"
    return f"[bold red]{value}[/]" if warn and value else str(value)


def render(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    limit = age(report["time_limit_s"])
    table = Table(title=f"eeszt-gw status  {report['broker']}  {report['at'][:19]}Z",
                  title_justify="left", box=box.HORIZONTALS, show_edge=False, pad_edge=False,
                  padding=(0, 0, 0, 1))  # fits 80 columns even with the queued column
    # unbrowsed work queues have no per-service count: their totals get a line of their own
    columns = [c for c in COLUMNS if c[0] != "queued" or report["totals"]["queued"] is not None
               and any(r["queued"] is not None for r in report["services"].values())]
    table.add_column("\nservice", no_wrap=True)
    for _, head in columns:
        table.add_column(head, justify="right", no_wrap=True)
    table.add_column("oldest\nwaiting", justify="right", no_wrap=True)
    warn = {"over_time_limit", "parked", "dead_letters"}
    rows = list(report["services"].items()) + [("total", report["totals"])]
    for name, row in rows:
        table.add_row(f"[bold]{name}[/]" if name == "total" else name,
                      *(_cell(row[k], k in warn) for k, _ in columns), age(row["oldest_waiting_s"]),
                      end_section=(name == rows[-2][0]))
    console.print(table)

    q = report["queues"]
    work = ", ".join(f"{n} {q[n] if q[n] is not None else 'absent'}" for n in q
                     if n.count(".") == 1 and n != "eeszt.dlq")
    console.print(f"work queues (ready): {work}")
    workers = report["workers"]
    console.print(f"workers: {len(workers)} process(es) answered"
                  + "".join(f"\n  pid {w.get('pid')} on {w.get('host')}: "
                            f"{','.join(w.get('queues') or []) or '?'}" for w in workers))
    _circuits(console, report.get("circuits") or [], bool(workers))
    _cluster(console, report.get("cluster"))
    over = [i for i in report["in_flight"] if i["over_time_limit"]]
    if over:
        console.print(f"[bold red]in flight longer than {limit}:[/]")
        for i in over[:20]:
            console.print(f"  {i.get('message_id')} {i.get('message_type')} {age(i['age_s'])} "
                          f"pid {i.get('pid')}@{i.get('host')}")
    waits = report["login_waits"]
    if isinstance(waits, str):
        console.print(f"waiting for login: {waits}")
    else:
        docs = waits["doctors"]
        console.print(f"waiting for login ({waits['source']}): "
                      + (", ".join(f"{u} {d['waiting']} (oldest {age(d['oldest_s'])})"
                                   for u, d in docs.items()) or "none"))
    dead = report["dead_letters"]
    if dead["total"]:
        console.print(f"[bold red]dead letters: {dead['total']}[/] (oldest {age(dead['oldest_s'])}; "
                      + ", ".join(f"{k} {v}" for k, v in sorted(dead["by_service"].items()))
                      + "; codes " + ", ".join(f"{escape(k)} {v}"  # header text: no markup
                                               for k, v in sorted(dead["by_code"].items()))
                      + ")")
    else:
        console.print("dead letters: 0")
    _certificates(console, report)
    for note in report["notes"]:
        console.print(f"[dim]note: {note}[/]")
    if report["attention"]:
        console.print("[bold red]ATTENTION[/]" + "".join(f"\n  - {a}" for a in report["attention"]))
    else:
        console.print("[bold green]healthy[/]")


def _circuits(console: Console, circuits: list[dict[str, Any]], answered: bool) -> None:
    """One line when every reported circuit is closed, else one line per open one."""
    if not answered:
        return
    bad = [c for c in circuits if c["state"] != "closed"]
    if not bad:
        console.print(f"circuits: {'all closed' if circuits else 'none used yet'}")
        return
    console.print(f"[bold red]circuits not closed: {len(bad)}[/]")
    for c in bad:
        probe = c.get("last_probe_at")
        facts = [f"{c.get('failures', 0)} failures in a row"]
        if isinstance(probe, (int, float)):
            facts.append(f"last probe {_clock(probe)}")
        if c.get("parked") is not None:
            facts.append(f"{c['parked']} parked")  # by this process, since it started
        console.print(f"  {c['service']} {c['state']} for {age(c.get('for_s'))} (pid "
                      f"{c.get('pid')}@{c.get('host')}): " + ", ".join(facts))


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%H:%M:%SZ")


def _certificates(console: Console, report: dict[str, Any]) -> None:
    certs = report["certificates"]
    if not certs:
        return
    table = Table(title=f"certificates (warning within {report['cert_warn_days']:g} days)",
                  title_justify="left", box=box.HORIZONTALS, show_edge=False, pad_edge=False)
    for head in ("file", "for", "days left", "not after", "state"):
        table.add_column(head, justify="right" if head == "days left" else "left")
    for c in certs:
        bad = c["state"] in BAD_STATES
        table.add_row(c["file"], c["role"],
                      f"{c['days_left']:.1f}" if c["days_left"] is not None else "—",
                      (c["not_after"] or "—")[:10],
                      f"[bold red]{c['state']}[/]" if bad else c["state"])
    console.print(table)


def _cluster(console: Console, cluster: dict[str, Any] | None) -> None:
    """One line per RabbitMQ node, then the replicated queues that lost a leader or replica."""
    if not cluster:
        return
    console.print("rabbitmq nodes: " + ", ".join(
        f"{n['name']} {'running' if n['running'] else '[red]DOWN[/]'}"
        + (f" ({n['version']})" if n.get("version") else "") for n in cluster["nodes"]))
    for q in cluster["degraded"]:
        what = "no leader" if q["leaderless"] else f"missing {', '.join(q['missing'])}"
        console.print(f"  [red]{q['queue']}[/] ({q['type']}): {what}; "
                      f"{len(q['members'])} replicas")
