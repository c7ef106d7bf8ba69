"""The RabbitMQ cluster as ``eeszt-gw status`` shows it: each node, and the replicated queues of
the gateway's vhost that lost their leader or a replica.

AMQP cannot say which node is down or where a queue's replicas live, so this part asks
``rabbitmqctl`` (``cluster_status``, ``list_queues name type leader members online``), on a
broker of this host only, like the doctors' wait queues; ``node`` is the ``-n`` of a node that is
not the local default one. Everything returns None when ``rabbitmqctl`` cannot answer: the rest
of the report does not need it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any, Callable

from .status_broker import _is_local, vhost_of

Run = Callable[..., Any]


def _ctl(args: list[str], node: str | None, run: Run) -> Any | None:
    """``rabbitmqctl [-n NODE] -q ARGS --formatter json``, parsed; None when it cannot answer."""
    if shutil.which("rabbitmqctl") is None:
        return None
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "-q", *args, "--formatter", "json"]
    try:
        done = run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout)
    except ValueError:
        return None


def cluster_view(url: str, node: str | None = None, run: Run = subprocess.run
                 ) -> dict[str, Any] | None:
    """``{"nodes": [{"name", "running", "version"}], "degraded": [{"queue", "type", "leader",
    "members", "missing", "leaderless"}]}`` or None when rabbitmqctl cannot answer here."""
    if not _is_local(url):
        return None
    status = _ctl(["cluster_status"], node, run)
    if not isinstance(status, dict):
        return None
    queues = _ctl(["list_queues", "-p", vhost_of(url), "name", "type", "leader", "members",
                   "online"], node, run)
    return summarize(status, queues if isinstance(queues, list) else [])


def summarize(status: dict[str, Any], queues: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's part from ``cluster_status`` and ``list_queues`` output (pure)."""
    running = set(status.get("running_nodes") or [])
    known = list(dict.fromkeys([*(status.get("disk_nodes") or []),
                                *(status.get("ram_nodes") or []), *sorted(running)]))
    versions = status.get("versions") or {}
    nodes = [{"name": n, "running": n in running,
              "version": (versions.get(n) or {}).get("rabbitmq_version")} for n in known]
    degraded = []
    for q in queues:
        if q.get("type") not in ("quorum", "stream"):
            continue
        members = [m for m in (q.get("members") or []) if isinstance(m, str)]
        online = set(q.get("online") or [])
        leader = q.get("leader") or ""
        missing = [m for m in members if m not in online or m not in running]
        leaderless = not leader or leader not in running
        if missing or leaderless:
            degraded.append({"queue": q.get("name"), "type": q.get("type"), "leader": leader,
                             "members": members, "missing": missing, "leaderless": leaderless})
    return {"nodes": nodes, "degraded": degraded}


def cluster_attention(cluster: dict[str, Any] | None) -> list[str]:
    """What needs an operator: a node down, a queue without its leader or missing a replica."""
    if not cluster:
        return []
    out = [f"RabbitMQ node {n['name']} is not running" for n in cluster["nodes"]
           if not n["running"]]
    for q in cluster["degraded"]:
        what = ("has no leader" if q["leaderless"]
                else f"misses {len(q['missing'])} of {len(q['members'])} replicas "
                     f"({', '.join(q['missing'])})")
        out.append(f"queue {q['queue']} {what}")
    return out
