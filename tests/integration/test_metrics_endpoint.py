"""`eeszt-gw worker --metrics-port`: each worker process serves /metrics on its own port."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import samples
from tests.conftest import free_port, start_workers
from tests.integration.test_workers_rabbitmq import collect_final, declare, publish

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def free_port_pair() -> int:
    """A port p with p + 1 free too (two worker processes: slots 0 and 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples_: dict, name: str, **labels: str) -> float | None:
    return samples_.get((name, tuple(sorted(labels.items()))))


def test_worker_processes_expose_request_counts_circuits_and_certificates(
        broker_url, simulator, tmp_path):
    # Given a pool of two worker processes with metrics from a base port (slot i: base + i),
    simulator.reset(duplicates="naive")
    declare(broker_url)
    base = free_port_pair()
    wait = collect_final(broker_url, "his.metrics", 20, timeout_s=120)
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=2,
                         threads=4, queues="interactive", extra=("--metrics-port", str(base)))
    try:
        # When 20 prescriptions are published and answered,
        publish(broker_url, [samples.prescription().model_copy(update={"reply_to": "his.metrics"})
                             for _ in range(20)])
        finals = wait()
        assert len(finals) == 20 and {f["kind"] for f in finals} == {"accepted"}
        # Then the two processes' counters add up to them (the counter follows the reply by
        # microseconds, so scrape until it has caught up),
        deadline = time.monotonic() + 15
        while True:
            scraped = [scrape(base), scrape(base + 1)]
            accepted = sum(sample(s, "eeszt_requests_total", service="eRecept",
                                  outcome="accepted") or 0 for s in scraped)
            if accepted >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        pool.stop()
    assert accepted == 20
    durations = sum(sample(s, "eeszt_request_duration_seconds_count", service="eRecept") or 0
                    for s in scraped)
    assert durations == 20
    # (the doctor logged in at the workstation, by card: the worker redeemed the rID)
    logins = sum(sample(s, "eeszt_sts_calls_total", method="eszig") or 0 for s in scraped)
    assert logins >= 1
    for s in scraped:
        # and each process reports its circuits (closed) and the PKI's certificates.
        assert sample(s, "eeszt_circuit_open", service="eRecept") == 0
        assert sample(s, "eeszt_circuit_open", service="eht") == 0
        for cert in ("access.pem", "institution.pem", "server-ca.pem", "sts.pem"):
            assert sample(s, "eeszt_certificate_days_left", certificate=cert) > 300, cert
        assert sample(s, "eeszt_requests_total", service="eRecept", outcome="failed") == 0
