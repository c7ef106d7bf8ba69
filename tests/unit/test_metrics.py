"""Prometheus metrics without a broker: the observer, the scrape-time collectors, the bridge."""

from __future__ import annotations

import logging
import socket
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest

from card_bridge.daemon import Bridge
from card_bridge.metrics import BridgeMetrics
from card_bridge.prompt import ScriptedPrompt
from card_bridge.settings import BridgeSettings
from schemas.wire import INTERACTIVE_QUEUE
from simulator.pki import init_pki
from tests import samples
from tests.conftest import free_port
from tests.bridges import FakeBridges, finals, logged_in
from tests.unit.test_card_bridge import FakeEid, RecordingClient, challenge, mobiltoken_bridge, verifier
from workers.breaker import Breakers
from workers.client.fakes import FakeEeszt
from workers.middleware.metrics import (
    DURATION_BUCKETS,
    BreakerCollector,
    CertificateCollector,
    MetricsObserver,
    TokenCollector,
    register_runtime_collectors,
    serve_quietly,
    start_metrics_server,
)
from workers.outbox import MemoryOutbox
from workers.pipeline import Incoming, Pipeline
from workers.retry import RetryPolicy
from workers.settings import WorkerSettings
from workers.logins.tokens import TokenManager, doctor_identity, institution_identity

FAST = RetryPolicy(call_attempts=1, call_wait_min_s=0.001, call_wait_max_s=0.002)

#: every name the Grafana dashboard queries (as exposed)
WORKER_NAMES = ("eeszt_requests_total", "eeszt_request_duration_seconds_bucket",
                "eeszt_request_duration_seconds_sum", "eeszt_request_duration_seconds_count",
                "eeszt_sts_calls_total", "eeszt_token_cache_hits_total", "eeszt_parked_total",
                "eeszt_dead_lettered_total", "eeszt_circuit_open", "eeszt_certificate_days_left")
BRIDGE_NAMES = ("eeszt_bridge_logins_total", "eeszt_bridge_card_present", "eeszt_bridge_pcscd_up")


def pipeline_with_metrics(**observer_kw):
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, **observer_kw)
    fake = FakeEeszt()
    tokens = TokenManager(sts=fake)
    logged_in(tokens, fake, "O10001")  # the doctor logged in at the workstation
    pipeline = Pipeline(client=fake, tokens=tokens, outbox=MemoryOutbox(), institution="H100200",
                        policy=FAST, observer=observer)
    return registry, observer, pipeline


def incoming(request) -> Incoming:
    return Incoming(body=request.to_json(), queue=INTERACTIVE_QUEUE,
                    message_type=request.message_type)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# --- the observer ------------------------------------------------------------------------------
def test_observer_counts_the_pipelines_outcomes_per_service():
    registry, _, pipeline = pipeline_with_metrics()
    # Given two good prescriptions, one for another institution, and garbage without a reply address,
    good = [samples.prescription(), samples.prescription()]
    foreign = samples.prescription().model_copy(update={"institution": "H999999"})
    # When the pipeline handles them,
    outcomes = [pipeline.handle(incoming(r)) for r in (*good, foreign)]
    outcomes.append(pipeline.handle(Incoming(body=b"{not json", queue=INTERACTIVE_QUEUE)))
    assert outcomes == ["accepted", "accepted", "rejected", "dead-lettered"]
    # Then each is counted under its service and outcome,
    assert value(registry, "eeszt_requests_total", service="eRecept", outcome="accepted") == 2
    assert value(registry, "eeszt_requests_total", service="eRecept", outcome="rejected") == 1
    assert value(registry, "eeszt_requests_total", service="unknown", outcome="dead-lettered") == 1
    assert value(registry, "eeszt_dead_lettered_total", service="unknown") == 1
    # and every service and outcome is exposed from the start, at zero.
    assert value(registry, "eeszt_requests_total", service="eht", outcome="parked") == 0
    assert value(registry, "eeszt_parked_total", service="eBeutalo") == 0


def test_parked_and_dead_letters_are_counted_per_service():
    registry = CollectorRegistry()
    observer = MetricsObserver(registry)
    with_reply = samples.event_start().model_copy(update={"reply_to": "his.demo"})
    without_reply = samples.event_start().model_copy(update={"reply_to": None})
    for kind, request in [("parked", with_reply), ("parked", with_reply), ("failed", with_reply),
                          ("rejected", with_reply), ("rejected", without_reply),
                          ("retrying", with_reply), ("waiting", with_reply)]:
        observer.outcome("esemenyKatalogus", kind, request)
    assert value(registry, "eeszt_parked_total", service="esemenyKatalogus") == 2
    # failed goes to eeszt.dlq; a rejection goes there only when nobody can be told
    assert value(registry, "eeszt_dead_lettered_total", service="esemenyKatalogus") == 2
    assert value(registry, "eeszt_requests_total", service="esemenyKatalogus", outcome="retrying") == 1
    assert value(registry, "eeszt_requests_total", service="esemenyKatalogus", outcome="waiting") == 1


def test_histogram_observes_created_at_to_final_outcome_only():
    request = samples.prescription()
    now = request.created_at.timestamp() + 2.0
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, clock=lambda: now)
    # When a request is retried, parked, then accepted 2 s after the HIS created it,
    for kind in ("retrying", "parked", "accepted"):
        observer.outcome("eRecept", kind, request)
    # Then one duration of 2 s is observed (not one per outcome),
    assert value(registry, "eeszt_request_duration_seconds_count", service="eRecept") == 1
    assert value(registry, "eeszt_request_duration_seconds_sum", service="eRecept") == pytest.approx(2.0)
    assert value(registry, "eeszt_request_duration_seconds_bucket", service="eRecept", le="1.0") == 0
    assert value(registry, "eeszt_request_duration_seconds_bucket", service="eRecept", le="2.5") == 1
    # and a HIS clock ahead of ours counts as 0, not as a negative duration.
    future = request.model_copy(update={"created_at": request.created_at + timedelta(minutes=5),
                                        "deadline": request.deadline + timedelta(minutes=5)})
    observer.outcome("eRecept", "rejected", future)
    assert value(registry, "eeszt_request_duration_seconds_bucket", service="eRecept", le="0.005") == 1
    assert DURATION_BUCKETS[0] == 0.005 and DURATION_BUCKETS[-1] == 600.0


def test_observer_survives_an_unknown_outcome_and_service():
    registry = CollectorRegistry()
    observer = MetricsObserver(registry)
    observer.outcome("", "deferred", None)
    observer.outcome("newService", "accepted", None)
    assert value(registry, "eeszt_requests_total", service="unknown", outcome="deferred") == 1
    assert value(registry, "eeszt_requests_total", service="newService", outcome="accepted") == 1


# --- scrape-time collectors --------------------------------------------------------------------
def test_token_collector_reports_sts_calls_by_method_and_cache_hits():
    fake = FakeEeszt()
    tokens = TokenManager(sts=fake)
    methods = {"O10001": "eszig", "O10002": "mobiltoken"}  # the workstations' bridge settings
    bridges = FakeBridges(fake=fake, tokens=tokens, outbox=MemoryOutbox(), answer=lambda ch: {
        "outcome": "rid", "rid_package": f"rid:{ch.user_id}", "method": methods[ch.user_id]})
    bridges.pipeline = Pipeline(client=fake, tokens=tokens, outbox=bridges.outbox,
                                institution="H100200", policy=FAST, logins=bridges.logins)
    registry = CollectorRegistry()
    registry.register(TokenCollector(tokens))
    # When the institution's token is asked for three times and two doctors log in once each
    # at their workstations (one by card, one by MobilToken),
    for _ in range(3):
        tokens.get(institution_identity("H100200"))
    for user in methods:
        bridges.pipeline.handle(incoming(samples.prescription(user_id=user)))
    # (until both released requests have their final reply: the cache hits below happen then)
    bridges.drain(10, until=lambda: len(finals(bridges.outbox)) == len(methods))
    assert all(tokens.usable(doctor_identity(u)) for u in methods)
    # Then the STS was called once per identity and the cache answered the rest.
    assert value(registry, "eeszt_sts_calls_total", method="x509") == 1
    assert value(registry, "eeszt_sts_calls_total", method="password") is None
    assert value(registry, "eeszt_sts_calls_total", method="mobiltoken") == 1
    assert value(registry, "eeszt_sts_calls_total", method="eszig") == 1
    # (the institution's token twice, and each doctor's token for the released request)
    assert value(registry, "eeszt_token_cache_hits_total") == 4


def test_breaker_collector_reports_every_service_and_the_open_one():
    breakers = Breakers(failure_threshold=2)  # no probe: no thread
    registry = CollectorRegistry()
    registry.register(BreakerCollector(breakers))
    assert value(registry, "eeszt_circuit_open", service="eRecept") == 0
    breakers.get("eRecept").record_failure()
    breakers.get("eRecept").record_failure()
    breakers.get("eht").record_failure()
    assert value(registry, "eeszt_circuit_open", service="eRecept") == 1
    assert value(registry, "eeszt_circuit_open", service="eht") == 0
    assert value(registry, "eeszt_circuit_open", service="eProfil") == 0
    breakers.get("eRecept").record_success()
    assert value(registry, "eeszt_circuit_open", service="eRecept") == 0


def test_certificate_collector_reports_days_left_of_the_present_files(tmp_path):
    paths = init_pki(tmp_path / "pki", days=30)
    now = datetime.now(timezone.utc)
    registry = CollectorRegistry()
    registry.register(CertificateCollector(paths.directory, clock=lambda: now))
    assert value(registry, "eeszt_certificate_days_left", certificate="access.pem") == \
        pytest.approx(30, abs=0.1)
    assert value(registry, "eeszt_certificate_days_left", certificate="institution.pem") == \
        pytest.approx(30, abs=0.1)
    assert value(registry, "eeszt_certificate_days_left", certificate="server-ca.pem") > 3000
    assert value(registry, "eeszt_certificate_days_left", certificate="sts.pem") is not None
    # When sts.pem is gone and access.pem is renewed for longer, the next scrape shows it.
    paths.sts_cert.unlink()
    paths.access_cert.write_bytes(paths.server_ca_cert.read_bytes())
    assert value(registry, "eeszt_certificate_days_left", certificate="sts.pem") is None
    assert value(registry, "eeszt_certificate_days_left", certificate="access.pem") > 3000


def test_certificate_collector_skips_an_unreadable_file(tmp_path, caplog):
    (tmp_path / "access.pem").write_text("not a certificate")
    registry = CollectorRegistry()
    registry.register(CertificateCollector(tmp_path))
    with caplog.at_level(logging.WARNING, logger="eeszt_gw.metrics"):
        assert value(registry, "eeszt_certificate_days_left", certificate="access.pem") is None
        generate_latest(registry)
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1  # once per change


# --- the card bridge ---------------------------------------------------------------------------
@dataclass
class FakePresence:
    state: object


@dataclass(frozen=True)
class State:
    service: bool
    card: bool


def test_bridge_metrics_count_each_answer_by_outcome():
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry, workstation="WS-01",
                            presence=FakePresence(State(service=True, card=False)))
    bridge = mobiltoken_bridge(ScriptedPrompt(["123456", None]), FakeEid())
    bridge.metrics = metrics
    # When a login with a typed code, a cancelled prompt, an expired and a forged challenge come,
    bridge.handle(challenge().model_dump_json().encode())
    bridge.handle(challenge().model_dump_json().encode())
    bridge.handle(challenge(ttl_s=-1).model_dump_json().encode())
    bridge.handle(challenge(key=Ed25519PrivateKey.generate()).model_dump_json().encode())
    # Then each is counted under its outcome or error code,
    for outcome in ("rid", "cancelled", "refused", "dropped"):
        assert value(registry, "eeszt_bridge_logins_total", workstation="WS-01",
                     outcome=outcome) == 1, outcome
    assert value(registry, "eeszt_bridge_logins_total", workstation="WS-01", outcome="wrong_pin") == 0
    # and the presence gauges follow the monitor's state at scrape time.
    assert value(registry, "eeszt_bridge_pcscd_up") == 1
    assert value(registry, "eeszt_bridge_card_present") == 0
    metrics.presence.state = State(service=True, card=True)
    assert value(registry, "eeszt_bridge_card_present") == 1


def test_bridge_without_metrics_still_answers():
    bridge = Bridge(workstation="WS-01", verifier=verifier(), card_client=RecordingClient(),
                    prompt=ScriptedPrompt())
    assert bridge.handle(challenge().model_dump_json().encode()).outcome == "rid"


# --- exposition, endpoint, settings ------------------------------------------------------------
def full_registries(tmp_path):
    registry, observer, pipeline = pipeline_with_metrics()
    pipeline.handle(incoming(samples.prescription()))
    register_runtime_collectors(registry, tokens=pipeline.tokens,
                                breakers=Breakers(failure_threshold=5),
                                pki_dir=init_pki(tmp_path / "pki").directory)
    bridge_registry = CollectorRegistry()
    BridgeMetrics(bridge_registry, workstation="WS-01",
                  presence=FakePresence(State(service=False, card=False)))
    return registry, bridge_registry


def test_exposition_contains_every_dashboard_metric(tmp_path):
    registry, bridge_registry = full_registries(tmp_path)
    text = generate_latest(registry).decode()
    lines = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert set(WORKER_NAMES) <= lines, set(WORKER_NAMES) - lines
    bridge_text = generate_latest(bridge_registry).decode()
    bridge_lines = {line.split("{")[0].split(" ")[0] for line in bridge_text.splitlines()
                    if line[:1] != "#"}
    assert set(BRIDGE_NAMES) <= bridge_lines
    assert "python_gc" not in text  # the process's own registry, not the global one
    assert 'eeszt_requests_total{outcome="accepted",service="eRecept"} 1.0' in text
    assert 'eeszt_circuit_open{service="eRecept"} 0.0' in text


def test_each_registry_is_separate():
    first, second = CollectorRegistry(), CollectorRegistry()
    MetricsObserver(first).outcome("eRecept", "accepted", None)
    MetricsObserver(second)
    assert value(first, "eeszt_requests_total", service="eRecept", outcome="accepted") == 1
    assert value(second, "eeszt_requests_total", service="eRecept", outcome="accepted") == 0


def test_metrics_server_serves_the_registry_and_port_zero_disables_it():
    registry = CollectorRegistry()
    MetricsObserver(registry).outcome("eht", "accepted", None)
    assert start_metrics_server(0, registry) is None
    port = free_port()
    server = start_metrics_server(port, registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'eeszt_requests_total{outcome="accepted",service="eht"} 1.0' in body


def test_a_busy_port_is_logged_not_fatal(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="eeszt_gw.metrics"):
            assert serve_quietly(port, CollectorRegistry(), what="worker process") is None
    assert "serves no metrics" in caplog.text
    assert serve_quietly(70000, CollectorRegistry()) is None  # base port + slot past 65535


def test_metrics_settings_and_flags(monkeypatch):
    from eeszt_gw.cli import build_parser
    from eeszt_gw.config import load

    assert (WorkerSettings().metrics_port, WorkerSettings().metrics_host) == (12100, "127.0.0.1")
    ns = build_parser().parse_args(["worker", "--metrics-port", "9200", "--metrics-host", "0.0.0.0"])
    settings = load(WorkerSettings, ns, "worker")
    assert (settings.metrics_port, settings.metrics_host) == (9200, "0.0.0.0")
    monkeypatch.setenv("EESZT_METRICS_PORT", "0")
    assert WorkerSettings().metrics_port == 0
    ns = build_parser().parse_args(["card-bridge", "--workstation", "WS-01", "--metrics-port", "0"])
    assert load(BridgeSettings, ns, "card-bridge").metrics_port == 0
    # the bridge reads the same EESZT_METRICS_PORT as every command; its default is its own
    assert BridgeSettings(workstation="WS-01").metrics_port == 0
    monkeypatch.delenv("EESZT_METRICS_PORT")
    assert BridgeSettings(workstation="WS-01").metrics_port == 12099
    with pytest.raises(ValueError):
        WorkerSettings(metrics_port=70000)


def test_default_metrics_ports_stay_clear_of_node_exporter_and_each_other(monkeypatch):
    monkeypatch.delenv("EESZT_METRICS_PORT", raising=False)
    most = WorkerSettings.model_fields["processes"].metadata  # le=64: the widest slot range
    slots = max(m.le for m in most if hasattr(m, "le"))
    workers = set(range(WorkerSettings().metrics_port, WorkerSettings().metrics_port + slots))
    bridge = BridgeSettings(workstation="WS-01").metrics_port
    # Prometheus's exporter range (node_exporter 9100, HAProxy 9101, ...), its own 9090-9094,
    # OpenTelemetry's 9464: none of them, and the bridge is not a worker slot (a demo host runs both)
    taken = set(range(9090, 10000))
    assert not workers & taken and bridge not in taken and bridge not in workers
    assert max(workers) < 32768  # below Linux's ephemeral ports
