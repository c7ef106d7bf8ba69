"""The machinery the throughput benchmarks share: a vhost per run, the simulator as a
subprocess, the three pipelines as subprocesses, event publishing, CPU and RSS sampling, and
waiting for a queue to drain into the simulator.

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
import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil

from schemas.wire import DEFAULT_QUEUE_TYPE

ROOT = Path(__file__).resolve().parents[2]
RABBIT_HOSTPORT = "127.0.0.1:5672"
SAMPLE_EVERY_S = 0.2
NAIVE_QUEUE = "naive.events"
NAIVE_ACTOR = "submit_event"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


# --- RabbitMQ vhost -------------------------------------------------------------------------------
class Vhost:
    """A fresh vhost for one run (``rabbitmqctl add_vhost``), deleted on exit. Only this
    vhost is ever touched."""

    def __init__(self, tag: str = "run", default_queue_type: str | None = None) -> None:
        self.name = f"eeszt-bench-{os.getpid()}-{tag}-{uuid.uuid4().hex[:6]}"
        self.default_queue_type = default_queue_type

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{RABBIT_HOSTPORT}/{self.name}"

    def __enter__(self) -> "Vhost":
        add = ["rabbitmqctl", "-q", "add_vhost", self.name]
        if self.default_queue_type:  # what queues declared without x-queue-type become
            add += ["--default-queue-type", self.default_queue_type]
        for cmd in (add,
                    ["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*",
                     ".*"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True,
                       timeout=120)


def rabbit_ready() -> bool:
    host, port = RABBIT_HOSTPORT.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def broker_process() -> psutil.Process | None:
    """RabbitMQ's Erlang VM on this host (``beam.smp``), or None."""
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "beam.smp" and "rabbit" in " ".join(p.info["cmdline"] or ()):
                return p
        except (psutil.Error, TypeError):
            continue
    return None


# --- PKI and the simulator ------------------------------------------------------------------------
def make_pki(directory: Path) -> Path:
    from simulator.pki import init_pki
    from simulator.users import write_demo_users

    init_pki(directory, institution_id="H100200", institution_name="Bench Kórház")
    write_demo_users(directory / "users.json", institution="H100200", count=2)
    return directory


@dataclass
class Simulator:
    proc: subprocess.Popen
    base_url: str
    admin_url: str
    db: Path
    log_path: Path

    def admin(self, method: str, path: str, payload: Any | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def processes(self) -> list[psutil.Process]:
        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:
            return []

    def record_count(self) -> int:
        """Records stored so far (read-only SQLite; WAL lets it run beside the writer)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                (n,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()
                return int(n)
        except sqlite3.Error:
            return 0

    def stored_times(self) -> list[float]:
        """Epoch seconds of every stored record, in insertion order."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute("SELECT stored_at FROM records ORDER BY id").fetchall()
        return [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for (s,) in rows]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_simulator(pki_dir: Path, work: Path, *, latency_ms: float,
                    extra: Sequence[str] = ()) -> Simulator:
    port, admin_port, eid_port = free_port(), free_port(), free_port()
    # Named per run, not per port: the kernel hands out a port again, and a database named
    # after it held an earlier run's records, so a later run "drained" at once into them.
    run_id = uuid.uuid4().hex[:8]
    log_path = work / f"simulator-{run_id}.log"
    db = work / f"sim-{run_id}.sqlite"
    cmd = [sys.executable, "-m", "eeszt_gw.cli", "simulator", "--pki-dir", str(pki_dir),
           "--port", str(port), "--admin-port", str(admin_port), "--eid-port", str(eid_port),
           "--db", str(db), "--log-level", "warning", "--duplicates", "dedupe",
           "--latency-ms", f"{latency_ms:g}", *extra]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sim = Simulator(proc, f"https://localhost:{port}", f"http://127.0.0.1:{admin_port}", db,
                    log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            sim.admin("GET", "/admin/health")
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return sim
        except OSError:
            time.sleep(0.1)
    sim.stop()
    raise RuntimeError(f"simulator did not become ready:\n{log_path.read_text()}")


# --- events ---------------------------------------------------------------------------------------
_BNOS = ("J069", "I10H0", "E119", "M5450", "K2190", "J4590", "E7800", None)


def event_wire(i: int, *, tag: str = "b") -> tuple[str, bytes, dict[str, Any], str]:
    """Care event number ``i`` (``event.start``, institution-acted, no reply_to) as
    ``(routing_key, body, headers, message_id)``, exactly as the project's publishers send it."""
    from producers.memory import to_wire
    from schemas.envelope import InstitutionIdentity, RequestEnvelope
    from schemas.payloads import CareEventStart, CareEventType
    from schemas.validators import make_taj

    kinds = list(CareEventType)
    started = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc) + timedelta(minutes=i % 10_000)
    request = RequestEnvelope(
        idempotency_key=f"bench-{tag}-evs-{i:08d}", institution="H100200",
        acting=InstitutionIdentity(), reply_to=None,
        payload=CareEventStart(taj=make_taj(f"{(17_000_000 + i * 7919) % 10**8:08d}"),
                               event_id=f"2026/{i:08d}", event_type=kinds[i % len(kinds)],
                               started_at=started, bno=_BNOS[i % len(_BNOS)]))
    return to_wire(request)


def make_events(n: int, *, start: int = 0, tag: str = "b") -> list[tuple[str, bytes, dict[str, Any], str]]:
    return [event_wire(i, tag=tag) for i in range(start, start + n)]


def publish_gateway(url: str, events: Iterable[tuple[str, bytes, dict[str, Any], str]],
                    max_in_flight: int = 256, queue_type: str = DEFAULT_QUEUE_TYPE) -> float:
    """Publish to ``eeszt.requests`` with pipelined confirms (BatchPublisher), the work queues
    declared as ``queue_type``; returns seconds."""
    from producers.publisher import BatchPublisher

    t0 = time.perf_counter()
    with BatchPublisher(url=url, max_in_flight=max_in_flight, queue_type=queue_type) as pub:
        for rk, body, headers, mid in events:
            pub.publish_raw(rk, body, headers, mid)
        summary = pub.flush(timeout=300)
    if not summary.ok:
        raise RuntimeError(f"publish failed: {summary}")
    return time.perf_counter() - t0


def publish_naive(url: str, events: Iterable[tuple[str, bytes, dict[str, Any], str]],
                  max_in_flight: int = 256) -> float:
    """The same events as dramatiq messages for the naive peer's actor, in dramatiq's own
    format and queue (declared the way dramatiq declares it); pipelined confirms."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from producers.publisher import BatchPublisher

    broker = RabbitmqBroker(url=url)
    try:
        broker.declare_queue(NAIVE_QUEUE, ensure=True)
    finally:
        broker.close()
    t0 = time.perf_counter()
    with BatchPublisher(url=url, max_in_flight=max_in_flight, declare_topology=False,
                        exchange="") as pub:
        for _rk, body, _headers, _mid in events:
            msg = dramatiq.Message(queue_name=NAIVE_QUEUE, actor_name=NAIVE_ACTOR,
                                   args=(json.loads(body),), kwargs={}, options={})
            pub.publish_raw(NAIVE_QUEUE, msg.encode(), None, msg.message_id)
        summary = pub.flush(timeout=300)
    if not summary.ok:
        raise RuntimeError(f"publish failed: {summary}")
    return time.perf_counter() - t0


# --- the pipelines as subprocesses ----------------------------------------------------------------
@dataclass
class Pipeline:
    """A running pipeline: its launcher process, and how to tell that every process consumes."""

    kind: str
    proc: subprocess.Popen
    log_path: Path
    processes_wanted: int
    ready_dir: Path
    ready_glob: str
    go_file: Path | None = None

    def ready_count(self) -> int:
        return len(list(self.ready_dir.glob(self.ready_glob)))

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-4000:]}")
            if self.ready_count() >= self.processes_wanted:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not start:\n{self.log_path.read_text()[-4000:]}")

    def go(self) -> None:
        if self.go_file is not None:
            self.go_file.touch()

    def processes(self) -> list[psutil.Process]:
        """Every process under the launcher (workers, multiprocessing's resource tracker)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that do the work (not the resource tracker)."""
        out = []
        for p in self.processes():
            try:
                if "resource_tracker" not in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for p in self.processes():
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                self.proc.kill()
                self.proc.wait()


def start_gateway(*, url: str, sim: Simulator, pki_dir: Path, work: Path, processes: int,
                  threads: int, queue_type: str = DEFAULT_QUEUE_TYPE) -> Pipeline:
    """``eeszt-gw worker --queues batch`` (the supervisor and its worker processes)."""
    hb = work / f"hb-{uuid.uuid4().hex[:8]}"
    log_path = work / f"gateway-{hb.name}.log"
    cmd = [sys.executable, "-m", "eeszt_gw.cli", "worker", "--broker-url", url,
           "--eeszt-url", sim.base_url, "--pki-dir", str(pki_dir), "--processes", str(processes),
           "--threads", str(threads), "--queues", "batch", "--queue-type", queue_type,
           "--heartbeat-dir", str(hb),
           "--metrics-port", "0", "--log-level", os.environ.get("EESZT_BENCH_WORKER_LOG", "warning")]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    return Pipeline("gateway", proc, log_path, processes, hb, "worker-*.json")


def start_bare(*, url: str, sim: Simulator, pki_dir: Path, work: Path, processes: int,
               threads: int, queue_type: str = DEFAULT_QUEUE_TYPE,
               transport: str = "urllib3") -> Pipeline:
    """The bare baseline (``eeszt_gw.bench.bare``); it consumes only after :meth:`Pipeline.go`.
    It declares nothing: it consumes the queue the publisher declared (``queue_type``)."""
    ready = work / f"bare-{uuid.uuid4().hex[:8]}"
    ready.mkdir()
    log_path = ready.with_suffix(".log")
    go_file = ready / "go"
    cmd = [sys.executable, "-m", "eeszt_gw.bench.bare", "--broker-url", url,
           "--eeszt-url", sim.base_url, "--pki-dir", str(pki_dir), "--processes", str(processes),
           "--threads", str(threads), "--ready-dir", str(ready), "--go-file", str(go_file),
           "--transport", transport]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    kind = "bare" if transport == "urllib3" else f"bare-{transport}"
    return Pipeline(kind, proc, log_path, processes, ready, "ready-*", go_file)


def start_naive(*, url: str, sim: Simulator, pki_dir: Path, work: Path, processes: int,
                threads: int, queue_type: str = DEFAULT_QUEUE_TYPE) -> Pipeline:
    """The naive peer: dramatiq's own CLI running ``eeszt_gw.bench.naive``. dramatiq declares
    its queues without a type: the vhost's default (``queue_type``) applies."""
    ready = work / f"naive-{uuid.uuid4().hex[:8]}"
    ready.mkdir()
    log_path = ready.with_suffix(".log")
    env = {**os.environ, "NAIVE_BROKER_URL": url, "NAIVE_EESZT_URL": sim.base_url,
           "NAIVE_PKI_DIR": str(pki_dir), "NAIVE_READY_DIR": str(ready)}
    cmd = [sys.executable, "-m", "dramatiq", "eeszt_gw.bench.naive", "--processes",
           str(processes), "--threads", str(threads), "--queues", NAIVE_QUEUE]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env=env)
    return Pipeline("naive", proc, log_path, processes, ready, "ready-*")


STARTERS: dict[str, Callable[..., Pipeline]] = {
    "gateway": start_gateway, "bare": start_bare, "naive": start_naive,
    # the bare pipeline on the gateway's default HTTP client (libcurl): a like-for-like ratio
    "bare-curl": functools.partial(start_bare, transport="curl")}


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
              queue_type: str = DEFAULT_QUEUE_TYPE) -> DrainResult:
    """One pipeline draining ``events`` into a fresh simulator at ``latency_ms``; see the
    module docstring for what is measured. ``queue_type`` is the work queues' type, and the
    vhost's default type (for the naive peer, whose dramatiq declares no type)."""
    n = len(events)
    sim = start_simulator(pki_dir, work, latency_ms=latency_ms)
    pipeline = None
    sampler = None
    try:
        if sim.record_count():
            raise RuntimeError(f"the simulator's database {sim.db} is not empty")
        with Vhost(kind, default_queue_type=queue_type) as vhost:
            if kind == "naive":
                publish_s = publish_naive(vhost.url, events)
            else:
                publish_s = publish_gateway(vhost.url, events, queue_type=queue_type)
            beam = broker_process()
            sampler = Sampler({"worker": lambda: pipeline.processes() if pipeline else [],
                               "simulator": sim.processes,
                               "broker": lambda: [beam] if beam else []}, sim.record_count)
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


class Workdir:
    """A temporary folder with a test PKI, removed on exit (kept with ``keep``)."""

    def __init__(self, keep: bool = False) -> None:
        import tempfile

        self.path = Path(tempfile.mkdtemp(prefix="eeszt-gw-bench-"))
        self.keep = keep
        self.pki = make_pki(self.path / "pki")

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def chunks(it: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
