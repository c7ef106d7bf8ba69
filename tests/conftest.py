"""Shared fixtures: a test PKI in a temporary folder, the simulator as a real subprocess
(:mod:`simulator.launch`), RabbitMQ vhosts and worker pools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from simulator.launch import SimulatorProcess, free_port, start_simulator  # noqa: F401
from simulator.pki import PkiPaths, init_pki
from simulator.users import write_demo_users

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    directory = tmp_path_factory.mktemp("pki")
    paths = init_pki(directory, institution_id="H100200", institution_name="Teszt Kórház")
    write_demo_users(directory / "users.json", institution="H100200", count=10)
    return paths


@pytest.fixture(scope="session")
def demo_users(pki: PkiPaths) -> list[dict[str, str]]:
    return json.loads((pki.directory / "users.json").read_text())["users"]


def stop_simulator(sim: SimulatorProcess) -> None:
    sim.stop()


@pytest.fixture(scope="session")
def simulator(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One simulator for the session; tests call ``simulator.reset(...)`` to start clean."""
    sim = start_simulator(pki, tmp_path_factory.mktemp("sim"))
    yield sim
    stop_simulator(sim)


# --- RabbitMQ ---------------------------------------------------------------------------------
RABBIT_HOST = "127.0.0.1:5672"


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A fresh vhost per test session, so that no earlier run's messages interfere.

    Fails (does not skip) when RabbitMQ is not running: `make test` starts it.
    """
    name = f"eeszt-test-{os.getpid()}"
    for cmd in (["rabbitmqctl", "-q", "add_vhost", name],
                ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    yield name
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def broker_url(rabbit_vhost: str) -> str:
    return f"amqp://guest:guest@{RABBIT_HOST}/{rabbit_vhost}"


def forget_logins(broker_url: str) -> list[str]:
    """Delete every doctor's login marker and wait queue, and every workstation's challenge queue,
    in ``broker_url``'s vhost; return the names deleted.

    A scenario that kills worker processes mid-login leaves a marker behind (by design it lives
    for the login window), and stopped bridges leave their challenges queued: a later test on the
    same vhost would wait for that window or answer a stale challenge first.
    """
    import urllib.parse

    import pika

    vhost = urllib.parse.unquote(broker_url.rsplit("/", 1)[1]) or "/"
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    names = [n.strip() for n in listed.splitlines()
             if n.strip().startswith(("eeszt.login.pending.", "eeszt.login.wait.", "eeszt.card."))]
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        for name in names:
            conn.channel().queue_delete(name)
    finally:
        conn.close()
    return names


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A local three-node RabbitMQ cluster (tests/cluster.py) for the session's cluster tests;
    every node is stopped at the end, also when a test fails. The main node is never touched."""
    from tests.cluster import ClusterError, LocalCluster

    try:
        local = LocalCluster.start(tmp_path_factory.mktemp("cluster"), n=3)
    except ClusterError as exc:
        pytest.fail(f"the local RabbitMQ cluster did not form:\n{exc}", pytrace=False)
    try:
        yield local
    finally:
        local.stop()
        assert local.running() == [], "a cluster node outlived the session"


@dataclass
class WorkerPool:
    proc: subprocess.Popen
    log_path: Path
    heartbeat_dir: Path
    #: the doctors' workstations (tests.bridges.WorkstationBridges), or None
    bridges: Any = None

    def stop(self) -> None:
        # The workers first: a copy still in flight that needs a login (a twin deferred after a
        # kill -9) would otherwise find no card bridge and be answered GW-LOGIN after its
        # original was accepted.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.bridges is not None:
            self.bridges.stop()
            self.bridges = None


def start_workers(*, broker_url: str, sim: SimulatorProcess, workdir: Path, processes: int = 1,
                  threads: int = 8, queues: str = "interactive,batch", extra: tuple[str, ...] = (),
                  workstations: dict[str, str] | None = None) -> WorkerPool:
    """`eeszt-gw worker` as a subprocess; returns once a process has beaten.

    Doctors log in only at their workstations: card bridges run in this process for
    ``workstations`` (``{workstation: "eszig" | "mobiltoken"}``; default: the demo doctors'
    workstations, by card; ``{}``: none), stopped with the pool (tests/bridges.py).
    """
    from tests.bridges import WorkstationBridges, demo_workstations

    if workstations is None:
        users = json.loads((sim.pki.directory / "users.json").read_text())["users"]
        workstations = demo_workstations(users)
    bridges = None
    if workstations:
        from eeszt_gw.amqp import BrokerTLS

        def flag(name: str) -> str | None:
            return extra[extra.index(name) + 1] if name in extra else None

        tls = BrokerTLS.from_paths(*(Path(v) if (v := flag(f)) else None
                                     for f in ("--broker-ca", "--broker-cert", "--broker-key")))
        bridges = WorkstationBridges(broker_url=broker_url, pki_dir=sim.pki.directory,
                                     eid_url=sim.eid_url, workstations=workstations,
                                     state_dir=workdir / f"bridges-{time.monotonic_ns()}",
                                     queue_type=flag("--queue-type") or "classic", tls=tls)
    hb = workdir / f"hb-{time.monotonic_ns()}"
    log_path = workdir / f"worker-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "eeszt_gw.cli", "worker", "--broker-url", broker_url,
           "--eeszt-url", sim.base_url, "--pki-dir", str(sim.pki.directory),
           "--processes", str(processes), "--threads", str(threads), "--queues", queues,
           "--heartbeat-dir", str(hb), "--retry-base-s", "0.5", *extra]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    pool = WorkerPool(proc, log_path, hb, bridges)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pool.stop()
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log_path.read_text()}")
        if len(list(hb.glob("worker-*.json"))) >= processes:
            return pool
        time.sleep(0.2)
    pool.stop()
    raise RuntimeError(f"workers did not start:\n{log_path.read_text()}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The cluster scenarios' lines at the end of the run (`make test` shows them)."""
    from tests.cluster import SCENARIO_LINES

    if SCENARIO_LINES:
        terminalreporter.section("cluster scenarios: simulator in naive mode")
        for line in SCENARIO_LINES:
            terminalreporter.write_line(line)
