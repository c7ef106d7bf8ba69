"""eeszt-gw status's cluster part, from rabbitmqctl's JSON as RabbitMQ 3.10 prints it."""

from __future__ import annotations

import json
import subprocess

from eeszt_gw.ops import status_cluster
from eeszt_gw.ops.status_cluster import cluster_attention, cluster_view, summarize

N1, N2, N3 = "eeszt-c1@localhost", "eeszt-c2@localhost", "eeszt-c3@localhost"
STATUS = {"disk_nodes": [N1, N2, N3], "ram_nodes": [], "running_nodes": [N1, N3],
          "versions": {N1: {"rabbitmq_version": "3.10.8"}, N3: {"rabbitmq_version": "3.10.8"}}}
QUEUES = [
    {"name": "eeszt.interactive", "type": "quorum", "leader": N1, "members": [N1, N2, N3],
     "online": [N1, N3]},
    {"name": "eeszt.batch", "type": "quorum", "leader": N2, "members": [N1, N2, N3],
     "online": [N1, N3]},
    {"name": "eeszt.dlq", "type": "quorum", "leader": N3, "members": [N1, N3], "online": [N1, N3]},
    {"name": "eeszt.audit", "type": "stream", "leader": N1, "members": [N1, N2, N3],
     "online": [N1, N2, N3]},
    {"name": "eeszt.lock.key.x", "type": "classic", "leader": "", "members": "", "online": ""},
]


def test_a_stopped_node_and_the_queues_it_leaves_short_are_named():
    # Given node 2 of three stopped
    view = summarize(STATUS, QUEUES)
    # Then the nodes are listed with their state and version
    assert [(n["name"], n["running"], n["version"]) for n in view["nodes"]] == [
        (N1, True, "3.10.8"), (N2, False, None), (N3, True, "3.10.8")]
    # And every replicated queue with a replica on it is degraded, the one it led leaderless;
    # a queue whose replicas all run, and classic queues, are not listed
    degraded = {q["queue"]: q for q in view["degraded"]}
    assert set(degraded) == {"eeszt.interactive", "eeszt.batch", "eeszt.audit"}
    assert degraded["eeszt.batch"]["leaderless"] and not degraded["eeszt.interactive"]["leaderless"]
    assert degraded["eeszt.interactive"]["missing"] == [N2]
    # And status asks for attention on each
    lines = cluster_attention(view)
    assert f"RabbitMQ node {N2} is not running" in lines
    assert "queue eeszt.batch has no leader" in lines
    assert f"queue eeszt.interactive misses 1 of 3 replicas ({N2})" in lines


def test_a_healthy_cluster_needs_no_attention_and_no_rabbitmqctl_means_no_cluster_part():
    healthy = {**STATUS, "running_nodes": [N1, N2, N3]}
    queues = [{**q, "online": q["members"], "leader": q["leader"] or ""} for q in QUEUES[:2]]
    assert cluster_attention(summarize(healthy, queues)) == []
    assert cluster_attention(None) == []


def test_cluster_view_asks_the_named_node_and_tolerates_failures(monkeypatch):
    # Given a fake rabbitmqctl that answers as 3.10 does
    monkeypatch.setattr(status_cluster.shutil, "which", lambda name: "/usr/sbin/rabbitmqctl")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        out = STATUS if "cluster_status" in cmd else QUEUES
        return subprocess.CompletedProcess(cmd, 0, json.dumps(out), "")

    # When the status of a local vhost is asked with a node name
    view = cluster_view("amqp://guest:guest@127.0.0.1:5681/gw", node=N1, run=run)
    # Then rabbitmqctl was asked on that node, for that vhost
    assert calls[0][:3] == ["rabbitmqctl", "-n", N1] and "cluster_status" in calls[0]
    assert calls[1][calls[1].index("-p") + 1] == "gw"
    assert view is not None and len(view["degraded"]) == 3
    # And a remote broker, a failing or garbled rabbitmqctl give no cluster part
    assert cluster_view("amqp://u:p@mq.example:5672/gw", run=run) is None
    assert cluster_view("amqp://127.0.0.1/", run=lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 2, "", "Error")) is None
    assert cluster_view("amqp://127.0.0.1/", run=lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0, "not json", "")) is None
