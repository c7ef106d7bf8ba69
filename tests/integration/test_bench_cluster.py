"""`eeszt-gw bench cluster` end to end at tiny sizes: it starts its own three-node cluster,
prints the one-node and cluster figures side by side, writes them as JSON, and stops the cluster
and deletes its vhosts at the end. Only the structure is checked, never the speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster import epmd_names
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.cluster,
              pytest.mark.timeout(900)]

# the `bench` extra (pip install -e '.[bench]')
psutil = pytest.importorskip("psutil", reason="the bench extra is not installed")
pytest.importorskip("matplotlib", reason="the bench extra is not installed")


def _vms_of(nodes: list[str]) -> list[int]:
    """PIDs of Erlang VMs started as one of ``nodes`` (RABBITMQ_NODENAME in their environment)."""
    found = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "beam.smp" and p.environ().get("RABBITMQ_NODENAME") in nodes:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def test_bench_cluster_prints_both_brokers_and_stops_its_cluster(tmp_path):
    out_json = tmp_path / "cluster.json"
    proc = subprocess.Popen([sys.executable, "-m", "eeszt_gw.cli", "bench", "cluster",
                             "--n", "300", "--batch-n", "500", "--json", str(out_json)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=800)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench stops its cluster on the way out
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert "cluster ÷ one node" in stdout and "this machine" in stdout
    fig = json.loads(out_json.read_text())

    for site in ("one_node", "cluster"):
        assert fig["publish"][site]["msg_s"] > 0
        assert fig["drain"][site]["events_per_s"] > 0
        assert fig["drain"][site]["complete"] and fig["drain"][site]["queue_type"] == "quorum"
    # the cluster's work queue was replicated on its three nodes, the main node's on itself
    assert fig["publish"]["cluster"]["members"] == sorted(fig["cluster"]["nodes"])
    assert fig["publish"]["one_node"]["members"] == [fig["publish"]["one_node"]["leader"]]
    assert fig["ratios"]["publish_msg_s"] > 0 and fig["ratios"]["drain_events_s"] > 0

    # the cluster was stopped: none of its nodes is in epmd or runs, by the bench's word and ours
    nodes = fig["cluster"]["nodes"]
    assert len(nodes) == 3 and fig["cluster"]["stopped"] is True
    assert not {n.split("@")[0] for n in nodes} & set(epmd_names())
    assert _vms_of(nodes) == []
    # and the run's vhosts on the main node are gone
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True,
                            timeout=60).stdout.split()
    assert not [v for v in vhosts if v.startswith(f"eeszt-bench-{proc.pid}-")]
