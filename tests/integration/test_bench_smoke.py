"""`eeszt-gw bench publish|batch|scaling|memory|codepath` run end to end at tiny sizes.

Each scenario must print its table, write its JSON and draw its PNG. Only the structure is
checked, never the speed: these sizes say nothing about throughput.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.timeout(900)]

# the `bench` extra (pip install -e '.[bench]')
pytest.importorskip("psutil", reason="the bench extra is not installed")
pytest.importorskip("matplotlib", reason="the bench extra is not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench(tmp_path, *args: str, timeout: int = 800) -> tuple[str, dict]:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.Popen([sys.executable, "-m", "eeszt_gw.cli", "bench", *args,
                             "--json", str(out_json), "--png", str(out_png)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    # every run's vhost (named after the bench process) is deleted at the end
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True,
                            timeout=60).stdout.split()
    assert not [v for v in vhosts if v.startswith(f"eeszt-bench-{proc.pid}-")]
    return stdout, json.loads(out_json.read_text())


def test_publish_scenario(tmp_path):
    stdout, fig = _bench(tmp_path, "publish", "--n", "100", "--warmup", "10", "--batch-n", "500")
    assert "one confirmed publish, p99" in stdout and "publish targets" in stdout
    assert [r["queue_type"] for r in fig["runs"]] == ["classic", "quorum"]
    for run in fig["runs"]:
        for kind in ("publisher_submit_ms", "raw_pika_ms"):
            assert 0 < run["interactive"][kind]["p50"] <= run["interactive"][kind]["p99"]
        assert run["batch"]["batch_publisher_msg_s"] > 0
        assert run["batch"]["raw_pika_one_confirm_msg_s"] > 0
    assert {t["target"] for t in fig["targets"]} >= {
        f"{what} ({qt})" for qt in ("classic", "quorum")
        for what in ("batch publish ≥ 10,000 msg/s", "interactive publish p99 ≤ 5 ms")}
    assert all(isinstance(t["ok"], bool) for t in fig["targets"])


def test_publish_scenario_refuses_an_unknown_queue_type():
    proc = subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "bench", "publish",
                           "--queue-types", "classic,stream"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--queue-types" in proc.stderr and "classic,stream" in proc.stderr


def test_batch_scenario_runs_all_four_pipelines(tmp_path):
    stdout, fig = _bench(tmp_path, "batch", "--n", "300", "--latencies", "20", "--processes", "1",
                         "--threads", "16")
    assert "care events drained into the simulator" in stdout
    assert "gateway/bare" in stdout and "gateway/bare-curl" in stdout and "batch targets" in stdout
    runs = {r["kind"]: r for r in fig["runs"]}
    assert set(runs) == {"gateway", "bare", "bare-curl", "naive"}
    for r in runs.values():
        assert r["latency_ms"] == 20 and r["processes"] == 1 and r["events"] == 300
        assert r["complete"] and r["stored"] == 300, r
        assert r["events_per_s"] > 0
        assert set(r["cpu_us_per_event"]) == {"worker", "simulator", "broker"}
        assert r["cpu_us_per_event"]["worker"] > 0 and r["cpu_us_per_event"]["simulator"] > 0
    assert runs["naive"]["threads"] == 8 and runs["gateway"]["threads"] == 16
    (ratio,) = fig["ratios"]
    assert ratio["latency_ms"] == 20 and ratio["gateway/bare"] > 0 and ratio["gateway/naive"] > 0
    assert ratio["gateway/bare-curl"] > 0
    assert {"gateway ≥ 2 × naive at 20 ms", "gateway ≥ 0.9 × bare at 20 ms",
            "like for like: gateway ≥ 0.9 × bare-curl at 20 ms"} <= {t["target"] for t in fig["targets"]}


def test_batch_scenario_on_quorum_queues(tmp_path):
    stdout, fig = _bench(tmp_path, "batch", "--n", "200", "--latencies", "0", "--processes", "1",
                         "--threads", "8", "--queue-type", "quorum",
                         "--pipelines", "gateway,bare,naive")
    assert "quorum queues" in stdout
    assert fig["config"]["queue_type"] == "quorum"
    runs = {r["kind"]: r for r in fig["runs"]}
    assert set(runs) == {"gateway", "bare", "naive"}
    for r in runs.values():
        assert r["queue_type"] == "quorum" and r["complete"] and r["stored"] == 200, r


def test_scaling_scenario(tmp_path):
    stdout, fig = _bench(tmp_path, "scaling", "--n", "300", "--latency", "0", "--processes", "1",
                         "--threads", "16")
    assert "scaling with processes" in stdout
    assert {(r["kind"], r["processes"]) for r in fig["runs"]} == {("gateway", 1), ("bare", 1)}
    assert all(r["complete"] and r["events_per_s"] > 0 for r in fig["runs"])


def test_memory_scenario(tmp_path):
    stdout, fig = _bench(tmp_path, "memory", "--n", "1500", "--processes", "1", "--threads", "16",
                         "--sample-s", "0.5", "--warmup", "300")
    assert "worker RSS" in stdout and "end ÷ start" in stdout
    assert fig["complete"]
    rss = fig["rss_mib"]
    assert 0 < rss["start"] <= rss["max"] and 0 < rss["end"] <= rss["max"]
    assert rss["end_over_start"] == pytest.approx(rss["end"] / rss["start"])
    assert len(fig["samples"]) >= 2
    assert fig["targets"][0]["target"].startswith("worker RSS flat")


def test_codepath_scenario(tmp_path):
    stdout, fig = _bench(tmp_path, "codepath", "--n", "200", "--rounds", "2", "--profile", "5")
    assert "one request on one thread" in stdout and "gateway − bare" in stdout
    assert "ncalls" in stdout  # the cProfile listing
    for kind in ("gateway", "bare"):
        assert len(fig["cpu_us_per_event"][kind]) == 2
        assert all(x > 0 for x in fig["cpu_us_per_event"][kind])
    assert fig["gateway_minus_bare_us"] == pytest.approx(fig["median"]["gateway"]
                                                         - fig["median"]["bare"])
