"""``eeszt-gw bench cluster``: quorum queues on a three-node cluster beside the single main node.

In one run, on quorum work queues:

1. confirmed publish rate: ``BatchPublisher`` (pipelined confirms, the in-flight window of
   ``bench publish``) of ``batch_n`` care events into a fresh vhost on the main node
   (127.0.0.1:5672) and into a fresh vhost on a local three-node cluster (given all three
   addresses, it connects to the first that answers);
2. drain rate: the gateway (``eeszt-gw worker --queues batch``, the processes and threads of
   ``bench batch``) draining ``n`` care events into a fresh simulator (latency 20 ms) from each
   of those brokers, measured as ``bench batch`` measures (:func:`benchmarks.drain.run_drain`);
   on the cluster the workers get all three addresses.

The cluster (:mod:`tests.cluster`, its own nodes, ports and cookie under the run's work folder)
starts at the beginning and stops at the end, also on failure; every vhost is deleted. The
cluster's three Erlang VMs share the host's cores with everything else, so the ratios say what
replication costs on this machine, not what three machines would do. Nothing is asserted.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
from rich.table import Table

from . import drain as dr
from . import harness as h
from .scenarios import _console, _write_json

QUEUE_TYPE = "quorum"
LATENCY_MS = 20.0


@dataclass
class Site:
    """One broker of the comparison: how to make a vhost there, its VMs, its queues."""

    key: str  # "one_node" / "cluster"
    label: str
    make_vhost: Callable[..., h.Vhost]
    processes: Callable[[], list[psutil.Process]]
    queues: Callable[[str], dict[str, dict]]  # vhost -> name -> list_queues row


def load_cluster_module() -> ModuleType:
    """The repository's ``tests/cluster.py`` (``LocalCluster``), loaded by path: ``tests`` is
    not an installed package, and ``eeszt-gw bench`` may run from any folder."""
    if "tests.cluster" in sys.modules:
        return sys.modules["tests.cluster"]
    path = h.ROOT / "tests" / "cluster.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: bench cluster needs the repository")
    spec = importlib.util.spec_from_file_location("eeszt_bench_local_cluster", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass  # the process has ended: it adds no more CPU
    return total


def _main_queues(vhost: str) -> dict[str, dict]:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type",
                          "leader", "members", "--formatter", "json"],
                         capture_output=True, text=True, timeout=120).stdout
    return {row["name"]: row for row in json.loads(out or "[]")}


def main_site() -> Site:
    beam = h.broker_process()
    return Site("one_node", "one node", h.Vhost, lambda: [beam] if beam else [], _main_queues)


def cluster_site(cluster: Any) -> Site:
    def vms() -> list[psutil.Process]:
        return [psutil.Process(pid) for node in cluster.nodes if (pid := node.pid)]

    make = functools.partial(h.Vhost, hostports=[u.split("@", 1)[1].split("/")[0]
                                                 for u in cluster.urls],
                             ctl=functools.partial(cluster.ctl, None, timeout=120))
    return Site("cluster", f"{len(cluster.nodes)}-node cluster", make, vms,
                lambda vhost: cluster.queues(vhost))


def measure_publish(site: Site, events: list, in_flight: int) -> dict[str, Any]:
    """``BatchPublisher`` of ``events`` into a fresh vhost of ``site``, timed as ``bench
    publish`` times it (connect and declare included); the broker's CPU around it."""
    from schemas.wire import BATCH_QUEUE

    with site.make_vhost("cpub", default_queue_type=QUEUE_TYPE) as vhost:
        procs = site.processes()
        cpu0 = _cpu_s(procs)
        seconds = h.publish_gateway(vhost.url, events, max_in_flight=in_flight,
                                    queue_type=QUEUE_TYPE)
        cpu1 = _cpu_s(procs)
        row = site.queues(vhost.name).get(BATCH_QUEUE, {})
    return {"msg_s": len(events) / seconds, "seconds": seconds, "messages": len(events),
            "broker_cpu_us_per_msg": (cpu1 - cpu0) * 1e6 / len(events),
            "queue": BATCH_QUEUE, "queue_type": row.get("type"), "leader": row.get("leader"),
            "members": sorted(row.get("members") or [])}


def run_cluster(*, n: int = 10_000, batch_n: int = 20_000, in_flight: int = 256,
                processes: int = 2, threads: int = 64, stall_s: float = 60.0,
                json_out: Path | None = None, keep: bool = False) -> int:
    console = _console()
    if not h.rabbit_ready():
        console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT}")
        return 2
    try:
        mod = load_cluster_module()
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}")
        return 2
    ncpu = psutil.cpu_count() or 1
    host = f"this machine, {ncpu} cores"
    pub_events = h.make_events(batch_n, tag="cp")
    drain_events = h.make_events(n, tag="cd")
    fig: dict[str, Any] = {"host": host, "cpus": ncpu, "n": n, "batch_n": batch_n,
                           "in_flight": in_flight, "latency_ms": LATENCY_MS,
                           "processes": processes, "threads": threads, "queue_type": QUEUE_TYPE,
                           "publish": {}, "drain": {}}
    # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C: the cluster is stopped on the way out
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _run(mod, console, fig, pub_events, drain_events, json_out=json_out, keep=keep,
                    stall_s=stall_s)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run(mod: ModuleType, console: Any, fig: dict[str, Any], pub_events: list,
         drain_events: list, *, json_out: Path | None, keep: bool, stall_s: float) -> int:
    n, batch_n, in_flight = fig["n"], fig["batch_n"], fig["in_flight"]
    processes, threads = fig["processes"], fig["threads"]
    with h.Workdir(keep=keep) as work:
        console.log(f"starting a local three-node RabbitMQ cluster under {work.path}/cluster")
        try:
            cluster = mod.LocalCluster.start(work.path / "cluster", n=3)
        except mod.ClusterError as exc:
            console.print(f"[red]the cluster did not start: {exc}")
            return 2
        fig["cluster"] = {"nodes": [node.name for node in cluster.nodes], "urls": cluster.urls,
                          "dir": str(cluster.base_dir), "formed_in_s": cluster.formed_in_s}
        console.log(f"cluster formed in {cluster.formed_in_s:.1f} s: "
                    + ", ".join(f"{node.name} (:{node.port})" for node in cluster.nodes))
        try:
            sites = [main_site(), cluster_site(cluster)]
            for site in sites:
                console.log(f"{site.label}: {batch_n:,} confirmed publishes, "
                            f"{in_flight} in flight")
                fig["publish"][site.key] = measure_publish(site, pub_events, in_flight)
            for site in sites:
                console.log(f"{site.label}: the gateway drains {n:,} care events at "
                            f"{LATENCY_MS:g} ms ({processes} processes × {threads} threads)")
                res = dr.run_drain("gateway", events=drain_events, latency_ms=LATENCY_MS,
                                   processes=processes, threads=threads, pki_dir=work.pki,
                                   work=work.path, stall_s=stall_s, console=console,
                                   queue_type=QUEUE_TYPE, make_vhost=site.make_vhost,
                                   broker_processes=site.processes)
                fig["drain"][site.key] = res.as_dict()
        finally:
            console.log("stopping the cluster")
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut it short
            cluster.stop()
            fig["cluster"]["stopped"] = not cluster.running() and not any(
                node.registered() for node in cluster.nodes)
    fig["ratios"] = _ratios(fig)
    console.print(_table(fig))
    if not fig["cluster"]["stopped"]:
        console.print("[red]a node of the cluster is still running")
    _write_json(json_out, fig)
    complete = all(d["complete"] for d in fig["drain"].values())
    return 0 if complete and fig["cluster"]["stopped"] else 1


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _ratios(fig: dict[str, Any]) -> dict[str, float | None]:
    p, d = fig["publish"], fig["drain"]
    return {"publish_msg_s": _ratio(p["cluster"]["msg_s"], p["one_node"]["msg_s"]),
            "drain_events_s": _ratio(d["cluster"]["events_per_s"],
                                     d["one_node"]["events_per_s"])}


def _table(fig: dict[str, Any]) -> Table:
    p, d = fig["publish"], fig["drain"]
    table = Table(title=f"quorum queues: one node beside a 3-node cluster ({fig['host']}; the "
                        "cluster's three nodes, the main node, the simulator and the workers "
                        "share them)")
    for col in ("measure", "one node", "3-node cluster", "cluster ÷ one node"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def row(measure: str, one: float, clu: float, fmt: str = "{:,.0f}",
            end: bool = False) -> None:
        ratio = _ratio(clu, one)
        table.add_row(measure, fmt.format(one), fmt.format(clu),
                      f"{ratio:.2f}×" if ratio is not None else "-", end_section=end)

    one, clu = p["one_node"], p["cluster"]
    row(f"confirmed publish, BatchPublisher ({fig['in_flight']} in flight, "
        f"{fig['batch_n']:,} msgs), msg/s", one["msg_s"], clu["msg_s"])
    row("  broker CPU µs per published message", one["broker_cpu_us_per_msg"],
        clu["broker_cpu_us_per_msg"])
    table.add_row("  replicas of the work queue", str(len(one["members"])),
                  str(len(clu["members"])), "", end_section=True)
    one, clu = d["one_node"], d["cluster"]
    row(f"gateway drain at {fig['latency_ms']:g} ms ({fig['processes']} × {fig['threads']} "
        f"threads, {fig['n']:,} events), events/s", one["events_per_s"], clu["events_per_s"])
    for group in ("worker", "broker"):
        row(f"  CPU µs per event, {group}", one["cpu_us_per_event"].get(group, 0.0),
            clu["cpu_us_per_event"].get(group, 0.0))
    table.add_row("  host CPU used by other processes in the window",
                  f"{one['other_cpu_share']:.0%}", f"{clu['other_cpu_share']:.0%}", "")
    return table
