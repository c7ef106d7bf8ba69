"""The flags of ``eeszt-gw bench``: :func:`register` adds the ``bench`` command and its scenarios.

``eeszt_gw.cli`` calls it only when ``eeszt-gw bench`` runs and the bench extra is installed, so
the product's command never loads this package otherwise. The scenarios import their modules
(and psutil, matplotlib) lazily, when one of them runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _bench_card_login(ns: argparse.Namespace) -> int:
    from .card_login import run

    return run(n=ns.n, apdus=ns.apdus, json_out=Path(ns.json) if ns.json else None)


def _bench_codepath(ns: argparse.Namespace) -> int:
    from .codepath import run

    return run(n=ns.n, rounds=ns.rounds, audit=ns.audit, profile=ns.profile,
               json_out=_path(ns.json), png_out=_path(ns.png))


def register(sub) -> None:
    """Add `bench` and its scenarios to the subcommands `sub` of `eeszt-gw`."""
    p = sub.add_parser("bench", help="benchmarks that print figures measured in one run",
                       description="Benchmarks. Each scenario prints a table; --json also writes "
                                   "the figures to a file.")
    psub = p.add_subparsers(dest="sub", required=True, metavar="SCENARIO")
    card = psub.add_parser(
        "card-login", help="challenge → rID time of a card login, beside the APDU round trip",
        description="Time card logins through the real PC/SC stack (pyscard → pcscd → vpcd → the "
                    "virtual eSZIG card) and the simulator's eID server, from the bridge taking a "
                    "signed challenge to holding the rID, without the PIN typing; and the APDU "
                    "round trip through pcscd beside it. Needs pcscd with vpcd "
                    "(`.ci/ensure-pcscd`) and the card extra (pyscard).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    card.add_argument("--n", type=int, default=30, help="logins to time")
    card.add_argument("--apdus", type=int, default=500, help="APDUs for the round-trip figure")
    card.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    card.set_defaults(func=_bench_card_login)
    cp = psub.add_parser(
        "codepath", help="CPU µs per request of the gateway's code beside the bare pipeline's, "
                         "on one thread, without a network",
        description="Run N care events on one thread through the gateway's request path "
                    "(Pipeline.handle, as a worker process builds it) and through the bare "
                    "pipeline's handle, with the HTTP answer and the STS token canned, and print "
                    "CPU µs per event of each: the cost of the code alone, without the thread "
                    "contention of the throughput scenarios. --audit rabbitmq records the audit "
                    "events into a real stream, in a fresh vhost on RabbitMQ at 127.0.0.1:5672 "
                    "(guest/guest, rabbitmqctl on this host) that is deleted at the end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cp.add_argument("--n", type=int, default=5000, help="care events per round")
    cp.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    cp.add_argument("--audit", choices=("rabbitmq", "off"), default="rabbitmq",
                    help="the gateway's audit trail: a real stream, or off (no audit events)")
    cp.add_argument("--profile", type=int, default=0, metavar="K",
                    help="also print the K functions where the gateway spends most (cProfile)")
    cp.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    cp.add_argument("--png", metavar="FILE", help="also draw the figures as a PNG chart")
    cp.set_defaults(func=_bench_codepath)
    _add_bench_throughput(psub)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _bench_publish(ns: argparse.Namespace) -> int:
    from .publish import run_publish

    return run_publish(n=ns.n, warmup=ns.warmup, batch_n=ns.batch_n, in_flight=ns.in_flight,
                       queue_types=ns.queue_types, json_out=_path(ns.json),
                       png_out=_path(ns.png))


def _bench_batch(ns: argparse.Namespace) -> int:
    from .scenarios import run_batch

    return run_batch(n=ns.n, latencies=ns.latencies, processes=ns.processes, threads=ns.threads,
                     naive_threads=ns.naive_threads, pipelines=ns.pipelines, stall_s=ns.stall_s,
                     json_out=_path(ns.json), png_out=_path(ns.png), keep=ns.keep,
                     repeat=max(1, ns.repeat), queue_type=ns.queue_type)


def _bench_scaling(ns: argparse.Namespace) -> int:
    from .scenarios import run_scaling

    return run_scaling(latency=ns.latency, processes=ns.processes, n=ns.n, threads=ns.threads,
                       pipelines=ns.pipelines, stall_s=ns.stall_s, json_out=_path(ns.json),
                       png_out=_path(ns.png), keep=ns.keep)


def _bench_memory(ns: argparse.Namespace) -> int:
    from .memory import run_memory

    return run_memory(n=ns.n, latency=ns.latency, processes=ns.processes, threads=ns.threads,
                      sample_s=ns.sample_s, backlog=ns.backlog, warmup=ns.warmup,
                      json_out=_path(ns.json), png_out=_path(ns.png), keep=ns.keep)


def _bench_cluster(ns: argparse.Namespace) -> int:
    from .cluster import run_cluster

    return run_cluster(n=ns.n, batch_n=ns.batch_n, in_flight=ns.in_flight,
                       processes=ns.processes, threads=ns.threads, stall_s=ns.stall_s,
                       json_out=_path(ns.json), keep=ns.keep)


def _queue_types(text: str) -> list[str]:
    names = _names(text)
    bad = [x for x in names if x not in ("classic", "quorum")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"queue types are classic and quorum, not {text!r}")
    return names


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _add_bench_throughput(psub) -> None:
    """The throughput scenarios: RabbitMQ on 127.0.0.1:5672 (guest/guest, rabbitmqctl on this
    host for a vhost per run) and the simulator as a subprocess."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    needs = (" Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and rabbitmqctl on this host: each "
             "run gets its own vhost, deleted at the end. Run on an otherwise idle machine.")

    def outputs(q) -> None:
        q.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
        q.add_argument("--png", metavar="FILE", help="also draw a chart (PNG)")

    p = psub.add_parser(
        "publish", formatter_class=fmt,
        help="confirmed publish latency and batch throughput, beside raw pika",
        description="p50/p99 of one confirmed publish with producers.Publisher.submit beside raw "
                    "pika (BlockingConnection + confirm_delivery + basic_publish, same bytes), "
                    "and confirmed batch throughput with BatchPublisher beside raw pika with one "
                    "confirm at a time; once per work-queue type, each in its own vhost." + needs)
    p.add_argument("--n", type=int, default=5000,
                   help="timed publishes of each kind (p99 is the 1%% slowest: a larger N "
                        "steadies it)")
    p.add_argument("--warmup", type=int, default=200, help="untimed publishes first")
    p.add_argument("--batch-n", type=int, default=20_000, help="messages in the batch test")
    p.add_argument("--in-flight", type=int, default=256, help="BatchPublisher's confirm window")
    p.add_argument("--queue-types", type=_queue_types, default=["classic", "quorum"],
                   help="work-queue types to measure, comma separated: classic (the single-node "
                        "default) and quorum (the production one, deploy/)")
    outputs(p)
    p.set_defaults(func=_bench_publish)

    p = psub.add_parser(
        "batch", formatter_class=fmt,
        help="care events drained by the gateway, the bare pipeline (urllib3 and libcurl) and "
             "the naive peer",
        description="Publish N care events (event.start, institution-acted, no reply_to) into a "
                    "fresh vhost, then drain them into a fresh simulator (dedupe mode, "
                    "--latency-ms L) with each pipeline: the gateway (eeszt-gw worker --queues "
                    "batch, on its default HTTP client, libcurl; EESZT_TRANSPORT=urllib3 for "
                    "the other), the bare pipeline (pika + threads + lxml template + xmlsec + "
                    "urllib3), the same on libcurl (bare-curl: the like-for-like baseline) and "
                    "the naive peer (dramatiq actor + zeep + requests). Reports "
                    "events/s and CPU µs per event of the workers, the simulator and the broker, "
                    "measured from the moment every worker process consumes to the last stored "
                    "record." + needs)
    p.add_argument("--n", type=int, default=100_000, help="care events per run")
    p.add_argument("--latencies", type=_floats, default=[0.0, 20.0, 100.0],
                   help="simulated EESZT latencies in ms, comma separated")
    p.add_argument("--processes", type=int, default=2, help="worker processes of every pipeline")
    p.add_argument("--threads", type=int, default=64,
                   help="threads per process of the gateway and the bare pipeline; requests in "
                        "flight (processes × threads) should be ≥ rate × (L + 2 ms)")
    p.add_argument("--naive-threads", type=int, default=8,
                   help="threads per process of the naive peer (dramatiq's default)")
    p.add_argument("--pipelines", type=_names, default=["gateway", "bare", "bare-curl", "naive"],
                   help="which pipelines to run, comma separated")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="give a run up after this long without a new record")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each pipeline and latency, interleaved; figures are the median "
                        "run (use 3 on a shared machine, whose speed drifts between runs)")
    p.add_argument("--queue-type", choices=("classic", "quorum"), default="classic",
                   help="type of the work queue every pipeline drains (quorum: the production "
                        "one, deploy/; the vhost's default type too, for the naive peer)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    outputs(p)
    p.set_defaults(func=_bench_batch)

    p = psub.add_parser(
        "scaling", formatter_class=fmt, help="gateway (and bare) events/s by process count",
        description="Drain N care events at one latency with 1, 2, 4 … worker processes, for "
                    "the gateway and the bare pipeline." + needs)
    p.add_argument("--latency", type=float, default=20.0, help="simulated EESZT latency, ms")
    p.add_argument("--processes", type=_ints, default=[1, 2, 4],
                   help="process counts, comma separated")
    p.add_argument("--n", type=int, default=20_000, help="care events per run")
    p.add_argument("--threads", type=int, default=64, help="threads per process")
    p.add_argument("--pipelines", type=_names, default=["gateway", "bare"],
                   help="which pipelines to run, comma separated (gateway, bare, naive)")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="give a run up after this long without a new record")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    outputs(p)
    p.set_defaults(func=_bench_scaling)

    p = psub.add_parser(
        "memory", formatter_class=fmt, help="the gateway workers' RSS over a long run",
        description="Feed the gateway N care events (published while it runs, at most --backlog "
                    "waiting) and sample its worker processes' RSS every --sample-s seconds; "
                    "report start (after the warm-up), end, max and end ÷ start." + needs)
    p.add_argument("--n", type=int, default=1_000_000, help="care events")
    p.add_argument("--latency", type=float, default=0.0, help="simulated EESZT latency, ms")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument("--threads", type=int, default=64, help="threads per process")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--backlog", type=int, default=50_000, help="most events waiting in the queue")
    p.add_argument("--warmup", type=int, default=None,
                   help="events before the start sample (default: 2%% of N, at least 1000)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    outputs(p)
    p.set_defaults(func=_bench_memory)

    p = psub.add_parser(
        "cluster", formatter_class=fmt,
        help="quorum queues on a local three-node cluster beside the single node: confirmed "
             "publish and gateway drain rates",
        description="Start a local three-node RabbitMQ cluster (tests/cluster.py: its own nodes, "
                    "ports and cookie on loopback, stopped at the end, also on failure), then on "
                    "quorum work queues, in a fresh vhost on the main node and one on the "
                    "cluster: the confirmed publish rate of BatchPublisher (--batch-n messages), "
                    "and the gateway draining --n care events into a fresh simulator at 20 ms "
                    "(the workers get all three addresses on the cluster). Prints one node, the "
                    "cluster and their ratio. The cluster's nodes share this host's cores." + needs)
    p.add_argument("--n", type=int, default=10_000, help="care events drained per broker")
    p.add_argument("--batch-n", type=int, default=20_000,
                   help="messages in the confirmed publish test")
    p.add_argument("--in-flight", type=int, default=256, help="BatchPublisher's confirm window")
    p.add_argument("--processes", type=int, default=2, help="gateway worker processes")
    p.add_argument("--threads", type=int, default=64, help="threads per worker process")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="give a drain up after this long without a new record")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (logs, databases, the cluster's node folders)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=_bench_cluster)

