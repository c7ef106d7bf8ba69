"""The benchmark harness's own guarantees, with real simulator processes."""

from __future__ import annotations

import sqlite3

import pytest

pytest.importorskip("psutil", reason="the bench extra is not installed")

from benchmarks import harness as h  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_reused_port_does_not_bring_back_an_earlier_runs_records(tmp_path):
    # Given the kernel hands out the same ports to two runs, one after the other, and the
    # first run stored a record
    from simulator.launch import PORTS, free_port

    ports = {name: free_port() for name in PORTS}
    pki = h.make_pki(tmp_path / "pki")
    first = h.start_simulator(pki, tmp_path, latency_ms=0, **ports)
    try:
        with sqlite3.connect(first.db) as db:
            db.execute("INSERT INTO records (service, operation, idempotency_key, eeszt_id, "
                       "version, subject, institution, stored_at) VALUES ('esemenyKatalogus', "
                       "'esemenyKezdet', 'k-1', 'EV-1', 1, 'H1', 'I1', '2026-01-01T00:00:00Z')")
        assert first.record_count() == 1
    finally:
        first.stop()

    # When the next run starts its simulator on the same ports
    second = h.start_simulator(pki, tmp_path, latency_ms=0, **ports)
    try:
        # Then it has a database of its own, empty
        assert second.base_url == first.base_url
        assert second.db != first.db
        assert second.record_count() == 0
    finally:
        second.stop()
