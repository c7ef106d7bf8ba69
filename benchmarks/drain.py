"""How the throughput benchmarks measure: CPU and RSS sampling, and waiting for a queue to
drain into the simulator (the processes they drive: :mod:`benchmarks.harness`).

How one drain is measured (``run_drain``):

1. a fresh simulator (``--duplicates dedupe``, ``--latency-ms L``, log level warning) and a
   fresh RabbitMQ vhost;
2. all N events are published *before* any consumer runs (pipelined confirms), so the publish
   phase is never inside the measured window;
3. the pipeline starts; a sampler records every 0.2 s the cumulative CPU time of the pipeline's
   processes (psutil over its launcher's children), of the simulator and of RabbitMQ's
   ``beam.smp``, and the simulator's record count (SQLite ``max(id)``, read-only);
4. the window opens when every pipeline process is consuming (the gateway: a heartbeat file per
   process; the bare pipeline: it waits for a go signal; the naive peer: a ready file written by
   a worker-boot hook), so start-up and imports are not counted, and closes at the last stored
   record. Events/s = records stored in the window ÷ its length (by the simulator's own
   ``stored_at`` timestamps); CPU µs/event = CPU used in the window (interpolated between
   samples) ÷ those records.

When a run is so short that most records were stored before the window opened (the smoke
tests' tiny sizes), the window falls back to first-to-last stored record.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from schemas.wire import DEFAULT_QUEUE_TYPE

from .harness import (SAMPLE_EVERY_S, STARTERS, Vhost, broker_process, publish_gateway,
                      publish_naive, start_simulator)


# --- sampling -------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # epoch seconds
    records: int
    cpu: dict[str, float]  # cumulative CPU seconds per group
    rss: dict[int, int] = field(default_factory=dict)  # pid -> RSS bytes of worker processes


class Sampler(threading.Thread):
    """Samples cumulative CPU per group of processes, the record count and (optionally) RSS.

    A process that exits keeps its last known CPU time, so the cumulative figures never drop.
    """

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]],
                 count: Callable[[], int], *, every_s: float = SAMPLE_EVERY_S,
                 rss_of: Callable[[], list[psutil.Process]] | None = None) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.groups, self.count, self.every_s, self.rss_of = groups, count, every_s, rss_of
        self.samples: list[Sample] = []
        self._known: dict[str, dict[int, float]] = {g: {} for g in groups}
        self._procs: dict[int, psutil.Process] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _proc(self, p: psutil.Process) -> psutil.Process:
        # keep one Process object per pid (psutil caches the creation time for pid reuse checks)
        return self._procs.setdefault(p.pid, p)

    def sample(self) -> Sample:
        with self._lock:
            cpu = {}
            for group, procs in self.groups.items():
                known = self._known[group]
                for p in procs():
                    p = self._proc(p)
                    try:
                        t = p.cpu_times()
                        known[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                cpu[group] = sum(known.values())
            cpu["host"] = host_busy_s()
            rss: dict[int, int] = {}
            if self.rss_of is not None:
                for p in self.rss_of():
                    try:
                        rss[p.pid] = p.memory_info().rss
                    except psutil.Error:
                        pass
            s = Sample(time.time(), self.count(), cpu, rss)
            self.samples.append(s)
            return s

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def cpu_at(self, t: float) -> dict[str, float]:
        """Cumulative CPU per group at epoch ``t``, interpolated linearly between samples."""
        samples = self.samples
        times = [s.t for s in samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return dict(samples[0].cpu)
        if i >= len(samples):
            return dict(samples[-1].cpu)
        a, b = samples[i - 1], samples[i]
        f = (t - a.t) / (b.t - a.t) if b.t > a.t else 1.0
        return {g: a.cpu[g] + f * (b.cpu[g] - a.cpu[g]) for g in a.cpu}


@dataclass
class DrainResult:
    kind: str
    latency_ms: float
    processes: int
    threads: int
    events: int  # published
    stored: int  # stored by the simulator
    complete: bool
    events_per_s: float
    window_s: float
    window_events: int
    window: str  # "ready→last" or "first→last"
    cpu_us_per_event: dict[str, float]
    publish_s: float
    other_cpu_share: float = 0.0  # host CPU used by anything else during the window, 0..1
    events_per_s_to_99: float = 0.0  # the same, up to the record that completes 99% of the window
    events_per_s_steady: float = 0.0  # between the records that make 10% and 90% of the window
    queue_type: str = DEFAULT_QUEUE_TYPE  # of the work queue drained

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def wait_drain(sampler: Sampler, expected: int, *, stall_s: float, alive: Callable[[], bool],
               on_sample: Callable[[Sample], None] | None = None) -> bool:
    """Block until ``expected`` records are stored; False on a stall or a dead pipeline."""
    last_n, last_change = -1, time.monotonic()
    while True:
        time.sleep(SAMPLE_EVERY_S / 2)
        s = sampler.last
        if s is None:
            continue
        if on_sample is not None:
            on_sample(s)
        if s.records >= expected:
            return True
        if s.records != last_n:
            last_n, last_change = s.records, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return False
        if not alive():
            return False


def run_drain(kind: str, *, events: Sequence[tuple[str, bytes, dict[str, Any], str]],
              latency_ms: float, processes: int, threads: int, pki_dir: Path, work: Path,
              stall_s: float = 60.0, console: Any = None,
              queue_type: str = DEFAULT_QUEUE_TYPE, make_vhost: Callable[..., Vhost] = Vhost,
              broker_processes: Callable[[], list[psutil.Process]] | None = None) -> DrainResult:
    """One pipeline draining ``events`` into a fresh simulator at ``latency_ms``; see the
    module docstring for what is measured. ``queue_type`` is the work queues' type, and the
    vhost's default type (for the naive peer, whose dramatiq declares no type).
    ``make_vhost(tag, default_queue_type=...)`` makes the run's vhost (another broker's, e.g.
    a local cluster's) and ``broker_processes`` lists that broker's VMs for the CPU figures
    (default: the main node's ``beam.smp``)."""
    n = len(events)
    sim = start_simulator(pki_dir, work, latency_ms=latency_ms)
    pipeline = None
    sampler = None
    try:
        if sim.record_count():
            raise RuntimeError(f"the simulator's database {sim.db} is not empty")
        with make_vhost(kind, default_queue_type=queue_type) as vhost:
            if kind == "naive":
                publish_s = publish_naive(vhost.url, events)
            else:
                publish_s = publish_gateway(vhost.url, events, queue_type=queue_type)
            beam = broker_process()
            sampler = Sampler({"worker": lambda: pipeline.processes() if pipeline else [],
                               "simulator": sim.processes,
                               "broker": broker_processes or (lambda: [beam] if beam else [])},
                              sim.record_count)
            pipeline = STARTERS[kind](url=vhost.url, sim=sim, pki_dir=pki_dir, work=work,
                                      processes=processes, threads=threads,
                                      queue_type=queue_type)
            sampler.start()
            pipeline.wait_ready()
            pipeline.go()
            t_ready = time.time()
            sampler.sample()
            complete = wait_drain(sampler, n, stall_s=stall_s,
                                  alive=lambda: pipeline.proc.poll() is None)
            sampler.sample()
            sampler.stop()
            pipeline.stop()
            times = sim.stored_times()
    finally:
        _cleanup(sampler, pipeline, sim)
    if console is not None and not complete:
        console.print(f"[red]{kind} at {latency_ms:g} ms stored {len(times)} of {n} records "
                      f"(log: {pipeline.log_path})")
    return summarize(kind, sampler, times, t_ready, n=n, latency_ms=latency_ms,
                     processes=processes, threads=threads, complete=complete,
                     publish_s=publish_s, queue_type=queue_type)


def _cleanup(*parts: Any) -> None:
    """Stop what was started, each part even when another fails to stop."""
    for part in parts:
        if part is None:
            continue
        try:
            part.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            pass


def host_busy_s() -> float:
    """CPU seconds the whole host has been busy (all processes, all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) \
        + getattr(t, "steal", 0)


def summarize(kind: str, sampler: Sampler, times: list[float], t_ready: float, *, n: int,
              latency_ms: float, processes: int, threads: int, complete: bool,
              publish_s: float, queue_type: str = DEFAULT_QUEUE_TYPE) -> DrainResult:
    stored = len(times)
    after = [t for t in times if t >= t_ready]
    if stored >= 2 and len(after) >= max(10, stored // 2) and after[-1] > t_ready:
        t0, t1, count, how = t_ready, after[-1], len(after), "ready→last"
        rate = count / (t1 - t0)
    elif stored >= 2 and times[-1] > times[0]:
        t0, t1, count, how = times[0], times[-1], stored - 1, "first→last"
        rate = count / (t1 - t0)
    else:
        t0 = t1 = t_ready
        count, how, rate = stored, "none", 0.0
    # robust to a few stragglers (parked or retried events that land much later)
    rate99 = 0.0
    if how != "none" and count >= 100:
        window = after if how == "ready→last" else times[1:]
        k = max(1, int(0.99 * len(window)))
        t99 = window[k - 1]
        rate99 = k / (t99 - t0) if t99 > t0 else 0.0
    # steady state: from the record that makes 10% of the window to the one that makes 90%
    steady = 0.0
    if how != "none" and count >= 100:
        window = after if how == "ready→last" else times[1:]
        lo, hi = window[len(window) // 10], window[(len(window) * 9) // 10 - 1]
        k = (len(window) * 9) // 10 - len(window) // 10
        steady = k / (hi - lo) if hi > lo else 0.0
    a, b = sampler.cpu_at(t0), sampler.cpu_at(t1)
    groups = [g for g in a if g != "host"]
    cpu = {g: ((b[g] - a[g]) * 1e6 / count if count else 0.0) for g in groups}
    # the rest of the host's CPU in the window (this harness, other processes): interference
    other = (b["host"] - a["host"]) - sum(b[g] - a[g] for g in groups)
    ncpu = psutil.cpu_count() or 1
    other_share = other / ((t1 - t0) * ncpu) if t1 > t0 else 0.0
    return DrainResult(kind=kind, latency_ms=latency_ms, processes=processes, threads=threads,
                       events=n, stored=stored, complete=complete, events_per_s=rate,
                       window_s=t1 - t0, window_events=count, window=how,
                       cpu_us_per_event=cpu, publish_s=publish_s,
                       other_cpu_share=max(0.0, other_share), events_per_s_to_99=rate99,
                       events_per_s_steady=steady, queue_type=queue_type)
