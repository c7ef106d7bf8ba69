"""``eeszt-gw bench publish``: the producers' confirmed publish beside raw pika.

One confirmed ``Publisher.submit`` (p50, p99) beside raw pika doing the same with the same bytes
(``BlockingConnection`` + ``confirm_delivery`` + ``basic_publish``), and confirmed batch
throughput with ``BatchPublisher`` beside raw pika with one confirm at a time; once per
work-queue type, each in its own vhost. Targets are printed next to the figures; nothing is
asserted.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from . import harness as h
from .scenarios import _console, _plt, _target, _targets_table, _write_json


def run_publish(*, n: int = 5000, warmup: int = 200, batch_n: int = 20_000, in_flight: int = 256,
                queue_types: Sequence[str] = ("classic", "quorum"), json_out: Path | None = None,
                png_out: Path | None = None) -> int:
    """Interactive and batch confirmed publishing, once per work-queue type (each in a fresh
    vhost): classic queues are the single-node default, quorum queues the production one
    (``deploy/``), and their confirms cost differently."""
    from producers.generate import generate
    from schemas.envelope import RequestEnvelope

    console = _console()
    if not h.rabbit_ready():
        console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT}")
        return 2
    requests = [RequestEnvelope.from_json(line)
                for line in generate(prescriptions=n + warmup, seed=7)]
    events = h.make_events(batch_n, tag="p")
    runs = []
    for qt in queue_types:
        console.log(f"{qt} queues: {n:,} interactive publishes of each kind, then {batch_n:,} "
                    "in a batch")
        run = _publish_run(qt, requests, warmup, events, in_flight)
        if run is None:
            console.print(f"[red]batch publish failed on {qt} queues")
            return 1
        runs.append(run)
    targets = []
    for run in runs:
        i, b, qt = run["interactive"], run["batch"], run["queue_type"]
        ratio = i["publisher_submit_ms"]["p99"] / i["raw_pika_ms"]["p99"]
        targets += [
            _target(f"batch publish ≥ 10,000 msg/s ({qt})",
                    f"{b['batch_publisher_msg_s']:,.0f} msg/s",
                    b["batch_publisher_msg_s"] >= 10_000),
            _target(f"interactive publish p99 ≤ 5 ms ({qt})",
                    f"{i['publisher_submit_ms']['p99']:.2f} ms",
                    i["publisher_submit_ms"]["p99"] <= 5),
            _target(f"interactive p99 ≤ 1.5 × raw pika ({qt})", f"{ratio:.2f} ×", ratio <= 1.5),
        ]
    fig = {"n": n, "warmup": warmup, "batch_n": batch_n, "in_flight": in_flight, "runs": runs,
           "targets": targets}

    table = Table(title=f"confirmed publish: one at a time (N={n} after {warmup} warm-up) and "
                        f"batch ({batch_n:,} messages)")
    for col in ("queues", "measure", "producers", "raw pika", "unit"):
        table.add_column(col, justify="left" if col in ("queues", "measure") else "right")
    for run in runs:
        i, b, qt = run["interactive"], run["batch"], run["queue_type"]
        table.add_row(qt, "one confirmed publish, p50", f"{i['publisher_submit_ms']['p50']:.3f}",
                      f"{i['raw_pika_ms']['p50']:.3f}", "ms")
        table.add_row(qt, "one confirmed publish, p99", f"{i['publisher_submit_ms']['p99']:.3f}",
                      f"{i['raw_pika_ms']['p99']:.3f}", "ms")
        table.add_row(qt, f"batch: BatchPublisher ({in_flight} in flight) vs raw, one confirm "
                          "at a time", f"{b['batch_publisher_msg_s']:,.0f}",
                      f"{b['raw_pika_one_confirm_msg_s']:,.0f}", "msg/s", end_section=True)
    console.print(table)
    console.print(_targets_table("publish targets", targets))
    _write_json(json_out, fig)
    if png_out:
        _publish_png(png_out, runs)
    return 0


def _publish_run(queue_type: str, requests: list, warmup: int, events: list,
                 in_flight: int) -> dict[str, Any] | None:
    """One queue type in a fresh vhost: Publisher.submit against raw pika in alternating blocks
    of 100 (so that drift hits both alike), then BatchPublisher against raw pika with one
    confirm at a time. None if the batch was not confirmed whole."""
    import pika

    from producers.memory import to_wire
    from producers.batch import BatchPublisher
    from producers.publisher import Publisher
    from schemas.wire import BATCH_QUEUE, INTERACTIVE_QUEUE, REQUESTS_EXCHANGE

    with h.Vhost(f"publish-{queue_type}") as vhost:
        pub = Publisher(url=vhost.url, queue_type=queue_type)  # declares the work queues
        conn = pika.BlockingConnection(pika.URLParameters(vhost.url))
        ch = conn.channel()
        ch.confirm_delivery()

        def raw(rk: str, body: bytes, headers: dict, mid: str) -> None:
            ch.basic_publish(REQUESTS_EXCHANGE, rk, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=mid,
                headers=headers), mandatory=True)

        ours_ms: list[float] = []
        raw_ms: list[float] = []
        for r in requests[:warmup]:
            pub.submit(r)
            raw(*to_wire(r))
        block = 100
        measured = requests[warmup:]
        for start in range(0, len(measured), block):
            for r in measured[start:start + block]:
                t0 = time.perf_counter()
                pub.submit(r)
                ours_ms.append((time.perf_counter() - t0) * 1000)
            for r in measured[start:start + block]:
                # the raw client gets pre-serialised bytes; ours serialises inside submit()
                rk, body, headers, mid = to_wire(r)
                props = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                             message_id=mid, headers=headers)
                t0 = time.perf_counter()
                ch.basic_publish(REQUESTS_EXCHANGE, rk, body, props, mandatory=True)
                raw_ms.append((time.perf_counter() - t0) * 1000)
        pub.close()
        ch.queue_purge(INTERACTIVE_QUEUE)

        t0 = time.perf_counter()
        with BatchPublisher(url=vhost.url, max_in_flight=in_flight, queue_type=queue_type) as bp:
            for rk, body, headers, mid in events:
                bp.publish_raw(rk, body, headers, mid)
            summary = bp.flush(timeout=300)
        batch_s = time.perf_counter() - t0
        if not summary.ok:
            return None
        ch.queue_purge(BATCH_QUEUE)

        t0 = time.perf_counter()
        for event in events:
            raw(*event)
        raw_batch_s = time.perf_counter() - t0
        ch.queue_purge(BATCH_QUEUE)
        conn.close()
    return {
        "queue_type": queue_type,
        "interactive": {"publisher_submit_ms": {"p50": statistics.median(ours_ms),
                                                "p99": h.pct(ours_ms, 0.99),
                                                "mean": statistics.fmean(ours_ms)},
                        "raw_pika_ms": {"p50": statistics.median(raw_ms),
                                        "p99": h.pct(raw_ms, 0.99),
                                        "mean": statistics.fmean(raw_ms)}},
        "batch": {"batch_publisher_msg_s": len(events) / batch_s,
                  "raw_pika_one_confirm_msg_s": len(events) / raw_batch_s},
    }


def _publish_png(path: Path, runs: list[dict[str, Any]]) -> None:
    plt = _plt()
    f, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{run['queue_type']}\n{q}" for run in runs for q in ("p50", "p99")]
    xs = list(range(len(labels)))
    ours = [run["interactive"]["publisher_submit_ms"][q] for run in runs for q in ("p50", "p99")]
    raw = [run["interactive"]["raw_pika_ms"][q] for run in runs for q in ("p50", "p99")]
    ax1.bar([x - 0.2 for x in xs], ours, 0.4, label="Publisher.submit")
    ax1.bar([x + 0.2 for x in xs], raw, 0.4, label="raw pika")
    ax1.axhline(5, color="grey", ls="--", lw=1)
    ax1.set_xticks(xs, labels)
    ax1.set_ylabel("ms per confirmed publish")
    ax1.legend()
    xs = list(range(len(runs)))
    ax2.bar([x - 0.2 for x in xs], [run["batch"]["batch_publisher_msg_s"] for run in runs], 0.4,
            label="BatchPublisher")
    ax2.bar([x + 0.2 for x in xs], [run["batch"]["raw_pika_one_confirm_msg_s"] for run in runs],
            0.4, label="raw pika (1 confirm at a time)")
    ax2.axhline(10_000, color="grey", ls="--", lw=1)
    ax2.set_xticks(xs, [run["queue_type"] for run in runs])
    ax2.set_ylabel("messages/s")
    ax2.legend()
    f.suptitle("eeszt-gw bench publish")
    f.tight_layout()
    f.savefig(path, dpi=100)
