"""A local RabbitMQ cluster on loopback: N nodes of the machine's own RabbitMQ, for tests,
benchmarks and people. The main node (rabbit@localhost, 127.0.0.1:5672) is never touched.

Node k (1..N) is ``eeszt-c<k>-<id>@localhost``, with its own folder under ``base_dir`` (config,
env and enabled_plugins files, data, logs), its own AMQP listener on 127.0.0.1 and Erlang
distribution port (free ports) and no plugins; all nodes and the CLI calls share one cookie (one
HOME, ``base_dir/home``). Nodes 2..N join node 1 (``stop_app; join_cluster; start_app``).
Indices (``urls[i]``, ``stop_node(i)``, ``ctl(i, ...)``) count from 0: index 0 is node 1.

``python -m tests.cluster up|down [--dir var/cluster]`` (``make cluster-up``/``cluster-down``)
starts one and leaves it running, or stops the nodes recorded in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "cluster"
STATE_FILE = "cluster.json"
FORM_TIMEOUT_S = 120
#: Debian's /usr/sbin/rabbitmq* wrappers switch to the user rabbitmq and write the main node's
#: /var/log/rabbitmq/startup_log; the scripts behind them do neither.
SBIN_DIRS = (Path("/usr/lib/rabbitmq/bin"),)


#: one line per cluster scenario run (tests/integration/test_cluster_scenarios.py), which
#: tests/conftest.py prints at the end of the run
SCENARIO_LINES: list[str] = []


class ClusterError(RuntimeError):
    """The cluster (or one node) did not start, form or answer; the message has the log tails."""


def tool(name: str) -> str:
    """The path of RabbitMQ's ``name`` script (rabbitmqctl, rabbitmq-server, ...)."""
    found = next((str(d / name) for d in SBIN_DIRS if (d / name).is_file()), shutil.which(name))
    if found is None:
        raise ClusterError(f"{name} not found: RabbitMQ is not installed (`make rabbitmq` runs "
                           ".ci/ensure-rabbitmq, which installs it)")
    return found


def free_dist_ports(n: int = 1) -> list[int]:
    """``n`` free ports for Erlang distribution; rabbitmqctl then uses a port + 10000..10010,
    which must stay below 65536, so they come from 20000-29999 rather than the ephemeral range."""
    found: list[int] = []
    start = 20000 + (os.getpid() * 7) % 9000
    for port in [*range(start, 30000), *range(20000, start)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if len(found := [*found, port]) == n:
            return found
    raise ClusterError("no free ports in 20000-29999 for Erlang distribution")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (the ephemeral range)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_env(base: Path, node: str, dist_port: int, home: Path | None = None) -> dict[str, str]:
    """The environment for a node of our own (and for rabbitmqctl calls against it): its own
    files under ``base``, the cookie in ``home`` (``base/home``), nothing of the main node's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RABBITMQ_", "ERL_")) and k != "HOME"}
    env.update({
        "HOME": str(home or base / "home"),  # the Erlang cookie, shared by the nodes and our CLI calls
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),  # not the main node's
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),  # absent on purpose
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    })
    return env


def epmd_names() -> dict[str, int]:
    """The node names registered with epmd on loopback (short name -> distribution port):
    a cheap way to see that a node's VM is up, without starting an Erlang CLI."""
    try:
        with socket.create_connection(("127.0.0.1", 4369), timeout=2) as s:
            s.sendall(struct.pack(">HB", 1, 110))  # NAMES_REQ
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return {}
    lines = [line.split() for line in data[4:].decode(errors="replace").splitlines()]
    return {p[1]: int(p[4]) for p in lines if len(p) == 5 and p[0] == "name"}  # name N at port P


def _pid_alive(pid: int | None, node: str) -> bool:
    """``pid`` runs and is the VM of ``node`` (we start it with RABBITMQ_NODENAME=node)."""
    if not pid:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and f"RABBITMQ_NODENAME={node}".encode() in environ.split(b"\0")


def _wait(condition, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    base: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The node's Erlang VM (from the pid file we write); None unless it runs."""
        try:
            pid = int((self.base / "beam.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid, self.name) else None

    def registered(self) -> bool:
        return self.name.split("@")[0] in epmd_names()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {self.name}: {path.name} ---\n" + "\n".join(text))
        return "\n".join(out) or f"--- {self.name}: (no log written) ---"


@dataclass
class LocalCluster:
    """N RabbitMQ nodes on loopback, clustered. Use ``LocalCluster.start(...)`` (and ``stop()``
    or a ``with`` block), or ``LocalCluster.load(dir)`` for one that ``up`` left running."""

    base_dir: Path
    cluster_id: str
    nodes: list[Node]
    formed_in_s: float = 0.0  # from the first node's start to N running nodes

    # --- life cycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, base_dir: Path | str, n: int = 3, name: str | None = None,
              timeout: float = FORM_TIMEOUT_S) -> LocalCluster:
        """Start ``n`` fresh nodes under ``base_dir`` and cluster them; on failure stop what was
        started and raise :class:`ClusterError` with the nodes' log tails."""
        base_dir = Path(base_dir).resolve()
        cluster_id = name or secrets.token_hex(4)
        home = base_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():  # written before any node starts: parallel boots would race
            cookie.write_text(secrets.token_hex(10).upper())
            cookie.chmod(0o400)
        ports, dist = free_ports(n), free_dist_ports(n)
        nodes = []
        for k in range(n):
            node = f"eeszt-c{k + 1}-{cluster_id}@localhost"
            base = base_dir / node.split("@")[0]
            shutil.rmtree(base, ignore_errors=True)
            (base / "log").mkdir(parents=True)
            (base / "rabbitmq-env.conf").write_text("")
            (base / "enabled_plugins").write_text("[].\n")
            (base / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{ports[k]}\n"
                "loopback_users.guest = true\n"
                f"cluster_name = eeszt-local-{cluster_id}\n")
            nodes.append(Node(node, ports[k], dist[k], base, node_env(base, node, dist[k], home)))
        cluster = cls(base_dir, cluster_id, nodes)
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            for i in range(n):
                cluster._spawn(i)
            for i in range(n):
                cluster._await(i, deadline)
            for i in range(1, n):
                for args in (("stop_app",), ("join_cluster", nodes[0].name), ("start_app",)):
                    cluster.ctl(i, *args, timeout=max(10.0, deadline - time.monotonic()))
            cluster.await_running(n, deadline - time.monotonic())
            cluster.formed_in_s = time.monotonic() - t0
            for i in range(n):
                cluster.check_login(i)
        except BaseException as exc:
            tails = cluster.log_tail()
            cluster.stop()
            if isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}\n{tails}") from None
            raise
        return cluster

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.registered() or node.pid:
            raise ClusterError(f"{node.name} is already running")
        with open(node.base / "server.out", "ab") as out:
            # In a session of its own: a Ctrl-C in the terminal reaches us, and we stop the node.
            node.proc = subprocess.Popen(
                [tool("rabbitmq-server")], env=node.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=node.base, start_new_session=True)

    def _await(self, i: int, deadline: float) -> None:
        node = self.nodes[i]
        # await_startup fails at once until the node is in epmd: ask epmd, not a CLI VM per poll.
        while not node.registered():
            if node.proc is not None and node.proc.poll() is not None:
                raise ClusterError(f"{node.name} exited with {node.proc.returncode}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} did not start in time")
            time.sleep(0.2)
        self.ctl(i, "await_startup", "--timeout", str(max(1, int(deadline - time.monotonic()))),
                 timeout=max(5.0, deadline - time.monotonic() + 5))
        # RabbitMQ 3.10 writes no pid file of its own when started like this: ask the VM.
        pid = self.ctl(i, "eval", "os:getpid().").strip().strip('"')
        (node.base / "beam.pid").write_text(pid + "\n")

    def stop(self) -> None:
        """Stop every node of this cluster that runs (in parallel); never any other node."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda i: self.stop_node(i, hard=False), range(len(self.nodes))))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_node(self, i: int, hard: bool = True) -> None:
        """Stop node ``i``: ``hard`` kills its Erlang VM (SIGKILL, as a crash would), otherwise
        ``rabbitmqctl stop``. Returns once its VM is gone and it has left epmd."""
        node = self.nodes[i]
        pid = node.pid
        gone = lambda: not _pid_alive(pid, node.name) and not node.registered()  # noqa: E731
        if not hard and (pid or node.registered()):
            self.ctl(i, "stop", timeout=60, check=False)
            _wait(gone, 30)
        if pid and _pid_alive(pid, node.name):
            os.kill(pid, signal.SIGKILL)
        if node.proc is not None:
            # The script ends with its VM; if not (VM unknown): end the session we started it in.
            if not _wait(lambda: node.proc.poll() is not None, 5 if pid or hard else 30):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            node.proc = None
        _wait(gone, 30)

    def start_node(self, i: int, timeout: float = FORM_TIMEOUT_S) -> None:
        """Start node ``i`` again with its data: it rejoins the cluster."""
        self._spawn(i)
        try:
            self._await(i, time.monotonic() + timeout)
        except ClusterError as exc:
            tail = self.nodes[i].log_tail()
            self.stop_node(i)
            raise ClusterError(f"{exc}\n{tail}") from None

    def restart_node(self, i: int, timeout: float = FORM_TIMEOUT_S) -> None:
        """A rolling-restart step: stop node ``i`` cleanly and start it again."""
        self.stop_node(i, hard=False)
        self.start_node(i, timeout)

    @property
    def urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{node.port}/%2F" for node in self.nodes]

    @property
    def url_list(self) -> str:
        return ",".join(self.urls)

    def url(self, i: int, vhost: str = "/") -> str:
        return f"{self.urls[i].rsplit('/', 1)[0]}/{urllib.parse.quote(vhost, safe='')}"

    def url_list_for(self, vhost: str = "/") -> str:
        """Every node's URL for ``vhost``, comma-joined (one value of ``--broker-url``)."""
        return ",".join(self.url(i, vhost) for i in range(len(self.nodes)))

    def add_vhost(self, vhost: str, default_queue_type: str | None = None) -> None:
        """Create ``vhost`` (through the first running node) with guest's full permissions."""
        extra = ("--default-queue-type", default_queue_type) if default_queue_type else ()
        self.ctl(None, "add_vhost", vhost, *extra)
        self.ctl(None, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it (through the first running node), if it exists."""
        self.ctl(None, "delete_vhost", vhost, timeout=120, check=False)

    def node_index(self, node_name: str) -> int:
        return [node.name for node in self.nodes].index(node_name)

    def running(self) -> list[int]:
        """The indices of the nodes whose VM runs (by their pid files and epmd)."""
        return [i for i, node in enumerate(self.nodes) if node.pid and node.registered()]

    def ctl(self, i: int | None, *args: str, timeout: float = 60, check: bool = True,
            tool_name: str = "rabbitmqctl") -> str:
        """``rabbitmqctl -q -n NODE args`` against node ``i`` (None: the first running node);
        its stdout. With ``check``, a non-zero exit raises :class:`ClusterError`."""
        if i is None and not (up := self.running()):
            raise ClusterError("no node of the cluster is running")
        node = self.nodes[up[0] if i is None else i]
        try:
            res = subprocess.run([tool(tool_name), "-q", "-n", node.name, *args], env=node.env,
                                 capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{tool_name} {' '.join(args)} on {node.name}: timed out") from None
        if check and res.returncode != 0:
            raise ClusterError(f"{tool_name} {' '.join(args)} on {node.name} exited with "
                               f"{res.returncode}: {res.stdout}{res.stderr}")
        return res.stdout

    def running_nodes(self, i: int | None = None) -> list[str]:
        """The running cluster members, as node ``i`` (None: any running node) sees them."""
        return sorted(json.loads(self.ctl(i, "cluster_status", "--formatter", "json"))
                      ["running_nodes"])

    def await_running(self, n: int, timeout: float = 60) -> None:
        """Wait until the cluster reports ``n`` running nodes; raise ClusterError otherwise."""
        if not _wait(lambda: len(self.running_nodes()) == n, timeout, 0.5):
            raise ClusterError(f"the cluster does not have {n} running nodes: "
                               f"{self.running_nodes()}")

    def queues(self, vhost: str = "/", i: int | None = None) -> dict[str, dict]:
        """``list_queues name type leader members online`` (name -> row); leader, members and
        online are set for quorum queues."""
        out = self.ctl(i, "list_queues", "-p", vhost, "name", "type", "leader", "members",
                       "online", "--formatter", "json")
        return {row["name"]: row for row in json.loads(out or "[]")}

    def leader_of(self, queue: str, vhost: str = "/", i: int | None = None) -> str:
        return self.queues(vhost, i)[queue]["leader"]

    def members_of(self, queue: str, vhost: str = "/", i: int | None = None) -> list[str]:
        return sorted(self.queues(vhost, i)[queue]["members"])

    def online_of(self, queue: str, vhost: str = "/", i: int | None = None) -> list[str]:
        return sorted(self.queues(vhost, i)[queue]["online"])

    def check_login(self, i: int) -> None:
        """guest logs in to node ``i`` over 127.0.0.1 (guest is a loopback-only user)."""
        params = pika.URLParameters(self.urls[i])
        params.connection_attempts, params.socket_timeout = 1, 5
        try:
            pika.BlockingConnection(params).close()
        except Exception as exc:  # noqa: BLE001 - any failure means the node is not usable
            raise ClusterError(f"guest cannot log in to {self.urls[i]}: {exc!r}") from None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    # --- the state file, for `up` / `down` ----------------------------------------------------
    def save(self) -> Path:
        state = {"base_dir": str(self.base_dir), "id": self.cluster_id, "urls": self.urls,
                 "url_list": self.url_list,
                 "nodes": [{"name": n.name, "port": n.port, "dist_port": n.dist_port,
                            "dir": str(n.base), "pid": n.pid} for n in self.nodes]}
        path = self.base_dir / STATE_FILE
        path.write_text(json.dumps(state, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, base_dir: Path | str) -> LocalCluster | None:
        path = Path(base_dir).resolve() / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        base_dir, home = Path(state["base_dir"]), Path(state["base_dir"]) / "home"
        nodes = [Node(n["name"], n["port"], n["dist_port"], Path(n["dir"]),
                      node_env(Path(n["dir"]), n["name"], n["dist_port"], home))
                 for n in state["nodes"]]
        return cls(base_dir, state["id"], nodes)


# --- the command line ---------------------------------------------------------------------------
def _up(directory: Path, n: int) -> int:
    cluster = LocalCluster.load(directory)
    if cluster is not None:
        up = cluster.running()
        if up:  # the stopped nodes (if any) start again with their data: they rejoin
            for i in sorted(set(range(len(cluster.nodes))) - set(up)):
                cluster.start_node(i)
            cluster.await_running(len(cluster.nodes))
            cluster.save()
            print(f"cluster already up ({len(cluster.nodes) - len(up)} node(s) restarted):",
                  *cluster.urls, sep="\n")
            return 0
        for node in cluster.nodes:  # none runs: start afresh
            shutil.rmtree(node.base, ignore_errors=True)
    cluster = LocalCluster.start(directory, n=n)
    print(f"cluster of {n} nodes formed in {cluster.formed_in_s:.1f} s; state in {cluster.save()}",
          *cluster.urls, f"comma-joined: {cluster.url_list}",
          f"stop it with: make cluster-down (python -m tests.cluster down --dir {directory})",
          sep="\n")
    return 0


def _down(directory: Path) -> int:
    if (cluster := LocalCluster.load(directory)) is None:
        print(f"no cluster recorded in {directory}")
        return 0
    up = [cluster.nodes[i].name for i in cluster.running()]
    cluster.stop()
    (directory / STATE_FILE).unlink()
    print(f"stopped {len(up)} node(s): {', '.join(up) or '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m tests.cluster", description=__doc__.split(".")[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="default: var/cluster")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size for `up` (default 3)")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    try:
        return _up(directory, args.nodes) if args.command == "up" else _down(directory)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
