"""``eeszt-gw bench batch|scaling`` (and ``publish``, :mod:`benchmarks.publish`; ``memory``,
:mod:`benchmarks.memory`): throughput benchmarks with their baselines, and the helpers the
scenarios share (console, tables, targets, JSON and PNG output).

Every figure is printed beside a baseline measured in the same run, on the same machine, against
the same broker and simulator (see :mod:`benchmarks.drain` for how a drain is measured):

- ``publish``: the producers' confirmed publish (``Publisher.submit``, ``BatchPublisher``)
  beside raw pika doing the same thing with the same bytes;
- ``batch``: N care events drained by the gateway's workers, by the bare pipeline
  (:mod:`benchmarks.bare`) and by the naive dramatiq + zeep peer
  (:mod:`benchmarks.naive`), at each simulated EESZT latency: events/s and CPU µs per event
  of the workers, the simulator and the broker;
- ``scaling``: gateway (and bare) events/s at several process counts;
- ``memory``: the worker processes' RSS over a long run.

Targets are printed next to the figures and marked ✓/✗; nothing is asserted.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from schemas.wire import DEFAULT_QUEUE_TYPE

from . import drain as dr
from . import harness as h

PIPELINES = ("gateway", "bare", "naive", "bare-curl")
#: what the gateway is divided by: the reference bare pipeline (urllib3), the naive peer, and the
#: bare pipeline on the gateway's default HTTP client (libcurl), like for like
BASELINES = ("bare", "naive", "bare-curl")


def _console() -> Console:
    """A console wide enough for the tables, also when the output is a file or a pipe."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    return console


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _targets_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("target", "measured", ""):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in rows:
        table.add_row(r["target"], r["measured"], h.mark(r["ok"]))
    return table


def _target(target: str, measured: str, ok: bool) -> dict[str, Any]:
    return {"target": target, "measured": measured, "ok": bool(ok)}


# --- batch ----------------------------------------------------------------------------------------
def _row_cpu(r: dr.DrainResult) -> tuple[str, str, str, str]:
    c = r.cpu_us_per_event
    return (f"{c['worker']:,.0f}", f"{c['simulator']:,.0f}", f"{c['broker']:,.0f}",
            f"{sum(c.values()):,.0f}")


def _drain_table(title: str, results: list[dr.DrainResult]) -> Table:
    table = Table(title=title)
    for col in ("L ms", "pipeline", "P×T", "events/s", "steady", "worker µs/ev", "simulator µs/ev",
                "broker µs/ev", "total µs/ev", "window", "other load"):
        table.add_column(col, justify="left" if col in ("pipeline", "window") else "right")
    table.caption = ("events/s: every process consuming → last stored; steady: between the "
                     "records that make 10% and 90% (no start-up, no late retries). other load: share of the host's CPU used by anything else (this harness, "
                     "other processes) during the window")
    for r in results:
        rate = f"{r.events_per_s:,.0f}" + ("" if r.complete else f" [red](stored {r.stored}/{r.events})[/]")
        table.add_row(f"{r.latency_ms:g}", r.kind, f"{r.processes}×{r.threads}", rate,
                      f"{r.events_per_s_steady:,.0f}", *_row_cpu(r), f"{r.window_s:.1f} s {r.window}", f"{r.other_cpu_share:.0%}")
    return table


def run_batch(*, n: int = 100_000, latencies: Sequence[float] = (0, 20, 100), processes: int = 2,
              threads: int = 64, naive_threads: int = 8, pipelines: Sequence[str] = PIPELINES,
              stall_s: float = 60.0, json_out: Path | None = None, png_out: Path | None = None,
              keep: bool = False, repeat: int = 1, queue_type: str = DEFAULT_QUEUE_TYPE) -> int:
    """Drain the same events with each pipeline at each latency, ``repeat`` times, the
    pipelines interleaved (so a slow spell of a shared machine hits all of them); every figure
    is the run with the median events/s of its (pipeline, latency). ``queue_type``: of the work
    queue every pipeline drains."""
    console = _console()
    if not h.rabbit_ready():
        console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT}")
        return 2
    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        console.print(f"[red]unknown pipeline(s): {', '.join(sorted(unknown))}")
        return 2
    results: list[dr.DrainResult] = []
    reps: list[dict[tuple[str, float], dr.DrainResult]] = []  # the runs of each round
    with h.Workdir(keep=keep) as work:
        console.log(f"generating {n:,} care events")
        events = h.make_events(n)
        for rep in range(max(1, repeat)):
            reps.append({})
            for latency in latencies:
                for kind in pipelines:
                    t = naive_threads if kind == "naive" else threads
                    console.log(f"{kind}: {n:,} events, L={latency:g} ms, {processes}×{t}"
                                + (f", run {rep + 1} of {repeat}" if repeat > 1 else ""))
                    r = dr.run_drain(kind, events=events, latency_ms=latency, processes=processes,
                                    threads=t, pki_dir=work.pki, work=work.path, stall_s=stall_s,
                                    console=console, queue_type=queue_type)
                    console.log(f"  {r.events_per_s:,.0f} events/s, CPU µs/event "
                                + ", ".join(f"{g} {v:,.0f}" for g, v in r.cpu_us_per_event.items()))
                    results.append(r)
                    reps[-1][(kind, latency)] = r
        if keep:
            console.log(f"kept {work.path}")
    all_runs = results
    results = _medians(results)
    by = {(r.kind, r.latency_ms): r for r in results}
    ratios = []
    for latency in latencies:
        g = by.get(("gateway", latency))
        row: dict[str, Any] = {"latency_ms": latency}
        for other in BASELINES:
            o = by.get((other, latency))
            if g and o and o.events_per_s:
                row[f"gateway/{other}"] = g.events_per_s / o.events_per_s
            paired = _paired_ratios(reps, latency, other)
            if len(paired) > 1:
                row[f"gateway/{other} paired"] = paired
        ratios.append(row)
    targets = _batch_targets(by, latencies, processes)
    console.print(_drain_table(f"care events drained into the simulator: {n:,} events, "
                               f"{processes} processes, {queue_type} queues (dedupe mode)"
                               + (f", median of {repeat} interleaved runs" if repeat > 1 else ""),
                               results))
    rt = Table(title="gateway ÷ baseline, events/s",
               caption="the medians' ratio (the targets use it); with --repeat, also the ratio "
                       "within each round of interleaved runs: median (lowest–highest)")
    cols = [f"gateway/{b}" for b in BASELINES]
    paired_cols = [c for c in cols if any(f"{c} paired" in row for row in ratios)]
    for col in ("L ms", *cols, *(f"{c}, paired" for c in paired_cols)):
        rt.add_column(col, justify="right")
    for row in ratios:
        cells = [f"{row[k]:.2f} ×" if k in row else "–" for k in cols]
        for c in paired_cols:
            p = row.get(f"{c} paired")
            cells.append(f"{statistics.median(p):.2f} × ({min(p):.2f}–{max(p):.2f})" if p else "–")
        rt.add_row(f"{row['latency_ms']:g}", *cells)
    console.print(rt)
    if targets:
        console.print(_targets_table("batch targets", targets))
    _write_json(json_out, {"config": {"n": n, "latencies_ms": list(latencies),
                                      "processes": processes, "threads": threads,
                                      "naive_threads": naive_threads,
                                      "pipelines": list(pipelines), "repeat": repeat,
                                      "queue_type": queue_type},
                           "runs": [r.as_dict() for r in results],
                           "all_runs": [r.as_dict() for r in all_runs], "ratios": ratios,
                           "targets": targets})
    if png_out:
        _batch_png(png_out, results, latencies, pipelines, title=f"{n:,} events, {processes} processes")
    return 0


def _paired_ratios(reps: list[dict[tuple[str, float], dr.DrainResult]], latency: float,
                   other: str) -> list[float]:
    """gateway ÷ ``other`` events/s within each round: the two runs are minutes apart, so a
    slow spell of the machine hits both, where the medians' ratio may pair a fast run with a
    slow one."""
    out = []
    for rnd in reps:
        g, o = rnd.get(("gateway", latency)), rnd.get((other, latency))
        if g and o and o.events_per_s:
            out.append(g.events_per_s / o.events_per_s)
    return out


def _medians(results: list[dr.DrainResult]) -> list[dr.DrainResult]:
    """Per (pipeline, latency, processes), the run with the median events/s (the lower middle
    one for an even count), in first-seen order."""
    groups: dict[tuple, list[dr.DrainResult]] = {}
    for r in results:
        groups.setdefault((r.kind, r.latency_ms, r.processes), []).append(r)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda r: r.events_per_s)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def _batch_targets(by: dict, latencies: Sequence[float], processes: int) -> list[dict[str, Any]]:
    out = []
    for latency in latencies:
        g = by.get(("gateway", latency))
        if g is None:
            continue
        b, nv = by.get(("bare", latency)), by.get(("naive", latency))
        if latency in (20, 100) and b and b.events_per_s:
            x = g.events_per_s / b.events_per_s
            out.append(_target(f"gateway ≥ 0.9 × bare at {latency:g} ms", f"{x:.2f} ×", x >= 0.9))
        need = {20: 2, 100: 5}.get(latency)
        if need and nv and nv.events_per_s:
            x = g.events_per_s / nv.events_per_s
            out.append(_target(f"gateway ≥ {need} × naive at {latency:g} ms", f"{x:.2f} ×", x >= need))
        bc = by.get(("bare-curl", latency))
        if latency in (20, 100) and bc and bc.events_per_s:
            x = g.events_per_s / bc.events_per_s
            out.append(_target(f"like for like: gateway ≥ 0.9 × bare-curl at {latency:g} ms",
                               f"{x:.2f} ×", x >= 0.9))
        if latency == 20 and processes == 2:
            out.append(_target("gateway ≥ 800 events/s at 20 ms, 2 processes",
                               f"{g.events_per_s:,.0f}/s", g.events_per_s >= 800))
    g20, g100 = by.get(("gateway", 20)), by.get(("gateway", 100))
    if g20 and g100 and g20.events_per_s:
        x = g100.events_per_s / g20.events_per_s
        out.append(_target("gateway at 100 ms ≥ 90% of 20 ms", f"{x:.0%}", x >= 0.9))
    return out


def _batch_png(path: Path, results: list[dr.DrainResult], latencies: Sequence[float],
               pipelines: Sequence[str], *, title: str) -> None:
    plt = _plt()
    by = {(r.kind, r.latency_ms): r for r in results}
    f, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(pipelines))
    for k, kind in enumerate(pipelines):
        xs = [i + (k - (len(pipelines) - 1) / 2) * width for i in range(len(latencies))]
        ax1.bar(xs, [by[(kind, L)].events_per_s if (kind, L) in by else 0 for L in latencies],
                width, label=kind)
    ax1.set_xticks(range(len(latencies)), [f"{L:g} ms" for L in latencies])
    ax1.set_ylabel("events/s")
    ax1.set_title("throughput by EESZT latency")
    ax1.legend()
    labels, bottoms = [], []
    colors = {"worker": "tab:blue", "simulator": "tab:green", "broker": "tab:red"}
    for L in latencies:
        for kind in pipelines:
            if (kind, L) in by:
                labels.append(f"{kind}\n{L:g} ms")
                bottoms.append(by[(kind, L)].cpu_us_per_event)
    base = [0.0] * len(labels)
    for group in ("worker", "simulator", "broker"):
        vals = [b.get(group, 0.0) for b in bottoms]
        ax2.bar(range(len(labels)), vals, bottom=base, label=group, color=colors[group])
        base = [x + y for x, y in zip(base, vals)]
    ax2.set_xticks(range(len(labels)), labels, fontsize=7)
    ax2.set_ylabel("CPU µs per event")
    ax2.set_title("CPU per event")
    ax2.legend()
    f.suptitle(f"eeszt-gw bench: {title}")
    f.tight_layout()
    f.savefig(path, dpi=100)


# --- scaling --------------------------------------------------------------------------------------
def run_scaling(*, latency: float = 20, processes: Sequence[int] = (1, 2, 4), n: int = 20_000,
                threads: int = 64, pipelines: Sequence[str] = ("gateway", "bare"),
                stall_s: float = 60.0, json_out: Path | None = None,
                png_out: Path | None = None, keep: bool = False) -> int:
    console = _console()
    if not h.rabbit_ready():
        console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT}")
        return 2
    results: list[dr.DrainResult] = []
    with h.Workdir(keep=keep) as work:
        events = h.make_events(n)
        for p in processes:
            for kind in pipelines:
                console.log(f"{kind}: {n:,} events, L={latency:g} ms, {p}×{threads}")
                r = dr.run_drain(kind, events=events, latency_ms=latency, processes=p,
                                threads=threads, pki_dir=work.pki, work=work.path,
                                stall_s=stall_s, console=console)
                console.log(f"  {r.events_per_s:,.0f} events/s")
                results.append(r)
    by = {(r.kind, r.processes): r for r in results}
    table = Table(title=f"scaling with processes: {n:,} events at L={latency:g} ms, "
                        f"{threads} threads per process")
    cols = ["processes", *[f"{k} events/s" for k in pipelines]]
    if "gateway" in pipelines and "bare" in pipelines:
        cols.append("gateway/bare")
    cols += [f"{k} CPU µs/ev (w+s+b)" for k in pipelines]
    for c in cols:
        table.add_column(c, justify="right")
    for p in processes:
        row = [str(p)]
        row += [f"{by[(k, p)].events_per_s:,.0f}" for k in pipelines]
        if "gateway/bare" in cols:
            b = by[("bare", p)].events_per_s
            row.append(f"{by[('gateway', p)].events_per_s / b:.2f} ×" if b else "–")
        row += [f"{sum(by[(k, p)].cpu_us_per_event.values()):,.0f}" for k in pipelines]
        table.add_row(*row)
    console.print(table)
    targets = []
    if latency == 20 and 2 in processes and ("gateway", 2) in by:
        g = by[("gateway", 2)].events_per_s
        targets.append(_target("gateway ≥ 800 events/s at 20 ms, 2 processes", f"{g:,.0f}/s",
                               g >= 800))
    if targets:
        console.print(_targets_table("scaling targets", targets))
    _write_json(json_out, {"config": {"n": n, "latency_ms": latency, "processes": list(processes),
                                      "threads": threads, "pipelines": list(pipelines)},
                           "runs": [r.as_dict() for r in results], "targets": targets})
    if png_out:
        plt = _plt()
        f, ax = plt.subplots(figsize=(6, 4))
        for kind in pipelines:
            ax.plot(list(processes), [by[(kind, p)].events_per_s for p in processes], "o-",
                    label=kind)
        ax.set_xlabel("worker processes")
        ax.set_ylabel("events/s")
        ax.set_xticks(list(processes))
        ax.set_title(f"eeszt-gw bench scaling (L={latency:g} ms)")
        ax.legend()
        f.tight_layout()
        f.savefig(png_out, dpi=100)
    return 0
