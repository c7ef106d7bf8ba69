"""Serving the simulator: uvicorn with mutual TLS, plus the admin port, the eID server (HTTPS,
server-auth only) and the OCSP responder with the CRLs (plain HTTP, :mod:`simulator.ocsp`) on
threads.

Why uvicorn: it is a production ASGI server (httptools parser) that handles about 2,400
verified SOAP requests per second per core on this class of machine, lets us require client certificates through a plain
``ssl.SSLContext``, and keeps one process so the fault state and SQLite writer stay simple.

The service port runs on asyncio's own event loop, not uvloop. Saturated by ~100 kept-alive
connections (``eeszt-gw bench memory``, 0 ms latency), uvloop accepted about 4 new connections
a second (strace: 18 ``accept4`` in 5 s, none ending in EAGAIN: one per wake-up). The accept
queue filled with clients that had given up after their 5 s connect timeout, every later
client timed out behind them, and the gateway's workers churned TLS connections for the whole
run (worker RSS 1.19x over 1,000,000 events). asyncio accepts every waiting connection at once.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

import uvicorn

from .app import AdminApp, Simulator
from .eid_app import EidServerApp
from .ocsp import RevocationApp
from .faults import FaultConfig, OutageWindow
from .pki import PkiPaths
from .rules import Rules
from .settings import SimulatorSettings
from .users import UserRegistry

log = logging.getLogger("eeszt_gw.simulator")


def server_ssl_context(pki: PkiPaths) -> ssl.SSLContext:
    """TLS 1.2+, our server certificate, and a client certificate chained to the WAF CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(cafile=str(pki.waf_ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def eid_ssl_context(pki: PkiPaths) -> ssl.SSLContext:
    """TLS 1.2+ with our server certificate and no client certificate: the eSzemélyi client on a
    workstation has no access certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def faults_from_settings(s: SimulatorSettings) -> FaultConfig:
    return FaultConfig(
        latency_ms=s.latency_ms, jitter_ms=s.jitter_ms, error_rate=s.error_rate,
        reset_rate=s.reset_rate, hang_rate=s.hang_rate, hang_s=s.hang_s,
        ambiguous_rate=s.ambiguous_rate,
        outages=tuple(OutageWindow.parse(w) for w in s.outage),
        apply_to_sts=s.faults_on_sts, token_lifetime_s=s.token_lifetime_s,
        max_skew_s=s.max_skew_s, duplicates=s.duplicates,
    )


def build_simulator(s: SimulatorSettings) -> Simulator:
    """Load the PKI and the users, open the store. Raises FileNotFoundError naming what is missing."""
    pki = PkiPaths.in_dir(s.pki_dir)
    for path in (pki.server_cert, pki.server_key, pki.waf_ca_cert, pki.qualified_ca_cert,
                 pki.sts_cert, pki.sts_key, pki.card_ca_cert, pki.eid_cert, pki.eid_key):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run `eeszt-gw pki init {s.pki_dir}` first (a PKI made before "
                f"the eID server lacks eid.pem/eid.key: re-create it with --force)")
    users_file = s.users_file or (s.pki_dir / "users.json")
    users = UserRegistry.load(users_file) if users_file.exists() else UserRegistry()
    Path(s.db).parent.mkdir(parents=True, exist_ok=True)
    return Simulator(pki=pki, db_path=s.db, users=users, faults=faults_from_settings(s), seed=s.seed,
                     eid_package_ttl_s=s.eid_package_ttl_s, rid_ttl_s=s.rid_ttl_s,
                     rules=Rules(require_two_factor=s.require_two_factor,
                                 max_timestamp_lifetime_s=s.max_timestamp_lifetime_s))


def eid_server(sim: Simulator, s: SimulatorSettings) -> uvicorn.Server:
    """The eID server's uvicorn (not started), on HOST:EID_PORT with server-auth TLS."""
    config = uvicorn.Config(EidServerApp(sim), host=s.host, port=s.eid_port, log_level=s.log_level,
                            access_log=False, lifespan="off", timeout_keep_alive=s.keep_alive_s)
    config.load()
    config.ssl = eid_ssl_context(sim.pki)
    return uvicorn.Server(config)


def revocation_server(sim: Simulator, s: SimulatorSettings) -> uvicorn.Server | None:
    """The OCSP/CRL port's uvicorn (not started) on HOST:OCSP_PORT, plain HTTP; None when the
    port is 0. OCSP answers are signed, CRLs are signed: neither needs TLS (RFC 6960, 5280)."""
    if not s.ocsp_port:
        return None
    app = RevocationApp(sim.revocation, {ca.crl.name: ca.crl for ca in sim.pki.revoking_cas()})
    config = uvicorn.Config(app, host=s.host, port=s.ocsp_port, log_level="warning",
                            access_log=False, lifespan="off", timeout_keep_alive=s.keep_alive_s)
    return uvicorn.Server(config)


def _start_revocation(sim: Simulator, s: SimulatorSettings) -> uvicorn.Server | None:
    """Start the OCSP/CRL port on a thread. A port that cannot be bound is logged, not fatal:
    the service port works without it (clients then see their certificate status unknown)."""
    server = revocation_server(sim, s)
    if server is None:
        return None
    thread = threading.Thread(target=server.run, name="sim-ocsp", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            log.error("no OCSP responder: cannot listen on %s:%d", s.host, s.ocsp_port)
            return None
        time.sleep(0.01)
    return server


def serve(s: SimulatorSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    sim = build_simulator(s)
    admin = uvicorn.Server(uvicorn.Config(AdminApp(sim), host="127.0.0.1", port=s.admin_port,
                                          log_level="warning", access_log=False, lifespan="off"))
    # Not the main thread: uvicorn installs no signal handlers there; the main server owns them.
    threading.Thread(target=admin.run, name="sim-admin", daemon=True).start()
    ocsp = _start_revocation(sim, s)
    eid = eid_server(sim, s)
    eid_thread = threading.Thread(target=eid.run, name="sim-eid", daemon=True)
    eid_thread.start()
    # The service port opens only once the eID server listens: a client that reached the one
    # can reach the other (tests wait for the service port).
    deadline = time.monotonic() + 20
    while not eid.started:
        if not eid_thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the eID server did not start on {s.host}:{s.eid_port}")
        time.sleep(0.01)
    config = uvicorn.Config(sim, host=s.host, port=s.port, log_level=s.log_level,
                            access_log=False, lifespan="off", timeout_keep_alive=s.keep_alive_s,
                            backlog=2048, loop="asyncio")  # accepts all waiting: see above
    config.load()
    config.ssl = server_ssl_context(sim.pki)  # our context: CERT_REQUIRED against the WAF CA
    server = uvicorn.Server(config)
    log.info("EESZT simulator on https://%s:%d (admin http://127.0.0.1:%d, eID server "
             "https://%s:%d, OCSP and CRLs %s), duplicates=%s", s.host, s.port, s.admin_port,
             s.host, s.eid_port, f"http://{s.host}:{s.ocsp_port}" if ocsp else "off",
             s.duplicates.value)
    try:
        server.run()
    finally:
        admin.should_exit = True
        eid.should_exit = True
        if ocsp is not None:
            ocsp.should_exit = True
        time.sleep(0.2)
