"""``eeszt-gw demo``: the whole gateway in one process, with nothing to install.

A temporary test PKI, the EESZT simulator on a loopback port (HTTPS with mutual TLS), the worker
pool on an embedded in-memory broker (dramatiq's StubBroker) or on RabbitMQ (``--broker-url``),
and a synthetic HIS that publishes a realistic mix and follows its replies. It ends with a table
per service. The simulator, the signing and the SOAP calls are all real; only the broker is
embedded.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.generate import generate
from schemas.envelope import RequestEnvelope
from schemas.replies import is_final
from schemas.soap import OPERATION_OF
from simulator.pki import init_pki
from simulator.server import build_simulator, eid_server, server_ssl_context
from simulator.settings import SimulatorSettings
from simulator.users import write_demo_users
from workers.settings import WorkerSettings

from .gateways import EmbeddedGateway, RabbitGateway

REPLY_KEY = "his.demo"
console = Console(stderr=False)


@dataclass
class Tally:
    sent_at: dict[str, float] = field(default_factory=dict)
    service_of: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    first_sent: float = 0.0
    last_final: dict[str, float] = field(default_factory=dict)
    finals: int = 0
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def final(self, reply) -> bool:
        mid = str(reply.message_id)
        with self.lock:
            if not is_final(reply):
                self.statuses[reply.state] += 1
                return False
            if mid in self.seen:  # a repeated final reply (same message id) counts once
                return False
            self.seen.add(mid)
            service = self.service_of.get(mid) or reply.service or "?"
            self.outcomes[service][reply.kind] += 1
            now = time.monotonic()
            if mid in self.sent_at:
                self.latencies[service].append(now - self.sent_at[mid])
            self.last_final[service] = now
            self.finals += 1
            return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_simulator(pki_dir: Path, workdir: Path, latency_ms: float
                     ) -> tuple[Any, list[uvicorn.Server], str, str]:
    port = _free_port()
    settings = SimulatorSettings(pki_dir=pki_dir, port=port, eid_port=_free_port(),
                                 db=workdir / "simulator.sqlite", duplicates="naive",
                                 latency_ms=latency_ms, log_level="warning")
    sim = build_simulator(settings)
    eid = eid_server(sim, settings)
    threading.Thread(target=eid.run, name="simulator-eid", daemon=True).start()
    config = uvicorn.Config(sim, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="off", timeout_keep_alive=120)
    config.load()
    config.ssl = server_ssl_context(sim.pki)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="simulator", daemon=True).start()
    deadline = time.monotonic() + 20
    while not (server.started and eid.started):
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.02)
    return sim, [server, eid], f"https://localhost:{port}", f"https://localhost:{settings.eid_port}"


def run_demo(*, prescriptions: int = 300, referrals: int = 150, profiles: int = 50,
             revokes: int = 0, events: int = 500, documents: int = 100, invalid: int = 8,
             doctors: int = 10, threads: int = 16, latency_ms: float = 20.0,
             broker_url: str | None = None, seed: int | None = 7, timeout_s: float = 600) -> int:
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="eeszt-gw-demo-"))
    try:
        return _run(workdir, prescriptions=prescriptions, referrals=referrals, profiles=profiles,
                    revokes=revokes, events=events, documents=documents, invalid=invalid,
                    doctors=doctors, threads=threads, latency_ms=latency_ms,
                    broker_url=broker_url, seed=seed, timeout_s=timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, *, broker_url: str | None, threads: int, latency_ms: float,
         doctors: int, seed: int | None, timeout_s: float, **counts: int) -> int:
    console.rule("[bold]eeszt-gateway demo")
    pki_dir = workdir / "pki"
    init_pki(pki_dir)
    write_demo_users(pki_dir / "users.json", institution="H100200", count=doctors)
    console.print(f"test PKI and {doctors} demo doctors in {pki_dir}")
    sim, servers, base_url, eid_url = _start_simulator(pki_dir, workdir, latency_ms)
    console.print(f"EESZT simulator on {base_url} (mutual TLS, {latency_ms:g} ms latency, naive "
                  f"duplicates), eID server on {eid_url}")
    # Doctors log in only at their workstations, through in-process card bridges: at odd
    # workstations with the eSZIG card (a virtual card; the doctor types the PIN), at even ones
    # with MobilToken (the doctor types the code off the phone). The workers get no secret.
    users = json.loads((pki_dir / "users.json").read_text())["users"]
    mobiltoken = frozenset(u["workstation"] for i, u in enumerate(users) if i % 2 == 1)
    settings = WorkerSettings(pki_dir=pki_dir, eeszt_url=base_url, threads=threads,
                              retry_base_s=0.5)
    tally = Tally()
    if broker_url:
        gateway = RabbitGateway(broker_url, settings, reply_key=REPLY_KEY, eid_url=eid_url,
                                mobiltoken=mobiltoken)
    else:
        gateway = EmbeddedGateway(settings, reply_key=REPLY_KEY, eid_url=eid_url,
                                  mobiltoken=mobiltoken)
    console.print(f"workers: {threads} threads on {gateway.description}; {len(users)} doctors "
                  f"log in at their workstations' card bridges: {len(users) - len(mobiltoken)} "
                  f"with an eSZIG card (in-process virtual card), {len(mobiltoken)} with "
                  "MobilToken; the workers hold no doctor's secret")

    lines = list(generate(doctors=doctors, reply_to=REPLY_KEY, seed=seed, **counts))
    requests = [RequestEnvelope.from_json(line) for line in lines]
    for r in requests:
        tally.service_of[str(r.message_id)] = OPERATION_OF[r.message_type][0].name

    done = threading.Event()

    def follow() -> None:
        while not done.is_set():
            reply = gateway.next_reply(0.2)
            if reply is not None:
                tally.final(reply)

    follower = threading.Thread(target=follow, name="his-replies", daemon=True)
    follower.start()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        pub = progress.add_task("published", total=len(requests))
        fin = progress.add_task("answered ", total=len(requests))
        tally.first_sent = time.monotonic()
        for r in requests:
            tally.sent_at[str(r.message_id)] = time.monotonic()
            gateway.publish(r)
            progress.advance(pub)
            progress.update(fin, completed=tally.finals)
        gateway.flush()
        deadline = time.monotonic() + timeout_s
        while tally.finals < len(requests) and time.monotonic() < deadline:
            progress.update(fin, completed=tally.finals)
            time.sleep(0.1)
        progress.update(fin, completed=tally.finals)
    done.set()
    follower.join(timeout=2)
    stats = sim.store.stats()
    gateway.close()
    for server in servers:
        server.should_exit = True

    _print_table(tally, gateway.logins_by_service())
    ws = gateway.workstations
    if ws is not None:
        console.print(f"doctors' logins at their workstations: {ws.challenges} challenge(s), "
                      f"{ws.pin_prompts} PIN prompt(s), {ws.code_prompts} MobilToken code "
                      f"prompt(s); the doctors' waiting requests got one 'waiting_for_login' "
                      f"status each ({tally.statuses.get('waiting_for_login', 0)} in all)")
    issues = stats["sts_issues"]
    console.print("STS issues by method: " + ", ".join(
        f"{method} {issues[method]}" for method in sorted(issues)))
    console.print(f"simulator: {stats['total_records']} records stored, "
                  f"{stats['repeated_keys']} idempotency keys stored more than once, "
                  f"STS issues {json.dumps(stats['sts_issues'])}")
    missing = len(requests) - tally.finals
    if missing:
        console.print(f"[red]{missing} requests got no final reply within {timeout_s:.0f}s")
        return 1
    if issues.get("password"):
        console.print("[red]a doctor logged in with a password: the gateway must hold none")
        return 1
    return 0


def _print_table(tally: Tally, logins: Counter) -> None:
    table = Table(title="per service")
    for col in ("service", "accepted", "rejected", "failed", "STS calls", "req/s", "p50 ms", "p95 ms"):
        table.add_column(col, justify="right" if col != "service" else "left")
    for service in sorted(tally.outcomes):
        c = tally.outcomes[service]
        lat = sorted(tally.latencies[service])
        n = sum(c.values())
        span = tally.last_final.get(service, tally.first_sent) - tally.first_sent
        rate = n / span if span > 0 else 0.0
        p50 = statistics.median(lat) * 1000 if lat else 0.0
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000 if lat else 0.0
        table.add_row(service, str(c["accepted"]), str(c["rejected"]), str(c["failed"]),
                      str(logins.get(service, 0)), f"{rate:.0f}", f"{p50:.0f}", f"{p95:.0f}")
    console.print(table)
    if tally.statuses:
        console.print("status updates: " + ", ".join(f"{k} {v}" for k, v in tally.statuses.items()))
