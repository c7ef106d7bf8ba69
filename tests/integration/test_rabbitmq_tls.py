"""TLS to RabbitMQ (``amqps://``) against a real TLS listener on loopback.

The main RabbitMQ node on 127.0.0.1:5672 is left alone: this module starts a second node of its
own (unique node name, its own data, log and config folders, its own Erlang cookie in a
temporary HOME, free ports) with no plain AMQP listener, one TLS listener on 127.0.0.1 that
requires a client certificate (mutual TLS), and no plugins. Its certificates are made here with
``cryptography``: a broker CA, a server certificate for localhost and 127.0.0.1, a client
certificate, and a second CA that signed nothing the broker trusts. The node is stopped at the
end; if it does not start within a minute, the fixture fails with its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika.exceptions
import pytest

from producers import BrokerTLS, BrokerUnavailable, Publisher, ReplyListener
from eeszt_gw.amqp import TLS_EOF, BrokerTLSError, broker_parameters, open_connection
from schemas.replies import is_final
from simulator.pki import issue_certificate, make_ca, new_ec_key, write_pem
from tests import samples
from tests.cluster import free_dist_ports, node_env
from tests.cluster import tool as _tool
from tests.conftest import ROOT, free_port, start_workers
from workers.middleware.audit_reader import read_audit

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

START_TIMEOUT_S = 60


@dataclass
class TlsNode:
    """The test's own RabbitMQ node with a mutual-TLS listener on 127.0.0.1:``port``."""

    node: str
    port: int
    base: Path
    env: dict[str, str]
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    foreign_cert: Path  # a client certificate from other_ca, which the broker does not trust
    foreign_key: Path

    @property
    def url(self) -> str:
        return f"amqps://guest:guest@localhost:{self.port}/%2F"

    @property
    def tls(self) -> BrokerTLS:
        return BrokerTLS(ca_file=self.ca, cert_file=self.client_cert, key_file=self.client_key)

    @property
    def tls_flags(self) -> tuple[str, ...]:
        return ("--broker-ca", str(self.ca), "--broker-cert", str(self.client_cert),
                "--broker-key", str(self.client_key))

    def ctl(self, tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([_tool(tool), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def listeners(self) -> list[dict]:
        res = self.ctl("rabbitmq-diagnostics", "-q", "listeners", "--formatter", "json")
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)["listeners"]

    def tls_listeners(self) -> list[tuple[str, int]]:
        return [(e["interface"], e["port"]) for e in self.listeners()
                if e["protocol"] == "amqp/ssl"]

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out) or "(no log written)"


def _make_certificates(directory: Path) -> dict[str, Path]:
    ca_key, ca = make_ca("eeszt test broker CA", key=new_ec_key())
    server_key, server = issue_certificate(ca_key, ca, common_name="localhost", key=new_ec_key(),
                                           client=False, server_hosts=("localhost", "127.0.0.1"))
    client_key, client = issue_certificate(ca_key, ca, common_name="eeszt-gw test client",
                                           key=new_ec_key())
    other_key, other = make_ca("some other CA", key=new_ec_key())
    foreign_key, foreign = issue_certificate(other_key, other, common_name="stranger",
                                             key=new_ec_key())
    files = {"ca": ca, "server_cert": server, "server_key": server_key, "client_cert": client,
             "client_key": client_key, "other_ca": other, "foreign_cert": foreign,
             "foreign_key": foreign_key}
    return {name: write_pem(directory / f"{name}.pem", obj) for name, obj in files.items()}


@pytest.fixture(scope="session")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    base = tmp_path_factory.mktemp("rabbitmq-tls")
    for sub in ("home", "mnesia", "log", "certs"):
        (base / sub).mkdir()
    certs = _make_certificates(base / "certs")
    node = f"eeszt-tls-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    (base / "rabbitmq-env.conf").write_text("")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {certs['ca']}\n"
        f"ssl_options.certfile = {certs['server_cert']}\n"
        f"ssl_options.keyfile = {certs['server_key']}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n")
    env = node_env(base, node, free_dist_ports(1)[0])
    tls = TlsNode(node=node, port=port, base=base, env=env, ca=certs["ca"],
                  client_cert=certs["client_cert"], client_key=certs["client_key"],
                  other_ca=certs["other_ca"], foreign_cert=certs["foreign_cert"],
                  foreign_key=certs["foreign_key"])
    # In the foreground, so that this PID is ours; the script stops the node on SIGTERM.
    out = open(base / "server.out", "wb")
    proc = subprocess.Popen([_tool("rabbitmq-server")], env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, cwd=base)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the TLS RabbitMQ node {node} exited with {proc.returncode}:\n"
                            f"{tls.log_tail()}")
            # await_startup fails at once until the node has registered with epmd: poll it.
            if tls.ctl("rabbitmqctl", "-q", "await_startup", "--timeout", "10").returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the TLS RabbitMQ node {node} did not start within "
                            f"{START_TIMEOUT_S} s:\n{tls.log_tail()}")
            time.sleep(0.5)
        # A listener that cannot bind does not stop the boot: ask the node for it.
        if tls.tls_listeners() != [("127.0.0.1", port)]:
            pytest.fail(f"the TLS RabbitMQ node {node} started without its TLS listener on "
                        f"127.0.0.1:{port}:\n{tls.log_tail()}")
        yield tls
    finally:
        if proc.poll() is None:
            tls.ctl("rabbitmqctl", "-q", "stop", timeout=60)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()  # the script's TERM handler stops the node it started
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        out.close()


# --- (a) the whole path over amqps --------------------------------------------------------------
def test_a_request_goes_over_amqps_to_the_worker_and_its_reply_comes_back(
        tls_node, simulator, tmp_path):
    # Given the simulator, a HIS reply queue over amqps, and a worker pool over amqps with the
    # client certificate,
    simulator.reset()
    key = f"his.tls.{uuid.uuid4().hex[:6]}"
    listener = ReplyListener(tls_node.url, routing_key=key, durable=False, tls=tls_node.tls,
                             retry_attempts=1)
    listener.open()
    pool = start_workers(broker_url=tls_node.url, sim=simulator, workdir=tmp_path, processes=1,
                         threads=4, extra=(*tls_node.tls_flags, "--metrics-port", "0"))
    finals = {}
    try:
        # When a HIS publishes a prescription (interactive queue, doctor login) and a care event
        # (batch queue, institution login) with Publisher over amqps,
        requests = [samples.prescription().model_copy(update={"reply_to": key}),
                    samples.event_start(event_id=f"TLS-{uuid.uuid4().hex[:6]}")
                    .model_copy(update={"reply_to": key})]
        with Publisher(url=tls_node.url, tls=tls_node.tls, retry_attempts=1) as publisher:
            for request in requests:
                publisher.submit(request)
        deadline = time.monotonic() + 90
        while len(finals) < len(requests) and time.monotonic() < deadline:
            reply = listener.get(timeout=1)
            if reply is not None and is_final(reply):
                finals[str(reply.message_id)] = reply
    finally:
        listener.close()
        pool.stop()
    log = pool.log_path.read_text(errors="replace")
    # Then both are accepted, with the reply received over amqps,
    assert {mid: r.kind for mid, r in finals.items()} == {
        str(r.message_id): "accepted" for r in requests}, log[-3000:]
    # and EESZT (the simulator) holds both records,
    assert simulator.stats()["total_records"] == 2
    # and the workers' audit trail, read back over amqps, tells the prescription's story,
    story = {e.event.value for e in read_audit(tls_node.url, tls=tls_node.tls,
                                               message_id=str(requests[0].message_id))}
    assert {"received", "answered"} <= story, story
    # and no worker connection failed its TLS handshake (pika logs those with "SSL").
    for trouble in ("TLS/certificate problem", "BrokerTLSError", "SSL", "Traceback"):
        assert trouble not in log, log[-3000:]


def test_the_operator_commands_speak_amqps(tls_node):
    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})

    # Given the TLS files as flags, `status` reports (exit 0 or 1; 2 = broker unreachable),
    status = cli("status", "--broker-url", tls_node.url, *tls_node.tls_flags, "--json",
                 "--no-rabbitmqctl", "--wait-s", "0.5")
    assert status.returncode in (0, 1), status.stdout + status.stderr
    assert json.loads(status.stdout)["broker"] == tls_node.url.replace("guest:guest", "guest:***")
    # and `dlq list` lists (nothing),
    dlq = cli("dlq", "list", "--broker-url", tls_node.url, *tls_node.tls_flags, "--json")
    assert dlq.returncode == 0 and dlq.stdout == "", dlq.stdout + dlq.stderr
    # and, given the files as EESZT_BROKER_* variables, `audit` searches (found nothing: 1).
    audit = cli("audit", str(uuid.uuid4()), env={
        "EESZT_BROKER_URL": tls_node.url, "EESZT_BROKER_CA": str(tls_node.ca),
        "EESZT_BROKER_CERT": str(tls_node.client_cert),
        "EESZT_BROKER_KEY": str(tls_node.client_key)})
    assert audit.returncode == 1 and "no audit events" in audit.stderr, audit.stderr


# --- (b) a client that trusts another CA --------------------------------------------------------
def test_b_a_client_that_trusts_another_ca_fails_with_a_clear_tls_error(tls_node, tmp_path):
    # Given a client whose CA file is not the one that signed the broker's certificate,
    wrong = BrokerTLS(ca_file=tls_node.other_ca, cert_file=tls_node.client_cert,
                      key_file=tls_node.client_key)
    # When it connects, then the error says TLS, names the broker, and that its cert is untrusted:
    with pytest.raises(BrokerTLSError) as raw:
        open_connection(broker_parameters(tls_node.url, wrong))
    assert raw.value.reason == "CERTIFICATE_VERIFY_FAILED"
    assert str(raw.value).startswith(f"TLS/certificate problem with the broker at "
                                     f"localhost:{tls_node.port}: the broker's certificate is "
                                     "not trusted")
    # and a publisher stops at once (a certificate does not heal by retrying) with that message,
    with pytest.raises(BrokerUnavailable) as publishing:
        with Publisher(url=tls_node.url, tls=wrong, retry_attempts=5) as publisher:
            publisher.submit(samples.event_start())
    assert publishing.value.attempts == 1
    assert "TLS/certificate problem" in publishing.value.reason
    assert f"localhost:{tls_node.port}" in publishing.value.reason
    # and `eeszt-gw publish` prints it as one line, without a traceback and without the password.
    jsonl = tmp_path / "one.jsonl"
    jsonl.write_bytes(samples.event_start().to_json() + b"\n")
    cli = subprocess.run(
        [sys.executable, "-m", "eeszt_gw.cli", "publish", str(jsonl), "--broker-url", tls_node.url,
         "--broker-ca", str(tls_node.other_ca), "--broker-cert", str(tls_node.client_cert),
         "--broker-key", str(tls_node.client_key), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert cli.stderr.startswith("error: TLS/certificate problem with the broker at "
                                 f"localhost:{tls_node.port}"), cli.stderr
    assert "Traceback" not in cli.stderr and "guest:guest" not in cli.stderr


def test_b_the_system_ca_store_does_not_trust_the_test_broker(tls_node):
    # Given no CA file at all (the system's CAs), but a valid client certificate,
    tls = BrokerTLS(cert_file=tls_node.client_cert, key_file=tls_node.client_key)
    # When it connects, then verification is on even without a CA file: the broker is refused.
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_parameters(tls_node.url, tls))
    assert exc.value.reason == "CERTIFICATE_VERIFY_FAILED"


# --- (c) a client without a (trusted) client certificate ----------------------------------------
@pytest.mark.parametrize("who", ["no client certificate", "a certificate from another CA"])
def test_c_the_broker_refuses_a_client_without_a_trusted_certificate(tls_node, who):
    # Given a client that trusts the broker but has no certificate the broker accepts,
    tls = (BrokerTLS(ca_file=tls_node.ca) if who == "no client certificate" else
           BrokerTLS(ca_file=tls_node.ca, cert_file=tls_node.foreign_cert,
                     key_file=tls_node.foreign_key))
    # When it connects, then the broker refuses the handshake, and the error says so. With
    # TLS 1.3 the broker's alert comes after the client's side of the handshake is done: the
    # client reads the alert, or, when it was writing as the broker closed, only the close.
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_parameters(tls_node.url, tls))
    assert "ALERT" in exc.value.reason or exc.value.reason == TLS_EOF, exc.value.reason
    assert "client's certificate" in str(exc.value) and "--broker-cert" in str(exc.value)
    assert f"localhost:{tls_node.port}" in str(exc.value)
    # and the same client with the right certificate gets in (the refusal was about the cert).
    good = open_connection(broker_parameters(tls_node.url, tls_node.tls))
    try:
        assert good.is_open
    finally:
        good.close()


# --- (d) no plain AMQP on that node -------------------------------------------------------------
def test_d_the_node_has_no_plain_amqp_listener(tls_node):
    # Given the node's own list of listeners,
    listeners = tls_node.listeners()
    protocols = {entry["protocol"] for entry in listeners}
    # Then AMQP is served only over TLS, on 127.0.0.1 at the test's port, and never in plain,
    assert "amqp" not in protocols, listeners
    assert tls_node.tls_listeners() == [("127.0.0.1", tls_node.port)]
    assert protocols <= {"amqp/ssl", "clustering"}, listeners
    # and a plain amqp:// client on that port gets no AMQP connection.
    plain = broker_parameters(f"amqp://guest:guest@127.0.0.1:{tls_node.port}/%2F")
    plain.socket_timeout = plain.stack_timeout = 5
    plain.connection_attempts = 1
    with pytest.raises((pika.exceptions.AMQPConnectionError, OSError)) as exc:
        open_connection(plain).close()
    assert not isinstance(exc.value, BrokerTLSError)  # plain clients get no TLS diagnosis
