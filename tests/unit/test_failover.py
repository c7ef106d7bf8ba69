"""Several broker addresses: parsing, the order they are tried in, and the errors (no broker).

The connect function is a fake that records the (host, port) it was asked for; the real broker
is exercised in ``tests/integration/test_failover.py``.
"""

from __future__ import annotations

import argparse

import pika
import pika.exceptions
import pytest
from pydantic_settings import SettingsConfigDict

from eeszt_gw import amqp
from eeszt_gw.amqp import (
    TLS_EOF,
    BrokerConfigError,
    BrokerTLSError,
    BrokerUnreachable,
    broker_addresses,
    in_order,
    open_connection,
    safe_url,
    split_urls,
)
from eeszt_gw.config import BrokerSettings, UsageError, add_settings, load

A = "amqp://gw:secret-a@node-a:5672/eeszt"
B = "amqp://gw:secret-b@node-b:5673/eeszt"
C = "amqp://gw:secret-c@node-c:5674/eeszt"
REFUSED = pika.exceptions.AMQPConnectionError("ConnectionRefusedError(111, 'Connection refused')")


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    # which address answered last is remembered per process; each test starts without it
    monkeypatch.setattr(amqp, "_LAST_GOOD", {})
    for var in ("EESZT_BROKER_URL", "EESZT_CONFIG"):
        monkeypatch.delenv(var, raising=False)


class FakeBrokers:
    """``connect`` for open_connection: the hosts in ``up`` answer, the others are refused."""

    def __init__(self, *up: str, errors: dict[str, BaseException] | None = None) -> None:
        self.up, self.errors, self.tried = set(up), errors or {}, []

    def __call__(self, params: pika.ConnectionParameters):
        self.tried.append(params.host)
        if params.host in self.up:
            return f"connection to {params.host}"
        raise self.errors.get(params.host, REFUSED)


# --- the list ---------------------------------------------------------------------------------
def test_commas_and_repeats_give_the_urls_in_order_and_a_comma_in_a_password_stays():
    assert split_urls(f"{A},{B}") == [A, B]
    assert split_urls(f" {A} ,\n{B}, ") == [A, B]
    assert split_urls([f"{A},{B}", C]) == [A, B, C]
    # a comma splits only where the next URL's scheme starts
    assert split_urls("amqp://u:pa,ss@h/v") == ["amqp://u:pa,ss@h/v"]
    assert split_urls("") == [] and split_urls(" , ") == []


def test_every_address_gets_the_callers_options_and_keeps_its_order():
    params = broker_addresses(f"{A},{B},{C}", socket_timeout=2.5, heartbeat=30)
    assert [(p.host, p.port) for p in params] == [("node-a", 5672), ("node-b", 5673),
                                                  ("node-c", 5674)]
    assert {(p.socket_timeout, p.heartbeat, p.virtual_host) for p in params} == {
        (2.5, 30, "eeszt")}


def test_every_password_of_a_list_is_masked():
    shown = safe_url(f"{A},{B},amqp://gw:pa,ss@node-d/eeszt")
    assert shown == ("amqp://gw:***@node-a:5672/eeszt,amqp://gw:***@node-b:5673/eeszt,"
                     "amqp://gw:***@node-d/eeszt")
    assert "secret" not in shown and "pa,ss" not in shown


@pytest.mark.parametrize("urls, says", [
    (f"{A},amqps://gw:secret-b@node-b/eeszt", "mix amqp:// and amqps://"),
    (f"{A},amqp://gw:secret-b@node-b/other", "differ in user or vhost"),
    (f"{A},amqp://ops:secret-b@node-b/eeszt", "differ in user or vhost"),
    (f"{A},amqp://node-b,node-c/eeszt", "separate several broker URLs with commas"),
])
def test_addresses_that_are_not_one_broker_are_refused(urls, says):
    with pytest.raises(BrokerConfigError, match=says) as exc:
        broker_addresses(urls)
    assert "secret" not in str(exc.value)


@pytest.mark.parametrize("bad, says, shown", [
    ("http://gw:secret-x@node-x/eeszt", "must start with amqp:// or amqps://", ""),
    ("amqp://gw:secret-x@node-x:notaport/eeszt", "not a valid AMQP URL", ""),
    ("amqp://gw:secret-x@node-x/eeszt?ssl_options=%7B%7D", "ssl_options",
     " (amqp://gw:***@node-x/eeszt?ssl_options=%7B%7D)"),
])
def test_a_bad_url_in_the_list_is_named_by_its_place_without_its_password(bad, says, shown):
    with pytest.raises(BrokerConfigError) as exc:
        broker_addresses(f"{A},{bad},{C}")
    assert str(exc.value).startswith(f"broker URL 2 of 3{shown}: ")
    assert says in str(exc.value) and "secret" not in str(exc.value)


def test_a_single_bad_url_keeps_its_message_and_no_url_is_an_error():
    with pytest.raises(BrokerConfigError, match="^the broker URL must start with amqp"):
        broker_addresses("http://gw:secret@h/")
    with pytest.raises(BrokerConfigError, match="no broker URL"):
        broker_addresses(" ")


# --- the order they are tried in --------------------------------------------------------------
def test_the_first_address_that_answers_wins_in_the_order_given():
    brokers = FakeBrokers("node-b", "node-c")
    assert open_connection(broker_addresses(f"{A},{B},{C}"), connect=brokers) == \
        "connection to node-b"
    assert brokers.tried == ["node-a", "node-b"]


def test_the_next_connect_starts_after_the_address_that_answered_last():
    params = broker_addresses(f"{A},{B},{C}")
    brokers = FakeBrokers("node-a", "node-b", "node-c")
    for _ in range(4):
        open_connection(params, connect=brokers)
    # round the list: clients spread over the nodes, and after a failover go on from there
    assert brokers.tried == ["node-a", "node-b", "node-c", "node-a"]
    # the memory is per list of addresses, not per parameters object
    assert [p.host for p in in_order(broker_addresses(f"{A},{B},{C}"))] == \
        ["node-b", "node-c", "node-a"]


def test_after_a_failover_the_dead_node_is_tried_last():
    params = broker_addresses(f"{A},{B},{C}")
    brokers = FakeBrokers("node-a", "node-c")
    assert open_connection(params, connect=brokers) == "connection to node-a"
    brokers.up = {"node-c"}  # node-a went down; node-b is down too
    assert open_connection(params, connect=brokers) == "connection to node-c"
    assert brokers.tried == ["node-a", "node-b", "node-c"]
    brokers.tried.clear()
    brokers.up = {"node-a"}
    assert open_connection(params, connect=brokers) == "connection to node-a"
    assert brokers.tried == ["node-a"]


def test_when_none_answers_the_typed_error_names_every_address_with_masked_passwords():
    brokers = FakeBrokers()
    with pytest.raises(BrokerUnreachable) as exc:
        open_connection(broker_addresses(f"{A},{B}"), connect=brokers)
    # existing retry code catches connection errors: this is one
    assert isinstance(exc.value, pika.exceptions.AMQPConnectionError)
    assert exc.value.addresses == ["amqp://gw:***@node-a:5672/eeszt",
                                   "amqp://gw:***@node-b:5673/eeszt"]
    text = str(exc.value)
    assert text.startswith("no broker answered at amqp://gw:***@node-a:5672/eeszt "
                           "(AMQPConnectionError: ConnectionRefusedError")
    assert "node-b:5673" in text and "secret" not in text and brokers.tried == ["node-a",
                                                                               "node-b"]


def test_one_parameters_object_still_raises_pikas_own_error():
    with pytest.raises(pika.exceptions.AMQPConnectionError) as exc:
        open_connection(amqp.broker_parameters(A), connect=FakeBrokers())
    assert exc.value is REFUSED


def test_a_node_that_never_answers_is_a_connection_error_like_the_others():
    # pika raises its stack timeout (accepted, then silence) as none of its AMQP errors
    from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

    hung = AMQPConnectorStackTimeout("Timeout during AMQP handshake")
    with pytest.raises(pika.exceptions.AMQPConnectionError, match="AMQPConnectorStackTimeout"):
        open_connection(amqp.broker_parameters(A), connect=FakeBrokers(errors={"node-a": hung}))
    with pytest.raises(BrokerUnreachable, match="node-a.*AMQPConnectorStackTimeout.*node-b"):
        open_connection(broker_addresses(f"{A},{B}"),
                        connect=FakeBrokers(errors={"node-a": hung}))


def test_a_broker_that_says_no_is_reported_as_such_when_no_other_answers():
    login = pika.exceptions.ProbableAuthenticationError(
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        open_connection(broker_addresses(f"{A},{B}"),
                        connect=FakeBrokers(errors={"node-b": login}))
    # but another node that answers still wins
    assert open_connection(broker_addresses(f"{B},{C}"), connect=FakeBrokers(
        "node-c", errors={"node-b": login})) == "connection to node-c"


def test_tls_errors_keep_their_translation_in_a_list():
    def tls(reason: str) -> BrokerTLSError:
        return BrokerTLSError(f"TLS problem ({reason})", host="h", port=1, reason=reason)

    a, b = "amqps://gw:s@node-a/eeszt", "amqps://gw:s@node-b/eeszt"
    refusal = tls("CERTIFICATE_VERIFY_FAILED")
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_addresses(f"{a},{b}"), connect=FakeBrokers(
            errors={"node-b": refusal}))
    assert exc.value is refusal
    # a close without a word on every node stays a TLS error (it points at the certificate),
    eof = tls(TLS_EOF)
    with pytest.raises(BrokerTLSError) as exc:
        open_connection(broker_addresses(f"{a},{b}"), connect=FakeBrokers(
            errors={"node-a": eof, "node-b": tls(TLS_EOF)}))
    assert exc.value is eof
    # while a close on one node and a dead other node is "unreachable", naming both
    with pytest.raises(BrokerUnreachable, match=r"node-a.*TLS problem \(TLS_EOF\).*node-b"):
        open_connection(broker_addresses(f"{a},{b}"), connect=FakeBrokers(
            errors={"node-a": eof}))


def test_the_producers_go_round_the_list_on_each_attempt(monkeypatch):
    from producers import topology
    from producers.errors import BrokerUnavailable

    brokers = FakeBrokers()
    monkeypatch.setattr(pika, "BlockingConnection", brokers)
    monkeypatch.setattr(topology.time, "sleep", lambda s: None)
    with pytest.raises(BrokerUnavailable) as exc:
        topology.connect(f"{A},{B}", retry_attempts=3, retry_backoff=0)
    assert brokers.tried == ["node-a", "node-b"] * 3
    assert "unreachable after 3 attempts" in str(exc.value) and "node-b:5673" in str(exc.value)
    assert "secret" not in str(exc.value)
    # and a list is accepted as well as one comma-separated string
    brokers.tried.clear()
    brokers.up = {"node-b"}
    assert topology.connect([A, B], retry_attempts=1, connect_timeout=1.5) == \
        "connection to node-b"
    assert brokers.tried == ["node-a", "node-b"]


def test_the_workers_clients_get_every_address(monkeypatch):
    from workers.broker import rabbit_broker
    from workers.outbox import RabbitOutbox

    broker = rabbit_broker(f"{A},{B}")
    assert [p.host for p in broker.parameters] == ["node-a", "node-b"]  # pika tries a list
    outbox = RabbitOutbox(url=f"{A},{B}")
    assert [p.host for p in outbox.params] == ["node-a", "node-b"]
    assert {p.heartbeat for p in outbox.params} == {60} and outbox.user_id == "gw"
    # dramatiq's connections start after the address that answered last in this process
    open_connection(outbox.params, connect=FakeBrokers("node-a"))
    assert [p.host for p in broker.parameters] == ["node-b", "node-a"]


# --- the settings -----------------------------------------------------------------------------
class Gw(BrokerSettings):
    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="forbid")


def settings(argv: list[str]) -> Gw:
    parser = argparse.ArgumentParser()
    add_settings(parser, Gw)
    return load(Gw, parser.parse_args(argv), "status")


def test_the_flag_may_be_repeated_and_hold_commas(monkeypatch):
    assert settings(["--broker-url", A, "--broker-url", f"{B},{C}"]).broker_url == f"{A},{B},{C}"
    monkeypatch.setenv("EESZT_BROKER_URL", f"{A},{B}")
    assert settings([]).broker_url == f"{A},{B}"
    assert settings(["--broker-url", C]).broker_url == C  # the flag wins over the environment


@pytest.mark.parametrize("line", [f'broker_url = "{A},{B}"', f'broker_url = ["{A}", "{B}"]'])
def test_the_config_file_takes_a_string_or_a_list(tmp_path, line):
    conf = tmp_path / "gw.toml"
    conf.write_text(line + "\n")
    s = settings(["--config", str(conf)])
    assert s.broker_url == f"{A},{B}"
    assert [p.host for p in broker_addresses(s.broker_url)] == ["node-a", "node-b"]


def test_help_says_the_flag_takes_several_nodes():
    parser = argparse.ArgumentParser()
    add_settings(parser, BrokerSettings)
    text = " ".join(parser.format_help().split())
    assert "repeat the flag or separate the URLs with commas" in text


def test_checking_the_settings_checks_every_address():
    s = settings(["--broker-url", A, "--broker-url", "http://gw:secret@node-x/"])
    with pytest.raises(UsageError, match="^broker: broker URL 2 of 2: the broker URL must "
                                         "start with amqp://") as exc:
        s.checked_broker_tls()
    assert "secret" not in str(exc.value)


def test_a_command_refuses_a_bad_second_url_in_one_line(capsys):
    from eeszt_gw.cli import main

    assert main(["status", "--broker-url", A, "--broker-url", "amqps://gw:secret@node-b/eeszt"]
                ) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: broker: the broker URLs mix amqp:// and amqps://")
    assert err.count("\n") == 1 and "secret" not in err
