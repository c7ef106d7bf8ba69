"""``eeszt_gw.amqp``: broker URL + TLS files → pika parameters, and its errors (no broker).

The real TLS listener is exercised in ``tests/integration/test_rabbitmq_tls.py``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pika
import pika.exceptions
import pytest

from eeszt_gw.amqp import (
    TLS_EOF,
    BrokerConfigError,
    BrokerTLS,
    BrokerTLSError,
    broker_parameters,
    open_connection,
    tls_failure,
)
from simulator.pki import issue_certificate, make_ca, new_ec_key, write_pem


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("broker-tls")
    ca_key, ca = make_ca("unit broker CA", key=new_ec_key())
    key, cert = issue_certificate(ca_key, ca, common_name="client", key=new_ec_key())
    other_key, _ = issue_certificate(ca_key, ca, common_name="other", key=new_ec_key())
    return {"ca": write_pem(d / "ca.pem", ca), "cert": write_pem(d / "client.pem", cert),
            "key": write_pem(d / "client.key", key),
            "other_key": write_pem(d / "other.key", other_key)}


def test_amqps_verifies_the_broker_certificate_and_its_host_name(files):
    # Given an amqps:// URL and a CA file,
    params = broker_parameters("amqps://u:p@broker.example:5671/%2F",
                               BrokerTLS(ca_file=files["ca"]))
    # Then pika gets a context that requires a valid certificate for the URL's host.
    ctx = params.ssl_options.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert params.ssl_options.server_hostname == "broker.example"
    assert (params.host, params.port, params.virtual_host) == ("broker.example", 5671, "/")


def test_amqps_without_files_still_verifies_against_the_system_cas():
    params = broker_parameters("amqps://u:p@10.0.0.7/%2F")
    assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert params.ssl_options.server_hostname == "10.0.0.7" and params.port == 5671


def test_plain_amqp_has_no_tls():
    assert broker_parameters("amqp://u:p@127.0.0.1:5672/%2F").ssl_options is None


def test_a_client_certificate_is_loaded(files):
    params = broker_parameters("amqps://h/", BrokerTLS(ca_file=files["ca"], cert_file=files["cert"],
                                                      key_file=files["key"]))
    assert params.ssl_options is not None


@pytest.mark.parametrize("url, tls, says", [
    ("amqp://u:secret@h/", "ca", "amqps://"),                  # TLS files with plain TCP
    ("amqps://u:secret@h/?ssl_options=%7B%7D", None, "ssl_options"),  # pika's own TLS switch
    ("http://u:secret@h/", None, "amqp:// or amqps://"),
    ("amqps://u:secret@h:notaport/", None, "not a valid AMQP URL"),
])
def test_unusable_urls_are_refused_without_repeating_the_password(files, url, tls, says):
    with pytest.raises(BrokerConfigError) as exc:
        broker_parameters(url, BrokerTLS(ca_file=files["ca"]) if tls else None)
    assert says in str(exc.value) and "secret" not in str(exc.value)


def test_unloadable_files_are_named_but_never_shown(files, tmp_path):
    with pytest.raises(BrokerConfigError, match="missing.pem"):
        broker_parameters("amqps://h/", BrokerTLS(ca_file=tmp_path / "missing.pem"))
    with pytest.raises(BrokerConfigError, match="does the key match") as exc:
        broker_parameters("amqps://h/", BrokerTLS(cert_file=files["cert"],
                                                  key_file=files["other_key"]))
    assert "PRIVATE KEY" not in str(exc.value)


def test_a_key_needs_its_certificate_and_no_files_mean_no_tls(files):
    with pytest.raises(BrokerConfigError, match="--broker-cert"):
        BrokerTLS(key_file=files["key"])
    assert BrokerTLS.from_paths(None, "", None) is None
    assert BrokerTLS.from_paths(str(files["ca"])) == BrokerTLS(ca_file=files["ca"])


def test_tls_failures_are_found_wherever_pika_puts_them():
    # pika raises the ssl error itself when our side refused the broker's certificate,
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                             "verify failed: self-signed certificate")
    verify.reason, verify.verify_message = "CERTIFICATE_VERIFY_FAILED", "self-signed certificate"
    assert tls_failure(verify) == ("CERTIFICATE_VERIFY_FAILED", "self-signed certificate")
    # and only as text inside its own error when the broker refused ours (TLS 1.3),
    wrapped = pika.exceptions.IncompatibleProtocolError(
        "StreamLostError: (\"Stream connection lost: SSLError(1, '[SSL: "
        "TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)')\",)")
    assert tls_failure(wrapped) == ("TLSV13_ALERT_CERTIFICATE_REQUIRED",
                                    "tlsv13 alert certificate required")
    # or only as the close that ended it, when the client was writing as the alert came,
    eof = pika.exceptions.IncompatibleProtocolError(
        "StreamLostError: (\"Stream connection lost: SSLEOFError(8, 'EOF occurred in violation "
        "of protocol (_ssl.c:2427)')\",)")
    assert tls_failure(eof) == (TLS_EOF, "EOF occurred in violation of protocol")
    assert tls_failure(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")) == (
        TLS_EOF, "EOF occurred in violation of protocol")
    # while an ordinary connection failure is not a TLS failure.
    assert tls_failure(pika.exceptions.AMQPConnectionError(ConnectionRefusedError(111))) is None


def test_a_tls_failure_becomes_one_clear_error_naming_the_broker(monkeypatch):
    def refuse(params):
        raise pika.exceptions.IncompatibleProtocolError(
            "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")

    monkeypatch.setattr(pika, "BlockingConnection", refuse)
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_parameters("amqps://u:secret@mq.example:5671/%2F"))
    # A BrokerTLSError is a connection error, so code that retries those keeps doing so.
    assert isinstance(exc.value, pika.exceptions.AMQPConnectionError)
    assert str(exc.value).startswith("TLS/certificate problem with the broker at "
                                     "mq.example:5671: the broker refused this client's "
                                     "certificate")
    assert "secret" not in str(exc.value)


def test_a_broker_that_closes_the_tls_connection_points_at_the_client_certificate(monkeypatch):
    def close(params):
        raise pika.exceptions.IncompatibleProtocolError(
            "StreamLostError: (\"Stream connection lost: SSLEOFError(8, 'EOF occurred in "
            "violation of protocol (_ssl.c:2427)')\",)")

    monkeypatch.setattr(pika, "BlockingConnection", close)
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_parameters("amqps://u:secret@mq.example:5671/%2F"))
    assert exc.value.reason == TLS_EOF
    assert "mq.example:5671" in str(exc.value) and "--broker-cert" in str(exc.value)


def test_producers_retry_a_tls_close_but_not_a_tls_refusal(monkeypatch):
    # A close without an alert may be a node going down mid-handshake: producers retry it like a
    # lost connection; a refusal that names its reason cannot change by retrying.
    from producers import topology
    from producers.errors import BrokerUnavailable

    def failing(reason: str, times: int):
        calls = []

        def open_connection(params):
            calls.append(params)
            if len(calls) <= times:
                raise BrokerTLSError(f"TLS problem ({reason})", host="h", port=1, reason=reason)
            return "connection"
        return calls, open_connection

    calls, fake = failing(TLS_EOF, 2)
    monkeypatch.setattr(topology, "open_connection", fake)
    assert topology.connect("amqps://u:p@h:1/%2F", retry_attempts=3, retry_backoff=0) == \
        "connection"
    assert len(calls) == 3

    calls, fake = failing(TLS_EOF, 5)
    monkeypatch.setattr(topology, "open_connection", fake)
    with pytest.raises(BrokerUnavailable) as exc:
        topology.connect("amqps://u:p@h:1/%2F", retry_attempts=3, retry_backoff=0)
    assert len(calls) == 3 and f"TLS problem ({TLS_EOF})" in str(exc.value)

    calls, fake = failing("TLSV13_ALERT_CERTIFICATE_REQUIRED", 5)
    monkeypatch.setattr(topology, "open_connection", fake)
    with pytest.raises(BrokerUnavailable):
        topology.connect("amqps://u:p@h:1/%2F", retry_attempts=3, retry_backoff=0)
    assert len(calls) == 1


def test_worker_and_bridge_settings_read_the_tls_files_from_the_environment(monkeypatch, files):
    from card_bridge.settings import BridgeSettings
    from workers.settings import WorkerSettings

    # the same EESZT_BROKER_* variables for every command, the card bridge's included
    monkeypatch.setenv("EESZT_BROKER_CA", str(files["ca"]))
    assert WorkerSettings().broker_tls() == BrokerTLS(ca_file=files["ca"])
    assert BridgeSettings(workstation="WS-01").broker_tls() == BrokerTLS(ca_file=files["ca"])
    monkeypatch.delenv("EESZT_BROKER_CA")
    monkeypatch.setenv("EESZT_BROKER_CERT", str(files["cert"]))
    monkeypatch.setenv("EESZT_BROKER_KEY", str(files["key"]))
    assert WorkerSettings().broker_tls() == BrokerTLS(cert_file=files["cert"], key_file=files["key"])
    assert BridgeSettings(workstation="WS-01").broker_tls() == BrokerTLS(
        cert_file=files["cert"], key_file=files["key"])


@pytest.mark.parametrize("argv, says", [
    (["worker", "--broker-url", "amqp://guest:guest@127.0.0.1:5672/%2F", "--broker-ca", "CA"],
     "use amqps://"),
    (["worker", "--broker-url", "amqps://guest:guest@127.0.0.1/%2F", "--broker-key", "K"],
     "needs its certificate"),
    (["status", "--broker-url", "amqps://guest:guest@127.0.0.1/%2F", "--broker-ca",
      "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    (["publish", "-", "--broker-url", "amqp://guest:guest@127.0.0.1:5672/%2F", "--broker-ca",
      "CA"], "use amqps://"),
    (["replies", "--broker-url", "amqps://guest:guest@127.0.0.1/%2F", "--broker-key", "K"],
     "needs its certificate"),
    (["card-bridge", "--workstation", "WS-01", "--broker-url",
      "amqp://guest:guest@127.0.0.1:5672/%2F", "--broker-ca", "CA"], "use amqps://"),
    (["card-bridge", "--workstation", "WS-01", "--broker-url", "amqps://guest:guest@127.0.0.1/%2F",
      "--broker-ca", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
])
def test_the_commands_refuse_a_broken_tls_setup_in_one_line(capsys, argv, says):
    from eeszt_gw.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: broker: ") and says in err and err.count("\n") == 1, err
