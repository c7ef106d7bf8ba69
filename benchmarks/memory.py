"""``eeszt-gw bench memory``: the gateway worker processes' RSS over a long run.

The gateway drains ``n`` events published while it runs (at most ``backlog`` waiting); the
worker processes' RSS is sampled every few seconds, and the target (flat within 10% after the
warm-up) is printed next to the figures, as in :mod:`benchmarks.scenarios`; nothing is asserted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.table import Table

from . import drain as dr
from . import harness as h
from .scenarios import _console, _plt, _target, _targets_table, _write_json


def run_memory(*, n: int = 1_000_000, latency: float = 0, processes: int = 2, threads: int = 64,
               sample_s: float = 5.0, backlog: int = 50_000, warmup: int | None = None,
               stall_s: float = 120.0, json_out: Path | None = None,
               png_out: Path | None = None, keep: bool = False) -> int:
    """Feed the gateway ``n`` events (published while it runs, keeping at most ``backlog``
    waiting) and sample its worker processes' RSS every ``sample_s`` seconds."""
    from producers.batch import BatchPublisher

    console = _console()
    if not h.rabbit_ready():
        console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT}")
        return 2
    warmup = warmup if warmup is not None else min(max(1000, n // 50), n // 2)
    with h.Workdir(keep=keep) as work:
        sim = h.start_simulator(work.pki, work.path, latency_ms=latency)
        pipeline = None
        sampler = None
        errors: list[BaseException] = []
        try:
            with h.Vhost("memory") as vhost:
                pipeline = h.start_gateway(url=vhost.url, sim=sim, pki_dir=work.pki,
                                           work=work.path, processes=processes, threads=threads)
                sampler = dr.Sampler({"worker": pipeline.processes}, sim.record_count,
                                    every_s=sample_s, rss_of=pipeline.worker_processes)
                pipeline.wait_ready()
                sampler.start()
                stop = threading.Event()

                def feed() -> None:
                    try:
                        with BatchPublisher(url=vhost.url, max_in_flight=256) as bp:
                            published = 0
                            while published < n and not stop.is_set():
                                done = sim.record_count()
                                if published - done >= backlog:
                                    time.sleep(0.5)
                                    continue
                                for i in range(published, min(n, published + 5000)):
                                    bp.publish_raw(*h.event_wire(i, tag="m"))
                                published = min(n, published + 5000)
                            bp.flush(timeout=300)
                    except BaseException as exc:  # reported below
                        errors.append(exc)

                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                t_start = time.monotonic()
                last_report = [0.0]

                def progress(s: dr.Sample) -> None:
                    if time.monotonic() - last_report[0] > 30:
                        last_report[0] = time.monotonic()
                        rss = sum(s.rss.values()) / 2**20
                        console.log(f"{s.records:,}/{n:,} stored, worker RSS {rss:,.0f} MiB")

                complete = dr.wait_drain(sampler, n, stall_s=stall_s,
                                        alive=lambda: pipeline.proc.poll() is None,
                                        on_sample=progress)
                elapsed = time.monotonic() - t_start
                stop.set()
                sampler.sample()
                sampler.stop()
                feeder.join(timeout=10)
                pipeline.stop()
        finally:
            dr._cleanup(sampler, pipeline, sim)
    if errors:
        console.print(f"[red]publishing failed: {errors[0]!r}")
    samples = [s for s in sampler.samples if s.rss]
    after = [s for s in samples if s.records >= warmup]
    if not after:
        console.print("[red]no RSS sample after the warm-up")
        return 1
    start, end = after[0], after[-1]
    total = lambda s: sum(s.rss.values())  # noqa: E731
    peak = max(after, key=total)
    ratio = total(end) / total(start) if total(start) else 0.0
    mib = lambda b: b / 2**20  # noqa: E731
    table = Table(title=f"gateway worker RSS over {n:,} events ({processes}×{threads}, "
                        f"L={latency:g} ms, {elapsed:,.0f} s)")
    for col in ("measure", "all worker processes", "per process", "at events"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, s in (("start (after warm-up)", start), ("end", end), ("max", peak)):
        table.add_row(name, f"{mib(total(s)):,.1f} MiB",
                      " / ".join(f"{mib(v):,.1f}" for v in s.rss.values()), f"{s.records:,}")
    table.add_row("end ÷ start", f"{ratio:.3f}", "", "")
    console.print(table)
    if not complete:
        console.print(f"[red]stored {end.records:,} of {n:,} events")
    targets = [_target("worker RSS flat within 10% (end ÷ start)", f"{ratio:.3f}",
                       abs(ratio - 1) <= 0.10)]
    console.print(_targets_table("memory targets", targets))
    fig = {"config": {"n": n, "latency_ms": latency, "processes": processes, "threads": threads,
                      "sample_s": sample_s, "warmup_events": warmup},
           "complete": complete, "elapsed_s": elapsed,
           "rss_mib": {"start": mib(total(start)), "end": mib(total(end)),
                       "max": mib(total(peak)), "end_over_start": ratio},
           "samples": [{"t": s.t, "records": s.records,
                        "rss_mib": {str(k): mib(v) for k, v in s.rss.items()}} for s in samples],
           "targets": targets}
    _write_json(json_out, fig)
    if png_out:
        plt = _plt()
        f, ax = plt.subplots(figsize=(7, 4))
        pids = sorted({pid for s in samples for pid in s.rss})
        for pid in pids:
            pts = [(s.records, mib(s.rss[pid])) for s in samples if pid in s.rss]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"pid {pid}")
        ax.plot([s.records for s in samples], [mib(total(s)) for s in samples], "k--",
                label="all")
        ax.axvline(warmup, color="grey", ls=":", lw=1)
        ax.set_xlabel("events stored")
        ax.set_ylabel("RSS MiB")
        ax.set_title("eeszt-gw bench memory: worker RSS")
        ax.legend(fontsize=7)
        f.tight_layout()
        f.savefig(png_out, dpi=100)
    return 0 if complete and not errors else 1
