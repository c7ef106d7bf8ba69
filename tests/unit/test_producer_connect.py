"""How the producers' connect tells a refused login from a reset during the handshake.

pika reports both as ``ProbableAuthenticationError`` / ``ProbableAccessDeniedError``. A refusal
(the broker closed the connection with 403 or 530) must fail at once with a clear message; a
socket reset mid-handshake, which a RabbitMQ node does while it restarts, must be retried. The
fault suite's broker restart caught the second case failing a HIS's publish.
"""

from __future__ import annotations

import pika.exceptions
import pytest

from producers import topology
from producers.errors import BrokerUnavailable

URL = "amqp://his:secret@127.0.0.1:5672/eeszt"
RESET = pika.exceptions.ProbableAccessDeniedError(
    "Client was disconnected at a connection stage indicating a probable denial of access to the "
    "specified virtual host: ('StreamLostError: (\"Stream connection lost: ConnectionResetError"
    "(104, \\'Connection reset by peer\\')\",)',)")
REFUSED_VHOST = pika.exceptions.ProbableAccessDeniedError(
    "ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost eeszt not found'")
REFUSED_LOGIN = pika.exceptions.ProbableAuthenticationError(
    "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
    "mechanism PLAIN. For details see the broker logfile.'")


def scripted(monkeypatch, *outcomes):
    calls = []

    def fake_open(params):
        calls.append(params)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(topology, "open_connection", fake_open)
    monkeypatch.setattr(topology.time, "sleep", lambda s: None)
    return calls


def test_a_reset_during_the_handshake_is_retried(monkeypatch):
    conn = object()
    calls = scripted(monkeypatch, RESET, RESET, conn)
    assert topology.connect(URL, retry_attempts=5) is conn
    assert len(calls) == 3


def test_resets_on_every_attempt_end_as_unreachable_with_the_reason(monkeypatch):
    scripted(monkeypatch, RESET, RESET, RESET)
    with pytest.raises(BrokerUnavailable) as err:
        topology.connect(URL, retry_attempts=3)
    assert err.value.attempts == 3
    assert "unreachable after 3 attempts" in str(err.value) and "StreamLostError" in str(err.value)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize("refusal", [REFUSED_VHOST, REFUSED_LOGIN], ids=["vhost", "password"])
def test_a_refusal_by_the_broker_fails_at_once(monkeypatch, refusal):
    calls = scripted(monkeypatch, refusal, object())
    with pytest.raises(BrokerUnavailable) as err:
        topology.connect(URL, retry_attempts=5)
    assert len(calls) == 1 and err.value.attempts == 1
    assert "refused the login" in str(err.value) and "check the user, password and vhost" in str(err.value)
    assert "secret" not in str(err.value)
