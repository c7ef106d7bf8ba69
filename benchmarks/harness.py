"""The processes the throughput benchmarks drive: a vhost per run, the simulator as a
subprocess, the three pipelines as subprocesses, and event publishing. How a drain is measured
(CPU and RSS sampling, the window): :mod:`benchmarks.drain`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil

from schemas.wire import DEFAULT_QUEUE_TYPE
from simulator.launch import SimulatorProcess
from simulator.launch import start_simulator as launch_simulator

#: the repository: the subprocesses' working folder, and where benchmarks/naive.py finds the WSDL
ROOT = Path(__file__).resolve().parents[1]
RABBIT_HOSTPORT = "127.0.0.1:5672"
SAMPLE_EVERY_S = 0.2
NAIVE_QUEUE = "naive.events"
NAIVE_ACTOR = "submit_event"


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


# --- RabbitMQ vhost -------------------------------------------------------------------------------
def _local_ctl(*args: str, check: bool = True) -> None:
    """``rabbitmqctl -q args`` against this host's default node (the main one)."""
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=120)


class Vhost:
    """A fresh vhost for one run (``rabbitmqctl add_vhost``), deleted on exit. Only this
    vhost is ever touched. By default on the main node (:data:`RABBIT_HOSTPORT`); another
    broker (a local cluster) gives its ``hostports`` (``url`` lists them all, comma-separated)
    and ``ctl(*args, check=...)``, its own rabbitmqctl (node name, cookie)."""

    def __init__(self, tag: str = "run", default_queue_type: str | None = None, *,
                 hostports: Sequence[str] = (RABBIT_HOSTPORT,),
                 ctl: Callable[..., Any] = _local_ctl) -> None:
        self.name = f"eeszt-bench-{os.getpid()}-{tag}-{uuid.uuid4().hex[:6]}"
        self.default_queue_type = default_queue_type
        self.hostports, self.ctl = tuple(hostports), ctl

    @property
    def url(self) -> str:
        return ",".join(f"amqp://guest:guest@{hp}/{self.name}" for hp in self.hostports)

    def __enter__(self) -> "Vhost":
        add = ["add_vhost", self.name]
        if self.default_queue_type:  # what queues declared without x-queue-type become
            add += ["--default-queue-type", self.default_queue_type]
        self.ctl(*add)
        self.ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctl("delete_vhost", self.name, check=False)


def rabbit_ready() -> bool:
    host, port = RABBIT_HOSTPORT.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _local_cluster_node(p: psutil.Process) -> bool:
    """``p`` is a node of a local cluster (tests/cluster.py starts them with
    RABBITMQ_NODENAME=eeszt-c<k>-<id>@localhost; the name is not on their command line)."""
    try:
        return p.environ().get("RABBITMQ_NODENAME", "").startswith("eeszt-c")
    except psutil.Error:  # another user's VM: the main node runs as rabbitmq
        return False


def broker_process() -> psutil.Process | None:
    """RabbitMQ's Erlang VM on this host (``beam.smp`` booting rabbit, not a rabbitmqctl
    VM), or None; never a node of a local cluster."""
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or ())
            if p.info["name"] == "beam.smp" and "-s rabbit boot" in cmdline \
                    and not _local_cluster_node(p):
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


#: the simulator as a subprocess (simulator/launch.py): admin API, records, processes, stop()
Simulator = SimulatorProcess


def start_simulator(pki_dir: Path, work: Path, *, latency_ms: float,
                    extra: Sequence[str] = (), **settings: Any) -> Simulator:
    """The simulator on free ports (or ``settings``' ports), deduplicating, with ``latency_ms``;
    a database of its own per run (:func:`simulator.launch.start_simulator`)."""
    return launch_simulator(pki_dir, work, *extra, duplicates="dedupe", latency_ms=latency_ms,
                            **settings)


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
    from producers.batch import BatchPublisher

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

    from producers.batch import BatchPublisher

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
    """The bare baseline (``benchmarks.bare``); it consumes only after :meth:`Pipeline.go`.
    It declares nothing: it consumes the queue the publisher declared (``queue_type``)."""
    ready = work / f"bare-{uuid.uuid4().hex[:8]}"
    ready.mkdir()
    log_path = ready.with_suffix(".log")
    go_file = ready / "go"
    cmd = [sys.executable, "-m", "benchmarks.bare", "--broker-url", url,
           "--eeszt-url", sim.base_url, "--pki-dir", str(pki_dir), "--processes", str(processes),
           "--threads", str(threads), "--ready-dir", str(ready), "--go-file", str(go_file),
           "--transport", transport]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    kind = "bare" if transport == "urllib3" else f"bare-{transport}"
    return Pipeline(kind, proc, log_path, processes, ready, "ready-*", go_file)


def start_naive(*, url: str, sim: Simulator, pki_dir: Path, work: Path, processes: int,
                threads: int, queue_type: str = DEFAULT_QUEUE_TYPE) -> Pipeline:
    """The naive peer: dramatiq's own CLI running ``benchmarks.naive``. dramatiq declares
    its queues without a type: the vhost's default (``queue_type``) applies."""
    ready = work / f"naive-{uuid.uuid4().hex[:8]}"
    ready.mkdir()
    log_path = ready.with_suffix(".log")
    env = {**os.environ, "NAIVE_BROKER_URL": url, "NAIVE_EESZT_URL": sim.base_url,
           "NAIVE_PKI_DIR": str(pki_dir), "NAIVE_READY_DIR": str(ready)}
    cmd = [sys.executable, "-m", "dramatiq", "benchmarks.naive", "--processes",
           str(processes), "--threads", str(threads), "--queues", NAIVE_QUEUE]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env=env)
    return Pipeline("naive", proc, log_path, processes, ready, "ready-*")


STARTERS: dict[str, Callable[..., Pipeline]] = {
    "gateway": start_gateway, "bare": start_bare, "naive": start_naive,
    # the bare pipeline on the gateway's default HTTP client (libcurl): a like-for-like ratio
    "bare-curl": functools.partial(start_bare, transport="curl")}


# --- helpers of the scenarios ----------------------------------------------------------------------
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
